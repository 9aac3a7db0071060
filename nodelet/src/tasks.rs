//! Running the tasks bound to this node: one actor per task, level-triggered.
//!
//! Each actor compares the task as the API has it with what is on this node (the
//! runs in its directory) and does the next step: start a run, report that it
//! runs, stop it (SIGTERM, then SIGKILL after the grace period) when it is
//! deleted, killed by someone, or past its time limit, report how it ended, and
//! start it again after a backoff when its restart policy says so. Run `N` of a
//! task is reported with `restartCount = N - 1`; a run directory is created before
//! its shim starts, so after a nodelet restart every run is either adopted, read
//! back from its exit record, or known never to have started: no run happens twice.
//! A run whose shim died without an exit record (the node crashed) is ended
//! there, once: its leftovers removed, its loss recorded (`ShimLost`); the task
//! runs again in place if it restarts on failure or always, and is `Lost`
//! otherwise. A node that cannot renew its lease for the lease's duration
//! stops its tasks and starts none ([`Fence`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use api_types::event::EventType;
use api_types::kinds::task::TASK_CONDITION_READY;
use api_types::meta::{Condition, ConditionStatus, set_condition};
use api_types::well_known::{REASON_NODE_FENCED, REASON_SHIM_LOST, REASON_TIME_LIMIT_EXCEEDED};
use api_types::{ObjectReference, RestartPolicy, Task, TaskPhase};
use chrono::{DateTime, Utc};
use client::{Api, Client, Patch, PatchParams, Recorder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::Config;
use crate::driver::{Driver, Found};
use crate::image::ImageStore;
use crate::run::{
    DriverKind, ExitRecord, Limits, MountSpec, RunDir, RunSpec, Sandbox, Started, write_replace,
};

/// What the actors share.
pub struct Ctx {
    /// The nodelet's configuration.
    pub config: Arc<Config>,
    /// How runs are executed.
    pub driver: Arc<dyn Driver>,
    /// The node's images.
    pub images: ImageStore,
    /// Pulls registry images, once for all the tasks needing one.
    pub puller: crate::pull::Puller,
    /// The API.
    pub client: Client,
    /// Events.
    pub recorder: Recorder,
    /// Cancelled when the nodelet stops.
    pub shutdown: CancellationToken,
    /// Its metrics.
    pub metrics: crate::metrics::Metrics,
    /// When the node last renewed its Lease: its tasks stop once that is
    /// longer ago than the lease's duration.
    pub fence: Fence,
    /// The node's task network (none until the node has a task subnet).
    pub network: Arc<crate::node_network::NodeNetwork>,
}

/// Fencing: a node that cannot renew its Lease for longer than the lease's
/// duration stops its tasks (reason `NodeFenced`) and starts none, so a task
/// the control plane marks Lost and replaces elsewhere (it does so only after
/// the lease expired and a further grace) never keeps running beside its
/// replacement past that bound and the task's grace period. Measured from when
/// the last successful renewal was asked, which is no later than the renewal
/// time the API server recorded.
#[derive(Debug, Clone)]
pub struct Fence {
    renewed: Arc<std::sync::Mutex<tokio::time::Instant>>,
    lease: Duration,
}

impl Fence {
    /// A fence for a lease of `lease`, renewed now.
    pub fn new(lease: Duration) -> Fence {
        Fence {
            renewed: Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
            lease,
        }
    }

    /// The lease was renewed by a request asked at `asked`.
    pub fn renewed(&self, asked: tokio::time::Instant) {
        if let Ok(mut renewed) = self.renewed.lock() {
            *renewed = (*renewed).max(asked);
        }
    }

    /// When the lease runs out unless renewed before.
    pub fn expires_at(&self) -> tokio::time::Instant {
        let renewed = self
            .renewed
            .lock()
            .map(|r| *r)
            .unwrap_or_else(|_| tokio::time::Instant::now());
        renewed + self.lease
    }

    /// Whether the lease ran out: the node's tasks must not run.
    pub fn is_fenced(&self) -> bool {
        tokio::time::Instant::now() >= self.expires_at()
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("node", &self.config.name)
            .finish()
    }
}

impl Ctx {
    /// The directory of the task with `uid`.
    pub fn task_dir(&self, uid: &str) -> PathBuf {
        self.config.state_dir.join("tasks").join(uid)
    }

    /// The log file of a task: always in the task's own log directory, which the
    /// node chooses; the task may only name the file (`spec.logPath`, a bare file
    /// name, checked by the API and again here).
    pub fn log_path(&self, task: &Task) -> PathBuf {
        let name = match task.spec.log_path.as_str() {
            name if api_types::validation::is_log_file_name(name) => name,
            _ => "log",
        };
        self.task_dir(&task.metadata.uid).join("logs").join(name)
    }
}

/// Who a task directory belongs to (`task.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

/// Why the nodelet stopped a run (`stop.json` in its run directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopRecord {
    reason: String,
    message: String,
    at: DateTime<Utc>,
    /// A stop for a failed liveness or startup probe: the run counts as
    /// failed and restarts under the task's restart policy (otherwise the
    /// stop ends the task, Killed).
    #[serde(default)]
    restart: bool,
}

/// When run `n + 1` may start, run `n` having ended as `record` says.
fn restart_at(config: &Config, record: &ExitRecord, n: u32) -> tokio::time::Instant {
    let delay = backoff(config, n);
    let since_end = record
        .finished_at
        .and_then(|at| (Utc::now() - at).to_std().ok())
        .unwrap_or_default();
    tokio::time::Instant::now() + delay.saturating_sub(since_end)
}

/// The delay before run `n + 1` after `n` runs ended: doubling from the base.
pub fn backoff(config: &Config, runs: u32) -> Duration {
    let factor = 1u32 << runs.saturating_sub(1).min(16);
    config
        .backoff_base
        .saturating_mul(factor)
        .min(config.backoff_max)
}

fn run_dir(dir: &Path, n: u32) -> RunDir {
    RunDir(dir.join(format!("run-{n}")))
}

/// The highest run number in a task directory.
fn last_run(dir: &Path) -> u32 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("run-"))
                .and_then(|n| n.parse().ok())
        })
        .max()
        .unwrap_or(0)
}

