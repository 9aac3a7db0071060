//! RBAC's kinds, wire-compatible with Kubernetes' `rbac.authorization.k8s.io/v1`:
//! Role and ClusterRole (sets of [`PolicyRule`]s) and RoleBinding and
//! ClusterRoleBinding (a role granted to [`Subject`]s).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::resource::{Resource, impl_resource};
use crate::validation::{
    FieldError, NameRule, Validate, validate_object_meta, validate_object_meta_update,
};

/// `rbac.authorization.k8s.io`.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The verbs a resource rule may name: Kubernetes' API verbs and the special
/// ones RBAC itself checks (`bind`, `escalate`), `*` for every one.
pub const RESOURCE_VERBS: [&str; 15] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "bind",
    "escalate",
    "impersonate",
    "use",
    "approve",
    "proxy",
    "*",
];

/// The verbs a non-resource rule may name: HTTP methods in lowercase.
pub const NON_RESOURCE_VERBS: [&str; 8] = [
    "get", "head", "post", "put", "patch", "delete", "options", "*",
];

/// One permission of a role (`PolicyRule`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct PolicyRule {
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or `*`).
    pub verbs: Vec<String>,
    /// API groups (`""` is the core group, `*` any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources, with `resource/subresource` for a subresource; `*` any
    /// resource, `*/sub` a subresource of any resource, `res/*` every
    /// subresource of one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names; empty means any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Paths not of the resource API (`/healthz`, `/metrics`); a trailing `*`
    /// matches a prefix.
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    /// A resource rule: `verbs` on `resources` of `groups`.
    pub fn resources(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        PolicyRule {
            verbs: owned(verbs),
            api_groups: owned(groups),
            resources: owned(resources),
            ..PolicyRule::default()
        }
    }

    /// A non-resource rule: `verbs` on `urls`.
    pub fn urls(verbs: &[&str], urls: &[&str]) -> Self {
        PolicyRule {
            verbs: owned(verbs),
            non_resource_urls: owned(urls),
            ..PolicyRule::default()
        }
    }

    /// The same rule limited to objects of these names.
    pub fn named(mut self, names: &[&str]) -> Self {
        self.resource_names = owned(names);
        self
    }
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// What a binding refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RoleKind {
    /// A role of the binding's namespace.
    #[default]
    Role,
    /// A cluster-wide role.
    ClusterRole,
}

impl RoleKind {
    /// `Role` or `ClusterRole`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Role => "Role",
            RoleKind::ClusterRole => "ClusterRole",
        }
    }
}

/// A reference from a binding to a role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct RoleRef {
    /// `rbac.authorization.k8s.io`.
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: RoleKind,
    /// The role's name.
    pub name: String,
}

impl RoleRef {
    /// A reference to the cluster role `name`.
    pub fn cluster_role(name: &str) -> Self {
        RoleRef {
            api_group: RBAC_GROUP.to_owned(),
            kind: RoleKind::ClusterRole,
            name: name.to_owned(),
        }
    }
}

/// What kind of identity a subject names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SubjectKind {
    /// A user, by name.
    #[default]
    User,
    /// Every user in a group.
    Group,
    /// A service account (`system:serviceaccount:NAMESPACE:NAME`).
    ServiceAccount,
}

/// Who a binding grants its role to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: SubjectKind,
    /// The user's, group's or service account's name.
    pub name: String,
    /// A service account's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `rbac.authorization.k8s.io` for users and groups, `""` for service
    /// accounts.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
}

impl Subject {
    /// The user `name`.
    pub fn user(name: &str) -> Self {
        Subject {
            kind: SubjectKind::User,
            name: name.to_owned(),
            api_group: RBAC_GROUP.to_owned(),
            ..Subject::default()
        }
    }

    /// Every user of the group `name`.
    pub fn group(name: &str) -> Self {
        Subject {
            kind: SubjectKind::Group,
            name: name.to_owned(),
            api_group: RBAC_GROUP.to_owned(),
            ..Subject::default()
        }
    }
}

