//! The Job reconciler: tasks from the template and overrides, parallelism, retries,
//! dependencies, kill, and an exact status.
//!
//! Task identity is stable: index `i` of job `j` is first tried as task `j-i`, and
//! its retries and replacements are `j-i-r1`, `j-i-r2`, … (label
//! `loom.dev/attempt`). A name is chosen from what exists, so a reconcile that
//! runs twice, or after a restart, asks for the same name and the API server's
//! AlreadyExists keeps it from duplicating a task.
//!
//! A `Failed` task, or a task `Killed` for its own sake (a time limit), uses up one
//! of `maxRetries`; a `Lost` task (its node died, or crashed and found the run
//! dead when it came back: reason `ShimLost`), a task `Failed` with reason
//! `ShimLost` or `NodeLost`, or one killed by preemption or by its own node's
//! fencing (`NodeFenced`) is replaced without counting. Killing is a status write: phase `Killed` with
//! reason `JobKilled` (a user set `killed: true`), `JobFailed` (another task of
//! the job failed for good) or `JobCompleted` (a task of an index beyond a lowered
//! `replicas` outlived its job); the nodelet stops a task whose status says Killed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use api_types::event::EventType;
use api_types::kinds::task::merge_env;
use api_types::meta::set_condition;
use api_types::well_known::{
    LABEL_ATTEMPT, LABEL_JOB, LABEL_JOB_INDEX, REASON_NODE_FENCED, REASON_NODE_LOST,
    REASON_PREEMPTED, REASON_SHIM_LOST, REASON_TIME_LIMIT_EXCEEDED,
};
use api_types::{
    Condition, ConditionStatus, Driver, EnvVar, Job, JobPhase, JobStatus, Mount, ObjectMeta,
    OwnerReference, Task, TaskPhase, TaskSpec,
};
use chrono::{DateTime, Utc};
use client::{Action, Api, ObjectKey, PostParams};
use futures::StreamExt;
use tracing::{debug, info};

use crate::{
    Context, Error, Result, at_least, key_of, kill_and_observe, observe, publish, summarize,
};

/// The Events' component.
pub const COMPONENT: &str = "job-controller";

/// The kill reason of tasks stopped because a user killed their job.
pub const REASON_JOB_KILLED: &str = "JobKilled";
/// The kill reason of tasks stopped because another task of their job failed for good.
pub const REASON_JOB_FAILED: &str = "JobFailed";
/// The kill reason of tasks left over when their job completed.
pub const REASON_JOB_COMPLETED: &str = "JobCompleted";

/// Requests in flight at once when a reconcile makes or kills many tasks.
const IN_FLIGHT: usize = 16;

/// Tasks one reconcile creates at most (Kubernetes' job controller also caps a
/// sync at 500): a wide job is created over several reconciles, each writing
/// the status its tasks have reached meanwhile instead of one long silence.
pub const CREATES_PER_SYNC: usize = 500;

/// Where a container sees its own output directory.
pub const OUTPUT_MOUNT: &str = "/output";

/// The name of attempt `attempt` at index `index` of job `job`.
pub fn task_name(job: &str, index: i32, attempt: u32) -> String {
    if attempt == 0 {
        format!("{job}-{index}")
    } else {
        format!("{job}-{index}-r{attempt}")
    }
}

/// Replaces `{{index}}`, `{{replicas}}` and `{{job}}`.
fn render(text: &str, index: i32, replicas: i32, job: &str) -> String {
    text.replace("{{index}}", &index.to_string())
        .replace("{{replicas}}", &replicas.to_string())
        .replace("{{job}}", job)
}

/// Label values are at most 63 characters; a longer job name is simply not labelled.
fn label_value(value: &str) -> Option<String> {
    (value.len() <= 63).then(|| value.to_owned())
}

/// The task for attempt `attempt` at `index`: the template with the matching overrides
/// laid over it, the job's defaults, inputs, output and log directories, placeholders
/// filled in, and the job as its controlling owner.
pub fn build_task(job: &Job, index: i32, attempt: u32) -> Task {
    let name = task_name(&job.metadata.name, index, attempt);
    let replicas = job.spec.replicas();
    let mut spec: TaskSpec = job.spec.task_spec_for(index);
    spec.index = Some(index);
    if spec.priority.is_none() {
        spec.priority = job.spec.priority;
    }
    if spec.time_limit_seconds.is_none() {
        spec.time_limit_seconds = job.spec.time_limit_seconds;
    }
    // The job's env is the base; the template's and the overrides' win over it.
    let mut env = job.spec.env.clone();
    merge_env(&mut env, &spec.env);
    spec.env = env;
    for input in &job.spec.inputs {
        spec.mounts.push(Mount {
            source: input.source.clone(),
            target: input.target.clone(),
            read_only: Some(true),
        });
    }
    let mut loom_env = vec![EnvVar::new("LOOM_TASK_INDEX", index.to_string())];
    if !job.spec.output_dir.is_empty() {
        let dir = format!("{}/{index}", job.spec.output_dir.trim_end_matches('/'));
        // A host process has no mount namespace of its own: it writes to the host path.
        let seen_at = match spec.driver() {
            Driver::Container => OUTPUT_MOUNT.to_owned(),
            Driver::Exec | Driver::Raw => dir.clone(),
        };
        spec.mounts.push(Mount {
            source: dir,
            target: OUTPUT_MOUNT.to_owned(),
            read_only: Some(false),
        });
        loom_env.push(EnvVar::new("LOOM_OUTPUT_DIR", seen_at));
    }
    // `logDir` is ignored: the node chooses where logs go, so a job cannot point
    // a task's log at a host file; a template's `logPath` is a bare file name there.
    let job_name = &job.metadata.name;
    for part in spec.command.iter_mut().chain(spec.args.iter_mut()) {
        *part = render(part, index, replicas, job_name);
    }
    for var in &mut spec.env {
        var.value = render(&var.value, index, replicas, job_name);
    }
    merge_env(&mut spec.env, &loom_env);

    let mut labels = job.spec.template.metadata.labels.clone();
    if let Some(value) = label_value(job_name) {
        labels.insert(LABEL_JOB.to_owned(), value);
    }
    labels.insert(LABEL_JOB_INDEX.to_owned(), index.to_string());
    labels.insert(LABEL_ATTEMPT.to_owned(), attempt.to_string());
    Task {
        metadata: ObjectMeta {
            name,
            namespace: job.metadata.namespace.clone(),
            labels,
            annotations: job.spec.template.metadata.annotations.clone(),
            owner_references: vec![OwnerReference::to(job, true)],
            ..ObjectMeta::default()
        },
        spec,
        ..Task::default()
    }
}

