//! ResourceDefinitions: each makes the API serve a custom kind.

use api_types::ResourceDefinition;

use super::{Column, Typed, field};

/// The ResourceDefinition strategy.
pub fn strategy() -> Typed<ResourceDefinition> {
    Typed::new(vec![
        Column {
            name: "Group",
            kind: "string",
            description: "The API group of the kind",
            priority: 0,
            cell: |o| field(o, "spec.group"),
        },
        Column {
            name: "Kind",
            kind: "string",
            description: "The kind served",
            priority: 0,
            cell: |o| field(o, "spec.names.kind"),
        },
    ])
}
