//! The scheduler: places pending tasks on nodes, preempting lower-priority tasks
//! when nothing fits.
//!
//! - `cache`: every node and what is placed on it, kept one watch event at a time;
//!   the scheduler's own binds are assumed at once and confirmed by the watch
//!   (or dropped when the bind fails or the watch never shows it).
//! - `queue`: pending tasks by priority then age; a task that fits nowhere backs
//!   off exponentially, then waits for the cluster to change.
//! - `filter` (with reasons a user reads), `score` (weighted, pluggable: E-PVM,
//!   least-allocated, balanced allocation, spreading) and `algorithm`, which
//!   filters from a rotating start until a bounded sample of feasible nodes is
//!   found (all of them on small clusters) and picks the best.
//! - `preempt`: for a task that fits nowhere, the node where evicting the fewest,
//!   lowest-priority tasks makes room.
//! - `claims`: binds first claim the node with a write conditioned on its
//!   resourceVersion, so several schedulers binding at once never over-commit it.
//! - `run`: the loop. Binds, conditions and Events are written in the background,
//!   many at once, while decisions go on.

pub mod algorithm;
pub mod cache;
pub mod claims;
pub mod filter;
pub mod preempt;
pub mod queue;
pub mod resources;
pub mod run;
pub mod score;

pub use run::{Config, run, run_with};