/// What a dependency looks like from the dependent job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// No job of that name in the namespace.
    Missing,
    /// It exists, in this phase.
    Phase(JobPhase),
}

/// What the reconcile should do.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Tasks to create.
    pub create: Vec<Task>,
    /// Tasks to kill, with the reason and message.
    pub kill: Vec<(Arc<Task>, String, String)>,
    /// The status to write.
    pub status: JobStatus,
    /// Events: type, reason, message.
    pub events: Vec<(EventType, String, String)>,
    /// More tasks are due than `create` holds: reconcile again at once.
    pub more: bool,
}

fn attempt_of(task: &Task) -> u32 {
    task.metadata
        .labels
        .get(LABEL_ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// Whether a terminal task used up one of its index's retries. A task that
/// ended with its node does not: `Lost` (the node stopped answering, or the
/// nodelet found its run dead after a crash) or `Failed` with reason
/// `ShimLost` or `NodeLost` (what a nodelet before the crash fix wrote). A
/// node crash is not the task's doing; its replacement is a retry that costs
/// none of `maxRetries` (as Kubernetes' Jobs do when a pod failure policy
/// ignores disruptions).
fn counts_as_failure(task: &Task) -> bool {
    let reason = task.status.as_ref().map_or("", |s| s.reason.as_str());
    match task.phase() {
        TaskPhase::Failed => ![REASON_SHIM_LOST, REASON_NODE_LOST].contains(&reason),
        TaskPhase::Killed => ![
            REASON_PREEMPTED,
            REASON_NODE_FENCED,
            REASON_JOB_KILLED,
            REASON_JOB_FAILED,
            REASON_JOB_COMPLETED,
        ]
        .contains(&reason),
        _ => false,
    }
}

/// What became of one index.
enum IndexState {
    /// A task of it completed.
    Done,
    /// Its latest attempt is pending or running.
    Active,
    /// It needs this attempt next.
    Next(u32),
    /// It failed more often than `maxRetries`; the last failed task.
    Exhausted(Arc<Task>),
}

fn index_state(attempts: &[Arc<Task>], max_retries: i32) -> IndexState {
    if attempts.iter().any(|t| t.phase() == TaskPhase::Completed) {
        return IndexState::Done;
    }
    let Some(latest) = attempts.iter().max_by_key(|t| attempt_of(t)) else {
        return IndexState::Next(0);
    };
    if !latest.is_terminal() {
        return IndexState::Active;
    }
    let failures = attempts.iter().filter(|t| counts_as_failure(t)).count();
    if failures > usize::try_from(max_retries.max(0)).unwrap_or(0) {
        let last_failure = attempts
            .iter()
            .filter(|t| counts_as_failure(t))
            .max_by_key(|t| attempt_of(t))
            .cloned()
            .unwrap_or_else(|| latest.clone());
        return IndexState::Exhausted(last_failure);
    }
    IndexState::Next(attempt_of(latest) + 1)
}

/// Counts of tasks by phase, counting `killing` tasks as Killed.
fn count(status: &mut JobStatus, tasks: &[Arc<Task>], killing: &BTreeSet<String>) {
    status.pending = 0;
    status.running = 0;
    status.completed = 0;
    status.failed = 0;
    status.killed = 0;
    status.lost = 0;
    for task in tasks {
        let phase = if killing.contains(&task.metadata.name) {
            TaskPhase::Killed
        } else {
            task.phase()
        };
        match phase {
            TaskPhase::Pending => status.pending += 1,
            TaskPhase::Running => status.running += 1,
            TaskPhase::Completed => status.completed += 1,
            TaskPhase::Failed => status.failed += 1,
            TaskPhase::Killed => status.killed += 1,
            TaskPhase::Lost => status.lost += 1,
        }
    }
}

/// The first non-zero exit code of a failed task (by finish time), else 0.
fn exit_code(tasks: &[Arc<Task>]) -> i32 {
    tasks
        .iter()
        .filter_map(|t| {
            let s = t.status.as_ref()?;
            let code = s.exit_code.filter(|c| *c != 0)?;
            (s.phase == TaskPhase::Failed).then_some((s.finish_time, code))
        })
        .min_by_key(|(at, _)| *at)
        .map_or(0, |(_, code)| code)
}

fn earliest_start(tasks: &[Arc<Task>]) -> Option<DateTime<Utc>> {
    tasks
        .iter()
        .filter_map(|t| t.status.as_ref().and_then(|s| s.start_time))
        .min()
}

fn latest_finish(tasks: &[Arc<Task>]) -> Option<DateTime<Utc>> {
    tasks
        .iter()
        .filter_map(|t| t.status.as_ref().and_then(|s| s.finish_time))
        .max()
}

fn describe_failure(task: &Task, retries: i32) -> (String, String) {
    let status = task.status.clone().unwrap_or_default();
    let after = match retries {
        0 => String::new(),
        1 => " after 1 retry".to_owned(),
        n => format!(" after {n} retries"),
    };
    if task.phase() == TaskPhase::Killed && status.reason == REASON_TIME_LIMIT_EXCEEDED {
        return (
            REASON_TIME_LIMIT_EXCEEDED.to_owned(),
            format!(
                "task {} ran past its time limit and was killed{after}",
                task.metadata.name
            ),
        );
    }
    let how = match (task.phase(), status.exit_code) {
        (TaskPhase::Killed, _) => format!("was killed ({})", status.reason),
        (_, Some(code)) => format!("failed with exit code {code}"),
        (_, None) if !status.reason.is_empty() => format!("failed ({})", status.reason),
        _ => "failed".to_owned(),
    };
    (
        "TaskFailed".to_owned(),
        format!("task {} {how}{after}", task.metadata.name),
    )
}

/// The condition a job gets as it ends (as Kubernetes Jobs: `Complete` or `Failed`;
/// a killed job is `Failed` with reason `Killed`).
pub const CONDITION_COMPLETE: &str = "Complete";
/// See [`CONDITION_COMPLETE`].
pub const CONDITION_FAILED: &str = "Failed";

/// Decides what a non-terminal job needs, from its tasks, its dependencies (by name;
/// only looked at before the job starts) and the dependency cycle it is on, if any.
pub fn decide(
    job: &Job,
    tasks: &[Arc<Task>],
    dependencies: &[(String, Dependency)],
    cycle: Option<&[String]>,
    now: DateTime<Utc>,
) -> Decision {
    let mut decision = decide_phase(job, tasks, dependencies, cycle, now);
    let status = &mut decision.status;
    let type_ = match status.phase {
        JobPhase::Completed => Some(CONDITION_COMPLETE),
        JobPhase::Failed | JobPhase::Killed => Some(CONDITION_FAILED),
        _ => None,
    };
    if let Some(type_) = type_ {
        let condition = Condition::new(
            type_,
            ConditionStatus::True,
            status.reason.clone(),
            status.message.clone(),
        );
        set_condition(&mut status.conditions, condition, now);
    }
    decision
}

/// Decides a non-terminal job's phase and status, and the tasks to create and kill:
/// killed by a user; before it starts, waiting on (or failed by) its dependencies;
/// then, index by index, failed for good, completed, or running with the next
/// attempts created.
fn decide_phase(
    job: &Job,
    tasks: &[Arc<Task>],
    dependencies: &[(String, Dependency)],
    cycle: Option<&[String]>,
    now: DateTime<Utc>,
) -> Decision {
    let mut deciding = Deciding::new(job, tasks, now);
    if job.spec.killed {
        deciding.finish(
            JobPhase::Killed,
            "Killed",
            "killed by a user".to_owned(),
            REASON_JOB_KILLED,
            EventType::Normal,
        );
    } else if !deciding.started() && !dependencies.is_empty() {
        deciding.follow_dependencies(dependencies, cycle);
        if deciding.status.phase == JobPhase::Waiting {
            return deciding.into_decision();
        }
    }
    if !deciding.status.phase.is_terminal() {
        deciding.follow_indexes();
    }
    deciding.into_decision()
}

/// A job's next status and what to do, as `decide_phase` works them out.
struct Deciding<'a> {
    job: &'a Job,
    tasks: &'a [Arc<Task>],
    now: DateTime<Utc>,
    /// The status the job has.
    old: JobStatus,
    /// The status it will have.
    status: JobStatus,
    decision: Decision,
}

/// Where a job stands on its dependencies, before it starts.
#[derive(Debug, PartialEq)]
enum DependencyVerdict {
    /// One failed or was killed: the job never runs (the message says which).
    Failed(String),
    /// The job waits: the reason and message say on what.
    Wait(&'static str, String),
    /// Every one completed.
    Ready,
}

/// Reads the dependencies: a failed one decides, then a cycle, missing ones, and
/// unfinished ones.
fn dependency_verdict(
    dependencies: &[(String, Dependency)],
    cycle: Option<&[String]>,
) -> DependencyVerdict {
    let failed = dependencies.iter().find_map(|(name, d)| match d {
        Dependency::Phase(p @ (JobPhase::Failed | JobPhase::Killed)) => Some((name, *p)),
        _ => None,
    });
    if let Some((name, phase)) = failed {
        let verb = if phase == JobPhase::Killed {
            "was killed"
        } else {
            "failed"
        };
        return DependencyVerdict::Failed(format!("dependency {name} {verb}"));
    }
    let missing: Vec<&str> = dependencies
        .iter()
        .filter(|(_, d)| *d == Dependency::Missing)
        .map(|(n, _)| n.as_str())
        .collect();
    let waiting: Vec<&str> = dependencies
        .iter()
        .filter(|(_, d)| matches!(d, Dependency::Phase(p) if !p.is_terminal()))
        .map(|(n, _)| n.as_str())
        .collect();
    if let Some(cycle) = cycle {
        DependencyVerdict::Wait(
            "DependencyCycle",
            format!("dependencies form a cycle: {}", cycle.join(" -> ")),
        )
    } else if !missing.is_empty() {
        DependencyVerdict::Wait(
            "DependencyNotFound",
            format!("waiting for missing dependencies: {}", missing.join(", ")),
        )
    } else if !waiting.is_empty() {
        DependencyVerdict::Wait(
            "WaitingForDependencies",
            format!("waiting for {}", waiting.join(", ")),
        )
    } else {
        DependencyVerdict::Ready
    }
}

/// Where a job's indexes stand.
struct IndexProgress {
    /// Indexes whose task completed.
    done: i32,
    /// Indexes that need a (next) attempt: index and attempt.
    next: Vec<(i32, u32)>,
    /// The failed task of the first index out of retries, if any.
    exhausted: Option<Arc<Task>>,
}

impl IndexProgress {
    fn of(job: &Job, tasks: &[Arc<Task>]) -> IndexProgress {
        let mut by_index: BTreeMap<i32, Vec<Arc<Task>>> = BTreeMap::new();
        for task in tasks {
            if let Some(index) = task.spec.index {
                by_index.entry(index).or_default().push(task.clone());
            }
        }
        let mut progress = IndexProgress {
            done: 0,
            next: Vec::new(),
            exhausted: None,
        };
        for index in 0..job.spec.replicas().max(0) {
            let attempts = by_index.get(&index).map(Vec::as_slice).unwrap_or(&[]);
            match index_state(attempts, job.spec.max_retries()) {
                IndexState::Done => progress.done += 1,
                IndexState::Active => {}
                IndexState::Next(attempt) => progress.next.push((index, attempt)),
                IndexState::Exhausted(task) => {
                    progress.exhausted.get_or_insert(task);
                }
            }
        }
        progress
    }
}

impl<'a> Deciding<'a> {
    fn new(job: &'a Job, tasks: &'a [Arc<Task>], now: DateTime<Utc>) -> Self {
        let old = job.status.clone().unwrap_or_default();
        let status = JobStatus {
            phase: old.phase,
            start_time: old.start_time.or_else(|| earliest_start(tasks)),
            end_time: old.end_time,
            exit_code: old.exit_code,
            reason: String::new(),
            message: String::new(),
            conditions: old.conditions.clone(),
            observed_generation: Some(job.metadata.generation),
            ..JobStatus::default()
        };
        Deciding {
            job,
            tasks,
            now,
            old,
            status,
            decision: Decision::default(),
        }
    }

    /// Whether the job has started: it has tasks, or had once.
    fn started(&self) -> bool {
        !self.tasks.is_empty() || self.old.start_time.is_some()
    }

    fn active(&self) -> impl Iterator<Item = &'a Arc<Task>> + use<'a> {
        self.tasks.iter().filter(|t| !t.is_terminal())
    }

    /// Ends the job in `phase`: its active tasks are killed with `kill_reason`, and
    /// an Event says why.
    fn finish(
        &mut self,
        phase: JobPhase,
        reason: &str,
        message: String,
        kill_reason: &str,
        event_type: EventType,
    ) {
        for task in self.active() {
            self.decision
                .kill
                .push((task.clone(), kill_reason.to_owned(), message.clone()));
        }
        self.status.phase = phase;
        self.status.reason = reason.to_owned();
        self.status.message.clone_from(&message);
        self.status.end_time = Some(self.now);
        self.status.exit_code = Some(exit_code(self.tasks));
        self.decision
            .events
            .push((event_type, reason.to_owned(), message));
    }

    /// Before the job starts: fails it if a dependency failed, makes it wait (with
    /// an Event when the reason is new) or lets it go on as Pending.
    fn follow_dependencies(
        &mut self,
        dependencies: &[(String, Dependency)],
        cycle: Option<&[String]>,
    ) {
        match dependency_verdict(dependencies, cycle) {
            DependencyVerdict::Failed(message) => {
                self.finish(
                    JobPhase::Failed,
                    "DependencyFailed",
                    message,
                    REASON_JOB_FAILED,
                    EventType::Warning,
                );
                self.status.exit_code = Some(0);
            }
            DependencyVerdict::Wait(reason, message) => {
                self.status.phase = JobPhase::Waiting;
                self.status.reason = reason.to_owned();
                self.status.message = message;
                if self.old.phase != JobPhase::Waiting || self.old.reason != reason {
                    let type_ = if reason == "WaitingForDependencies" {
                        EventType::Normal
                    } else {
                        EventType::Warning
                    };
                    self.decision.events.push((
                        type_,
                        reason.to_owned(),
                        self.status.message.clone(),
                    ));
                }
            }
            DependencyVerdict::Ready => self.status.phase = JobPhase::Pending,
        }
    }

    /// Once the job may run: fails it when an index is out of retries, completes it
    /// when every index is done, else creates the next attempts its parallelism
    /// has room for.
    fn follow_indexes(&mut self) {
        let replicas = self.job.spec.replicas().max(0);
        let progress = IndexProgress::of(self.job, self.tasks);
        if let Some(task) = progress.exhausted {
            let (reason, message) = describe_failure(&task, self.job.spec.max_retries());
            self.finish(
                JobPhase::Failed,
                &reason,
                message,
                REASON_JOB_FAILED,
                EventType::Warning,
            );
        } else if progress.done == replicas {
            self.complete(replicas);
        } else {
            self.create_next(progress.next);
            self.mark_progress(progress.done, replicas);
        }
    }

    /// Every index completed.
    fn complete(&mut self, replicas: i32) {
        self.status.phase = JobPhase::Completed;
        self.status.reason = "Completed".to_owned();
        self.status.message = format!("{replicas} of {replicas} tasks completed");
        self.status.end_time = Some(latest_finish(self.tasks).unwrap_or(self.now));
        self.status.exit_code = Some(0);
        self.decision.events.push((
            EventType::Normal,
            "Completed".to_owned(),
            self.status.message.clone(),
        ));
    }

    /// Creates the next attempts, as many as parallelism has room for (at most
    /// [`CREATES_PER_SYNC`]; `more` asks for another reconcile for the rest).
    fn create_next(&mut self, next: Vec<(i32, u32)>) {
        let room = usize::try_from(self.job.spec.parallelism().max(1))
            .unwrap_or(usize::MAX)
            .saturating_sub(self.active().count());
        let mut retried = Vec::new();
        self.decision.more = next.len().min(room) > CREATES_PER_SYNC;
        for (index, attempt) in next.into_iter().take(room.min(CREATES_PER_SYNC)) {
            let task = build_task(self.job, index, attempt);
            if attempt > 0 {
                retried.push(task.metadata.name.clone());
            }
            self.decision.create.push(task);
        }
        if !self.decision.create.is_empty() {
            let names: Vec<&str> = self
                .decision
                .create
                .iter()
                .map(|t| t.metadata.name.as_str())
                .collect();
            self.decision.events.push((
                EventType::Normal,
                "TasksCreated".to_owned(),
                format!("created {}", summarize(&names)),
            ));
        }
        if !retried.is_empty() {
            self.decision.events.push((
                EventType::Normal,
                "TasksReplaced".to_owned(),
                format!("replaced failed or lost tasks with {}", summarize(&retried)),
            ));
        }
    }

    /// Running once a task started (with an Event the first time), else Pending.
    fn mark_progress(&mut self, done: i32, replicas: i32) {
        let any_started = self.tasks.iter().any(|t| {
            t.phase() != TaskPhase::Pending
                || t.status.as_ref().is_some_and(|s| s.start_time.is_some())
        });
        self.status.phase = if any_started {
            JobPhase::Running
        } else {
            JobPhase::Pending
        };
        if self.status.phase == JobPhase::Running && self.old.phase != JobPhase::Running {
            self.decision.events.push((
                EventType::Normal,
                "Running".to_owned(),
                "a task started".to_owned(),
            ));
        }
        self.status.message = format!("{done} of {replicas} tasks completed");
    }

    /// The decision, its status counting the tasks by phase (those being killed as
    /// killed).
    fn into_decision(mut self) -> Decision {
        let killing = self
            .decision
            .kill
            .iter()
            .map(|(t, _, _)| t.metadata.name.clone())
            .collect();
        count(&mut self.status, self.tasks, &killing);
        self.decision.status = self.status;
        self.decision
    }
}

/// The chain `job -> … -> job` if following dependsOn from `job` comes back to it.
pub fn find_cycle(
    job: &str,
    depends_on: impl Fn(&str) -> Option<Vec<String>>,
) -> Option<Vec<String>> {
    // Depth-first, remembering the path; each job is expanded once.
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(String, Vec<String>)> = vec![(job.to_owned(), vec![job.to_owned()])];
    while let Some((name, path)) = stack.pop() {
        for dep in depends_on(&name).unwrap_or_default() {
            if dep == job {
                let mut cycle = path.clone();
                cycle.push(dep);
                return Some(cycle);
            }
            if seen.insert(dep.clone()) {
                let mut next = path.clone();
                next.push(dep.clone());
                stack.push((dep, next));
            }
        }
    }
    None
}

/// Reconciles one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wait_ready().await;
    if job.metadata.deletion_timestamp.is_some() {
        // Its tasks go with it (the garbage collector); nothing new starts.
        return Ok(Action::await_change());
    }
    let namespace = job.metadata.namespace.clone();
    let tasks = ctx.tasks_controlled_by(&namespace, &job.metadata.uid);
    let now = Utc::now();
    if job.phase().is_terminal() {
        return settle_terminal(&job, &tasks, &ctx).await;
    }
    let lookup = |name: &str| ctx.jobs.get(&ObjectKey::new(&namespace, name));
    let dependencies: Vec<(String, Dependency)> = job
        .spec
        .depends_on
        .iter()
        .map(|name| {
            let state = match lookup(name) {
                Some(dep) => Dependency::Phase(dep.phase()),
                None => Dependency::Missing,
            };
            (name.clone(), state)
        })
        .collect();
    let cycle = if job.spec.depends_on.is_empty() {
        None
    } else {
        find_cycle(&job.metadata.name, |name| {
            lookup(name).map(|j| j.spec.depends_on.clone())
        })
    };
    let decision = decide(&job, &tasks, &dependencies, cycle.as_deref(), now);
    apply(&job, decision, &ctx).await
}

/// A terminal job keeps no live task (a crash may have come between killing its
/// tasks and recording its phase), and its counts follow its tasks.
async fn settle_terminal(job: &Job, tasks: &[Arc<Task>], ctx: &Context) -> Result<Action> {
    let reason = match job.phase() {
        JobPhase::Killed => REASON_JOB_KILLED,
        // A task of an index beyond a lowered `replicas` outlived its job.
        JobPhase::Completed => REASON_JOB_COMPLETED,
        _ => REASON_JOB_FAILED,
    };
    let message = job
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default();
    let mut killing = BTreeSet::new();
    for task in tasks.iter().filter(|t| !t.is_terminal()) {
        kill_and_observe(ctx, task, reason, &message).await?;
        killing.insert(task.metadata.name.clone());
    }
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    count(&mut status, tasks, &killing);
    if status != old {
        write_status(job, status, ctx).await?;
    }
    Ok(Action::await_change())
}

async fn write_status(job: &Job, status: JobStatus, ctx: &Context) -> Result<Option<Job>> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.metadata.namespace);
    let mut updated = job.clone();
    updated.status = Some(status);
    match api
        .replace_status(&job.metadata.name, &PostParams::default(), &updated)
        .await
    {
        Ok(written) => Ok(Some(written)),
        // A newer job is on its way to the cache; it brings us back.
        Err(error) if error.is_conflict() || error.is_not_found() => Ok(None),
        Err(error) => Err(Error::api("write status of job", key_of(job))(error)),
    }
}

