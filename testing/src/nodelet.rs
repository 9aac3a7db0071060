//! A real API server and a nodelet in its own runtime (so a test can drop it as
//! abruptly as `kill -9`), with cleanup of every process, mount, cgroup and
//! directory the nodelet made, even when the test fails; and busybox images
//! built from the host's busybox-static. The harness panics on failure: its
//! methods are the test's own steps.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::Task;
use client::{Api, Client, PostParams};
use nodelet::{Config, Driver};
use tokio_util::sync::CancellationToken;

use crate::process::bin_dir;
use crate::{Error, Result, TestServer};

/// A nodelet's run in its own runtime.
#[derive(Debug)]
pub struct Running {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops it the way SIGTERM does.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), handle).await;
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Drops it on the floor, like `kill -9`: nothing of it runs any more, and
    /// nothing is cleaned up.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An API server and what one nodelet on it needs: a name, a state dir and a
/// cgroup parent of its own.
#[derive(Debug)]
pub struct Harness {
    pub server: TestServer,
    pub client: Client,
    pub name: String,
    pub state: PathBuf,
    pub cgroup_parent: String,
    shim: Vec<OsString>,
    _dir: tempfile::TempDir,
}

/// Whether the test runs as root (containers and cgroups need it).
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Harness {
    /// Starts the API server; `tag` makes the node's name and cgroup unique.
    /// Tasks run through the `loom-shim` beside the test binary (see
    /// [`bin_dir`]), which cargo builds before the nodelet's tests.
    pub async fn new(tag: &str) -> Harness {
        let server = TestServer::embedded(apiserver::Config::default())
            .await
            .expect("the API server starts");
        let client = server.client();
        let dir = tempfile::tempdir().expect("a temp dir");
        let state = dir.path().join("state");
        let suffix = format!("{}-{}", tag, std::process::id());
        Harness {
            server,
            client,
            name: format!("node-{suffix}"),
            state,
            cgroup_parent: format!("loom-test-{suffix}"),
            shim: vec![bin_dir().join("loom-shim").into_os_string()],
            _dir: dir,
        }
    }

    /// A nodelet config for this node, with short backoffs and grace periods.
    pub fn config(&self) -> Config {
        let mut config = Config::new(&self.name, self.state.clone());
        config.cgroup_parent = self.cgroup_parent.clone();
        config.shim = self.shim.clone();
        config.backoff_base = Duration::from_millis(200);
        config.backoff_max = Duration::from_secs(2);
        config.default_grace = Duration::from_secs(2);
        // The tests' input and output directories are temporary directories.
        config.allow_host_paths = vec![std::env::temp_dir()];
        config
    }

    /// Imports a busybox image built from the host's busybox-static as `busybox`.
    pub fn import_busybox(&self) {
        import_busybox(&self.state, &self._dir.path().join("busybox-layout"))
            .expect("the busybox image is imported");
    }

    /// Runs a nodelet with `config` (and `driver`, else the real one) in a
    /// runtime of its own.
    pub fn start(&self, config: Config, driver: Option<Arc<dyn Driver>>) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the nodelet");
        let shutdown = CancellationToken::new();
        let client = self.client.clone();
        let stop = shutdown.clone();
        let handle = runtime.spawn(async move {
            let result = match driver {
                Some(driver) => nodelet::run_with(client, config, driver, stop).await,
                None => nodelet::run(client, config, stop).await,
            };
            if let Err(error) = result {
                tracing::error!(%error, "the test nodelet failed");
            }
        });
        Running {
            runtime: Some(runtime),
            shutdown,
            handle: Some(handle),
        }
    }

    /// The tasks of the default namespace.
    pub fn tasks(&self) -> Api<Task> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates a task bound to this node.
    pub async fn create(&self, mut task: serde_json::Value) -> Task {
        task["apiVersion"] = "loom.dev/v1".into();
        task["kind"] = "Task".into();
        task["spec"]["nodeName"] = self.name.clone().into();
        if task["spec"]["image"].is_null() {
            task["spec"]["image"] = "busybox".into();
        }
        let task: Task = serde_json::from_value(task).expect("a valid Task");
        self.tasks()
            .create(&PostParams::default(), &task)
            .await
            .expect("the task is created")
    }

    /// Polls the task until `done` holds, or panics with its last state.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Task) -> bool,
    ) -> Task {
        let deadline = Instant::now() + timeout;
        loop {
            let task = self.tasks().get_opt(name).await.expect("the task is read");
            if let Some(task) = &task
                && done(task)
            {
                return task.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "task {name} did not get there in {timeout:?}: {}",
                    serde_json::to_string_pretty(&task.map(|t| t.status)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The run directories of a task.
    pub fn runs(&self, task: &Task) -> Vec<PathBuf> {
        let dir = self.state.join("tasks").join(&task.metadata.uid);
        let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("run-"))
            })
            .collect();
        runs.sort();
        runs
    }
}

/// A task's phase, `Pending` before it has a status.
pub fn phase(task: &Task) -> &'static str {
    task.status
        .as_ref()
        .map(|s| s.phase.as_str())
        .unwrap_or("Pending")
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Processes: shims of this state dir, then whatever is left in our cgroups.
        let needle = self.state.as_os_str().as_encoded_bytes().to_vec();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
                && cmdline
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
            {
                // SAFETY: kill(2).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for controller in [
            "pids", "memory", "cpu", "cpuacct", "freezer", "devices", "blkio", "cpuset",
        ] {
            let root = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&self.cgroup_parent);
            kill_tree(&root);
        }
        // Mounts under the state dir, deepest first.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let state = self.state.display().to_string();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&state))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount) {
                // SAFETY: a valid path string.
                unsafe {
                    libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        for controller in [
            "pids", "memory", "cpu", "cpuacct", "freezer", "devices", "blkio", "cpuset", "systemd",
        ] {
            remove_tree(
                &Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(&self.cgroup_parent),
            );
        }
    }
}

fn kill_tree(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_tree(&entry.path());
        }
    }
}

fn remove_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Builds a busybox image from the host's busybox-static (`/bin/busybox`) as an
/// OCI layout in `layout`, and imports it as `busybox:latest` into the image
/// store of the nodelet state dir `state`.
pub fn import_busybox(state: &Path, layout: &Path) -> Result<()> {
    nodelet::image::busybox_layout(layout, Path::new("/bin/busybox"), "latest")
        .map_err(Error::io("build the busybox image"))?;
    nodelet::image::ImageStore::new(&state.join("images")).import(layout, Some("busybox"))?;
    Ok(())
}
