//! etcd compaction by the API servers themselves: the history etcd keeps stays a
//! window behind the present, several API servers on one etcd compact once per
//! interval between them, and watches and lists meet the compaction as the store
//! promises (live watches go on, old revisions report `Compacted`).
//!
//! Backend-specific (the embedded store compacts itself, see
//! `store_conformance.rs`), each test on its own etcd on free ports.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use apiserver::store::{
    COMPACT_REV_KEY, CompactionRound, Error, EtcdOptions, EtcdStore, Event, ListOptions, Revision,
    Store,
};
use bytes::Bytes;
use loom_testing::EtcdServer;
use loom_testing::store::next_event;

const INTERVAL: Duration = Duration::from_millis(200);

async fn store(server: &EtcdServer, prefix: &str, interval: Duration, history: i64) -> EtcdStore {
    let mut options = EtcdOptions::new(vec![server.endpoint().to_owned()]);
    options.prefix = prefix.to_owned();
    options.compaction_interval = interval;
    options.compaction_history = history;
    EtcdStore::connect(options).await.unwrap()
}

/// The compaction key's (version, value) as etcd holds it, read past the store.
async fn compact_key(server: &EtcdServer) -> (i64, String) {
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .unwrap();
    let response = client.get(COMPACT_REV_KEY, None).await.unwrap();
    match response.kvs().first() {
        Some(kv) => (kv.version(), kv.value_str().unwrap().to_owned()),
        None => (0, String::new()),
    }
}

/// etcd's compaction revision (0 if revision 1 is still there): a watch from
/// revision 1 is refused with it, else replays the history under the prefix.
async fn compacted_revision(store: &EtcdStore) -> Revision {
    let mut watch = store.watch("", 1).await.unwrap();
    match next_event(&mut watch).await {
        Err(Error::Compacted { compacted, .. }) => compacted,
        Ok(_) => 0,
        Err(error) => panic!("a watch from revision 1 failed: {error}"),
    }
}

fn at(revision: Revision) -> ListOptions {
    ListOptions {
        revision: Some(revision),
        ..Default::default()
    }
}

/// With a short interval, history is compacted shortly after the writes, but
/// never into the last `history` revisions; old revisions then report Compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_history_is_compacted_behind_a_window() {
    const HISTORY: i64 = 20;
    let server = EtcdServer::start().await.unwrap();
    let store = store(&server, "/loom-test/", INTERVAL, HISTORY).await;
    let first = store.create("c/k", Bytes::from("0")).await.unwrap();
    let mut last = first.clone();
    for i in 1..100 {
        last = store
            .update("c/k", Bytes::from(i.to_string()), last.mod_revision)
            .await
            .unwrap();
    }

    // A round records the revision, the next compacts to it, minus the window.
    let deadline = Instant::now() + Duration::from_secs(20);
    let compacted = loop {
        let compacted = compacted_revision(&store).await;
        let current = store.current_revision().await.unwrap();
        assert!(
            compacted <= current - HISTORY,
            "compacted to {compacted}, into the last {HISTORY} revisions of {current}"
        );
        if compacted >= last.mod_revision - HISTORY {
            break compacted;
        }
        assert!(
            Instant::now() < deadline,
            "etcd not compacted past {} within 20 s (at {compacted})",
            last.mod_revision - HISTORY
        );
    };
    let (rounds, value) = compact_key(&server).await;
    assert!(rounds >= 2, "compacted in {rounds} rounds");
    assert!(value.parse::<Revision>().unwrap() >= compacted);

    // Before the compaction: gone, as a list and as a watch.
    assert!(matches!(
        store.list("c/", at(first.mod_revision)).await,
        Err(Error::Compacted { .. })
    ));
    let mut old = store.watch("c/", first.mod_revision).await.unwrap();
    match next_event(&mut old).await {
        Err(Error::Compacted {
            requested,
            compacted: now,
        }) => {
            assert_eq!(requested, first.mod_revision);
            assert!(now >= compacted);
        }
        other => panic!("a watch from a compacted revision got {other:?}"),
    }
    // The latest state is all there.
    let latest = store.list("c/", ListOptions::default()).await.unwrap();
    assert_eq!(latest.items, vec![last]);
}

