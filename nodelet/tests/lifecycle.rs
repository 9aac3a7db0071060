//! The nodelet's task lifecycle on the fake driver (no containers, no root):
//! registration and lease, restart policies with backoff, grace periods, start
//! failures, and no second start after a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::well_known::{LABEL_ARCH, LABEL_HOSTNAME, LABEL_KERNEL, LABEL_OS};
use api_types::{Lease, Node};
use client::{Api, Client};
use loom_testing::nodelet::{Harness, phase};
use nodelet::{FakeDriver, FakeOutcome};
use serde_json::json;

const LONG: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_with_capacity_labels_taints_and_a_lease() {
    let h = Harness::new("register").await;
    let mut config = h.config();
    config.labels = nodelet::parse_labels("zone=a").unwrap();
    config.taints = nodelet::parse_taints("gpu=true:NoSchedule").unwrap();
    let nodelet = h.start(config, Some(Arc::new(FakeDriver::default())));
    let nodes: Api<Node> = Api::all(h.client.clone());
    let deadline = Instant::now() + LONG;
    let node = loop {
        if let Some(node) = nodes.get_opt(&h.name).await.unwrap()
            && node.is_ready()
        {
            break node;
        }
        assert!(Instant::now() < deadline, "the node never became Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let labels = &node.metadata.labels;
    assert_eq!(labels["zone"], "a");
    for key in [LABEL_ARCH, LABEL_OS, LABEL_KERNEL, LABEL_HOSTNAME] {
        assert!(labels.contains_key(key), "{key} missing: {labels:?}");
    }
    assert_eq!(node.spec.taints.len(), 1);
    let status = node.status.unwrap();
    for resource in ["cpu", "memory", "tasks"] {
        assert!(
            status.capacity.contains_key(resource),
            "{resource}: {:?}",
            status.capacity
        );
    }
    assert!(status.nodelet_endpoint.starts_with("http://127.0.0.1:"));
    let leases: Api<Lease> = Api::namespaced(
        h.client.clone(),
        api_types::well_known::NODE_LEASE_NAMESPACE,
    );
    // The lease is made just after the Node, which may be Ready first.
    let deadline = Instant::now() + LONG;
    let lease = loop {
        if let Some(lease) = leases.get_opt(&h.name).await.unwrap() {
            break lease;
        }
        assert!(Instant::now() < deadline, "the node never made its lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lease.spec.holder_identity.as_deref(), Some(h.name.as_str()));
    assert!(lease.spec.renew_time.is_some());
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_with_doubling_backoff() {
    let h = Harness::new("always").await;
    h.import_busybox();
    let driver = FakeDriver::default();
    let nodelet = h.start(h.config(), Some(Arc::new(driver.clone())));
    h.create(
        json!({"metadata": {"name": "svc"}, "spec": {"command": ["x"], "restartPolicy": "Always"}}),
    )
    .await;
    let task = h
        .wait_for("svc", LONG, |t| {
            t.status.as_ref().is_some_and(|s| s.restart_count >= 4)
        })
        .await;
    assert_eq!(phase(&task), "Running");
    // Base 200 ms, doubling: the 4th start comes at least 0.2+0.4+0.8 s after the first.
    let starts = driver.starts();
    assert!(starts.len() >= 4);
    let times: Vec<chrono::DateTime<chrono::Utc>> = starts[..4]
        .iter()
        .map(|dir| {
            std::fs::metadata(dir.join("spec.json"))
                .unwrap()
                .modified()
                .unwrap()
                .into()
        })
        .collect();
    let spread = times[3] - times[0];
    assert!(
        spread >= chrono::Duration::milliseconds(1300),
        "restarts too fast: {spread}"
    );
    // The nodelet's metrics count them.
    let node: Node = Api::<Node>::all(h.client.clone())
        .get(&h.name)
        .await
        .unwrap();
    let endpoint = Client::for_server(&node.status.unwrap().nodelet_endpoint).unwrap();
    let text = endpoint
        .request_bytes(client::client::Method::GET, "/metrics", None)
        .await
        .unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let started: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("loom_nodelet_runs_started_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no runs_started in {text}"));
    assert!(started >= 4, "{text}");
    assert!(
        text.contains("loom_nodelet_runs_ended_total{phase=\"Running\",reason=\"Completed\"}"),
        "{text}"
    );
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_escalates_to_sigkill_after_the_grace_period() {
    let h = Harness::new("grace").await;
    h.import_busybox();
    let driver = FakeDriver::default();
    driver.set_default(FakeOutcome::UntilSignalled { ignore_term: true });
    // The node's default is long: the deleted task's own 1 s must be used.
    let mut config = h.config();
    config.default_grace = Duration::from_secs(10);
    let nodelet = h.start(config, Some(Arc::new(driver.clone())));
    let task = h
        .create(json!({"metadata": {"name": "stubborn"}, "spec": {"command": ["x"], "terminationGracePeriodSeconds": 1}}))
        .await;
    h.wait_for("stubborn", LONG, |t| phase(t) == "Running")
        .await;
    let asked = Instant::now();
    h.tasks()
        .delete("stubborn", &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        let signals: Vec<i32> = driver.signals().into_iter().map(|(_, s)| s).collect();
        if signals.contains(&libc::SIGKILL) {
            assert_eq!(signals, vec![libc::SIGTERM, libc::SIGKILL]);
            break;
        }
        assert!(Instant::now() < deadline, "never killed: {signals:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "SIGKILL after {waited:?}"
    );
    // The deleted task's directory is removed.
    let dir = h.state.join("tasks").join(&task.metadata.uid);
    while dir.exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_fail_the_task_and_restarts_do_not_run_it_twice() {
    let h = Harness::new("restart").await;
    h.import_busybox();
    let driver = FakeDriver::default();
    driver.set_default(FakeOutcome::Exit(0, Duration::from_secs(2)));
    let first = h.start(h.config(), Some(Arc::new(driver.clone())));
    h.create(json!({"metadata": {"name": "once"}, "spec": {"command": ["x"]}}))
        .await;
    let once = h.wait_for("once", LONG, |t| phase(t) == "Running").await;
    first.kill();
    let second = h.start(h.config(), Some(Arc::new(driver.clone())));
    h.wait_for("once", LONG, |t| phase(t) == "Completed").await;
    assert_eq!(driver.starts().len(), 1, "started again after the restart");
    assert_eq!(h.runs(&once).len(), 1);

    driver.set_default(FakeOutcome::FailStart("no such device".into()));
    h.create(json!({"metadata": {"name": "broken"}, "spec": {"command": ["x"], "restartPolicy": "Always"}}))
        .await;
    let broken = h.wait_for("broken", LONG, |t| phase(t) == "Failed").await;
    let status = broken.status.unwrap();
    assert_eq!(status.reason, "ContainerCreateFailed");
    assert!(status.message.contains("no such device"));
    second.stop().await;
}

/// Fencing: a node whose lease renewals fail for longer than the lease's
/// duration stops its tasks (Killed, reason NodeFenced) and starts none; while
/// it renews, a task runs on past that duration untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_renew_its_lease_stops_its_tasks_and_starts_none() {
    use api_types::Namespace;
    use api_types::well_known::{NODE_LEASE_NAMESPACE, REASON_NODE_FENCED};
    let h = Harness::new("fence").await;
    h.import_busybox();
    let driver = FakeDriver::default();
    driver.set_default(FakeOutcome::UntilSignalled { ignore_term: false });
    let mut config = h.config();
    config.lease_duration = Duration::from_secs(3);
    config.renew_interval = Duration::from_millis(500);
    let nodelet = h.start(config, Some(Arc::new(driver.clone())));
    h.create(json!({"metadata": {"name": "long"}, "spec": {"command": ["x"], "terminationGracePeriodSeconds": 1}}))
        .await;
    h.wait_for("long", LONG, |t| phase(t) == "Running").await;
    // Renewing: past the lease's duration, nothing is stopped.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(driver.signals(), vec![], "stopped while renewing");

    // Renewals fail from now on: its Lease and their namespace are deleted
    // (a Lease cannot be made again in a namespace that is gone or going).
    let namespaces: Api<Namespace> = Api::all(h.client.clone());
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), NODE_LEASE_NAMESPACE);
    namespaces
        .delete(NODE_LEASE_NAMESPACE, &Default::default())
        .await
        .unwrap();
    let broken = Instant::now();
    let deadline = broken + LONG;
    while leases.get_opt(&h.name).await.unwrap().is_some() {
        let _ = leases.delete(&h.name, &Default::default()).await;
        assert!(Instant::now() < deadline, "the lease stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = h
        .wait_for("long", LONG, |t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.reason == REASON_NODE_FENCED)
        })
        .await;
    assert_eq!(phase(&killed), "Killed");
    let after = broken.elapsed();
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(8),
        "fenced {after:?} after the renewals stopped (lease 3 s)"
    );
    assert_eq!(
        driver
            .signals()
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        vec![libc::SIGTERM]
    );
    // Nothing starts while fenced.
    let starts = driver.starts().len();
    h.create(json!({"metadata": {"name": "new"}, "spec": {"command": ["x"]}}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(driver.starts().len(), starts, "a task started while fenced");
    nodelet.stop().await;
}
