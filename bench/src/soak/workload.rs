//! The soak's clients: register writers and readers, watchers, job
//! submitters, a service updater and an availability prober, each recording
//! what it did and what it was told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::{Job, Lease, Service, Task, WatchEvent};
use client::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use futures::StreamExt as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::check::{JobRecord, Outcome, RegisterOp, Seen};

/// The namespace of everything the soak makes.
pub const NAMESPACE: &str = "soak";
/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every client recorded.
#[derive(Debug, Default)]
pub struct History {
    pub registers: Vec<RegisterOp>,
    pub watchers: Vec<Vec<Seen>>,
    pub jobs: Vec<JobRecord>,
    /// Jobs submitted (acknowledged) but not seen finished.
    pub unfinished: Vec<String>,
    /// Operations by type: (ok, failed, unknown).
    pub counts: BTreeMap<String, (u64, u64, u64)>,
    /// Times (seconds since the start) the prober was answered.
    pub probes: Vec<(f64, bool)>,
}

/// Shared by the clients.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub epoch: Instant,
    pub history: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            epoch: Instant::now(),
            history: Arc::default(),
        }
    }

    /// Seconds since the soak began.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn count(&self, what: &str, outcome: &Outcome) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let entry = history.counts.entry(what.to_owned()).or_default();
        match outcome {
            Outcome::Ok { .. } => entry.0 += 1,
            Outcome::Failed => entry.1 += 1,
            Outcome::Unknown => entry.2 += 1,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a request that got no object back ended: refused (4xx but 429...
/// which also wrote nothing) or unknown.
fn failure(error: &client::Error) -> Outcome {
    match error {
        client::Error::Api(status) if (400..500).contains(&status.code) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

async fn timed<T>(
    future: impl std::future::Future<Output = client::Result<T>>,
) -> Result<T, Outcome> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(failure(&error)),
        Err(_) => Err(Outcome::Unknown),
    }
}

fn rv_of(meta: &api_types::ObjectMeta) -> u64 {
    meta.resource_version.parse().unwrap_or(0)
}

/// The registers: `count` Leases, made before the clients start.
pub async fn make_registers(client: &client::Client, count: usize) -> anyhow::Result<()> {
    let namespaces: Api<api_types::Namespace> = Api::all(client.clone());
    let namespace: api_types::Namespace = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))?;
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {}
        Err(e) => return Err(e.into()),
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    for k in 0..count {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "loom.dev/v1", "kind": "Lease",
            "metadata": {"name": format!("reg-{k}"), "namespace": NAMESPACE},
            "spec": {"holderIdentity": ""}}))?;
        leases.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// A register client: writes and reads random registers until `stop`.
