//! The reflector: a read-mostly in-memory cache of one kind fed by a watcher, with
//! lookups by key, by label and by index, and an `Informer` that lets many
//! controllers in one process share one watch and one cache per kind.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use api_types::Selector;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Object};
use crate::watcher::{self, Event};

/// Names an object: its namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace, or "".
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of an object.
    pub fn of<K: Object>(object: &K) -> Self {
        let meta = object.meta();
        ObjectKey::new(&meta.namespace, &meta.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Maps an object to the values it is indexed under.
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct State<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    indexes: HashMap<String, HashMap<String, HashSet<ObjectKey>>>,
    /// Objects of a relist in progress.
    relisting: Option<HashMap<ObjectKey, Arc<K>>>,
}

struct Inner<K> {
    state: RwLock<State<K>>,
    indexers: Vec<(String, IndexFn<K>)>,
    keep_managed_fields: bool,
    ready: watch::Sender<bool>,
    /// Counts the events applied, so that waiters wake on a change instead of polling.
    applied: watch::Sender<u64>,
}

/// A read handle on the cache; cheap to clone and share.
pub struct Store<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Builds a store with indexes.
pub struct StoreBuilder<K> {
    indexers: Vec<(String, IndexFn<K>)>,
    keep_managed_fields: bool,
}

impl<K> fmt::Debug for StoreBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBuilder").finish_non_exhaustive()
    }
}

impl<K: Object> Default for StoreBuilder<K> {
    fn default() -> Self {
        StoreBuilder {
            indexers: Vec::new(),
            keep_managed_fields: false,
        }
    }
}

impl<K: Object> StoreBuilder<K> {
    /// Adds an index: `by_index(name, value)` finds the objects `f` maps to `value`.
    pub fn index(
        mut self,
        name: &str,
        f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.indexers.push((name.to_owned(), Arc::new(f)));
        self
    }

    /// Keeps `metadata.managedFields` in cached objects (dropped by default: they
    /// are often most of an object's memory, and controllers rarely read them).
    pub fn keep_managed_fields(mut self) -> Self {
        self.keep_managed_fields = true;
        self
    }

    /// The store and the writer that feeds it.
    pub fn build(self) -> (Store<K>, Writer<K>) {
        let (ready, _) = watch::channel(false);
        let (applied, _) = watch::channel(0);
        let store = Store {
            inner: Arc::new(Inner {
                state: RwLock::new(State {
                    objects: HashMap::new(),
                    indexes: HashMap::new(),
                    relisting: None,
                }),
                indexers: self.indexers,
                keep_managed_fields: self.keep_managed_fields,
                ready,
                applied,
            }),
        };
        (store.clone(), Writer { store })
    }
}

impl<K: Object> Store<K> {
    /// A store without indexes.
    pub fn new() -> (Store<K>, Writer<K>) {
        StoreBuilder::default().build()
    }

    fn read(&self) -> RwLockReadGuard<'_, State<K>> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<K>> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    /// Every object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The number of objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose labels match.
    pub fn by_label(&self, selector: &Selector) -> Vec<Arc<K>> {
        self.read()
            .objects
            .values()
            .filter(|o| selector.matches(&o.meta().labels))
            .cloned()
            .collect()
    }

