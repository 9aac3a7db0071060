//! The endpoints controller against the real API server, as the controllers'
//! own user (its RBAC role): task statuses are written directly through the
//! API (phase, taskIP, the Ready condition), as a nodelet would.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use api_types::well_known::LABEL_SERVICE;
use api_types::{Endpoints, Service, Task};
use client::{Api, DeleteParams, Patch, PatchParams, PostParams};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::{Value, json};

/// A cluster with nodes n1 and n2 that no test nodelet plays: the tests write
/// task statuses themselves.
async fn cluster() -> Cluster {
    let config = controllers::Config {
        node_grace: Duration::from_secs(3600),
        lost_grace: Duration::from_secs(3600),
        ..test_config()
    };
    let cluster = Cluster::start(&[], config).await;
    for node in ["n1", "n2"] {
        cluster.add_node(node).await;
    }
    cluster.alive.lock().unwrap().clear();
    cluster
}

fn endpoints_api(cluster: &Cluster) -> Api<Endpoints> {
    Api::namespaced(cluster.client.clone(), "default")
}

async fn create_service(cluster: &Cluster, name: &str) -> Service {
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 0,
            "template": {"spec": {"image": "web", "ports": [{"name": "http", "containerPort": 8080}]}},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9090, "targetPort": 9100},
            ],
        },
    }))
    .unwrap();
    cluster
        .services()
        .create(&PostParams::default(), &service)
        .await
        .unwrap()
}

async fn create_task(cluster: &Cluster, name: &str, service: &str, node: &str, http: i32) {
    let task: Task = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Task",
        "metadata": {"name": name, "namespace": "default", "labels": {LABEL_SERVICE: service}},
        "spec": {"image": "web", "nodeName": node,
                 "ports": [{"name": "http", "containerPort": http}]},
    }))
    .unwrap();
    cluster
        .tasks()
        .create(&PostParams::default(), &task)
        .await
        .unwrap();
}

