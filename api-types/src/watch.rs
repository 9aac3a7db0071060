//! Watch events as sent on a watch stream: `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{…}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resource::Resource;
use crate::status::Status;

/// One line of a watch stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "object", rename_all = "UPPERCASE")]
pub enum WatchEvent<K> {
    /// The object was created (or, at the start of a watch without a revision, exists).
    Added(K),
    /// The object changed.
    Modified(K),
    /// The object was removed; this is its last state.
    Deleted(K),
    /// Nothing changed, but the stream has seen every change up to this revision.
    Bookmark(Bookmark),
    /// The watch failed; a 410 means the revision is gone and the client must relist.
    Error(Status),
}

/// The object of a `BOOKMARK` event: the watched kind with only a resourceVersion.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Bookmark {
    /// The watched kind's `apiVersion`.
    pub api_version: String,
    /// The watched kind.
    pub kind: String,
    /// The revision reached.
    pub metadata: BookmarkMeta,
}

/// The metadata of a [`Bookmark`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BookmarkMeta {
    /// The revision the stream has reached.
    pub resource_version: String,
    /// Annotations, e.g. `k8s.io/initial-events-end: "true"`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Bookmark {
    /// A bookmark for kind `K` at `resource_version`.
    pub fn for_kind<K: Resource>(resource_version: impl Into<String>) -> Bookmark {
        Bookmark {
            api_version: K::api_version(),
            kind: K::KIND.to_string(),
            metadata: BookmarkMeta {
                resource_version: resource_version.into(),
                annotations: BTreeMap::new(),
            },
        }
    }
}

impl<K> WatchEvent<K> {
    /// The object of an ADDED, MODIFIED or DELETED event.
    pub fn object(&self) -> Option<&K> {
        match self {
            WatchEvent::Added(k) | WatchEvent::Modified(k) | WatchEvent::Deleted(k) => Some(k),
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => None,
        }
    }

    /// The event type as written on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        }
    }

    /// The same event with its object transformed.
    pub fn map<U>(self, f: impl FnOnce(K) -> U) -> WatchEvent<U> {
        match self {
            WatchEvent::Added(k) => WatchEvent::Added(f(k)),
            WatchEvent::Modified(k) => WatchEvent::Modified(f(k)),
            WatchEvent::Deleted(k) => WatchEvent::Deleted(f(k)),
            WatchEvent::Bookmark(b) => WatchEvent::Bookmark(b),
            WatchEvent::Error(s) => WatchEvent::Error(s),
        }
    }
}

impl<K: Resource> WatchEvent<K> {
    /// The revision the event carries: its object's, or the bookmark's.
    pub fn resource_version(&self) -> Option<&str> {
        match self {
            WatchEvent::Added(k) | WatchEvent::Modified(k) | WatchEvent::Deleted(k) => {
                Some(k.meta().resource_version.as_str())
            }
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.as_str()),
            WatchEvent::Error(_) => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kinds::{Task, TaskSpec};

    #[test]
    fn wire_format() {
        let mut task = Task::new("a", TaskSpec::default());
        task.metadata.namespace = "default".into();
        task.metadata.resource_version = "7".into();
        let event = WatchEvent::Added(task.clone());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "ADDED", "object": {"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": "a", "namespace": "default", "resourceVersion": "7"}}})
        );
        let back: WatchEvent<Task> = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.resource_version(), Some("7"));

        let line = r#"{"object":{"apiVersion":"loom.dev/v1","kind":"Task","metadata":{"name":"a"}},"type":"DELETED"}"#;
        let event: WatchEvent<Task> = serde_json::from_str(line).unwrap();
        assert_eq!(event.type_name(), "DELETED");
        assert_eq!(event.object().unwrap().metadata.name, "a");
    }

    #[test]
    fn bookmark_and_error() {
        let event: WatchEvent<Task> = WatchEvent::Bookmark(Bookmark::for_kind::<Task>("12"));
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"BOOKMARK","object":{"apiVersion":"loom.dev/v1","kind":"Task","metadata":{"resourceVersion":"12"}}}"#
        );
        assert_eq!(event.resource_version(), Some("12"));
        let error: WatchEvent<Task> = WatchEvent::Error(Status::too_old_resource_version(3, 9));
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(json["type"], "ERROR");
        assert_eq!(json["object"]["code"], 410);
        assert_eq!(json["object"]["kind"], "Status");
        let back: WatchEvent<Task> = serde_json::from_value(json).unwrap();
        assert_eq!(back, error);
        let mapped = WatchEvent::Added(1).map(|n| n + 1);
        assert_eq!(mapped, WatchEvent::Added(2));
        assert!(
            serde_json::from_str::<WatchEvent<Task>>(r#"{"type":"EXPLODED","object":{}}"#).is_err()
        );
    }
}