    /// Objects an index maps to `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let state = self.read();
        state
            .indexes
            .get(index)
            .and_then(|values| values.get(value))
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| state.objects.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the first full list has arrived.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Waits for the first full list.
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Waits until `test` holds for the object `key` as cached (`None`: not
    /// cached), checking now and after every change the watch brings, for at most
    /// `timeout`. Returns the object it held for, or `Elapsed` on timeout.
    ///
    /// For a writer waiting until its own write has reached the cache.
    pub async fn wait_for(
        &self,
        key: &ObjectKey,
        test: impl Fn(Option<&K>) -> bool,
        timeout: std::time::Duration,
    ) -> Result<Option<Arc<K>>, tokio::time::error::Elapsed> {
        let mut applied = self.inner.applied.subscribe();
        let check = async {
            loop {
                // Marked seen before reading, so a change after the read wakes us.
                applied.borrow_and_update();
                let object = self.get(key);
                if test(object.as_deref()) {
                    return object;
                }
                if applied.changed().await.is_err() {
                    // No writer any more: nothing will change.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, check).await
    }
}

/// Feeds a store from watcher events.
pub struct Writer<K> {
    store: Store<K>,
}

impl<K> fmt::Debug for Writer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl<K: Object> Writer<K> {
    /// The store this writer feeds.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    fn cached(&self, object: &K) -> Arc<K> {
        let mut object = object.clone();
        if !self.store.inner.keep_managed_fields {
            object.meta_mut().managed_fields = Vec::new();
        }
        Arc::new(object)
    }

    /// Applies one event; returns the changes it made, for subscribers.
    pub fn apply(&self, event: &Event<K>) -> Vec<Change<K>> {
        let indexers = &self.store.inner.indexers;
        let mut state = self.store.write();
        let mut changes = Vec::new();
        match event {
            Event::Init => state.relisting = Some(HashMap::new()),
            Event::InitApply(object) => {
                let key = ObjectKey::of(object);
                match state.relisting.as_mut() {
                    Some(buffer) => {
                        buffer.insert(key, self.cached(object));
                    }
                    None => {
                        let object = self.cached(object);
                        insert(&mut state, indexers, key, object.clone());
                        changes.push(Change::Applied(object));
                    }
                }
            }
            Event::InitDone => {
                let fresh = state.relisting.take().unwrap_or_default();
                // What vanished while the watch was down was deleted.
                let gone: Vec<Arc<K>> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| !fresh.contains_key(k))
                    .map(|(_, o)| o.clone())
                    .collect();
                changes.extend(gone.into_iter().map(Change::Deleted));
                state.objects.clear();
                state.indexes.clear();
                for (key, object) in fresh {
                    insert(&mut state, indexers, key, object.clone());
                    changes.push(Change::Applied(object));
                }
                drop(state);
                self.store.inner.ready.send_replace(true);
                self.store
                    .inner
                    .applied
                    .send_modify(|n| *n = n.wrapping_add(1));
                return changes;
            }
            Event::Apply(object) => {
                let object = self.cached(object);
                insert(
                    &mut state,
                    indexers,
                    ObjectKey::of(&*object),
                    object.clone(),
                );
                changes.push(Change::Applied(object));
            }
            Event::Delete(object) => {
                let key = ObjectKey::of(object);
                remove(&mut state, indexers, &key);
                changes.push(Change::Deleted(Arc::new(object.clone())));
            }
        }
        drop(state);
        if !changes.is_empty() {
            self.store
                .inner
                .applied
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        changes
    }
}

fn insert<K: Object>(
    state: &mut State<K>,
    indexers: &[(String, IndexFn<K>)],
    key: ObjectKey,
    object: Arc<K>,
) {
    remove(state, indexers, &key);
    for (name, index) in indexers {
        for value in index(&object) {
            state
                .indexes
                .entry(name.clone())
                .or_default()
                .entry(value)
                .or_default()
                .insert(key.clone());
        }
    }
    state.objects.insert(key, object);
}

fn remove<K: Object>(state: &mut State<K>, indexers: &[(String, IndexFn<K>)], key: &ObjectKey) {
    let Some(old) = state.objects.remove(key) else {
        return;
    };
    for (name, index) in indexers {
        if let Some(values) = state.indexes.get_mut(name) {
            for value in index(&old) {
                if let Some(keys) = values.get_mut(&value) {
                    keys.remove(key);
                    if keys.is_empty() {
                        values.remove(&value);
                    }
                }
            }
        }
    }
}

/// A change to the cache, as subscribers see it.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or changed (also every object of a relist).
    Applied(Arc<K>),
    /// Deleted.
    Deleted(Arc<K>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
        }
    }
}

impl<K: Object> Change<K> {
    /// The object changed.
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

/// One watch and one cache of a kind, shared by every controller in a process
/// that subscribes to it.
pub struct Informer<K> {
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
    stop: CancellationToken,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            store: self.store.clone(),
            changes: self.changes.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<K> fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informer").finish_non_exhaustive()
    }
}

/// Changes a subscriber may fall behind by before it must resync from the store.
const CHANGE_BUFFER: usize = 16_384;

impl<K: Object> Informer<K> {
    /// Starts watching `api` into a new store.
    pub fn start(api: Api<K>, config: watcher::Config) -> Self {
        Self::start_with(api, config, StoreBuilder::default())
    }

