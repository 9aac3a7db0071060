//! A small cluster for the controllers' tests: the real API server and scheduler,
//! registered nodes, the controller-manager (stoppable), and a test nodelet that
//! heartbeats for the nodes it serves and plays their tasks by simple rules.
//! Its methods panic on failure: they are the test's own steps.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::wait::eventually;

use api_types::well_known;
use api_types::{Job, JobPhase, Lease, Namespace, Node, ObjectMeta, Service, Task, TaskPhase};
use chrono::Utc;
use client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestServer;

/// The namespace the cluster's helpers work in.
pub const NS: &str = "default";

/// How the test nodelet plays a running task, from its command:
/// `["sleep"]` runs until stopped; `["exit", "N"]` exits N; `["flaky"]` fails
/// (exit 1) on its first attempt and completes on a retry; `["overtime"]` is killed
/// for its time limit; `["work", "MS"]` completes after running MS milliseconds;
/// anything else completes at once. A task that fails does so as it starts.
pub fn outcome(
    task: &Task,
    running_for: Duration,
) -> Option<(TaskPhase, Option<i32>, &'static str)> {
    let command: Vec<&str> = task.spec.command.iter().map(String::as_str).collect();
    match command.as_slice() {
        ["sleep", ..] => None,
        ["exit", code, ..] => {
            let code: i32 = code.parse().expect("an exit code");
            if code == 0 {
                Some((TaskPhase::Completed, Some(0), ""))
            } else {
                Some((TaskPhase::Failed, Some(code), "Error"))
            }
        }
        ["flaky", ..] => {
            if task
                .metadata
                .labels
                .get(well_known::LABEL_ATTEMPT)
                .map(String::as_str)
                == Some("0")
            {
                Some((TaskPhase::Failed, Some(1), "Error"))
            } else {
                Some((TaskPhase::Completed, Some(0), ""))
            }
        }
        ["overtime", ..] => {
            assert!(
                task.spec.time_limit_seconds.is_some(),
                "a time limit reaches the task"
            );
            Some((
                TaskPhase::Killed,
                None,
                well_known::REASON_TIME_LIMIT_EXCEEDED,
            ))
        }
        ["work", ms, ..] => (running_for
            >= Duration::from_millis(ms.parse().expect("milliseconds")))
        .then_some((TaskPhase::Completed, Some(0), "")),
        _ => Some((TaskPhase::Completed, Some(0), "")),
    }
}

/// The cluster: stop it with [`Cluster::shutdown`].
#[derive(Debug)]
pub struct Cluster {
    pub server: TestServer,
    pub client: Client,
    /// The nodes the test nodelet serves (heartbeats and runs tasks for).
    pub alive: Arc<Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
    background: Vec<JoinHandle<()>>,
    manager: Option<(CancellationToken, JoinHandle<()>)>,
}

/// The controllers' config for tests.
pub fn test_config() -> controllers::Config {
    controllers::Config {
        identity: "test".into(),
        ..controllers::Config::default()
    }
}

/// The scheduler's user: it runs with its own rights only.
pub const SCHEDULER_USER: &str = "system:loom-scheduler";
/// The controllers' user.
pub const CONTROLLERS_USER: &str = "system:loom-controllers";

