//! Real Kubernetes clients against Loom's API server; the tests are in `tests/`.
