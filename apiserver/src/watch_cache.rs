//! The watch cache: one store watch per resource, fanned out to every client watch.
//!
//! Each resource keeps its current objects and a ring of recent events in memory,
//! fed by a single store watch. A client watch from revision R replays the ring
//! after R and then follows live events; R older than the ring gets 410 Gone. A
//! client that cannot keep up is cut off (it will relist and watch again) rather
//! than stalling the others or growing memory: each watcher has a bounded queue.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use api_types::{FieldSelector, Selector};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::object;
use crate::store::{self, Event, KeyValue, ListOptions, Revision, Store};

/// Events each resource keeps for watches that resume.
pub const DEFAULT_CAPACITY: usize = 16_384;
/// Items queued for one client watch before it is cut off.
pub const WATCHER_QUEUE: usize = 4_096;

/// One object as the cache holds it: its bytes (with resourceVersion) and what
/// selectors look at, parsed once.
#[derive(Debug)]
pub struct CachedObject {
    /// The store key.
    pub key: String,
    /// The object's resourceVersion.
    pub revision: Revision,
    /// The object as JSON, with `metadata.resourceVersion`.
    pub json: Bytes,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The values of the resource's selectable fields.
    pub fields: BTreeMap<String, String>,
    /// The watch event line for each event type, built once for every watcher.
    lines: [OnceLock<Bytes>; 3],
}

impl CachedObject {
    /// Builds the cached form of a stored object at `revision`; `None` if it is not JSON.
    pub fn from_kv(kv: &KeyValue, revision: Revision, selectable: &[String]) -> Option<Self> {
        let value: Value = serde_json::from_slice(&kv.value).ok()?;
        let fields = selectable
            .iter()
            .filter_map(|f| Some((f.clone(), api_types::selector::json_field(&value, f)?)))
            .collect();
        Some(CachedObject {
            key: kv.key.clone(),
            revision,
            json: object::with_resource_version(&kv.value, revision),
            namespace: object::namespace(&value).to_owned(),
            name: object::name(&value).to_owned(),
            labels: object::labels(&value),
            fields,
            lines: Default::default(),
        })
    }

    /// `{"type":"…","object":…}` and a newline: one watch event as sent.
    pub fn event_line(&self, kind: EventType) -> Bytes {
        self.lines[kind as usize]
            .get_or_init(|| {
                let mut line = Vec::with_capacity(self.json.len() + 32);
                line.extend_from_slice(b"{\"type\":\"");
                line.extend_from_slice(kind.as_str().as_bytes());
                line.extend_from_slice(b"\",\"object\":");
                line.extend_from_slice(&self.json);
                line.extend_from_slice(b"}\n");
                Bytes::from(line)
            })
            .clone()
    }

    /// The object parsed.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created (or, for a filtered watch, came into its view).
    Added,
    /// Changed.
    Modified,
    /// Deleted (or left a filtered watch's view).
    Deleted,
}

impl EventType {
    /// The watch event's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the ring.
#[derive(Debug)]
struct CachedEvent {
    kind: EventType,
    revision: Revision,
    object: Arc<CachedObject>,
    prev: Option<Arc<CachedObject>>,
}

/// What a client watch receives.
#[derive(Clone, Debug)]
pub enum WatchItem {
    /// A change, already adjusted to the watch's filter.
    Event(EventType, Arc<CachedObject>),
    /// Every change up to this revision has been sent.
    Bookmark(Revision),
    /// A streaming list's initial events are all sent: they are the state at
    /// this revision, and every later change follows.
    InitialEventsEnd(Revision),
}

/// What a watch sends before the changes (Kubernetes' `sendInitialEvents`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialEvents {
    /// Not asked: without a revision the current objects as ADDED, with one
    /// every change after it.
    #[default]
    Unset,
    /// `true` (a streaming list): the objects at a revision not older than
    /// the one asked for, as ADDED, then [`WatchItem::InitialEventsEnd`] at
    /// that revision, then every change after it.
    Send,
    /// `false`: only the changes, from now when no revision is asked for.
    Skip,
}

/// Which objects a watch or list wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only objects whose labels match.
    pub labels: Option<Selector>,
    /// Only objects whose fields match.
    pub fields: Option<FieldSelector>,
}

