//! kube-rs, as a new user writes it, against Loom's API server over HTTPS with
//! the administrator's kubeconfig: discovery (legacy and aggregated) finding
//! Loom's kinds and the core group, lists of every listable kind, the
//! `runtime::watcher` seeing a Job created, patched and deleted in order (and
//! on streaming lists, with a reflector on them becoming ready),
//! server-side apply with field managers (conflict, force), merge patch,
//! delete, and Namespace and ServiceAccount through k8s-openapi's types.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams, ResourceExt,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::runtime::watcher;
use loom_testing::TestServer;
use serde_json::{Value, json};

/// How long one watch event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A server and a kube-rs client of it, configured from its kubeconfig file
/// as `kube::Client::try_default` would read `~/.kube/config`.
async fn setup() -> (TestServer, kube::Client) {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig().unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    (server, client)
}

/// Loom's Job kind as discovery resolves it.
async fn job_api(client: &kube::Client) -> (ApiResource, ApiCapabilities) {
    kube::discovery::pinned_kind(client, &GroupVersionKind::gvk("loom.dev", "v1", "Job"))
        .await
        .unwrap()
}

/// A Job as a user writes it.
fn job(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "loom.dev/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"suite": "kube-rs"}},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"image": "busybox", "command": ["echo", "hello"]}},
        },
    })
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn replicas(object: &DynamicObject) -> Option<i64> {
    object.data["spec"]["replicas"].as_i64()
}

fn resource_version(object: &DynamicObject) -> u64 {
    object
        .resource_version()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("no numeric resourceVersion: {object:?}"))
}

/// The HTTP status of a kube-rs error, which must be an API Status.
fn status_code(error: kube::Error) -> u16 {
    match error {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API status: {other:?}"),
    }
}

