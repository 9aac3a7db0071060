//! Tasks: bound by the scheduler through `spec.nodeName`, selectable by node and phase.

use api_types::Task;
use serde_json::{Value, json};

use super::{Column, Typed, field};

/// The Task strategy.
pub fn strategy() -> Typed<Task> {
    Typed::new(vec![
        Column {
            name: "Phase",
            kind: "string",
            description: "Where the task is in its life",
            priority: 0,
            cell: |o| phase(o),
        },
        Column {
            name: "Node",
            kind: "string",
            description: "The node the task is bound to",
            priority: 0,
            cell: |o| field(o, "spec.nodeName"),
        },
        Column {
            name: "Exit",
            kind: "string",
            description: "The exit code, once the task has ended",
            priority: 0,
            cell: |o| field(o, "status.exitCode"),
        },
        Column {
            name: "Reason",
            kind: "string",
            description: "Why the task is in its phase",
            priority: 1,
            cell: |o| field(o, "status.reason"),
        },
    ])
    .selectable(&["spec.nodeName", "status.phase"])
    .initial_status(json!({"phase": "Pending"}))
}

fn phase(object: &Value) -> Value {
    match api_types::selector::json_field(object, "status.phase") {
        Some(phase) => json!(phase),
        None => json!("Pending"),
    }
}
