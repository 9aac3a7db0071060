//! A small cluster for the controllers' tests: the real API server and scheduler,
//! registered nodes, the controller-manager (stoppable), and a test nodelet that
//! heartbeats for the nodes it serves and plays their tasks by simple rules.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::{Job, JobPhase, Lease, Namespace, Node, ObjectMeta, Service, Task, TaskPhase};
use apiserver::testing::TestServer;
use chrono::Utc;
use client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
            let code: i32 = code.parse().unwrap();
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
                .get("loom.dev/attempt")
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
            Some((TaskPhase::Killed, None, "TimeLimitExceeded"))
        }
        ["work", ms, ..] => (running_for >= Duration::from_millis(ms.parse().unwrap()))
            .then_some((TaskPhase::Completed, Some(0), "")),
        _ => Some((TaskPhase::Completed, Some(0), "")),
    }
}

pub struct Cluster {
    pub server: TestServer,
    pub client: Client,
    /// The nodes the test nodelet serves (heartbeats and runs tasks for).
    pub alive: Arc<Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
    background: Vec<JoinHandle<()>>,
    manager: Option<(CancellationToken, JoinHandle<()>)>,
}

pub fn test_config() -> controllers::Config {
    controllers::Config {
        identity: "test".into(),
        ..controllers::Config::default()
    }
}

impl Cluster {
    /// The API server, the scheduler, the test nodelet, `nodes` registered and
    /// served, and the controllers with `config`.
    pub async fn start(nodes: &[&str], config: controllers::Config) -> Cluster {
        let server = TestServer::embedded(apiserver::Config::default())
            .await
            .unwrap();
        let client = Client::for_server(&server.url).unwrap();
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
                    metadata: ObjectMeta::named("loom-node-lease"),
                    ..Namespace::default()
                },
            )
            .await;
        for node in nodes {
            cluster.add_node(node).await;
        }
        cluster
            .background
            .push(tokio::spawn(scheduler::run(client.clone(), stop.clone())));
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
            "metadata": {"name": name, "labels": {"loom.dev/allow-host-paths": "true"}},
            "status": {"allocatable": {"cpu": "64", "memory": "64Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let api: Api<Node> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &node).await.unwrap();
        renew_lease(&self.client, name).await;
        self.alive.lock().unwrap().insert(name.to_owned());
    }

    pub fn start_manager(&mut self, config: controllers::Config) {
        assert!(self.manager.is_none());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(controllers::run_manager(
            self.client.clone(),
            config,
            stop.clone(),
        ));
        self.manager = Some((stop, handle));
    }

    /// Stops the controllers at once (reconciles in flight are dropped with the task).
    pub async fn kill_manager(&mut self) {
        let (stop, handle) = self.manager.take().unwrap();
        stop.cancel();
        handle.abort();
        let _ = handle.await;
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn tasks(&self) -> Api<Task> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn create_job(&self, value: serde_json::Value) -> Job {
        let job: Job = serde_json::from_value(value).unwrap();
        self.jobs()
            .create(&PostParams::default(), &job)
            .await
            .unwrap()
    }

    /// The tasks a job controls, by name.
    pub async fn tasks_of(&self, job: &str) -> Vec<Task> {
        let (mut tasks, _) = self
            .tasks()
            .list_all(&ListParams::default().labels(&format!("loom.dev/job={job}")))
            .await
            .unwrap();
        tasks.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        tasks
    }

    /// Waits until the job is in `phase`, and returns it.
    pub async fn job_in(&self, name: &str, phase: JobPhase) -> Job {
        let jobs = self.jobs();
        eventually(&format!("job {name} {phase}"), || async {
            let job = jobs.get(name).await.unwrap();
            (job.phase() == phase).then_some(job)
        })
        .await
    }

    pub async fn shutdown(mut self) {
        if self.manager.is_some() {
            let (stop, handle) = self.manager.take().unwrap();
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("the controllers stop")
                .unwrap();
        }
        self.stop.cancel();
        for handle in self.background.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }
}

/// Polls `check` until it gives a value, for at most 15 seconds.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn renew_lease(client: &Client, node: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), "loom-node-lease");
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
                "metadata": {"name": node, "namespace": "loom-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                         "acquireTime": now, "renewTime": now}
            }))
            .unwrap();
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
        let nodes: Vec<String> = alive.lock().unwrap().iter().cloned().collect();
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
                        let (phase, code, reason) = outcome(&task, Duration::ZERO).unwrap();
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
