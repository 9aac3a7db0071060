//! The Service kind: long-running replicated tasks, rolled over to a new template without
//! dropping below `replicas - maxUnavailable`, with the ports they serve at a stable virtual
//! address (`spec.clusterIP`) from the cluster's service range.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::task::{Protocol, TaskSpec, TaskTemplate};
use crate::meta::{Condition, ObjectMeta, is_default};
use crate::quantity::IntOrString;
use crate::resource::{impl_resource, impl_spec_kind};
use crate::validation::{FieldError, MAX_PORT_NAME, is_port_name};

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
    /// The ports the Service serves at its address, each sent to a port of its
    /// tasks (Kubernetes' `ServicePort`; at most 100).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// The Service's virtual address, from the cluster's service range: empty on
    /// create asks the API server for a free one; an address asks for that one
    /// (it must be inside the range and free); `None` asks for no address (a
    /// headless Service). Immutable once set.
    #[serde(rename = "clusterIP", skip_serializing_if = "String::is_empty")]
    pub cluster_ip: String,
}

/// `spec.clusterIP` of a Service that asks for no address, as in Kubernetes.
pub const CLUSTER_IP_NONE: &str = "None";

/// The namespace of the Service of the API servers themselves.
pub const API_SERVER_SERVICE_NAMESPACE: &str = "default";
/// The name of the Service of the API servers themselves (Kubernetes'
/// `kubernetes`): the service range's first address is kept for it, and the
/// API servers, not the endpoints controller, write its Endpoints.
pub const API_SERVER_SERVICE_NAME: &str = "kubernetes";

/// The most ports one Service may list.
pub const MAX_SERVICE_PORTS: usize = 100;

/// The lowest `nodePort` (Kubernetes' default `--service-node-port-range`).
pub const MIN_NODE_PORT: i32 = 30000;
/// The highest `nodePort`.
pub const MAX_NODE_PORT: i32 = 32767;

/// The longest `spec.clusterIP` accepted (a dotted IPv4 address).
const MAX_CLUSTER_IP_LENGTH: usize = 15;

/// A port a Service serves (Kubernetes' `ServicePort`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ServicePort {
    /// The port's name: an IANA service name (at most 15 characters of `a-z`,
    /// `0-9` and `-`, at least one letter), unique in the Service; required
    /// when the Service has more than one port. Endpoints carry it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The port at the Service's address (1–65535).
    pub port: i32,
    /// The tasks' port the traffic goes to: a number (1–65535), or the name of
    /// a port of the template's `ports`; `port` when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `TCP` (default) or `UDP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The port on every node's address that will reach the Service
    /// (30000–32767). Recorded and checked only: nothing forwards it yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

impl ServicePort {
    /// The protocol, TCP by default.
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }

    /// The target port, `port` by default.
    pub fn target_port(&self) -> IntOrString {
        self.target_port
            .clone()
            .unwrap_or(IntOrString::Int(self.port))
    }

    /// The number the target port has in a task of `spec`: the number itself,
    /// or the `containerPort` of the task's port of that name and protocol
    /// (`None` when the task has no such port).
    pub fn resolve_target(&self, spec: &TaskSpec) -> Option<i32> {
        match self.target_port() {
            IntOrString::Int(number) => Some(number),
            IntOrString::String(name) => spec
                .ports
                .iter()
                .find(|p| p.name == name && p.protocol() == self.protocol())
                .map(|p| p.container_port),
        }
    }
}

/// How `spec.clusterIP` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIp {
    /// Empty: the API server is to choose one.
    Unset,
    /// `None`: no address (headless).
    Headless,
    /// This address.
    Address(Ipv4Addr),
}

impl ClusterIp {
    /// Reads `spec.clusterIP`; `Err` with the rule broken.
    pub fn parse(value: &str) -> Result<ClusterIp, String> {
        if value.is_empty() {
            return Ok(ClusterIp::Unset);
        }
        if value == CLUSTER_IP_NONE {
            return Ok(ClusterIp::Headless);
        }
        match value.parse::<Ipv4Addr>() {
            Ok(ip) if ip.to_string() == value => Ok(ClusterIp::Address(ip)),
            _ => Err(format!(
                "must be empty (to be given an address), {CLUSTER_IP_NONE:?} (no address) or an IPv4 address in canonical dotted form"
            )),
        }
    }
}

