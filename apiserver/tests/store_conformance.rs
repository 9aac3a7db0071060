//! The store conformance suite: every case runs against the embedded store and
//! against etcd (a private server on free ports), and both must pass the same way.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::store::{
    EmbeddedOptions, EmbeddedStore, Error, Event, KeyValue, ListOptions, MAX_VALUE_BYTES, Revision,
    Store,
};
use bytes::Bytes;
use loom_testing::store::{next_event, next_item};
use loom_testing::{EtcdServer, temp_dir};

/// A store and whatever keeps it alive (its etcd process or its temp dir).
struct Harness {
    store: Arc<dyn Store>,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded() -> Harness {
    let (dir, path) = temp_dir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap();
    Harness {
        store: Arc::new(store),
        _etcd: None,
        _dir: Some(dir),
    }
}

async fn etcd() -> Harness {
    let server = EtcdServer::start().await.unwrap();
    let store = server.store("/loom-test/").await.unwrap();
    Harness {
        store: Arc::new(store),
        _etcd: Some(server),
        _dir: None,
    }
}

fn bytes(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

/// The state of every key under a prefix, as (key → (mod revision, value)).
fn state(items: &[KeyValue]) -> BTreeMap<String, (Revision, Bytes)> {
    items
        .iter()
        .map(|kv| (kv.key.clone(), (kv.mod_revision, kv.value.clone())))
        .collect()
}

/// Reads every page of a list at one revision.
async fn list_all(
    store: &dyn Store,
    prefix: &str,
    revision: Option<Revision>,
    limit: usize,
) -> (Vec<KeyValue>, Revision) {
    let mut items = Vec::new();
    let mut token = None;
    let mut at = revision;
    loop {
        let page = store
            .list(
                prefix,
                ListOptions {
                    revision: at,
                    limit: Some(limit),
                    continue_token: token.take(),
                },
            )
            .await
            .unwrap();
        assert!(page.items.len() <= limit, "a page longer than the limit");
        if let Some(at) = at {
            assert_eq!(page.revision, at, "every page reads at the same revision");
        }
        at = Some(page.revision);
        items.extend(page.items);
        match page.continue_token {
            Some(next) => token = Some(next),
            None => return (items, page.revision),
        }
    }
}

mod suite {
    use super::*;

    pub async fn crud(store: Arc<dyn Store>) {
        let created = store.create("t/a", bytes("one")).await.unwrap();
        assert_eq!(created.create_revision, created.mod_revision);
        assert_eq!(store.get("t/a").await.unwrap(), Some(created.clone()));
        assert!(matches!(
            store.create("t/a", bytes("again")).await,
            Err(Error::AlreadyExists { key }) if key == "t/a"
        ));

        match store
            .update("t/a", bytes("two"), created.mod_revision - 1)
            .await
        {
            Err(Error::Conflict {
                current, expected, ..
            }) => {
                assert_eq!(*current, created);
                assert_eq!(expected, created.mod_revision - 1);
            }
            other => panic!("a stale update must conflict, got {other:?}"),
        }
        let updated = store
            .update("t/a", bytes("two"), created.mod_revision)
            .await
            .unwrap();
        assert!(updated.mod_revision > created.mod_revision);
        assert_eq!(updated.create_revision, created.create_revision);
        assert_eq!(store.get("t/a").await.unwrap().unwrap().value, bytes("two"));

        assert!(matches!(
            store.delete("t/a", Some(created.mod_revision)).await,
            Err(Error::Conflict { .. })
        ));
        let deleted = store
            .delete("t/a", Some(updated.mod_revision))
            .await
            .unwrap();
        assert_eq!(deleted.prev, updated);
        assert!(deleted.revision > updated.mod_revision);
        assert_eq!(store.get("t/a").await.unwrap(), None);
        assert!(store.current_revision().await.unwrap() >= deleted.revision);

        assert!(matches!(
            store.update("t/a", bytes("x"), updated.mod_revision).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            store.delete("t/a", None).await,
            Err(Error::NotFound { .. })
        ));

        // Re-created, the key starts a new life.
        let again = store.create("t/a", bytes("three")).await.unwrap();
        assert_eq!(again.create_revision, again.mod_revision);
        assert!(again.create_revision > deleted.revision);
        let unconditional = store.delete("t/a", None).await.unwrap();
        assert_eq!(unconditional.prev, again);
    }

    pub async fn prefixes_are_isolated(store: Arc<dyn Store>) {
        for key in ["a/1", "a/2", "ab/1", "b/1", "a"] {
            store.create(key, bytes(key)).await.unwrap();
        }
        let page = store.list("a/", ListOptions::default()).await.unwrap();
        let keys: Vec<_> = page.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        assert_eq!(page.continue_token, None);
        assert_eq!(page.revision, store.current_revision().await.unwrap());
        let empty = store.list("zzz/", ListOptions::default()).await.unwrap();
        assert!(empty.items.is_empty());
    }

    /// 32 tasks race read-modify-write on one counter: no update is lost, and no
    /// two winners started from the same revision.
    pub async fn racing_conditional_updates(store: Arc<dyn Store>) {
        const TASKS: usize = 32;
        const WINS_EACH: usize = 5;
        store.create("race/counter", bytes("0")).await.unwrap();
        let mut handles = Vec::new();
        for _ in 0..TASKS {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut wins = Vec::new();
                let mut current = store.get("race/counter").await.unwrap().unwrap();
                while wins.len() < WINS_EACH {
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    match store
                        .update(
                            "race/counter",
                            bytes((n + 1).to_string()),
                            current.mod_revision,
                        )
                        .await
                    {
                        Ok(kv) => {
                            wins.push((current.mod_revision, kv.mod_revision));
                            current = kv;
                        }
                        Err(Error::Conflict { current: now, .. }) => current = *now,
                        Err(error) => panic!("unexpected error: {error}"),
                    }
                }
                wins
            }));
        }
        let mut from = HashSet::new();
        let mut to = HashSet::new();
        for handle in handles {
            for (base, revision) in handle.await.unwrap() {
                assert!(from.insert(base), "two updates won from revision {base}");
                assert!(to.insert(revision), "two updates got revision {revision}");
            }
        }
        let total = (TASKS * WINS_EACH) as u64;
        let last = store.get("race/counter").await.unwrap().unwrap();
        assert_eq!(std::str::from_utf8(&last.value).unwrap(), total.to_string());
        assert_eq!(from.len() as u64, total);
    }

    /// A watch from an old revision replays exactly the events after it, in order,
    /// then carries on live with nothing repeated.
    pub async fn watch_replays_history(store: Arc<dyn Store>) {
        let a = store.create("w/a", bytes("a1")).await.unwrap();
        let b = store.create("w/b", bytes("b1")).await.unwrap();
        store.create("other/x", bytes("x")).await.unwrap();
        let a2 = store
            .update("w/a", bytes("a2"), a.mod_revision)
            .await
            .unwrap();
        let del_b = store.delete("w/b", None).await.unwrap();
        let c = store.create("w/c", bytes("c1")).await.unwrap();

        let mut stream = store.watch("w/", a.mod_revision).await.unwrap();
        assert_eq!(
            next_event(&mut stream).await.unwrap(),
            Event::Created(b.clone())
        );
        assert_eq!(
            next_event(&mut stream).await.unwrap(),
            Event::Updated {
                kv: a2.clone(),
                prev: a.clone()
            }
        );
        assert_eq!(
            next_event(&mut stream).await.unwrap(),
            Event::Deleted {
                revision: del_b.revision,
                prev: b.clone()
            }
        );
        assert_eq!(
            next_event(&mut stream).await.unwrap(),
            Event::Created(c.clone())
        );

        // Live events follow, and nothing in between.
        store.create("other/y", bytes("y")).await.unwrap();
        let d = store.create("w/d", bytes("d1")).await.unwrap();
        assert_eq!(
            next_event(&mut stream).await.unwrap(),
            Event::Created(d.clone())
        );

        // From the latest revision: only what comes next.
        let mut fresh = store
            .watch("w/", store.current_revision().await.unwrap())
            .await
            .unwrap();
        let d2 = store
            .update("w/d", bytes("d2"), d.mod_revision)
            .await
            .unwrap();
        assert_eq!(
            next_event(&mut fresh).await.unwrap(),
            Event::Updated {
                kv: d2.clone(),
                prev: d.clone()
            }
        );
        assert_eq!(
            next_event(&mut stream).await.unwrap(),
            Event::Updated { kv: d2, prev: d }
        );
    }

    /// A watch on a quiet prefix learns how far the store has got.
    pub async fn watch_reports_progress(store: Arc<dyn Store>) {
        let start = store.current_revision().await.unwrap();
        let mut quiet = store.watch("quiet/", start).await.unwrap();
        let busy = store.create("busy/a", bytes("a")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match next_item(&mut quiet).await.unwrap() {
                Event::Progress { revision } if revision >= busy.mod_revision => break,
                Event::Progress { .. } => {}
                other => panic!("a quiet prefix got {other:?}"),
            }
            assert!(Instant::now() < deadline, "no progress within 10 s");
        }
        // Progress never runs ahead of an event under the prefix.
        let mine = store.create("quiet/x", bytes("x")).await.unwrap();
        loop {
            match next_item(&mut quiet).await.unwrap() {
                Event::Progress { revision } => assert!(revision < mine.mod_revision),
                event => {
                    assert_eq!(event, Event::Created(mine));
                    break;
                }
            }
        }
    }

    /// A watch from the past reports no progress past an event it has not sent
    /// yet: a progress revision means every event up to it was delivered.
    pub async fn watch_replays_before_reporting_progress(store: Arc<dyn Store>) {
        let first = store.create("p/0", bytes("0")).await.unwrap();
        let mut pending = Vec::new();
        for i in 1..6 {
            store
                .create(&format!("elsewhere/{i}"), bytes("x"))
                .await
                .unwrap();
            pending.push(store.create(&format!("p/{i}"), bytes("x")).await.unwrap());
        }
        let mut stream = store.watch("p/", first.mod_revision).await.unwrap();
        let mut pending = pending.into_iter().peekable();
        while let Some(next) = pending.peek() {
            match next_item(&mut stream).await.unwrap() {
                Event::Progress { revision } => assert!(
                    revision < next.mod_revision,
                    "progress to {revision} before the event at {}",
                    next.mod_revision
                ),
                event => {
                    assert_eq!(event, Event::Created(next.clone()));
                    pending.next();
                }
            }
        }
    }

    /// Concurrent writers: a watcher sees every write once, in revision order.
    pub async fn watch_sees_concurrent_writes_in_order(store: Arc<dyn Store>) {
        let start = store.current_revision().await.unwrap();
        let mut stream = store.watch("cw/", start).await.unwrap();
        let mut handles = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..50 {
                    let kv = store
                        .create(&format!("cw/{w}-{i}"), bytes("v"))
                        .await
                        .unwrap();
                    revisions.push(kv.mod_revision);
                }
                revisions
            }));
        }
        let mut written = HashSet::new();
        for handle in handles {
            written.extend(handle.await.unwrap());
        }
        let mut last = start;
        let mut seen = HashSet::new();
        while seen.len() < written.len() {
            let event = next_event(&mut stream).await.unwrap();
            assert!(event.revision() > last, "events out of order");
            last = event.revision();
            assert!(seen.insert(event.revision()));
        }
        assert_eq!(seen, written);
    }

    /// After compaction, old revisions are refused and recent ones still served.
    pub async fn compaction(store: Arc<dyn Store>) {
        let mut revisions = Vec::new();
        let first = store.create("c/k", bytes("0")).await.unwrap();
        revisions.push(first.mod_revision);
        let mut last = first;
        for i in 1..10 {
            last = store
                .update("c/k", bytes(i.to_string()), last.mod_revision)
                .await
                .unwrap();
            revisions.push(last.mod_revision);
        }
        let gone = store.create("c/gone", bytes("g")).await.unwrap();
        store.delete("c/gone", None).await.unwrap();
        let target = revisions[6];
        store.compact(target).await.unwrap();
        // Compacting again, or to an older revision, is fine.
        store.compact(target).await.unwrap();
        store.compact(revisions[2]).await.unwrap();

        let mut old = store.watch("c/", revisions[2]).await.unwrap();
        assert!(
            matches!(next_event(&mut old).await, Err(Error::Compacted { .. })),
            "a watch from before the compaction must fail with Compacted"
        );
        assert!(matches!(
            store
                .list(
                    "c/",
                    ListOptions {
                        revision: Some(revisions[2]),
                        ..Default::default()
                    }
                )
                .await,
            Err(Error::Compacted { .. })
        ));

        let mut just_before = store.watch("c/", target - 1).await.unwrap();
        assert!(
            matches!(
                next_event(&mut just_before).await,
                Err(Error::Compacted { .. })
            ),
            "a watch from the revision before the compaction must fail with Compacted"
        );

        // From the target: every event after it, with previous values.
        let mut recent = store.watch("c/", target).await.unwrap();
        for window in revisions[6..].windows(2) {
            match next_event(&mut recent).await.unwrap() {
                Event::Updated { kv, prev } => {
                    assert_eq!(kv.mod_revision, window[1]);
                    assert_eq!(prev.mod_revision, window[0]);
                }
                other => panic!("expected an update, got {other:?}"),
            }
        }
        assert_eq!(
            next_event(&mut recent).await.unwrap(),
            Event::Created(gone.clone())
        );

        let at_target = store
            .list(
                "c/",
                ListOptions {
                    revision: Some(target),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(at_target.items.len(), 1);
        assert_eq!(at_target.items[0].mod_revision, target);
        assert_eq!(at_target.items[0].value, bytes("6"));
    }

    /// A list at a past revision is the exact state then, while writes go on.
    pub async fn list_at_revision_is_a_snapshot(store: Arc<dyn Store>) {
        for i in 0..100 {
            store
                .create(&format!("s/{i:03}"), bytes("0"))
                .await
                .unwrap();
        }
        let (initial, initial_revision) = list_all(&*store, "s/", None, 1000).await;
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    // (revision, key, value after; None for a delete)
                    let mut log: Vec<(Revision, String, Option<Bytes>)> = Vec::new();
                    for i in 0..40u32 {
                        let key = format!("s/{:03}", (w * 13 + i * 7) % 100);
                        let new_key = format!("s/new-{w}-{i}");
                        let value = bytes(format!("{w}-{i}"));
                        match i % 4 {
                            0 | 1 => loop {
                                let Some(kv) = store.get(&key).await.unwrap() else {
                                    break;
                                };
                                match store.update(&key, value.clone(), kv.mod_revision).await {
                                    Ok(kv) => {
                                        log.push((
                                            kv.mod_revision,
                                            key.clone(),
                                            Some(value.clone()),
                                        ));
                                        break;
                                    }
                                    Err(Error::Conflict { .. } | Error::NotFound { .. }) => {
                                        continue;
                                    }
                                    Err(error) => panic!("{error}"),
                                }
                            },
                            2 => {
                                let kv = store.create(&new_key, value.clone()).await.unwrap();
                                log.push((kv.mod_revision, new_key, Some(value)));
                            }
                            _ => match store.delete(&key, None).await {
                                Ok(deleted) => log.push((deleted.revision, key, None)),
                                Err(Error::NotFound { .. }) => {}
                                Err(error) => panic!("{error}"),
                            },
                        }
                    }
                    log
                })
            })
            .collect();
        // Snapshots taken while the writers run.
        let mut snapshots = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let revision = store.current_revision().await.unwrap();
            let (items, at) = list_all(&*store, "s/", Some(revision), 17).await;
            assert_eq!(at, revision);
            snapshots.push((revision, state(&items)));
        }
        let mut log = Vec::new();
        for writer in writers {
            log.extend(writer.await.unwrap());
        }
        log.sort_by_key(|(revision, _, _)| *revision);
        for (revision, seen) in snapshots {
            let mut expected = state(&initial);
            for (at, key, value) in log.iter().filter(|(at, _, _)| *at <= revision) {
                match value {
                    Some(value) => expected.insert(key.clone(), (*at, value.clone())),
                    None => expected.remove(key),
                };
            }
            assert_eq!(
                seen, expected,
                "the list at revision {revision} is not the state then"
            );
            // Reading it again after all the writes gives the same snapshot.
            let (again, _) = list_all(&*store, "s/", Some(revision), 1000).await;
            assert_eq!(state(&again), expected);
        }
        assert!(initial_revision > 0);
    }

    /// Paging through a list returns every key of its snapshot once, in order,
    /// while writers change the keys underneath.
    pub async fn pagination_under_concurrent_writes(store: Arc<dyn Store>) {
        for i in 0..300 {
            store
                .create(&format!("p/{i:04}"), bytes("0"))
                .await
                .unwrap();
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let store = store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("p/{:04}", (i * 37) % 300);
                    if let Ok(Some(kv)) = store.get(&key).await {
                        let _ = store
                            .update(&key, bytes(format!("w{i}")), kv.mod_revision)
                            .await;
                    }
                    let _ = store.create(&format!("p/{:04}-new", i), bytes("n")).await;
                    if i % 5 == 0 {
                        let _ = store
                            .delete(&format!("p/{:04}", (i * 11) % 300), None)
                            .await;
                    }
                    i += 1;
                }
            })
        };
        let mut pages = 0;
        let mut items = Vec::new();
        let mut token = None;
        let mut revision = None;
        loop {
            let page = store
                .list(
                    "p/",
                    ListOptions {
                        revision: None,
                        limit: Some(7),
                        continue_token: token.take(),
                    },
                )
                .await
                .unwrap();
            if let Some(revision) = revision {
                assert_eq!(page.revision, revision);
            }
            revision = Some(page.revision);
            items.extend(page.items);
            pages += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            match page.continue_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();
        let keys: Vec<_> = items.iter().map(|kv| kv.key.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "pages must be in key order with no key twice");
        assert!(pages >= 300 / 7);
        let (whole, _) = list_all(&*store, "p/", revision, 100_000).await;
        assert_eq!(
            state(&items),
            state(&whole),
            "the pages must add up to the snapshot"
        );

        // A token is bound to its list.
        let page = store
            .list(
                "p/",
                ListOptions {
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let token = page.continue_token.unwrap();
        assert!(matches!(
            store
                .list(
                    "q/",
                    ListOptions {
                        continue_token: Some(token),
                        ..Default::default()
                    }
                )
                .await,
            Err(Error::InvalidContinue(_))
        ));
        assert!(matches!(
            store
                .list(
                    "p/",
                    ListOptions {
                        continue_token: Some("garbage".into()),
                        ..Default::default()
                    }
                )
                .await,
            Err(Error::InvalidContinue(_))
        ));
    }

    /// 1.5 MiB is accepted; one byte more is refused and nothing is written.
    pub async fn value_size_limit(store: Arc<dyn Store>) {
        let big = Bytes::from(vec![b'x'; MAX_VALUE_BYTES]);
        assert_eq!(MAX_VALUE_BYTES, 1536 * 1024);
        let kv = store.create("big/ok", big.clone()).await.unwrap();
        assert_eq!(store.get("big/ok").await.unwrap().unwrap().value, big);
        let too_big = Bytes::from(vec![b'x'; MAX_VALUE_BYTES + 1]);
        let before = store.current_revision().await.unwrap();
        match store.create("big/no", too_big.clone()).await {
            Err(error @ Error::ValueTooLarge { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("big/no") && message.contains("1572864"),
                    "{message}"
                );
            }
            other => panic!("an oversized value must be refused, got {other:?}"),
        }
        assert!(matches!(
            store.update("big/ok", too_big, kv.mod_revision).await,
            Err(Error::ValueTooLarge { .. })
        ));
        assert_eq!(store.get("big/no").await.unwrap(), None);
        assert_eq!(store.current_revision().await.unwrap(), before);
    }

    /// Lists ask for revisions that exist.
    pub async fn future_revisions_are_refused(store: Arc<dyn Store>) {
        store.create("f/a", bytes("a")).await.unwrap();
        let head = store.current_revision().await.unwrap();
        assert!(matches!(
            store
                .list(
                    "f/",
                    ListOptions {
                        revision: Some(head + 1000),
                        ..Default::default()
                    }
                )
                .await,
            Err(Error::FutureRevision { .. })
        ));
    }

    /// A snapshot taken while writes go on holds every write acknowledged
    /// before it was asked for, and says the revision it holds.
    pub async fn snapshot_holds_every_acknowledged_write(store: Arc<dyn Store>) {
        let mut before = Vec::new();
        for i in 0..20 {
            before.push(
                store
                    .create(&format!("snap/before-{i}"), bytes("v"))
                    .await
                    .unwrap(),
            );
        }
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    store
                        .create(&format!("snap/during-{i}"), bytes("v"))
                        .await
                        .unwrap();
                }
            })
        };
        let mut snapshot = store.snapshot().await.unwrap();
        writer.await.unwrap();
        let last = before.last().unwrap().mod_revision;
        assert!(snapshot.revision >= last, "{} < {last}", snapshot.revision);
        let mut copy = Vec::new();
        std::io::Read::read_to_end(&mut snapshot.file, &mut copy).unwrap();
        assert_eq!(copy.len() as u64, snapshot.size);
        for kv in &before {
            let key = kv.key.as_bytes();
            assert!(
                copy.windows(key.len()).any(|w| w == key),
                "{} missing from the snapshot",
                kv.key
            );
        }
    }
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            conformance!(@case $backend, crud);
            conformance!(@case $backend, prefixes_are_isolated);
            conformance!(@case $backend, racing_conditional_updates);
            conformance!(@case $backend, watch_replays_history);
            conformance!(@case $backend, watch_sees_concurrent_writes_in_order);
            conformance!(@case $backend, watch_reports_progress);
            conformance!(@case $backend, watch_replays_before_reporting_progress);
            conformance!(@case $backend, compaction);
            conformance!(@case $backend, list_at_revision_is_a_snapshot);
            conformance!(@case $backend, pagination_under_concurrent_writes);
            conformance!(@case $backend, value_size_limit);
            conformance!(@case $backend, future_revisions_are_refused);
            conformance!(@case $backend, snapshot_holds_every_acknowledged_write);
        }
    };
    (@case $backend:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let harness = super::$backend().await;
            suite::$case(harness.store.clone()).await;
        }
    };
}

