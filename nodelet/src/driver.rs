//! Task drivers behind one trait. The real one ([`ShimDriver`]) starts one shim
//! process per run, which runs the task as a libcontainer container, as a confined
//! host process (libcontainer too) or as a raw host process in its own cgroup; [`FakeDriver`] records what it is asked and lets
//! tests decide how runs end.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::io::AsyncBufReadExt as _;

use crate::run::{DriverKind, ExitRecord, RunDir, RunSpec, Started};

/// What is known of a run found on disk after a nodelet restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Its process still runs.
    Running(Started),
    /// It ended; here is how.
    Exited(ExitRecord),
    /// It was prepared but never started: it may be started now.
    NotStarted,
}

/// Runs tasks.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Starts the run whose spec is in `dir`; returns once its process runs, or
    /// with the exit record of a run that could not start.
    async fn start(&self, dir: &RunDir) -> Result<Started, ExitRecord>;
    /// What became of a run started before a restart.
    fn find(&self, dir: &RunDir) -> Found;
    /// Waits for the run to end.
    async fn wait(&self, dir: &RunDir) -> ExitRecord;
    /// Sends `signal` to the run's process.
    fn signal(&self, dir: &RunDir, signal: i32);
}

/// The real driver: a shim process per run.
#[derive(Debug, Clone)]
pub struct ShimDriver {
    /// The shim command: program and leading arguments; the run directory follows.
    pub command: Vec<OsString>,
}

/// Opens a pidfd for `pid`.
fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `pid` runs the shim of `dir` (guards against reused pids).
fn is_shim_of(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == needle)
}

