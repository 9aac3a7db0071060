//! The control plane of `loom proxy`: follows Services, Endpoints and Job
//! tasks, and rebuilds the routing [`Table`] and the resolver's [`Zone`] on
//! every change (a rebuild is a pass over the caches: cheap next to a
//! watch event, and never out of step).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use api_types::kinds::service::CLUSTER_IP_NONE;
use api_types::well_known::{LABEL_JOB, LABEL_JOB_INDEX};
use api_types::{Endpoints, Node, Protocol, Service, Task, TaskPhase};
use client::{Api, Client, Informer, watcher};
use ipnet::Ipv4Net;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dataplane::{Backends, OriginalDestination, Proxy, Table};
use crate::dns::{Resolver, Zone};
use crate::metrics::Metrics;

/// How `loom proxy` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node it serves (its task subnet's gateway is where the resolver
    /// listens).
    pub node: String,
    /// The cluster's service range: connections to it are redirected here.
    pub service_cidr: Ipv4Net,
    /// Where the data plane listens (all addresses: nftables redirects to it).
    pub listen_port: u16,
    /// The task bridges whose traffic is redirected.
    pub bridges: Vec<String>,
    /// The nftables table of the redirect.
    pub table: String,
    /// Serve the resolver on the task subnet's gateway, port 53.
    pub dns: bool,
    /// Where the resolver forwards other names (default: the node's
    /// resolv.conf).
    pub upstream_dns: Vec<SocketAddr>,
    /// How long connections in flight may finish after a stop.
    pub drain: Duration,
}

impl Config {
    /// Defaults for node `node` and range `service_cidr`.
    pub fn new(node: &str, service_cidr: Ipv4Net) -> Config {
        Config {
            node: node.to_owned(),
            service_cidr,
            listen_port: 15001,
            bridges: vec!["loom0".to_owned()],
            table: crate::redirect::DEFAULT_TABLE.to_owned(),
            dns: true,
            upstream_dns: Vec::new(),
            drain: Duration::from_secs(10),
        }
    }
}

/// The routing table of every Service port with a virtual address: its
/// ready endpoints at their target ports (TCP only).
pub fn build_table(services: &[Arc<Service>], endpoints: &[Arc<Endpoints>]) -> Table {
    let by_name: HashMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .map(|e| {
            (
                (e.metadata.namespace.as_str(), e.metadata.name.as_str()),
                e.as_ref(),
            )
        })
        .collect();
    let mut table = Table::new();
    for service in services {
        let Ok(vip) = service.spec.cluster_ip.parse::<Ipv4Addr>() else {
            continue;
        };
        let key = (
            service.metadata.namespace.as_str(),
            service.metadata.name.as_str(),
        );
        let name = format!("{}/{}", key.0, key.1);
        for port in &service.spec.ports {
            if port.protocol() != Protocol::Tcp {
                continue;
            }
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            let mut addresses = Vec::new();
            if let Some(endpoints) = by_name.get(&key) {
                for subset in &endpoints.subsets {
                    let target = subset.ports.iter().find(|p| {
                        p.name == port.name && p.protocol.unwrap_or_default() == Protocol::Tcp
                    });
                    let Some(target) = target.and_then(|p| u16::try_from(p.port).ok()) else {
                        continue;
                    };
                    for address in &subset.addresses {
                        if let Ok(ip) = address.ip.parse::<Ipv4Addr>() {
                            addresses.push(SocketAddrV4::new(ip, target));
                        }
                    }
                }
            }
            addresses.sort();
            addresses.dedup();
            table.insert(
                SocketAddrV4::new(vip, service_port),
                Arc::new(Backends::new(
                    name.clone(),
                    port.name.clone(),
                    addresses,
                    None,
                )),
            );
        }
    }
    table
}

