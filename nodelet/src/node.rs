//! The node's own objects: its Node (capacity, attributes as labels, taints,
//! Ready condition, usage, the nodelet's endpoint) and its Lease in
//! `loom-node-lease`, renewed as the heartbeat.

use std::collections::BTreeMap;
use std::time::Duration;

use api_types::Format;
use api_types::well_known::{
    LABEL_ARCH, LABEL_HOSTNAME, LABEL_KERNEL, LABEL_OS, NODE_LEASE_NAMESPACE,
};
use api_types::{
    Condition, ConditionStatus, Lease, LeaseSpec, Namespace, Node, NodeAddress, NodeInfo, NodeSpec,
    Quantity, ResourceUsage,
};
use chrono::Utc;
use client::{Api, Client, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Config;

/// What this machine offers.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// cpu, memory, disk, tasks.
    pub resources: BTreeMap<String, Quantity>,
}

/// Reads the machine's capacity, with the config's overrides.
pub fn capacity(config: &Config) -> Capacity {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as i64;
    let mut resources = BTreeMap::new();
    resources.insert(
        "cpu".to_owned(),
        config
            .cpu
            .unwrap_or_else(|| Quantity::from_value(cpus, Format::DecimalSi)),
    );
    let memory = meminfo("MemTotal").unwrap_or(0);
    resources.insert(
        "memory".to_owned(),
        config
            .memory
            .unwrap_or_else(|| Quantity::from_value(memory as i64, Format::BinarySi)),
    );
    if let Some(disk) = disk_bytes(&config.state_dir) {
        resources.insert(
            "disk".to_owned(),
            Quantity::from_value(disk as i64, Format::BinarySi),
        );
    }
    resources.insert(
        "tasks".to_owned(),
        Quantity::from_value(i64::from(config.max_tasks), Format::DecimalSi),
    );
    Capacity { resources }
}

/// A field of /proc/meminfo, in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

fn disk_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass for a valid path string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_blocks as u64 * stat.f_frsize as u64)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A label value from free text: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The attribute labels of this machine.
pub fn attribute_labels() -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    BTreeMap::from([
        (LABEL_ARCH.to_owned(), arch.to_owned()),
        (LABEL_OS.to_owned(), std::env::consts::OS.to_owned()),
        (LABEL_KERNEL.to_owned(), label_value(&kernel())),
        (LABEL_HOSTNAME.to_owned(), label_value(&hostname())),
    ])
}

/// Where this node's nodelet served before, if the Node exists and its endpoint is
/// on `ip`. The API server keeps a Node's `status.nodeletEndpoint` once set (until
/// nodes have an identity), so a restarted nodelet that listens on port 0 asks
/// for its old port again rather than being refused.
pub async fn registered_address(
    client: &Client,
    name: &str,
    ip: std::net::IpAddr,
) -> Option<std::net::SocketAddr> {
    let nodes: Api<Node> = Api::all(client.clone());
    let endpoint = nodes.get_opt(name).await.ok()??.status?.nodelet_endpoint;
    let address = api_types::validation::parse_nodelet_endpoint(&endpoint).ok()?;
    (address.ip() == ip).then_some(address)
}

/// Creates or updates the Node, and makes sure the lease namespace exists.
pub async fn register(
    client: &Client,
    config: &Config,
    endpoint: &str,
) -> Result<Node, client::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = attribute_labels();
    labels.extend(config.labels.clone());
    // The operator's permissions, as the node advertises them; a permission not
    // given is removed (a null in the merge patch), whatever the labels say.
    let mut removed = Vec::new();
    for (key, value) in crate::permissions::labels(config) {
        match value {
            Some(value) => {
                labels.insert(key, value);
            }
            None => {
                labels.remove(&key);
                removed.push(key);
            }
        }
    }
    let mut label_patch = serde_json::to_value(&labels).unwrap_or_default();
    for key in removed {
        label_patch[key] = serde_json::Value::Null;
    }
    let node = match nodes.get_opt(&config.name).await? {
        None => {
            let mut node = Node::new(
                &config.name,
                NodeSpec {
                    taints: config.taints.clone(),
                    ..NodeSpec::default()
                },
            );
            node.metadata.labels = labels;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(node) => {
                    info!(node = %config.name, "node registered");
                    node
                }
                Err(e) if e.code() == Some(409) => nodes.get(&config.name).await?,
                Err(e) => return Err(e),
            }
        }
        Some(existing) => {
            // Keep the operator's labels and taints; add ours.
            let mut taints = existing.spec.taints.clone();
            for taint in &config.taints {
                if !taints
                    .iter()
                    .any(|t| t.key == taint.key && t.effect == taint.effect)
                {
                    taints.push(taint.clone());
                }
            }
            let patch = json!({"metadata": {"labels": label_patch}, "spec": {"taints": taints}});
            nodes
                .patch(&config.name, &PatchParams::default(), &Patch::Merge(patch))
                .await?
        }
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NODE_LEASE_NAMESPACE).await?.is_none() {
        let namespace = Namespace::new(NODE_LEASE_NAMESPACE, Default::default());
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    report_status(client, config, endpoint, true, None).await?;
    Ok(node)
}

