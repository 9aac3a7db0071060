//! Jobs: N tasks run to completion, selectable by phase.

use api_types::Job;
use serde_json::{Value, json};

use super::{Column, Typed, field};

/// The Job strategy.
pub fn strategy() -> Typed<Job> {
    Typed::new(vec![
        Column {
            name: "Phase",
            kind: "string",
            description: "Where the job is in its life",
            priority: 0,
            cell: |o| match api_types::selector::json_field(o, "status.phase") {
                Some(phase) => json!(phase),
                None => json!("Pending"),
            },
        },
        Column {
            name: "Tasks",
            kind: "string",
            description: "Tasks completed of the tasks asked for",
            priority: 0,
            cell: tasks,
        },
        Column {
            name: "Reason",
            kind: "string",
            description: "Why the job is in its phase",
            priority: 1,
            cell: |o| field(o, "status.reason"),
        },
    ])
    .selectable(&["status.phase"])
    .initial_status(json!({"phase": "Pending"}))
}

fn tasks(object: &Value) -> Value {
    let replicas = object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let done = object
        .pointer("/status/completed")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    json!(format!("{done}/{replicas}"))
}
