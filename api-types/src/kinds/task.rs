//! The Task kind: one container (or host process) on one node, with its spec, status and template.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::node::{Taint, TaintEffect};
use crate::meta::{Condition, ObjectMeta, is_default};
use crate::quantity::{IntOrString, Quantity};
use crate::resource::{impl_resource, impl_spec_kind};
use crate::selector::Requirement;

/// The condition type set once the scheduler has bound the task to a node.
pub const TASK_CONDITION_SCHEDULED: &str = "Scheduled";
/// The condition type set while the task runs and is healthy.
pub const TASK_CONDITION_READY: &str = "Ready";

/// A Task: the unit that runs, one container on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Task {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Task`.
    pub kind: String,
    /// Name, namespace, labels…
    pub metadata: ObjectMeta,
    /// What to run and what it needs.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: TaskSpec,
    /// What happened to it, written by the nodelet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

impl_resource!(
    Task,
    kind: "Task",
    plural: "tasks",
    singular: "task",
    short_names: ["t"],
    namespaced: true,
    has_status: true,
);
impl_spec_kind!(Task, TaskSpec);

impl Task {
    /// The phase, `Pending` when there is no status yet.
    pub fn phase(&self) -> TaskPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// Whether the task reached a phase it never leaves.
    pub fn is_terminal(&self) -> bool {
        self.phase().is_terminal()
    }
}

/// How a task is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A container through libcontainer: its own namespaces, cgroup and root filesystem.
    #[default]
    Container,
    /// A confined host process: its own mount, pid and ipc namespaces over the
    /// host's root read-only, a writable work directory, an unprivileged uid,
    /// seccomp and no capabilities; the host's network.
    Exec,
    /// An unconfined host process in its own cgroup, as root: only on nodes whose
    /// operator allows it (`loom nodelet --allow-raw-exec`).
    Raw,
}

/// When a task's process is started again after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// Never: the exit decides the phase.
    #[default]
    Never,
    /// After a non-zero exit, with backoff.
    OnFailure,
    /// After any exit, with backoff (services).
    Always,
}

impl RestartPolicy {
    /// The policy's name as written in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestartPolicy::Never => "Never",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Always => "Always",
        }
    }
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct EnvVar {
    /// The name, a C identifier.
    pub name: String,
    /// The value.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
}

impl EnvVar {
    /// `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// What a task reserves on its node and its cgroup enforces (requests = limits).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TaskResources {
    /// CPU, in cores (`500m`, `2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, in bytes (`256Mi`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Scratch disk, in bytes (`1Gi`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<Quantity>,
    /// Host ports the task needs free (1–65535).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
    /// Other countable resources by name (`loom.dev/gpu: 1`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, Quantity>,
}

/// `Equal` (key and value match) or `Exists` (key matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    /// The taint's key and value must equal the toleration's.
    #[default]
    Equal,
    /// The taint's key must equal the toleration's (any key if empty).
    Exists,
}

/// Lets a task run on (or stay on) a node with a matching taint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Toleration {
    /// The taint key; empty with `Exists` tolerates every taint.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// `Equal` (default) or `Exists`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    /// The taint value, for `Equal`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// The effect tolerated; every effect when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    /// For `NoExecute`: how long the task may stay after the taint appears; forever when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    /// Whether this toleration tolerates the taint (Kubernetes' `ToleratesTaint`).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if let Some(effect) = self.effect
            && taint.effect != Some(effect)
        {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.unwrap_or_default() {
            TolerationOperator::Equal => self.value == taint.value,
            TolerationOperator::Exists => true,
        }
    }
}

/// A host file or directory made visible inside the task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Mount {
    /// The absolute host path.
    pub source: String,
    /// The absolute path inside the task.
    pub target: String,
    /// Read-only unless set to `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

impl Mount {
    /// Whether the mount is read-only (the default).
    pub fn is_read_only(&self) -> bool {
        self.read_only.unwrap_or(true)
    }
}

