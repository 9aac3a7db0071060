//! A watch whose connection a partition cut silently (no reset, no close:
//! the bytes just stop) is found dead by its silence and made again once
//! the network heals, instead of waiting minutes for the server's timeout.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use api_types::Namespace;
use client::watcher::{self, Event};
use client::{Api, Client, PostParams};
use futures::StreamExt as _;
use loom_testing::TestServer;
use loom_testing::proxy::{Fault, FaultProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_by_a_partition_is_made_again_once_healed() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let upstream = server
        .url
        .trim_end_matches('/')
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut config = server.client_config();
    config.server = format!("https://{}", proxy.address());
    let namespaces: Api<Namespace> = Api::all(Client::new(config).unwrap());
    let mut events = Box::pin(watcher::watcher(
        namespaces,
        watcher::Config {
            idle_timeout: Duration::from_secs(3),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..watcher::Config::default()
        },
    ));
    loop {
        if let Some(Ok(Event::InitDone)) = events.next().await {
            break;
        }
    }
    // The watch is open and live (it sees a change), then its link is cut
    // for a while, then healed.
    let made = |name: &str| -> Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    };
    Api::<Namespace>::all(server.client())
        .create(&PostParams::default(), &made("before-the-cut"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(ns)) = event
                && ns.metadata.name == "before-the-cut"
            {
                return;
            }
        }
    })
    .await
    .expect("the watch sees changes before the cut");
    proxy.set(Fault::Partition);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Fault::None);
    Api::<Namespace>::all(server.client())
        .create(&PostParams::default(), &made("after-the-cut"))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(ns) | Event::InitApply(ns)) = event
                && ns.metadata.name == "after-the-cut"
            {
                return;
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "the watcher never saw a namespace made after the partition healed"
    );
}