/// Writes the Node's status: capacity, Ready, addresses, info, endpoint, usage.
pub async fn report_status(
    client: &Client,
    config: &Config,
    endpoint: &str,
    ready: bool,
    usage: Option<ResourceUsage>,
) -> Result<Node, client::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let capacity = capacity(config);
    let now = Utc::now();
    let existing = nodes.get_opt(&config.name).await?;
    let previous = existing
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
    let status = if ready {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let transition = match &previous {
        Some(p) if p.status == status => p.last_transition_time.unwrap_or(now),
        _ => now,
    };
    let mut condition = if ready {
        Condition::new("Ready", status, "NodeletReady", "the nodelet is running")
    } else {
        Condition::new("Ready", status, "NodeletStopped", "the nodelet stopped")
    };
    condition.last_heartbeat_time = Some(now);
    condition.last_transition_time = Some(transition);
    let info = NodeInfo {
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        kernel_version: kernel(),
        hostname: hostname(),
        nodelet_version: env!("CARGO_PKG_VERSION").to_owned(),
        os_image: os_image(),
        machine_id: std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    };
    let mut addresses = vec![NodeAddress {
        type_: "Hostname".to_owned(),
        address: hostname(),
    }];
    if let Some(ip) = config.node_ip(endpoint) {
        addresses.insert(
            0,
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: ip.to_string(),
            },
        );
    }
    let mut patch = json!({
        "status": {
            "capacity": capacity.resources,
            "allocatable": capacity.resources,
            "conditions": [condition],
            "addresses": addresses,
            "info": info,
            "nodeletEndpoint": endpoint,
        }
    });
    if let Some(usage) = usage {
        patch["status"]["usage"] = json!(usage);
    }
    nodes
        .patch_status(&config.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_default()
}

/// Renews the node's Lease (creating it if needed).
pub async fn renew_lease(client: &Client, config: &Config) -> Result<(), client::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let now = Utc::now();
    let duration = config.lease_duration.as_secs() as i32;
    match leases.get_opt(&config.name).await? {
        None => {
            let lease = Lease::new(
                &config.name,
                LeaseSpec {
                    holder_identity: Some(config.name.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                },
            );
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(409) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(_) => {
            let patch = json!({"spec": {
                "holderIdentity": config.name,
                "leaseDurationSeconds": duration,
                "renewTime": now,
            }});
            leases
                .patch(&config.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
    }
}

/// CPU use of the whole machine between two readings of /proc/stat.
#[derive(Debug, Default)]
struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Cores in use since the last call.
    fn sample(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = values.iter().sum();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        let previous = self.last.replace((total, idle));
        let (t0, i0) = previous?;
        let dt = total.saturating_sub(t0);
        if dt == 0 {
            return None;
        }
        let busy = dt.saturating_sub(idle.saturating_sub(i0));
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        Some(busy as f64 / dt as f64 * cpus)
    }
}

/// Renews the lease every `renew_interval` (telling `fence` of each renewal)
/// and reports status with usage every `status_interval`, until `shutdown`;
/// then reports the node not ready.
pub async fn heartbeat(
    client: Client,
    config: std::sync::Arc<Config>,
    endpoint: String,
    fence: crate::tasks::Fence,
    shutdown: CancellationToken,
) {
    let mut renew = tokio::time::interval(config.renew_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = tokio::time::interval(config.status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu = CpuSampler::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = renew.tick() => {
                let asked = tokio::time::Instant::now();
                match renew_lease(&client, &config).await {
                    Ok(()) => fence.renewed(asked),
                    Err(error) => warn!(%error, "cannot renew the node lease"),
                }
            }
            _ = status.tick() => {
                let usage = ResourceUsage {
                    cpu: cpu.sample().map(|cores| Quantity::from_milli_value((cores * 1000.0) as i64)),
                    memory: meminfo("MemTotal")
                        .zip(meminfo("MemAvailable"))
                        .map(|(total, available)| Quantity::from_value(total.saturating_sub(available) as i64, Format::BinarySi)),
                };
                if let Err(error) = report_status(&client, &config, &endpoint, true, Some(usage)).await {
                    warn!(%error, "cannot report the node's status");
                }
            }
        }
    }
    if config.stop_tasks_on_exit {
        let stopped = tokio::time::timeout(
            Duration::from_secs(2),
            report_status(&client, &config, &endpoint, false, None),
        );
        let _ = stopped.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("6.18.44-fc-v657"), "6.18.44-fc-v657");
        assert_eq!(label_value("host name!"), "host_name");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert!(api_types::names::is_label_value(&label_value("-a b-")).is_empty());
    }
}
