//! Backup and restore through the real HTTPS server: `GET /snapshot` taken
//! while clients write, restored into a new store that serves every
//! acknowledged object at its resourceVersion, a watch from the lost history
//! answered 410 Gone; etcd's snapshot through the same endpoint; and who may
//! take one (a cluster administrator: others 403, no credential 401, audited).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apiserver::snapshot::{KIND_HEADER, REVISION_HEADER, SNAPSHOT_PATH};
use apiserver::store::embedded::{self, DEFAULT_RESTORE_BUMP};
use apiserver::store::snapshot::{SnapshotKind, check_etcd_snapshot, kind_of};
use apiserver::store::{EmbeddedOptions, EmbeddedStore};
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use serde_json::{Value, json};

const TASKS: &str = "/apis/loom.dev/v1/namespaces/default/tasks";

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

/// The snapshot as the administrator gets it: its kind, revision and bytes.
async fn take(server: &TestServer) -> (String, i64, Vec<u8>) {
    let response = server
        .http()
        .get(format!("{}{SNAPSHOT_PATH}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let kind = response.headers()[KIND_HEADER].to_str().unwrap().to_owned();
    let revision: i64 = response.headers()[REVISION_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap().to_vec();
    assert_eq!(bytes.len(), length);
    (kind, revision, bytes)
}

/// Tasks named `w{writer}-{n}` with their resourceVersions, as listed.
async fn listed(client: &JsonClient) -> BTreeMap<String, i64> {
    let (code, list) = client.get(TASKS).await;
    assert_eq!(code, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["metadata"]["name"].as_str().unwrap().starts_with('w'))
        .map(|t| (t["metadata"]["name"].as_str().unwrap().to_owned(), rv(t)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_while_writing_restores_every_acknowledged_object() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = JsonClient::new(&server);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let name = format!("w{w}-{n}");
                let (code, created) = client.post(TASKS, &task(&name)).await;
                assert_eq!(code, 201, "{created}");
                acked.push((name, rv(&created), Instant::now()));
                n += 1;
            }
            acked
        }));
    }
    // Some writes before, many during and after the snapshot.
    let client = JsonClient::new(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed(&client).await.len() < 40 {
        assert!(Instant::now() < deadline, "the writers are stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    let (kind, taken_at, bytes) = take(&server).await;
    let answered = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert_eq!(kind, "embedded");
    let after: Vec<_> = acked.iter().filter(|(_, rv, _)| *rv > taken_at).collect();
    assert!(
        !after.is_empty() && acked.iter().any(|(_, rv, _)| *rv <= taken_at),
        "writes went on on both sides of the snapshot"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.snapshot");
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(kind_of(&file).unwrap(), SnapshotKind::Embedded);
    let info = embedded::inspect(&file).unwrap();
    assert_eq!(info.revision, taken_at);
    let store_path = dir.path().join("data/loom.db");
    let restored = embedded::restore(&file, &store_path, DEFAULT_RESTORE_BUMP).unwrap();
    assert_eq!(restored.start, taken_at + DEFAULT_RESTORE_BUMP);
    let store = EmbeddedStore::open(EmbeddedOptions::new(&store_path)).unwrap();
    let restored_server = TestServer::over(Arc::new(store), apiserver::Config::default())
        .await
        .unwrap();
    let restored_client = JsonClient::new(&restored_server);

    // Exactly the writes up to the snapshot's revision, at their resourceVersions.
    let found = listed(&restored_client).await;
    let expected: BTreeMap<String, i64> = acked
        .iter()
        .filter(|(_, rv, _)| *rv <= taken_at)
        .map(|(name, rv, _)| (name.clone(), *rv))
        .collect();
    assert_eq!(found, expected);
    // Every write acknowledged before the snapshot was asked for is in it;
    // none acknowledged after it was answered is.
    for (name, rv, at) in &acked {
        if *at < asked {
            assert_eq!(found.get(name), Some(rv), "{name} acknowledged before");
        }
        if *at > answered {
            assert!(!found.contains_key(name), "{name} acknowledged after");
        }
    }
    let (code, one) = restored_client
        .get(&format!("{TASKS}/{}", expected.keys().next().unwrap()))
        .await;
    assert_eq!(code, 200);
    assert_eq!(Some(&rv(&one)), expected.values().next());

    // A watcher holding a resourceVersion from the lost history gets 410 Gone.
    let (_, lost_rv, _) = after[0];
    let mut watch = restored_client
        .watch(&format!("{TASKS}?watch=true&resourceVersion={lost_rv}"))
        .await;
    let event = watch.next().await.unwrap();
    assert_eq!(event["type"], "ERROR", "{event}");
    assert_eq!(event["object"]["code"], 410, "{event}");
    assert!(
        event["object"]["message"]
            .as_str()
            .unwrap()
            .contains("too old resource version"),
        "{event}"
    );
    // It relists, and watches on from the list's resourceVersion.
    let (_, list) = restored_client.get(TASKS).await;
    let list_rv = list["metadata"]["resourceVersion"].as_str().unwrap();
    assert!(list_rv.parse::<i64>().unwrap() >= taken_at + DEFAULT_RESTORE_BUMP);
    let mut watch = restored_client
        .watch(&format!("{TASKS}?watch=true&resourceVersion={list_rv}"))
        .await;
    let (code, created) = restored_client.post(TASKS, &task("after-restore")).await;
    assert_eq!(code, 201, "{created}");
    assert!(rv(&created) > taken_at + DEFAULT_RESTORE_BUMP);
    let event = watch.next_change().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("after-restore"))
    );
}

#[tokio::test]
async fn only_a_cluster_administrator_may_take_a_snapshot_and_it_is_audited() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_log = audit_dir.path().join("audit.log");
    let config = apiserver::Config {
        audit: Some(apiserver::audit::Config::for_up(audit_log.clone())),
        ..apiserver::Config::default()
    };
    let server = TestServer::embedded(config).await.unwrap();
    let url = format!("{}{SNAPSHOT_PATH}", server.url);

    let response = server.http_anonymous().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "Unauthorized", "{status}");

    let response = server
        .http_as("mallory", None)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "Forbidden", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("/snapshot"),
        "{status}"
    );

    // Even a namespace or cluster `admin` (everything but non-resource URLs).
    server.bind_cluster_role("User", "ops", "admin").await;
    let response = server.http_as("ops", None).get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // Other verbs are not a way around it.
    let response = server
        .http_as("ops", None)
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // Nor for the administrator: the snapshot is only read.
    let response = server.http().delete(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "MethodNotAllowed", "{status}");

    server
        .bind_cluster_role("User", "backup", "cluster-admin")
        .await;
    let response = server
        .http_as("backup", None)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"SQLite format 3\0"));

    // Each attempt is in the audit log, with who asked and the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&audit_log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["requestURI"] == SNAPSHOT_PATH)
            .collect();
        let seen = |user: &str, code: u64| {
            lines
                .iter()
                .any(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == code)
        };
        if seen("backup", 200) && seen("mallory", 403) && seen("ops", 403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot requests missing from the audit log: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No copy is left beside the store.
    drop(server);
}

#[tokio::test]
async fn an_etcd_snapshot_is_etcds_own_and_holds_the_objects() {
    let server = TestServer::etcd(apiserver::Config::default())
        .await
        .unwrap();
    let client = JsonClient::new(&server);
    let (code, created) = client.post(TASKS, &task("kept")).await;
    assert_eq!(code, 201, "{created}");
    let (kind, revision, bytes) = take(&server).await;
    assert_eq!(kind, "etcd");
    assert!(revision >= rv(&created));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.snapshot");
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(kind_of(&file).unwrap(), SnapshotKind::Etcd);
    assert_eq!(check_etcd_snapshot(&file).unwrap(), bytes.len() as u64);
    // The object is in etcd's database, under the store's prefix.
    let key = b"/loom/loom.dev/tasks/default/kept";
    assert!(bytes.windows(key.len()).any(|w| w == key));
    // A damaged copy is refused.
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&file, &damaged).unwrap();
    assert!(check_etcd_snapshot(&file).is_err());
    // An embedded restore of it is refused, naming what it is.
    let error = embedded::restore(&file, &dir.path().join("data/loom.db"), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("cannot open") || error.contains("not"),
        "{error}"
    );
}
