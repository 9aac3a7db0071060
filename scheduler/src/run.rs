//! The scheduling loop: keep the cache and the queue from watch events, decide for
//! the next pending task, assume the placement and bind in the background (many
//! binds in flight while decisions go on), preempt when nothing fits, and say why
//! when nothing can.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use api_types::event::{EventSource, EventType};
use api_types::well_known::REASON_PREEMPTED;
use api_types::{
    Condition, ConditionStatus, Event, Node, ObjectMeta, ObjectReference, Task, TaskPhase,
};
use chrono::Utc;
use client::reflector::{Change, Store};
use client::{Api, Client, Informer, Patch, PatchParams, PostParams, Recorder, watcher};
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::algorithm::{Algorithm, Sampling};
use crate::cache::{Cache, pending};
use crate::claims::{self, Claim};
use crate::preempt;
use crate::queue::Queue;
use crate::resources::{TaskInfo, key_of};

/// How a scheduler runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Its name: the field manager of its writes and the author of its node claims.
    pub identity: String,
    /// Binds written at once while decisions go on; as many Scheduled Events are
    /// written at once behind them.
    pub binds_in_flight: usize,
    /// Claim each node before binding to it, so that several schedulers binding at
    /// once never over-commit a node. Off only where one scheduler binds alone.
    pub claim_nodes: bool,
    /// How many feasible nodes a decision scores.
    pub sampling: Sampling,
    /// How long a preemptor waits for its victims to end before choosing again.
    pub preemption_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Unique across machines too: a scheduler ignores claims bearing its own name.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Config {
            identity: format!(
                "loom-scheduler-{random:016x}-{}",
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            binds_in_flight: 64,
            claim_nodes: true,
            sampling: Sampling::default(),
            preemption_timeout: Duration::from_secs(30),
        }
    }
}

/// The scheduler's name in Events and on rare writes (preemptions).
const FIELD_MANAGER: &str = "loom-scheduler";

/// Params of the patches made for every task (claims, Unschedulable conditions).
/// They name no field manager: tracking managed fields on each cost the API server
/// about 15 % more CPU a task in `loom-bench schedule`, and what they own
/// (`spec.nodeName`, the Scheduled condition, the claims annotation) is the
/// scheduler's by convention.
fn hot_params() -> PatchParams {
    PatchParams::default()
}

/// Decisions made before the loop lets other work run.
const DECISIONS_PER_TURN: usize = 256;

struct State {
    cache: Cache,
    queue: Queue,
    /// The Unschedulable message each waiting task was last given.
    told: HashMap<String, String>,
    /// Preemptors whose victims are on their way out, and until when they wait.
    preempting: HashMap<String, (Vec<String>, Instant)>,
}

impl State {
    fn apply_task(&mut self, change: Change<Task>) {
        match change {
            Change::Applied(task) => {
                let key = key_of(&task);
                self.cache.upsert_task(task.clone());
                if pending(&task) {
                    if !self.cache.is_assumed(&key) {
                        self.queue.upsert(task);
                    }
                } else {
                    self.queue.remove(&key);
                    self.told.remove(&key);
                    self.preempting.remove(&key);
                }
            }
            Change::Deleted(task) => {
                let key = key_of(&task);
                self.cache.remove_task(&task);
                self.queue.remove(&key);
                self.told.remove(&key);
                self.preempting.remove(&key);
            }
        }
    }

    fn apply_node(&mut self, change: Change<Node>, now: Instant) {
        match change {
            Change::Applied(node) => self.cache.upsert_node(node, now),
            Change::Deleted(node) => self.cache.remove_node(&node.metadata.name),
        }
    }

    /// Takes every object from the informers' stores again, after falling behind
    /// their change streams (or at start).
    fn resync(&mut self, nodes: &Store<Node>, tasks: &Store<Task>, now: Instant) {
        let nodes = nodes.list();
        let known: std::collections::HashSet<&str> =
            nodes.iter().map(|n| n.metadata.name.as_str()).collect();
        let gone: Vec<String> = self
            .cache
            .nodes()
            .iter()
            .map(|n| n.name().to_owned())
            .filter(|n| !known.contains(n.as_str()))
            .collect();
        for name in gone {
            self.cache.remove_node(&name);
        }
        for node in &nodes {
            self.cache.upsert_node(node.clone(), now);
        }
        let tasks = tasks.list();
        let present: std::collections::HashSet<String> = tasks.iter().map(|t| key_of(t)).collect();
        self.cache.retain_tasks(|key| present.contains(key));
        self.queue.retain(|key| present.contains(key));
        for task in tasks {
            self.apply_task(Change::Applied(task));
        }
    }

