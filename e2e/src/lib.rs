//! End-to-end tests that drive the real Loom binaries with real containers.
