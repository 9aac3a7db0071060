//! The Service controller against the real API server and scheduler: a rollout
//! from v1 to v2 with maxUnavailable 0 never drops below replicas; scaling; a
//! failed rollout stops and says why.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api_types::well_known::{LABEL_SERVICE, LABEL_TEMPLATE_HASH};
use api_types::{Service, Task, TaskPhase};
use client::{ListParams, Patch, PatchParams, PostParams};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::json;

async fn service_tasks(cluster: &Cluster) -> Vec<Task> {
    cluster
        .tasks()
        .list_all(&ListParams::default().labels(&format!("{LABEL_SERVICE}=web")))
        .await
        .unwrap()
        .0
}

/// Waits until the service reports `replicas` ready and updated tasks for its
/// current generation, with only current tasks running.
async fn rolled_out(cluster: &Cluster, replicas: i32) -> Service {
    let services = cluster.services();
    eventually(&format!("web rolled out with {replicas}"), || async {
        let service = services.get("web").await.unwrap();
        let status = service.status.clone()?;
        let done = status.observed_generation == Some(service.metadata.generation)
            && status.updated_replicas == replicas
            && status.ready_replicas == replicas
            && status.replicas == replicas
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Progressing" && c.reason == "RolloutComplete");
        let running = service_tasks(cluster)
            .await
            .iter()
            .filter(|t| t.phase() == TaskPhase::Running)
            .count();
        (done && running == replicas as usize).then_some(service)
    })
    .await
}

async fn patch_spec(cluster: &Cluster, spec: serde_json::Value) {
    cluster
        .services()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_never_drops_below_replicas_and_scaling_follows() {
    let cluster = Cluster::start(&["n1", "n2"], test_config()).await;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3, "strategy": {"maxSurge": 1, "maxUnavailable": 0},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"image": "web:1", "command": ["sleep"]}}},
    }))
    .unwrap();
    cluster
        .services()
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let v1 = rolled_out(&cluster, 3).await;
    let v1_hash = service_tasks(&cluster).await[0].metadata.labels[LABEL_TEMPLATE_HASH].clone();
    for task in service_tasks(&cluster).await {
        assert_eq!(
            task.spec.restart_policy,
            Some(api_types::RestartPolicy::Always)
        );
        assert_eq!(task.metadata.labels["app"], "web");
    }

    // Watch the running count through the rollout.
    let lowest = Arc::new(AtomicUsize::new(usize::MAX));
    let highest = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let monitor = {
        let (lowest, highest, stop) = (lowest.clone(), highest.clone(), stop.clone());
        let tasks = cluster.tasks();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let (all, _) = tasks
                    .list_all(&ListParams::default().labels(&format!("{LABEL_SERVICE}=web")))
                    .await
                    .unwrap();
                let running = all
                    .iter()
                    .filter(|t| t.phase() == TaskPhase::Running)
                    .count();
                let live = all.iter().filter(|t| !t.is_terminal()).count();
                lowest.fetch_min(running, Ordering::SeqCst);
                highest.fetch_max(live, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    patch_spec(
        &cluster,
        json!({"template": {"metadata": {"labels": {"app": "web"}},
                                            "spec": {"image": "web:2", "command": ["sleep"]}}}),
    )
    .await;
    let v2 = rolled_out(&cluster, 3).await;
    stop.cancel();
    monitor.await.unwrap();
    assert!(v2.metadata.generation > v1.metadata.generation);
    assert!(
        lowest.load(Ordering::SeqCst) >= 3,
        "dropped to {} running during the rollout",
        lowest.load(Ordering::SeqCst)
    );
    assert!(
        highest.load(Ordering::SeqCst) <= 4,
        "surged to {} tasks with maxSurge 1",
        highest.load(Ordering::SeqCst)
    );
    for task in service_tasks(&cluster).await {
        assert_eq!(task.spec.image, "web:2");
        assert_ne!(task.metadata.labels[LABEL_TEMPLATE_HASH], v1_hash);
    }

    patch_spec(&cluster, json!({"replicas": 5})).await;
    rolled_out(&cluster, 5).await;
    patch_spec(&cluster, json!({"replicas": 2})).await;
    rolled_out(&cluster, 2).await;
    assert_eq!(service_tasks(&cluster).await.len(), 2);

    // A template whose tasks fail: the rollout stops, the old tasks keep running.
    patch_spec(
        &cluster,
        json!({"template": {"metadata": {"labels": {"app": "web"}},
                                            "spec": {"image": "web:3", "command": ["exit", "1"]}}}),
    )
    .await;
    let services = cluster.services();
    let failed = eventually("the rollout failed", || async {
        let service = services.get("web").await.unwrap();
        service
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing" && c.reason == "RolloutFailed")
            .cloned()
    })
    .await;
    assert!(failed.message.contains("failed"), "{}", failed.message);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks = service_tasks(&cluster).await;
    let running: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.phase() == TaskPhase::Running)
        .collect();
    assert_eq!(running.len(), 2, "the old tasks stay");
    assert!(running.iter().all(|t| t.spec.image == "web:2"));
    let failed_tasks = tasks
        .iter()
        .filter(|t| t.phase() == TaskPhase::Failed)
        .count();
    assert_eq!(failed_tasks, 1, "no new task after the failure");
    cluster.shutdown().await;
}

/// A node that crashed and came back found its task's run dead: a nodelet of
/// before the crash fix marked it Failed with reason ShimLost (and a data dir
/// from then still holds such tasks), one since marks it Lost. Either way the
/// service replaces it and gets back to all its replicas; the rollout does not
/// fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_lost_in_a_node_crash_are_replaced() {
    use api_types::well_known::REASON_SHIM_LOST;
    let cluster = Cluster::start(&["n1", "n2"], test_config()).await;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3,
                 "template": {"spec": {"image": "web:1", "command": ["sleep"]}}},
    }))
    .unwrap();
    cluster
        .services()
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    rolled_out(&cluster, 3).await;
    for phase in ["Failed", "Lost"] {
        let victim = service_tasks(&cluster).await[0].metadata.name.clone();
        cluster
            .tasks()
            .patch_status(
                &victim,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"phase": phase, "reason": REASON_SHIM_LOST,
                    "message": "the run's shim died without recording its end"}}),
                ),
            )
            .await
            .unwrap();
        let service = rolled_out(&cluster, 3).await;
        let tasks = service_tasks(&cluster).await;
        assert!(
            tasks.iter().all(|t| t.metadata.name != victim),
            "{phase}: the lost task is removed"
        );
        assert!(
            !service
                .status
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.reason == "RolloutFailed"),
            "{phase}: a node crash failed the rollout"
        );
    }
    cluster.shutdown().await;
}