/// Finds the live shim of `dir`: by its pid file, else by scanning processes (a
/// shim that has not written its pid file yet). Once the pid file is there it
/// alone counts: libcontainer's clones of the shim carry its command line until
/// they exec, and one left by a shim that died (a container's init waiting to
/// be started, which ignores SIGTERM as every pid namespace's init does) is not
/// the shim.
fn live_shim(dir: &RunDir) -> Option<i32> {
    if let Some(pid) = dir.read_shim_pid() {
        return is_shim_of(pid, &dir.0).then_some(pid);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .find(|pid| is_shim_of(*pid, &dir.0))
}

/// Waits until process `pid` is gone.
async fn wait_gone(pid: i32) {
    let registered = pidfd(pid).and_then(|fd| {
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same
        // until it is dropped.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(std::io::Error::from)
    });
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(_) => {
            // No pidfd (gone already, or an old kernel): poll.
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A start that failed before any shim ran: the node's fault, not the task's.
fn shim_failed(message: &str) -> ExitRecord {
    ExitRecord::failed("ShimFailed", message)
}

/// Ends a run whose shim died without recording its end: removes what it left
/// (processes, mounts, cgroups, container state) and records the loss as the
/// run's end, so it is dealt with once, even across a nodelet restart.
async fn end_lost(dir: &RunDir, message: &'static str) -> ExitRecord {
    let run = dir.clone();
    let reaped = tokio::task::spawn_blocking(move || end_lost_now(&run, message)).await;
    reaped.unwrap_or_else(|_| ExitRecord::lost(message))
}

fn end_lost_now(dir: &RunDir, message: &str) -> ExitRecord {
    let left = crate::shim::remove_leftovers(dir);
    // The shim may have written its record while it died.
    if let Some(record) = dir.read_exit() {
        return record;
    }
    tracing::warn!(
        run = %dir.0.display(),
        processes = left.processes,
        mounts = left.mounts.len(),
        "a run's shim died without recording its end; its leftovers are removed"
    );
    let record = ExitRecord::lost(message);
    if let Ok(bytes) = serde_json::to_vec(&record) {
        let _ = crate::run::write_replace(&dir.exit(), &bytes);
    }
    record
}

const DIED: &str =
    "the run's shim died without recording its end (the node crashed, or the shim was killed)";

#[async_trait]
impl Driver for ShimDriver {
    async fn start(&self, dir: &RunDir) -> Result<Started, ExitRecord> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(shim_failed("no shim command configured"));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(&dir.0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false);
        // The shim leads its own process group, out of the nodelet's: a signal to
        // the nodelet's group (Ctrl-C) does not reach it, and it outlives the
        // nodelet. Without a pre_exec hook the spawn takes the posix_spawn (vfork)
        // path instead of forking the whole nodelet, which cost a busy node a
        // tenth of its CPU in page-table copies.
        command.process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| shim_failed(&format!("cannot start the shim {program:?}: {e}")))?;
        let stdout = child.stdout.take();
        // The shim is reaped by tokio in the background once dropped.
        drop(child);
        if let Some(stdout) = stdout {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            if let Ok(Some(line)) = lines.next_line().await
                && let Ok(started) = serde_json::from_str::<Started>(&line)
            {
                return Ok(started);
            }
        }
        // The shim ended without reporting a start: its exit record says why.
        for _ in 0..100 {
            if let Some(record) = dir.read_exit() {
                return Err(record);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(end_lost(dir, DIED).await)
    }

    fn find(&self, dir: &RunDir) -> Found {
        if let Some(record) = dir.read_exit() {
            return Found::Exited(record);
        }
        if live_shim(dir).is_some() {
            // Alive: it reports its start shortly if it has not yet.
            return match dir.read_started() {
                Some(started) => Found::Running(started),
                None => Found::Running(Started {
                    pid: 0,
                    started_at: Utc::now(),
                    task_ip: None,
                }),
            };
        }
        // The shim is gone: it may have written its record just now.
        if let Some(record) = dir.read_exit() {
            return Found::Exited(record);
        }
        if dir.read_started().is_some() || dir.shim_pid().exists() {
            return Found::Exited(end_lost_now(dir, DIED));
        }
        if dir.spec().exists() {
            // A shim spawned just before the nodelet died may be in its exec,
            // when its command line is not yet its own: look once more before
            // starting the run again beside it.
            std::thread::sleep(Duration::from_millis(200));
            if live_shim(dir).is_some() || dir.shim_pid().exists() {
                return self.find(dir);
            }
        }
        // Never started: a crash between the run's spec and its shim's pid file
        // may still have left a clone or a mount.
        crate::shim::remove_leftovers(dir);
        Found::NotStarted
    }

    async fn wait(&self, dir: &RunDir) -> ExitRecord {
        loop {
            if let Some(record) = dir.read_exit() {
                return record;
            }
            match live_shim(dir) {
                Some(pid) => wait_gone(pid).await,
                None => {
                    return match dir.read_exit() {
                        Some(record) => record,
                        None => end_lost(dir, DIED).await,
                    };
                }
            }
        }
    }

    fn signal(&self, dir: &RunDir, signal: i32) {
        if dir.read_exit().is_some() {
            return;
        }
        let Some(started) = dir.read_started() else {
            // Not started yet, or its start record is gone: the shim passes a
            // stop on to the task, or cancels its start; SIGKILL ends the shim,
            // whose leftovers `wait` then removes.
            if let Some(pid) = live_shim(dir) {
                // SAFETY: kill(2) to the run's live shim (its command line checked).
                unsafe {
                    libc::kill(pid, signal);
                }
            }
            return;
        };
        let exec = std::fs::read(dir.spec())
            .ok()
            .and_then(|b| serde_json::from_slice::<RunSpec>(&b).ok())
            .is_some_and(|s| matches!(s.driver, DriverKind::Exec | DriverKind::Raw));
        // SAFETY: kill(2); the pid is the run's process, which its live shim has
        // not reaped (no exit record yet), so it cannot have been reused.
        unsafe {
            if exec {
                // A host process leads its own process group (a confined one as
                // the session leader libcontainer makes of its init).
                libc::kill(-started.pid, signal);
            }
            libc::kill(started.pid, signal);
        }
    }
}

/// How a fake run should end.
#[derive(Debug, Clone)]
pub enum FakeOutcome {
    /// Exit with this code after the delay.
    Exit(i32, Duration),
    /// Run until signalled; `ignore_term` makes SIGTERM do nothing.
    UntilSignalled {
        /// Whether SIGTERM is ignored (only SIGKILL ends it).
        ignore_term: bool,
    },
    /// Fail to start.
    FailStart(String),
}

#[derive(Debug, Default)]
struct FakeState {
    starts: Vec<PathBuf>,
    signals: Vec<(PathBuf, i32)>,
    exits: BTreeMap<PathBuf, ExitRecord>,
    outcomes: BTreeMap<PathBuf, FakeOutcome>,
}

/// A driver that runs nothing: it records starts and signals, and ends runs as
/// told by [`FakeDriver::set_outcome`] (by default: exit 0 at once).
#[derive(Debug, Clone, Default)]
pub struct FakeDriver {
    state: Arc<Mutex<FakeState>>,
    changed: Arc<tokio::sync::Notify>,
    default: Arc<Mutex<Option<FakeOutcome>>>,
}

impl FakeDriver {
    /// Sets how runs end unless told otherwise.
    pub fn set_default(&self, outcome: FakeOutcome) {
        if let Ok(mut d) = self.default.lock() {
            *d = Some(outcome);
        }
    }

    /// The run directories started, in order.
    pub fn starts(&self) -> Vec<PathBuf> {
        self.state
            .lock()
            .map(|s| s.starts.clone())
            .unwrap_or_default()
    }

    /// The signals sent, in order.
    pub fn signals(&self) -> Vec<(PathBuf, i32)> {
        self.state
            .lock()
            .map(|s| s.signals.clone())
            .unwrap_or_default()
    }

    fn outcome(&self, dir: &Path) -> FakeOutcome {
        let specific = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.outcomes.get(dir).cloned());
        specific
            .or_else(|| self.default.lock().ok().and_then(|d| d.clone()))
            .unwrap_or(FakeOutcome::Exit(0, Duration::ZERO))
    }

    fn finish(&self, dir: &Path, record: ExitRecord) {
        if let Ok(mut s) = self.state.lock() {
            s.exits.entry(dir.to_owned()).or_insert(record);
        }
        self.changed.notify_waiters();
    }
}

fn exited(code: i32, signal: Option<i32>) -> ExitRecord {
    ExitRecord {
        exit_code: Some(code),
        signal,
        started_at: Some(Utc::now()),
        finished_at: Some(Utc::now()),
        ..ExitRecord::default()
    }
}

#[async_trait]
impl Driver for FakeDriver {
    async fn start(&self, dir: &RunDir) -> Result<Started, ExitRecord> {
        if let Ok(mut s) = self.state.lock() {
            s.starts.push(dir.0.clone());
        }
        match self.outcome(&dir.0) {
            FakeOutcome::FailStart(message) => {
                Err(ExitRecord::failed("ContainerCreateFailed", message))
            }
            FakeOutcome::Exit(code, after) => {
                let this = self.clone();
                let path = dir.0.clone();
                // A thread, not a task: the run outlives a nodelet runtime that
                // is dropped, as a real process outlives a killed nodelet.
                std::thread::spawn(move || {
                    std::thread::sleep(after);
                    this.finish(&path, exited(code, None));
                });
                Ok(Started {
                    pid: 1,
                    started_at: Utc::now(),
                    task_ip: None,
                })
            }
            FakeOutcome::UntilSignalled { .. } => Ok(Started {
                pid: 1,
                started_at: Utc::now(),
                task_ip: None,
            }),
        }
    }

    fn find(&self, dir: &RunDir) -> Found {
        let Ok(s) = self.state.lock() else {
            return Found::NotStarted;
        };
        match s.exits.get(&dir.0) {
            Some(record) => Found::Exited(record.clone()),
            None if s.starts.contains(&dir.0) => Found::Running(Started {
                pid: 1,
                started_at: Utc::now(),
                task_ip: None,
            }),
            None => Found::NotStarted,
        }
    }

    async fn wait(&self, dir: &RunDir) -> ExitRecord {
        loop {
            let notified = self.changed.notified();
            if let Some(record) = self
                .state
                .lock()
                .ok()
                .and_then(|s| s.exits.get(&dir.0).cloned())
            {
                return record;
            }
            notified.await;
        }
    }

    fn signal(&self, dir: &RunDir, signal: i32) {
        if let Ok(mut s) = self.state.lock() {
            s.signals.push((dir.0.clone(), signal));
        }
        let ignore_term = matches!(
            self.outcome(&dir.0),
            FakeOutcome::UntilSignalled { ignore_term: true }
        );
        if signal == libc::SIGKILL || !ignore_term {
            self.finish(&dir.0, exited(128 + signal, Some(signal)));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A process that names the run directory the way libcontainer's clones of
    /// a shim do (its command line is the shim's until it execs). It waits on
    /// its stdin, which the `Child` holds open, and forks nothing: a forked
    /// child would name the directory too until it execs.
    fn clone_of_shim(dir: &Path) -> std::process::Child {
        let child = std::process::Command::new("sh")
            .args(["-c", "read never"])
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The spawn returns once the exec began; the new command line shows
        // a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_shim_of(child.id() as i32, dir) {
            assert!(std::time::Instant::now() < deadline, "sh never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn a_dead_shims_clone_is_not_its_shim_and_goes_with_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir(tmp.path().join("run-1"));
        std::fs::create_dir_all(&run.0).unwrap();
        // The shim wrote its pid file and died; a clone of it lives on.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        std::fs::write(run.shim_pid(), dead_pid.to_string()).unwrap();
        let mut clone = clone_of_shim(&run.0);
        let driver = ShimDriver {
            command: vec!["loom-shim".into()],
        };
        match driver.find(&run) {
            Found::Exited(record) => assert!(record.is_lost(), "{record:?}"),
            other => panic!("the clone was taken for the shim: {other:?}"),
        }
        let status = clone.wait().unwrap();
        assert!(status.code().is_none(), "killed, not exited: {status:?}");
        // The loss is recorded: found again, it is the same end.
        let recorded = run.read_exit().unwrap();
        assert!(recorded.is_lost());
        assert_eq!(driver.find(&run), Found::Exited(recorded));
    }

    #[test]
    fn a_shim_without_a_pid_file_yet_is_found_by_its_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir(tmp.path().join("run-1"));
        std::fs::create_dir_all(&run.0).unwrap();
        let mut shim = clone_of_shim(&run.0);
        assert_eq!(live_shim(&run), Some(shim.id() as i32));
        shim.kill().unwrap();
        shim.wait().unwrap();
        assert_eq!(live_shim(&run), None);
    }
}
