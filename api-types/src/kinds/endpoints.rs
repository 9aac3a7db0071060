//! The Endpoints kind: the addresses and ports a Service's traffic goes to,
//! shaped like Kubernetes core/v1 Endpoints and kept by the endpoints controller.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::task::Protocol;
use crate::meta::ObjectMeta;
use crate::names;
use crate::resource::{API_VERSION, Resource, impl_resource};
use crate::validation::{FieldError, MAX_PORT_NAME, is_port_name};

/// The Endpoints of a Service: same namespace, same name. Its fields sit at the
/// top level, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Endpoints {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Endpoints`.
    pub kind: String,
    /// Name (the Service's) and namespace.
    pub metadata: ObjectMeta,
    /// Sets of addresses that share one set of ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<EndpointSubset>,
}

impl_resource!(
    Endpoints,
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    short_names: ["ep"],
    namespaced: true,
    has_status: false,
);

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            api_version: API_VERSION.to_string(),
            kind: <Endpoints as Resource>::KIND.to_string(),
            metadata: ObjectMeta::default(),
            subsets: Vec::new(),
        }
    }
}

/// Addresses that all serve the same ports (Kubernetes' `EndpointSubset`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct EndpointSubset {
    /// Tasks that are running and ready: traffic may go to them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<EndpointAddress>,
    /// Tasks that are running but not ready (yet, or any more).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    /// The ports every address serves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// One task's address (Kubernetes' `EndpointAddress`).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct EndpointAddress {
    /// The task's address on the task network (its `status.taskIP`).
    pub ip: String,
    /// The node the task runs on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<EndpointTargetRef>,
}

/// What an address belongs to.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct EndpointTargetRef {
    /// `Task`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The task's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The task's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The task's uid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// A port the addresses serve (Kubernetes' `EndpointPort`): the Service port's
/// name, and the task's port number it resolves to.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct EndpointPort {
    /// The Service port's name (empty for a Service's single unnamed port).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The port number on the addresses (1–65535).
    pub port: i32,
    /// `TCP` (default) or `UDP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// The most addresses, ready or not, one Endpoints may hold (as Kubernetes'
/// endpoints controller, which stops at 1000).
pub const MAX_ENDPOINT_ADDRESSES: usize = 1000;
/// The most ports of one subset (a Service's limit).
pub const MAX_ENDPOINT_PORTS: usize = 100;
/// The most subsets of one Endpoints.
pub const MAX_ENDPOINT_SUBSETS: usize = 100;