macro_rules! role_kind {
    ($ty:ident, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", default)]
        #[schemars(deny_unknown_fields)]
        pub struct $ty {
            /// `rbac.authorization.k8s.io/v1`.
            pub api_version: String,
            #[doc = concat!("`", $kind, "`.")]
            pub kind: String,
            /// Its name (any path segment: `system:node` is one).
            pub metadata: ObjectMeta,
            /// What it allows.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub rules: Vec<PolicyRule>,
        }

        impl_resource!(
            $ty,
            group: RBAC_GROUP,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: [],
            namespaced: $namespaced,
            has_status: false,
        );

        impl Default for $ty {
            fn default() -> Self {
                $ty {
                    api_version: <$ty>::api_version(),
                    kind: <$ty>::KIND.to_owned(),
                    metadata: ObjectMeta::default(),
                    rules: Vec::new(),
                }
            }
        }

        impl $ty {
            /// A role of this name and rules.
            pub fn new(name: &str, rules: Vec<PolicyRule>) -> Self {
                let mut role = $ty::default();
                role.metadata.name = name.to_owned();
                role.rules = rules;
                role
            }
        }

        impl Validate for $ty {
            fn validate(&self) -> Vec<FieldError> {
                let mut errs = validate_type_and_meta::<$ty>(&self.api_version, &self.kind, &self.metadata);
                for (i, rule) in self.rules.iter().enumerate() {
                    errs.extend(validate_rule(rule, &format!("rules[{i}]"), $namespaced));
                }
                errs
            }

            fn validate_update(&self, old: &Self) -> Vec<FieldError> {
                let mut errs = self.validate();
                errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
                errs
            }
        }
    };
}

macro_rules! binding_kind {
    ($ty:ident, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", default)]
        #[schemars(deny_unknown_fields)]
        pub struct $ty {
            /// `rbac.authorization.k8s.io/v1`.
            pub api_version: String,
            #[doc = concat!("`", $kind, "`.")]
            pub kind: String,
            /// Its name (any path segment).
            pub metadata: ObjectMeta,
            /// Who is granted the role.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub subjects: Vec<Subject>,
            /// The role granted; it never changes (delete and recreate the
            /// binding instead).
            pub role_ref: RoleRef,
        }

        impl_resource!(
            $ty,
            group: RBAC_GROUP,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: [],
            namespaced: $namespaced,
            has_status: false,
        );

        impl Default for $ty {
            fn default() -> Self {
                $ty {
                    api_version: <$ty>::api_version(),
                    kind: <$ty>::KIND.to_owned(),
                    metadata: ObjectMeta::default(),
                    subjects: Vec::new(),
                    role_ref: RoleRef::default(),
                }
            }
        }

        impl $ty {
            /// A binding of this name granting `role_ref` to `subjects`.
            pub fn new(name: &str, role_ref: RoleRef, subjects: Vec<Subject>) -> Self {
                let mut binding = $ty::default();
                binding.metadata.name = name.to_owned();
                binding.role_ref = role_ref;
                binding.subjects = subjects;
                binding
            }
        }

        impl Validate for $ty {
            fn validate(&self) -> Vec<FieldError> {
                let mut errs = validate_type_and_meta::<$ty>(&self.api_version, &self.kind, &self.metadata);
                errs.extend(validate_role_ref(&self.role_ref, $namespaced));
                for (i, subject) in self.subjects.iter().enumerate() {
                    errs.extend(validate_subject(subject, &format!("subjects[{i}]"), $namespaced));
                }
                errs
            }

            fn validate_update(&self, old: &Self) -> Vec<FieldError> {
                let mut errs = self.validate();
                errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
                if self.role_ref != old.role_ref {
                    errs.push(FieldError::invalid(
                        "roleRef",
                        format!("{}/{}", self.role_ref.kind.as_str(), self.role_ref.name),
                        "cannot change roleRef",
                    ));
                }
                errs
            }
        }
    };
}