/// The transport protocol of a task's port.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The protocol's name as written in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port the task listens on (Kubernetes' `ContainerPort`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ContainerPort {
    /// A name probes (and later Services) refer to the port by: an IANA service
    /// name (at most 15 characters of `a-z`, `0-9` and `-`, at least one letter,
    /// no leading, trailing or double `-`), unique in the task.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The port inside the task (1–65535).
    pub container_port: i32,
    /// The port on the node's address forwarded to it (1–65535); the scheduler
    /// places the task only where the port is free, as for `resources.ports`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// `TCP` (default) or `UDP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

impl ContainerPort {
    /// The protocol, TCP by default.
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }
}

/// Runs a command inside the task; exit status 0 is success.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ExecAction {
    /// The executable and its arguments, run without a shell.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// The scheme of an HTTP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum Scheme {
    /// Plain HTTP (the default).
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// HTTPS: not supported yet, refused by validation.
    #[serde(rename = "HTTPS")]
    Https,
}

impl Scheme {
    /// The scheme's name as written in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheme::Http => "HTTP",
            Scheme::Https => "HTTPS",
        }
    }
}

/// One header of an HTTP probe's request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct HttpHeader {
    /// The header name (an HTTP token).
    pub name: String,
    /// The value (visible ASCII, spaces and tabs).
    pub value: String,
}

/// The default path of an HTTP probe.
pub const DEFAULT_PROBE_PATH: &str = "/";

/// Sends `GET path` to the task; a status from 200 to 399 is success (redirects
/// are not followed).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct HttpGetAction {
    /// The path and query, starting with `/` (`/` when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// A port number (1–65535) or the name of one of the task's `ports`.
    pub port: IntOrString,
    /// The host to connect to (an IP address or a DNS name); the task's address when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// `HTTP` (default); `HTTPS` is not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    /// Headers to send; a `Host` header here replaces the default one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

impl HttpGetAction {
    /// The path, `/` by default.
    pub fn path(&self) -> &str {
        if self.path.is_empty() {
            DEFAULT_PROBE_PATH
        } else {
            &self.path
        }
    }

    /// The scheme, HTTP by default.
    pub fn scheme(&self) -> Scheme {
        self.scheme.unwrap_or_default()
    }
}

/// Opens a TCP connection to the task; connecting is success.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TcpSocketAction {
    /// A port number (1–65535) or the name of one of the task's `ports`.
    pub port: IntOrString,
    /// The host to connect to (an IP address or a DNS name); the task's address when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// The default `initialDelaySeconds` of a probe.
pub const DEFAULT_PROBE_INITIAL_DELAY_SECONDS: i32 = 0;
/// The default `periodSeconds` of a probe.
pub const DEFAULT_PROBE_PERIOD_SECONDS: i32 = 10;
/// The default `timeoutSeconds` of a probe.
pub const DEFAULT_PROBE_TIMEOUT_SECONDS: i32 = 1;
/// The default `successThreshold` of a probe.
pub const DEFAULT_PROBE_SUCCESS_THRESHOLD: i32 = 1;
/// The default `failureThreshold` of a probe.
pub const DEFAULT_PROBE_FAILURE_THRESHOLD: i32 = 3;