/// The range Services' virtual addresses come from (`--service-cidr`): an IPv4
/// network whose first usable address is kept for the `kubernetes` Service
/// (the API server itself), whose network and broadcast addresses are never
/// given, and every other address of which may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRange {
    net: Ipv4Net,
}

/// The default `--service-cidr`, as kubeadm's.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";

/// The prefix lengths a service range may have: at most 2^20 addresses (as
/// Kubernetes' limit), at least 4 given.
pub const SERVICE_CIDR_PREFIX: std::ops::RangeInclusive<u8> = 12..=29;

impl ServiceRange {
    /// Parses a range in canonical CIDR form (`10.96.0.0/16`).
    pub fn parse(cidr: &str) -> Result<ServiceRange, String> {
        let net: Ipv4Net = cidr
            .parse()
            .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR such as 10.96.0.0/16"))?;
        if net.trunc() != net {
            return Err(format!(
                "{cidr:?} has host bits set: the network is {}",
                net.trunc()
            ));
        }
        if !SERVICE_CIDR_PREFIX.contains(&net.prefix_len()) {
            return Err(format!(
                "{cidr:?} has a /{} prefix: a service range is /{} to /{}",
                net.prefix_len(),
                SERVICE_CIDR_PREFIX.start(),
                SERVICE_CIDR_PREFIX.end()
            ));
        }
        Ok(ServiceRange { net })
    }

    /// The network.
    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// The address kept for the `kubernetes` Service in `default`.
    pub fn api_server_address(&self) -> Ipv4Addr {
        self.nth(0)
    }

    /// How many addresses may be given, the API server's included.
    pub fn size(&self) -> u32 {
        // Network and broadcast addresses aside; the prefix is at most /29.
        (1u32 << (32 - u32::from(self.net.prefix_len()))) - 2
    }

    /// The `i`-th usable address (`i < size()`), the API server's first.
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()) + 1 + i)
    }

    /// Where `ip` is among the usable addresses, if it is one.
    pub fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let at = u32::from(ip).checked_sub(u32::from(self.net.network()) + 1)?;
        (at < self.size()).then_some(at)
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.net.contains(other) || other.contains(&self.net)
    }
}

impl std::fmt::Display for ServiceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.net.fmt(f)
    }
}

impl std::str::FromStr for ServiceRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ServiceRange::parse(s)
    }
}