    /// Starts watching `api` into a store with indexes.
    pub fn start_with(api: Api<K>, config: watcher::Config, builder: StoreBuilder<K>) -> Self {
        let (store, writer) = builder.build();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let stop = CancellationToken::new();
        let informer = Informer {
            store,
            changes: changes.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            let events = watcher::watcher(api, config);
            let mut events = std::pin::pin!(events);
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.next() => event,
                };
                match event {
                    Some(Ok(event)) => {
                        for change in writer.apply(&event) {
                            // Nobody subscribed is fine.
                            let _ = changes.send(change);
                        }
                    }
                    Some(Err(error)) => tracing::warn!(%error, "watch error; the watcher retries"),
                    None => return,
                }
            }
        });
        informer
    }

    /// The shared cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Changes from now on. A subscriber that falls far behind gets a `Lagged`
    /// error and should treat every object in the store as changed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }

    /// Stops the watch.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::{Task, TaskSpec};

    fn task(name: &str, node: &str) -> Task {
        let mut task = Task::new(name, TaskSpec::default());
        task.metadata.namespace = "default".into();
        task.metadata.labels.insert("app".into(), name.into());
        task.spec.node_name = node.to_owned();
        task
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_wait_wakes_on_the_change_it_waits_for() {
        let (store, writer) = Store::<Task>::new();
        let key = ObjectKey::new("default", "a");
        let on_n2 = |t: Option<&Task>| t.is_some_and(|t| t.spec.node_name == "n2");
        let timeout = std::time::Duration::from_secs(5);
        writer.apply(&Event::Apply(task("a", "n1")));
        assert!(store.wait_for(&key, on_n2, timeout).await.is_err());
        let waiting = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.wait_for(&key, on_n2, timeout).await })
        };
        tokio::task::yield_now().await;
        writer.apply(&Event::Apply(task("b", "n2")));
        writer.apply(&Event::Apply(task("a", "n2")));
        let seen = waiting.await.unwrap().unwrap().unwrap();
        assert_eq!(seen.spec.node_name, "n2");
        assert!(
            store
                .wait_for(&key, |t| t.is_some(), std::time::Duration::ZERO)
                .await
                .is_ok(),
            "met at once, without waiting"
        );
    }

    #[test]
    fn indexes_follow_changes_and_relists_replace_the_state() {
        let (store, writer) = StoreBuilder::default()
            .index("node", |t: &Task| {
                Some(t.spec.node_name.clone())
                    .filter(|n| !n.is_empty())
                    .into_iter()
                    .collect()
            })
            .build();
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(task("a", "n1")));
        assert!(!store.is_ready());
        assert!(store.is_empty(), "a relist shows only once complete");
        writer.apply(&Event::InitDone);
        assert!(store.is_ready());
        writer.apply(&Event::Apply(task("b", "n1")));
        assert_eq!(store.by_index("node", "n1").len(), 2);
        writer.apply(&Event::Apply(task("b", "n2")));
        assert_eq!(store.by_index("node", "n1").len(), 1);
        assert_eq!(store.by_index("node", "n2").len(), 1);
        assert_eq!(store.by_label(&Selector::parse("app=b").unwrap()).len(), 1);
        // A relist without `a`: it was deleted while the watch was down.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(task("b", "n2")));
        let changes = writer.apply(&Event::InitDone);
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Deleted(o) if o.metadata.name == "a"))
        );
        assert!(store.get(&ObjectKey::new("default", "a")).is_none());
        assert!(store.by_index("node", "n1").is_empty());
        writer.apply(&Event::Delete(task("b", "n2")));
        assert!(store.is_empty() && store.by_index("node", "n2").is_empty());
    }
}
