//! Node IPAM against the real API server: registered nodes get distinct task
//! subnets (the lowest free, skipping one a node already holds), a node beyond a
//! full range gets a CIDRNotAvailable Event until a deleted node frees a subnet,
//! and a node's taskCIDR cannot be changed or set to a bad value.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use api_types::{Event, Node};
use client::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use controllers::node_ipam::{ClusterCidr, REASON_CIDR_NOT_AVAILABLE};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::json;

/// A range of four /28s, used by nothing else in the tests.
const RANGE: &str = "10.240.7.0/26";

fn cidr_of(node: &Node) -> Option<String> {
    (!node.spec.task_cidr.is_empty()).then(|| node.spec.task_cidr.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_subnets_until_the_range_is_full() {
    // Three nodes registered while no cluster CIDR is set, and one whose operator
    // set its subnet by hand: the second of the range.
    let mut cluster = Cluster::start(&["n1", "n2", "n3"], test_config()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let manual: Node = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Node",
        "metadata": {"name": "manual"},
        "spec": {"taskCIDR": "10.240.7.16/28"},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &manual).await.unwrap();
    assert!(
        nodes
            .list_all(&ListParams::default())
            .await
            .unwrap()
            .0
            .iter()
            .all(|n| n.metadata.name == "manual" || n.spec.task_cidr.is_empty()),
        "without a cluster CIDR no node is given a subnet"
    );

    // The controllers now run with the range: the three get the three others.
    cluster.kill_manager().await;
    cluster.start_manager(controllers::Config {
        cluster_cidr: Some(ClusterCidr::new(RANGE, 28).unwrap()),
        ..test_config()
    });
    let assigned = eventually("n1, n2 and n3 given subnets", || async {
        let mut found = Vec::new();
        for name in ["n1", "n2", "n3"] {
            found.push(cidr_of(&nodes.get(name).await.unwrap())?);
        }
        Some(found)
    })
    .await;
    let distinct: BTreeSet<&str> = assigned.iter().map(String::as_str).collect();
    assert_eq!(
        distinct,
        BTreeSet::from(["10.240.7.0/28", "10.240.7.32/28", "10.240.7.48/28"]),
        "{assigned:?}"
    );
    assert_eq!(
        nodes.get("manual").await.unwrap().spec.task_cidr,
        "10.240.7.16/28"
    );

    // A fifth node finds the range full: a Warning Event names the range.
    cluster.add_node("n4").await;
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let event = eventually("a CIDRNotAvailable event on n4", || async {
        let (all, _) = events.list_all(&ListParams::default()).await.unwrap();
        all.into_iter().find(|e| {
            e.involved_object.kind == "Node"
                && e.involved_object.name == "n4"
                && e.reason == REASON_CIDR_NOT_AVAILABLE
        })
    })
    .await;
    assert_eq!(event.type_, Some(api_types::event::EventType::Warning));
    assert!(
        event.message.contains(RANGE) && event.message.contains("/28"),
        "{}",
        event.message
    );
    assert!(nodes.get("n4").await.unwrap().spec.task_cidr.is_empty());

    // A node's subnet cannot move, nor go, nor be set to a bad value.
    let n1 = nodes.get("n1").await.unwrap();
    let held = n1.spec.task_cidr.clone();
    for value in [json!("10.240.7.16/28"), json!(null)] {
        let error = nodes
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taskCIDR": value}})),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(422), "{value}: {error}");
        assert!(
            error.to_string().contains("spec.taskCIDR"),
            "{value}: {error}"
        );
    }
    let mut replaced = n1.clone();
    // (manual's: never n1's own, whichever n1 got.)
    replaced.spec.task_cidr = "10.240.7.16/28".into();
    let error = nodes
        .replace("n1", &PostParams::default(), &replaced)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(422), "{error}");
    assert_eq!(nodes.get("n1").await.unwrap().spec.task_cidr, held);
    for bad in ["10.240.7.1/28", "garbage", "fd00::/64", "0.0.0.0/0"] {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "loom.dev/v1", "kind": "Node",
            "metadata": {"name": "bad"},
            "spec": {"taskCIDR": bad},
        }))
        .unwrap();
        let error = nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(422), "{bad}: {error}");
        assert!(
            error.to_string().contains("spec.taskCIDR"),
            "{bad}: {error}"
        );
    }

    // A deleted node's subnet is free again, and the waiting node gets it at once
    // (well before its next retry, 30 s later).
    let freed = nodes.get("n2").await.unwrap().spec.task_cidr;
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    eventually("n4 given n2's subnet", || async {
        let node = nodes.get("n4").await.unwrap();
        (node.spec.task_cidr == freed).then_some(())
    })
    .await;
    cluster.shutdown().await;
}
