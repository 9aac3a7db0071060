//! The Node kind: a machine, its taints, task subnet, capacity, heartbeat condition and sampled usage.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::task::ResourceUsage;
use crate::meta::{Condition, ObjectMeta, find_condition, is_default};
use crate::quantity::Quantity;
use crate::resource::{impl_resource, impl_spec_kind};

/// The condition type a nodelet renews with its heartbeat.
pub const NODE_CONDITION_READY: &str = "Ready";
/// The label carrying a node's CPU architecture.
pub const LABEL_ARCH: &str = "loom.dev/arch";
/// The label carrying a node's operating system.
pub const LABEL_OS: &str = "loom.dev/os";
/// The label carrying a node's kernel version.
pub const LABEL_KERNEL: &str = "loom.dev/kernel";
/// The label carrying a node's host name.
pub const LABEL_HOSTNAME: &str = "loom.dev/hostname";
/// Set to `true` on a node whose operator allows the unconfined `raw` driver
/// (`loom nodelet --allow-raw-exec`); the scheduler places `raw` tasks only there.
pub const LABEL_ALLOW_RAW_EXEC: &str = "loom.dev/allow-raw-exec";
/// Set to `true` on a node whose operator allows host-path mounts under some
/// prefixes (`loom nodelet --allow-host-paths`); the scheduler places tasks with
/// mounts only there, and the nodelet checks each path against its prefixes.
pub const LABEL_ALLOW_HOST_PATHS: &str = "loom.dev/allow-host-paths";

/// A Node: a machine that runs tasks. Cluster-scoped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Node {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Node`.
    pub kind: String,
    /// Name and labels (attributes such as `loom.dev/arch`).
    pub metadata: ObjectMeta,
    /// Cordon, taints and the task subnet.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: NodeSpec,
    /// Capacity, heartbeat and usage, written by the nodelet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

impl_resource!(
    Node,
    kind: "Node",
    plural: "nodes",
    singular: "node",
    short_names: ["no"],
    namespaced: false,
    has_status: true,
);
impl_spec_kind!(Node, NodeSpec);

impl Node {
    /// Whether the `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, NODE_CONDITION_READY))
            .is_some_and(Condition::is_true)
    }
}

/// What a taint does to tasks that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    /// New tasks are not scheduled here.
    NoSchedule,
    /// The scheduler avoids the node when it can.
    PreferNoSchedule,
    /// New tasks are not scheduled, and running ones are evicted.
    NoExecute,
}

impl TaintEffect {
    /// The effect's name as written in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A mark that repels tasks without a matching toleration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Taint {
    /// The key (a qualified name).
    pub key: String,
    /// The value (a label value).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

/// A Node's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: no new tasks are scheduled here.
    #[serde(skip_serializing_if = "is_default")]
    pub unschedulable: bool,
    /// Taints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// The IPv4 subnet this node's tasks take their addresses from, e.g.
    /// `10.77.3.0/24` (`taskCIDR`, as Kubernetes' `podCIDR`). The controllers
    /// assign it from their `--cluster-cidr` when it is empty; once set it never
    /// changes. The first step of task networking: nothing uses it yet.
    #[serde(rename = "taskCIDR", skip_serializing_if = "String::is_empty")]
    pub task_cidr: String,
}

/// An address a node can be reached at.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub address: String,
}

/// Facts about the machine, reported by the nodelet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct NodeInfo {
    /// The operating system, e.g. `linux`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// The CPU architecture, e.g. `amd64`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// `uname -r`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kernel_version: String,
    /// The host name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// The nodelet's version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nodelet_version: String,
    /// The OS image, e.g. from `/etc/os-release`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os_image: String,
    /// `/etc/machine-id`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub machine_id: String,
    /// The boot id; a change means the machine rebooted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

/// A Node's observed state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct NodeStatus {
    /// Everything the machine has, by resource name (`cpu`, `memory`, `disk`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    /// What tasks may reserve, by resource name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, Quantity>,
    /// `Ready`, with `lastHeartbeatTime`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where it can be reached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// Facts about the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<NodeInfo>,
    /// The URL of the nodelet's own server (logs), e.g. `http://10.0.0.5:7444`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nodelet_endpoint: String,
    /// Sampled CPU and memory use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceUsage>,
}
