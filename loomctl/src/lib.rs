//! loomctl, the command-line interface to a Loom cluster.
