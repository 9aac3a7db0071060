//! The task network on one node, with real containers: once the Node has a
//! task subnet, container tasks get addresses on the node's bridge, reach
//! each other and are reached from the node, know their address from
//! `status.taskIP` and `/etc/hosts`, and give it back when they end; an
//! exhausted subnet fails a task clearly. Each test uses a bridge and a
//! 10.X/16 of its own in the root network namespace, removed even on failure.
//! Needs root; skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api_types::Node;
use client::{Api, Patch, PatchParams};
use futures::StreamExt as _;
use loom_testing::netns::{free_net, link_exists, nft};
use loom_testing::nodelet::{Harness, is_root, phase};
use serde_json::json;

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the nodelet's network tests need root");
            return;
        }
    };
}

const LONG: Duration = Duration::from_secs(30);

/// Removes the test's bridge and masquerade table, whatever happened.
struct Cleanup {
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if link_exists(&self.bridge) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
        for table in [
            nodelet::node_network::nat_table(&self.bridge),
            nodelet::node_network::host_port_table(&self.bridge),
        ] {
            let _ = std::process::Command::new(nft())
                .args(["delete", "table", "ip", &table])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn nat_table_exists(bridge: &str) -> bool {
    std::process::Command::new(nft())
        .args([
            "list",
            "table",
            "ip",
            &nodelet::node_network::nat_table(bridge),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `done`, or panics naming `what`.
async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a nodelet on a bridge of its own and gives its node `subnet`, as
/// the node IPAM controller would.
async fn start_with_subnet(
    h: &Harness,
    bridge: &str,
    subnet: &str,
) -> loom_testing::nodelet::Running {
    let mut config = h.config();
    config.bridge = bridge.to_owned();
    config.stop_tasks_on_exit = true;
    let nodelet = h.start(config, None);
    let nodes: Api<Node> = Api::all(h.client.clone());
    let deadline = Instant::now() + LONG;
    while nodes.get_opt(&h.name).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes
        .patch(
            &h.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taskCIDR": subnet}})),
        )
        .await
        .unwrap();
    let sys = PathBuf::from("/sys/class/net").join(bridge);
    until("the bridge comes up", LONG, || sys.exists()).await;
    nodelet
}

fn grace(seconds: i64) -> client::DeleteParams {
    client::DeleteParams {
        grace_period_seconds: Some(seconds),
        ..client::DeleteParams::default()
    }
}

async fn log_of(h: &Harness, name: &str) -> String {
    let mut log = Vec::new();
    let mut stream = Box::pin(h.tasks().logs(name, false, None).await.unwrap());
    while let Some(chunk) = stream.next().await {
        log.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&log).into_owned()
}

/// Addresses lent in the node's subnet.
fn lent(state: &Path, subnet: &str) -> Vec<String> {
    let dir = state.join("ipam").join(subnet.replace('/', "_"));
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_get_addresses_and_reach_each_other() {
    need_root!();
    let h = Harness::new("net").await;
    h.import_busybox();
    let x = free_net(50..75).unwrap().expect("a free 10.X.0.0/16");
    let subnet = format!("10.{x}.7.0/24");
    let bridge = format!("lt{}", std::process::id() % 10_000_000);
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
    };
    let nodelet = start_with_subnet(&h, &bridge, &subnet).await;
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();

    // A port of the node forwarded to the server.
    let host_port = 20_000 + (std::process::id() % 10_000) as u16;
    h.create(json!({"metadata": {"name": "server"}, "spec": {
        "command": ["sh", "-c", "mkdir -p /www && echo hello from the server > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "ports": [{"name": "http", "containerPort": 8080, "hostPort": host_port}],
    }}))
    .await;
    let server = h
        .wait_for("server", LONG, |t| {
            phase(t) == "Running" && t.status.as_ref().is_some_and(|s| !s.task_ip.is_empty())
        })
        .await;
    let server_ip: Ipv4Addr = server.status.as_ref().unwrap().task_ip.parse().unwrap();
    assert!(net.contains(&server_ip), "{server_ip} not in {net}");
    assert_ne!(
        server_ip,
        net.hosts().next().unwrap(),
        "the gateway is the bridge's"
    );
    assert_eq!(lent(&h.state, &subnet), vec![server_ip.to_string()]);

    // The node reaches the task at its address.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + LONG;
    let body = loop {
        match http.get(format!("http://{server_ip}:8080/")).send().await {
            Ok(response) if response.status().is_success() => {
                break response.text().await.unwrap();
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("the node cannot reach the task at {server_ip}: {other:?}"),
        }
    };
    assert_eq!(body, "hello from the server\n");
    // Through the node's port, at one of the node's own addresses.
    let gateway = net.hosts().next().unwrap();
    let forwarded = http
        .get(format!("http://{gateway}:{host_port}/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the node's port {host_port} is not forwarded: {e}"));
    assert_eq!(forwarded.text().await.unwrap(), "hello from the server\n");
    // Another task asking for the same port of the node is refused.
    h.create(json!({"metadata": {"name": "thief"}, "spec": {
        "command": ["true"],
        "ports": [{"containerPort": 80, "hostPort": host_port}],
    }}))
    .await;
    let thief = h.wait_for("thief", LONG, |t| phase(t) == "Failed").await;
    let status = thief.status.unwrap();
    assert_eq!(status.reason, nodelet::tasks::REASON_HOST_PORT_CONFLICT);
    assert!(
        status.message.contains(&format!("{host_port}/tcp")),
        "{}",
        status.message
    );

    // Another task reaches it, and knows its own address and route (nc:
    // busybox-static's wget crashes in its static resolver).
    h.create(json!({"metadata": {"name": "client"}, "spec": {
        "command": ["sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $SERVER 8080; echo nc=$?; cat /etc/hosts; ip -o -4 addr show eth0; echo ip-addr=$?; ip route; echo ip-route=$?"],
        "env": [{"name": "SERVER", "value": server_ip.to_string()}],
    }}))
    .await;
    let client = h
        .wait_for("client", LONG, |t| {
            matches!(phase(t), "Completed" | "Failed")
        })
        .await;
    let log = log_of(&h, "client").await;
    let status = client.status.unwrap();
    assert_eq!(status.exit_code, Some(0), "{log}");
    for step in ["nc=0", "ip-addr=0", "ip-route=0"] {
        assert!(log.contains(step), "{step}: {log}");
    }
    let client_ip: Ipv4Addr = status.task_ip.parse().unwrap();
    assert!(net.contains(&client_ip) && client_ip != server_ip);
    assert!(log.contains("hello from the server"), "{log}");
    assert!(log.contains(&format!("{client_ip}\tclient")), "{log}");
    assert!(log.contains(&format!("inet {client_ip}/24")), "{log}");
    assert!(
        log.contains(&format!("default via {}", net.hosts().next().unwrap())),
        "{log}"
    );
    // The client's run is over: its address is back.
    until("the client's address comes back", LONG, || {
        lent(&h.state, &subnet) == vec![server_ip.to_string()]
    })
    .await;

    // Deleted, the server's address comes back and its veth goes.
    let server_veth = nodelet::network::host_veth_name(&format!("{}-1", server.metadata.uid));
    assert!(link_exists(&server_veth), "{server_veth}");
    h.tasks().delete("server", &grace(1)).await.unwrap();
    until("the server's address comes back", LONG, || {
        lent(&h.state, &subnet).is_empty()
    })
    .await;
    until("the server's veth goes", LONG, || {
        !link_exists(&server_veth)
    })
    .await;
    let table = nodelet::node_network::host_port_table(&bridge);
    assert!(
        !std::process::Command::new(nft())
            .args(["list", "table", "ip", &table])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success(),
        "the forwarded port outlived its task"
    );

    assert!(nat_table_exists(&bridge));
    // Stopping the node's tasks with it (loom up) takes its network down.
    nodelet.stop().await;
    assert!(!link_exists(&bridge), "the bridge outlived the nodelet");
    assert!(
        !nat_table_exists(&bridge),
        "the masquerade outlived the nodelet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_subnet_fails_the_task_clearly() {
    need_root!();
    let h = Harness::new("netfull").await;
    h.import_busybox();
    let x = free_net(75..100).unwrap().expect("a free 10.X.0.0/16");
    // A /30: the gateway and one task address.
    let subnet = format!("10.{x}.9.0/30");
    let bridge = format!("lf{}", std::process::id() % 10_000_000);
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
    };
    let nodelet = start_with_subnet(&h, &bridge, &subnet).await;

    h.create(json!({"metadata": {"name": "first"}, "spec": {"command": ["sleep", "600"]}}))
        .await;
    let first = h.wait_for("first", LONG, |t| phase(t) == "Running").await;
    assert_eq!(first.status.unwrap().task_ip, format!("10.{x}.9.2"));
    h.create(json!({"metadata": {"name": "second"}, "spec": {"command": ["true"]}}))
        .await;
    let second = h.wait_for("second", LONG, |t| phase(t) == "Failed").await;
    let status = second.status.unwrap();
    assert_eq!(status.reason, nodelet::ipam::EXHAUSTED);
    assert!(
        status.message.contains(&subnet) && status.message.contains("no free address"),
        "{}",
        status.message
    );

    // Once the first ends, a new task gets the address.
    h.tasks().delete("first", &grace(1)).await.unwrap();
    until("the address comes back", LONG, || {
        lent(&h.state, &subnet).is_empty()
    })
    .await;
    h.create(json!({"metadata": {"name": "third"}, "spec": {"command": ["true"]}}))
        .await;
    let third = h.wait_for("third", LONG, |t| phase(t) == "Completed").await;
    assert_eq!(third.status.unwrap().task_ip, format!("10.{x}.9.2"));
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_restart_an_unhealthy_task() {
    need_root!();
    let h = Harness::new("probes").await;
    h.import_busybox();
    let x = free_net(40..50).unwrap().expect("a free 10.X.0.0/16");
    let subnet = format!("10.{x}.5.0/24");
    let bridge = format!("lp{}", std::process::id() % 10_000_000);
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
    };
    let nodelet = start_with_subnet(&h, &bridge, &subnet).await;
    let ready_of = |t: &api_types::Task| {
        t.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| (c.is_true(), c.reason.clone()))
    };

    // Serves only after 3 s: Running at once, Ready once its probe passes.
    h.create(json!({"metadata": {"name": "slow"}, "spec": {
        "command": ["sh", "-c", "sleep 3; mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }}))
    .await;
    // Nothing listens on 9999: its liveness probe fails twice, it restarts.
    h.create(json!({"metadata": {"name": "sick"}, "spec": {
        "command": ["sleep", "600"],
        "restartPolicy": "Always",
        "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2},
    }}))
    .await;
    // No probes: ready as soon as it runs.
    h.create(json!({"metadata": {"name": "plain"}, "spec": {"command": ["sleep", "600"]}}))
        .await;

    let slow = h
        .wait_for("slow", LONG, |t| {
            phase(t) == "Running" && ready_of(t).is_some()
        })
        .await;
    assert_eq!(
        ready_of(&slow),
        Some((false, "ProbesPending".to_owned())),
        "running but not serving yet"
    );
    let slow = h
        .wait_for("slow", LONG, |t| {
            ready_of(t).is_some_and(|(ready, _)| ready)
        })
        .await;
    let started = slow.status.as_ref().unwrap().start_time.unwrap();
    let ready_at = slow
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .last_transition_time
        .unwrap();
    assert!(
        ready_at - started >= chrono::Duration::seconds(2),
        "ready at {ready_at}, started at {started}: before it served"
    );

    let plain = h
        .wait_for("plain", LONG, |t| {
            phase(t) == "Running" && ready_of(t).is_some()
        })
        .await;
    assert_eq!(ready_of(&plain).map(|(r, _)| r), Some(true));

    let sick = h
        .wait_for("sick", LONG, |t| {
            t.status.as_ref().is_some_and(|s| s.restart_count >= 1)
        })
        .await;
    let status = sick.status.unwrap();
    assert_eq!(status.phase, api_types::TaskPhase::Running);
    // Its liveness failures are Events naming the probe and the failure.
    let events: Api<api_types::Event> = Api::namespaced(h.client.clone(), "default");
    let deadline = Instant::now() + LONG;
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        let unhealthy: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.involved_object.name == "sick" && e.reason == "Unhealthy")
            .map(|e| e.message.clone())
            .collect();
        if unhealthy
            .iter()
            .any(|m| m.contains("liveness") && m.contains("9999") && m.contains("restarted"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Unhealthy event: {unhealthy:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodelet_keeps_running_tasks_addresses() {
    need_root!();
    let h = Harness::new("netkeep").await;
    h.import_busybox();
    let x = free_net(10..20).unwrap().expect("a free 10.X.0.0/16");
    let subnet = format!("10.{x}.3.0/24");
    let bridge = format!("lk{}", std::process::id() % 10_000_000);
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
    };
    let nodelet = start_with_subnet(&h, &bridge, &subnet).await;
    h.create(json!({"metadata": {"name": "server"}, "spec": {
        "command": ["sh", "-c", "mkdir -p /www && echo still here > /www/index.html && exec httpd -f -p 8080 -h /www"],
    }}))
    .await;
    let server = h
        .wait_for("server", LONG, |t| {
            phase(t) == "Running" && t.status.as_ref().is_some_and(|s| !s.task_ip.is_empty())
        })
        .await;
    let ip = server.status.as_ref().unwrap().task_ip.clone();

    // The nodelet dies (its task runs on), and a new one adopts the run.
    nodelet.kill();
    let mut config = h.config();
    config.bridge = bridge.clone();
    config.stop_tasks_on_exit = true;
    let nodelet = h.start(config, None);
    h.create(json!({"metadata": {"name": "second"}, "spec": {"command": ["sleep", "600"]}}))
        .await;
    let second = h
        .wait_for("second", LONG, |t| {
            phase(t) == "Running" && t.status.as_ref().is_some_and(|s| !s.task_ip.is_empty())
        })
        .await;
    assert_ne!(
        second.status.unwrap().task_ip,
        ip,
        "the running task's address was lent again"
    );
    let server = h.tasks().get("server").await.unwrap();
    let status = server.status.unwrap();
    assert_eq!(status.phase, api_types::TaskPhase::Running);
    assert_eq!(status.restart_count, 0);
    assert_eq!(status.task_ip, ip);
    let mut lent = lent(&h.state, &subnet);
    lent.sort();
    assert_eq!(lent.len(), 2, "{lent:?}");
    assert!(lent.contains(&ip), "{lent:?}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let body = http
        .get(format!("http://{ip}:8080/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "still here\n");
    nodelet.stop().await;
}
