//! Streaming lists (Kubernetes' WatchList: a watch with `sendInitialEvents`)
//! against a real server over each store backend: every object as ADDED, one
//! BOOKMARK annotated `k8s.io/initial-events-end` at the snapshot's revision,
//! then the changes after it with no gap and no duplicate; bad parameter
//! combinations refused as Kubernetes refuses them; authorization unchanged.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use apiserver::{Config, catalog::CacheConfig};
use loom_testing::TestServer;
use loom_testing::http::{JsonClient, WatchReader};
use serde_json::{Value, json};

const TASKS: &str = "/apis/loom.dev/v1/namespaces/default/tasks";
const STREAM: &str =
    "watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan";

fn task(name: &str) -> Value {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Task",
        "metadata": {"name": name},
        "spec": {"image": "busybox", "command": ["true"]}
    })
}

fn rv(object: &Value) -> i64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn config() -> Config {
    Config {
        cache: CacheConfig {
            capacity: 64,
            bookmark_interval: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

/// Reads the initial events up to the end bookmark: the objects by name with
/// their resourceVersions, and the bookmark's resourceVersion.
async fn initial_events(watch: &mut WatchReader) -> (BTreeMap<String, i64>, i64) {
    let mut objects = BTreeMap::new();
    loop {
        let event = watch
            .next()
            .await
            .expect("the watch ended before its end bookmark");
        match event["type"].as_str() {
            Some("ADDED") => {
                let name = event["object"]["metadata"]["name"].as_str().unwrap();
                let previous = objects.insert(name.to_owned(), rv(&event["object"]));
                assert!(previous.is_none(), "{name} sent twice: {event}");
            }
            Some("BOOKMARK") => {
                let annotations = &event["object"]["metadata"]["annotations"];
                if annotations["k8s.io/initial-events-end"] == "true" {
                    assert_eq!(event["object"]["kind"], "Task", "{event}");
                    assert_eq!(event["object"]["apiVersion"], "loom.dev/v1", "{event}");
                    return (objects, rv(&event["object"]));
                }
                // A periodic bookmark may come first only if it carries no news.
            }
            _ => panic!("unexpected event among the initial events: {event}"),
        }
    }
}

mod cases {
    use super::*;

    pub async fn objects_then_the_end_bookmark_then_changes(server: TestServer) {
        let c = JsonClient::new(&server);
        let mut last = 0;
        for name in ["a", "b", "c"] {
            let (code, created) = c.post(TASKS, &task(name)).await;
            assert_eq!(code, 201, "{created}");
            last = rv(&created);
        }
        // Without a resourceVersion the snapshot is at least as new as the last
        // write (a consistent read); with `0` it is whatever the cache holds.
        for (i, from) in ["", "&resourceVersion=0", "&resourceVersion=1"]
            .iter()
            .enumerate()
        {
            let mut watch = c.watch(&format!("{TASKS}?{STREAM}{from}")).await;
            let (objects, end) = initial_events(&mut watch).await;
            if from.is_empty() {
                assert!(
                    end >= last,
                    "end bookmark {end} older than the last write {last}"
                );
                assert_eq!(
                    objects.keys().map(String::as_str).collect::<Vec<_>>(),
                    ["a", "b", "c"]
                );
            }
            assert!(
                objects.values().all(|at| *at <= end),
                "{objects:?} after {end}"
            );
            let name = format!("live{i}");
            let (_, created) = c.post(TASKS, &task(&name)).await;
            let event = watch.next_change().await;
            assert_eq!(event["type"], "ADDED", "{event}");
            assert_eq!(event["object"]["metadata"]["name"], name.as_str());
            assert!(rv(&event["object"]) > end);
            assert_eq!(rv(&event["object"]), rv(&created));
        }
    }

    /// Writers keep creating while streaming lists start: each list holds every
    /// object exactly once, the ones at or before its end bookmark in the
    /// initial events and every later one as a live event.
    pub async fn no_gap_and_no_duplicate_under_concurrent_writes(server: TestServer) {
        const WRITERS: usize = 4;
        const EACH: usize = 30;
        let c = JsonClient::new(&server);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let c = c.clone();
            writers.push(tokio::spawn(async move {
                let mut written = BTreeMap::new();
                for i in 0..EACH {
                    let name = format!("w{w}-{i}");
                    let (code, created) = c.post(TASKS, &task(&name)).await;
                    assert_eq!(code, 201, "{created}");
                    written.insert(name, rv(&created));
                }
                written
            }));
        }
        let mut watches = Vec::new();
        for from in ["", "&resourceVersion=0", "", "&resourceVersion=0"] {
            watches.push(c.watch(&format!("{TASKS}?{STREAM}{from}")).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut written = BTreeMap::new();
        for writer in writers {
            written.extend(writer.await.unwrap());
        }
        for mut watch in watches {
            let (mut seen, end) = initial_events(&mut watch).await;
            for (name, at) in &seen {
                assert_eq!(written.get(name), Some(at), "{name} in the initial events");
            }
            while seen.len() < written.len() {
                let event = watch.next_change().await;
                assert_eq!(event["type"], "ADDED", "{event}");
                let name = event["object"]["metadata"]["name"].as_str().unwrap();
                let at = rv(&event["object"]);
                assert!(
                    at > end,
                    "{name} at {at} is not after the end bookmark {end}"
                );
                assert_eq!(written.get(name), Some(&at), "{event}");
                assert!(seen.insert(name.to_owned(), at).is_none(), "{name} twice");
            }
            assert_eq!(seen, written);
        }
    }

    /// `sendInitialEvents=false`: no initial events, the changes from now.
    pub async fn without_initial_events_only_changes(server: TestServer) {
        let c = JsonClient::new(&server);
        c.post(TASKS, &task("before")).await;
        let mut watch = c
            .watch(&format!(
                "{TASKS}?watch=true&sendInitialEvents=false&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
            ))
            .await;
        c.post(TASKS, &task("after")).await;
        let event = watch.next_change().await;
        assert_eq!(event["type"], "ADDED", "{event}");
        assert_eq!(event["object"]["metadata"]["name"], "after");
    }
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;
            suite!(@case $backend, objects_then_the_end_bookmark_then_changes);
            suite!(@case $backend, no_gap_and_no_duplicate_under_concurrent_writes);
            suite!(@case $backend, without_initial_events_only_changes);
        }
    };
    (@case $backend:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let server = TestServer::$backend(config()).await.unwrap();
            cases::$case(server).await;
        }
    };
}

suite!(embedded);
suite!(etcd);

/// Parameters that do not go together are refused before any event, with the
/// Status Kubernetes sends: 422 `ListOptions.meta.k8s.io "" is invalid`
/// naming the parameter, or 400 for a value that is not a boolean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_combinations_are_refused_naming_the_parameter() {
    let server = TestServer::embedded(config()).await.unwrap();
    let c = JsonClient::new(&server);
    c.post(TASKS, &task("secret-ish")).await;
    let cases: &[(&str, &[&str])] = &[
        (
            "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
            &["allowWatchBookmarks"],
        ),
        (
            "watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
            &["resourceVersionMatch"],
        ),
        (
            "watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=Exact",
            &["resourceVersionMatch", "resourceVersionMatch"],
        ),
        (
            "watch=true&sendInitialEvents=true",
            &["resourceVersionMatch", "allowWatchBookmarks"],
        ),
        (
            "watch=true&resourceVersionMatch=NotOlderThan",
            &["resourceVersionMatch"],
        ),
        ("sendInitialEvents=true", &["sendInitialEvents"]),
    ];
    for (query, fields) in cases {
        let (code, body) = c.get(&format!("{TASKS}?{query}")).await;
        assert_eq!(code, 422, "{query}: {body}");
        assert_eq!(body["kind"], "Status", "{body}");
        assert_eq!(body["reason"], "Invalid", "{body}");
        assert_eq!(body["details"]["kind"], "ListOptions", "{body}");
        assert_eq!(body["details"]["group"], "meta.k8s.io", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("ListOptions.meta.k8s.io \"\" is invalid: "),
            "{body}"
        );
        let named: Vec<&str> = body["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|cause| cause["field"].as_str().unwrap())
            .collect();
        assert_eq!(&named, fields, "{query}: {body}");
    }
    let (code, body) = c
        .get(&format!(
            "{TASKS}?watch=true&sendInitialEvents=maybe&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
        ))
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("sendInitialEvents"),
        "{body}"
    );
}

/// A user who may not watch tasks gets 403 for a streaming list and no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_streaming_list_sends_nothing() {
    let server = TestServer::embedded(config()).await.unwrap();
    let admin = JsonClient::new(&server);
    admin.post(TASKS, &task("private")).await;
    let stranger = JsonClient {
        http: server.http_as("stranger", None),
        base: server.url.clone(),
    };
    let (code, body) = stranger.get(&format!("{TASKS}?{STREAM}")).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden", "{body}");
    assert!(!body.to_string().contains("private"), "{body}");
}