/// The next watcher event, within [`EVENT_TIMEOUT`].
async fn next<K: std::fmt::Debug>(
    events: &mut (impl Stream<Item = watcher::Result<watcher::Event<K>>> + Unpin),
) -> watcher::Event<K> {
    tokio::time::timeout(EVENT_TIMEOUT, events.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {EVENT_TIMEOUT:?}"))
        .expect("the watcher's stream ended")
        .unwrap_or_else(|e| panic!("watcher error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_loom_kinds_and_the_core_group() {
    let (_server, client) = setup().await;
    // Both ways kube-rs discovers: a request per group version, and the two
    // aggregated documents.
    let legacy = Discovery::new(client.clone()).run().await.unwrap();
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    for discovery in [&legacy, &aggregated] {
        for (group, version, kind, scope) in [
            ("loom.dev", "v1", "Task", Scope::Namespaced),
            ("loom.dev", "v1", "Job", Scope::Namespaced),
            ("loom.dev", "v1", "Node", Scope::Cluster),
            ("", "v1", "Namespace", Scope::Cluster),
            ("", "v1", "ServiceAccount", Scope::Namespaced),
        ] {
            let (resource, caps) = discovery
                .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
                .unwrap_or_else(|| panic!("{group}/{version} {kind} is not discovered"));
            assert_eq!(caps.scope, scope, "{kind}");
            for verb in [verbs::LIST, verbs::WATCH, verbs::CREATE, verbs::PATCH] {
                assert!(caps.supports_operation(verb), "{kind} {verb}");
            }
            assert_eq!(resource.kind, kind);
        }
        let (_, task) = discovery
            .resolve_gvk(&GroupVersionKind::gvk("loom.dev", "v1", "Task"))
            .unwrap();
        assert!(
            task.subresources.iter().any(|(r, _)| r.plural == "status"),
            "tasks/status: {task:?}"
        );
    }
    // The same groups and kinds both ways.
    let kinds = |discovery: &Discovery| {
        let mut kinds: Vec<(String, String)> = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .map(|(r, _)| (r.api_version, r.plural))
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(kinds(&legacy), kinds(&aggregated));
    // "kubectl get all --all-namespaces" as kube-rs's dynamic example does it:
    // every listable kind lists.
    let mut listed = 0;
    for group in legacy.groups() {
        for (resource, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let list = api
                .list(&ListParams::default())
                .await
                .unwrap_or_else(|e| panic!("list {}: {e}", resource.plural));
            assert!(
                list.metadata.resource_version.is_some(),
                "{}",
                resource.plural
            );
            listed += 1;
        }
    }
    assert!(listed >= 5, "only {listed} kinds listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_create_patch_and_delete_in_order() {
    let (_server, client) = setup().await;
    let (resource, _) = job_api(&client).await;
    let jobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    // One Job exists before the watch starts: the watcher lists it.
    jobs.create(&PostParams::default(), &dynamic(job("before", 1)))
        .await
        .unwrap();
    let mut events = watcher(
        jobs.clone(),
        watcher::Config::default().labels("suite=kube-rs"),
    )
    .boxed();
    assert!(matches!(next(&mut events).await, watcher::Event::Init));
    match next(&mut events).await {
        watcher::Event::InitApply(job) => assert_eq!(job.name_any(), "before"),
        other => panic!("expected the listed Job, got {other:?}"),
    }
    assert!(matches!(next(&mut events).await, watcher::Event::InitDone));

    let created = jobs
        .create(&PostParams::default(), &dynamic(job("watched", 1)))
        .await
        .unwrap();
    let patched = jobs
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(replicas(&patched), Some(2));
    jobs.delete("watched", &DeleteParams::default())
        .await
        .unwrap();

    let mut last = 0;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (what, job) = match next(&mut events).await {
            watcher::Event::Apply(job) => ("apply", job),
            watcher::Event::Delete(job) => ("delete", job),
            other => panic!("unexpected event after the list: {other:?}"),
        };
        assert_eq!(job.name_any(), "watched");
        let rv = resource_version(&job);
        assert!(rv > last, "resourceVersions go up: {rv} after {last}");
        last = rv;
        seen.push((what, replicas(&job)));
    }
    assert_eq!(
        seen,
        [("apply", Some(1)), ("apply", Some(2)), ("delete", Some(2))]
    );
    assert!(resource_version(&created) < last);
    assert_eq!(
        status_code(jobs.get("watched").await.unwrap_err()),
        404,
        "deleted"
    );
}

/// A `watcher` on streaming lists (`sendInitialEvents`, Kubernetes'
/// WatchList) gets every Job from its watch, `InitDone` at the
/// `k8s.io/initial-events-end` bookmark, then live events; a reflector built
/// on one becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_list_watcher_gets_init_done_then_live_events() {
    let (_server, client) = setup().await;
    let (resource, _) = job_api(&client).await;
    let jobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    for name in ["first", "second"] {
        jobs.create(&PostParams::default(), &dynamic(job(name, 1)))
            .await
            .unwrap();
    }
    let mut events = watcher(
        jobs.clone(),
        watcher::Config::default()
            .labels("suite=kube-rs")
            .streaming_lists(),
    )
    .boxed();
    assert!(matches!(next(&mut events).await, watcher::Event::Init));
    let mut listed = std::collections::BTreeSet::new();
    loop {
        match next(&mut events).await {
            watcher::Event::InitApply(job) => assert!(listed.insert(job.name_any())),
            watcher::Event::InitDone => break,
            other => panic!("unexpected event in the streaming list: {other:?}"),
        }
    }
    assert_eq!(
        listed.iter().map(String::as_str).collect::<Vec<_>>(),
        ["first", "second"]
    );
    let created = jobs
        .create(&PostParams::default(), &dynamic(job("live", 1)))
        .await
        .unwrap();
    match next(&mut events).await {
        watcher::Event::Apply(job) => {
            assert_eq!(job.name_any(), "live");
            assert_eq!(resource_version(&job), resource_version(&created));
        }
        other => panic!("expected the live Job, got {other:?}"),
    }

    let writer = kube::runtime::reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    let stream = kube::runtime::reflector(
        writer,
        watcher(jobs.clone(), watcher::Config::default().streaming_lists()),
    );
    let driver = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(EVENT_TIMEOUT, reader.wait_until_ready())
        .await
        .expect("the reflector became ready within the timeout")
        .unwrap();
    let mut names: Vec<String> = reader.state().iter().map(|j| j.name_any()).collect();
    names.sort();
    assert_eq!(names, ["first", "live", "second"]);
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_merge_patch_and_delete() {
    let (_server, client) = setup().await;
    let (resource, _) = job_api(&client).await;
    let jobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let mine = PatchParams::apply("loom-compat");

    // Apply creates, then changes what this manager owns.
    let applied = jobs
        .patch("ssa", &mine, &Patch::Apply(job("ssa", 2)))
        .await
        .unwrap();
    assert_eq!(replicas(&applied), Some(2));
    let applied = jobs
        .patch("ssa", &mine, &Patch::Apply(job("ssa", 3)))
        .await
        .unwrap();
    assert_eq!(replicas(&applied), Some(3));
    let managers: Vec<(String, String)> = applied
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(managers, [("loom-compat".to_owned(), "Apply".to_owned())]);

    // Another manager applying a field this one owns conflicts, unless forced.
    let theirs = PatchParams::apply("other");
    let conflict = jobs
        .patch("ssa", &theirs, &Patch::Apply(job("ssa", 5)))
        .await
        .unwrap_err();
    match conflict {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status.message.contains(".spec.replicas"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(replicas(&jobs.get("ssa").await.unwrap()), Some(3));
    let forced = jobs
        .patch("ssa", &theirs.clone().force(), &Patch::Apply(job("ssa", 5)))
        .await
        .unwrap();
    assert_eq!(replicas(&forced), Some(5));

    // A merge patch adds a label and keeps the rest.
    let merged = jobs
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "batch"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.labels().get("tier").map(String::as_str),
        Some("batch")
    );
    assert_eq!(
        merged.labels().get("suite").map(String::as_str),
        Some("kube-rs")
    );
    assert_eq!(replicas(&merged), Some(5));

    // Listed by a label selector, then deleted.
    let listed = jobs
        .list(&ListParams::default().labels("tier=batch"))
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|j| j.name_any())
            .collect::<Vec<_>>(),
        ["ssa"]
    );
    jobs.delete("ssa", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_code(jobs.get("ssa").await.unwrap_err()), 404);
    assert_eq!(
        status_code(
            jobs.delete("ssa", &DeleteParams::default())
                .await
                .unwrap_err()
        ),
        404
    );
    // A Job that breaks the schema is refused with a 422 naming the field.
    let mut bad = job("bad", 1);
    bad["spec"]["replicas"] = json!("many");
    match jobs.create(&PostParams::default(), &dynamic(bad)).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("replicas"), "{}", status.message);
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_kinds_through_k8s_openapi_types() {
    let (_server, client) = setup().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let created = namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some("compat".to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.name_any(), "compat");
    assert!(created.uid().is_some());
    let listed = namespaces.list(&ListParams::default()).await.unwrap();
    assert!(
        listed.items.iter().any(|n| n.name_any() == "compat"),
        "{:?}",
        listed
            .items
            .iter()
            .map(|n| n.name_any())
            .collect::<Vec<_>>()
    );

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "compat");
    let mut events = watcher(
        accounts.clone(),
        watcher::Config::default().fields("metadata.name=builder"),
    )
    .boxed();
    assert!(matches!(next(&mut events).await, watcher::Event::Init));
    assert!(matches!(next(&mut events).await, watcher::Event::InitDone));
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("builder".to_owned()),
            labels: Some([("team".to_owned(), "ci".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    match next(&mut events).await {
        watcher::Event::Apply(account) => assert_eq!(account.name_any(), "builder"),
        other => panic!("expected the account, got {other:?}"),
    }
    let got = accounts.get("builder").await.unwrap();
    assert_eq!(got.labels().get("team").map(String::as_str), Some("ci"));
    // Applying the creator's label conflicts; a label of its own does not.
    let apply = |labels: Value| {
        Patch::Apply(json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "builder", "labels": labels},
        }))
    };
    let mine = PatchParams::apply("loom-compat");
    match accounts
        .patch("builder", &mine, &apply(json!({"team": "ops"})))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409, "{status:?}");
            assert!(
                status.message.contains(".metadata.labels.team"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let patched = accounts
        .patch("builder", &mine, &apply(json!({"role": "release"})))
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("role").map(String::as_str),
        Some("release")
    );
    assert_eq!(patched.labels().get("team").map(String::as_str), Some("ci"));
    accounts
        .delete("builder", &DeleteParams::default())
        .await
        .unwrap();
    loop {
        match next(&mut events).await {
            watcher::Event::Apply(_) => continue,
            watcher::Event::Delete(account) => {
                assert_eq!(account.name_any(), "builder");
                break;
            }
            other => panic!("expected the deletion, got {other:?}"),
        }
    }
    assert_eq!(status_code(accounts.get("builder").await.unwrap_err()), 404);
    namespaces
        .delete("compat", &DeleteParams::default())
        .await
        .unwrap();
}
