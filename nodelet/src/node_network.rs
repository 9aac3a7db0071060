//! The node's side of the task network, kept in step with the Nodes: once
//! the control plane gives this node a task subnet (`spec.taskCIDR`), the
//! bridge holds its gateway and container tasks get addresses from it; every
//! other node's subnet is routed through that node's address; traffic from
//! tasks to anywhere outside the cluster's task subnets leaves with the
//! node's address (nftables masquerade). Looked at again on every Node change
//! and every 30 s, so a route or rule removed by hand comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use api_types::Node;
use client::{Api, Client, Informer, watcher};
use ipnet::Ipv4Net;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ipam::Ipam;
use crate::network::{self, HostPort, Netlink};

/// The nftables table (family `ip`) of the masquerade of the task network
/// on `bridge` (whose name is checked to suit).
pub fn nat_table(bridge: &str) -> String {
    format!("loom_nat_{}", bridge.replace('-', "_"))
}

/// How often everything is looked at again without a change.
const RESYNC: Duration = Duration::from_secs(30);

/// The node's task network as it is now.
#[derive(Debug)]
pub struct Current {
    /// The node's task subnet.
    pub subnet: Ipv4Net,
    /// The bridge's address in it.
    pub gateway: Ipv4Addr,
    /// The bridge.
    pub bridge: String,
    /// Its addresses.
    pub ipam: Ipam,
}

/// The node's task network: none until the node has a task subnet.
#[derive(Debug)]
pub struct NodeNetwork {
    /// Whether the node runs a task network at all.
    enabled: bool,
    bridge: String,
    state_dir: PathBuf,
    current: RwLock<Option<Arc<Current>>>,
    /// The node's ports forwarded to tasks, by the run directory holding
    /// them, with the task's address.
    host_ports: Mutex<BTreeMap<PathBuf, (Ipv4Addr, Vec<HostPort>)>>,
}

/// The nftables table (family `ip`) of the ports of the node forwarded to
/// tasks on `bridge`.
pub fn host_port_table(bridge: &str) -> String {
    format!("loom_hostports_{}", bridge.replace('-', "_"))
}

/// The rules forwarding `ports` (the node's port, to a task's address and
/// port) on every local address of the node but loopback, for connections
/// from elsewhere and from the node itself; `None` when there is none.
pub fn host_port_rules(table: &str, ports: &[(Ipv4Addr, HostPort)]) -> String {
    let mut rules = format!("table ip {table} {{}}\ndelete table ip {table}\n");
    if ports.is_empty() {
        return rules;
    }
    let mut prerouting = String::new();
    let mut output = String::new();
    for (ip, port) in ports {
        let proto = port.protocol.as_str();
        let (host, target) = (port.host_port, port.container_port);
        prerouting.push_str(&format!(
            "\t\tfib daddr type local {proto} dport {host} dnat to {ip}:{target}\n"
        ));
        output.push_str(&format!(
            "\t\tip daddr != 127.0.0.0/8 fib daddr type local {proto} dport {host} dnat to {ip}:{target}\n"
        ));
    }
    rules.push_str(&format!(
        "table ip {table} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{prerouting}\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{output}\t}}\n\
         }}\n"
    ));
    rules
}

impl NodeNetwork {
    /// A node network on `bridge`; `enabled: false` keeps every container on
    /// `lo` alone.
    pub fn new(enabled: bool, bridge: &str, state_dir: PathBuf) -> NodeNetwork {
        NodeNetwork {
            enabled,
            bridge: bridge.to_owned(),
            state_dir,
            current: RwLock::new(None),
            host_ports: Mutex::new(BTreeMap::new()),
        }
    }

