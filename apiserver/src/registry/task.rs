//! Tasks: bound by the scheduler through `spec.nodeName`, selectable by node and
//! phase; a task that asks for no memory gets the cluster's default limit.

use api_types::Task;
use serde_json::{Value, json};

use super::{Column, Defaults, Typed, field};

/// Gives a task without a memory limit the cluster's default, at creation, so
/// the scheduler counts it and the node enforces it. A replacement that omits the
/// field keeps the stored value (the spec is immutable; a client that sends back
/// its own manifest did not mean to change it).
fn default_memory(defaults: &Defaults, task: &mut Task, old: Option<&Task>) {
    if task.spec.resources.memory.is_some() {
        return;
    }
    task.spec.resources.memory = match old {
        Some(old) => old.spec.resources.memory,
        None => defaults.task_memory.filter(|q| !q.is_zero()),
    };
}

/// The Task strategy.
pub fn strategy(defaults: &Defaults) -> Typed<Task> {
    let defaults = defaults.clone();
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
    .prepare(move |task, old| default_memory(&defaults, task, old))
}

fn phase(object: &Value) -> Value {
    match api_types::selector::json_field(object, "status.phase") {
        Some(phase) => json!(phase),
        None => json!("Pending"),
    }
}
