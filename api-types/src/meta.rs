//! Object metadata shared by every kind: `TypeMeta`, `ObjectMeta`, `ListMeta`, owner references, conditions and `List<K>`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource::Resource;

/// Whether a value equals its type's default; used to leave defaults out of serialized objects.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The `apiVersion` and `kind` of an object, for reading them before the full type is known.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TypeMeta {
    /// `group/version` (or just `version` for the core group), e.g. `loom.dev/v1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// The kind, e.g. `Task`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

impl TypeMeta {
    /// Reads `apiVersion` and `kind` from a JSON object; missing or non-string fields are empty.
    pub fn of(value: &serde_json::Value) -> TypeMeta {
        let field = |name: &str| {
            value
                .get(name)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        TypeMeta {
            api_version: field("apiVersion"),
            kind: field("kind"),
        }
    }

    /// The group part of `apiVersion` (empty for the core group `v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(group, _)| group)
            .unwrap_or("")
    }

    /// The version part of `apiVersion`.
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(_, version)| version)
            .unwrap_or(&self.api_version)
    }
}

/// Metadata every persisted object has (Kubernetes `metav1.ObjectMeta`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ObjectMeta {
    /// The object's name, unique per kind within its namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A prefix from which the server generates a unique name when `name` is empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    /// The namespace; empty for cluster-scoped kinds.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// A unique id the server assigns on creation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The store revision of the object's last write, as a decimal string; opaque to clients.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Bumped by the server on every change of the spec.
    #[serde(skip_serializing_if = "is_default")]
    pub generation: i64,
    /// When the object was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// When deletion was requested; the object stays until its finalizers are gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// The grace period the deletion was requested with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Identifying key/value pairs that selectors match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Non-identifying key/value pairs for tools and people.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The objects this one depends on, for garbage collection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Names of the controllers that must act before the object is removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Server-side apply field ownership, kept as opaque JSON.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<serde_json::Value>,
}

impl ObjectMeta {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        }
    }

    /// Metadata with a namespace and a name.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..ObjectMeta::default()
        }
    }

    /// The owner reference marked `controller: true`, if any.
    pub fn controller_ref(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|r| r.controller == Some(true))
    }

    /// Whether deletion has been requested.
    pub fn is_being_deleted(&self) -> bool {
        self.deletion_timestamp.is_some()
    }

    /// Whether the finalizer is present.
    pub fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }
}

/// Metadata of a list: the revision it was read at and the token for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ListMeta {
    /// The store revision the list was read at.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// An opaque token for the next page; empty on the last page.
    #[serde(rename = "continue", skip_serializing_if = "String::is_empty")]
    pub continue_: String,
    /// How many items remain after this page, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<i64>,
}

/// A reference from a dependent object to its owner, for garbage collection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct OwnerReference {
    /// The owner's `apiVersion`.
    pub api_version: String,
    /// The owner's kind.
    pub kind: String,
    /// The owner's name (in the dependent's namespace).
    pub name: String,
    /// The owner's uid.
    pub uid: String,
    /// Whether the owner is the managing controller; at most one reference may say so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// Whether foreground deletion of the owner waits for this dependent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

impl OwnerReference {
    /// A reference to `owner`; `controller` marks it as the managing controller, which also
    /// blocks the owner's foreground deletion.
    pub fn to<K: Resource>(owner: &K, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: K::api_version(),
            kind: K::KIND.to_string(),
            name: owner.meta().name.clone(),
            uid: owner.meta().uid.clone(),
            controller: controller.then_some(true),
            block_owner_deletion: controller.then_some(true),
        }
    }
}

/// A reference to any object, as in events.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ObjectReference {
    /// The referent's `apiVersion`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// The referent's kind.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The referent's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The referent's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The referent's uid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The referent's resourceVersion when the reference was made.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// A path within the referent, e.g. `spec.image`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

impl ObjectReference {
    /// A reference to `object`.
    pub fn to<K: Resource>(object: &K) -> ObjectReference {
        let meta = object.meta();
        ObjectReference {
            api_version: K::api_version(),
            kind: K::KIND.to_string(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: String::new(),
        }
    }
}

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known.
    #[default]
    Unknown,
}

/// One aspect of an object's state (`Ready`, `Scheduled`…), as Kubernetes `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Condition {
    /// The aspect, in CamelCase, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase reason for the last transition.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human-readable message about the last transition.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
    /// When the condition was last confirmed (nodes' `Ready` heartbeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<DateTime<Utc>>,
    /// The `metadata.generation` the condition was computed from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition of the given type and status, with a reason and message.
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            ..Condition::default()
        }
    }

    /// Whether the status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Adds or updates a condition (Kubernetes `meta.SetStatusCondition`): `lastTransitionTime`