role_kind!(
    Role,
    "Role",
    "roles",
    "role",
    true,
    "A set of permissions within one namespace."
);
role_kind!(
    ClusterRole,
    "ClusterRole",
    "clusterroles",
    "clusterrole",
    false,
    "A set of permissions cluster-wide (or, through a RoleBinding, in one namespace)."
);
binding_kind!(
    RoleBinding,
    "RoleBinding",
    "rolebindings",
    "rolebinding",
    true,
    "A Role or ClusterRole granted to subjects within one namespace."
);
binding_kind!(
    ClusterRoleBinding,
    "ClusterRoleBinding",
    "clusterrolebindings",
    "clusterrolebinding",
    false,
    "A ClusterRole granted to subjects cluster-wide."
);

/// Why `name` is not a valid path segment (RBAC's names: `system:node` is
/// one), if it is not.
pub fn path_segment_problem(name: &str) -> Option<&'static str> {
    if name == "." || name == ".." {
        Some("may not be '.' or '..'")
    } else if name.contains('/') {
        Some("may not contain '/'")
    } else if name.contains('%') {
        Some("may not contain '%'")
    } else {
        None
    }
}

fn validate_type_and_meta<K: Resource>(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let expected = K::api_version();
    if api_version != expected {
        errs.push(FieldError::not_supported(
            "apiVersion",
            api_version,
            &[expected.as_str()],
        ));
    }
    if kind != K::KIND {
        errs.push(FieldError::not_supported("kind", kind, &[K::KIND]));
    }
    // RBAC names are path segments, not DNS names: check the rest of the
    // metadata with a stand-in name, then the name itself.
    let mut rest = meta.clone();
    if !rest.name.is_empty() {
        rest.name = "x".to_owned();
    }
    if !rest.generate_name.is_empty() {
        rest.generate_name = "x-".to_owned();
    }
    errs.extend(validate_object_meta(
        &rest,
        K::NAMESPACED,
        NameRule::Subdomain,
    ));
    for (field, value) in [
        ("metadata.name", &meta.name),
        ("metadata.generateName", &meta.generate_name),
    ] {
        if let Some(problem) = path_segment_problem(value) {
            errs.push(FieldError::invalid(field, value.as_str(), problem));
        } else if value.len() > 253 {
            errs.push(FieldError::too_long(field, 253));
        }
    }
    errs
}

/// Kubernetes' `ValidatePolicyRule`, and verbs Loom knows.
pub fn validate_rule(rule: &PolicyRule, path: &str, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if rule.verbs.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    let non_resource = !rule.non_resource_urls.is_empty();
    let known: &[&str] = if non_resource {
        &NON_RESOURCE_VERBS
    } else {
        &RESOURCE_VERBS
    };
    for (i, verb) in rule.verbs.iter().enumerate() {
        if !known.contains(&verb.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.verbs[{i}]"),
                verb.as_str(),
                known,
            ));
        }
    }
    if non_resource {
        if namespaced {
            errs.push(FieldError::invalid(
                format!("{path}.nonResourceURLs"),
                rule.non_resource_urls.join(","),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !rule.api_groups.is_empty() || !rule.resources.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.nonResourceURLs"),
                rule.non_resource_urls.join(","),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        for (i, url) in rule.non_resource_urls.iter().enumerate() {
            if !url.starts_with('/') && url != "*" {
                errs.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs[{i}]"),
                    url.as_str(),
                    "must start with '/' or be '*'",
                ));
            }
        }
        return errs;
    }
    if rule.api_groups.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if rule.resources.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
    for (i, resource) in rule.resources.iter().enumerate() {
        if resource.is_empty() || resource.split('/').count() > 2 {
            errs.push(FieldError::invalid(
                format!("{path}.resources[{i}]"),
                resource.as_str(),
                "must be a resource, resource/subresource, or a wildcard",
            ));
        }
    }
    errs
}