impl Cluster {
    /// The API server, the scheduler, the test nodelet, `nodes` registered and
    /// served, and the controllers with `config`.
    pub async fn start(nodes: &[&str], config: controllers::Config) -> Cluster {
        let server = TestServer::embedded(apiserver::Config::default())
            .await
            .expect("the API server starts");
        let client = server.client();
        let stop = CancellationToken::new();
        let mut cluster = Cluster {
            server,
            client: client.clone(),
            alive: Arc::new(Mutex::new(BTreeSet::new())),
            stop: stop.clone(),
            background: Vec::new(),
            manager: None,
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let _ = namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta::named(well_known::NODE_LEASE_NAMESPACE),
                    ..Namespace::default()
                },
            )
            .await;
        for node in nodes {
            cluster.add_node(node).await;
        }
        cluster.background.push(tokio::spawn(scheduler::run(
            cluster.server.client_as(SCHEDULER_USER, None),
            stop.clone(),
        )));
        cluster.background.push(tokio::spawn(nodelet(
            client.clone(),
            cluster.alive.clone(),
            stop.clone(),
        )));
        cluster.start_manager(config);
        cluster
    }

    /// Registers a Ready node with room for many tasks, served by the test nodelet.
    pub async fn add_node(&self, name: &str) {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "loom.dev/v1", "kind": "Node",
            // The test nodelet runs whatever it is given: jobs with inputs and
            // output directories (host mounts) may be placed on it.
            "metadata": {"name": name, "labels": {well_known::LABEL_ALLOW_HOST_PATHS: "true"}},
            "status": {"allocatable": {"cpu": "64", "memory": "64Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("a valid Node");
        let api: Api<Node> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &node)
            .await
            .expect("the node is registered");
        renew_lease(&self.client, name).await;
        self.alive
            .lock()
            .expect("the nodes lock")
            .insert(name.to_owned());
    }

    /// Starts the controller-manager (after [`Cluster::kill_manager`]).
    pub fn start_manager(&mut self, config: controllers::Config) {
        assert!(self.manager.is_none());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(controllers::run_manager(
            self.server.client_as(CONTROLLERS_USER, None),
            config,
            stop.clone(),
        ));
        self.manager = Some((stop, handle));
    }

    /// Stops the controllers at once (reconciles in flight are dropped with the task).
    pub async fn kill_manager(&mut self) {
        let (stop, handle) = self.manager.take().expect("the controllers run");
        stop.cancel();
        handle.abort();
        let _ = handle.await;
    }

    /// The Jobs of [`NS`].
    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// The Tasks of [`NS`].
    pub fn tasks(&self) -> Api<Task> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// The Services of [`NS`].
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Creates the Job given as JSON.
    pub async fn create_job(&self, value: serde_json::Value) -> Job {
        let job: Job = serde_json::from_value(value).expect("a valid Job");
        self.jobs()
            .create(&PostParams::default(), &job)
            .await
            .expect("the job is created")
    }

    /// The tasks a job controls, by name.
    pub async fn tasks_of(&self, job: &str) -> Vec<Task> {
        let (mut tasks, _) = self
            .tasks()
            .list_all(&ListParams::default().labels(&format!("{}={job}", well_known::LABEL_JOB)))
            .await
            .expect("the job's tasks are listed");
        tasks.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        tasks
    }

    /// Waits until the job is in `phase`, and returns it.
    pub async fn job_in(&self, name: &str, phase: JobPhase) -> Job {
        let jobs = self.jobs();
        eventually(&format!("job {name} {phase}"), || async {
            let job = jobs.get(name).await.expect("the job is read");
            (job.phase() == phase).then_some(job)
        })
        .await
    }

    /// Stops the controllers (waiting for them), the scheduler and the test nodelet.
    pub async fn shutdown(mut self) {
        if let Some((stop, handle)) = self.manager.take() {
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("the controllers stop")
                .expect("the controllers' task ends cleanly");
        }
        self.stop.cancel();
        for handle in self.background.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }
}

/// Renews (or creates) the node's heartbeat Lease.
pub async fn renew_lease(client: &Client, node: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), well_known::NODE_LEASE_NAMESPACE);
    let now = Utc::now();
    let patch =
        json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}});
    match api
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(error) if error.is_not_found() => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": node, "namespace": well_known::NODE_LEASE_NAMESPACE},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                         "acquireTime": now, "renewTime": now}
            }))
            .expect("a valid Lease");
            let _ = api.create(&PostParams::default(), &lease).await;
        }
        Err(error) => panic!("cannot renew the lease of {node}: {error}"),
    }
}

/// The test nodelet: renews the leases of the nodes it serves and plays their
/// bound tasks — Pending becomes Running, then the task's rule decides.
async fn nodelet(client: Client, alive: Arc<Mutex<BTreeSet<String>>>, stop: CancellationToken) {
    let tasks: Api<Task> = Api::all(client.clone());
    let mut last_renewal = Instant::now() - Duration::from_secs(1);
    loop {
        let nodes: Vec<String> = alive
            .lock()
            .expect("the nodes lock")
            .iter()
            .cloned()
            .collect();
        if last_renewal.elapsed() >= Duration::from_millis(200) {
            for node in &nodes {
                renew_lease(&client, node).await;
            }
            last_renewal = Instant::now();
        }
        if let Ok((all, _)) = tasks.list_all(&ListParams::default()).await {
            for task in all {
                if !nodes.contains(&task.spec.node_name) || task.is_terminal() {
                    continue;
                }
                let api: Api<Task> = Api::namespaced(client.clone(), &task.metadata.namespace);
                let crashes = matches!(
                    outcome(&task, Duration::ZERO),
                    Some((TaskPhase::Failed, _, _))
                );
                let status = match task.phase() {
                    // A task that fails does so on start, never looking ready.
                    TaskPhase::Pending if crashes => {
                        let Some((phase, code, reason)) = outcome(&task, Duration::ZERO) else {
                            continue;
                        };
                        json!({"status": {"phase": phase, "exitCode": code, "reason": reason,
                                          "nodeName": task.spec.node_name,
                                          "startTime": Utc::now(), "finishTime": Utc::now()}})
                    }
                    TaskPhase::Pending => json!({"status": {
                        "phase": "Running", "nodeName": task.spec.node_name,
                        "startTime": Utc::now(),
                        "conditions": [{"type": "Ready", "status": "True"}],
                    }}),
                    _ => {
                        let started = task
                            .status
                            .as_ref()
                            .and_then(|s| s.start_time)
                            .unwrap_or_else(Utc::now);
                        let running_for = (Utc::now() - started).to_std().unwrap_or_default();
                        let Some((phase, code, reason)) = outcome(&task, running_for) else {
                            continue;
                        };
                        json!({"status": {"phase": phase, "exitCode": code, "reason": reason,
                                          "finishTime": Utc::now()}})
                    }
                };
                // A task killed or deleted meanwhile refuses the write; that is fine.
                let _ = api
                    .patch_status(
                        &task.metadata.name,
                        &PatchParams::default(),
                        &Patch::Merge(status),
                    )
                    .await;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