/// Checks a Service's `ports` and `clusterIP` (the range is the API server's to
/// check): every problem, each naming its field and rule.
pub fn validate_network(spec: &ServiceSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = "spec.ports";
    if spec.ports.len() > MAX_SERVICE_PORTS {
        errs.push(FieldError::too_many(
            path,
            spec.ports.len(),
            MAX_SERVICE_PORTS,
        ));
    }
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    let template_names: BTreeSet<&str> = spec
        .template
        .spec
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .map(|p| p.name.as_str())
        .collect();
    for (i, port) in spec.ports.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name_path = format!("{p}.name");
        if port.name.is_empty() {
            if spec.ports.len() > 1 {
                errs.push(FieldError::required(
                    name_path,
                    "every port of a Service with more than one port needs a name",
                ));
            }
        } else if port.name.len() > MAX_PORT_NAME {
            errs.push(FieldError::too_long(name_path, MAX_PORT_NAME));
        } else {
            for rule in is_port_name(&port.name) {
                errs.push(FieldError::invalid(&name_path, &port.name, rule));
            }
            if !names.insert(port.name.as_str()) {
                errs.push(FieldError::duplicate(name_path, &port.name));
            }
        }
        let protocol = port.protocol();
        let port_path = format!("{p}.port");
        if port.port == 0 {
            errs.push(FieldError::required(port_path, "a port number, 1 to 65535"));
        } else if !(1..=65535).contains(&port.port) {
            errs.push(FieldError::invalid(port_path, port.port, PORT_RANGE_RULE));
        } else if !ports.insert((port.port, protocol)) {
            errs.push(FieldError::duplicate(
                port_path,
                format!("{}/{protocol}", port.port),
            ));
        }
        let target_path = format!("{p}.targetPort");
        match &port.target_port {
            None => {}
            Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => {
                errs.push(FieldError::invalid(target_path, *n, PORT_RANGE_RULE));
            }
            Some(IntOrString::Int(_)) => {}
            Some(IntOrString::String(name)) => {
                if name.len() > MAX_PORT_NAME {
                    errs.push(FieldError::too_long(target_path, MAX_PORT_NAME));
                } else if !is_port_name(name).is_empty() {
                    for rule in is_port_name(name) {
                        errs.push(FieldError::invalid(&target_path, name, rule));
                    }
                } else if !template_names.contains(name.as_str()) {
                    errs.push(FieldError::invalid(
                        target_path,
                        name,
                        "must be a number or the name of a port in spec.template.spec.ports",
                    ));
                } else if port.resolve_target(&spec.template.spec).is_none() {
                    errs.push(FieldError::invalid(
                        target_path,
                        name,
                        format!(
                            "the template's port of this name is not {protocol}, as this port is"
                        ),
                    ));
                }
            }
        }
        if let Some(node_port) = port.node_port {
            let node_path = format!("{p}.nodePort");
            if !(MIN_NODE_PORT..=MAX_NODE_PORT).contains(&node_port) {
                errs.push(FieldError::invalid(
                    node_path,
                    node_port,
                    format!("must be between {MIN_NODE_PORT} and {MAX_NODE_PORT}, inclusive"),
                ));
            } else if !node_ports.insert((node_port, protocol)) {
                errs.push(FieldError::duplicate(
                    node_path,
                    format!("{node_port}/{protocol}"),
                ));
            }
        }
    }
    if spec.cluster_ip.len() > MAX_CLUSTER_IP_LENGTH {
        errs.push(FieldError::too_long(
            "spec.clusterIP",
            MAX_CLUSTER_IP_LENGTH,
        ));
    } else if let Err(rule) = ClusterIp::parse(&spec.cluster_ip) {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            &spec.cluster_ip,
            rule,
        ));
    }
    errs
}

/// Checks that `spec.clusterIP` keeps the value it was given: tasks and
/// proxies hold on to it.
pub fn validate_network_update(new: &ServiceSpec, old: &ServiceSpec) -> Vec<FieldError> {
    if old.cluster_ip.is_empty() && !new.cluster_ip.is_empty() {
        // Addresses are taken from the range only when a Service is created.
        return vec![FieldError::invalid(
            "spec.clusterIP",
            &new.cluster_ip,
            "may be set only when the Service is created: delete and create the Service again to give it an address",
        )];
    }
    if !old.cluster_ip.is_empty()
        && new.cluster_ip != old.cluster_ip
        && new.cluster_ip.len() <= MAX_CLUSTER_IP_LENGTH
    {
        return vec![FieldError::invalid(
            "spec.clusterIP",
            &new.cluster_ip,
            format!(
                "field is immutable once set (it is {}): delete and create the Service again to change it",
                old.cluster_ip
            ),
        )];
    }
    Vec::new()
}

