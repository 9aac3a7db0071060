//! The Namespace kind: a scope for names, deleted with everything in it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta, is_default};
use crate::resource::{impl_resource, impl_spec_kind};

/// The namespace objects go to when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The namespace the control plane's own objects (leases, events) live in.
pub const SYSTEM_NAMESPACE: &str = "loom-system";

/// A Namespace. Cluster-scoped; its name is a DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Namespace {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Namespace`.
    pub kind: String,
    /// Name and labels.
    pub metadata: ObjectMeta,
    /// Finalizers that must finish before the namespace goes.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: NamespaceSpec,
    /// `Active` or `Terminating`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

impl_resource!(
    Namespace,
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    short_names: ["ns"],
    namespaced: false,
    has_status: true,
);
impl_spec_kind!(Namespace, NamespaceSpec);

/// A Namespace's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Controllers that must empty the namespace before it is removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

/// Whether a namespace is in use or going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum NamespacePhase {
    /// In use.
    #[default]
    Active,
    /// Being deleted; no new objects may be created in it.
    Terminating,
}

impl fmt::Display for NamespacePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamespacePhase::Active => "Active",
            NamespacePhase::Terminating => "Terminating",
        })
    }
}

/// A Namespace's observed state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`.
    pub phase: NamespacePhase,
    /// Conditions about its deletion.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