/// A health check the node runs against a running task (Kubernetes' `Probe`):
/// exactly one of `exec`, `httpGet` and `tcpSocket`, and when and how often.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Probe {
    /// Runs a command inside the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// Sends an HTTP GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// Opens a TCP connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// Seconds after the task starts before the probe first runs (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between runs (default 10, at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Seconds one run may take before it counts as failed (default 1, at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Consecutive successes after a failure for the probe to count as passing
    /// (default 1; must be 1 for liveness and startup probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    /// Consecutive failures for the probe to count as failed (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// For liveness and startup probes: the grace period used when a failure
    /// stops the task, instead of the task's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// The one handler of a [`Probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeHandler<'a> {
    /// `exec`.
    Exec(&'a ExecAction),
    /// `httpGet`.
    HttpGet(&'a HttpGetAction),
    /// `tcpSocket`.
    TcpSocket(&'a TcpSocketAction),
}

impl Probe {
    /// The handler, when exactly one is set (validation ensures it).
    pub fn handler(&self) -> Option<ProbeHandler<'_>> {
        match (&self.exec, &self.http_get, &self.tcp_socket) {
            (Some(exec), None, None) => Some(ProbeHandler::Exec(exec)),
            (None, Some(http), None) => Some(ProbeHandler::HttpGet(http)),
            (None, None, Some(tcp)) => Some(ProbeHandler::TcpSocket(tcp)),
            _ => None,
        }
    }

    /// `initialDelaySeconds`, 0 by default.
    pub fn initial_delay_seconds(&self) -> i32 {
        self.initial_delay_seconds
            .unwrap_or(DEFAULT_PROBE_INITIAL_DELAY_SECONDS)
    }

    /// `periodSeconds`, 10 by default.
    pub fn period_seconds(&self) -> i32 {
        self.period_seconds.unwrap_or(DEFAULT_PROBE_PERIOD_SECONDS)
    }

    /// `timeoutSeconds`, 1 by default.
    pub fn timeout_seconds(&self) -> i32 {
        self.timeout_seconds
            .unwrap_or(DEFAULT_PROBE_TIMEOUT_SECONDS)
    }

    /// `successThreshold`, 1 by default.
    pub fn success_threshold(&self) -> i32 {
        self.success_threshold
            .unwrap_or(DEFAULT_PROBE_SUCCESS_THRESHOLD)
    }

    /// `failureThreshold`, 3 by default.
    pub fn failure_threshold(&self) -> i32 {
        self.failure_threshold
            .unwrap_or(DEFAULT_PROBE_FAILURE_THRESHOLD)
    }
}

/// What a task runs and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TaskSpec {
    /// `container` (default) or `exec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// The OCI image (container driver).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The executable and its first arguments (replaces the image's entrypoint).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Further arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// The working directory.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// CPU, memory, disk, ports and extended resources.
    #[serde(skip_serializing_if = "is_default")]
    pub resources: TaskResources,
    /// Requirements on node labels: `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Requirement>,
    /// Taints the task tolerates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Higher runs first and may preempt lower.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// `Never` (default), `OnFailure` or `Always`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Killed (reason `TimeLimitExceeded`) after running this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit_seconds: Option<i64>,
    /// Between SIGTERM and SIGKILL when the task is stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Host files and directories to mount.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Ports the task listens on; a `hostPort` is reserved on the node like
    /// `resources.ports` and forwarded from the node's address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// Whether the task is ready for traffic: until it passes, the task's
    /// `Ready` condition is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Whether the task is alive: when it fails, the task is restarted under
    /// its restart policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Whether the task has started: liveness and readiness probes wait for it,
    /// and when it fails the task is restarted as for a liveness failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// The log's file name inside the task's own log directory on its node
    /// (`[A-Za-z0-9._-]`, not starting with `.`; the node's default name when
    /// empty). Never a path: the node chooses where logs are kept. Fixed at creation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_path: String,
    /// The ServiceAccount the task runs as (`default` when empty): its token,
    /// the cluster's CA and the namespace are mounted at
    /// `/var/run/secrets/kubernetes.io/serviceaccount/`, and
    /// `KUBERNETES_SERVICE_HOST`/`_PORT` name the API server, so a client in
    /// the task (`Client::infer()`, kubectl, client-go) talks to the API as it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    /// Whether the service account's token is mounted (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// The node it is bound to (set by the scheduler).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// Its index in its Job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
}

/// The default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;

impl TaskSpec {
    /// The driver, `container` by default.
    pub fn driver(&self) -> Driver {
        self.driver.unwrap_or_default()
    }