fn phase_of(task: &Task) -> TaskPhase {
    task.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn restarts_of(task: &Task) -> u32 {
    task.status
        .as_ref()
        .map(|s| s.restart_count.max(0) as u32)
        .unwrap_or(0)
}

fn revision(task: &Task) -> u64 {
    task.metadata.resource_version.parse().unwrap_or(0)
}

/// The grace period of a task's stop.
/// The grace period of a stop: the task's, else the one its run recorded (the
/// task may be gone), else the node's default.
fn grace(config: &Config, task: Option<&Task>, run: &RunDir) -> Duration {
    task.and_then(|t| t.spec.termination_grace_period_seconds)
        .map(|s| s.max(0) as u64)
        .or_else(|| {
            std::fs::read(run.spec())
                .ok()
                .and_then(|b| serde_json::from_slice::<RunSpec>(&b).ok())
                .and_then(|spec| spec.grace_seconds)
        })
        .map(Duration::from_secs)
        .unwrap_or(config.default_grace)
}

enum Local {
    /// Runs `1..=last` are over and dealt with (or there are none); the next may
    /// start at `not_before` (its restart backoff).
    Idle {
        last: u32,
        not_before: Option<tokio::time::Instant>,
    },
    /// A run runs.
    Running(Running),
    /// Run `n` ended; its end is not reported yet.
    Exited { n: u32, record: ExitRecord },
}

/// Run `n`, running.
struct Running {
    n: u32,
    started: Started,
    exit: oneshot::Receiver<ExitRecord>,
    stop: Option<Stopping>,
    /// The run's probes, once started (a task without probes has none).
    probes: Option<ProbeRun>,
    /// Whether the run is ready, and why not: what the probes last said.
    ready: Option<(bool, String)>,
}

/// A run's probes, running on their own task until dropped.
struct ProbeRun {
    handle: tokio::task::JoinHandle<()>,
    /// What they decide; `None` once they are done.
    events: Option<tokio::sync::mpsc::Receiver<crate::probe::ProbeEvent>>,
}

impl Drop for ProbeRun {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The reason of the Ready condition and Event of a failing probe.
const REASON_UNHEALTHY: &str = "Unhealthy";

struct Stopping {
    kill_at: tokio::time::Instant,
    killed: bool,
}

/// Drives one task until it is deleted (or the nodelet stops).
pub async fn drive(ctx: Arc<Ctx>, uid: String, mut updates: watch::Receiver<Option<Arc<Task>>>) {
    let dir = ctx.task_dir(&uid);
    let mut written: Option<Arc<Task>> = None;
    let mut local = recover(&ctx, &dir).await;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        // The freshest view: the watch, or what our own last write returned.
        let task = {
            let seen = updates.borrow_and_update().clone();
            match (&seen, &written) {
                (Some(seen), Some(ours)) if revision(ours) > revision(seen) => Some(ours.clone()),
                _ => seen,
            }
        };
        let shutting_down = ctx.shutdown.is_cancelled();
        let mut wake: Option<tokio::time::Instant> = retry_at;
        let step = step(&ctx, &dir, task.as_deref(), &mut local, shutting_down).await;
        match step {
            Ok(Step::Wait(until)) => {
                retry_at = None;
                wake = match (wake, until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Ok(Step::Wrote(task)) => {
                retry_at = None;
                written = Some(Arc::new(*task));
                continue;
            }
            Ok(Step::Again) => continue,
            Ok(Step::Done) => return,
            Err(error) => {
                debug!(%uid, %error, "will retry");
                let at = tokio::time::Instant::now() + Duration::from_secs(1);
                retry_at = Some(at);
                wake = Some(at);
                written = None;
            }
        }
        if shutting_down && (!ctx.config.stop_tasks_on_exit || !matches!(local, Local::Running(_)))
        {
            // Left running (adopted by the next nodelet), or stopped and reported.
            return;
        }
        // Wait for the API, the run, a deadline or shutdown.
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let (exited, probed) = match &mut local {
            Local::Running(running) => {
                let Running { exit, probes, .. } = running;
                (
                    futures::future::Either::Left(async move { exit.await.ok() }),
                    match probes.as_mut().and_then(|p| p.events.as_mut()) {
                        Some(events) => futures::future::Either::Left(events.recv()),
                        None => futures::future::Either::Right(std::future::pending()),
                    },
                )
            }
            _ => (
                futures::future::Either::Right(std::future::pending()),
                futures::future::Either::Right(std::future::pending()),
            ),
        };
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    // The manager is gone: treat as deleted only if it said so.
                    if !ctx.shutdown.is_cancelled() {
                        return;
                    }
                }
            }
            record = exited => {
                if let Local::Running(Running { n, .. }) = local {
                    let record = record.unwrap_or_else(|| ctx.driver.find(&run_dir(&dir, n)).exit_or_lost());
                    ctx.metrics.running.dec();
                    local = Local::Exited { n, record };
                }
            }
            event = probed => {
                if let Local::Running(running) = &mut local {
                    match event {
                        Some(event) => on_probe(&ctx, task.as_deref(), &dir, running, event).await,
                        // The probes are done (a restart was asked for).
                        None => {
                            if let Some(probes) = running.probes.as_mut() {
                                probes.events = None;
                            }
                        }
                    }
                }
            }
            _ = sleep => {}
            _ = ctx.shutdown.cancelled(), if !shutting_down => {}
        }
    }
}

impl Found {
    fn exit_or_lost(self) -> ExitRecord {
        match self {
            Found::Exited(record) => record,
            _ => ExitRecord::lost("the run's end was not recorded"),
        }
    }
}

enum Step {
    /// Nothing more to do until something changes (or this deadline).
    Wait(Option<tokio::time::Instant>),
    /// A status write succeeded; here is the object.
    Wrote(Box<Task>),
    /// The local state changed; look again.
    Again,
    /// The task is gone and cleaned up.
    Done,
}

/// Finds the runs of a task directory after a (re)start. A run whose shim died
/// with the node is ended there (its leftovers removed, its loss recorded),
/// which blocks: off the runtime's workers.
async fn recover(ctx: &Ctx, dir: &Path) -> Local {
    let n = last_run(dir);
    if n == 0 {
        return Local::Idle {
            last: 0,
            not_before: None,
        };
    }
    let run = run_dir(dir, n);
    let found = {
        let (driver, run) = (ctx.driver.clone(), run.clone());
        tokio::task::spawn_blocking(move || driver.find(&run)).await
    };
    let found = found.unwrap_or_else(|_| {
        Found::Exited(ExitRecord::lost(
            "the run could not be looked at after a restart",
        ))
    });
    match found {
        Found::Running(started) => {
            ctx.metrics.running.inc();
            // Its forwarded ports, as before the restart.
            let network = std::fs::read(run.spec())
                .ok()
                .and_then(|bytes| serde_json::from_slice::<RunSpec>(&bytes).ok())
                .and_then(|spec| spec.network);
            if let Some(network) = network
                && let Err(message) =
                    ctx.network
                        .claim_host_ports(&run.0, network.ip, &network.host_ports)
            {
                warn!(run = %run.0.display(), %message, "cannot forward an adopted run's ports");
            }
            info!(dir = %run.0.display(), pid = started.pid, "adopting a running task");
            Local::Running(Running {
                n,
                started,
                exit: spawn_wait(ctx, run.clone()),
                probes: None,
                ready: None,
                stop: read_stop(&run).map(|s| Stopping {
                    // A stop in progress continues where it was.
                    kill_at: tokio::time::Instant::now()
                        + grace(&ctx.config, None, &run)
                            .saturating_sub((Utc::now() - s.at).to_std().unwrap_or_default()),
                    killed: false,
                }),
            })
        }
        Found::Exited(record) => Local::Exited { n, record },
        Found::NotStarted => Local::Idle {
            last: n - 1,
            not_before: None,
        },
    }
}

fn spawn_wait(ctx: &Ctx, run: RunDir) -> oneshot::Receiver<ExitRecord> {
    let (tx, rx) = oneshot::channel();
    let driver = ctx.driver.clone();
    tokio::spawn(async move {
        let record = driver.wait(&run).await;
        let _ = tx.send(record);
    });
    rx
}

