//! The controller runtime: watch a primary kind (and what it owns or maps to it),
//! queue object keys with de-duplication, reconcile each key with bounded
//! concurrency and never twice at once, requeue with per-key exponential backoff
//! on error or when asked, and stop gracefully.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use api_types::Resource;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::api::Object;
use crate::reflector::{Informer, ObjectKey, Store};

/// What to do after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `after`, whatever happens meanwhile.
    pub fn requeue(after: Duration) -> Self {
        Action {
            requeue_after: Some(after),
        }
    }

    /// Reconcile again only when something changes.
    pub fn await_change() -> Self {
        Action {
            requeue_after: None,
        }
    }

    /// The requested delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// The controller's metrics, registered under `loom_controller_*` with a
/// `controller` label in the caller's registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that failed.
    pub errors: Counter,
    /// Keys waiting (ready or delayed).
    pub queue_depth: Gauge,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            errors: Counter::default(),
            queue_depth: Gauge::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        }
    }
}

impl Metrics {
    /// Registers the metrics of controller `name`.
    pub fn register(&self, registry: &mut Registry, name: &str) {
        let sub = registry.sub_registry_with_label(("controller".into(), name.to_owned().into()));
        sub.register(
            "loom_controller_reconciles",
            "Reconciles run",
            self.reconciles.clone(),
        );
        sub.register(
            "loom_controller_reconcile_errors",
            "Reconciles that failed",
            self.errors.clone(),
        );
        sub.register(
            "loom_controller_queue_depth",
            "Keys waiting to be reconciled",
            self.queue_depth.clone(),
        );
        sub.register(
            "loom_controller_reconcile_duration_seconds",
            "Reconcile duration",
            self.duration.clone(),
        );
    }
}

/// How a controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// At most this many reconciles at once (never two of one key).
    pub concurrency: usize,
    /// The first retry delay after an error; doubles per consecutive failure.
    pub min_backoff: Duration,
    /// The longest retry delay.
    pub max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 8,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        }
    }
}

type Trigger = Box<dyn FnOnce(mpsc::UnboundedSender<ObjectKey>, CancellationToken) + Send>;

/// A controller of kind `K`.
pub struct Controller<K> {
    primary: Informer<K>,
    triggers: Vec<Trigger>,
    config: Config,
    metrics: Metrics,
}

