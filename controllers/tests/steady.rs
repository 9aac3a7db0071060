//! Level-triggered without churn: once everything is settled the controllers
//! write nothing more (no status flapping, no reconcile loops).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use api_types::{JobPhase, Node, Service};
use client::{Api, ListParams, Object, PostParams};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::json;

async fn versions<K: Object>(api: &Api<K>) -> BTreeMap<String, String> {
    let (all, _) = api.list_all(&ListParams::default()).await.unwrap();
    all.iter()
        .map(|o| (o.meta().name.clone(), o.meta().resource_version.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_cluster_is_left_alone() {
    let cluster = Cluster::start(&["n1", "n2"], test_config()).await;
    cluster
        .create_job(json!({"apiVersion": "loom.dev/v1", "kind": "Job",
            "metadata": {"name": "done", "namespace": "default"},
            "spec": {"replicas": 3, "template": {"spec": {"image": "busybox", "command": ["true"]}}}}))
        .await;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "template": {"spec": {"image": "web", "command": ["sleep"]}}},
    }))
    .unwrap();
    cluster
        .services()
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    cluster.job_in("done", JobPhase::Completed).await;
    let services = cluster.services();
    eventually("web ready", || async {
        let status = services.get("web").await.unwrap().status?;
        (status.ready_replicas == 2).then_some(())
    })
    .await;
    // Let the last status writes land, then nothing may change.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let before = (
        versions(&cluster.jobs()).await,
        versions(&cluster.services()).await,
        versions(&cluster.tasks()).await,
        versions(&nodes).await,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = (
        versions(&cluster.jobs()).await,
        versions(&cluster.services()).await,
        versions(&cluster.tasks()).await,
        versions(&nodes).await,
    );
    assert_eq!(before, after, "settled objects were written again");
    cluster.shutdown().await;
}
