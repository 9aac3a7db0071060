//! Events expire: one last seen longer ago than the API server's event TTL is
//! deleted (and watchers see it go), one seen since stays, one seen again is
//! kept from its new time. Without this every task's Events stayed in the
//! store and in every API server's caches for ever (the soak's memory
//! growth).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use api_types::Event;
use chrono::Utc;
use client::{Api, ListParams, Patch, PatchParams, PostParams};
use loom_testing::TestServer;
use serde_json::json;

fn event(name: &str, last_seen: chrono::DateTime<Utc>) -> Event {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "Task", "name": "t", "namespace": "default"},
        "reason": "Started",
        "message": "started",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": last_seen,
        "lastTimestamp": last_seen,
    }))
    .unwrap()
}

async fn names(events: &Api<Event>) -> Vec<String> {
    let mut names: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.metadata.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_last_seen_before_the_ttl_are_deleted() {
    let config = apiserver::Config {
        event_ttl: Duration::from_secs(60),
        ..apiserver::Config::default()
    };
    let server = TestServer::embedded(config).await.unwrap();
    let events: Api<Event> = Api::namespaced(server.client(), "default");
    let now = Utc::now();
    for (name, age) in [
        ("old", 3_600),
        ("older", 7_200),
        ("fresh", 5),
        ("seen-again", 600),
    ] {
        events
            .create(
                &PostParams::default(),
                &event(name, now - chrono::Duration::seconds(age)),
            )
            .await
            .unwrap();
    }
    // Seen again just now: kept from its new time.
    events
        .patch(
            "seen-again",
            &PatchParams::default(),
            &Patch::Merge(json!({"count": 2, "lastTimestamp": Utc::now()})),
        )
        .await
        .unwrap();

    // A pass runs every quarter of the TTL, at most every minute: 15 s here.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = names(&events).await;
        if left == ["fresh", "seen-again"] {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ttl_keeps_events() {
    let config = apiserver::Config {
        event_ttl: Duration::ZERO,
        ..apiserver::Config::default()
    };
    let server = TestServer::embedded(config).await.unwrap();
    let events: Api<Event> = Api::namespaced(server.client(), "default");
    events
        .create(
            &PostParams::default(),
            &event("ancient", Utc::now() - chrono::Duration::days(30)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(names(&events).await, ["ancient"]);
}
