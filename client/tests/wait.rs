//! `await_condition` against a real API server: met at once, met later by a write,
//! a status change or a delete, an object that appears later, a server restart in
//! the middle of a wait, a timeout, and a kind the server does not serve.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use api_types::{ResourceInfo, Task, TaskSpec};
use client::api::{Patch, PatchParams, PostParams};
use client::wait::{self, Condition as _, await_condition, conditions};
use client::{Api, DynamicObject};
use loom_testing::TestServer;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

fn task(name: &str) -> Task {
    Task::new(
        name,
        TaskSpec {
            image: "busybox".into(),
            ..TaskSpec::default()
        },
    )
}

fn labelled(key: &str, value: &str) -> impl Fn(Option<&Task>) -> bool + use<> {
    let (key, value) = (key.to_owned(), value.to_owned());
    move |task: Option<&Task>| task.is_some_and(|t| t.metadata.labels.get(&key) == Some(&value))
}

async fn setup() -> (TestServer, Api<Task>) {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = server.client();
    (server, Api::namespaced(client, "default"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_end_when_the_object_meets_the_condition() {
    let (_server, tasks) = setup().await;
    let created = tasks
        .create(&PostParams::default(), &task("a"))
        .await
        .unwrap();

    // Already met: the answer comes from the list.
    let found = await_condition(tasks.clone(), "a", |t: Option<&Task>| t.is_some(), LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.metadata.uid, created.metadata.uid);

    // Met later, by a write to the object.
    let waiting = tokio::spawn(await_condition(
        tasks.clone(),
        "a",
        labelled("stage", "two"),
        LONG,
    ));
    let patched = tasks
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"stage": "two"}}})),
        )
        .await
        .unwrap();
    let seen = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(seen.metadata.labels["stage"], "two");
    assert_eq!(
        seen.metadata.resource_version,
        patched.metadata.resource_version
    );

    // Met by a status change, with a helper condition.
    let waiting = tokio::spawn(await_condition(
        tasks.clone(),
        "a",
        conditions::has_phase("Running"),
        LONG,
    ));
    tasks
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    let running = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(running.status.unwrap().phase.as_str(), "Running");

    // Met by its deletion: the wait returns no object.
    let waiting = tokio::spawn(await_condition(
        tasks.clone(),
        "a",
        conditions::is_deleted(&created.metadata.uid),
        LONG,
    ));
    tasks.delete("a", &Default::default()).await.unwrap();
    assert!(waiting.await.unwrap().unwrap().is_none());

    // An object that does not exist yet.
    let waiting = tokio::spawn(await_condition(
        tasks.clone(),
        "later",
        conditions::is_absent().not(),
        LONG,
    ));
    tasks
        .create(&PostParams::default(), &task("later"))
        .await
        .unwrap();
    let later = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(later.metadata.name, "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_outlives_a_server_restart() {
    let (mut server, tasks) = setup().await;
    tasks
        .create(&PostParams::default(), &task("a"))
        .await
        .unwrap();
    let waiting = tokio::spawn(await_condition(
        tasks.clone(),
        "a",
        labelled("after", "restart"),
        LONG,
    ));
    // The restart cuts the wait's watch whether or not it has started yet; either
    // way the wait must resume and see the write made after it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.restart(apiserver::Config::default()).await.unwrap();
    tasks
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"after": "restart"}}})),
        )
        .await
        .unwrap();
    let seen = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(seen.metadata.labels["after"], "restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_times_out_or_fails_with_a_typed_error() {
    let (_server, tasks) = setup().await;
    tasks
        .create(&PostParams::default(), &task("a"))
        .await
        .unwrap();
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let error = await_condition(
        tasks.clone(),
        "a",
        conditions::has_phase("Completed"),
        timeout,
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() >= timeout);
    assert!(started.elapsed() < LONG, "{:?}", started.elapsed());
    match &error {
        wait::Error::TimedOut {
            resource,
            name,
            timeout: waited,
        } => assert_eq!(
            (resource.as_str(), name.as_str(), *waited),
            ("tasks", "a", timeout)
        ),
        other => panic!("not a timeout: {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "timed out after 400ms waiting for tasks \"a\""
    );

    // A kind the server does not serve is an error at once, not a wait.
    let widgets = ResourceInfo {
        group: "example.com".into(),
        version: "v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
        singular: "widget".into(),
        short_names: Vec::new(),
        list_kind: "WidgetList".into(),
        namespaced: true,
        has_status: false,
    };
    let api: Api<DynamicObject> = Api::namespaced_with(tasks.client().clone(), "default", &widgets);
    let started = Instant::now();
    let error = await_condition(api, "w", conditions::is_absent().not(), LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, wait::Error::Watch { source, .. } if source.is_not_found()),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