impl Endpoints {
    /// Every problem with the subsets, each naming its field and rule.
    pub fn validate_subsets(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.subsets.len() > MAX_ENDPOINT_SUBSETS {
            errs.push(FieldError::too_many(
                "subsets",
                self.subsets.len(),
                MAX_ENDPOINT_SUBSETS,
            ));
            return errs;
        }
        let total: usize = self
            .subsets
            .iter()
            .map(|s| s.addresses.len() + s.not_ready_addresses.len())
            .sum();
        if total > MAX_ENDPOINT_ADDRESSES {
            errs.push(FieldError::too_many(
                "subsets",
                total,
                MAX_ENDPOINT_ADDRESSES,
            ));
            return errs;
        }
        for (i, subset) in self.subsets.iter().enumerate() {
            let path = format!("subsets[{i}]");
            for (field, addresses) in [
                ("addresses", &subset.addresses),
                ("notReadyAddresses", &subset.not_ready_addresses),
            ] {
                for (j, address) in addresses.iter().enumerate() {
                    validate_address(&mut errs, &format!("{path}.{field}[{j}]"), address);
                }
            }
            if subset.ports.len() > MAX_ENDPOINT_PORTS {
                errs.push(FieldError::too_many(
                    format!("{path}.ports"),
                    subset.ports.len(),
                    MAX_ENDPOINT_PORTS,
                ));
                continue;
            }
            let mut names = std::collections::BTreeSet::new();
            for (j, port) in subset.ports.iter().enumerate() {
                let p = format!("{path}.ports[{j}]");
                if !port.name.is_empty() {
                    let name_path = format!("{p}.name");
                    if port.name.len() > MAX_PORT_NAME {
                        errs.push(FieldError::too_long(name_path, MAX_PORT_NAME));
                    } else {
                        for rule in is_port_name(&port.name) {
                            errs.push(FieldError::invalid(&name_path, &port.name, rule));
                        }
                        if !names.insert(port.name.as_str()) {
                            errs.push(FieldError::duplicate(name_path, &port.name));
                        }
                    }
                }
                if !(1..=65535).contains(&port.port) {
                    errs.push(FieldError::invalid(
                        format!("{p}.port"),
                        port.port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
        errs
    }
}

/// The longest name or kind in a target reference.
const MAX_REF_LENGTH: usize = 253;

fn validate_address(errs: &mut Vec<FieldError>, path: &str, address: &EndpointAddress) {
    let ip_path = format!("{path}.ip");
    if address.ip.is_empty() {
        errs.push(FieldError::required(ip_path, "an IP address"));
    } else if address.ip.len() > 45 {
        errs.push(FieldError::too_long(ip_path, 45));
    } else {
        match address.ip.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() == address.ip => {
                if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                    errs.push(FieldError::invalid(
                        ip_path,
                        &address.ip,
                        "may not be unspecified, loopback or multicast",
                    ));
                }
            }
            _ => errs.push(FieldError::invalid(
                ip_path,
                &address.ip,
                "must be an IP address in canonical form",
            )),
        }
    }
    if !address.node_name.is_empty() {
        let field = format!("{path}.nodeName");
        for rule in names::is_dns1123_subdomain(&address.node_name) {
            errs.push(FieldError::invalid(&field, &address.node_name, rule));
        }
    }
    if let Some(target) = &address.target_ref {
        for (name, value) in [
            ("kind", &target.kind),
            ("name", &target.name),
            ("namespace", &target.namespace),
            ("uid", &target.uid),
        ] {
            if value.len() > MAX_REF_LENGTH {
                errs.push(FieldError::too_long(
                    format!("{path}.targetRef.{name}"),
                    MAX_REF_LENGTH,
                ));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::validation::Validate;

    fn address(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            node_name: "n1".into(),
            target_ref: Some(EndpointTargetRef {
                kind: "Task".into(),
                name: "web-abcde".into(),
                namespace: "default".into(),
                uid: "u1".into(),
            }),
        }
    }

    fn endpoints(subsets: Vec<EndpointSubset>) -> Endpoints {
        let mut ep = Endpoints {
            subsets,
            ..Endpoints::default()
        };
        ep.metadata.name = "web".into();
        ep.metadata.namespace = "default".into();
        ep
    }

    #[test]
    fn a_kubernetes_shaped_endpoints_passes_and_round_trips() {
        let json = serde_json::json!({
            "apiVersion": "loom.dev/v1",
            "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.77.1.5", "nodeName": "n1",
                    "targetRef": {"kind": "Task", "name": "web-x", "namespace": "default", "uid": "u"}}],
                "notReadyAddresses": [{"ip": "10.77.2.5"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }],
        });
        let ep: Endpoints = serde_json::from_value(json.clone()).unwrap();
        assert!(ep.validate().is_empty(), "{:?}", ep.validate());
        assert_eq!(serde_json::to_value(&ep).unwrap(), json);
    }

    #[test]
    fn hostile_endpoints_are_refused_naming_the_field() {
        let ep = endpoints(vec![EndpointSubset {
            addresses: vec![
                address("10.77.1.05"),
                address("127.0.0.1"),
                address(""),
                EndpointAddress {
                    node_name: "Bad Node".into(),
                    ..address("10.77.1.6")
                },
            ],
            not_ready_addresses: vec![EndpointAddress {
                target_ref: Some(EndpointTargetRef {
                    name: "x".repeat(300),
                    ..EndpointTargetRef::default()
                }),
                ..address("10.77.1.7")
            }],
            ports: vec![
                EndpointPort {
                    name: "http".into(),
                    port: 0,
                    protocol: None,
                },
                EndpointPort {
                    name: "http".into(),
                    port: 80,
                    protocol: None,
                },
            ],
        }]);
        let errs = ep.validate();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "subsets[0].addresses[0].ip",
            "subsets[0].addresses[1].ip",
            "subsets[0].addresses[2].ip",
            "subsets[0].addresses[3].nodeName",
            "subsets[0].notReadyAddresses[0].targetRef.name",
            "subsets[0].ports[0].port",
            "subsets[0].ports[1].name",
        ] {
            assert!(fields.contains(&field), "{field} not in {fields:?}");
        }
    }

    #[test]
    fn too_many_addresses_are_refused() {
        let ep = endpoints(vec![EndpointSubset {
            addresses: (0..1001)
                .map(|i| address(&format!("10.77.{}.{}", i / 250, i % 250 + 1)))
                .collect(),
            ..EndpointSubset::default()
        }]);
        let errs = ep.validate();
        assert!(
            errs.iter()
                .any(|e| e.field == "subsets" && e.to_string().contains("Too many")),
            "{errs:?}"
        );
    }
}