const PORT_RANGE_RULE: &str = "must be between 1 and 65535, inclusive";

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kinds::task::ContainerPort;
    use crate::validation::Validate;

    fn service(ports: Vec<ServicePort>) -> Service {
        let mut svc = Service::new(
            "web",
            ServiceSpec {
                template: TaskTemplate {
                    spec: TaskSpec {
                        image: "nginx".into(),
                        ports: vec![
                            ContainerPort {
                                name: "http".into(),
                                container_port: 8080,
                                ..ContainerPort::default()
                            },
                            ContainerPort {
                                name: "dns".into(),
                                container_port: 5353,
                                protocol: Some(Protocol::Udp),
                                ..ContainerPort::default()
                            },
                        ],
                        ..TaskSpec::default()
                    },
                    ..TaskTemplate::default()
                },
                ports,
                ..ServiceSpec::default()
            },
        );
        svc.metadata.namespace = "default".into();
        svc
    }

    fn port(name: &str, port: i32) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            ..ServicePort::default()
        }
    }

    /// Each error as `field: message`, to match on.
    fn texts(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| format!("{}: {}", e.field, e)).collect()
    }

    fn assert_error(errs: &[FieldError], field: &str, words: &str) {
        assert!(
            errs.iter()
                .any(|e| e.field == field && e.to_string().contains(words)),
            "no error on {field} saying {words:?} in {:#?}",
            texts(errs)
        );
    }

    #[test]
    fn good_ports_pass() {
        let mut svc = service(vec![
            ServicePort {
                target_port: Some(IntOrString::String("http".into())),
                ..port("web", 80)
            },
            ServicePort {
                target_port: Some(IntOrString::String("dns".into())),
                protocol: Some(Protocol::Udp),
                node_port: Some(30053),
                ..port("dns", 53)
            },
            ServicePort {
                protocol: Some(Protocol::Udp),
                ..port("web-udp", 80)
            },
        ]);
        svc.spec.cluster_ip = "10.96.0.10".into();
        assert!(svc.validate().is_empty(), "{:#?}", texts(&svc.validate()));
        svc.spec.cluster_ip = CLUSTER_IP_NONE.into();
        assert!(svc.validate().is_empty());
        // One unnamed port is fine, as in Kubernetes.
        assert!(service(vec![port("", 80)]).validate().is_empty());
    }

    #[test]
    fn bad_ports_are_refused_naming_field_and_rule() {
        let errs = service(vec![
            port("", 80),
            port("Web_1", 0),
            port("a23456789012345678", 70000),
            port("web", -1),
            port("web", 443),
            ServicePort {
                target_port: Some(IntOrString::String("metrics".into())),
                ..port("t1", 1000)
            },
            ServicePort {
                target_port: Some(IntOrString::Int(0)),
                ..port("t2", 1001)
            },
            ServicePort {
                // `dns` is a UDP port of the template.
                target_port: Some(IntOrString::String("dns".into())),
                ..port("t3", 1002)
            },
            ServicePort {
                node_port: Some(8080),
                ..port("n1", 1003)
            },
            ServicePort {
                node_port: Some(30080),
                ..port("n2", 1004)
            },
            ServicePort {
                node_port: Some(30080),
                ..port("n3", 1005)
            },
            port("dup", 1005),
        ])
        .validate();
        assert_error(&errs, "spec.ports[0].name", "Required value");
        assert_error(&errs, "spec.ports[1].name", "Invalid value");
        assert_error(&errs, "spec.ports[1].port", "Required value");
        assert_error(&errs, "spec.ports[2].name", "Too long");
        assert_error(&errs, "spec.ports[2].port", "between 1 and 65535");
        assert_error(&errs, "spec.ports[3].port", "between 1 and 65535");
        assert_error(&errs, "spec.ports[4].name", "Duplicate value");
        assert_error(
            &errs,
            "spec.ports[5].targetPort",
            "spec.template.spec.ports",
        );
        assert_error(&errs, "spec.ports[6].targetPort", "between 1 and 65535");
        assert_error(&errs, "spec.ports[7].targetPort", "is not TCP");
        assert_error(&errs, "spec.ports[8].nodePort", "between 30000 and 32767");
        assert_error(&errs, "spec.ports[10].nodePort", "Duplicate value");
        assert_error(&errs, "spec.ports[11].port", "Duplicate value");
        // Nothing on the ports that are fine.
        assert!(!errs.iter().any(|e| e.field.starts_with("spec.ports[9]")));
    }

    #[test]
    fn too_many_ports_are_refused() {
        let ports = (1..=101).map(|i| port(&format!("p{i}"), i)).collect();
        let errs = service(ports).validate();
        assert_error(&errs, "spec.ports", "Too many");
    }

    #[test]
    fn hostile_cluster_ips_are_refused() {
        for bad in [
            "none",
            "10.96.0.1/32",
            "10.096.0.1",
            " 10.96.0.1",
            "::1",
            "10.96.0",
            "host.example",
            "None ",
        ] {
            let mut svc = service(Vec::new());
            svc.spec.cluster_ip = bad.into();
            assert_error(&svc.validate(), "spec.clusterIP", "Invalid value");
        }
        let mut svc = service(Vec::new());
        svc.spec.cluster_ip = "1".repeat(10_000);
        let errs = svc.validate();
        assert_error(&errs, "spec.clusterIP", "Too long");
        assert!(
            errs.iter().all(|e| e.to_string().len() < 500),
            "a long value is not echoed"
        );
    }

    #[test]
    fn cluster_ip_is_immutable_once_set() {
        let mut old = service(Vec::new());
        old.spec.cluster_ip = "10.96.0.10".into();
        for new_ip in ["10.96.0.11", CLUSTER_IP_NONE, ""] {
            let mut new = old.clone();
            new.spec.cluster_ip = new_ip.into();
            assert_error(&new.validate_update(&old), "spec.clusterIP", "immutable");
        }
        assert!(old.validate_update(&old).is_empty());
        let mut headless = old.clone();
        headless.spec.cluster_ip = CLUSTER_IP_NONE.into();
        assert_error(
            &old.validate_update(&headless),
            "spec.clusterIP",
            "immutable",
        );
        // A Service without an address cannot take one by an update.
        let unset = service(Vec::new());
        assert_error(
            &old.validate_update(&unset),
            "spec.clusterIP",
            "only when the Service is created",
        );
        assert!(unset.validate_update(&unset).is_empty());
    }

    #[test]
    fn target_ports_resolve_by_number_or_name_and_protocol() {
        let svc = service(Vec::new());
        let spec = &svc.spec.template.spec;
        assert_eq!(port("", 80).resolve_target(spec), Some(80));
        let named = |name: &str, protocol| ServicePort {
            target_port: Some(IntOrString::String(name.into())),
            protocol,
            ..port("", 53)
        };
        assert_eq!(named("http", None).resolve_target(spec), Some(8080));
        assert_eq!(
            named("dns", Some(Protocol::Udp)).resolve_target(spec),
            Some(5353)
        );
        assert_eq!(named("dns", None).resolve_target(spec), None);
        assert_eq!(named("nope", None).resolve_target(spec), None);
    }

    #[test]
    fn service_ranges() {
        let range = ServiceRange::parse("10.96.0.0/16").unwrap();
        assert_eq!(range.api_server_address(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(range.size(), 65534);
        assert_eq!(range.nth(range.size() - 1), Ipv4Addr::new(10, 96, 255, 254));
        assert_eq!(range.offset(Ipv4Addr::new(10, 96, 0, 1)), Some(0));
        assert_eq!(range.offset(Ipv4Addr::new(10, 96, 0, 0)), None);
        assert_eq!(range.offset(Ipv4Addr::new(10, 96, 255, 255)), None);
        assert_eq!(range.offset(Ipv4Addr::new(10, 97, 0, 1)), None);
        assert_eq!(range.offset(Ipv4Addr::new(0, 0, 0, 0)), None);
        assert!(range.overlaps(&"10.96.128.0/24".parse().unwrap()));
        assert!(range.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!range.overlaps(&"10.77.0.0/16".parse().unwrap()));
        let small = ServiceRange::parse("192.168.5.0/29").unwrap();
        assert_eq!(small.size(), 6);
        for (bad, words) in [
            ("10.96.0.1/16", "host bits"),
            ("10.0.0.0/8", "/8 prefix"),
            ("10.0.0.0/30", "/30 prefix"),
            ("fd00::/108", "not an IPv4 CIDR"),
            ("10.96.0.0", "not an IPv4 CIDR"),
        ] {
            let error = ServiceRange::parse(bad).unwrap_err();
            assert!(error.contains(words), "{bad}: {error}");
        }
    }
}