impl Filter {
    /// Whether the object passes.
    pub fn matches(&self, object: &CachedObject) -> bool {
        if let Some(namespace) = &self.namespace
            && &object.namespace != namespace
        {
            return false;
        }
        if let Some(labels) = &self.labels
            && !labels.matches(&object.labels)
        {
            return false;
        }
        if let Some(fields) = &self.fields
            && !fields.matches(|field| match field {
                "metadata.name" => Some(object.name.clone()),
                "metadata.namespace" => Some(object.namespace.clone()),
                other => object.fields.get(other).cloned(),
            })
        {
            return false;
        }
        true
    }
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The revision is older than the ring holds.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision a watch may start from.
        oldest: Revision,
    },
    /// The cache did not reach the revision in time.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLarge {
        /// The revision asked for.
        requested: Revision,
        /// The cache's revision.
        current: Revision,
    },
    /// The server is shutting down.
    #[error("the watch cache is stopped")]
    Stopped,
}

/// A started client watch: the events to send first, then the live queue.
#[derive(Debug)]
pub struct Watch {
    /// Events to send before anything from `live` (initial ADDEDs or the replay).
    pub initial: Vec<WatchItem>,
    /// Live events; closed when the watcher is cut off.
    pub live: mpsc::Receiver<WatchItem>,
}

struct Watcher {
    filter: Filter,
    queue: mpsc::Sender<WatchItem>,
}

#[derive(Default)]
struct State {
    /// The revision the cache has seen everything up to.
    revision: Revision,
    /// The ring holds every event after this revision.
    oldest: Revision,
    ready: bool,
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<CachedEvent>,
    watchers: Vec<Watcher>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Watchers cut off for falling behind.
    pub slow_watchers_dropped: AtomicU64,
    /// Times the cache relisted from the store.
    pub relists: AtomicU64,
}

/// The cache of one resource.
pub struct WatchCache {
    prefix: String,
    selectable: Vec<String>,
    capacity: usize,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    changed: Notify,
    cancel: CancellationToken,
    /// Counters for metrics.
    pub stats: CacheStats,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl WatchCache {
    /// Starts caching the keys under `prefix`; `selectable` names the fields
    /// field selectors may use beyond name and namespace.
    pub fn start(
        store: Arc<dyn Store>,
        prefix: String,
        selectable: Vec<String>,
        capacity: usize,
        bookmark_interval: Duration,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let cache = Arc::new(WatchCache {
            prefix,
            selectable,
            capacity: capacity.max(16),
            store,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            cancel,
            stats: CacheStats::default(),
        });
        let runner = cache.clone();
        tokio::spawn(async move { runner.run(bookmark_interval).await });
        cache
    }

    /// Stops the cache; its watchers' queues close.
    pub fn stop(&self) {
        self.cancel.cancel();
        self.lock().watchers.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision the cache has seen everything up to (0 before the first list).
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// Whether the first list has arrived.
    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// How many objects, ring events and watchers the cache holds.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (
            state.objects.len(),
            state.events.len(),
            state.watchers.len(),
        )
    }

