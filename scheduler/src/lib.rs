//! The scheduler: filter, score and bind pending tasks to nodes, with preemption.
//!
//! Built so far: node accounting (`resources`), the filter with user-readable
//! reasons (`filter`), weighted scorers including E-PVM (`score`) and a first
//! scheduling loop (`run`) that binds pending tasks by priority and age and
//! explains the ones that fit nowhere. Still to come: an incrementally kept
//! cache (the loop rebuilds node accounting from its informers each pass),
//! per-task backoff, preemption and leader election.

pub mod filter;
pub mod resources;
pub mod run;
pub mod score;

pub use run::run;
