//! The garbage collector against the real API server: Background, Foreground and
//! Orphan deletes, and owners deleted while the collector was down.
#![allow(clippy::unwrap_used)]

use api_types::{Job, JobPhase, Task};
use client::{Api, DeleteParams, PostParams};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::json;

fn sleeper(name: &str, replicas: i32) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas,
                 "template": {"spec": {"image": "busybox", "command": ["sleep"]}}},
    }))
    .unwrap()
}

fn delete(policy: &str) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(policy.to_owned()),
        ..DeleteParams::default()
    }
}

async fn running_job(cluster: &Cluster, name: &str, replicas: i32) {
    cluster
        .jobs()
        .create(&PostParams::default(), &sleeper(name, replicas))
        .await
        .unwrap();
    cluster.job_in(name, JobPhase::Running).await;
    eventually(&format!("{name}'s tasks"), || async {
        (cluster.tasks_of(name).await.len() == replicas as usize).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_cascade_in_the_background_and_foreground_and_orphan_on_request() {
    let cluster = Cluster::start(&["n1"], test_config()).await;
    let jobs = cluster.jobs();
    running_job(&cluster, "bg", 2).await;
    running_job(&cluster, "fg", 2).await;
    running_job(&cluster, "orphaner", 2).await;

    jobs.delete("bg", &delete("Background")).await.unwrap();
    eventually("bg's tasks collected", || async {
        cluster.tasks_of("bg").await.is_empty().then_some(())
    })
    .await;

    // Foreground: the job stays, marked, until its tasks are gone.
    let marked = jobs.delete("fg", &delete("Foreground")).await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    eventually("fg and its tasks gone", || async {
        let gone = jobs.get_opt("fg").await.unwrap().is_none();
        if gone {
            assert!(
                cluster.tasks_of("fg").await.is_empty(),
                "the owner went only after its dependents"
            );
        }
        gone.then_some(())
    })
    .await;

    jobs.delete("orphaner", &delete("Orphan")).await.unwrap();
    eventually("orphaner gone", || async {
        jobs.get_opt("orphaner")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let orphans = cluster.tasks_of("orphaner").await;
    assert_eq!(orphans.len(), 2, "orphaned tasks stay");
    assert!(
        orphans
            .iter()
            .all(|t| t.metadata.owner_references.is_empty())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_of_owners_deleted_while_the_collector_was_down_are_collected() {
    let mut cluster = Cluster::start(&["n1"], test_config()).await;
    running_job(&cluster, "gone", 2).await;
    running_job(&cluster, "stays", 1).await;
    cluster.kill_manager().await;
    cluster
        .jobs()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    // A task naming two owners, one of which is gone, just loses that reference.
    let stays = cluster.jobs().get("stays").await.unwrap();
    let tasks: Api<Task> = cluster.tasks();
    let shared: Task = serde_json::from_value(json!({
        "metadata": {"name": "shared", "namespace": "default", "ownerReferences": [
            {"apiVersion": "loom.dev/v1", "kind": "Job", "name": "stays", "uid": stays.metadata.uid},
            {"apiVersion": "loom.dev/v1", "kind": "Job", "name": "gone", "uid": "no-such-uid"},
        ]},
        "spec": {"image": "busybox", "command": ["sleep"]},
    }))
    .unwrap();
    tasks.create(&PostParams::default(), &shared).await.unwrap();
    assert_eq!(cluster.tasks_of("gone").await.len(), 2);

    cluster.start_manager(test_config());
    eventually("gone's tasks collected after the restart", || async {
        cluster.tasks_of("gone").await.is_empty().then_some(())
    })
    .await;
    let shared = eventually("the dangling reference dropped", || async {
        let task = tasks.get("shared").await.unwrap();
        (task.metadata.owner_references.len() == 1).then_some(task)
    })
    .await;
    assert_eq!(shared.metadata.owner_references[0].name, "stays");
    assert_eq!(cluster.tasks_of("stays").await.len(), 1);
    cluster.shutdown().await;
}
