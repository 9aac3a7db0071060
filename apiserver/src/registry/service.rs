//! Services: replicated long-running tasks.

use api_types::Service;
use serde_json::{Value, json};

use super::{Column, Typed};

/// The Service strategy.
pub fn strategy() -> Typed<Service> {
    Typed::new(vec![
        Column {
            name: "Ready",
            kind: "string",
            description: "Ready tasks of the replicas asked for",
            priority: 0,
            cell: |o| {
                json!(format!(
                    "{}/{}",
                    number(o, "/status/readyReplicas", 0),
                    number(o, "/spec/replicas", 1)
                ))
            },
        },
        Column {
            name: "Up-to-date",
            kind: "integer",
            description: "Tasks running the current template",
            priority: 0,
            cell: |o| json!(number(o, "/status/updatedReplicas", 0)),
        },
    ])
}

fn number(object: &Value, pointer: &str, default: i64) -> i64 {
    object
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}
