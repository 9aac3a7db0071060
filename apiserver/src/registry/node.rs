//! Nodes: registered by their nodelet with their status; cordoned through `spec.unschedulable`;
//! given a task subnet (`spec.taskCIDR`, immutable once set) by the controllers.

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
        Column {
            name: "Task-CIDR",
            kind: "string",
            description: "The subnet the node's tasks take their addresses from",
            priority: 1,
            cell: |o| field(o, "spec.taskCIDR"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Strategy;

    #[test]
    fn the_task_subnet_is_a_wide_column() {
        let columns = strategy().columns();
        let column = columns
            .iter()
            .find(|c| c.name == "Task-CIDR")
            .unwrap_or_else(|| panic!("no Task-CIDR column"));
        assert_eq!(column.priority, 1, "shown with -o wide only");
        let node = json!({"metadata": {"name": "n1"}, "spec": {"taskCIDR": "10.77.3.0/24"}});
        assert_eq!((column.cell)(&node), json!("10.77.3.0/24"));
        assert_eq!(
            (column.cell)(&json!({"metadata": {"name": "n2"}})),
            json!("")
        );
    }
}
