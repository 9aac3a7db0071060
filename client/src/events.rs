//! The event recorder: Events that say what a controller did to an object and why.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use api_types::event::{EventSource, EventType};
use api_types::{Event, ObjectMeta, ObjectReference};
use chrono::Utc;
use serde_json::json;

use crate::api::{Api, Patch, PatchParams, PostParams};
use crate::client::Client;
use crate::error::Result;

/// Publishes Events on behalf of one component.
#[derive(Clone, Debug)]
pub struct Recorder {
    client: Client,
    component: String,
    host: String,
}

impl Recorder {
    /// A recorder for `component` (e.g. `job-controller`) on `host`.
    pub fn new(client: Client, component: &str, host: &str) -> Self {
        Recorder {
            client,
            component: component.to_owned(),
            host: host.to_owned(),
        }
    }

    /// Records that `reason` happened to `object`; a repeat of the same reason and
    /// message counts up on one Event instead of making another.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<Event> {
        let namespace = if object.namespace.is_empty() {
            "default"
        } else {
            &object.namespace
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let mut hasher = DefaultHasher::new();
        (&object.uid, &object.kind, reason, message, &self.component).hash(&mut hasher);
        let name = format!("{}.{:016x}", object.name, hasher.finish());
        let now = Utc::now();
        if let Some(existing) = api.get_opt(&name).await? {
            let count = existing.count.unwrap_or(1) + 1;
            let patch = json!({"count": count, "lastTimestamp": now});
            return api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await;
        }
        let event = Event {
            metadata: ObjectMeta {
                name,
                namespace: namespace.to_owned(),
                ..Default::default()
            },
            involved_object: object.clone(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            type_: Some(type_),
            count: Some(1),
            first_timestamp: Some(now),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: self.component.clone(),
                host: self.host.clone(),
            }),
            reporting_component: self.component.clone(),
            reporting_instance: self.host.clone(),
            ..Event::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => Ok(created),
            // Another replica recorded it first: count on it instead.
            Err(error) if error.is_conflict() => {
                let patch = json!({"lastTimestamp": now});
                api.patch(
                    &event.metadata.name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            }
            Err(error) => Err(error),
        }
    }
}
