//! A watcher whose API server comes back restored from a snapshot: the
//! resourceVersion it resumes from belongs to history the restore lost, the
//! server answers 410 Gone, and the watcher relists to exactly the restored
//! objects, then follows new changes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::Namespace;
use apiserver::store::embedded::{self, DEFAULT_RESTORE_BUMP};
use apiserver::store::{EmbeddedOptions, EmbeddedStore};
use client::watcher::{self, Event};
use client::{Api, PostParams};
use futures::StreamExt as _;
use loom_testing::TestServer;

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "loom.dev/v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap()
}

/// The watcher's view: names of the test's namespaces, and lists seen.
#[derive(Default)]
struct View {
    names: BTreeSet<String>,
    pending: BTreeSet<String>,
    lists: usize,
}

impl View {
    fn apply(&mut self, event: Event<Namespace>) {
        let name = |n: &Namespace| n.metadata.name.clone();
        match event {
            Event::Init => self.pending.clear(),
            Event::InitApply(n) => {
                self.pending.insert(name(&n));
            }
            Event::InitDone => {
                self.names = std::mem::take(&mut self.pending);
                self.lists += 1;
            }
            Event::Apply(n) => {
                self.names.insert(name(&n));
            }
            Event::Delete(n) => {
                self.names.remove(&name(&n));
            }
        }
    }

    fn ours(&self) -> Vec<&str> {
        self.names
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with("kept-") || n.starts_with("lost-") || *n == "after")
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_relists_when_its_server_comes_back_from_a_snapshot() {
    let mut server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(server.client());
    let create = |name: &'static str| {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .create(&PostParams::default(), &namespace(name))
                .await
                .unwrap()
        }
    };
    create("kept-a").await;
    create("kept-b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.snapshot");
    {
        let mut snapshot = server.store.snapshot().await.unwrap();
        let mut copy = std::fs::File::create(&file).unwrap();
        std::io::copy(&mut snapshot.file, &mut copy).unwrap();
    }
    create("lost-a").await;
    create("lost-b").await;

    let mut events = Box::pin(watcher::watcher(
        namespaces.clone(),
        watcher::Config::default(),
    ));
    let mut view = View::default();
    let mut until = async |view: &mut View, what: &str, done: &dyn Fn(&View) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(view) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.next()).await {
                Ok(Some(Ok(event))) => view.apply(event),
                // Errors are reported and the watcher carries on.
                Ok(Some(Err(_))) => {}
                Ok(None) => panic!("the watcher ended"),
                Err(_) => panic!("timed out waiting for {what}: {:?}", view.ours()),
            }
        }
    };
    until(&mut view, "the first list", &|v| {
        v.lists == 1 && v.ours() == ["kept-a", "kept-b", "lost-a", "lost-b"]
    })
    .await;

    // The server comes back on the same address over the restored store.
    let store_path = dir.path().join("data/loom.db");
    embedded::restore(&file, &store_path, DEFAULT_RESTORE_BUMP).unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(&store_path)).unwrap();
    server
        .restart_over(Arc::new(store), apiserver::Config::default())
        .await
        .unwrap();
    until(&mut view, "a relist of the restored objects", &|v| {
        v.lists >= 2 && v.ours() == ["kept-a", "kept-b"]
    })
    .await;
    // And it follows the restored server's changes.
    create("after").await;
    until(&mut view, "the new namespace", &|v| {
        v.ours() == ["after", "kept-a", "kept-b"]
    })
    .await;
}
