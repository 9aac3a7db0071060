//! The client library against a real API server: the watcher through restarts and
//! compaction, controllers under bursts of updates, and leader-elected replicas.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api_types::{Job, JobSpec, Lease, Task, TaskSpec};
use apiserver::Config as ServerConfig;
use apiserver::catalog::CacheConfig;
use client::api::{ListParams, Patch, PatchParams, PostParams};
use client::controller::{self, Action, Controller};
use client::leader::{ApiLease, ElectionConfig, LeaderElector};
use client::reflector::{Informer, Store};
use client::{Api, Object, watcher};
use loom_testing::TestServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn server_config() -> ServerConfig {
    ServerConfig {
        cache: CacheConfig {
            capacity: 256,
            bookmark_interval: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

fn fast_watcher() -> watcher::Config {
    watcher::Config {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        ..Default::default()
    }
}

fn task(name: &str) -> Task {
    let spec = TaskSpec {
        image: "busybox".into(),
        ..Default::default()
    };
    Task::new(name, spec)
}

fn job(name: &str) -> Job {
    let mut job = Job::new(name, JobSpec::default());
    job.spec.template.spec.image = "busybox".into();
    job
}

/// Polls `check` until it holds, or fails after 20 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cache holds exactly what a fresh list says: every name at its resourceVersion.
async fn matches_a_fresh_list<K: Object>(api: &Api<K>, store: &Store<K>) -> bool {
    let Ok((items, _)) = api.list_all(&ListParams::default()).await else {
        return false;
    };
    let fresh: BTreeMap<String, String> = items
        .iter()
        .map(|o| (o.meta().name.clone(), o.meta().resource_version.clone()))
        .collect();
    let cached: BTreeMap<String, String> = store
        .list()
        .iter()
        .map(|o| (o.meta().name.clone(), o.meta().resource_version.clone()))
        .collect();
    fresh == cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watcher_survives_restarts_and_compaction_without_missing_an_event() {
    let mut server = TestServer::embedded(server_config()).await.unwrap();
    let client = server.client();
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        tasks
            .create(&PostParams::default(), &task(&format!("t{i}")))
            .await
            .unwrap();
    }
    let informer = Informer::start(tasks.clone(), fast_watcher());
    let store = informer.store();
    store.wait_ready().await;
    assert_eq!(store.len(), 20);

    // Restart the API server, change things, compact the history the watcher's
    // last resourceVersion pointed into, restart again: it must relist.
    server.restart(server_config()).await.unwrap();
    for i in 0..5 {
        tasks
            .delete(&format!("t{i}"), &Default::default())
            .await
            .unwrap();
    }
    for i in 20..30 {
        tasks
            .create(&PostParams::default(), &task(&format!("t{i}")))
            .await
            .unwrap();
    }
    let head = server.store.current_revision().await.unwrap();
    server.store.compact(head).await.unwrap();
    server.restart(server_config()).await.unwrap();
    let patch = Patch::Merge(json!({"metadata": {"labels": {"phase": "late"}}}));
    tasks
        .patch("t10", &PatchParams::default(), &patch)
        .await
        .unwrap();
    eventually("the cache to match a fresh list", async || {
        matches_a_fresh_list(&tasks, &store).await
    })
    .await;
    assert_eq!(store.len(), 25);
    informer.stop();
}

/// kube-rs issue 1615: a watcher of a quiet kind stopped for good on 410 Gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_kind_keeps_being_watched_across_410() {
    let mut server = TestServer::embedded(server_config()).await.unwrap();
    let client = server.client();
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let informer = Informer::start(tasks.clone(), fast_watcher());
    let store = informer.store();
    store.wait_ready().await;
    // Only other kinds change, the history is compacted, the server restarts.
    for i in 0..50 {
        jobs.create(&PostParams::default(), &job(&format!("j{i}")))
            .await
            .unwrap();
    }
    let head = server.store.current_revision().await.unwrap();
    server.store.compact(head).await.unwrap();
    server.restart(server_config()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tasks
        .create(&PostParams::default(), &task("finally"))
        .await
        .unwrap();
    eventually("the quiet kind's first task", async || store.len() == 1).await;
    informer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_rapid_updates_are_few_reconciles_that_see_the_last_state() {
    let server = TestServer::embedded(server_config()).await.unwrap();
    let client = server.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(&PostParams::default(), &job("busy"))
        .await
        .unwrap();
    let informer = Informer::start(jobs.clone(), fast_watcher());
    struct Seen {
        reconciles: AtomicUsize,
        last_replicas: AtomicI64,
        running: AtomicUsize,
        overlap: AtomicUsize,
    }
    let seen = Arc::new(Seen {
        reconciles: AtomicUsize::new(0),
        last_replicas: AtomicI64::new(-1),
        running: AtomicUsize::new(0),
        overlap: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let controller = Controller::new(&informer, controller::Config::default());
    let run = tokio::spawn(controller.run(
        |job: Arc<Job>, seen: Arc<Seen>| async move {
            if seen.running.fetch_add(1, Ordering::SeqCst) > 0 {
                seen.overlap.fetch_add(1, Ordering::SeqCst);
            }
            seen.reconciles.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen.last_replicas
                .store(i64::from(job.spec.replicas.unwrap_or(0)), Ordering::SeqCst);
            seen.running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(Action::await_change())
        },
        |_, _, _| Action::requeue(Duration::from_secs(1)),
        seen.clone(),
        stop.clone(),
    ));
    for i in 1..=1000 {
        let patch = Patch::Merge(json!({"spec": {"replicas": i}}));
        jobs.patch("busy", &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    eventually("the last state to be reconciled", async || {
        seen.last_replicas.load(Ordering::SeqCst) == 1000
    })
    .await;
    let reconciles = seen.reconciles.load(Ordering::SeqCst);
    assert!(
        reconciles < 300,
        "{reconciles} reconciles for 1,000 updates"
    );
    assert_eq!(
        seen.overlap.load(Ordering::SeqCst),
        0,
        "one object never reconciled twice at once"
    );
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_with_leader_election_never_both_reconcile() {
    let server = TestServer::embedded(server_config()).await.unwrap();
    let client = server.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        jobs.create(&PostParams::default(), &job(&format!("j{i}")))
            .await
            .unwrap();
    }
    // Reconciles running in each replica: both non-zero at once is the failure.
    let active: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let overlap = Arc::new(AtomicUsize::new(0));
    let reconciled_by: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let election = ElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    };
    let replica = |name: &'static str, me: usize, stop: CancellationToken| {
        let client = client.clone();
        let jobs = jobs.clone();
        let active = active.clone();
        let overlap = overlap.clone();
        let reconciled_by = reconciled_by.clone();
        let election = election.clone();
        tokio::spawn(async move {
            let leases: Api<Lease> = Api::namespaced(client, api_types::SYSTEM_NAMESPACE);
            let elector = LeaderElector::new(
                ApiLease::new(leases, "test-controller"),
                api_types::SYSTEM_NAMESPACE,
                "test-controller",
                name,
                election,
            );
            let (mut leadership, elector_task) = elector.run(stop.clone());
            let informer = Informer::start(jobs, fast_watcher());
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = leadership.acquired() => {}
                }
                // Lead until leadership is lost or the replica stops.
                let lead = stop.child_token();
                let controller = Controller::new(&informer, controller::Config::default());
                let (active, overlap, reconciled_by) =
                    (active.clone(), overlap.clone(), reconciled_by.clone());
                let run = tokio::spawn(controller.run(
                    move |_job: Arc<Job>, _: Arc<()>| {
                        let (active, overlap, reconciled_by) =
                            (active.clone(), overlap.clone(), reconciled_by.clone());
                        async move {
                            active[me].fetch_add(1, Ordering::SeqCst);
                            if active[1 - me].load(Ordering::SeqCst) > 0 {
                                overlap.fetch_add(1, Ordering::SeqCst);
                            }
                            reconciled_by.lock().unwrap().push(name.to_owned());
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            active[me].fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(Action::requeue(
                                Duration::from_millis(50),
                            ))
                        }
                    },
                    |_, _, _| Action::await_change(),
                    Arc::new(()),
                    lead.clone(),
                ));
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = leadership.lost() => {}
                }
                lead.cancel();
                run.await.unwrap();
                if stop.is_cancelled() {
                    break;
                }
            }
            informer.stop();
            elector_task.await.unwrap();
        })
    };
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = replica("a", 0, stop_a.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = replica("b", 1, stop_b.clone());
    eventually("a to reconcile", async || {
        reconciled_by.lock().unwrap().iter().any(|n| n == "a")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        reconciled_by.lock().unwrap().iter().all(|n| n == "a"),
        "only the leader reconciles"
    );
    // a stops (releasing its lease): b takes over.
    stop_a.cancel();
    a.await.unwrap();
    eventually("b to take over", async || {
        reconciled_by.lock().unwrap().iter().any(|n| n == "b")
    })
    .await;
    stop_b.cancel();
    b.await.unwrap();
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "two replicas reconciled at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_kinds_through_discovery_and_dynamic_objects() {
    use client::DynamicObject;
    let server = TestServer::embedded(server_config()).await.unwrap();
    let client = server.client();
    let definitions: Api<api_types::ResourceDefinition> = Api::all(client.clone());
    let definition: api_types::ResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "ResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                 "scope": "Namespaced",
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
    }))
    .unwrap();
    definitions
        .create(&PostParams::default(), &definition)
        .await
        .unwrap();
    let resource = client::discover(&client, "example.com", "v1", "wd")
        .await
        .unwrap();
    assert_eq!(
        (resource.kind.as_str(), resource.plural.as_str()),
        ("Widget", "widgets")
    );
    assert!(resource.namespaced && resource.has_status);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}
    }))
    .unwrap();
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap();
    let patch = Patch::Merge(json!({"spec": {"size": 4}}));
    let patched = widgets
        .patch("w", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["size"], 4);
    let bad = Patch::Merge(json!({"spec": {"size": "big"}}));
    let error = widgets
        .patch("w", &PatchParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(422), "{error}");
    // The informer and the store work on dynamic objects too.
    let informer = Informer::start(widgets.clone(), fast_watcher());
    informer.store().wait_ready().await;
    assert_eq!(informer.store().len(), 1);
    informer.stop();
    assert!(
        client::discover(&client, "example.com", "v1", "gadgets")
            .await
            .unwrap_err()
            .is_not_found()
    );
}
