//! The Event kind: a record that something happened to an object, shaped like Kubernetes core/v1 Event.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, ObjectReference};
use crate::resource::{API_VERSION, Resource, impl_resource};

/// An Event. Namespaced; its fields sit at the top level, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Event {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Event`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The object it is about.
    pub involved_object: ObjectReference,
    /// Why, in CamelCase (`Scheduled`, `Preempted`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What happened, for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<EventType>,
    /// How many times it happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    /// When it first happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<DateTime<Utc>>,
    /// When it last happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<DateTime<Utc>>,
    /// The component that reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<EventSource>,
    /// The reporting controller, e.g. `loom.dev/scheduler`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reporting_component: String,
    /// Which instance of it, e.g. its host.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reporting_instance: String,
    /// What was done, e.g. `Binding`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
}

impl_resource!(
    Event,
    kind: "Event",
    plural: "events",
    singular: "event",
    short_names: ["ev"],
    namespaced: true,
    has_status: false,
);

impl Default for Event {
    fn default() -> Self {
        Event {
            api_version: API_VERSION.to_string(),
            kind: <Event as Resource>::KIND.to_string(),
            metadata: ObjectMeta::default(),
            involved_object: ObjectReference::default(),
            reason: String::new(),
            message: String::new(),
            type_: None,
            count: None,
            first_timestamp: None,
            last_timestamp: None,
            source: None,
            reporting_component: String::new(),
            reporting_instance: String::new(),
            action: String::new(),
        }
    }
}

impl Event {
    /// An event named `name` about `involved_object`.
    pub fn new(name: impl Into<String>, involved_object: ObjectReference) -> Event {
        Event {
            metadata: ObjectMeta::named(name),
            involved_object,
            ..Event::default()
        }
    }
}

/// Whether an event is routine or a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// Routine.
    #[default]
    Normal,
    /// Something may need attention.
    Warning,
}

/// The component that reported an event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct EventSource {
    /// The component, e.g. `scheduler`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub component: String,
    /// The host it ran on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
}
