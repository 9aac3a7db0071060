//! Nodes: registered by their nodelet with their status; cordoned through `spec.unschedulable`.

use api_types::Node;
use serde_json::{Value, json};

use super::{Column, Typed, field};

/// The Node strategy.
pub fn strategy() -> Typed<Node> {
    Typed::new(vec![
        Column {
            name: "Status",
            kind: "string",
            description: "Whether the node is ready and schedulable",
            priority: 0,
            cell: status,
        },
        Column {
            name: "CPU",
            kind: "string",
            description: "Allocatable CPU",
            priority: 0,
            cell: |o| field(o, "status.allocatable.cpu"),
        },
        Column {
            name: "Memory",
            kind: "string",
            description: "Allocatable memory",
            priority: 0,
            cell: |o| field(o, "status.allocatable.memory"),
        },
    ])
    .selectable(&["spec.unschedulable"])
    .status_on_create()
}

fn status(object: &Value) -> Value {
    let ready = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str))
        == Some("True");
    let mut text = if ready { "Ready" } else { "NotReady" }.to_owned();
    if object
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        == Some(true)
    {
        text.push_str(",SchedulingDisabled");
    }
    json!(text)
}