conformance!(embedded);
conformance!(etcd);

/// Cases only the embedded store has: crashes and file growth.
mod embedded_only {
    use super::*;
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};

    const CHILD_ENV: &str = "LOOM_STORE_CRASH_CHILD";

    /// Run as a child process by `killed_store_keeps_acknowledged_writes`: writes
    /// until killed, printing each acknowledged write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_child() {
        let Ok(path) = std::env::var(CHILD_ENV) else {
            return;
        };
        let store = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for w in 0..16 {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("crash/{w}-{i}");
                    let kv = store.create(&key, bytes(key.clone())).await.unwrap();
                    if tx.send((key, kv.mod_revision)).is_err() {
                        return;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some((key, revision)) = rx.recv().await {
            writeln!(out, "ack {key} {revision}").unwrap();
            out.flush().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_store_keeps_acknowledged_writes() {
        let (_dir, path) = temp_dir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "embedded_only::crash_child", "--nocapture"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let stdout = child.stdout.take().unwrap();
        let mut child = KillOnDrop(child);
        let mut acked = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ack") {
                continue;
            }
            let key = parts.next().unwrap().to_owned();
            let revision: Revision = parts.next().unwrap().parse().unwrap();
            acked.insert(key, revision);
            if acked.len() >= 2_000 || Instant::now() > deadline {
                break;
            }
        }
        // SIGKILL mid-write: no chance to flush or close anything.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert!(
            acked.len() >= 2_000,
            "the child acknowledged only {} writes",
            acked.len()
        );

        let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
        let max_acked = *acked.values().max().unwrap();
        let head = store.current_revision().await.unwrap();
        assert!(
            head >= max_acked,
            "revision went back from {max_acked} to {head}"
        );
        let (items, _) = list_all(&store, "crash/", None, 5_000).await;
        let stored = state(&items);
        for (key, revision) in &acked {
            let (at, value) = stored
                .get(key)
                .unwrap_or_else(|| panic!("acknowledged write {key} at {revision} was lost"));
            assert_eq!(at, revision);
            assert_eq!(value, &bytes(key.clone()));
        }
        // The sequence continues after the last write that reached the disk.
        let next = store.create("crash/after", bytes("x")).await.unwrap();
        assert!(next.mod_revision > head);
        store.close().await;
    }

    /// 64 writers, readers and a watcher at once: no "database is locked", no lost
    /// event, and with compaction on the file stays bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_load_keeps_the_file_bounded() {
        let (_dir, path) = temp_dir().unwrap();
        let mut options = EmbeddedOptions::new(&path);
        options.history = 2_000;
        options.compact_interval = Duration::from_millis(50);
        let store = Arc::new(EmbeddedStore::open(options).unwrap());
        const KEYS: usize = 200;
        const WRITERS: usize = 64;
        const UPDATES_EACH: usize = 300;
        let value = Bytes::from(vec![b'v'; 2048]);
        for k in 0..KEYS {
            store
                .create(&format!("load/{k}"), value.clone())
                .await
                .unwrap();
        }
        let start = store.current_revision().await.unwrap();
        let mut watch = store.watch("load/", start).await.unwrap();
        let watcher = tokio::spawn(async move {
            let mut count = 0usize;
            let mut last = start;
            while count < WRITERS * UPDATES_EACH {
                let event = next_event(&mut watch).await.unwrap();
                assert!(event.revision() > last);
                last = event.revision();
                count += 1;
            }
            count
        });
        let stop_readers = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let stop = stop_readers.clone();
                tokio::spawn(async move {
                    let mut lists = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let page = store
                            .list(
                                "load/",
                                ListOptions {
                                    limit: Some(50),
                                    ..Default::default()
                                },
                            )
                            .await
                            .unwrap();
                        assert_eq!(page.items.len(), 50);
                        lists += 1;
                    }
                    lists
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                let value = value.clone();
                tokio::spawn(async move {
                    let mut done = 0;
                    let mut i = w;
                    while done < UPDATES_EACH {
                        let key = format!("load/{}", i % KEYS);
                        i += 7;
                        let kv = store.get(&key).await.unwrap().unwrap();
                        match store.update(&key, value.clone(), kv.mod_revision).await {
                            Ok(_) => done += 1,
                            Err(Error::Conflict { .. }) => {}
                            Err(error) => panic!("write failed under load: {error}"),
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        stop_readers.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.unwrap() > 0);
        }
        assert_eq!(watcher.await.unwrap(), WRITERS * UPDATES_EACH);

        // Compaction catches up: the log holds about the history window, not every write.
        let total = WRITERS * UPDATES_EACH + KEYS;
        let probe = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows: i64 = probe
                .query_row("SELECT COUNT(*) FROM log", [], |row| row.get(0))
                .unwrap();
            if rows <= (2_000 + KEYS + 100) as i64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "compaction did not catch up: {rows} rows of {total} writes remain"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(probe);
        // 19,400 writes of 2 KiB would be about 40 MB uncompacted.
        let db = std::fs::metadata(&path).unwrap().len();
        let mut wal_path = path.clone().into_os_string();
        wal_path.push("-wal");
        let wal = std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
        assert!(db < 20 * 1024 * 1024, "the database grew to {db} bytes");
        assert!(wal <= 70 * 1024 * 1024, "the WAL grew to {wal} bytes");
        assert!(store.compacted_revision() > start);
    }

    /// A second process (or a second open) cannot write the same file.
    #[tokio::test]
    async fn the_file_is_locked() {
        let (_dir, path) = temp_dir().unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
        match EmbeddedStore::open(EmbeddedOptions::new(&path)) {
            Err(Error::Backend(message)) => assert!(message.contains("in use"), "{message}"),
            other => panic!("a second open must fail, got {other:?}"),
        }
        store.close().await;
        // Closed, it opens again.
        EmbeddedStore::open(EmbeddedOptions::new(&path))
            .unwrap()
            .close()
            .await;
    }
}
