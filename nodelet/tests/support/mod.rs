//! A real API server and a nodelet in its own runtime (so a test can drop it as
//! abruptly as `kill -9`), with cleanup of every process, mount, cgroup and
//! directory the nodelet made, even when the test fails.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::Task;
use apiserver::testing::TestServer;
use client::{Api, Client, PostParams};
use nodelet::{Config, Driver};
use tokio_util::sync::CancellationToken;

/// A nodelet's run in its own runtime.
pub struct Running {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
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

pub struct Harness {
    pub server: TestServer,
    pub client: Client,
    pub name: String,
    pub state: PathBuf,
    pub cgroup_parent: String,
    _dir: tempfile::TempDir,
}

pub fn shim() -> Vec<std::ffi::OsString> {
    vec![env!("CARGO_BIN_EXE_loom-shim").into()]
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Harness {
    pub async fn new(tag: &str) -> Harness {
        let server = TestServer::embedded(apiserver::Config::default())
            .await
            .unwrap();
        let client = Client::for_server(&server.url).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let suffix = format!("{}-{}", tag, std::process::id());
        Harness {
            server,
            client,
            name: format!("node-{suffix}"),
            state,
            cgroup_parent: format!("loom-test-{suffix}"),
            _dir: dir,
        }
    }

    pub fn config(&self) -> Config {
        let mut config = Config::new(&self.name, self.state.clone());
        config.cgroup_parent = self.cgroup_parent.clone();
        config.shim = shim();
        config.backoff_base = Duration::from_millis(200);
        config.backoff_max = Duration::from_secs(2);
        config.default_grace = Duration::from_secs(2);
        // The tests' input and output directories are temporary directories.
        config.allow_host_paths = vec![std::env::temp_dir()];
        config
    }

    /// Imports a busybox image built from the host's busybox-static as `busybox`.
    pub fn import_busybox(&self) {
        let layout = self._dir.path().join("busybox-layout");
        nodelet::image::busybox_layout(&layout, Path::new("/bin/busybox"), "latest").unwrap();
        nodelet::image::ImageStore::new(&self.state.join("images"))
            .import(&layout, Some("busybox"))
            .unwrap();
    }

    pub fn start(&self, config: Config, driver: Option<Arc<dyn Driver>>) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let client = self.client.clone();
        let handle = match driver {
            Some(driver) => {
                runtime.spawn(nodelet::run_with(client, config, driver, shutdown.clone()))
            }
            None => runtime.spawn(nodelet::run(client, config, shutdown.clone())),
        };
        Running {
            runtime: Some(runtime),
            shutdown,
            handle: Some(handle),
        }
    }

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
        let task: Task = serde_json::from_value(task).unwrap();
        self.tasks()
            .create(&PostParams::default(), &task)
            .await
            .unwrap()
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
            let task = self.tasks().get_opt(name).await.unwrap();
            if let Some(task) = &task
                && done(task)
            {
                return task.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "task {name} did not get there in {timeout:?}: {}",
                    serde_json::to_string_pretty(&task.map(|t| t.status)).unwrap()
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