pub async fn register_client(
    client: client::Client,
    id: usize,
    registers: usize,
    recorder: Recorder,
    stop: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let mut seq = 0u64;
    let mut state = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while !stop.is_cancelled() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = format!("reg-{}", state as usize % registers);
        let write = !state.is_multiple_of(3);
        let invoked = recorder.now();
        let op = if write {
            seq += 1;
            let value = format!("c{id}-{seq}");
            let patch = json!({"spec": {"holderIdentity": value}});
            let outcome =
                match timed(leases.patch(&key, &PatchParams::default(), &Patch::Merge(&patch)))
                    .await
                {
                    Ok(lease) => Outcome::Ok {
                        rv: rv_of(&lease.metadata),
                        value: lease.spec.holder_identity.unwrap_or_default(),
                    },
                    Err(outcome) => outcome,
                };
            recorder.count("register write", &outcome);
            RegisterOp {
                key,
                write: Some(value),
                invoked,
                completed: recorder.now(),
                outcome,
            }
        } else {
            let outcome = match timed(leases.get(&key)).await {
                Ok(lease) => Outcome::Ok {
                    rv: rv_of(&lease.metadata),
                    value: lease.spec.holder_identity.unwrap_or_default(),
                },
                Err(outcome) => outcome,
            };
            recorder.count("register read", &outcome);
            RegisterOp {
                key,
                write: None,
                invoked,
                completed: recorder.now(),
                outcome,
            }
        };
        recorder.lock().registers.push(op);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A watcher of the registers: lists, then watches from the list's
/// revision, resuming from the last revision seen after any break, and
/// relisting (a new span) only when told the revision is gone (410).
pub async fn watcher(
    client: client::Client,
    index: usize,
    recorder: Recorder,
    stop: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let mut seen = Vec::new();
    let mut resume: Option<u64> = None;
    'outer: while !stop.is_cancelled() {
        let from = match resume {
            Some(rv) => rv,
            None => match timed(leases.list(&ListParams::default())).await {
                Ok(list) => {
                    let rv = list.metadata.resource_version.parse().unwrap_or(0);
                    seen.push(Seen::Start {
                        rv,
                        objects: list
                            .items
                            .iter()
                            .map(|l| (l.metadata.name.clone(), rv_of(&l.metadata)))
                            .collect(),
                    });
                    rv
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let params = WatchParams {
            bookmarks: true,
            timeout_seconds: Some(30),
            ..WatchParams::default()
        };
        let stream = match timed(leases.watch(&params, &from.to_string())).await {
            Ok(stream) => stream,
            Err(_) => {
                resume = Some(from);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = Box::pin(stream);
        let mut last = from;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break 'outer,
                next = tokio::time::timeout(Duration::from_secs(45), stream.next()) => next,
            };
            match next {
                Ok(Some(Ok(event))) => match event {
                    WatchEvent::Added(l) | WatchEvent::Modified(l) | WatchEvent::Deleted(l) => {
                        let rv = rv_of(&l.metadata);
                        last = last.max(rv);
                        seen.push(Seen::Event {
                            key: l.metadata.name.clone(),
                            rv,
                        });
                    }
                    WatchEvent::Bookmark(b) => {
                        let rv = b.metadata.resource_version.parse().unwrap_or(0);
                        last = last.max(rv);
                        seen.push(Seen::Bookmark { rv });
                    }
                    WatchEvent::Error(status) => {
                        // 410: the revision is gone; anything else: resume.
                        resume = (status.code != 410).then_some(last);
                        continue 'outer;
                    }
                },
                // The stream ended, broke or stalled: resume where it was.
                _ => {
                    resume = Some(last);
                    continue 'outer;
                }
            }
        }
    }
    let mut history = recorder.lock();
    if history.watchers.len() <= index {
        history.watchers.resize(index + 1, Vec::new());
    }
    history.watchers[index] = seen;
}

/// The time limit of every job's tasks (each takes a second).
pub const JOB_TIME_LIMIT: i64 = 60;

/// The job every submitter sends: `replicas` tasks each appending a start
/// and a done line to the run log.
fn job(name: &str, replicas: i32, run_log: &str) -> anyhow::Result<Job> {
    let script = format!(
        "echo \"$LOOM_TASK_NAME $LOOM_TASK_INDEX start\" >> {run_log}; sleep 1; echo \"$LOOM_TASK_NAME $LOOM_TASK_INDEX done\" >> {run_log}"
    );
    Ok(serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas, "parallelism": replicas, "maxRetries": 5,
            // `raw`: a host process, so it can append to the soak's run log
            // (the exec driver gives tasks a /tmp of their own).
            // A time limit far past the second each task takes: a clock
            // step of its node must not make it fire.
            "template": {"spec": {"driver": "raw", "command": ["sh", "-c", script],
                                  "timeLimitSeconds": JOB_TIME_LIMIT,
                                  "resources": {"memory": "32Mi"}}}
        }
    }))?)
}