    /// The restart policy, `Never` by default.
    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart_policy.unwrap_or_default()
    }

    /// The priority, 0 by default.
    pub fn priority(&self) -> i32 {
        self.priority.unwrap_or_default()
    }

    /// The grace period, 30 seconds by default.
    pub fn termination_grace_period_seconds(&self) -> i64 {
        self.termination_grace_period_seconds
            .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
    }

    /// The host ports the task needs free on its node: `resources.ports` and every
    /// `ports[].hostPort`, each once, in that order.
    pub fn host_ports(&self) -> Vec<i32> {
        let mut ports = Vec::with_capacity(self.resources.ports.len() + self.ports.len());
        for port in self
            .resources
            .ports
            .iter()
            .copied()
            .chain(self.ports.iter().filter_map(|p| p.host_port))
        {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    /// The port `port` names: the number itself, or the `containerPort` of the
    /// port called so (None if there is none, or the number is out of range).
    pub fn resolve_port(&self, port: &IntOrString) -> Option<u16> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n != 0),
            IntOrString::String(name) => self
                .ports
                .iter()
                .find(|p| !p.name.is_empty() && p.name == *name)
                .and_then(|p| u16::try_from(p.container_port).ok())
                .filter(|n| *n != 0),
        }
    }

    /// Lays a partial spec (a Job override) over this one: every field the partial sets
    /// replaces this one's, except `env` and `resources.extended`, which are merged by name
    /// (the partial's entries win). Lists such as `args` and `ports`, and each probe, are
    /// replaced whole.
    pub fn overlay(&mut self, partial: &TaskSpec) {
        fn set<T: Clone>(target: &mut Option<T>, source: &Option<T>) {
            if source.is_some() {
                target.clone_from(source);
            }
        }
        fn set_str(target: &mut String, source: &str) {
            if !source.is_empty() {
                *target = source.to_string();
            }
        }
        fn set_vec<T: Clone>(target: &mut Vec<T>, source: &[T]) {
            if !source.is_empty() {
                *target = source.to_vec();
            }
        }
        set(&mut self.driver, &partial.driver);
        set_str(&mut self.image, &partial.image);
        set_vec(&mut self.command, &partial.command);
        set_vec(&mut self.args, &partial.args);
        merge_env(&mut self.env, &partial.env);
        set_str(&mut self.working_dir, &partial.working_dir);
        set(&mut self.resources.cpu, &partial.resources.cpu);
        set(&mut self.resources.memory, &partial.resources.memory);
        set(&mut self.resources.disk, &partial.resources.disk);
        set_vec(&mut self.resources.ports, &partial.resources.ports);
        for (name, q) in &partial.resources.extended {
            self.resources.extended.insert(name.clone(), *q);
        }
        set_vec(&mut self.constraints, &partial.constraints);
        set_vec(&mut self.tolerations, &partial.tolerations);
        set(&mut self.priority, &partial.priority);
        set(&mut self.restart_policy, &partial.restart_policy);
        set(&mut self.time_limit_seconds, &partial.time_limit_seconds);
        set(
            &mut self.termination_grace_period_seconds,
            &partial.termination_grace_period_seconds,
        );
        set_vec(&mut self.mounts, &partial.mounts);
        set_vec(&mut self.ports, &partial.ports);
        set(&mut self.readiness_probe, &partial.readiness_probe);
        set(&mut self.liveness_probe, &partial.liveness_probe);
        set(&mut self.startup_probe, &partial.startup_probe);
        set_str(&mut self.log_path, &partial.log_path);
        set_str(&mut self.node_name, &partial.node_name);
        set(&mut self.index, &partial.index);
    }
}

/// Adds `extra` to `env`, replacing variables of the same name in place.
pub fn merge_env(env: &mut Vec<EnvVar>, extra: &[EnvVar]) {
    for var in extra {
        match env.iter_mut().find(|e| e.name == var.name) {
            Some(existing) => existing.value.clone_from(&var.value),
            None => env.push(var.clone()),
        }
    }
}