/// The resolver's names: every Service's address (a headless one's ready
/// endpoints), and every running Job task's at `INDEX.JOB.NAMESPACE`.
pub fn build_zone(
    services: &[Arc<Service>],
    endpoints: &[Arc<Endpoints>],
    tasks: &[Arc<Task>],
) -> Zone {
    let mut zone = Zone::new();
    for service in services {
        let relative = format!("{}.{}", service.metadata.name, service.metadata.namespace);
        if service.spec.cluster_ip == CLUSTER_IP_NONE {
            let ready = endpoints
                .iter()
                .filter(|e| {
                    e.metadata.name == service.metadata.name
                        && e.metadata.namespace == service.metadata.namespace
                })
                .flat_map(|e| e.subsets.iter())
                .flat_map(|s| s.addresses.iter())
                .filter_map(|a| a.ip.parse::<Ipv4Addr>().ok())
                .collect::<Vec<_>>();
            zone.insert(&relative, ready);
        } else if let Ok(ip) = service.spec.cluster_ip.parse::<Ipv4Addr>() {
            zone.insert(&relative, [ip]);
        }
    }
    for task in tasks {
        let labels = &task.metadata.labels;
        let (Some(job), Some(index)) = (labels.get(LABEL_JOB), labels.get(LABEL_JOB_INDEX)) else {
            continue;
        };
        let Some(status) = &task.status else {
            continue;
        };
        if status.phase != TaskPhase::Running || task.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Ok(ip) = status.task_ip.parse::<Ipv4Addr>() {
            zone.insert(&format!("{index}.{job}.{}", task.metadata.namespace), [ip]);
        }
    }
    zone
}