/// A job submitter: submits jobs one after another until `stop`, each
/// followed to its end, recorded, then deleted.
pub async fn job_client(
    client: client::Client,
    id: usize,
    run_log: String,
    recorder: Recorder,
    stop: CancellationToken,
    drain: CancellationToken,
) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let tasks: Api<Task> = Api::namespaced(client, NAMESPACE);
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let name = format!("job-{id}-{n}");
        let Ok(manifest) = job(&name, 3, &run_log) else {
            return;
        };
        // Created, or its answer lost: look whether it exists.
        let created = match timed(jobs.create(&PostParams::default(), &manifest)).await {
            Ok(_) => Outcome::Ok {
                rv: 0,
                value: String::new(),
            },
            Err(outcome) => outcome,
        };
        recorder.count("job create", &created);
        match created {
            Outcome::Failed => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Outcome::Unknown => {
                // Ask until it can be told.
                let exists = loop {
                    if drain.is_cancelled() {
                        return;
                    }
                    match timed(jobs.get_opt(&name)).await {
                        Ok(found) => break found.is_some(),
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                };
                if !exists {
                    continue;
                }
            }
            Outcome::Ok { .. } => {}
        }
        // Follow it to its end (the drain ends the wait).
        let finished = loop {
            if drain.is_cancelled() {
                break None;
            }
            if let Ok(job) = timed(jobs.get(&name)).await {
                let status = job.status.clone().unwrap_or_default();
                let phase = serde_json::to_value(status.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                if matches!(phase.as_str(), "Completed" | "Failed" | "Killed") {
                    break Some((job, phase, status.completed));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let Some((job, phase, completed)) = finished else {
            recorder.lock().unfinished.push(name);
            return;
        };
        let mut record = JobRecord {
            name: name.clone(),
            phase,
            replicas: job.spec.replicas(),
            completed,
            ..JobRecord::default()
        };
        let selector = format!("{}={name}", api_types::well_known::LABEL_JOB);
        let listed = loop {
            match timed(tasks.list(&ListParams {
                label_selector: Some(selector.clone()),
                ..ListParams::default()
            }))
            .await
            {
                Ok(list) => break Some(list),
                Err(_) if !drain.is_cancelled() => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(_) => break None,
            }
        };
        for task in listed.map(|l| l.items).unwrap_or_default() {
            let status = task.status.clone().unwrap_or_default();
            let phase = serde_json::to_value(status.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if status.reason == api_types::well_known::REASON_TIME_LIMIT_EXCEEDED {
                record.time_limited.push(task.metadata.name.clone());
            }
            record.tasks.insert(
                task.metadata.name.clone(),
                (task.spec.index.unwrap_or(-1), phase, status.restart_count),
            );
        }
        recorder.lock().jobs.push(record);
        let deleted = match timed(jobs.delete(
            &name,
            &DeleteParams {
                propagation_policy: Some("Background".into()),
                ..DeleteParams::default()
            },
        ))
        .await
        {
            Ok(_) => Outcome::Ok {
                rv: 0,
                value: String::new(),
            },
            Err(outcome) => outcome,
        };
        recorder.count("job delete", &deleted);
    }
}

/// The service: `replicas` long-running tasks, its template changed every
/// `every` (a rollout) until `stop`.
pub async fn service_client(
    client: client::Client,
    replicas: i32,
    every: Duration,
    recorder: Recorder,
    stop: CancellationToken,
) {
    let services: Api<Service> = Api::namespaced(client, NAMESPACE);
    let Ok(service) = serde_json::from_value::<Service>(json!({
        "apiVersion": "loom.dev/v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"replicas": replicas,
                 // `sleep` is its container's pid 1, deaf to SIGTERM: SIGKILL
                 // follows the grace period.
                 "template": {"spec": {"driver": "exec", "command": ["sleep", "100000"],
                                       "terminationGracePeriodSeconds": 3,
                                       "env": [{"name": "VERSION", "value": "0"}],
                                       "resources": {"memory": "16Mi"}}}}
    })) else {
        return;
    };
    loop {
        match timed(services.create(&PostParams::default(), &service)).await {
            Ok(_) => break,
            Err(Outcome::Failed) => break,
            Err(_) if stop.is_cancelled() => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let mut version = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        version += 1;
        let patch = json!({"spec": {"template": {"spec": {"env": [{"name": "VERSION", "value": version.to_string()}]}}}});
        let outcome = match timed(services.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
        .await
        {
            Ok(_) => Outcome::Ok {
                rv: 0,
                value: String::new(),
            },
            Err(outcome) => outcome,
        };
        recorder.count("service update", &outcome);
    }
}

/// Asks a cheap question of the API (through every server, failing over)
/// every 100 ms until `stop`, recording when it was answered.
pub async fn prober(client: client::Client, recorder: Recorder, stop: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
    while !stop.is_cancelled() {
        let asked = recorder.now();
        let answered = tokio::time::timeout(Duration::from_secs(2), leases.get("reg-0"))
            .await
            .is_ok_and(|r| r.is_ok());
        recorder.lock().probes.push((asked, answered));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the whole log of every Running task through the API, as a user
/// would: the API server calls the task's nodelet at its endpoint (over
/// TLS, across the node's veth). Each must be read within `within`, unless
/// the task stops running meanwhile. Returns how many were read and what
/// could not be.
pub async fn read_logs(client: client::Client, within: Duration) -> (usize, Vec<String>) {
    let tasks: Api<Task> = Api::namespaced(client, NAMESPACE);
    let list = match timed(tasks.list(&ListParams::default())).await {
        Ok(list) => list,
        Err(outcome) => {
            return (
                0,
                vec![format!(
                    "the tasks could not be listed to read their logs ({outcome:?})"
                )],
            );
        }
    };
    let running = |task: &Task| {
        task.status
            .as_ref()
            .is_some_and(|s| s.phase == api_types::TaskPhase::Running)
    };
    let mut read = 0;
    let mut failed = Vec::new();
    for task in list.items.iter().filter(|t| running(t)) {
        let name = &task.metadata.name;
        let deadline = Instant::now() + within;
        loop {
            let whole = async {
                let mut stream = Box::pin(tasks.logs(name, false, None).await?);
                while let Some(chunk) = stream.next().await {
                    chunk?;
                }
                Ok::<(), client::Error>(())
            };
            let why = match tokio::time::timeout(REQUEST_TIMEOUT, whole).await {
                Ok(Ok(())) => {
                    read += 1;
                    break;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no whole answer within {REQUEST_TIMEOUT:?}"),
            };
            // A task that stopped running meanwhile has no log to serve.
            if let Ok(now) = timed(tasks.get_opt(name)).await
                && !now.as_ref().is_some_and(running)
            {
                break;
            }
            if Instant::now() > deadline {
                failed.push(format!(
                    "the log of task {name} (Running on {:?}) could not be read within {within:?}: {why}",
                    task.spec.node_name
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    (read, failed)
}