fn validate_role_ref(role_ref: &RoleRef, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if role_ref.api_group != RBAC_GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            role_ref.api_group.as_str(),
            &[RBAC_GROUP],
        ));
    }
    if !namespaced && role_ref.kind != RoleKind::ClusterRole {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            role_ref.kind.as_str(),
            &["ClusterRole"],
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else if let Some(problem) = path_segment_problem(&role_ref.name) {
        errs.push(FieldError::invalid(
            "roleRef.name",
            role_ref.name.as_str(),
            problem,
        ));
    }
    errs
}

fn validate_subject(subject: &Subject, path: &str, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if subject.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    }
    match subject.kind {
        SubjectKind::ServiceAccount => {
            if !subject.api_group.is_empty() {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    subject.api_group.as_str(),
                    &[""],
                ));
            }
            if !subject.name.is_empty() {
                for message in crate::names::name_is_dns1123_subdomain(&subject.name, false) {
                    errs.push(FieldError::invalid(
                        format!("{path}.name"),
                        subject.name.as_str(),
                        message,
                    ));
                }
            }
            if !namespaced && subject.namespace.is_empty() {
                errs.push(FieldError::required(format!("{path}.namespace"), ""));
            }
        }
        SubjectKind::User | SubjectKind::Group => {
            if !subject.api_group.is_empty() && subject.api_group != RBAC_GROUP {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    subject.api_group.as_str(),
                    &[RBAC_GROUP],
                ));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kubernetes_objects_decode_and_validate() {
        let role: ClusterRole = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:reader"},
            "rules": [
                {"apiGroups": ["loom.dev"], "resources": ["tasks", "tasks/log"], "verbs": ["get", "list"]},
                {"nonResourceURLs": ["/healthz", "/metrics*"], "verbs": ["get"]}
            ]
        }))
        .unwrap();
        assert!(role.validate().is_empty(), "{:?}", role.validate());
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "ci", "namespace": "a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "ci"},
                {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}
            ]
        }))
        .unwrap();
        assert!(binding.validate().is_empty(), "{:?}", binding.validate());
        let back = serde_json::to_value(&binding).unwrap();
        assert_eq!(back["roleRef"]["kind"], "ClusterRole");
        assert_eq!(
            back["subjects"][0],
            serde_json::json!({"kind": "ServiceAccount", "name": "ci"})
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let mut role = Role::new(
            "r",
            vec![PolicyRule::resources(
                &["get", "steal"],
                &["loom.dev"],
                &["tasks"],
            )],
        );
        role.metadata.namespace = "a".into();
        let errs = role.validate();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "rules[0].verbs[1]");
        role.rules = vec![PolicyRule::urls(&["get"], &["/metrics"])];
        assert_eq!(role.validate()[0].field, "rules[0].nonResourceURLs");
        role.rules = vec![PolicyRule {
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }];
        let fields: Vec<String> = role.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["rules[0].apiGroups", "rules[0].resources"]);
        let mut bad = ClusterRole::new("a/b", Vec::new());
        assert_eq!(bad.validate()[0].field, "metadata.name");
        bad.metadata.name = "system:ok".into();
        assert!(bad.validate().is_empty());
    }

    #[test]
    fn bindings_refer_to_roles_of_their_scope_and_never_change_it() {
        let mut binding = ClusterRoleBinding::new(
            "b",
            RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: RoleKind::Role,
                name: "r".into(),
            },
            vec![Subject {
                kind: SubjectKind::ServiceAccount,
                name: "sa".into(),
                ..Subject::default()
            }],
        );
        let fields: Vec<String> = binding.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["roleRef.kind", "subjects[0].namespace"]);
        binding.role_ref.kind = RoleKind::ClusterRole;
        binding.subjects[0].namespace = "a".into();
        assert!(binding.validate().is_empty());
        let mut changed = binding.clone();
        changed.role_ref.name = "cluster-admin".into();
        let errs = changed.validate_update(&binding);
        assert_eq!(errs[0].field, "roleRef");
        assert!(errs[0].message.contains("cannot change roleRef"));
        assert!(serde_json::from_value::<RoleRef>(serde_json::json!({"kind": "Robot"})).is_err());
    }
}
