//! The scheduler: filter, score and bind pending tasks to nodes, with preemption.
//!
//! Built so far: the pure core — node accounting (`resources`), the filter with
//! user-readable reasons (`filter`), and weighted scorers including E-PVM
//! (`score`). The watch-driven cache, queue, binding and preemption build on it.

pub mod filter;
pub mod resources;
pub mod score;
