//! The REST storage of the RBAC kinds: each is stored by the generic store
//! with its type's validation (bad verbs, kinds and names in one 422; a
//! binding's roleRef never changes) and kubectl's columns.

use api_types::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};

use crate::registry::{Column, Rest, Typed};

/// `ClusterRole/view`, as kubectl's ROLE column shows a binding's role.
fn role_cell(object: &Value) -> Value {
    let kind = object
        .pointer("/roleRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = object
        .pointer("/roleRef/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    json!(format!("{kind}/{name}"))
}

const ROLE: Column = Column {
    name: "Role",
    kind: "string",
    description: "The role granted",
    priority: 0,
    cell: role_cell,
};

/// Role.
pub fn role() -> Rest {
    Rest::new(Typed::<Role>::new(Vec::new()))
}

/// ClusterRole.
pub fn cluster_role() -> Rest {
    Rest::new(Typed::<ClusterRole>::new(Vec::new()))
}

/// RoleBinding.
pub fn role_binding() -> Rest {
    Rest::new(Typed::<RoleBinding>::new(vec![ROLE]))
}

/// ClusterRoleBinding.
pub fn cluster_role_binding() -> Rest {
    Rest::new(Typed::<ClusterRoleBinding>::new(vec![ROLE]))
}
