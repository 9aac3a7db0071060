//! Events: what happened to an object, for `describe` and `events`.

use api_types::Event;

use super::{Column, Typed, field};

/// The Event strategy.
pub fn strategy() -> Typed<Event> {
    Typed::new(vec![
        Column {
            name: "Type",
            kind: "string",
            description: "Normal or Warning",
            priority: 0,
            cell: |o| field(o, "type"),
        },
        Column {
            name: "Reason",
            kind: "string",
            description: "Why it happened, in one word",
            priority: 0,
            cell: |o| field(o, "reason"),
        },
        Column {
            name: "Object",
            kind: "string",
            description: "The object it happened to",
            priority: 0,
            cell: |o| {
                serde_json::json!(format!(
                    "{}/{}",
                    field(o, "involvedObject.kind")
                        .as_str()
                        .unwrap_or("")
                        .to_lowercase(),
                    field(o, "involvedObject.name").as_str().unwrap_or("")
                ))
            },
        },
        Column {
            name: "Message",
            kind: "string",
            description: "What happened",
            priority: 0,
            cell: |o| field(o, "message"),
        },
    ])
    .selectable(&[
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.uid",
        "reason",
        "type",
    ])
}