/// moves to `now` (unless the new condition carries one) only when the status changes, and
/// is kept otherwise. Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    mut condition: Condition,
    now: DateTime<Utc>,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        None => {
            if condition.last_transition_time.is_none() {
                condition.last_transition_time = Some(now);
            }
            conditions.push(condition);
            true
        }
        Some(existing) => {
            if existing.status != condition.status {
                condition.last_transition_time = condition.last_transition_time.or(Some(now));
            } else {
                condition.last_transition_time = existing.last_transition_time;
            }
            let changed = *existing != condition;
            *existing = condition;
            changed
        }
    }
}

/// A list of objects of one kind (`TaskList`, …) with its list metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<K> {
    /// `loom.dev/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `<Kind>List`, e.g. `TaskList`.
    #[serde(default)]
    pub kind: String,
    /// The revision the list was read at, and paging.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The objects.
    #[serde(default = "Vec::new")]
    pub items: Vec<K>,
}

impl<K: Resource> List<K> {
    /// A list of `items` read at `metadata.resourceVersion`.
    pub fn new(items: Vec<K>, metadata: ListMeta) -> List<K> {
        List {
            api_version: K::api_version(),
            kind: format!("{}List", K::KIND),
            metadata,
            items,
        }
    }
}

impl<K: Resource> Default for List<K> {
    fn default() -> Self {
        List::new(Vec::new(), ListMeta::default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn object_meta_round_trips_kubernetes_json() {
        let json = serde_json::json!({
            "name": "web",
            "generateName": "web-",
            "namespace": "default",
            "uid": "1f0c",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "deletionTimestamp": "2024-05-01T11:00:00Z",
            "deletionGracePeriodSeconds": 30,
            "labels": {"app": "web"},
            "annotations": {"note": "x"},
            "ownerReferences": [{"apiVersion": "loom.dev/v1", "kind": "Job", "name": "j", "uid": "u", "controller": true, "blockOwnerDeletion": true}],
            "finalizers": ["loom.dev/gc"],
            "managedFields": [{"manager": "loomctl"}]
        });
        let meta: ObjectMeta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(meta.generation, 3);
        assert_eq!(
            meta.creation_timestamp,
            Some(Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap())
        );
        assert_eq!(meta.controller_ref().unwrap().name, "j");
        assert_eq!(serde_json::to_value(&meta).unwrap(), json);
    }

    #[test]
    fn empty_fields_are_skipped_and_tolerated() {
        let meta: ObjectMeta = serde_json::from_str("{}").unwrap();
        assert_eq!(meta, ObjectMeta::default());
        assert_eq!(serde_json::to_string(&meta).unwrap(), "{}");
        let list_meta = ListMeta {
            continue_: "abc".into(),
            ..ListMeta::default()
        };
        assert_eq!(
            serde_json::to_string(&list_meta).unwrap(),
            r#"{"continue":"abc"}"#
        );
    }

    #[test]
    fn type_meta_of_value() {
        let tm = TypeMeta::of(&serde_json::json!({"apiVersion": "loom.dev/v1", "kind": "Task"}));
        assert_eq!(tm.group(), "loom.dev");
        assert_eq!(tm.version(), "v1");
        let core = TypeMeta::of(&serde_json::json!({"apiVersion": "v1", "kind": 3}));
        assert_eq!(core.group(), "");
        assert_eq!(core.version(), "v1");
        assert_eq!(core.kind, "");
    }

    #[test]
    fn conditions_keep_transition_time_when_status_is_unchanged() {
        let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 1, 0).unwrap();
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            Condition::new("Ready", ConditionStatus::True, "Started", ""),
            t0
        ));
        assert!(!set_condition(
            &mut conditions,
            Condition::new("Ready", ConditionStatus::True, "Started", ""),
            t1
        ));
        assert_eq!(conditions[0].last_transition_time, Some(t0));
        assert!(set_condition(
            &mut conditions,
            Condition::new("Ready", ConditionStatus::False, "Stopped", ""),
            t1
        ));
        assert_eq!(conditions[0].last_transition_time, Some(t1));
        assert!(!find_condition(&conditions, "Ready").unwrap().is_true());
        assert_eq!(
            serde_json::to_value(&conditions[0]).unwrap(),
            serde_json::json!({"type": "Ready", "status": "False", "reason": "Stopped", "lastTransitionTime": "2024-01-01T00:01:00Z"})
        );
    }
}
