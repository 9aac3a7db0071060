//! Node lifecycle against the real API server and scheduler: a node that stops
//! renewing its Lease goes NotReady and tainted, its tasks are Lost and their Job
//! and Service replace them elsewhere; when it renews again it is untainted.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use api_types::well_known::{LABEL_SERVICE, REASON_NODE_LOST, TAINT_UNREACHABLE};
use api_types::{JobPhase, Node, TaskPhase};
use client::{Api, ListParams};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_loses_the_tasks_and_the_job_replaces_them_elsewhere() {
    let config = controllers::Config {
        node_grace: Duration::from_millis(1500),
        lost_grace: Duration::from_millis(1000),
        ..test_config()
    };
    let cluster = Cluster::start(&["doomed"], config).await;
    let job: api_types::Job = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": "resilient", "namespace": "default"},
        "spec": {"replicas": 2, "template": {"spec": {"image": "busybox", "command": ["sleep"]}}},
    }))
    .unwrap();
    cluster
        .jobs()
        .create(&client::PostParams::default(), &job)
        .await
        .unwrap();
    let service: api_types::Service = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "template": {"spec": {"image": "busybox", "command": ["sleep"]}}},
    }))
    .unwrap();
    cluster
        .services()
        .create(&client::PostParams::default(), &service)
        .await
        .unwrap();
    let web_on = |node: &'static str| {
        let tasks = cluster.tasks();
        async move {
            let (all, _) = tasks
                .list_all(&ListParams::default().labels(&format!("{LABEL_SERVICE}=web")))
                .await
                .unwrap();
            all.iter()
                .any(|t| t.spec.node_name == node && t.phase() == TaskPhase::Running)
        }
    };
    eventually(
        "the job's and the service's tasks running on doomed",
        || async {
            let tasks = cluster.tasks_of("resilient").await;
            let job_running =
                tasks.len() == 2 && tasks.iter().all(|t| t.phase() == TaskPhase::Running);
            (job_running && web_on("doomed").await).then_some(())
        },
    )
    .await;

    // The node goes quiet; a healthy one joins.
    cluster.alive.lock().unwrap().remove("doomed");
    cluster.add_node("healthy").await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node = eventually("doomed NotReady and tainted", || async {
        let node = nodes.get("doomed").await.unwrap();
        let tainted = node.spec.taints.iter().any(|t| t.key == TAINT_UNREACHABLE);
        (tainted && !node.is_ready()).then_some(node)
    })
    .await;
    let ready = node.status.unwrap().conditions;
    assert_eq!(ready[0].reason, "NodeLeaseExpired");

    let lost = eventually("the tasks on doomed lost", || async {
        let tasks = cluster.tasks_of("resilient").await;
        let lost: Vec<_> = tasks
            .into_iter()
            .filter(|t| t.spec.node_name == "doomed" && t.phase() == TaskPhase::Lost)
            .collect();
        (lost.len() == 2).then_some(lost)
    })
    .await;
    assert_eq!(lost[0].status.as_ref().unwrap().reason, REASON_NODE_LOST);

    let replacements = eventually("replacements running on healthy", || async {
        let tasks = cluster.tasks_of("resilient").await;
        let running: Vec<_> = tasks
            .into_iter()
            .filter(|t| t.phase() == TaskPhase::Running)
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    for task in &replacements {
        assert_eq!(task.spec.node_name, "healthy");
        assert!(
            task.metadata.name.ends_with("-r1"),
            "{}",
            task.metadata.name
        );
    }
    eventually("the service's task replaced on healthy", || async {
        web_on("healthy").await.then_some(())
    })
    .await;
    // The job's status follows its tasks.
    let jobs = cluster.jobs();
    eventually("the job counting 2 lost and 2 running", || async {
        let status = jobs.get("resilient").await.unwrap().status?;
        let counted = (status.phase, status.lost, status.running) == (JobPhase::Running, 2, 2);
        counted.then_some(())
    })
    .await;

    // The node comes back: Ready and untainted again.
    cluster.alive.lock().unwrap().insert("doomed".into());
    eventually("doomed back", || async {
        let node = nodes.get("doomed").await.unwrap();
        let tainted = node.spec.taints.iter().any(|t| t.key == TAINT_UNREACHABLE);
        (!tainted && node.is_ready()).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_of_a_deleted_node_are_lost_and_replaced() {
    let cluster = Cluster::start(&["old"], test_config()).await;
    let job: api_types::Job = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": "movable", "namespace": "default"},
        "spec": {"template": {"spec": {"image": "busybox", "command": ["sleep"]}}},
    }))
    .unwrap();
    cluster
        .jobs()
        .create(&client::PostParams::default(), &job)
        .await
        .unwrap();
    eventually("the task running on old", || async {
        let tasks = cluster.tasks_of("movable").await;
        tasks
            .iter()
            .any(|t| t.spec.node_name == "old" && t.phase() == TaskPhase::Running)
            .then_some(())
    })
    .await;
    cluster.add_node("new").await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    nodes
        .delete("old", &client::DeleteParams::default())
        .await
        .unwrap();
    let tasks = eventually("the task replaced on new", || async {
        let tasks = cluster.tasks_of("movable").await;
        let moved = tasks
            .iter()
            .any(|t| t.spec.node_name == "new" && t.phase() == TaskPhase::Running);
        moved.then_some(tasks)
    })
    .await;
    let lost = tasks
        .iter()
        .find(|t| t.metadata.name == "movable-0")
        .unwrap();
    let status = lost.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.reason.as_str()),
        (TaskPhase::Lost, REASON_NODE_LOST)
    );
    assert_eq!(status.message, "node old was deleted");
    cluster.shutdown().await;
}
