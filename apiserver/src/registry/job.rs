//! Jobs: N tasks run to completion, selectable by phase; `spec.logDir` is
//! deprecated (accepted, ignored, and warned about).

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
    .warnings(warnings)
}

/// The warning for a write that still sets `spec.logDir`.
pub const LOG_DIR_WARNING: &str =
    "spec.logDir is deprecated and ignored: the node chooses log locations";

fn warnings(object: &Value) -> Vec<String> {
    let log_dir = object.pointer("/spec/logDir").and_then(Value::as_str);
    if log_dir.is_some_and(|d| !d.is_empty()) {
        vec![LOG_DIR_WARNING.to_owned()]
    } else {
        Vec::new()
    }
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