fn read_stop(run: &RunDir) -> Option<StopRecord> {
    let bytes = std::fs::read(run.0.join("stop.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Why a running task must stop, if it must.
fn stop_reason(
    config: &Config,
    fence: &Fence,
    task: Option<&Task>,
    started: &Started,
    shutting_down: bool,
) -> Option<(String, String)> {
    let Some(task) = task else {
        return Some(("Deleted".into(), "the task was deleted".into()));
    };
    if task.metadata.deletion_timestamp.is_some() {
        return Some(("Deleted".into(), "the task was deleted".into()));
    }
    let phase = phase_of(task);
    if phase.is_terminal() {
        let reason = task
            .status
            .as_ref()
            .map(|s| s.reason.clone())
            .unwrap_or_default();
        return Some((
            if reason.is_empty() {
                phase.to_string()
            } else {
                reason
            },
            format!("the task was marked {phase}"),
        ));
    }
    if let Some(limit) = task.spec.time_limit_seconds {
        let since = task
            .status
            .as_ref()
            .and_then(|s| s.start_time)
            .unwrap_or(started.started_at);
        if time_run(since, started) >= chrono::Duration::seconds(limit) {
            return Some((
                REASON_TIME_LIMIT_EXCEEDED.into(),
                format!("the task ran longer than its time limit of {limit}s"),
            ));
        }
    }
    if shutting_down && config.stop_tasks_on_exit {
        return Some(("NodeShutdown".into(), "the node shut down".into()));
    }
    if fence.is_fenced() {
        return Some((
            REASON_NODE_FENCED.into(),
            format!(
                "the node could not renew its lease for {}s: its tasks may run elsewhere",
                fence.lease.as_secs()
            ),
        ));
    }
    None
}

/// When a running task reaches its time limit.
fn time_limit_at(task: Option<&Task>, started: &Started) -> Option<tokio::time::Instant> {
    let task = task?;
    let limit = task.spec.time_limit_seconds?;
    let since = task
        .status
        .as_ref()
        .and_then(|s| s.start_time)
        .unwrap_or(started.started_at);
    let left = (chrono::Duration::seconds(limit) - time_run(since, started))
        .to_std()
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

/// How long a task has run toward its time limit (counted from `since`, its
/// first start): the time before this run by the wall clock, plus this run's
/// age by the boot clock, so that a step of the node's wall clock neither
/// fires the limit early nor holds it off (the soak steps it 5 min either
/// way). The wall clock alone when the run's process cannot be read.
fn time_run(since: DateTime<Utc>, started: &Started) -> chrono::Duration {
    // loom-soak: clock step
    match crate::run::process_age(started.pid).and_then(|a| chrono::Duration::from_std(a).ok()) {
        Some(age) => (started.started_at - since).max(chrono::Duration::zero()) + age,
        None => Utc::now() - since,
    }
}

/// What a state's step decided: what the actor does next, and the task's next
/// local state when it changes.
type Transition = (Step, Option<Local>);

/// One step of a task's state machine: what its local state and the API's view of
/// it call for now. One function per local state.
async fn step(
    ctx: &Ctx,
    dir: &Path,
    task: Option<&Task>,
    local: &mut Local,
    shutting_down: bool,
) -> Result<Step, client::Error> {
    let (step, next) = match local {
        Local::Running(running) => step_running(ctx, dir, task, running, shutting_down).await?,
        Local::Exited { n, record } => {
            // The run is over: its address goes back (again is harmless).
            release_address(ctx, &run_dir(dir, *n));
            step_exited(ctx, dir, task, *n, record, shutting_down).await?
        }
        Local::Idle { last, not_before } => {
            step_idle(ctx, dir, task, *last, *not_before, shutting_down).await?
        }
    };
    if let Some(next) = next {
        *local = next;
    }
    Ok(step)
}

/// Run `n` runs: notice its end, finish a stop in progress, start a stop the task
/// calls for, or report that it runs.
async fn step_running(
    ctx: &Ctx,
    dir: &Path,
    task: Option<&Task>,
    running: &mut Running,
    shutting_down: bool,
) -> Result<Transition, client::Error> {
    let n = running.n;
    // A short run may be over before its start is reported: report the end alone.
    if running.stop.is_none()
        && let Ok(record) = running.exit.try_recv()
    {
        ctx.metrics.running.dec();
        return Ok((Step::Again, Some(Local::Exited { n, record })));
    }
    let run = run_dir(dir, n);
    if let Some(stopping) = running.stop.as_mut() {
        return Ok((Step::Wait(escalate_stop(ctx, &run, stopping)), None));
    }
    if let Some((reason, message)) = stop_reason(
        &ctx.config,
        &ctx.fence,
        task,
        &running.started,
        shutting_down,
    ) {
        running.stop = Some(begin_stop(ctx, task, &run, reason, message));
        return Ok((Step::Again, None));
    }
    let Some(task) = task else {
        return Ok((Step::Wait(None), None));
    };
    if running.ready.is_none() {
        start_probes(ctx, task, running);
    }
    let ready = running.ready.clone().unwrap_or((true, String::new()));
    if let Some(written) = report_running(ctx, task, n, &running.started, &ready).await? {
        return Ok((Step::Wrote(Box::new(written)), None));
    }
    // Look again at its time limit or when the lease would run out, whichever
    // is first (a renewal meanwhile makes the second a no-op).
    let fence_at = ctx.fence.expires_at();
    let wake = time_limit_at(Some(task), &running.started).map_or(fence_at, |t| t.min(fence_at));
    Ok((Step::Wait(Some(wake)), None))
}

/// A stop in progress: SIGKILL once the grace period is over. Returns when to look
/// again.
fn escalate_stop(ctx: &Ctx, run: &RunDir, stopping: &mut Stopping) -> Option<tokio::time::Instant> {
    if !stopping.killed && tokio::time::Instant::now() >= stopping.kill_at {
        info!(run = %run.0.display(), "grace period over: SIGKILL");
        ctx.driver.signal(run, libc::SIGKILL);
        stopping.killed = true;
    }
    let next = (!stopping.killed).then_some(stopping.kill_at);
    next.or(Some(tokio::time::Instant::now() + Duration::from_secs(1)))
}

/// Starts stopping a run: records why (so the end is reported as a kill, even
/// after a nodelet restart) and sends SIGTERM.
fn begin_stop(
    ctx: &Ctx,
    task: Option<&Task>,
    run: &RunDir,
    reason: String,
    message: String,
) -> Stopping {
    begin_stop_with(ctx, task, run, reason, message, false, None)
}

/// [`begin_stop`] with the choice of restarting after it (a failed probe)
/// and of a grace period of its own (the probe's).
fn begin_stop_with(
    ctx: &Ctx,
    task: Option<&Task>,
    run: &RunDir,
    reason: String,
    message: String,
    restart: bool,
    grace_override: Option<Duration>,
) -> Stopping {
    let record = StopRecord {
        reason: reason.clone(),
        message,
        at: Utc::now(),
        restart,
    };
    if let Ok(bytes) = serde_json::to_vec(&record) {
        let _ = write_replace(&run.0.join("stop.json"), &bytes);
    }
    let grace = grace_override.unwrap_or_else(|| grace(&ctx.config, task, run));
    info!(run = %run.0.display(), %reason, ?grace, "stopping: SIGTERM");
    ctx.driver.signal(run, libc::SIGTERM);
    Stopping {
        kill_at: tokio::time::Instant::now() + grace,
        killed: false,
    }
}

/// Says that run `n` runs (again, if an earlier write failed); `None` when the
/// status already says so.
async fn report_running(
    ctx: &Ctx,
    task: &Task,
    n: u32,
    started: &Started,
    (ready, why_not): &(bool, String),
) -> Result<Option<Task>, client::Error> {
    let status = task.status.clone().unwrap_or_default();
    let task_ip = started.task_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let (reason, message) = if *ready {
        ("Ready", "")
    } else if why_not.is_empty() {
        (
            "ProbesPending",
            "waiting for its readiness or startup probe",
        )
    } else {
        (REASON_UNHEALTHY, why_not.as_str())
    };
    let conditions = with_ready(task, *ready, reason, message);
    if status.phase == TaskPhase::Running
        && restarts_of(task) == n - 1
        && status.reason.is_empty()
        && status.start_time.is_some()
        && status.task_ip == task_ip
        && conditions.is_none()
    {
        return Ok(None);
    }
    let start_time = status.start_time.unwrap_or(started.started_at);
    let patch = json!({
        "phase": "Running",
        "reason": "",
        "message": "",
        "startTime": start_time,
        "restartCount": n - 1,
        "nodeName": ctx.config.name,
        "logPath": ctx.log_path(task),
        "taskIP": task_ip,
        "conditions": conditions,
    });
    write_status(ctx, task, patch).await.map(Some)
}

/// The task's conditions with `Ready` set as given, or `None` when it
/// already is (a merge patch replaces the whole list: the others are kept).
fn with_ready(task: &Task, ready: bool, reason: &str, message: &str) -> Option<Vec<Condition>> {
    let mut conditions = task
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = if ready {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let condition = Condition::new(TASK_CONDITION_READY, status, reason, message);
    set_condition(&mut conditions, condition, Utc::now()).then_some(conditions)
}

/// Starts a run's probes if its task has any, and sets whether it is ready
/// until they say otherwise: at once without a readiness or startup probe.
fn start_probes(ctx: &Ctx, task: &Task, running: &mut Running) {
    let probes = crate::probe::TaskProbes::of(&task.spec);
    let gated = probes.readiness.is_some() || probes.startup.is_some();
    running.ready = Some((!gated, String::new()));
    if probes == crate::probe::TaskProbes::default() || running.probes.is_some() {
        return;
    }
    // A container is probed at its address; a task on the node's network
    // (exec, raw) on the node's loopback.
    let ip = running
        .started
        .task_ip
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    let target = crate::probe::ProbeTarget::new(ip, &task.spec);
    // Counted from when the run started: a run adopted after a nodelet
    // restart keeps its initial delays and periods.
    let since = (Utc::now() - running.started.started_at)
        .to_std()
        .unwrap_or_default();
    let start = tokio::time::Instant::now()
        .checked_sub(since)
        .unwrap_or_else(tokio::time::Instant::now);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let exec: Arc<dyn crate::probe::ExecProber> = Arc::new(crate::probe::NoExec);
    let name = format!("{}/{}", task.metadata.namespace, task.metadata.name);
    let node = ctx.config.name.clone();
    let handle = tokio::spawn(
        async move {
            let prober = crate::probe::NetworkProber { target, exec };
            crate::probe::run_with(probes, &prober, start, tx).await;
        }
        .instrument(tracing::debug_span!("probes", task = %name, %node)),
    );
    running.probes = Some(ProbeRun {
        handle,
        events: Some(rx),
    });
}

/// What a run's probes decided: its readiness (written by the next step),
/// or a restart for a failed liveness or startup probe, with an Event.
async fn on_probe(
    ctx: &Ctx,
    task: Option<&Task>,
    dir: &Path,
    running: &mut Running,
    event: crate::probe::ProbeEvent,
) {
    use crate::probe::{ProbeEvent, ProbeKind};
    match event {
        ProbeEvent::Ready { ready, message } => {
            if !ready
                && !message.is_empty()
                && let Some(task) = task
            {
                let _ = ctx
                    .recorder
                    .publish(
                        &ObjectReference::to(task),
                        EventType::Warning,
                        REASON_UNHEALTHY,
                        &message,
                    )
                    .await;
            }
            running.ready = Some((ready, message));
        }
        ProbeEvent::Restart {
            probe,
            message,
            grace_period_seconds,
        } => {
            running.ready = Some((false, message.clone()));
            if let Some(task) = task {
                let _ = ctx
                    .recorder
                    .publish(
                        &ObjectReference::to(task),
                        EventType::Warning,
                        REASON_UNHEALTHY,
                        &format!("{message}; the task will be restarted"),
                    )
                    .await;
            }
            if running.stop.is_none() {
                let reason = match probe {
                    ProbeKind::Startup => REASON_STARTUP_PROBE_FAILED,
                    _ => REASON_LIVENESS_PROBE_FAILED,
                };
                let grace = grace_period_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
                running.stop = Some(begin_stop_with(
                    ctx,
                    task,
                    &run_dir(dir, running.n),
                    reason.to_owned(),
                    message,
                    true,
                    grace,
                ));
            }
        }
    }
}

/// The reason of a run stopped for its liveness probe.
pub const REASON_LIVENESS_PROBE_FAILED: &str = "LivenessProbeFailed";
/// The reason of a run stopped for its startup probe.
pub const REASON_STARTUP_PROBE_FAILED: &str = "StartupProbeFailed";

/// Run `n` ended and its end is not reported yet: report it, and decide whether
/// the task ends or restarts after a backoff.
async fn step_exited(
    ctx: &Ctx,
    dir: &Path,
    task: Option<&Task>,
    n: u32,
    record: &ExitRecord,
    shutting_down: bool,
) -> Result<Transition, client::Error> {
    let idle = |not_before| {
        Some(Local::Idle {
            last: n,
            not_before,
        })
    };
    let Some(task) = task else {
        return Ok((Step::Again, idle(None)));
    };
    if phase_of(task).is_terminal() {
        // Someone else ended it (a kill, preemption, node loss): fill in the end if
        // they did not.
        let step = match fill_in_end(ctx, task, n, record).await? {
            Some(written) => Step::Wrote(Box::new(written)),
            None => Step::Again,
        };
        return Ok((step, idle(None)));
    }
    if restarts_of(task) >= n {
        // Its end was reported and a restart decided before.
        let not_before = restart_at(&ctx.config, record, n);
        return Ok((Step::Again, idle(Some(not_before))));
    }
    let end = RunEnd::of(
        record,
        read_stop(&run_dir(dir, n)).as_ref(),
        task.spec.restart_policy.unwrap_or_default(),
        shutting_down,
    );
    let written = write_status(ctx, task, end.patch(ctx, task, n, record)).await?;
    end.record(ctx, task).await;
    let not_before = restart_at(&ctx.config, record, n);
    Ok((Step::Wrote(Box::new(written)), idle(Some(not_before))))
}

/// The end of run `n` of a task someone else ended: its finish time and exit code,
/// if the status lacks them. `None` when there is nothing to fill in.
async fn fill_in_end(
    ctx: &Ctx,
    task: &Task,
    n: u32,
    record: &ExitRecord,
) -> Result<Option<Task>, client::Error> {
    let status = task.status.clone().unwrap_or_default();
    if status.finish_time.is_some() || restarts_of(task) != n - 1 {
        return Ok(None);
    }
    let patch = json!({
        "finishTime": record.finished_at.unwrap_or_else(Utc::now),
        "exitCode": record.exit_code,
    });
    write_status(ctx, task, patch).await.map(Some)
}

/// How a run ended, as the task's status reports it.
struct RunEnd {
    /// The phase the task ends in, or `None` when it restarts.
    terminal: Option<TaskPhase>,
    reason: String,
    message: String,
}

impl RunEnd {
    /// Classifies a run's end: stopped by this node (Killed), could not start
    /// (Failed), or exited, then ending or restarting by the restart policy (a
    /// node shutting down restarts nothing).
    fn of(
        record: &ExitRecord,
        stopped: Option<&StopRecord>,
        policy: RestartPolicy,
        shutting_down: bool,
    ) -> RunEnd {
        let end = |terminal, reason, message| RunEnd {
            terminal,
            reason,
            message,
        };
        if let Some(stop) = stopped {
            if stop.restart {
                // Stopped for a failed probe: a failure, restarted by policy.
                let restart = matches!(policy, RestartPolicy::Always | RestartPolicy::OnFailure);
                let terminal = (!restart || shutting_down).then_some(TaskPhase::Failed);
                return end(terminal, stop.reason.clone(), stop.message.clone());
            }
            return end(
                Some(TaskPhase::Killed),
                stop.reason.clone(),
                stop.message.clone(),
            );
        }
        if record.is_lost() {
            // Its node crashed (or its shim was killed): not the task's doing.
            // A task that restarts on failure or always runs again here; any
            // other is Lost, as if its node had gone, and its owner replaces it.
            let message = record.error.clone().unwrap_or_default();
            let restart = matches!(policy, RestartPolicy::Always | RestartPolicy::OnFailure);
            let terminal = (!restart || shutting_down).then_some(TaskPhase::Lost);
            return end(terminal, REASON_SHIM_LOST.to_owned(), message);
        }
        if let Some(error) = &record.error {
            let reason = record
                .reason
                .clone()
                .unwrap_or_else(|| "StartFailed".into());
            return end(Some(TaskPhase::Failed), reason, error.clone());
        }
        let code = record.exit_code.unwrap_or(-1);
        let reason = if record.oom_killed {
            "OOMKilled".to_owned()
        } else if code == 0 {
            "Completed".to_owned()
        } else {
            "Error".to_owned()
        };
        let message = match record.signal {
            Some(signal) => format!("killed by signal {signal}"),
            None => format!("exited with code {code}"),
        };
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        };
        if restart && !shutting_down {
            end(None, reason, message)
        } else if code == 0 {
            end(Some(TaskPhase::Completed), String::new(), message)
        } else {
            end(Some(TaskPhase::Failed), reason, message)
        }
    }

    /// The status patch that reports this end of run `n`.
    fn patch(&self, ctx: &Ctx, task: &Task, n: u32, record: &ExitRecord) -> Value {
        let (reason, message) = (&self.reason, &self.message);
        // The process is gone: not ready, until a next run says so.
        let conditions = with_ready(task, false, "RunEnded", "the task's process ended");
        let mut patch = self.patch_without_ready(ctx, task, n, record, reason, message);
        if let (Some(conditions), Some(map)) = (conditions, patch.as_object_mut()) {
            map.insert("conditions".to_owned(), json!(conditions));
        }
        patch
    }

    fn patch_without_ready(
        &self,
        ctx: &Ctx,
        task: &Task,
        n: u32,
        record: &ExitRecord,
        reason: &str,
        message: &str,
    ) -> Value {
        match self.terminal {
            Some(phase) => json!({
                "phase": phase,
                "reason": reason,
                "message": message,
                "exitCode": record.exit_code,
                "finishTime": record.finished_at.unwrap_or_else(Utc::now),
                "startTime": task.status.as_ref().and_then(|s| s.start_time).or(record.started_at),
                "restartCount": n - 1,
                "nodeName": ctx.config.name,
                "logPath": ctx.log_path(task),
            }),
            None => {
                let delay = backoff(&ctx.config, n);
                json!({
                    "phase": "Running",
                    "reason": "BackOff",
                    "message": format!("{message} ({reason}); restarting in {}s", delay.as_secs_f64()),
                    "exitCode": record.exit_code,
                    "restartCount": n,
                })
            }
        }
    }

    /// Counts the end, and publishes an Event for what a user must look at:
    /// failures, kills, restarts (a completion is in the status; an event for each
    /// would double the writes of a batch job).
    async fn record(&self, ctx: &Ctx, task: &Task) {
        ctx.metrics
            .runs_ended
            .get_or_create(&crate::metrics::EndLabels {
                phase: self.terminal.map_or("Running", |p| p.as_str()).to_owned(),
                reason: self.reason.clone(),
            })
            .inc();
        let (event_reason, message) = match self.terminal {
            Some(TaskPhase::Completed) => return,
            Some(phase) if self.reason.is_empty() => (phase.to_string(), self.message.clone()),
            Some(_) => (self.reason.clone(), self.message.clone()),
            None => (
                "BackOff".to_owned(),
                format!("{}: restarting", self.message),
            ),
        };
        let _ = ctx
            .recorder
            .publish(
                &ObjectReference::to(task),
                EventType::Warning,
                &event_reason,
                &message,
            )
            .await;
    }
}

/// Below this much free space in its state dir, the nodelet starts no run.
const MIN_FREE_BYTES: u64 = 1 << 20;

/// The reason of the event of a task waiting for room in the state dir.
const REASON_DISK_FULL: &str = "DiskFull";

/// Runs `1..=last` are over: clean up after a deleted task, report a deletion,
/// or start the next run once its backoff is over.
async fn step_idle(
    ctx: &Ctx,
    dir: &Path,
    task: Option<&Task>,
    last: u32,
    not_before: Option<tokio::time::Instant>,
    shutting_down: bool,
) -> Result<Transition, client::Error> {
    let Some(task) = task else {
        cleanup(ctx, dir);
        return Ok((Step::Done, None));
    };
    let phase = phase_of(task);
    if task.metadata.deletion_timestamp.is_some() {
        if !phase.is_terminal() {
            let written = write_status(
                ctx,
                task,
                json!({"phase": "Killed", "reason": "Deleted", "message": "the task was deleted", "finishTime": Utc::now()}),
            )
            .await?;
            return Ok((Step::Wrote(Box::new(written)), None));
        }
        return Ok((Step::Wait(None), None));
    }
    if phase.is_terminal() || shutting_down {
        return Ok((Step::Wait(None), None));
    }
    if let Some(at) = not_before
        && tokio::time::Instant::now() < at
    {
        return Ok((Step::Wait(Some(at)), None));
    }
    if ctx.fence.is_fenced() {
        // Nothing starts while the node cannot renew its lease.
        let again = tokio::time::Instant::now() + Duration::from_secs(1);
        return Ok((Step::Wait(Some(again)), None));
    }
    // loom-soak: disk full
    // Nothing starts on a full state dir either: the run's records could not
    // be written (it failed as StartFailed, or its shim died unrecorded and
    // it was lost, a job's retries spent in seconds). The task waits, told
    // why by an event, and starts once there is room again.
    if let Some(free) = crate::run::free_bytes(&ctx.config.state_dir)
        && free < MIN_FREE_BYTES
    {
        warn!(task = %task.metadata.name, free, "the state dir is full: the task waits to start");
        let _ = ctx
            .recorder
            .publish(
                &ObjectReference::to(task),
                EventType::Warning,
                REASON_DISK_FULL,
                &format!(
                    "the node's state dir {} has {free} bytes free (less than {MIN_FREE_BYTES}): the task waits to start",
                    ctx.config.state_dir.display()
                ),
            )
            .await;
        let again = tokio::time::Instant::now() + Duration::from_secs(2);
        return Ok((Step::Wait(Some(again)), None));
    }
    let n = last + 1;
    let next = match start(ctx, dir, task, n).await {
        Ok(started) => Local::Running(Running {
            n,
            started,
            exit: spawn_wait(ctx, run_dir(dir, n)),
            stop: None,
            probes: None,
            ready: None,
        }),
        Err(record) => Local::Exited { n, record },
    };
    Ok((Step::Again, Some(next)))
}

/// Writes a status change, conditional on the task's resourceVersion.
async fn write_status(ctx: &Ctx, task: &Task, mut patch: Value) -> Result<Task, client::Error> {
    let api: Api<Task> = Api::namespaced(ctx.client.clone(), &task.metadata.namespace);
    if let Some(map) = patch.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    let body = json!({
        "metadata": {"resourceVersion": task.metadata.resource_version},
        "status": patch,
    });
    let result = api
        .patch_status(
            &task.metadata.name,
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await;
    if let Err(error) = &result {
        if error.is_conflict() {
            debug!(task = %task.metadata.name, "status write lost a race; looking again");
        } else {
            warn!(task = %task.metadata.name, %error, "cannot write the task's status");
        }
    }
    result
}

/// Prepares run `n` of `task` and starts it.
async fn start(ctx: &Ctx, dir: &Path, task: &Task, n: u32) -> Result<Started, ExitRecord> {
    let run = run_dir(dir, n);
    let record = TaskRecord {
        namespace: task.metadata.namespace.clone(),
        name: task.metadata.name.clone(),
        uid: task.metadata.uid.clone(),
    };
    let pulled = ctx
        .puller
        .pull_missing(task)
        .await
        .map_err(|e| ExitRecord::failed("ImagePullFailed", e.to_string()));
    // The service account's token, requested before anything else is
    // prepared: a missing account fails the task before it runs.
    let service_account = match crate::service_account::account_of(task) {
        None => None,
        Some(_) => Some(
            crate::service_account::project(&ctx.client, task, &ctx.task_dir(&task.metadata.uid))
                .await
                .map_err(|failure| ExitRecord::failed(failure.reason, failure.message)),
        ),
    };
    let prepared = (|| -> Result<(), ExitRecord> {
        std::fs::create_dir_all(&run.0)
            .map_err(|e| ExitRecord::failed("StartFailed", format!("{}: {e}", run.0.display())))?;
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| ExitRecord::failed("StartFailed", e.to_string()))?;
        let record_path = dir.join("task.json");
        if !record_path.exists() {
            write_replace(&record_path, &bytes)
        } else {
            Ok(())
        }
        .map_err(|e| ExitRecord::failed("StartFailed", e.to_string()))?;
        pulled?;
        let service_account = service_account.transpose()?;
        let mut spec = run_spec(ctx, task, n, service_account)?;
        attach_network(ctx, task, &run, &mut spec)?;
        let bytes = serde_json::to_vec_pretty(&spec)
            .map_err(|e| ExitRecord::failed("StartFailed", e.to_string()))?;
        write_replace(&run.spec(), &bytes)
            .map_err(|e| ExitRecord::failed("StartFailed", e.to_string()))?;
        Ok(())
    })();
    if let Err(record) = prepared {
        release_address(ctx, &run);
        // Remember the failure as this run's end.
        if let Ok(bytes) = serde_json::to_vec(&record) {
            let _ = write_replace(&run.exit(), &bytes);
        }
        return Err(record);
    }
    let asked = std::time::Instant::now();
    let result = ctx.driver.start(&run).await;
    if result.is_ok() {
        ctx.metrics.runs_started.inc();
        ctx.metrics.running.inc();
        ctx.metrics
            .start_seconds
            .observe(asked.elapsed().as_secs_f64());
    }
    match &result {
        Ok(started) => {
            info!(task = %format!("{}/{}", record.namespace, record.name), run = n, pid = started.pid, "started")
        }
        Err(record) => {
            warn!(task = %format!("{}/{}", task.metadata.namespace, task.metadata.name), error = ?record.error, "could not start")
        }
    }
    result
}

/// Gives a container's run an address on the node's task network, if the
/// node has one, and its `/etc/hosts` and `/etc/resolv.conf`.
fn attach_network(
    ctx: &Ctx,
    task: &Task,
    run: &RunDir,
    spec: &mut RunSpec,
) -> Result<(), ExitRecord> {
    if spec.driver != DriverKind::Container {
        return Ok(());
    }
    let Some(network) = ctx.network.current() else {
        return Ok(());
    };
    let ip = network
        .ipam
        .allocate(&run.0, run_ended)
        .map_err(|e| ExitRecord::failed(crate::ipam::EXHAUSTED, e.to_string()))?;
    let written = (|| {
        let hosts = run.0.join("hosts");
        let resolv_conf = run.0.join("resolv.conf");
        write_replace(&hosts, hosts_file(ip, &spec.hostname).as_bytes())?;
        let resolv = match ctx.config.cluster_dns {
            true => cluster_resolv_conf(network.gateway, &task.metadata.namespace),
            false => resolv_conf_file(),
        };
        write_replace(&resolv_conf, resolv.as_bytes())?;
        Ok::<_, std::io::Error>(crate::run::EtcFiles { hosts, resolv_conf })
    })();
    let etc_files = match written {
        Ok(files) => files,
        Err(e) => {
            let _ = network.ipam.release(ip, &run.0);
            return Err(ExitRecord::failed(
                "StartFailed",
                format!("cannot write the task's /etc files: {e}"),
            ));
        }
    };
    debug!(task = %task.metadata.name, %ip, "task address");
    let host_ports = host_ports_of(task);
    if let Err(message) = ctx.network.claim_host_ports(&run.0, ip, &host_ports) {
        let _ = network.ipam.release(ip, &run.0);
        return Err(ExitRecord::failed(REASON_HOST_PORT_CONFLICT, message));
    }
    spec.network = Some(crate::network::TaskNetwork {
        ip,
        prefix_len: network.subnet.prefix_len(),
        gateway: network.gateway,
        bridge: network.bridge.clone(),
        host_veth: crate::network::host_veth_name(&spec.container_id),
        host_ports,
    });
    spec.etc_files = Some(etc_files);
    Ok(())
}

/// The reason of a run refused a port of the node another run holds.
pub const REASON_HOST_PORT_CONFLICT: &str = "HostPortConflict";

/// The node's ports a task asks for (`ports[].hostPort`).
fn host_ports_of(task: &Task) -> Vec<crate::network::HostPort> {
    use crate::network::{HostPort, HostPortProtocol};
    task.spec
        .ports
        .iter()
        .filter_map(|p| {
            Some(HostPort {
                host_port: u16::try_from(p.host_port?).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: match p.protocol() {
                    api_types::Protocol::Tcp => HostPortProtocol::Tcp,
                    api_types::Protocol::Udp => HostPortProtocol::Udp,
                },
            })
        })
        .collect()
}

/// Whether the run in directory `dir` is over (its end recorded, or the
/// directory gone): its address may be lent again.
fn run_ended(dir: &Path) -> bool {
    !dir.is_dir() || RunDir(dir.to_owned()).exit().exists()
}

/// Gives back the address run `run` holds, if any.
fn release_address(ctx: &Ctx, run: &RunDir) {
    ctx.network.release_host_ports(&run.0);
    let Some(network) = ctx.network.current() else {
        return;
    };
    let ip = std::fs::read(run.spec())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<RunSpec>(&bytes).ok())
        .and_then(|spec| spec.network)
        .map(|n| n.ip);
    let released = match ip {
        Some(ip) => network.ipam.release(ip, &run.0).map(usize::from),
        None => network.ipam.release_owner(&run.0),
    };
    if let Err(error) = released {
        warn!(run = %run.0.display(), %error, "cannot give the run's address back");
    }
}

/// A container's `/etc/hosts`: loopback and its own name on its address.
fn hosts_file(ip: std::net::Ipv4Addr, hostname: &str) -> String {
    format!(
        "# Written by the Loom nodelet.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    )
}

/// A container's `/etc/resolv.conf` with the node's resolver (`loom proxy`
/// on the bridge's address): the task's namespace first, so `NAME` is its
/// namespace's Service and `NAME.NAMESPACE` any namespace's.
fn cluster_resolv_conf(gateway: std::net::Ipv4Addr, namespace: &str) -> String {
    format!(
        "# Written by the Loom nodelet: the node's resolver answers the cluster's names.\n\
         nameserver {gateway}\n\
         search {namespace}.svc svc\n\
         options ndots:3\n"
    )
}

/// A container's `/etc/resolv.conf`: the node's name servers, but those on
/// loopback (unreachable from the task's namespace; a local stub resolver's
/// upstream servers are used instead), and its search domains and options.
fn resolv_conf_file() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = resolv_conf_from(&host);
    if !out.contains("nameserver") {
        // systemd-resolved's stub at 127.0.0.53: its upstream servers.
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            out = resolv_conf_from(&upstream);
        }
    }
    format!("# Written by the Loom nodelet from the node's resolver configuration.\n{out}")
}

fn resolv_conf_from(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(server) = words.next() else { continue };
                let loopback = server
                    .parse::<std::net::IpAddr>()
                    .map_or(true, |ip| ip.is_loopback());
                if !loopback {
                    out.push_str(&format!("nameserver {server}\n"));
                }
            }
            Some("search" | "domain" | "options") => {
                out.push_str(line.trim());
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The run spec of run `n` of `task`.
fn run_spec(
    ctx: &Ctx,
    task: &Task,
    n: u32,
    service_account: Option<PathBuf>,
) -> Result<RunSpec, ExitRecord> {
    let spec = &task.spec;
    let driver = match spec.driver.unwrap_or_default() {
        api_types::Driver::Container => DriverKind::Container,
        api_types::Driver::Exec => DriverKind::Exec,
        api_types::Driver::Raw => DriverKind::Raw,
    };
    let image = match driver {
        DriverKind::Container => Some(
            ctx.images
                .resolve(&spec.image)
                .map_err(|e| ExitRecord::failed("ImageNotFound", e.to_string()))?,
        ),
        DriverKind::Exec | DriverKind::Raw => None,
    };
    let mut args: Vec<String> = Vec::new();
    let config = image.as_ref().map(|i| i.config.clone()).unwrap_or_default();
    if !spec.command.is_empty() {
        args.extend(spec.command.iter().cloned());
        args.extend(spec.args.iter().cloned());
    } else {
        args.extend(config.entrypoint.iter().cloned());
        if spec.args.is_empty() {
            args.extend(config.cmd.iter().cloned());
        } else {
            args.extend(spec.args.iter().cloned());
        }
    }
    if args.is_empty() {
        return Err(ExitRecord::failed(
            "InvalidCommand",
            "the task has no command and its image no entrypoint or cmd",
        ));
    }
    let refused = |r: crate::permissions::Refused| ExitRecord::failed(r.reason, r.message);
    if driver == DriverKind::Raw {
        crate::permissions::check_raw_exec(&ctx.config).map_err(refused)?;
    }
    let mut mounts = Vec::new();
    for mount in &spec.mounts {
        let read_only = mount.read_only.unwrap_or(true);
        let source = crate::permissions::resolve_mount(&ctx.config, &mount.source, read_only)
            .map_err(refused)?;
        mounts.push(MountSpec {
            source,
            target: mount.target.clone(),
            read_only,
        });
    }
    // Environment: PATH, the image's, Loom's, then the task's (last wins).
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    let set = |env: &mut Vec<(String, String)>, name: &str, value: String| {
        env.retain(|(n, _)| n != name);
        env.push((name.to_owned(), value));
    };
    for pair in &config.env {
        if let Some((name, value)) = pair.split_once('=') {
            set(&mut env, name, value.to_owned());
        }
    }
    set(&mut env, "HOSTNAME", task.metadata.name.clone());
    set(&mut env, "LOOM_TASK_NAME", task.metadata.name.clone());
    set(&mut env, "LOOM_NAMESPACE", task.metadata.namespace.clone());
    set(&mut env, "LOOM_NODE_NAME", ctx.config.name.clone());
    if let Some(index) = spec.index {
        set(&mut env, "LOOM_TASK_INDEX", index.to_string());
    }
    if service_account.is_some()
        && let Some((host, port)) = crate::service_account::service_env(&ctx.client)
    {
        set(&mut env, "KUBERNETES_SERVICE_HOST", host);
        set(&mut env, "KUBERNETES_SERVICE_PORT", port);
    }
    for var in &spec.env {
        set(&mut env, &var.name, var.value.clone());
    }
    let mut cwd = if spec.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        spec.working_dir.clone()
    };
    let mut sandbox = None;
    if matches!(driver, DriverKind::Exec | DriverKind::Raw) {
        // A host process sees host paths: values naming a mount's target name its
        // source instead (e.g. LOOM_OUTPUT_DIR=/output); a confined one sees each
        // mount at its source path.
        for (_, value) in env.iter_mut() {
            if let Some(host) = host_path(&mounts, value) {
                *value = host;
            }
        }
        if let Some(host) = host_path(&mounts, &cwd) {
            cwd = host;
        }
        // The task's work directory, kept across its runs. Resolved: the confined
        // process sees it at that path, bound over the emptied state directory.
        let failed = |path: &Path, e: std::io::Error| {
            ExitRecord::failed("StartFailed", format!("{}: {e}", path.display()))
        };
        let work_dir = ctx.task_dir(&task.metadata.uid).join("sandbox");
        std::fs::create_dir_all(&work_dir).map_err(|e| failed(&work_dir, e))?;
        let work_dir = work_dir.canonicalize().map_err(|e| failed(&work_dir, e))?;
        if cwd.is_empty() {
            cwd = work_dir.display().to_string();
        }
        set(&mut env, "HOME", cwd.clone());
        if driver == DriverKind::Exec {
            let state = &ctx.config.state_dir;
            sandbox = Some(Sandbox {
                work_dir,
                hidden: vec![state.canonicalize().map_err(|e| failed(state, e))?],
                uid: ctx.config.exec_uid,
            });
        }
    }
    let resources = &spec.resources;
    let limits = Limits {
        cpu_millis: resources
            .cpu
            .as_ref()
            .map(|q| q.milli_value().clamp(1, i128::from(u32::MAX)) as u64),
        memory_bytes: resources
            .memory
            .as_ref()
            .map(|q| q.value().clamp(1 << 20, i128::from(i64::MAX)) as u64),
        pids: Some(ctx.config.pids_limit),
    };
    let container_id = format!("{}-{n}", task.metadata.uid);
    let hostname: String = task.metadata.name.chars().take(63).collect();
    Ok(RunSpec {
        task: format!("{}/{}", task.metadata.namespace, task.metadata.name),
        driver,
        container_id: container_id.clone(),
        container_root: ctx.config.state_dir.join("containers"),
        image_rootfs: image.map(|i| i.rootfs),
        args,
        env: env.into_iter().map(|(n, v)| format!("{n}={v}")).collect(),
        cwd,
        mounts,
        limits,
        cgroup_path: format!(
            "/{}/{}/{container_id}",
            ctx.config.cgroup_parent, ctx.config.name
        ),
        log_path: ctx.log_path(task),
        log_max_bytes: ctx.config.log_max_bytes,
        hostname,
        grace_seconds: spec
            .termination_grace_period_seconds
            .map(|s| s.max(0) as u64),
        sandbox,
        service_account,
        network: None,
        etc_files: None,
    })
}

/// The host path of a container path under one of the mounts.
fn host_path(mounts: &[MountSpec], path: &str) -> Option<String> {
    mounts.iter().find_map(|m| {
        let target = m.target.trim_end_matches('/');
        if target.is_empty() {
            return None;
        }
        if path == target {
            Some(m.source.display().to_string())
        } else {
            path.strip_prefix(target)
                .filter(|rest| rest.starts_with('/'))
                .map(|rest| format!("{}{rest}", m.source.display()))
        }
    })
}

/// Removes a deleted task's directory (runs, logs); a mount left in it (a
/// crashed run's root) is unmounted first, so the removal never walks into it.
fn cleanup(ctx: &Ctx, dir: &Path) {
    let left = crate::shim::unmount_under(dir);
    if !left.is_empty() {
        warn!(dir = %dir.display(), mounts = ?left, "unmounted what a task's runs left");
    }
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), %error, "cannot remove a task's directory");
    }
    debug!(node = %ctx.config.name, dir = %dir.display(), "task cleaned up");
}

