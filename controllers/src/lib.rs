//! Built-in reconcilers (Job, Service, garbage collector, node lifecycle, node IPAM,
//! TTL after finished) and the controller-manager that runs them.
//!
//! Every reconciler is a function of one object and the shared caches that returns
//! what to do next; it is idempotent, level-triggered and safe to crash between any
//! two writes. After each batch of writes a reconciler waits (briefly) until its own
//! caches show them, so the next reconcile of the same object never acts twice on a
//! stale view.

pub mod endpoints;
pub mod gc;
pub mod job;
pub mod manager;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod service;
pub mod token_cleaner;
pub mod ttl;

use std::sync::Arc;
use std::time::Duration;

use api_types::event::EventType;
use api_types::{Job, Lease, Node, ObjectReference, Resource, Service, Task};
use client::{Api, Client, Object, ObjectKey, Recorder, Store};
use serde_json::json;
use tracing::warn;

pub use manager::{Config, run_manager};

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("failed to {action} {object}: {source}")]
    Api {
        /// What was being done (`create task`, `write status of job`).
        action: &'static str,
        /// `namespace/name`.
        object: String,
        /// The client's error.
        #[source]
        source: client::Error,
    },
    /// A conditional write kept conflicting with other writers.
    #[error("failed to {action} {object}: it changed under each of {attempts} attempts")]
    Conflicts {
        /// What was being done.
        action: &'static str,
        /// `namespace/name`.
        object: String,
        /// How many writes were tried.
        attempts: usize,
    },
}

/// The result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn api(
        action: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(client::Error) -> Error {
        let object = object.into();
        move |source| Error::Api {
            action,
            object,
            source,
        }
    }
}

/// Task index: the uid of the task's controlling owner.
pub(crate) const BY_CONTROLLER: &str = "controller-uid";
/// Index of every kind: the uid of each of the object's owners.
pub(crate) const BY_OWNER: &str = "owner-uid";
/// Task index: the node the task is bound to.
pub(crate) const BY_NODE: &str = "node";
/// Job index: `namespace/name` of each job it depends on.
pub(crate) const BY_DEPENDENCY: &str = "depends-on";

/// The caches and client every reconciler shares.
#[derive(Clone, Debug)]
pub struct Context {
    /// The API.
    pub client: Client,
    /// Timings and names.
    pub config: Config,
    /// Every Job.
    pub jobs: Store<Job>,
    /// Every Task.
    pub tasks: Store<Task>,
    /// Every Service.
    pub services: Store<Service>,
    /// Every Node.
    pub nodes: Store<Node>,
    /// The nodes' heartbeat Leases.
    pub leases: Store<Lease>,
    /// When each node's Lease was last seen renewed.
    pub heartbeats: Arc<node_lifecycle::Heartbeats>,
}

impl Context {
    /// Waits until every cache holds its first full list: a reconciler must never
    /// take a cache still filling for the world (no tasks, no leases).
    pub async fn wait_ready(&self) {
        self.jobs.wait_ready().await;
        self.tasks.wait_ready().await;
        self.services.wait_ready().await;
        self.nodes.wait_ready().await;
        self.leases.wait_ready().await;
    }

    /// A recorder of Events for `component`.
    pub(crate) fn recorder(&self, component: &str) -> Recorder {
        Recorder::new(self.client.clone(), component, &self.config.identity)
    }

    /// The tasks whose controlling owner is `uid`.
    pub(crate) fn tasks_controlled_by(&self, namespace: &str, uid: &str) -> Vec<Arc<Task>> {
        self.tasks
            .by_index(BY_CONTROLLER, uid)
            .into_iter()
            .filter(|t| t.metadata.namespace == namespace)
            .collect()
    }
}

pub(crate) fn key_of<K: Object>(object: &K) -> String {
    let meta = object.meta();
    if meta.namespace.is_empty() {
        meta.name.clone()
    } else {
        format!("{}/{}", meta.namespace, meta.name)
    }
}

/// Publishes an Event; a failure is logged, never fails the reconcile.
pub(crate) async fn publish<K: Resource>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let reference = ObjectReference::to(object);
    if let Err(error) = recorder.publish(&reference, type_, reason, message).await {
        warn!(%error, reason, "cannot record an event");
    }
}

/// Names for an Event's message: all of a few, or the first few and how many more.
pub(crate) fn summarize<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<&str> = names.iter().take(SHOWN).map(AsRef::as_ref).collect();
    match names.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// How long a reconciler waits for its caches to show its own writes.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until `store` shows the object `key` in a state `seen` accepts (or