async fn apply(job: &Job, decision: Decision, ctx: &Context) -> Result<Action> {
    let namespace = &job.metadata.namespace;
    let api: Api<Task> = Api::namespaced(ctx.client.clone(), namespace);
    // Many tasks at once, a bounded number of requests in flight.
    let created: Vec<std::result::Result<(), (String, client::Error)>> =
        futures::stream::iter(decision.create.clone())
            .map(|task| {
                let api = api.clone();
                async move {
                    match api.create(&PostParams::default(), &task).await {
                        Ok(_) => {
                            debug!(task = %task.metadata.name, "created");
                            Ok(())
                        }
                        // Already made by an earlier reconcile (maybe before a restart).
                        Err(error) if error.is_conflict() => Ok(()),
                        Err(error) => Err((task.metadata.name, error)),
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    for task in &decision.create {
        observe(&ctx.tasks, &ObjectKey::of(task), |t| t.is_some()).await;
    }
    if let Some((name, error)) = created.into_iter().find_map(std::result::Result::err) {
        let recorder = ctx.recorder(COMPONENT);
        publish(
            &recorder,
            job,
            EventType::Warning,
            "FailedCreate",
            &format!("cannot create task {name}: {error}"),
        )
        .await;
        return Err(Error::api("create task", format!("{namespace}/{name}"))(
            error,
        ));
    }
    let killed: Vec<Result<()>> = futures::stream::iter(decision.kill.clone())
        .map(|(task, reason, message)| {
            let ctx = ctx.clone();
            async move { kill_and_observe(&ctx, &task, &reason, &message).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    killed.into_iter().collect::<Result<Vec<()>>>()?;
    let old = job.status.clone().unwrap_or_default();
    let changed_phase = old.phase != decision.status.phase;
    if decision.status != old {
        if let Some(written) = write_status(job, decision.status.clone(), ctx).await? {
            if changed_phase {
                info!(job = %key_of(job), phase = %decision.status.phase, "job phase");
            }
            let version = written.metadata.resource_version.clone();
            observe(&ctx.jobs, &ObjectKey::of(job), |j| {
                j.is_none_or(|j| at_least(j, &version))
            })
            .await;
        } else {
            return Ok(Action::await_change());
        }
    }
    if !decision.events.is_empty() {
        let recorder = ctx.recorder(COMPONENT);
        for (type_, reason, message) in &decision.events {
            publish(&recorder, job, *type_, reason, message).await;
        }
    }
    if decision.more {
        return Ok(Action::requeue(std::time::Duration::ZERO));
    }
    Ok(Action::await_change())
}

/// The keys of the jobs that depend on `job` (to look again when it changes).
pub fn dependents(ctx: &Context, job: &Job) -> Vec<ObjectKey> {
    ctx.jobs
        .by_index(
            crate::BY_DEPENDENCY,
            &format!("{}/{}", job.metadata.namespace, job.metadata.name),
        )
        .iter()
        .map(|j| ObjectKey::of(j.as_ref()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::TaskStatus;
    use api_types::well_known::REASON_NODE_LOST;
    use serde_json::json;

    #[test]
    fn a_failed_dependency_decides_then_a_cycle_then_missing_then_unfinished() {
        let dep = |name: &str, d| (name.to_owned(), d);
        let done = dep("a", Dependency::Phase(JobPhase::Completed));
        let running = dep("b", Dependency::Phase(JobPhase::Running));
        let missing = dep("c", Dependency::Missing);
        let killed = dep("d", Dependency::Phase(JobPhase::Killed));
        let cycle = ["x".to_owned(), "y".to_owned(), "x".to_owned()];
        let all = [done.clone(), running.clone(), missing.clone(), killed];
        assert_eq!(
            dependency_verdict(&all, Some(&cycle)),
            DependencyVerdict::Failed("dependency d was killed".into())
        );
        assert_eq!(
            dependency_verdict(&all[..3], Some(&cycle)),
            DependencyVerdict::Wait(
                "DependencyCycle",
                "dependencies form a cycle: x -> y -> x".into()
            )
        );
        assert_eq!(
            dependency_verdict(&all[..3], None),
            DependencyVerdict::Wait(
                "DependencyNotFound",
                "waiting for missing dependencies: c".into()
            )
        );
        assert_eq!(
            dependency_verdict(&all[..2], None),
            DependencyVerdict::Wait("WaitingForDependencies", "waiting for b".into())
        );
        assert_eq!(dependency_verdict(&[done], None), DependencyVerdict::Ready);
    }

    fn job(value: serde_json::Value) -> Job {
        let mut job: Job = serde_json::from_value(json!({
            "metadata": {"name": "train", "namespace": "default", "uid": "u1", "generation": 1},
            "spec": value,
        }))
        .unwrap();
        job.api_version = api_types::API_VERSION.into();
        job
    }

    fn with_phase(mut task: Task, phase: TaskPhase, reason: &str, exit: Option<i32>) -> Arc<Task> {
        task.status = Some(TaskStatus {
            phase,
            reason: reason.into(),
            exit_code: exit,
            ..TaskStatus::default()
        });
        Arc::new(task)
    }

    #[test]
    fn tasks_carry_index_overrides_placeholders_mounts_and_defaults() {
        let job = job(json!({
            "replicas": 4, "priority": 7, "timeLimitSeconds": 60,
            "env": [{"name": "MODE", "value": "job"}, {"name": "SHARD", "value": "{{index}}"}],
            "inputs": [{"source": "/data", "target": "/in"}],
            "outputDir": "/out/", "logDir": "/logs",
            "template": {"metadata": {"labels": {"team": "a"}},
                         "spec": {"image": "busybox", "command": ["run", "{{job}}"],
                                  "args": ["--shard={{index}}/{{replicas}}"],
                                  "env": [{"name": "MODE", "value": "template"}]}},
            "overrides": [{"indexes": "0,3-5", "spec": {"args": ["--leader"], "priority": 9}}],
        }));
        let t0 = build_task(&job, 0, 0);
        assert_eq!(t0.metadata.name, "train-0");
        assert_eq!(t0.spec.args, ["--leader"]);
        assert_eq!(t0.spec.priority, Some(9));
        let t2 = build_task(&job, 2, 1);
        assert_eq!(t2.metadata.name, "train-2-r1");
        assert_eq!(t2.spec.command, ["run", "train"]);
        assert_eq!(t2.spec.args, ["--shard=2/4"]);
        assert_eq!(t2.spec.priority, Some(7));
        assert_eq!(t2.spec.time_limit_seconds, Some(60));
        assert_eq!(t2.spec.index, Some(2));
        // logDir is deprecated and ignored: the node chooses the log's place.
        assert_eq!(t2.spec.log_path, "");
        let env: Vec<(&str, &str)> = t2
            .spec
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("MODE", "template"),
                ("SHARD", "2"),
                ("LOOM_TASK_INDEX", "2"),
                ("LOOM_OUTPUT_DIR", "/output")
            ]
        );
        assert_eq!(
            t2.spec.mounts,
            [
                Mount {
                    source: "/data".into(),
                    target: "/in".into(),
                    read_only: Some(true)
                },
                Mount {
                    source: "/out/2".into(),
                    target: "/output".into(),
                    read_only: Some(false)
                }
            ]
        );
        assert_eq!(t2.metadata.labels["team"], "a");
        assert_eq!(t2.metadata.labels[LABEL_JOB], "train");
        assert_eq!(t2.metadata.labels[LABEL_JOB_INDEX], "2");
        assert_eq!(t2.metadata.labels[LABEL_ATTEMPT], "1");
        let owner = &t2.metadata.owner_references[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u1", Some(true)));
    }

    #[test]
    fn exec_tasks_see_their_host_output_directory() {
        let job = job(json!({"outputDir": "/out",
            "template": {"spec": {"driver": "exec", "command": ["true"]}}}));
        let task = build_task(&job, 0, 0);
        assert!(
            task.spec
                .env
                .contains(&EnvVar::new("LOOM_OUTPUT_DIR", "/out/0"))
        );
    }

    #[test]
    fn parallelism_bounds_the_tasks_created() {
        let job =
            job(json!({"replicas": 5, "parallelism": 2, "template": {"spec": {"image": "x"}}}));
        let d = decide(&job, &[], &[], None, Utc::now());
        let names: Vec<_> = d.create.iter().map(|t| t.metadata.name.as_str()).collect();
        assert_eq!(names, ["train-0", "train-1"]);
        assert_eq!(d.status.phase, JobPhase::Pending);
        // One finished, one running: one more may start, and the finished index is not redone.
        let tasks = vec![
            with_phase(build_task(&job, 0, 0), TaskPhase::Completed, "", Some(0)),
            with_phase(build_task(&job, 1, 0), TaskPhase::Running, "", None),
        ];
        let d = decide(&job, &tasks, &[], None, Utc::now());
        let names: Vec<_> = d.create.iter().map(|t| t.metadata.name.as_str()).collect();
        assert_eq!(names, ["train-2"]);
        assert_eq!(d.status.phase, JobPhase::Running);
        assert_eq!((d.status.completed, d.status.running), (1, 1));
    }

    #[test]
    fn a_wide_job_is_created_a_bounded_batch_at_a_time() {
        let job = job(
            json!({"replicas": 1200, "parallelism": 1100, "template": {"spec": {"image": "x"}}}),
        );
        let d = decide(&job, &[], &[], None, Utc::now());
        assert_eq!(d.create.len(), CREATES_PER_SYNC);
        assert!(d.more);
        assert_eq!(d.create[0].metadata.name, "train-0");
        // The next reconcile sees the first batch and goes on from there.
        let tasks: Vec<Arc<Task>> = d
            .create
            .iter()
            .map(|t| with_phase(t.clone(), TaskPhase::Pending, "", None))
            .collect();
        let d = decide(&job, &tasks, &[], None, Utc::now());
        assert_eq!(d.create.len(), CREATES_PER_SYNC);
        assert_eq!(
            d.create[0].metadata.name,
            format!("train-{CREATES_PER_SYNC}")
        );
        assert!(d.more, "100 are still due within parallelism 1100");
        let mut all = tasks;
        all.extend(
            d.create
                .iter()
                .map(|t| with_phase(t.clone(), TaskPhase::Pending, "", None)),
        );
        let d = decide(&job, &all, &[], None, Utc::now());
        assert_eq!(d.create.len(), 100, "parallelism bounds the last batch");
        assert!(!d.more);
        assert_eq!(d.status.pending, 1000);
    }

    #[test]
    fn failures_are_retried_then_fail_the_job_and_lost_tasks_are_replaced_free() {
        let job =
            job(json!({"replicas": 2, "maxRetries": 1, "template": {"spec": {"image": "x"}}}));
        let running = with_phase(build_task(&job, 1, 0), TaskPhase::Running, "", None);
        let lost = with_phase(
            build_task(&job, 0, 0),
            TaskPhase::Lost,
            REASON_NODE_LOST,
            None,
        );
        let d = decide(
            &job,
            &[lost.clone(), running.clone()],
            &[],
            None,
            Utc::now(),
        );
        assert_eq!(d.create[0].metadata.name, "train-0-r1");
        let failed = with_phase(build_task(&job, 0, 1), TaskPhase::Failed, "", Some(3));
        let d = decide(
            &job,
            &[lost.clone(), failed.clone(), running.clone()],
            &[],
            None,
            Utc::now(),
        );
        assert_eq!(d.create[0].metadata.name, "train-0-r2", "one retry left");
        let failed_again = with_phase(build_task(&job, 0, 2), TaskPhase::Failed, "", Some(4));
        let d = decide(
            &job,
            &[lost, failed, failed_again, running.clone()],
            &[],
            None,
            Utc::now(),
        );
        assert!(d.create.is_empty());
        assert_eq!(d.status.phase, JobPhase::Failed);
        assert_eq!(d.status.reason, "TaskFailed");
        assert_eq!(
            d.status.message,
            "task train-0-r2 failed with exit code 4 after 1 retry"
        );
        assert_eq!(d.kill.len(), 1, "the running task is killed");
        assert_eq!(d.kill[0].0.metadata.name, "train-1");
        assert_eq!(d.kill[0].1, REASON_JOB_FAILED);
        assert_eq!((d.status.killed, d.status.failed, d.status.lost), (1, 2, 1));
    }

    #[test]
    fn tasks_that_ended_with_their_node_are_retried_without_using_a_retry() {
        use api_types::well_known::REASON_SHIM_LOST;
        let job =
            job(json!({"replicas": 1, "maxRetries": 0, "template": {"spec": {"image": "x"}}}));
        // A nodelet that came back from a crash marks a run it found dead Lost;
        // one before the fix marked it Failed. Neither costs a retry.
        let lost = with_phase(
            build_task(&job, 0, 0),
            TaskPhase::Lost,
            REASON_SHIM_LOST,
            None,
        );
        let crashed = with_phase(
            build_task(&job, 0, 1),
            TaskPhase::Failed,
            REASON_SHIM_LOST,
            None,
        );
        // Nor does one its node stopped because it could not renew its lease.
        let fenced = with_phase(
            build_task(&job, 0, 2),
            TaskPhase::Killed,
            REASON_NODE_FENCED,
            None,
        );
        let d = decide(
            &job,
            &[lost.clone(), crashed.clone(), fenced.clone()],
            &[],
            None,
            Utc::now(),
        );
        assert_ne!(d.status.phase, JobPhase::Failed, "{}", d.status.message);
        assert_eq!(d.create.len(), 1);
        assert_eq!(d.create[0].metadata.name, "train-0-r3");
        // A failure of its own still fails it at once with maxRetries 0.
        let failed = with_phase(build_task(&job, 0, 3), TaskPhase::Failed, "Error", Some(1));
        let d = decide(
            &job,
            &[lost, crashed, fenced, failed],
            &[],
            None,
            Utc::now(),
        );
        assert_eq!(d.status.phase, JobPhase::Failed);
        assert!(d.create.is_empty());
    }

    #[test]
    fn a_time_limit_kill_uses_a_retry_and_names_the_reason() {
        let job = job(json!({"template": {"spec": {"image": "x"}}}));
        let killed = with_phase(
            build_task(&job, 0, 0),
            TaskPhase::Killed,
            REASON_TIME_LIMIT_EXCEEDED,
            None,
        );
        let d = decide(&job, &[killed], &[], None, Utc::now());
        assert_eq!(d.status.phase, JobPhase::Failed);
        assert_eq!(d.status.reason, REASON_TIME_LIMIT_EXCEEDED);
    }

    #[test]
    fn completion_sets_end_time_and_exit_code() {
        let job = job(json!({"replicas": 1, "template": {"spec": {"image": "x"}}}));
        let done = with_phase(build_task(&job, 0, 0), TaskPhase::Completed, "", Some(0));
        let d = decide(&job, &[done], &[], None, Utc::now());
        assert_eq!(d.status.phase, JobPhase::Completed);
        assert_eq!(d.status.exit_code, Some(0));
        assert!(d.status.end_time.is_some());
        let complete = &d.status.conditions[0];
        assert_eq!(
            (complete.type_.as_str(), complete.is_true()),
            (CONDITION_COMPLETE, true)
        );
    }

    #[test]
    fn dependencies_wait_fail_and_report_cycles_and_missing_jobs() {
        let job =
            job(json!({"dependsOn": ["prep", "fetch"], "template": {"spec": {"image": "x"}}}));
        let deps =
            |a: Dependency, b: Dependency| vec![("prep".to_owned(), a), ("fetch".to_owned(), b)];
        let d = decide(
            &job,
            &[],
            &deps(
                Dependency::Phase(JobPhase::Completed),
                Dependency::Phase(JobPhase::Running),
            ),
            None,
            Utc::now(),
        );
        assert_eq!(d.status.phase, JobPhase::Waiting);
        assert_eq!(d.status.message, "waiting for fetch");
        assert!(d.create.is_empty());
        let d = decide(
            &job,
            &[],
            &deps(Dependency::Missing, Dependency::Phase(JobPhase::Failed)),
            None,
            Utc::now(),
        );
        assert_eq!(d.status.phase, JobPhase::Failed);
        assert_eq!(d.status.reason, "DependencyFailed");
        assert_eq!(d.status.message, "dependency fetch failed");
        assert!(d.create.is_empty());
        let d = decide(
            &job,
            &[],
            &deps(Dependency::Missing, Dependency::Phase(JobPhase::Completed)),
            None,
            Utc::now(),
        );
        assert_eq!(
            (d.status.phase, d.status.reason.as_str()),
            (JobPhase::Waiting, "DependencyNotFound")
        );
        assert!(d.status.message.contains("prep"));
        let cycle = ["train".to_owned(), "prep".to_owned(), "train".to_owned()];
        let d = decide(
            &job,
            &[],
            &deps(
                Dependency::Phase(JobPhase::Waiting),
                Dependency::Phase(JobPhase::Completed),
            ),
            Some(&cycle),
            Utc::now(),
        );
        assert_eq!(d.status.reason, "DependencyCycle");
        assert_eq!(
            d.status.message,
            "dependencies form a cycle: train -> prep -> train"
        );
        // Once every dependency completed, a waiting job starts.
        let mut waiting = job.clone();
        waiting.status = Some(JobStatus {
            phase: JobPhase::Waiting,
            reason: "WaitingForDependencies".into(),
            ..JobStatus::default()
        });
        let d = decide(
            &waiting,
            &[],
            &deps(
                Dependency::Phase(JobPhase::Completed),
                Dependency::Phase(JobPhase::Completed),
            ),
            None,
            Utc::now(),
        );
        assert_eq!(d.create.len(), 1);
        assert_eq!(d.status.phase, JobPhase::Pending);
    }

    #[test]
    fn cycles_are_found_through_other_jobs() {
        let graph = |name: &str| -> Option<Vec<String>> {
            match name {
                "a" => Some(vec!["b".into()]),
                "b" => Some(vec!["c".into(), "x".into()]),
                "c" => Some(vec!["a".into()]),
                "x" => Some(vec![]),
                _ => None,
            }
        };
        assert_eq!(
            find_cycle("a", graph).unwrap(),
            ["a", "b", "c", "a"].map(String::from)
        );
        assert_eq!(find_cycle("x", graph), None);
    }

    #[tokio::test]
    async fn a_job_whose_status_says_what_its_tasks_say_needs_no_request() {
        use client::watcher::Event;
        let fixture = crate::testing::fixture();
        let mut job = job(json!({"replicas": 2, "template": {"spec": {"image": "x"}}}));
        let tasks = vec![
            with_phase(build_task(&job, 0, 0), TaskPhase::Completed, "", Some(0)),
            with_phase(build_task(&job, 1, 0), TaskPhase::Running, "", None),
        ];
        job.status = Some(decide(&job, &tasks, &[], None, Utc::now()).status);
        for task in &tasks {
            fixture.tasks.apply(&Event::Apply((**task).clone()));
        }
        fixture.jobs.apply(&Event::Apply(job.clone()));
        let reconciled = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            reconcile(Arc::new(job.clone()), fixture.ctx.clone()),
        )
        .await
        .expect("no request was tried");
        assert_eq!(reconciled.unwrap(), Action::await_change());

        // A finished job with nothing left running: nothing to do either.
        let done = with_phase(build_task(&job, 1, 0), TaskPhase::Completed, "", Some(0));
        fixture.tasks.apply(&Event::Apply((*done).clone()));
        let tasks = vec![tasks[0].clone(), done];
        job.status = Some(decide(&job, &tasks, &[], None, Utc::now()).status);
        assert_eq!(job.phase(), JobPhase::Completed);
        let reconciled = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            reconcile(Arc::new(job), fixture.ctx.clone()),
        )
        .await
        .expect("no request was tried");
        assert_eq!(reconciled.unwrap(), Action::await_change());
    }

    #[test]
    fn killing_stops_every_live_task() {
        let job = job(json!({"replicas": 3, "killed": true, "template": {"spec": {"image": "x"}}}));
        let tasks = vec![
            with_phase(build_task(&job, 0, 0), TaskPhase::Completed, "", Some(0)),
            with_phase(build_task(&job, 1, 0), TaskPhase::Running, "", None),
            Arc::new(build_task(&job, 2, 0)),
        ];
        let d = decide(&job, &tasks, &[], None, Utc::now());
        assert_eq!(d.status.phase, JobPhase::Killed);
        let killed: Vec<_> = d.kill.iter().map(|k| k.0.metadata.name.as_str()).collect();
        assert_eq!(killed, ["train-1", "train-2"]);
        assert!(d.kill.iter().all(|k| k.1 == REASON_JOB_KILLED));
        assert_eq!((d.status.completed, d.status.killed), (1, 2));
        assert!(d.create.is_empty());
    }
}
