//! The scheduler: filter, score and bind pending tasks to nodes, with preemption.
