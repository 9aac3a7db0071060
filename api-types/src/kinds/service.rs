//! The Service kind: long-running replicated tasks, rolled over to a new template without dropping below `replicas - maxUnavailable`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::task::TaskTemplate;
use crate::meta::{Condition, ObjectMeta, is_default};
use crate::quantity::IntOrString;
use crate::resource::{impl_resource, impl_spec_kind};

/// A Service: replicated tasks that should never go down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Service {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Service`.
    pub kind: String,
    /// Name, namespace, labels…
    pub metadata: ObjectMeta,
    /// What to run and how to roll it.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: ServiceSpec,
    /// Progress, written by the Service controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

impl_resource!(
    Service,
    kind: "Service",
    plural: "services",
    singular: "service",
    short_names: ["svc"],
    namespaced: true,
    has_status: true,
);
impl_spec_kind!(Service, ServiceSpec);

/// The default `maxSurge` and `maxUnavailable`, as in Kubernetes Deployments.
pub const DEFAULT_ROLLING_PERCENT: &str = "25%";

/// How a new template replaces the running tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ServiceStrategy {
    /// How many tasks above `replicas` may exist during a rollout (count or percentage; 25% by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// How many tasks below `replicas` may be unavailable during a rollout (count or percentage; 25% by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

impl ServiceStrategy {
    /// `maxSurge`, or 25%.
    pub fn max_surge(&self) -> IntOrString {
        self.max_surge
            .clone()
            .unwrap_or_else(|| IntOrString::from(DEFAULT_ROLLING_PERCENT))
    }

    /// `maxUnavailable`, or 25%.
    pub fn max_unavailable(&self) -> IntOrString {
        self.max_unavailable
            .clone()
            .unwrap_or_else(|| IntOrString::from(DEFAULT_ROLLING_PERCENT))
    }
}

/// What a Service runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ServiceSpec {
    /// How many tasks should run (1 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The tasks' labels, annotations and spec (restart policy `Always`).
    pub template: TaskTemplate,
    /// The rollout strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<ServiceStrategy>,
}

impl ServiceSpec {
    /// The number of tasks, 1 by default.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }

    /// The strategy, defaults filled in.
    pub fn strategy(&self) -> ServiceStrategy {
        self.strategy.clone().unwrap_or_default()
    }
}

/// A Service's progress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ServiceStatus {
    /// Tasks that exist (not terminal).
    #[serde(skip_serializing_if = "is_default")]
    pub replicas: i32,
    /// Tasks made from the current template.
    #[serde(skip_serializing_if = "is_default")]
    pub updated_replicas: i32,
    /// Tasks running and ready.
    #[serde(skip_serializing_if = "is_default")]
    pub ready_replicas: i32,
    /// Tasks ready long enough to count as available.
    #[serde(skip_serializing_if = "is_default")]
    pub available_replicas: i32,
    /// The `metadata.generation` this status reflects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Available`, `Progressing`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
