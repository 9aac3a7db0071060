//! Loom API types.
