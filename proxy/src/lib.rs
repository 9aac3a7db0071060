//! `loom proxy`: makes every Service's virtual address (`spec.clusterIP`)
//! work on its node. Connections from the node's tasks (and the node itself)
//! to the service range are redirected by nftables to one local listener,
//! which joins each to a ready endpoint of its Service, kept current from the
//! API's Services and Endpoints.
//!
//! An in-process L4 proxy rather than nftables DNAT to the endpoints: a
//! connection to a Service scaled to zero must be held while a replica
//! starts, and the autoscaler needs each Service's concurrency, neither of
//! which kernel NAT gives. Its cost per request is measured by `loom-bench`
//! (docs/perf.md).

pub mod control;
pub mod dataplane;
pub mod dns;
pub mod metrics;
pub mod redirect;

pub use dataplane::{Backends, Proxy, Table};
pub use metrics::Metrics;
