//! The ResourceDefinition kind: a custom kind served by the apiserver, shaped like Kubernetes' CustomResourceDefinition.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta, is_default};
use crate::resource::{ResourceInfo, impl_resource, impl_spec_kind};

/// The condition type set once the definition's names are accepted and the kind is served.
pub const RD_CONDITION_ESTABLISHED: &str = "Established";
/// The condition type set when the names clash with another kind.
pub const RD_CONDITION_NAMES_ACCEPTED: &str = "NamesAccepted";

/// A ResourceDefinition. Cluster-scoped, named `<plural>.<group>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceDefinition {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `ResourceDefinition`.
    pub kind: String,
    /// The name, `<plural>.<group>`.
    pub metadata: ObjectMeta,
    /// The kind's group, names, scope and versions.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: ResourceDefinitionSpec,
    /// Whether it is served, written by the apiserver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceDefinitionStatus>,
}

impl_resource!(
    ResourceDefinition,
    kind: "ResourceDefinition",
    plural: "resourcedefinitions",
    singular: "resourcedefinition",
    short_names: ["rd"],
    namespaced: false,
    has_status: true,
);
impl_spec_kind!(ResourceDefinition, ResourceDefinitionSpec);

impl ResourceDefinition {
    /// The run-time description of the kind at `version`, if that version is defined.
    pub fn info_for_version(&self, version: &str) -> Option<ResourceInfo> {
        let v = self.spec.versions.iter().find(|v| v.name == version)?;
        let names = &self.spec.names;
        Some(ResourceInfo {
            group: self.spec.group.clone(),
            version: v.name.clone(),
            kind: names.kind.clone(),
            plural: names.plural.clone(),
            singular: if names.singular.is_empty() {
                names.kind.to_ascii_lowercase()
            } else {
                names.singular.clone()
            },
            short_names: names.short_names.clone(),
            list_kind: names.list_kind(),
            namespaced: self.spec.scope == ResourceScope::Namespaced,
            has_status: v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
        })
    }

    /// The version marked `storage`, if exactly one is.
    pub fn storage_version(&self) -> Option<&ResourceVersionDefinition> {
        let mut storage = self.spec.versions.iter().filter(|v| v.storage);
        match (storage.next(), storage.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        }
    }
}

/// Whether a custom kind's objects live in namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum ResourceScope {
    /// Objects live in a namespace.
    #[default]
    Namespaced,
    /// Objects are cluster-wide.
    Cluster,
}

/// The names of a custom kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceNames {
    /// The kind, CamelCase: `Pipeline`.
    pub kind: String,
    /// The lower-case plural used in paths: `pipelines`.
    pub plural: String,
    /// The lower-case singular (the lower-cased kind by default).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub singular: String,
    /// Abbreviations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
    /// The kind of its lists (`<Kind>List` by default).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub list_kind: String,
}

impl ResourceNames {
    /// `listKind`, or `<Kind>List`.
    pub fn list_kind(&self) -> String {
        if self.list_kind.is_empty() {
            format!("{}List", self.kind)
        } else {
            self.list_kind.clone()
        }
    }
}

/// A version's schema.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceValidation {
    /// The OpenAPI v3 schema objects are validated against.
    #[serde(rename = "openAPIV3Schema")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub open_api_v3_schema: serde_json::Value,
}

/// The `status` subresource marker: present (as `{}`) to enable it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StatusSubresource {}

/// The subresources a version serves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceSubresources {
    /// `status: {}` serves `/status` and makes the main path ignore status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusSubresource>,
}

/// One version of a custom kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceVersionDefinition {
    /// The version, e.g. `v1`.
    pub name: String,
    /// Whether the API serves it.
    pub served: bool,
    /// Whether objects are stored in it; exactly one version is.
    pub storage: bool,
    /// Its schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<ResourceValidation>,
    /// Its subresources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresources: Option<ResourceSubresources>,
}

/// A custom kind's definition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceDefinitionSpec {
    /// The API group, a DNS subdomain with at least one dot: `example.com`.
    pub group: String,
    /// Kind, plural, singular, short names.
    pub names: ResourceNames,
    /// `Namespaced` or `Cluster`.
    pub scope: ResourceScope,
    /// The versions served.
    pub versions: Vec<ResourceVersionDefinition>,
}

/// Whether a definition is served.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceDefinitionStatus {
    /// `Established`, `NamesAccepted`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The names actually served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_names: Option<ResourceNames>,
    /// Versions objects have ever been stored in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stored_versions: Vec<String>,
}
