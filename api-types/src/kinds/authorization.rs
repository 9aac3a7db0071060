//! The access reviews of `authorization.k8s.io/v1`, wire-compatible with
//! Kubernetes': a question posted to the API server (may this user do this?)
//! and answered in the same object's `status`; nothing is stored.
//! `kubectl auth can-i` asks with a SelfSubjectAccessReview, and `--list`
//! with a SelfSubjectRulesReview.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;

/// `authorization.k8s.io`.
pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
/// `authorization.k8s.io/v1`.
pub const AUTHORIZATION_API_VERSION: &str = "authorization.k8s.io/v1";

/// A request to the resource API, as a review describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceAttributes {
    /// The namespace (`""`: all namespaces, or a cluster-scoped resource).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The verb (`get`, `list`, `create`, ..., `*` for all).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verb: String,
    /// The API group (`""` core, `*` all).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The version (unused by RBAC).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The resource's plural (`*` all).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// The subresource.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// The object's name (`""`: all).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A request to a non-resource path, as a review describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NonResourceAttributes {
    /// The path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The HTTP method in lowercase.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verb: String,
}

/// What a review asks (`SubjectAccessReviewSpec`; a self review leaves the
/// user fields empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubjectAccessReviewSpec {
    /// A resource request, or
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<ResourceAttributes>,
    /// a non-resource one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_resource_attributes: Option<NonResourceAttributes>,
    /// The user asked about.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Its groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Its authenticator's extra facts.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
    /// Its uid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The answer of an access review.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubjectAccessReviewStatus {
    /// Whether the request would be allowed.
    pub allowed: bool,
    /// Whether it is denied outright (RBAC never says so: only not allowed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub denied: bool,
    /// Why.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What went wrong deciding, if anything.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub evaluation_error: String,
}

/// An access review: `SubjectAccessReview` (any user; for components that
/// authorize on the API server's behalf), `SelfSubjectAccessReview` (the
/// asker itself) or `LocalSubjectAccessReview` (one namespace).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessReview {
    /// `authorization.k8s.io/v1`.
    pub api_version: String,
    /// The review's kind.
    pub kind: String,
    /// Unused; echoed.
    pub metadata: ObjectMeta,
    /// The question.
    pub spec: SubjectAccessReviewSpec,
    /// The answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<SubjectAccessReviewStatus>,
}

/// What a rules review asks: every rule of the asker in a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SelfSubjectRulesReviewSpec {
    /// The namespace.
    pub namespace: String,
}

/// A rule over resources, as a rules review lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceRule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// API groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

/// A rule over non-resource paths, as a rules review lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NonResourceRule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// Paths.
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

/// The answer of a rules review.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubjectRulesReviewStatus {
    /// The rules over resources.
    pub resource_rules: Vec<ResourceRule>,
    /// The rules over paths.
    pub non_resource_rules: Vec<NonResourceRule>,
    /// Whether the list may miss rules (an authorizer that cannot list them).
    pub incomplete: bool,
    /// What went wrong, if anything.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub evaluation_error: String,
}

/// A `SelfSubjectRulesReview`: what may I do in this namespace?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SelfSubjectRulesReview {
    /// `authorization.k8s.io/v1`.
    pub api_version: String,
    /// `SelfSubjectRulesReview`.
    pub kind: String,
    /// Unused; echoed.
    pub metadata: ObjectMeta,
    /// The question.
    pub spec: SelfSubjectRulesReviewSpec,
    /// The answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<SubjectRulesReviewStatus>,
}
