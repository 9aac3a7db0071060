//! Loom's API server: the HTTP API over a versioned store, with a watch cache per resource.

pub mod error;
pub mod object;
pub mod schema;
pub mod store;
pub mod testing;