    /// Forwards `ports` of the node to `ip` for run `run`. Refused, naming
    /// the port and who holds it, when another run holds one of them.
    pub fn claim_host_ports(
        &self,
        run: &Path,
        ip: Ipv4Addr,
        ports: &[HostPort],
    ) -> Result<(), String> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut held = self.host_ports.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            let taken = held.iter().find(|(other, (_, theirs))| {
                other.as_path() != run
                    && theirs
                        .iter()
                        .any(|p| p.host_port == port.host_port && p.protocol == port.protocol)
            });
            if let Some((other, _)) = taken {
                return Err(format!(
                    "the node's port {}/{} is forwarded to another run ({})",
                    port.host_port,
                    port.protocol.as_str(),
                    other.display()
                ));
            }
        }
        held.insert(run.to_owned(), (ip, ports.to_vec()));
        self.program_host_ports(&held).map_err(|e| {
            held.remove(run);
            format!("cannot forward the node's ports: {e}")
        })
    }

    /// Stops forwarding the ports of run `run`, if it had any.
    pub fn release_host_ports(&self, run: &Path) {
        let mut held = self.host_ports.lock().unwrap_or_else(|e| e.into_inner());
        if held.remove(run).is_some()
            && let Err(error) = self.program_host_ports(&held)
        {
            warn!(%error, "cannot update the node's forwarded ports");
        }
    }

    fn program_host_ports(
        &self,
        held: &BTreeMap<PathBuf, (Ipv4Addr, Vec<HostPort>)>,
    ) -> std::io::Result<()> {
        let ports: Vec<(Ipv4Addr, HostPort)> = held
            .values()
            .flat_map(|(ip, ports)| ports.iter().map(move |p| (*ip, *p)))
            .collect();
        nft(&host_port_rules(&host_port_table(&self.bridge), &ports))
    }

    /// The task network, once the node has a subnet and its bridge is up.
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, current: Option<Arc<Current>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = current;
    }

    /// Follows the Nodes until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        client: Client,
        node: String,
        node_ip: Option<Ipv4Addr>,
        shutdown: CancellationToken,
    ) {
        if !self.enabled {
            return;
        }
        let informer = Informer::start(Api::<Node>::all(client), watcher::Config::default());
        let mut changes = informer.subscribe();
        let store = informer.store();
        tokio::select! {
            () = store.wait_ready() => {}
            () = shutdown.cancelled() => {
                informer.stop();
                return;
            }
        }
        let mut applied = Applied::default();
        let mut every = tokio::time::interval(RESYNC);
        loop {
            let nodes: Vec<Arc<Node>> = store.list();
            let wanted = Wanted::of(&nodes, &node, node_ip);
            let this = self.clone();
            let before = applied.clone();
            let result = tokio::task::spawn_blocking(move || this.apply(&wanted, &before)).await;
            match result {
                Ok(Ok(now)) => applied = now,
                Ok(Err(error)) => {
                    warn!(%node, %error, "cannot set up the task network; trying again");
                    applied = Applied::default();
                }
                Err(error) => warn!(%node, %error, "the task network's setup panicked"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {}
                change = changes.recv() => {
                    if matches!(change, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        break;
                    }
                    // Take every change queued with it in one pass.
                    while changes.try_recv().is_ok() {}
                }
            }
        }
        informer.stop();
    }

    /// Makes the host match `wanted`. `before` is what the last pass made.
    fn apply(&self, wanted: &Wanted, before: &Applied) -> std::io::Result<Applied> {
        let mut netlink = Netlink::open()?;
        let mut now = Applied::default();
        if let Some(subnet) = wanted.subnet {
            network::ensure_node_bridge(&mut netlink, &self.bridge, subnet)?;
            let changed = self.current().is_none_or(|c| c.subnet != subnet);
            if changed {
                let gateway = network::gateway_of(subnet).ok_or_else(|| {
                    std::io::Error::other(format!("task subnet {subnet} has no hosts"))
                })?;
                info!(%subnet, bridge = %self.bridge, "the node's task network is up");
                self.set(Some(Arc::new(Current {
                    subnet,
                    gateway,
                    bridge: self.bridge.clone(),
                    ipam: Ipam::new(&self.state_dir, subnet),
                })));
            }
            now.subnet = Some(subnet);
        }
        let mut hops = Vec::with_capacity(wanted.peers.len());
        for (net, ip) in &wanted.peers {
            match network::next_hop(&mut netlink, *ip)? {
                Some(hop) => hops.push((*net, hop)),
                None => warn!(%net, node_ip = %ip, "no route to the node of a task subnet"),
            }
        }
        let routes = network::wanted_routes(wanted.subnet, &hops);
        let changed = network::sync_routes(&mut netlink, &routes)?;
        if changed > 0 {
            info!(
                routes = routes.len(),
                changed, "routes to other nodes' task subnets"
            );
        }
        // Packets between nodes' task subnets are routed through the link that
        // holds this node's address.
        if let Some(ip) = wanted.node_ip
            && !wanted.peers.is_empty()
            && let Some(link) = netlink.link_holding(ip)?
        {
            network::enable_forwarding(&link)?;
        }
        if let Some(subnet) = wanted.subnet {
            let mut nets: BTreeSet<Ipv4Net> = wanted.peers.iter().map(|(net, _)| *net).collect();
            nets.insert(subnet);
            let nat = (subnet, nets);
            if before.nat.as_ref() != Some(&nat) || !nat_table_present(&self.bridge) {
                if let Err(error) = program_masquerade(&self.bridge, &nat.0, &nat.1) {
                    // Tasks still reach each other; only the way out is missing.
                    warn!(%error, "cannot program the task network's masquerade");
                } else {
                    now.nat = Some(nat);
                }
            } else {
                now.nat = Some(nat);
            }
        }
        Ok(now)
    }

    /// Removes what [`NodeNetwork::follow`] made (once the node's tasks are
    /// stopped: `loom up` stopping).
    pub fn teardown(&self) {
        if !self.enabled {
            return;
        }
        let Ok(mut netlink) = Netlink::open() else {
            return;
        };
        let _ = network::sync_routes(&mut netlink, &[]);
        let _ = remove_masquerade(&self.bridge);
        let table = host_port_table(&self.bridge);
        let _ = nft(&host_port_rules(&table, &[]));
        if let Ok(Some(index)) = netlink.link_index(&self.bridge) {
            let _ = netlink.delete_link(index);
        }
        self.set(None);
    }
}

