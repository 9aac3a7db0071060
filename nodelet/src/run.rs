//! What the nodelet hands the shim for one run of a task, and what the shim leaves
//! behind: the files of a run directory.
//!
//! A task's directory (`STATE/tasks/UID/`) holds `task.json` (who it is) and one
//! `run-N/` directory per attempt. A run directory holds `spec.json` (a [`RunSpec`],
//! written by the nodelet), `shim.pid` and `pid` (written by the shim once the
//! task's process runs) and `exit.json` (an [`ExitRecord`], written last by the
//! shim, atomically). A run with `exit.json` is over; a run whose shim is alive is
//! adopted after a nodelet restart.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use api_types::well_known::REASON_SHIM_LOST;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a run's process is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DriverKind {
    /// A container created through libcontainer.
    Container,
    /// A confined host process: a libcontainer container whose root is the host's
    /// root read-only, in its own mount, pid, ipc, uts and cgroup namespaces but on
    /// the host's network, as an unprivileged user without capabilities.
    Exec,
    /// An unconfined host process in its own cgroup (root on the host; only on
    /// nodes that allow it).
    Raw,
}

/// What the confined exec driver's process may see and write of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// The task's writable work directory, seen at its host path.
    pub work_dir: PathBuf,
    /// Host directories hidden behind an empty tmpfs (the nodelet's state
    /// directory: other tasks' files).
    pub hidden: Vec<PathBuf>,
    /// The uid and gid the process runs as; it owns the work directory and the
    /// writable mounts' sources.
    pub uid: u32,
}

/// A bind mount of a host path into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Resource limits, enforced by cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// CPU in thousandths of a core (CFS quota).
    pub cpu_millis: Option<u64>,
    /// Memory in bytes (hard limit; exceeding it is an OOM kill).
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<i64>,
}

/// One run of a task, as the shim executes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// `namespace/name`, for messages.
    pub task: String,
    /// The driver.
    pub driver: DriverKind,
    /// The container's id (also the last part of its cgroup path).
    pub container_id: String,
    /// libcontainer's state root.
    pub container_root: PathBuf,
    /// The unpacked image, the read-only lower layer of the container's root.
    pub image_rootfs: Option<PathBuf>,
    /// The program and its arguments.
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory (inside the container for `container`).
    pub cwd: String,
    /// Bind mounts: at `target` in a container, at their source path for `exec`.
    pub mounts: Vec<MountSpec>,
    /// Limits.
    pub limits: Limits,
    /// The cgroup path below each controller's root, e.g. `/loom/node-a/ID`.
    pub cgroup_path: String,
    /// The task's log file.
    pub log_path: PathBuf,
    /// The log's size cap: past it the file rotates to `LOG.1`.
    pub log_max_bytes: u64,
    /// The container's hostname.
    pub hostname: String,
    /// The task's grace period between SIGTERM and SIGKILL, kept with the run so
    /// that it holds even when the task object is already gone.
    #[serde(default)]
    pub grace_seconds: Option<u64>,
    /// The confined exec driver's sandbox (`exec` only).
    #[serde(default)]
    pub sandbox: Option<Sandbox>,
    /// The task's service-account credentials, mounted read-only at
    /// [`crate::service_account::MOUNT_PATH`].
    #[serde(default)]
    pub service_account: Option<PathBuf>,
    /// The task's interface on the node's task network (`container` only;
    /// without it the container has only `lo`).
    #[serde(default)]
    pub network: Option<crate::network::TaskNetwork>,
    /// The files bound read-only at `/etc/hosts` and `/etc/resolv.conf`
    /// (`container` only; the image's own otherwise).
    #[serde(default)]
    pub etc_files: Option<EtcFiles>,
}

/// The name-resolution files the nodelet writes for a container's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcFiles {
    /// Bound at `/etc/hosts`.
    pub hosts: PathBuf,
    /// Bound at `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
}

/// What the shim reports once the process runs (one JSON line on its stdout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The task's process id in the host's pid namespace.
    pub pid: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its address on the node's task network, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ip: Option<std::net::Ipv4Addr>,
}

/// The bytes free to an unprivileged writer on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we pass for a valid path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// How long process `pid` has run, by the boot clock (CLOCK_BOOTTIME): a
/// step of the wall clock does not move it, and a restarted nodelet reads
/// the same. `None` when the process is gone or unreadable.
pub fn process_age(pid: i32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, `starttime`, in clock ticks since boot; the fields after the
    // command name (which may hold spaces and parentheses) start at 3.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)?;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a local.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    let now = std::time::Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    );
    let start = std::time::Duration::from_millis(ticks.saturating_mul(1000) / hz);
    Some(now.saturating_sub(start))
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit code (128 + signal for a signal, as shells report it).
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// The memory cgroup killed a process of the run.
    pub oom_killed: bool,
    /// The run could not start: why.
    pub error: Option<String>,
    /// A one-word reason for `error` (`ImageNotFound`, `ContainerCreateFailed`, ...).
    pub reason: Option<String>,
    /// When the process started, if it did.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl ExitRecord {
    /// The record of a run that could not start or whose end was lost: `reason`
    /// is one word (`ImageNotFound`, `ShimLost`, ...), `error` says why.
    pub fn failed(reason: &str, error: impl Into<String>) -> ExitRecord {
        ExitRecord {
            error: Some(error.into()),
            reason: Some(reason.to_owned()),
            finished_at: Some(Utc::now()),
            ..ExitRecord::default()
        }
    }

    /// The record of a run whose shim died without recording its end: the node
    /// crashed, or someone killed the shim. Not the task's doing, so it is not a
    /// failure of the task: a task that restarts on failure or always runs
    /// again in place, any other ends `Lost` and its owner replaces it.
    pub fn lost(error: impl Into<String>) -> ExitRecord {
        ExitRecord::failed(REASON_SHIM_LOST, error)
    }

    /// Whether this run was lost (see [`ExitRecord::lost`]).
    pub fn is_lost(&self) -> bool {
        self.error.is_some() && self.reason.as_deref() == Some(REASON_SHIM_LOST)
    }
}

/// The files of one run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// The run spec.
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    /// The shim's pid.
    pub fn shim_pid(&self) -> PathBuf {
        self.0.join("shim.pid")
    }
    /// The task process's pid and start time (a [`Started`]).
    pub fn started(&self) -> PathBuf {
        self.0.join("started.json")
    }
    /// The exit record.
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    /// The shim's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }

    /// Reads the exit record, if the run is over.
    pub fn read_exit(&self) -> Option<ExitRecord> {
        let text = std::fs::read(self.exit()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Reads the start record, if the process started.
    pub fn read_started(&self) -> Option<Started> {
        let text = std::fs::read(self.started()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Reads the shim's pid.
    pub fn read_shim_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.shim_pid())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Writes `bytes` to `path` atomically (temp file, rename), without waiting for
/// the disk: run files guard against the nodelet or a shim dying, which loses
/// nothing written; a machine crash ends every run anyway.
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}