/// Runs the proxy until `shutdown`: the redirect installed, the data plane
/// and the resolver serving, both kept current; the redirect removed at the
/// end.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.listen_port))
        .await
        .with_context(|| format!("cannot listen on port {}", config.listen_port))?;
    let port = listener.local_addr()?.port();
    crate::redirect::install(&config.table, config.service_cidr, port, &config.bridges)
        .context("cannot install the redirect of the service range")?;
    info!(node = %config.node, service_cidr = %config.service_cidr, port, "proxy serving");

    let services = Informer::start(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let endpoints = Informer::start(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    );
    let tasks = Informer::start(
        Api::<Task>::all(client.clone()),
        watcher::Config {
            label_selector: Some(format!("{LABEL_JOB},{LABEL_JOB_INDEX}")),
            ..watcher::Config::default()
        },
    );
    let (table_tx, table_rx) = watch::channel(Arc::new(Table::new()));
    let (zone_tx, zone_rx) = watch::channel(Arc::new(Zone::new()));
    let metrics = Metrics::default();
    let proxy = Arc::new(Proxy::new(
        table_rx,
        Arc::new(OriginalDestination),
        None,
        metrics.clone(),
    ));
    let dataplane = tokio::spawn(proxy.serve(listener, shutdown.clone(), config.drain));

    let mut dns_tasks = Vec::new();
    if config.dns {
        let upstream = if config.upstream_dns.is_empty() {
            crate::dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            config.upstream_dns.clone()
        };
        let resolver = Arc::new(Resolver::new(zone_rx, upstream));
        let (client, node, shutdown) = (client.clone(), config.node.clone(), shutdown.clone());
        dns_tasks.push(tokio::spawn(async move {
            serve_dns_on_gateway(client, &node, resolver, shutdown).await;
        }));
    }

    let mut changes = (
        services.subscribe(),
        endpoints.subscribe(),
        tasks.subscribe(),
    );
    let (service_store, endpoint_store, task_store) =
        (services.store(), endpoints.store(), tasks.store());
    tokio::select! {
        () = async {
            service_store.wait_ready().await;
            endpoint_store.wait_ready().await;
            task_store.wait_ready().await;
        } => {}
        () = shutdown.cancelled() => {}
    }
    let mut every = tokio::time::interval(Duration::from_secs(30));
    while !shutdown.is_cancelled() {
        let (s, e, t) = (
            service_store.list(),
            endpoint_store.list(),
            task_store.list(),
        );
        let table = build_table(&s, &e);
        let zone = build_zone(&s, &e, &t);
        table_tx.send_if_modified(|current| {
            let changed = !same_table(current, &table);
            if changed {
                *current = Arc::new(table);
            }
            changed
        });
        zone_tx.send_if_modified(|current| {
            let changed = **current != zone;
            if changed {
                *current = Arc::new(zone);
            }
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {}
            _ = changes.0.recv() => {}
            _ = changes.1.recv() => {}
            _ = changes.2.recv() => {}
        }
        // Every change queued with it in one pass.
        while changes.0.try_recv().is_ok()
            || changes.1.try_recv().is_ok()
            || changes.2.try_recv().is_ok()
        {}
    }
    services.stop();
    endpoints.stop();
    tasks.stop();
    let _ = dataplane.await;
    for task in dns_tasks {
        let _ = task.await;
    }
    if let Err(error) = crate::redirect::remove(&config.table) {
        warn!(%error, "cannot remove the redirect");
    }
    Ok(())
}

/// Whether two tables route alike (same addresses, same endpoints).
fn same_table(a: &Table, b: &Table) -> bool {
    a.len() == b.len()
        && a.iter().all(|(key, x)| {
            b.get(key).is_some_and(|y| {
                x.endpoints == y.endpoints && x.hold == y.hold && x.service == y.service
            })
        })
}

/// Serves the resolver on the gateway of the node's task subnet, once the
/// node has one and its bridge holds the address (the nodelet makes it).
async fn serve_dns_on_gateway(
    client: Client,
    node: &str,
    resolver: Arc<Resolver>,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let gateway = loop {
        let subnet = match nodes.get_opt(node).await {
            Ok(Some(node)) => node.spec.task_cidr.parse::<Ipv4Net>().ok(),
            Ok(None) => None,
            Err(error) => {
                warn!(%node, %error, "cannot read the node");
                None
            }
        };
        if let Some(gateway) = subnet.and_then(|s| s.hosts().next()) {
            // Bound once the bridge holds it.
            match (
                UdpSocket::bind((gateway, 53)).await,
                TcpListener::bind((gateway, 53)).await,
            ) {
                (Ok(udp), Ok(tcp)) => break (gateway, udp, tcp),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::debug!(%gateway, %error, "the resolver cannot bind yet");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let (address, udp, tcp) = gateway;
    info!(%address, "resolver serving");
    let udp_task = tokio::spawn(resolver.clone().serve_udp(udp, shutdown.clone()));
    resolver.serve_tcp(tcp, shutdown).await;
    let _ = udp_task.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn service(name: &str, ip: &str, ports: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": ports, "template": {"spec": {"image": "x"}}},
            }))
            .unwrap(),
        )
    }

    fn endpoints(name: &str, subsets: serde_json::Value) -> Arc<Endpoints> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "subsets": subsets,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_table_maps_each_tcp_port_to_its_ready_endpoints() {
        let services = vec![
            service(
                "web",
                "10.96.0.10",
                json!([{"name": "http", "port": 80, "targetPort": "http"},
                       {"name": "dns", "port": 53, "protocol": "UDP"},
                       {"name": "admin", "port": 9000}]),
            ),
            service("headless", "None", json!([{"port": 80}])),
        ];
        let endpoints = vec![endpoints(
            "web",
            json!([{
                "addresses": [{"ip": "10.77.1.5"}, {"ip": "10.77.2.5"}],
                "notReadyAddresses": [{"ip": "10.77.3.5"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}],
            }]),
        )];
        let table = build_table(&services, &endpoints);
        assert_eq!(table.len(), 2, "UDP and headless are not proxied");
        let http = &table[&"10.96.0.10:80".parse().unwrap()];
        assert_eq!(
            http.endpoints,
            vec![
                "10.77.1.5:8080".parse().unwrap(),
                "10.77.2.5:8080".parse().unwrap()
            ]
        );
        assert_eq!(http.service, "default/web");
        let admin = &table[&"10.96.0.10:9000".parse().unwrap()];
        assert_eq!(admin.endpoints.len(), 2);
        assert!(admin.endpoints.iter().all(|e| e.port() == 9001));
    }

    #[test]
    fn the_zone_names_services_headless_endpoints_and_job_tasks() {
        let services = vec![
            service("web", "10.96.0.10", json!([{"port": 80}])),
            service("db", "None", json!([{"port": 5432}])),
        ];
        let endpoints = vec![endpoints(
            "db",
            json!([{"addresses": [{"ip": "10.77.1.7"}], "notReadyAddresses": [{"ip": "10.77.1.8"}],
                    "ports": [{"port": 5432}]}]),
        )];
        let task = |index: &str, phase: &str, ip: &str| -> Arc<Task> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("train-{index}"), "namespace": "ml",
                                 "labels": {LABEL_JOB: "train", LABEL_JOB_INDEX: index}},
                    "spec": {"image": "x"},
                    "status": {"phase": phase, "taskIP": ip},
                }))
                .unwrap(),
            )
        };
        let tasks = vec![
            task("0", "Running", "10.77.1.9"),
            task("1", "Completed", "10.77.1.10"),
        ];
        let zone = build_zone(&services, &endpoints, &tasks);
        assert_eq!(
            zone.lookup("web.default.svc"),
            Some(vec![Ipv4Addr::new(10, 96, 0, 10)])
        );
        assert_eq!(
            zone.lookup("db.default.svc"),
            Some(vec![Ipv4Addr::new(10, 77, 1, 7)])
        );
        assert_eq!(
            zone.lookup("0.train.ml.svc"),
            Some(vec![Ipv4Addr::new(10, 77, 1, 9)])
        );
        assert_eq!(
            zone.lookup("1.train.ml.svc"),
            Some(vec![]),
            "a finished task has no name"
        );
    }
}
