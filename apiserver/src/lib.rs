//! Loom's API server: the HTTP API over a versioned store, with a watch cache per resource.

pub mod admission;
pub mod apply;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod catalog;
pub mod certificates;
pub mod discovery;
pub mod error;
pub mod generic;
pub mod http;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod object;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod watch_cache;

pub use server::{Config, StoreUrl, open_store, open_store_with_tls, run};