/// gives up after a few seconds: the next reconcile then acts on what it sees,
/// and deterministic names or write preconditions keep that safe). Woken by the
/// cache's changes, not by polling.
pub(crate) async fn observe<K: Object>(
    store: &Store<K>,
    key: &ObjectKey,
    seen: impl Fn(Option<&K>) -> bool,
) -> bool {
    store.wait_for(key, seen, OBSERVE_TIMEOUT).await.is_ok()
}

/// Whether `object` carries a resourceVersion at least `version` (numeric revisions).
pub(crate) fn at_least(object: &impl Object, version: &str) -> bool {
    match (
        object.meta().resource_version.parse::<u64>(),
        version.parse::<u64>(),
    ) {
        (Ok(have), Ok(want)) => have >= want,
        _ => object.meta().resource_version == version,
    }
}

/// Marks a task terminal through its status: phase `Killed` with `reason`. The
/// nodelet stops a task whose status says Killed. Returns the written task, or
/// `None` when it is already gone or already terminal.
pub(crate) async fn kill_task(
    client: &Client,
    task: &Task,
    reason: &str,
    message: &str,
) -> Result<Option<Task>> {
    let api: Api<Task> = Api::namespaced(client.clone(), &task.metadata.namespace);
    let patch = json!({"status": {
        "phase": "Killed",
        "reason": reason,
        "message": message,
        "finishTime": chrono::Utc::now(),
    }});
    match api
        .patch_status(
            &task.metadata.name,
            &client::PatchParams::default(),
            &client::Patch::Merge(patch),
        )
        .await
    {
        Ok(task) => Ok(Some(task)),
        // Gone, or it reached a terminal phase meanwhile (which never changes).
        Err(error) if error.is_not_found() || error.code() == Some(422) => Ok(None),
        Err(error) => Err(Error::api("kill task", key_of(task))(error)),
    }
}

/// Writes a task's terminal phase and waits until the task cache shows it.
pub(crate) async fn kill_and_observe(
    ctx: &Context,
    task: &Task,
    reason: &str,
    message: &str,
) -> Result<()> {
    if kill_task(&ctx.client, task, reason, message)
        .await?
        .is_some()
    {
        observe(&ctx.tasks, &ObjectKey::of(task), |t| {
            t.is_none_or(|t| t.is_terminal())
        })
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn summaries_stay_short() {
        assert_eq!(super::summarize(&["a", "b"]), "a, b");
        let many: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        assert_eq!(super::summarize(&many), "t0, t1, t2, t3, t4 and 7 more");
    }
}

/// Caches fed by hand and a client whose every request fails: a reconcile that
/// should make no request shows it by succeeding.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use api_types::{Job, Lease, Node, Service, Task};
    use client::reflector::Writer;
    use client::watcher::Event;
    use client::{Client, Object, Store};

    use crate::{Config, Context, manager};

    pub(crate) struct Fixture {
        pub ctx: Arc<Context>,
        pub jobs: Writer<Job>,
        pub tasks: Writer<Task>,
        pub services: Writer<Service>,
        pub nodes: Writer<Node>,
        pub leases: Writer<Lease>,
    }

    fn listed<K: Object>(writer: &Writer<K>) {
        writer.apply(&Event::Init);
        writer.apply(&Event::InitDone);
    }

    pub(crate) fn fixture() -> Fixture {
        let (jobs, job_writer) = manager::job_store().build();
        let (tasks, task_writer) = manager::task_store().build();
        let (services, service_writer) = manager::service_store().build();
        let (nodes, node_writer) = Store::<Node>::new();
        let (leases, lease_writer) = Store::<Lease>::new();
        listed(&job_writer);
        listed(&task_writer);
        listed(&service_writer);
        listed(&node_writer);
        listed(&lease_writer);
        let ctx = Context {
            // Nothing listens there: any request fails.
            client: Client::for_server("http://127.0.0.1:1").unwrap_or_else(|e| panic!("{e}")),
            config: Config::default(),
            jobs,
            tasks,
            services,
            nodes,
            leases,
            heartbeats: Arc::default(),
        };
        Fixture {
            ctx: Arc::new(ctx),
            jobs: job_writer,
            tasks: task_writer,
            services: service_writer,
            nodes: node_writer,
            leases: lease_writer,
        }
    }
}