/// Reads the task records of the task directories on disk.
pub fn on_disk(state_dir: &Path) -> HashMap<String, TaskRecord> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(state_dir.join("tasks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let uid = entry.file_name().to_string_lossy().into_owned();
        let record = std::fs::read(entry.path().join("task.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<TaskRecord>(&b).ok())
            .unwrap_or(TaskRecord {
                namespace: String::new(),
                name: String::new(),
                uid: uid.clone(),
            });
        out.insert(uid, record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_end_is_a_kill_a_failure_a_completion_or_a_restart() {
        let exited = |code| ExitRecord {
            exit_code: Some(code),
            ..ExitRecord::default()
        };
        let of = |record: &ExitRecord, stop: Option<&StopRecord>, policy, shutting_down| {
            let end = RunEnd::of(record, stop, policy, shutting_down);
            (end.terminal, end.reason, end.message)
        };
        let stop = StopRecord {
            reason: "Deleted".into(),
            message: "the task was deleted".into(),
            at: Utc::now(),
            restart: false,
        };
        assert_eq!(
            of(&exited(0), Some(&stop), RestartPolicy::Always, false),
            (
                Some(TaskPhase::Killed),
                "Deleted".into(),
                "the task was deleted".into()
            )
        );
        let not_started = ExitRecord::failed("ImageNotFound", "no image x");
        assert_eq!(
            of(&not_started, None, RestartPolicy::Always, false),
            (
                Some(TaskPhase::Failed),
                "ImageNotFound".into(),
                "no image x".into()
            )
        );
        let no_reason = ExitRecord {
            error: Some("broken".into()),
            ..ExitRecord::default()
        };
        assert_eq!(
            of(&no_reason, None, RestartPolicy::Never, false).1,
            "StartFailed"
        );
        assert_eq!(
            of(&exited(0), None, RestartPolicy::OnFailure, false),
            (
                Some(TaskPhase::Completed),
                String::new(),
                "exited with code 0".into()
            )
        );
        assert_eq!(
            of(&exited(3), None, RestartPolicy::OnFailure, false),
            (None, "Error".into(), "exited with code 3".into())
        );
        assert_eq!(of(&exited(0), None, RestartPolicy::Always, false).0, None);
        // A node shutting down restarts nothing.
        assert_eq!(
            of(&exited(3), None, RestartPolicy::Always, true).0,
            Some(TaskPhase::Failed)
        );
        // A run lost with its node restarts in place when the task restarts at
        // all, and is Lost (its owner replaces it) when it never restarts.
        let lost = ExitRecord::lost("the node crashed");
        assert_eq!(
            of(&lost, None, RestartPolicy::Always, false),
            (None, REASON_SHIM_LOST.into(), "the node crashed".into())
        );
        assert_eq!(of(&lost, None, RestartPolicy::OnFailure, false).0, None);
        assert_eq!(
            of(&lost, None, RestartPolicy::Never, false).0,
            Some(TaskPhase::Lost)
        );
        assert_eq!(
            of(&lost, None, RestartPolicy::Always, true).0,
            Some(TaskPhase::Lost)
        );
        // A stop in progress when it was lost still ends it as that stop.
        assert_eq!(
            of(&lost, Some(&stop), RestartPolicy::Always, false).0,
            Some(TaskPhase::Killed)
        );
        // A run stopped for a failed liveness probe is a failure: restarted by
        // policy, Failed under Never or when the node shuts down.
        let unhealthy = StopRecord {
            reason: REASON_LIVENESS_PROBE_FAILED.into(),
            message: "liveness probe failed 3 times in a row".into(),
            at: Utc::now(),
            restart: true,
        };
        let killed = ExitRecord {
            exit_code: Some(143),
            signal: Some(15),
            ..ExitRecord::default()
        };
        assert_eq!(
            of(&killed, Some(&unhealthy), RestartPolicy::Always, false),
            (
                None,
                REASON_LIVENESS_PROBE_FAILED.into(),
                "liveness probe failed 3 times in a row".into()
            )
        );
        assert_eq!(
            of(&killed, Some(&unhealthy), RestartPolicy::OnFailure, false).0,
            None
        );
        assert_eq!(
            of(&killed, Some(&unhealthy), RestartPolicy::Never, false).0,
            Some(TaskPhase::Failed)
        );
        assert_eq!(
            of(&killed, Some(&unhealthy), RestartPolicy::Always, true).0,
            Some(TaskPhase::Failed)
        );
        let oom = ExitRecord {
            exit_code: Some(137),
            signal: Some(9),
            oom_killed: true,
            ..ExitRecord::default()
        };
        assert_eq!(
            of(&oom, None, RestartPolicy::Never, false),
            (
                Some(TaskPhase::Failed),
                "OOMKilled".into(),
                "killed by signal 9".into()
            )
        );
    }

    #[test]
    fn a_step_of_the_nodes_wall_clock_does_not_fire_a_time_limit() {
        // loom-soak: clock step
        let config = Config::new("n1", PathBuf::from("/nonexistent"));
        let fence = Fence::new(Duration::from_secs(40));
        // A run started a moment ago; the node's clock then stepped 5 min
        // forward, so its start reads 5 min ago.
        let mut child = match std::process::Command::new("sleep").arg("30").spawn() {
            Ok(child) => child,
            Err(error) => panic!("cannot start sleep: {error}"),
        };
        let stepped = Utc::now() - chrono::Duration::seconds(300);
        let task = |limit: i64| -> Task {
            serde_json::from_value(json!({
                "metadata": {"name": "t", "namespace": "default"},
                "spec": {"image": "x", "timeLimitSeconds": limit},
                "status": {"phase": "Running", "startTime": stepped},
            }))
            .unwrap_or_default()
        };
        let run = |pid: i32| Started {
            pid,
            started_at: stepped,
            task_ip: None,
        };
        let young = run(child.id() as i32);
        let reason = stop_reason(&config, &fence, Some(&task(60)), &young, false);
        let wake = time_limit_at(Some(&task(60)), &young);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(reason, None, "a young run stopped for its time limit");
        assert!(
            wake.is_some_and(|at| at > tokio::time::Instant::now() + Duration::from_secs(50)),
            "the time limit's wake-up came early: {wake:?}"
        );
        // A run that did outlive its limit (pid 1 started at boot) stops.
        assert_eq!(
            stop_reason(&config, &fence, Some(&task(1)), &run(1), false).map(|(r, _)| r),
            Some(REASON_TIME_LIMIT_EXCEEDED.to_owned())
        );
        // A process that cannot be read: the wall clock decides, as before.
        assert_eq!(
            stop_reason(&config, &fence, Some(&task(60)), &run(i32::MAX), false).map(|(r, _)| r),
            Some(REASON_TIME_LIMIT_EXCEEDED.to_owned())
        );
    }

    #[test]
    fn a_node_that_cannot_renew_its_lease_stops_its_tasks() {
        let config = Config::new("n1", PathBuf::from("/nonexistent"));
        let lease = Duration::from_secs(40);
        let started = Started {
            pid: 1,
            started_at: Utc::now(),
            task_ip: None,
        };
        let task: Task = serde_json::from_value(json!({
            "metadata": {"name": "t", "namespace": "default"},
            "spec": {"image": "x"},
            "status": {"phase": "Running"},
        }))
        .unwrap_or_default();
        let reason = |fence: &Fence| {
            stop_reason(&config, fence, Some(&task), &started, false).map(|(reason, _)| reason)
        };
        let now = tokio::time::Instant::now();
        let renewed_ago = |secs| Fence {
            renewed: Arc::new(std::sync::Mutex::new(now - Duration::from_secs(secs))),
            lease,
        };
        assert_eq!(reason(&Fence::new(lease)), None);
        assert_eq!(reason(&renewed_ago(39)), None);
        let fence = renewed_ago(41);
        assert!(fence.is_fenced());
        assert_eq!(reason(&fence).as_deref(), Some(REASON_NODE_FENCED));
        // An older renewal answered late does not move the bound back.
        fence.renewed(now - Duration::from_secs(60));
        assert!(fence.is_fenced());
        // Renewed again: its tasks may run (and start) again.
        fence.renewed(now);
        assert_eq!(reason(&fence), None);
        assert!(fence.expires_at() >= now + lease);
    }

    #[test]
    fn resolver_files_search_the_namespace_and_skip_loopback_servers() {
        let cluster = cluster_resolv_conf(std::net::Ipv4Addr::new(10, 77, 0, 1), "ml");
        assert!(cluster.contains("nameserver 10.77.0.1\n"), "{cluster}");
        assert!(cluster.contains("search ml.svc svc\n"), "{cluster}");
        let host = resolv_conf_from(
            "nameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch example.org\noptions edns0\n# x\n",
        );
        assert_eq!(
            host,
            "nameserver 192.0.2.53\nsearch example.org\noptions edns0\n"
        );
    }

    #[test]
    fn host_paths_map_mount_targets() {
        let mounts = vec![MountSpec {
            source: "/data/out/3".into(),
            target: "/output".into(),
            read_only: false,
        }];
        assert_eq!(
            host_path(&mounts, "/output").as_deref(),
            Some("/data/out/3")
        );
        assert_eq!(
            host_path(&mounts, "/output/a.txt").as_deref(),
            Some("/data/out/3/a.txt")
        );
        assert_eq!(host_path(&mounts, "/outputs"), None);
        assert_eq!(host_path(&mounts, "x"), None);
    }
}
