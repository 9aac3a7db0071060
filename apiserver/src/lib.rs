//! Loom's API server: the storage backends every object lives in (the HTTP API builds on them).

pub mod store;
pub mod testing;