    /// Puts `key` back in the queue if it is still pending in `tasks`.
    fn requeue(&mut self, key: &str, tasks: &Store<Task>) {
        if let Some((namespace, name)) = key.split_once('/')
            && let Some(task) = tasks.get(&client::reflector::ObjectKey::new(namespace, name))
            && pending(&task)
            && !self.cache.is_assumed(key)
        {
            self.queue.upsert(task);
            self.queue.activate(key);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    client: Client,
    config: Config,
    tasks: Store<Task>,
    recorder: Recorder,
    /// Serializes this scheduler's own claims on each node.
    claim_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bounds the Scheduled Events written behind the binds.
    follow_ups: Arc<Semaphore>,
    /// Every write in the background.
    writers: TaskTracker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.claim_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(node.to_owned()).or_default().clone()
    }
}

/// Runs the scheduler until `shutdown`, with the default [`Config`].
pub async fn run(client: Client, shutdown: CancellationToken) {
    run_with(client, Config::default(), shutdown).await;
}

/// Runs the scheduler until `shutdown`.
pub async fn run_with(client: Client, config: Config, shutdown: CancellationToken) {
    let nodes = Informer::start(Api::<Node>::all(client.clone()), watcher::Config::default());
    let tasks = Informer::start(Api::<Task>::all(client.clone()), watcher::Config::default());
    let mut node_changes = nodes.subscribe();
    let mut task_changes = tasks.subscribe();
    tokio::select! {
        _ = shutdown.cancelled() => {
            nodes.stop();
            tasks.stop();
            return;
        }
        _ = async { nodes.store().wait_ready().await; tasks.store().wait_ready().await } => {}
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            cache: Cache::new(&config.identity),
            queue: Queue::new(),
            told: HashMap::new(),
            preempting: HashMap::new(),
        }),
        wake: Notify::new(),
        recorder: Recorder::new(client.clone(), FIELD_MANAGER, &config.identity),
        client,
        tasks: tasks.store(),
        claim_locks: Mutex::new(HashMap::new()),
        follow_ups: Arc::new(Semaphore::new(config.binds_in_flight.max(1))),
        writers: TaskTracker::new(),
        config,
    });
    shared
        .lock()
        .resync(&nodes.store(), &tasks.store(), Instant::now());
    let permits = Arc::new(Semaphore::new(shared.config.binds_in_flight.max(1)));
    let writers = shared.writers.clone();
    let mut algorithm = Algorithm::new(shared.config.sampling);
    let mut last_expiry = Instant::now();
    info!(identity = %shared.config.identity, "scheduler running");
    while !shutdown.is_cancelled() {
        let now = Instant::now();
        {
            let mut state = shared.lock();
            let mut lagged = false;
            loop {
                match node_changes.try_recv() {
                    Ok(change) => state.apply_node(change, now),
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            loop {
                match task_changes.try_recv() {
                    Ok(change) => state.apply_task(change),
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if lagged {
                debug!("fell behind the watch; resyncing from the informers' stores");
                state.resync(&nodes.store(), &tasks.store(), now);
            }
            if now.duration_since(last_expiry) >= Duration::from_secs(1) {
                last_expiry = now;
                for key in state.cache.expire(now) {
                    state.requeue(&key, &shared.tasks);
                }
            }
            let generation = state.cache.generation();
            state.queue.flush(now, generation);
        }
        let mut decided = 0;
        while decided < DECISIONS_PER_TURN {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            let mut state = shared.lock();
            let Some(task) = state.queue.pop() else {
                break;
            };
            decided += 1;
            decide(
                &shared,
                &mut state,
                &mut algorithm,
                &writers,
                task,
                permit,
                now,
            );
        }
        if decided == DECISIONS_PER_TURN {
            tokio::task::yield_now().await;
            continue;
        }
        let wakeup = shared
            .lock()
            .queue
            .next_wakeup()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            change = node_changes.recv() => match change {
                Ok(change) => shared.lock().apply_node(change, Instant::now()),
                Err(RecvError::Lagged(_)) => shared.lock().resync(&nodes.store(), &tasks.store(), Instant::now()),
                Err(RecvError::Closed) => break,
            },
            change = task_changes.recv() => match change {
                Ok(change) => shared.lock().apply_task(change),
                Err(RecvError::Lagged(_)) => shared.lock().resync(&nodes.store(), &tasks.store(), Instant::now()),
                Err(RecvError::Closed) => break,
            },
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(wakeup) => {}
        }
    }
    writers.close();
    writers.wait().await;
    nodes.stop();
    tasks.stop();
}

/// Decides for one task: bind, preempt, or wait.
fn decide(
    shared: &Arc<Shared>,
    state: &mut State,
    algorithm: &mut Algorithm,
    writers: &TaskTracker,
    task: TaskInfo,
    permit: OwnedSemaphorePermit,
    now: Instant,
) {
    let key = task.key.clone();
    match algorithm.decide(&state.cache, &task) {
        Ok(i) => {
            let node = state.cache.nodes()[i].name().to_owned();
            state.cache.assume(task.clone(), &node);
            state.queue.remove(&key);
            state.preempting.remove(&key);
            let shared = shared.clone();
            let span = info_span!("bind", task = %key, node = %node);
            writers.spawn(
                async move {
                    bind(&shared, task, &node).await;
                    drop(permit);
                    shared.wake.notify_one();
                }
                .instrument(span),
            );
        }
        Err(no_fit) => {
            let message = no_fit.to_string();
            let generation = state.cache.generation();
            // Victims still on their way out: wait for them rather than choose more.
            if let Some((victims, until)) = state.preempting.get(&key)
                && now < *until
                && victims.iter().any(|v| state.cache.placement(v).is_some())
            {
                state.queue.wait_for_change(&key, generation);
                return;
            }
            if let Some(plan) = preempt::plan(&state.cache, &task) {
                let victims = plan.victims.iter().map(|v| v.key.clone()).collect();
                state.preempting.insert(
                    key.clone(),
                    (victims, now + shared.config.preemption_timeout),
                );
                state.queue.wait_for_change(&key, generation);
                let shared = shared.clone();
                let span = info_span!("preempt", task = %key, node = %plan.node);
                writers.spawn(
                    async move {
                        evict(&shared, &task, &plan).await;
                        drop(permit);
                        shared.wake.notify_one();
                    }
                    .instrument(span),
                );
                return;
            }
            state.queue.unschedulable(&key, now, generation);
            if state.told.get(&key) == Some(&message) {
                return;
            }
            state.told.insert(key.clone(), message.clone());
            let shared = shared.clone();
            let span = info_span!("unschedulable", task = %key);
            writers.spawn(
                async move {
                    tell_unschedulable(&shared, &task.task, &message).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Claims `node` for `task`: a write of the node's claims conditioned on the node
/// version whose reservations, with `task` assumed, fit. Returns whether it holds.
async fn claim(shared: &Shared, task: &TaskInfo, node: &str) -> bool {
    let lock = shared.claim_lock(node);
    let _held = lock.lock().await;
    let api: Api<Node> = Api::all(shared.client.clone());
    for _ in 0..8 {
        let current = {
            let state = shared.lock();
            if state.cache.assumed_on(&task.key) != Some(node) {
                return false;
            }
            match state.cache.node(node) {
                Some(info) if !info.overcommitted() => info.node.clone(),
                _ => return false,
            }
        };
        let claims = claims::with(
            &current,
            Claim::of(task, &shared.config.identity, now_ms()),
            now_ms(),
        );
        let mut annotations = BTreeMap::new();
        claims::write(&mut annotations, &claims);
        let patch = Patch::Merge(json!({
            "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "annotations": annotations,
            }
        }));
        let params = hot_params();
        match api.patch(node, &params, &patch).await {
            Ok(updated) => {
                remember_node(shared, updated);
                return true;
            }
            // Someone else wrote the node: read it, with their claims, and check again.
            Err(error) if error.is_conflict() => match api.get(node).await {
                Ok(fresh) => {
                    remember_node(shared, fresh);
                }
                Err(error) => {
                    debug!(%error, "cannot read the node after a claim conflict");
                    return false;
                }
            },
            Err(error) => {
                debug!(%error, "cannot claim the node");
                return false;
            }
        }
    }
    false
}

/// Puts a node this scheduler just wrote or read into its cache (without the
/// managed fields, which nothing here reads).
fn remember_node(shared: &Shared, mut node: Node) {
    node.metadata.managed_fields.clear();
    shared
        .lock()
        .cache
        .upsert_node(Arc::new(node), Instant::now());
}

/// Takes back this scheduler's claim for a task it failed to bind, so that other
/// schedulers need not hold the room until the claim ages out. Best effort.
async fn withdraw(shared: &Shared, task: &TaskInfo, node: &str) {
    let lock = shared.claim_lock(node);
    let _held = lock.lock().await;
    let api: Api<Node> = Api::all(shared.client.clone());
    for _ in 0..3 {
        let Some(current) = shared.lock().cache.node(node).map(|n| n.node.clone()) else {
            return;
        };
        let before = claims::read(&current);
        let kept: Vec<Claim> = before
            .iter()
            .filter(|c| c.task != task.key || c.by != shared.config.identity)
            .cloned()
            .collect();
        if kept.len() == before.len() {
            return;
        }
        let mut annotations = BTreeMap::new();
        claims::write(&mut annotations, &kept);
        let patch = Patch::Merge(json!({
            "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "annotations": annotations,
            }
        }));
        match api.patch(node, &hot_params(), &patch).await {
            Ok(updated) => {
                remember_node(shared, updated);
                return;
            }
            Err(error) if error.is_conflict() => match api.get(node).await {
                Ok(fresh) => {
                    remember_node(shared, fresh);
                }
                Err(_) => return,
            },
            Err(error) => {
                debug!(%error, "cannot withdraw the claim");
                return;
            }
        }
    }
}

/// Drops an assumption that will not hold and tries the task again.
fn roll_back(shared: &Shared, task: &TaskInfo, retry_now: bool) {
    let mut state = shared.lock();
    state.cache.forget(&task.key);
    if retry_now {
        state.requeue(&task.key, &shared.tasks);
    } else if let Some((namespace, name)) = task.key.split_once('/')
        && let Some(latest) = shared
            .tasks
            .get(&client::reflector::ObjectKey::new(namespace, name))
        && latest.metadata.resource_version != task.task.metadata.resource_version
    {
        // The watch already brought the version that beat us: try with it.
        state.requeue(&task.key, &shared.tasks);
    }
    // Else the newer version is still on its way; its watch event requeues the task.
}

/// Binds an assumed task: claims the node (if configured), then posts the task's
/// `binding` (`spec.nodeName` and the Scheduled condition in one write, conditioned
/// on the task's resourceVersion and uid), then records the Event.
async fn bind(shared: &Arc<Shared>, task: TaskInfo, node: &str) {
    if shared.config.claim_nodes && !claim(shared, &task, node).await {
        roll_back(shared, &task, true);
        return;
    }
    let meta = &task.task.metadata;
    let api: Api<Task> = Api::namespaced(shared.client.clone(), &meta.namespace);
    // One write: `spec.nodeName` and the Scheduled condition, on this version only.
    let binding = json!({
        "apiVersion": api_types::API_VERSION,
        "kind": "Binding",
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "resourceVersion": meta.resource_version,
        },
        "target": {"kind": "Node", "name": node},
        "message": format!("bound to {node}"),
    });
    let result: Result<serde_json::Value, _> = api
        .create_subresource("binding", &meta.name, &PostParams::default(), &binding)
        .await;
    if result.is_err() && shared.config.claim_nodes {
        withdraw(shared, &task, node).await;
    }
    match result {
        Ok(_) => {}
        Err(error) if error.is_conflict() || error.is_not_found() => {
            debug!(%error, "lost the bind");
            roll_back(shared, &task, false);
            return;
        }
        Err(error) => {
            warn!(%error, task = %task.key, "bind failed");
            roll_back(shared, &task, false);
            let mut state = shared.lock();
            state.requeue(&task.key, &shared.tasks);
            let generation = state.cache.generation();
            state
                .queue
                .unschedulable(&task.key, Instant::now(), generation);
            return;
        }
    }
    {
        let mut state = shared.lock();
        state.cache.bound(&task.key, Instant::now());
        state.told.remove(&task.key);
    }
    // The Event follows in the background: the next bind need not wait.
    let Ok(permit) = shared.follow_ups.clone().acquire_owned().await else {
        return;
    };
    let (shared, node) = (shared.clone(), node.to_owned());
    let span = info_span!("scheduled", task = %task.key);
    shared.writers.clone().spawn(
        async move {
            record_scheduled(&shared, &task.task, &node).await;
            drop(permit);
        }
        .instrument(span),
    );
}

/// Writes the Scheduled condition (a task that fits nowhere; binds set it themselves).
async fn set_scheduled(
    shared: &Shared,
    task: &Task,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    let api: Api<Task> = Api::namespaced(shared.client.clone(), &task.metadata.namespace);
    let mut conditions = task
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    api_types::meta::set_condition(
        &mut conditions,
        Condition {
            type_: api_types::kinds::task::TASK_CONDITION_SCHEDULED.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        },
        Utc::now(),
    );
    let patch = json!({"status": {"conditions": conditions}});
    let params = hot_params();
    if let Err(error) = api
        .patch_status(&task.metadata.name, &params, &Patch::Merge(patch))
        .await
    {
        debug!(%error, "cannot set the Scheduled condition");
    }
}

/// Records the Scheduled Event with one write (each bind's Event is new).
async fn record_scheduled(shared: &Shared, task: &Task, node: &str) {
    let api: Api<Event> = Api::namespaced(shared.client.clone(), &task.metadata.namespace);
    let now = Utc::now();
    let event = Event {
        metadata: ObjectMeta {
            name: format!("{}.scheduled.{}", task.metadata.name, task.metadata.uid),
            namespace: task.metadata.namespace.clone(),
            ..Default::default()
        },
        involved_object: ObjectReference::to(task),
        reason: "Scheduled".into(),
        message: format!("Assigned {} to {node}", key_of(task)),
        type_: Some(EventType::Normal),
        count: Some(1),
        first_timestamp: Some(now),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: FIELD_MANAGER.into(),
            host: shared.config.identity.clone(),
        }),
        reporting_component: FIELD_MANAGER.into(),
        reporting_instance: shared.config.identity.clone(),
        ..Event::default()
    };
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => {}
        Err(error) if error.is_conflict() => {}
        Err(error) => debug!(%error, "cannot record the Scheduled event"),
    }
}

/// Says why a task fits nowhere: the Scheduled=False condition and an Event.
async fn tell_unschedulable(shared: &Shared, task: &Task, message: &str) {
    set_scheduled(
        shared,
        task,
        ConditionStatus::False,
        "Unschedulable",
        message,
    )
    .await;
    if let Err(error) = shared
        .recorder
        .publish(
            &ObjectReference::to(task),
            EventType::Warning,
            "FailedScheduling",
            message,
        )
        .await
    {
        debug!(%error, "cannot record the FailedScheduling event");
    }
}

/// Evicts the plan's victims: each is Killed with reason Preempted, and told so.
async fn evict(shared: &Shared, preemptor: &TaskInfo, plan: &preempt::Plan) {
    info!(
        victims = plan.victims.len(),
        "preempting lower-priority tasks"
    );
    for victim in &plan.victims {
        let meta = &victim.task.metadata;
        let api: Api<Task> = Api::namespaced(shared.client.clone(), &meta.namespace);
        let message = format!(
            "preempted by {} (priority {}) on node {}",
            preemptor.key, preemptor.priority, plan.node
        );
        let patch = Patch::Merge(json!({
            "metadata": {"resourceVersion": meta.resource_version},
            "status": {
                "phase": TaskPhase::Killed,
                "reason": REASON_PREEMPTED,
                "message": message,
                "finishTime": Utc::now(),
            }
        }));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        if let Err(error) = api.patch_status(&meta.name, &params, &patch).await {
            // Changed meanwhile (perhaps ended): the preemptor decides again later.
            debug!(%error, victim = %victim.key, "cannot preempt");
            continue;
        }
        if let Err(error) = shared
            .recorder
            .publish(
                &ObjectReference::to(&*victim.task),
                EventType::Normal,
                REASON_PREEMPTED,
                &message,
            )
            .await
        {
            debug!(%error, "cannot record the Preempted event");
        }
    }
}
