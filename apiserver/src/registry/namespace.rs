//! Namespaces: objects of namespaced kinds may only live in one that exists.

use api_types::Namespace;
use serde_json::json;

use super::{Column, Typed};

/// Namespaces every cluster has.
pub const BUILT_IN: [&str; 2] = ["default", "loom-system"];

/// The Namespace strategy.
pub fn strategy() -> Typed<Namespace> {
    Typed::new(vec![Column {
        name: "Status",
        kind: "string",
        description: "Active or Terminating",
        priority: 0,
        cell: |o| match api_types::selector::json_field(o, "status.phase") {
            Some(phase) => json!(phase),
            None => json!("Active"),
        },
    }])
    .selectable(&["status.phase"])
    .initial_status(json!({"phase": "Active"}))
}