/// The labels and annotations given to the tasks made from a template.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TemplateMeta {
    /// Labels for every task.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for every task.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The template a Job or Service makes its tasks from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TaskTemplate {
    /// Labels and annotations.
    #[serde(skip_serializing_if = "is_default")]
    pub metadata: TemplateMeta,
    /// The tasks' spec; `{{index}}`, `{{replicas}}` and `{{job}}` are replaced in command,
    /// args and env values.
    pub spec: TaskSpec,
}

/// Where a task is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum TaskPhase {
    /// Accepted, not started yet.
    #[default]
    Pending,
    /// Its node started it.
    Running,
    /// It exited 0.
    Completed,
    /// It exited non-zero or could not start.
    Failed,
    /// Stopped by a user, a time limit or preemption.
    Killed,
    /// Its node stopped answering.
    Lost,
}

impl TaskPhase {
    /// Whether the phase never changes again (`Completed`, `Failed`, `Killed`, `Lost`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskPhase::Completed | TaskPhase::Failed | TaskPhase::Killed | TaskPhase::Lost
        )
    }

    /// The phase's name as written in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskPhase::Pending => "Pending",
            TaskPhase::Running => "Running",
            TaskPhase::Completed => "Completed",
            TaskPhase::Failed => "Failed",
            TaskPhase::Killed => "Killed",
            TaskPhase::Lost => "Lost",
        }
    }
}