    /// Waits until the cache has seen everything up to `revision` (and its first
    /// list); false if that takes longer than `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let state = self.lock();
                if state.ready && state.revision >= revision {
                    return true;
                }
            }
            if self.cancel.is_cancelled()
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return false;
            }
        }
    }

    /// The objects passing `filter`, in key order, and the revision they are at;
    /// `None` as soon as more than `max` objects pass: a list too large to answer
    /// is refused without being gathered first.
    pub fn list_at_most(
        &self,
        filter: &Filter,
        max: usize,
    ) -> Option<(Vec<Arc<CachedObject>>, Revision)> {
        let state = self.lock();
        let mut items = Vec::new();
        for object in state.objects.values().filter(|o| filter.matches(o)) {
            if items.len() == max {
                return None;
            }
            items.push(object.clone());
        }
        Some((items, state.revision))
    }

    /// At most `limit` objects passing `filter` whose keys come after `after`
    /// (from the first key without it), in key order: one page of a walk over
    /// the cache that stays valid while objects come and go.
    pub fn list_page(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<CachedObject>> {
        use std::ops::Bound;
        let state = self.lock();
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        state
            .objects
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, object)| object)
            .filter(|o| filter.matches(o))
            .take(limit)
            .cloned()
            .collect()
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.lock().objects.get(key).cloned()
    }

    /// Starts a client watch. Without `from`, the current objects come first as
    /// ADDED events; with it, every event after it.
    pub async fn watch(&self, from: Option<Revision>, filter: Filter) -> Result<Watch, WatchError> {
        self.watch_with(from, InitialEvents::Unset, filter).await
    }

    /// The store's latest revision: a watch that must start from a state at
    /// least this fresh (a streaming list without a resourceVersion) waits for it.
    pub async fn store_revision(&self) -> store::Result<Revision> {
        self.store.current_revision().await
    }

    /// Starts a client watch from `from` (none: any recent state) sending
    /// `initial` first. The initial events are taken and the watcher joins
    /// the fan-out under one lock, so nothing is missed or sent twice between
    /// them.
    pub async fn watch_with(
        &self,
        from: Option<Revision>,
        initial: InitialEvents,
        filter: Filter,
    ) -> Result<Watch, WatchError> {
        let wanted = from.unwrap_or(0);
        if !self.wait_for(wanted, Duration::from_secs(3)).await {
            if self.cancel.is_cancelled() {
                return Err(WatchError::Stopped);
            }
            return Err(WatchError::TooLarge {
                requested: wanted,
                current: self.revision(),
            });
        }
        let mut state = self.lock();
        // A stopped cache clears its watchers once; one registered after that would
        // never hear anything again (nor end), so refuse it under the same lock.
        if self.cancel.is_cancelled() {
            return Err(WatchError::Stopped);
        }
        let (queue, live) = mpsc::channel(WATCHER_QUEUE);
        let initial = match (initial, from) {
            // Not older than `from`: the cache's state now, which has waited for it.
            (InitialEvents::Send, _) => {
                let mut items: Vec<WatchItem> = state
                    .objects
                    .values()
                    .filter(|o| filter.matches(o))
                    .map(|o| WatchItem::Event(EventType::Added, o.clone()))
                    .collect();
                items.push(WatchItem::InitialEventsEnd(state.revision));
                items
            }
            (InitialEvents::Skip, None) => Vec::new(),
            (InitialEvents::Unset, None) => state
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .map(|o| WatchItem::Event(EventType::Added, o.clone()))
                .collect(),
            (_, Some(from)) => {
                if from < state.oldest {
                    return Err(WatchError::Gone {
                        requested: from,
                        oldest: state.oldest,
                    });
                }
                state
                    .events
                    .iter()
                    .filter(|e| e.revision > from)
                    .filter_map(|e| adjust(e, &filter))
                    .collect()
            }
        };
        state.watchers.push(Watcher { filter, queue });
        Ok(Watch { initial, live })
    }

    async fn run(self: Arc<Self>, bookmark_interval: Duration) {
        self.follow(bookmark_interval).await;
        // Stopped: end every client watch, so their connections close.
        self.lock().watchers.clear();
    }

    async fn follow(&self, bookmark_interval: Duration) {
        let mut backoff = Duration::from_millis(100);
        while !self.cancel.is_cancelled() {
            match self.sync(bookmark_interval).await {
                Ok(()) => return,
                Err(error) => {
                    warn!(prefix = %self.prefix, %error, "watch cache lost its store watch; relisting");
                    self.stats.relists.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Lists, then follows the store watch until it fails or the cache stops.
    async fn sync(&self, bookmark_interval: Duration) -> store::Result<()> {
        let mut objects = BTreeMap::new();
        let mut token = None;
        let mut revision = None;
        loop {
            let page = self
                .store
                .list(
                    &self.prefix,
                    ListOptions {
                        revision,
                        limit: Some(10_000),
                        continue_token: token.take(),
                    },
                )
                .await?;
            for kv in &page.items {
                if let Some(object) = CachedObject::from_kv(kv, kv.mod_revision, &self.selectable) {
                    objects.insert(kv.key.clone(), Arc::new(object));
                }
            }
            revision = Some(page.revision);
            match page.continue_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        let revision = revision.unwrap_or(0);
        let mut stream = self.store.watch(&self.prefix, revision).await?;
        {
            let mut state = self.lock();
            // Watchers of the old view cannot be continued across a relist.
            state.watchers.clear();
            state.events.clear();
            state.objects = objects;
            state.revision = revision;
            state.oldest = revision;
            state.ready = true;
        }
        self.changed.notify_waiters();
        debug!(prefix = %self.prefix, revision, "watch cache synced");
        let mut bookmarks = tokio::time::interval(bookmark_interval);
        bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                _ = bookmarks.tick() => self.bookmark(),
                item = stream.next() => match item {
                    Some(Ok(event)) => self.apply(event),
                    Some(Err(error)) => return Err(error),
                    None => return Err(store::Error::Backend("the store watch ended".to_owned())),
                },
            }
        }
    }

    fn bookmark(&self) {
        let state = self.lock();
        let item = WatchItem::Bookmark(state.revision);
        for watcher in &state.watchers {
            // A full queue skips a bookmark; the next one carries the news.
            let _ = watcher.queue.try_send(item.clone());
        }
    }

    fn apply(&self, event: Event) {
        let mut state = self.lock();
        let cached = match event {
            Event::Progress { revision } => {
                state.revision = state.revision.max(revision);
                drop(state);
                self.changed.notify_waiters();
                return;
            }
            Event::Created(kv) => self.cached(EventType::Added, &kv, kv.mod_revision, None),
            Event::Updated { kv, prev } => {
                let prev = state.objects.get(&prev.key).cloned();
                self.cached(EventType::Modified, &kv, kv.mod_revision, prev)
            }
            Event::Deleted { revision, prev } => {
                let last = state.objects.get(&prev.key).cloned();
                self.cached(EventType::Deleted, &prev, revision, last)
            }
        };
        let Some(cached) = cached else {
            warn!(prefix = %self.prefix, "the store holds an object that is not JSON; skipped");
            return;
        };
        state.revision = cached.revision;
        match cached.kind {
            EventType::Deleted => {
                state.objects.remove(&cached.object.key);
            }
            _ => {
                state
                    .objects
                    .insert(cached.object.key.clone(), cached.object.clone());
            }
        }
        // Fan out: a watcher whose queue is full is cut off, never waited for.
        let mut dropped = 0;
        state.watchers.retain(|watcher| {
            let Some(item) = adjust(&cached, &watcher.filter) else {
                return !watcher.queue.is_closed();
            };
            match watcher.queue.try_send(item) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if dropped > 0 {
            self.stats
                .slow_watchers_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            debug!(prefix = %self.prefix, dropped, "cut off watchers that fell behind");
        }
        state.events.push_back(cached);
        while state.events.len() > self.capacity {
            if let Some(old) = state.events.pop_front() {
                state.oldest = old.revision;
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn cached(
        &self,
        kind: EventType,
        kv: &KeyValue,
        revision: Revision,
        prev: Option<Arc<CachedObject>>,
    ) -> Option<CachedEvent> {
        let object = CachedObject::from_kv(kv, revision, &self.selectable)?;
        Some(CachedEvent {
            kind,
            revision,
            object: Arc::new(object),
            prev,
        })
    }
}

/// The event as a filtered watch sees it: an object that starts matching is
/// ADDED, one that stops matching is DELETED.
fn adjust(event: &CachedEvent, filter: &Filter) -> Option<WatchItem> {
    let now = filter.matches(&event.object);
    let before = event.prev.as_ref().is_some_and(|p| filter.matches(p));
    let kind = match event.kind {
        EventType::Added if now => EventType::Added,
        EventType::Modified if now && before => EventType::Modified,
        EventType::Modified if now => EventType::Added,
        EventType::Modified if before => EventType::Deleted,
        EventType::Deleted if now || before => EventType::Deleted,
        _ => return None,
    };
    Some(WatchItem::Event(kind, event.object.clone()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{EmbeddedOptions, EmbeddedStore};
    use serde_json::json;

    fn task(name: &str, node: &str, app: &str) -> Bytes {
        object::to_stored(&json!({
            "apiVersion": "loom.dev/v1", "kind": "Task",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": node}
        }))
    }

    async fn setup() -> (tempfile::TempDir, Arc<dyn Store>, Arc<WatchCache>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.db");
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap());
        let cache = WatchCache::start(
            store.clone(),
            "loom.dev/tasks/".into(),
            vec!["spec.nodeName".into()],
            8,
            Duration::from_millis(50),
            CancellationToken::new(),
        );
        assert!(cache.wait_for(0, Duration::from_secs(5)).await);
        (dir, store, cache)
    }

    async fn next(watch: &mut Watch) -> WatchItem {
        if !watch.initial.is_empty() {
            return watch.initial.remove(0);
        }
        loop {
            let item = tokio::time::timeout(Duration::from_secs(5), watch.live.recv())
                .await
                .unwrap()
                .unwrap();
            if !matches!(item, WatchItem::Bookmark(_)) {
                return item;
            }
        }
    }

    fn kind_and_name(item: &WatchItem) -> (EventType, String) {
        match item {
            WatchItem::Event(kind, object) => (*kind, object.name.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_streaming_list_sends_the_state_its_revision_then_every_later_change_once() {
        let (_dir, store, cache) = setup().await;
        for i in 0..5 {
            let key = format!("loom.dev/tasks/default/t{i}");
            store
                .create(&key, task(&format!("t{i}"), "", "x"))
                .await
                .unwrap();
        }
        // Writes go on while the watch starts.
        let writing = store.clone();
        let writer = tokio::spawn(async move {
            for i in 5..60 {
                let key = format!("loom.dev/tasks/default/t{i}");
                writing
                    .create(&key, task(&format!("t{i}"), "", "x"))
                    .await
                    .unwrap();
            }
        });
        tokio::task::yield_now().await;
        let mut watch = cache
            .watch_with(None, InitialEvents::Send, Filter::default())
            .await
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut items = std::mem::take(&mut watch.initial).into_iter();
        let end = loop {
            match items.next().unwrap() {
                WatchItem::Event(EventType::Added, object) => {
                    assert!(seen.insert(object.name.clone()))
                }
                WatchItem::InitialEventsEnd(revision) => break revision,
                other => panic!("unexpected {other:?} among the initial events"),
            }
        };
        assert!(items.next().is_none(), "the end bookmark comes last");
        assert!(seen.len() >= 5);
        writer.await.unwrap();
        while seen.len() < 60 {
            match next(&mut watch).await {
                WatchItem::Event(EventType::Added, object) => {
                    assert!(
                        object.revision > end,
                        "{} is older than the end bookmark",
                        object.name
                    );
                    assert!(seen.insert(object.name.clone()), "{} twice", object.name);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn without_initial_events_a_watch_starts_from_now() {
        let (_dir, store, cache) = setup().await;
        store
            .create("loom.dev/tasks/default/old", task("old", "", "x"))
            .await
            .unwrap();
        let head = store.current_revision().await.unwrap();
        assert!(cache.wait_for(head, Duration::from_secs(5)).await);
        let mut watch = cache
            .watch_with(None, InitialEvents::Skip, Filter::default())
            .await
            .unwrap();
        assert!(watch.initial.is_empty());
        store
            .create("loom.dev/tasks/default/new", task("new", "", "x"))
            .await
            .unwrap();
        assert_eq!(
            kind_and_name(&next(&mut watch).await),
            (EventType::Added, "new".into())
        );
    }

    #[tokio::test]
    async fn filtered_watches_see_objects_enter_and_leave() {
        let (_dir, store, cache) = setup().await;
        let filter = Filter {
            fields: Some(FieldSelector::parse("spec.nodeName=n1").unwrap()),
            ..Default::default()
        };
        let mut watch = cache
            .watch(Some(store.current_revision().await.unwrap()), filter)
            .await
            .unwrap();
        let a = store
            .create("loom.dev/tasks/default/a", task("a", "", "x"))
            .await
            .unwrap();
        let a = store
            .update(
                "loom.dev/tasks/default/a",
                task("a", "n1", "x"),
                a.mod_revision,
            )
            .await
            .unwrap();
        let a = store
            .update(
                "loom.dev/tasks/default/a",
                task("a", "n1", "y"),
                a.mod_revision,
            )
            .await
            .unwrap();
        store
            .update(
                "loom.dev/tasks/default/a",
                task("a", "n2", "y"),
                a.mod_revision,
            )
            .await
            .unwrap();
        assert_eq!(
            kind_and_name(&next(&mut watch).await),
            (EventType::Added, "a".into())
        );
        assert_eq!(
            kind_and_name(&next(&mut watch).await),
            (EventType::Modified, "a".into())
        );
        assert_eq!(
            kind_and_name(&next(&mut watch).await),
            (EventType::Deleted, "a".into())
        );
    }

    #[tokio::test]
    async fn resume_replays_the_ring_and_too_old_is_gone() {
        let (_dir, store, cache) = setup().await;
        let start = store.current_revision().await.unwrap();
        for i in 0..20 {
            store
                .create(
                    &format!("loom.dev/tasks/default/t{i}"),
                    task(&format!("t{i}"), "", "x"),
                )
                .await
                .unwrap();
        }
        let head = store.current_revision().await.unwrap();
        assert!(cache.wait_for(head, Duration::from_secs(5)).await);
        // The ring holds the last 8 events.
        assert!(matches!(
            cache.watch(Some(start), Filter::default()).await,
            Err(WatchError::Gone { .. })
        ));
        let mut watch = cache
            .watch(Some(head - 3), Filter::default())
            .await
            .unwrap();
        let names: Vec<_> = (0..3)
            .map(|_| watch.initial.remove(0))
            .map(|i| kind_and_name(&i).1)
            .collect();
        assert_eq!(names, ["t17", "t18", "t19"]);
        // Without a revision: everything as ADDED.
        let all = cache.watch(None, Filter::default()).await.unwrap();
        assert_eq!(all.initial.len(), 20);
    }

    #[tokio::test]
    async fn a_watch_from_a_newer_store_revision_waits_for_progress() {
        let (_dir, store, cache) = setup().await;
        // A write elsewhere moves the store on; the cache learns it by progress.
        store
            .create("loom.dev/jobs/default/j", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let head = store.current_revision().await.unwrap();
        let mut watch = cache.watch(Some(head), Filter::default()).await.unwrap();
        store
            .create("loom.dev/tasks/default/a", task("a", "", "x"))
            .await
            .unwrap();
        assert_eq!(
            kind_and_name(&next(&mut watch).await),
            (EventType::Added, "a".into())
        );
    }

    #[tokio::test]
    async fn a_stopped_cache_refuses_new_watches_and_ends_old_ones() {
        let (_dir, _store, cache) = setup().await;
        let mut before = cache.watch(None, Filter::default()).await.unwrap();
        cache.cancel.cancel();
        assert!(matches!(
            cache.watch(None, Filter::default()).await,
            Err(WatchError::Stopped)
        ));
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while before.live.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "a watch of a stopped cache must end");
    }

    #[tokio::test]
    async fn slow_watchers_are_cut_off_without_stalling_others() {
        let (_dir, store, cache) = setup().await;
        let from = store.current_revision().await.unwrap();
        let slow = cache.watch(Some(from), Filter::default()).await.unwrap();
        let mut fast = cache.watch(Some(from), Filter::default()).await.unwrap();
        let total = WATCHER_QUEUE + 10;
        let reader = tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                if let WatchItem::Event(..) = next(&mut fast).await {
                    seen += 1;
                }
            }
            seen
        });
        for i in 0..total {
            store
                .create(&format!("loom.dev/tasks/default/s{i}"), task("s", "", "x"))
                .await
                .unwrap();
        }
        assert_eq!(reader.await.unwrap(), total);
        let mut slow = slow;
        let mut received = 0;
        while let Some(item) = slow.live.recv().await {
            if let WatchItem::Event(..) = item {
                received += 1;
            }
        }
        assert!(
            received <= WATCHER_QUEUE,
            "the slow watcher's queue is bounded"
        );
        assert!(cache.stats.slow_watchers_dropped.load(Ordering::Relaxed) >= 1);
    }
}