/// What the last pass made.
#[derive(Debug, Clone, Default)]
struct Applied {
    subnet: Option<Ipv4Net>,
    nat: Option<(Ipv4Net, BTreeSet<Ipv4Net>)>,
}

/// What the Nodes call for.
#[derive(Debug)]
struct Wanted {
    subnet: Option<Ipv4Net>,
    node_ip: Option<Ipv4Addr>,
    peers: Vec<(Ipv4Net, Ipv4Addr)>,
}

impl Wanted {
    fn of(nodes: &[Arc<Node>], own: &str, node_ip: Option<Ipv4Addr>) -> Wanted {
        let mut subnet = None;
        let mut peers = Vec::new();
        for node in nodes {
            let Ok(net) = node.spec.task_cidr.parse::<Ipv4Net>() else {
                continue;
            };
            if node.metadata.name == own {
                subnet = Some(net);
            } else if let Some(ip) = node_address(node) {
                peers.push((net, ip));
            }
        }
        Wanted {
            subnet,
            node_ip,
            peers,
        }
    }
}

/// A node's address for routing: its `InternalIP`, else the host of its
/// nodelet endpoint when that is a routable IPv4 address.
pub fn node_address(node: &Node) -> Option<Ipv4Addr> {
    let status = node.status.as_ref()?;
    let internal = status
        .addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    internal
        .or_else(|| endpoint_ip(&status.nodelet_endpoint))
        .filter(|ip| routable(*ip))
}

/// The IPv4 host of an endpoint URL `scheme://IP:PORT`.
pub fn endpoint_ip(endpoint: &str) -> Option<Ipv4Addr> {
    let rest = endpoint.split_once("://")?.1;
    let host = rest.split(['/', '?']).next()?;
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host.parse::<Ipv4Addr>().ok().filter(|ip| routable(*ip))
}