/// Writes a task's status as a nodelet would.
async fn set_status(cluster: &Cluster, name: &str, phase: &str, ip: &str, ready: bool) {
    let status = json!({"status": {
        "phase": phase, "taskIP": ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }});
    cluster
        .tasks()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// The endpoints as `(ports, ready IPs, not-ready IPs)` per subset.
type Shape = Vec<(Vec<(String, i32)>, Vec<String>, Vec<String>)>;

fn shape(endpoints: &Endpoints) -> Shape {
    endpoints
        .subsets
        .iter()
        .map(|s| {
            (
                s.ports.iter().map(|p| (p.name.clone(), p.port)).collect(),
                s.addresses.iter().map(|a| a.ip.clone()).collect(),
                s.not_ready_addresses.iter().map(|a| a.ip.clone()).collect(),
            )
        })
        .collect()
}

fn ports(http: i32) -> Vec<(String, i32)> {
    vec![("http".to_owned(), http), ("metrics".to_owned(), 9100)]
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the Endpoints `name` has `wanted`'s shape, and returns it.
async fn endpoints_become(cluster: &Cluster, name: &str, wanted: Shape) -> Endpoints {
    let api = endpoints_api(cluster);
    eventually(&format!("endpoints {name} become {wanted:?}"), || async {
        let endpoints = api.get_opt(name).await.unwrap()?;
        (shape(&endpoints) == wanted).then_some(endpoints)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_running_tasks_ready_or_not() {
    let cluster = cluster().await;
    let service = create_service(&cluster, "web").await;
    let empty = endpoints_become(&cluster, "web", Vec::new()).await;
    let owner = &empty.metadata.owner_references;
    assert_eq!(owner.len(), 1, "{owner:?}");
    assert_eq!(owner[0].kind, "Service");
    assert_eq!(owner[0].uid, service.metadata.uid);
    assert_eq!(owner[0].controller, Some(true));

    create_task(&cluster, "a", "web", "n1", 8080).await;
    create_task(&cluster, "b", "web", "n2", 8080).await;
    create_task(&cluster, "c", "web", "n1", 8080).await;
    create_task(&cluster, "other", "api", "n1", 8080).await;
    set_status(&cluster, "a", "Running", "10.77.1.5", true).await;
    set_status(&cluster, "b", "Running", "10.77.2.5", false).await;
    // Running without an address yet, and another Service's task: not listed.
    set_status(&cluster, "c", "Running", "", true).await;
    set_status(&cluster, "other", "Running", "10.77.1.9", true).await;
    let endpoints = endpoints_become(
        &cluster,
        "web",
        vec![(
            ports(8080),
            strings(&["10.77.1.5"]),
            strings(&["10.77.2.5"]),
        )],
    )
    .await;
    let a = &endpoints.subsets[0].addresses[0];
    assert_eq!(a.node_name, "n1");
    let target = a.target_ref.as_ref().unwrap();
    assert_eq!((target.kind.as_str(), target.name.as_str()), ("Task", "a"));
    let task_a = cluster.tasks().get("a").await.unwrap();
    assert_eq!(target.uid, task_a.metadata.uid);

    // Ready now; c gets its address.
    set_status(&cluster, "b", "Running", "10.77.2.5", true).await;
    set_status(&cluster, "c", "Running", "10.77.1.6", false).await;
    let settled = endpoints_become(
        &cluster,
        "web",
        vec![(
            ports(8080),
            strings(&["10.77.1.5", "10.77.2.5"]),
            strings(&["10.77.1.6"]),
        )],
    )
    .await;

    // A change that does not concern the endpoints writes nothing; the next
    // that does writes once.
    cluster
        .tasks()
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"note": "x"}}})),
        )
        .await
        .unwrap();
    set_status(&cluster, "c", "Running", "10.77.1.6", true).await;
    let after = endpoints_become(
        &cluster,
        "web",
        vec![(
            ports(8080),
            strings(&["10.77.1.5", "10.77.1.6", "10.77.2.5"]),
            Vec::new(),
        )],
    )
    .await;
    assert_eq!(
        after.metadata.generation,
        settled.metadata.generation + 1,
        "one write for one change"
    );

    // A task that gives the named port another number is its own subset.
    create_task(&cluster, "d", "web", "n2", 8081).await;
    set_status(&cluster, "d", "Running", "10.77.2.6", true).await;
    endpoints_become(
        &cluster,
        "web",
        vec![
            (
                ports(8080),
                strings(&["10.77.1.5", "10.77.1.6", "10.77.2.5"]),
                Vec::new(),
            ),
            (ports(8081), strings(&["10.77.2.6"]), Vec::new()),
        ],
    )
    .await;

    // Finished: out. Being deleted (held by a finalizer, still running): out at once.
    set_status(&cluster, "d", "Completed", "10.77.2.6", false).await;
    cluster
        .tasks()
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test.loom.dev/hold"]}})),
        )
        .await
        .unwrap();
    cluster
        .tasks()
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let held = cluster.tasks().get("a").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.phase(), api_types::TaskPhase::Running);
    endpoints_become(
        &cluster,
        "web",
        vec![(
            ports(8080),
            strings(&["10.77.1.6", "10.77.2.5"]),
            Vec::new(),
        )],
    )
    .await;
    cluster
        .tasks()
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_restored_and_go_with_their_service() {
    let cluster = cluster().await;
    create_service(&cluster, "web").await;
    create_task(&cluster, "a", "web", "n1", 8080).await;
    set_status(&cluster, "a", "Running", "10.77.1.5", true).await;
    let wanted = vec![(ports(8080), strings(&["10.77.1.5"]), Vec::new())];
    let endpoints = endpoints_become(&cluster, "web", wanted.clone()).await;

    // Someone else's edit is put right.
    let api = endpoints_api(&cluster);
    let mut tampered: Value = serde_json::to_value(&endpoints).unwrap();
    tampered["subsets"] = json!([{"addresses": [{"ip": "10.66.6.6"}], "ports": [{"port": 1}]}]);
    api.replace(
        "web",
        &PostParams::default(),
        &serde_json::from_value(tampered).unwrap(),
    )
    .await
    .unwrap();
    endpoints_become(&cluster, "web", wanted.clone()).await;
    // Deleted: made again.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    endpoints_become(&cluster, "web", wanted.clone()).await;

    // The Service deleted: its Endpoints go.
    cluster
        .services()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the endpoints of a deleted service go", || async {
        api.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    // A new Service of that name gets its own.
    let again = create_service(&cluster, "web").await;
    let endpoints = endpoints_become(&cluster, "web", wanted).await;
    assert_eq!(
        endpoints.metadata.owner_references[0].uid,
        again.metadata.uid
    );
    cluster.shutdown().await;
}