impl<K> std::fmt::Debug for Controller<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Forwards an informer's changes as keys (all of the store's objects after a lag).
fn forward<C: Object>(
    informer: &Informer<C>,
    map: impl Fn(&C) -> Vec<ObjectKey> + Send + 'static,
) -> Trigger {
    let mut changes = informer.subscribe();
    let store = informer.store();
    Box::new(move |keys, stop| {
        tokio::spawn(async move {
            // Everything already in the cache needs a first look too.
            store.wait_ready().await;
            for object in store.list() {
                for key in map(&object) {
                    let _ = keys.send(key);
                }
            }
            loop {
                let change = tokio::select! {
                    _ = stop.cancelled() => return,
                    change = changes.recv() => change,
                };
                match change {
                    Ok(change) => {
                        for key in map(change.object()) {
                            if keys.send(key).is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for object in store.list() {
                            for key in map(&object) {
                                let _ = keys.send(key);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    })
}

impl<K: Object + Resource> Controller<K> {
    /// A controller of the objects an informer (possibly shared) watches.
    pub fn new(primary: &Informer<K>, config: Config) -> Self {
        let triggers = vec![forward(primary, |o: &K| vec![ObjectKey::of(o)])];
        Controller {
            primary: primary.clone(),
            triggers,
            config,
            metrics: Metrics::default(),
        }
    }

    /// Also reconciles the owner (of kind `K`) of every change to a `C`.
    pub fn owns<C: Object>(mut self, children: &Informer<C>) -> Self {
        let api_version = K::api_version();
        self.triggers.push(forward(children, move |child: &C| {
            child
                .meta()
                .owner_references
                .iter()
                .filter(|r| r.kind == K::KIND && r.api_version == api_version)
                .map(|r| {
                    ObjectKey::new(
                        if K::NAMESPACED {
                            &child.meta().namespace
                        } else {
                            ""
                        },
                        &r.name,
                    )
                })
                .collect()
        }));
        self
    }

    /// Also reconciles the keys `map` gives for every change to an `O`.
    pub fn watches<O: Object>(
        mut self,
        others: &Informer<O>,
        map: impl Fn(&O) -> Vec<ObjectKey> + Send + 'static,
    ) -> Self {
        self.triggers.push(forward(others, map));
        self
    }

    /// The controller's metrics (register them with [`Metrics::register`]).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown`; then lets running reconciles finish and returns.
    pub async fn run<Ctx, E, R, Fut>(
        self,
        reconcile: R,
        error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
        context: Arc<Ctx>,
        shutdown: CancellationToken,
    ) where
        Ctx: Send + Sync + 'static,
        E: std::fmt::Display + Send + 'static,
        R: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let (keys, mut incoming) = mpsc::unbounded_channel();
        let triggers_stop = shutdown.child_token();
        for trigger in self.triggers {
            trigger(keys.clone(), triggers_stop.clone());
        }
        drop(keys);
        let reconcile = Arc::new(reconcile);
        let error_policy = Arc::new(error_policy);
        let store: Store<K> = self.primary.store();
        let metrics = self.metrics;
        let mut queue = Queue::new(self.config.clone());
        let (done_tx, mut done) = mpsc::unbounded_channel::<(ObjectKey, Outcome)>();
        let mut sources_open = true;
        loop {
            // Start what may start.
            while !shutdown.is_cancelled() && queue.running.len() < self.config.concurrency.max(1) {
                let Some(key) = queue.pop_ready() else { break };
                let object = store.get(&key);
                let done_tx = done_tx.clone();
                let reconcile = reconcile.clone();
                let error_policy = error_policy.clone();
                let context = context.clone();
                let metrics = metrics.clone();
                let span = info_span!("reconcile", object = %key);
                tokio::spawn(
                    async move {
                        let outcome = match object {
                            // Gone from the cache: nothing left to reconcile.
                            None => Outcome::Done(Action::await_change()),
                            Some(object) => {
                                let started = std::time::Instant::now();
                                metrics.reconciles.inc();
                                let result = reconcile(object.clone(), context.clone()).await;
                                metrics.duration.observe(started.elapsed().as_secs_f64());
                                match result {
                                    Ok(action) => Outcome::Done(action),
                                    Err(error) => {
                                        metrics.errors.inc();
                                        warn!(%error, "reconcile failed");
                                        Outcome::Failed(error_policy(object, &error, context))
                                    }
                                }
                            }
                        };
                        let _ = done_tx.send((key, outcome));
                    }
                    .instrument(span),
                );
            }
            metrics.queue_depth.set(queue.depth() as i64);
            if shutdown.is_cancelled() && queue.running.is_empty() {
                triggers_stop.cancel();
                return;
            }
            let next_delayed = queue.next_due();
            tokio::select! {
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                key = incoming.recv(), if sources_open && !shutdown.is_cancelled() => match key {
                    Some(key) => queue.trigger(key),
                    // Every source is gone (their informers stopped): nothing new comes.
                    None => sources_open = false,
                },
                Some((key, outcome)) = done.recv() => queue.finish(key, outcome),
                _ = sleep_until(next_delayed), if next_delayed.is_some() => queue.promote_due(),
            }
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// How a reconcile ended.
#[derive(Debug)]
enum Outcome {
    Done(Action),
    Failed(Action),
}

/// The work queue: ready keys (each once), delayed keys, keys running, and keys
/// that changed while running (run again right after).
#[derive(Debug)]
struct Queue {
    config: Config,
    ready: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    delayed: BTreeSet<(Instant, ObjectKey)>,
    due: HashMap<ObjectKey, Instant>,
    running: HashSet<ObjectKey>,
    dirty: HashSet<ObjectKey>,
    failures: HashMap<ObjectKey, u32>,
}

impl Queue {
    fn new(config: Config) -> Self {
        Queue {
            config,
            ready: VecDeque::new(),
            queued: HashSet::new(),
            delayed: BTreeSet::new(),
            due: HashMap::new(),
            running: HashSet::new(),
            dirty: HashSet::new(),
            failures: HashMap::new(),
        }
    }

    fn depth(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Something about `key` changed: reconcile it soon, once.
    fn trigger(&mut self, key: ObjectKey) {
        if self.running.contains(&key) {
            self.dirty.insert(key);
            return;
        }
        if let Some(at) = self.due.remove(&key) {
            self.delayed.remove(&(at, key.clone()));
        }
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    fn pop_ready(&mut self) -> Option<ObjectKey> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// Reconcile `key` at `at`, unless it is already due sooner.
    fn schedule(&mut self, key: ObjectKey, at: Instant) {
        if self.queued.contains(&key) {
            return;
        }
        if let Some(existing) = self.due.get(&key) {
            if *existing <= at {
                return;
            }
            self.delayed.remove(&(*existing, key.clone()));
        }
        self.due.insert(key.clone(), at);
        self.delayed.insert((at, key));
    }

    fn finish(&mut self, key: ObjectKey, outcome: Outcome) {
        self.running.remove(&key);
        let retry = match outcome {
            Outcome::Done(action) => {
                self.failures.remove(&key);
                action.requeue_after
            }
            Outcome::Failed(action) => {
                let failures = self.failures.entry(key.clone()).or_insert(0);
                *failures += 1;
                let backoff = self
                    .config
                    .min_backoff
                    .saturating_mul(1u32 << (*failures - 1).min(20))
                    .min(self.config.max_backoff);
                Some(
                    action
                        .requeue_after
                        .map_or(backoff, |after| after.max(backoff)),
                )
            }
        };
        if self.dirty.remove(&key) {
            self.trigger(key);
        } else if let Some(after) = retry {
            debug!(object = %key, ?after, "requeued");
            self.schedule(key, Instant::now() + after);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _)| *at)
    }

    fn promote_due(&mut self) {
        let now = Instant::now();
        while let Some((at, key)) = self.delayed.first().cloned() {
            if at > now {
                break;
            }
            self.delayed.remove(&(at, key.clone()));
            self.due.remove(&key);
            if self.queued.insert(key.clone()) {
                self.ready.push_back(key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_triggers_is_one_reconcile() {
        let mut queue = Queue::new(Config::default());
        for _ in 0..100 {
            queue.trigger(key("a"));
        }
        queue.trigger(key("b"));
        assert_eq!(queue.pop_ready(), Some(key("a")));
        assert_eq!(queue.pop_ready(), Some(key("b")));
        assert_eq!(queue.pop_ready(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_run_twice_at_once_and_a_change_while_running_runs_again() {
        let mut queue = Queue::new(Config::default());
        queue.trigger(key("a"));
        assert_eq!(queue.pop_ready(), Some(key("a")));
        queue.trigger(key("a"));
        queue.trigger(key("a"));
        assert_eq!(queue.pop_ready(), None, "running keys wait");
        queue.finish(key("a"), Outcome::Done(Action::await_change()));
        assert_eq!(
            queue.pop_ready(),
            Some(key("a")),
            "changed while running: once more"
        );
        queue.finish(key("a"), Outcome::Done(Action::await_change()));
        assert_eq!(queue.pop_ready(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_per_key_and_success_resets() {
        let config = Config {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..Config::default()
        };
        let mut queue = Queue::new(config);
        let start = Instant::now();
        let mut delays = Vec::new();
        queue.trigger(key("a"));
        for _ in 0..6 {
            let k = queue.pop_ready().unwrap();
            let before = Instant::now();
            queue.finish(k, Outcome::Failed(Action::await_change()));
            let due = queue.next_due().unwrap();
            delays.push((due - before).as_millis());
            tokio::time::advance(due - Instant::now()).await;
            queue.promote_due();
        }
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        let k = queue.pop_ready().unwrap();
        queue.finish(k, Outcome::Done(Action::requeue(Duration::from_secs(5))));
        assert_eq!((queue.next_due().unwrap() - Instant::now()).as_secs(), 5);
        assert!(Instant::now() > start);
        // A change before the requeue is due runs it now, and only once.
        queue.trigger(key("a"));
        assert_eq!(queue.next_due(), None);
        assert_eq!(queue.pop_ready(), Some(key("a")));
    }
}