fn routable(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

fn nft(rules: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let program = if std::path::Path::new("/usr/sbin/nft").is_file() {
        "/usr/sbin/nft"
    } else {
        "nft"
    };
    let mut child = std::process::Command::new(program)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn nat_table_present(bridge: &str) -> bool {
    let program = if std::path::Path::new("/usr/sbin/nft").is_file() {
        "/usr/sbin/nft"
    } else {
        "nft"
    };
    std::process::Command::new(program)
        .args(["list", "table", "ip", &nat_table(bridge)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The masquerade's rules: replaced whole in one transaction.
pub fn masquerade_rules(bridge: &str, subnet: &Ipv4Net, task_nets: &BTreeSet<Ipv4Net>) -> String {
    let nets: Vec<String> = task_nets.iter().map(ToString::to_string).collect();
    let table = nat_table(bridge);
    format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr != {{ {} }} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n",
        nets.join(", ")
    )
}

fn program_masquerade(
    bridge: &str,
    subnet: &Ipv4Net,
    task_nets: &BTreeSet<Ipv4Net>,
) -> std::io::Result<()> {
    nft(&masquerade_rules(bridge, subnet, task_nets))
}

fn remove_masquerade(bridge: &str) -> std::io::Result<()> {
    let table = nat_table(bridge);
    nft(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use api_types::{NodeAddress, NodeStatus};

    fn node(name: &str, cidr: &str, internal: Option<&str>, endpoint: &str) -> Arc<Node> {
        let mut node = Node::default();
        node.metadata.name = name.to_owned();
        node.spec.task_cidr = cidr.to_owned();
        node.status = Some(NodeStatus {
            addresses: internal
                .map(|a| {
                    vec![NodeAddress {
                        type_: "InternalIP".into(),
                        address: a.into(),
                    }]
                })
                .unwrap_or_default(),
            nodelet_endpoint: endpoint.to_owned(),
            ..NodeStatus::default()
        });
        Arc::new(node)
    }

    #[test]
    fn peers_are_other_nodes_with_a_subnet_and_an_address() {
        let nodes = vec![
            node("a", "10.77.0.0/24", Some("192.0.2.1"), ""),
            node("b", "10.77.1.0/24", None, "https://192.0.2.2:7444"),
            node("c", "", Some("192.0.2.3"), ""),
            node("d", "10.77.3.0/24", None, "https://127.0.0.1:7444"),
            node("e", "not a cidr", Some("192.0.2.5"), ""),
        ];
        let wanted = Wanted::of(&nodes, "a", None);
        assert_eq!(wanted.subnet, Some("10.77.0.0/24".parse().unwrap()));
        assert_eq!(
            wanted.peers,
            vec![("10.77.1.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 2))]
        );
    }

    #[test]
    fn host_port_rules_forward_local_addresses_but_loopback() {
        let port = HostPort {
            host_port: 18080,
            container_port: 80,
            protocol: network::HostPortProtocol::Tcp,
        };
        let rules = host_port_rules("t", &[(Ipv4Addr::new(10, 77, 0, 5), port)]);
        assert!(
            rules.contains("fib daddr type local tcp dport 18080 dnat to 10.77.0.5:80"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 18080 dnat to 10.77.0.5:80"
            ),
            "{rules}"
        );
        assert_eq!(
            host_port_rules("t", &[]),
            "table ip t {}\ndelete table ip t\n"
        );
    }

    #[test]
    fn a_host_port_held_by_one_run_is_refused_to_another() {
        let network = NodeNetwork::new(true, "lz-test", std::env::temp_dir());
        // Programming the rules fails here or not (no root, no nft): the
        // conflict is found before either.
        let port = HostPort {
            host_port: 18080,
            container_port: 80,
            protocol: network::HostPortProtocol::Tcp,
        };
        network.host_ports.lock().unwrap().insert(
            PathBuf::from("/runs/a"),
            (Ipv4Addr::new(10, 77, 0, 5), vec![port]),
        );
        let error = network
            .claim_host_ports(Path::new("/runs/b"), Ipv4Addr::new(10, 77, 0, 6), &[port])
            .unwrap_err();
        assert!(
            error.contains("18080/tcp") && error.contains("/runs/a"),
            "{error}"
        );
        // The same port over UDP is another port.
        let udp = HostPort {
            protocol: network::HostPortProtocol::Udp,
            ..port
        };
        let held = network.host_ports.lock().unwrap();
        assert!(!held.values().any(|(_, ports)| ports.contains(&udp)));
    }

    #[test]
    fn endpoint_hosts_parse() {
        assert_eq!(
            endpoint_ip("https://10.1.2.3:7444"),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(
            endpoint_ip("http://10.1.2.3:7444/x"),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(endpoint_ip("https://127.0.0.1:7444"), None);
        assert_eq!(endpoint_ip("https://0.0.0.0:7444"), None);
        assert_eq!(endpoint_ip("https://[::1]:7444"), None);
        assert_eq!(endpoint_ip("nonsense"), None);
    }

    #[test]
    fn the_masquerade_spares_the_task_subnets_and_the_bridge() {
        let subnet: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        let nets: BTreeSet<Ipv4Net> = [subnet, "10.77.1.0/24".parse().unwrap()].into();
        let rules = masquerade_rules("loom0", &subnet, &nets);
        assert!(rules.contains(
            "ip saddr 10.77.0.0/24 ip daddr != { 10.77.0.0/24, 10.77.1.0/24 } oifname != \"loom0\" masquerade"
        ), "{rules}");
        assert!(rules.starts_with("table ip loom_nat_loom0 {}\ndelete table ip loom_nat_loom0\n"));
    }
}
