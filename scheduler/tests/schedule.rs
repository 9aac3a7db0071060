//! The scheduler against a real API server: pending tasks are bound to nodes
//! that fit, and a task that fits nowhere says why.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use api_types::{Node, Task};
use apiserver::testing::TestServer;
use client::{Api, Client, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn node(name: &str, cpu: &str, memory: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": name},
        "status": {"allocatable": {"cpu": cpu, "memory": memory},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn task(name: &str, cpu: &str, priority: i32) -> Task {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": name},
        "spec": {"image": "busybox", "priority": priority, "resources": {"cpu": cpu, "memory": "256Mi"}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_are_bound_and_the_unfit_told_why() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = Client::for_server(&server.url).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node("big", "2", "4Gi"))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("small", "1", "1Gi"))
        .await
        .unwrap();
    let mut cordoned = node("cordoned", "8", "16Gi");
    cordoned.spec.unschedulable = true;
    nodes
        .create(&PostParams::default(), &cordoned)
        .await
        .unwrap();
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        tasks
            .create(&PostParams::default(), &task(&format!("t{i}"), "500m", i))
            .await
            .unwrap();
    }
    tasks
        .create(&PostParams::default(), &task("huge", "4", 0))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(scheduler::run(client.clone(), stop.clone()));

    let deadline = Instant::now() + Duration::from_secs(20);
    let placed = loop {
        let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
        let bound: Vec<&Task> = all
            .iter()
            .filter(|t| !t.spec.node_name.is_empty())
            .collect();
        let huge = all.iter().find(|t| t.metadata.name == "huge").unwrap();
        let told = huge
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Scheduled"))
            .map(|c| c.message.clone());
        if let (5, Some(told)) = (bound.len(), told) {
            assert_eq!(
                told, "0/3 nodes: 2 insufficient cpu, 1 unschedulable",
                "the unfit task says why"
            );
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not scheduled in time: {} bound",
            bound.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Never more than a node holds: big takes 4 × 500m, small 2 × 500m.
    let on = |name: &str| placed.iter().filter(|t| t.spec.node_name == name).count();
    assert!(
        on("big") <= 4 && on("small") <= 2,
        "big {} small {}",
        on("big"),
        on("small")
    );
    assert_eq!(on("cordoned"), 0);
    let bound = placed.iter().find(|t| t.metadata.name == "t0").unwrap();
    let condition = bound
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap();
    assert_eq!(condition.reason, "Scheduled");
    stop.cancel();
    scheduler.await.unwrap();
}