/// Compactors racing on one etcd: whoever writes the key first claims a round,
/// the other loses it and follows; each claim bumps the key's version once and
/// compacts to the revision the claimer saw one round earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compactors_claim_each_round_once() {
    let server = EtcdServer::start().await.unwrap();
    // Compaction by hand only: no background compactor.
    let store = store(&server, "/loom-test/", Duration::ZERO, 0).await;
    let mut a = store.compactor(0);
    let mut b = store.compactor(0);

    // The first round only records where the next one may compact to.
    assert_eq!(
        a.round().await.unwrap(),
        CompactionRound::Claimed { compacted: None }
    );
    assert_eq!(b.round().await.unwrap(), CompactionRound::Lost);
    let b_saw = store.current_revision().await.unwrap();
    let mut claims = 1;
    let mut last_target = 0;
    for round in 0..6 {
        let written = store
            .create(&format!("r/{round}"), Bytes::from("x"))
            .await
            .unwrap();
        // Alternate who goes first: the first of each pair claims, the second loses.
        let (first, second) = if round % 2 == 0 {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        let CompactionRound::Claimed {
            compacted: Some(target),
        } = first.round().await.unwrap()
        else {
            panic!("round {round}: the first compactor did not claim");
        };
        assert_eq!(second.round().await.unwrap(), CompactionRound::Lost);
        claims += 1;
        // Compacted to what the claimer saw a round ago: before this round's write.
        assert!(target < written.mod_revision, "round {round}");
        if round == 0 {
            assert_eq!(target, b_saw);
        }
        assert!(target > last_target, "round {round}");
        last_target = target;
        assert_eq!(compacted_revision(&store).await, target);
        assert_eq!(
            compact_key(&server).await,
            (claims, target.to_string()),
            "round {round}"
        );
    }
}

/// Three API servers (each its own prefix: compaction is of the whole etcd)
/// compacting every 200 ms for 3 s claim about 15 rounds between them, not 45,
/// and stop when their stores are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_servers_sharing_etcd_compact_once_per_interval() {
    let server = EtcdServer::start().await.unwrap();
    let started = Instant::now();
    let mut stores = Vec::new();
    for prefix in ["/one/", "/two/", "/three/"] {
        stores.push(store(&server, prefix, INTERVAL, 0).await);
    }
    let run = Duration::from_secs(3);
    let mut i = 0;
    while started.elapsed() < run {
        stores[i % 3]
            .create(&format!("k/{i}"), Bytes::from("x"))
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rounds, _) = compact_key(&server).await;
    let intervals = started.elapsed().as_millis() / INTERVAL.as_millis();
    let intervals = i64::try_from(intervals).unwrap();
    assert!(
        rounds <= intervals + 2,
        "{rounds} compaction rounds in {intervals} intervals: the compactors did not take turns"
    );
    assert!(rounds >= 3, "only {rounds} rounds in {intervals} intervals");
    assert!(compacted_revision(&stores[0]).await > 0);

    // Dropping the stores stops their compactors (a round already sent may land).
    drop(stores);
    tokio::time::sleep(INTERVAL / 2).await;
    let (stopped, _) = compact_key(&server).await;
    tokio::time::sleep(INTERVAL * 4).await;
    assert_eq!(
        compact_key(&server).await.0,
        stopped,
        "a compactor outlived its store"
    );
}

/// A watch that keeps up is not disturbed by compactions behind it: it sees every
/// write in order with its previous value; a new watch or list from where it
/// started is refused with Compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_watch_keeps_going_across_compactions() {
    let server = EtcdServer::start().await.unwrap();
    let store = store(&server, "/loom-test/", INTERVAL, 1).await;
    let mut last = store.create("live/k", Bytes::from("0")).await.unwrap();
    let start = last.mod_revision;
    let mut watch = store.watch("live/", start).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Write until etcd has been compacted past the watch's start, twice over,
    // reading the watch as it goes (a watcher that keeps up).
    let mut compactions = 0;
    let mut compacted = 0;
    let mut writes = 0;
    while compactions < 2 {
        for _ in 0..10 {
            let next = store
                .update("live/k", Bytes::from(writes.to_string()), last.mod_revision)
                .await
                .unwrap();
            writes += 1;
            assert_eq!(
                next_event(&mut watch).await.unwrap(),
                Event::Updated {
                    kv: next.clone(),
                    prev: last
                }
            );
            last = next;
        }
        let now = compacted_revision(&store).await;
        if now > start && now > compacted {
            compactions += 1;
            compacted = now;
        }
        assert!(
            Instant::now() < deadline,
            "etcd not compacted twice within 20 s ({writes} writes)"
        );
    }
    // It goes on live.
    let after = store
        .update("live/k", Bytes::from("after"), last.mod_revision)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut watch).await.unwrap(),
        Event::Updated {
            kv: after,
            prev: last
        }
    );

    let mut again = store.watch("live/", start).await.unwrap();
    assert!(matches!(
        next_event(&mut again).await,
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        store.list("live/", at(start)).await,
        Err(Error::Compacted { .. })
    ));
}