impl fmt::Display for TaskPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sampled resource use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ResourceUsage {
    /// CPU in cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TaskStatus {
    /// Where it is in its life.
    pub phase: TaskPhase,
    /// Why it is there, in CamelCase (`ImagePullFailed`, `Preempted`, `TimeLimitExceeded`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The process's exit code, once it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The node that ran it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// When it started running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When it reached a terminal phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    /// How many times it was restarted under its restart policy.
    #[serde(skip_serializing_if = "is_default")]
    pub restart_count: i32,
    /// `Scheduled`, `Ready`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where its log is kept on the node.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_path: String,
    /// The task's address on the cluster's task network, from its node's
    /// `spec.taskCIDR`, while a run of it has one (container tasks on nodes
    /// with a task network; `exec` and `raw` tasks use the node's).
    #[serde(rename = "taskIP", skip_serializing_if = "String::is_empty")]
    pub task_ip: String,
    /// Sampled CPU and memory use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceUsage>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_set_fields_and_merges_env() {
        let mut base = TaskSpec {
            image: "busybox".into(),
            args: vec!["--a".into()],
            env: vec![EnvVar::new("A", "1"), EnvVar::new("B", "2")],
            priority: Some(1),
            ..TaskSpec::default()
        };
        let partial = TaskSpec {
            args: vec!["--leader".into()],
            env: vec![EnvVar::new("B", "3"), EnvVar::new("C", "4")],
            ..TaskSpec::default()
        };
        base.overlay(&partial);
        assert_eq!(base.image, "busybox");
        assert_eq!(base.args, vec!["--leader"]);
        assert_eq!(
            base.env,
            vec![
                EnvVar::new("A", "1"),
                EnvVar::new("B", "3"),
                EnvVar::new("C", "4")
            ]
        );
        assert_eq!(base.priority, Some(1));
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: Some(TaintEffect::NoSchedule),
        };
        let equal = Toleration {
            key: "dedicated".into(),
            value: "gpu".into(),
            ..Toleration::default()
        };
        assert!(equal.tolerates(&taint));
        let wrong_value = Toleration {
            value: "cpu".into(),
            ..equal.clone()
        };
        assert!(!wrong_value.tolerates(&taint));
        let exists_all = Toleration {
            operator: Some(TolerationOperator::Exists),
            ..Toleration::default()
        };
        assert!(exists_all.tolerates(&taint));
        let other_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..equal
        };
        assert!(!other_effect.tolerates(&taint));
    }

    #[test]
    fn defaults() {
        let task = Task::default();
        assert_eq!(task.api_version, "loom.dev/v1");
        assert_eq!(task.kind, "Task");
        assert_eq!(task.phase(), TaskPhase::Pending);
        assert!(!task.is_terminal());
        assert_eq!(task.spec.driver(), Driver::Container);
        assert_eq!(task.spec.restart_policy(), RestartPolicy::Never);
        assert!(Mount::default().is_read_only());
        assert!(TaskPhase::Lost.is_terminal());
        assert!(!TaskPhase::Running.is_terminal());
    }

    fn port(name: &str, container_port: i32, host_port: Option<i32>) -> ContainerPort {
        ContainerPort {
            name: name.into(),
            container_port,
            host_port,
            protocol: None,
        }
    }

    #[test]
    fn overlay_replaces_ports_and_each_probe_whole() {
        let tcp = |port: i32| Probe {
            tcp_socket: Some(TcpSocketAction {
                port: port.into(),
                host: String::new(),
            }),
            ..Probe::default()
        };
        let mut base = TaskSpec {
            ports: vec![port("http", 80, None), port("admin", 9000, None)],
            readiness_probe: Some(tcp(80)),
            liveness_probe: Some(tcp(9000)),
            ..TaskSpec::default()
        };
        base.overlay(&TaskSpec::default());
        assert_eq!(base.ports.len(), 2, "an empty partial keeps everything");
        assert_eq!(base.readiness_probe, Some(tcp(80)));
        let partial = TaskSpec {
            ports: vec![port("grpc", 50051, Some(50051))],
            liveness_probe: Some(Probe {
                period_seconds: Some(1),
                ..tcp(50051)
            }),
            startup_probe: Some(tcp(50051)),
            ..TaskSpec::default()
        };
        base.overlay(&partial);
        assert_eq!(base.ports, partial.ports);
        assert_eq!(base.readiness_probe, Some(tcp(80)));
        assert_eq!(base.liveness_probe, partial.liveness_probe);
        assert_eq!(base.startup_probe, partial.startup_probe);
    }

    #[test]
    fn host_ports_are_resources_ports_and_host_ports_once_each() {
        let mut spec = TaskSpec::default();
        assert!(spec.host_ports().is_empty());
        spec.resources.ports = vec![80, 443];
        spec.ports = vec![
            port("http", 8080, Some(80)),
            port("", 9090, None),
            ContainerPort {
                protocol: Some(Protocol::Udp),
                ..port("dns", 53, Some(53))
            },
            port("dns-tcp", 53, Some(53)),
        ];
        assert_eq!(spec.host_ports(), [80, 443, 53]);
    }

    #[test]
    fn resolve_port_takes_numbers_and_port_names() {
        let spec = TaskSpec {
            ports: vec![port("http", 8080, None), port("", 9090, None)],
            ..TaskSpec::default()
        };
        assert_eq!(spec.resolve_port(&"http".into()), Some(8080));
        assert_eq!(spec.resolve_port(&IntOrString::Int(81)), Some(81));
        assert_eq!(
            spec.resolve_port(&"".into()),
            None,
            "an unnamed port is not named ''"
        );
        assert_eq!(spec.resolve_port(&"admin".into()), None);
        assert_eq!(spec.resolve_port(&IntOrString::Int(0)), None);
        assert_eq!(spec.resolve_port(&IntOrString::Int(65_536)), None);
        assert_eq!(spec.resolve_port(&IntOrString::Int(-1)), None);
    }

    #[test]
    fn probes_use_kubernetes_names_and_defaults() {
        let task: Task = crate::decode::from_yaml_str(
            r#"
apiVersion: loom.dev/v1
kind: Task
metadata: {name: web, namespace: default}
spec:
  image: nginx
  ports:
    - {name: http, containerPort: 80, hostPort: 8080, protocol: TCP}
    - {containerPort: 53, protocol: UDP}
  readinessProbe:
    httpGet:
      path: /ready
      port: http
      scheme: HTTP
      httpHeaders: [{name: X-Probe, value: "1"}]
    initialDelaySeconds: 5
    periodSeconds: 2
    timeoutSeconds: 3
    successThreshold: 2
    failureThreshold: 4
  livenessProbe:
    tcpSocket: {port: 80, host: 127.0.0.1}
    terminationGracePeriodSeconds: 7
  startupProbe:
    exec: {command: [cat, /tmp/started]}
"#,
        )
        .unwrap();
        let spec = &task.spec;
        assert_eq!(spec.ports[0].host_port, Some(8080));
        assert_eq!(spec.ports[1].protocol(), Protocol::Udp);
        assert_eq!(spec.ports[0].protocol(), Protocol::Tcp);
        let ready = spec.readiness_probe.as_ref().unwrap();
        let Some(ProbeHandler::HttpGet(http)) = ready.handler() else {
            panic!("{ready:?}")
        };
        assert_eq!(http.port, IntOrString::String("http".into()));
        assert_eq!(http.scheme(), Scheme::Http);
        assert_eq!(
            (
                ready.initial_delay_seconds(),
                ready.period_seconds(),
                ready.timeout_seconds(),
                ready.success_threshold(),
                ready.failure_threshold()
            ),
            (5, 2, 3, 2, 4)
        );
        let live = spec.liveness_probe.as_ref().unwrap();
        assert!(
            matches!(live.handler(), Some(ProbeHandler::TcpSocket(t)) if t.port == IntOrString::Int(80))
        );
        assert_eq!(live.termination_grace_period_seconds, Some(7));
        assert_eq!(
            (
                live.initial_delay_seconds(),
                live.period_seconds(),
                live.timeout_seconds(),
                live.success_threshold(),
                live.failure_threshold()
            ),
            (0, 10, 1, 1, 3),
            "Kubernetes' defaults"
        );
        let startup = spec.startup_probe.as_ref().unwrap();
        assert!(
            matches!(startup.handler(), Some(ProbeHandler::Exec(e)) if e.command == ["cat", "/tmp/started"])
        );
        assert_eq!(HttpGetAction::default().path(), "/");
        assert_eq!(Probe::default().handler(), None);
        // Written back with the same names, and nothing for what is unset.
        let json = serde_json::to_value(spec).unwrap();
        assert_eq!(
            json["ports"][1],
            serde_json::json!({"containerPort": 53, "protocol": "UDP"})
        );
        assert_eq!(
            json["readinessProbe"]["httpGet"]["httpHeaders"][0]["name"],
            "X-Probe"
        );
        assert_eq!(
            json["livenessProbe"],
            serde_json::json!({"tcpSocket": {"port": 80, "host": "127.0.0.1"}, "terminationGracePeriodSeconds": 7})
        );
        assert!(
            serde_json::to_value(TaskSpec::default())
                .unwrap()
                .as_object()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn probe_fields_are_in_the_closed_schema() {
        let schema = crate::schema::json_schema::<Task>();
        let spec = &schema["properties"]["spec"];
        let probe = &spec["properties"]["readinessProbe"];
        // Option<Probe> is `anyOf [Probe, null]` or the object itself, depending on schemars.
        let probe = probe["anyOf"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["properties"].is_object()))
            .unwrap_or(probe);
        assert_eq!(probe["additionalProperties"], false, "{probe:#}");
        for field in [
            "exec",
            "httpGet",
            "tcpSocket",
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
            "terminationGracePeriodSeconds",
        ] {
            assert!(
                probe["properties"][field].is_object(),
                "{field} in {probe:#}"
            );
        }
        let ports = &spec["properties"]["ports"]["items"];
        assert_eq!(ports["additionalProperties"], false, "{ports:#}");
        for field in ["name", "containerPort", "hostPort", "protocol"] {
            assert!(
                ports["properties"][field].is_object(),
                "{field} in {ports:#}"
            );
        }
        for field in ["livenessProbe", "startupProbe"] {
            assert!(spec["properties"][field].is_object(), "{field}");
        }
        let text = schema.to_string();
        assert!(
            text.contains("\"UDP\"") && text.contains("\"HTTPS\""),
            "{text}"
        );
    }
}
