//! A node that crashes — its nodelet, every shim and every task process killed
//! at once, as in a power loss — and comes back on the same state dir: tasks
//! that restart always (or on failure) run again in place, a task that never
//! restarts ends `Lost` (its owner replaces it) and is not run again, and the
//! dead runs' overlay mounts, cgroups and container state are cleaned up. Needs
//! root; skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use api_types::TaskPhase;
use api_types::well_known::REASON_SHIM_LOST;
use loom_testing::nodelet::{Harness, Running, is_root, phase};
use nodelet::run::RunSpec;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the nodelet's crash tests need root");
            return;
        }
    };
}

/// The pids of the processes whose command line names `needle`.
fn processes_naming(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// The pids in the cgroup tree at `dir` (one hierarchy).
fn processes_in(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(processes_in(&entry.path()));
        }
    }
    pids
}

/// Crashes the node: the nodelet stops dead, then every shim of its state dir
/// and every process of its cgroups get SIGKILL (shims first, so none of them
/// records its task's death), until none is left. Mounts, cgroup directories
/// and run files stay as they were.
fn crash(h: &Harness, nodelet: Running) {
    nodelet.kill();
    let cgroups = Path::new("/sys/fs/cgroup/pids").join(&h.cgroup_parent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shims = processes_naming(&h.state);
        let tasks = processes_in(&cgroups);
        if shims.is_empty() && tasks.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes outlive the crash");
        for pid in shims.into_iter().chain(tasks) {
            // SAFETY: kill(2).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

/// The cgroup directories of a run, in every hierarchy that has one.
fn cgroup_dirs(spec: &RunSpec) -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(spec.cgroup_path.trim_start_matches('/')))
        .filter(|d| d.exists())
        .map(|d| d.display().to_string())
        .collect()
}

fn spec_of(run: &Path) -> RunSpec {
    serde_json::from_slice(&std::fs::read(run.join("spec.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_restarts_its_tasks_in_place_and_cleans_up_the_dead_runs() {
    need_root!();
    let h = Harness::new("crash").await;
    h.import_busybox();
    let first = h.start(h.config(), None);
    for (name, policy, driver) in [
        ("web", "Always", "container"),
        ("worker", "OnFailure", "container"),
        ("batch", "Never", "container"),
        ("host", "Always", "exec"),
    ] {
        h.create(json!({"metadata": {"name": name}, "spec": {
            "command": ["sleep", "300"], "restartPolicy": policy, "driver": driver
        }}))
        .await;
    }
    let mut before = Vec::new();
    for name in ["web", "worker", "batch", "host"] {
        let task = h.wait_for(name, LONG, |t| phase(t) == "Running").await;
        let run = h.runs(&task)[0].clone();
        before.push((task, run));
    }
    crash(&h, first);
    // What a crash leaves behind: the containers' roots stay mounted.
    let web_run = &before[0].1;
    assert!(
        !mounted_under(web_run).is_empty(),
        "the crash left no mount to clean up: {}",
        web_run.display()
    );

    let second = h.start(h.config(), None);
    for name in ["web", "worker", "host"] {
        let task = h
            .wait_for(name, LONG, |t| {
                phase(t) == "Running"
                    && t.status
                        .as_ref()
                        .is_some_and(|s| s.restart_count == 1 && s.reason.is_empty())
            })
            .await;
        assert_eq!(h.runs(&task).len(), 2, "{name} runs again, once");
    }
    let batch = h.wait_for("batch", LONG, |t| t.is_terminal()).await;
    let status = batch.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.reason.as_str()),
        (TaskPhase::Lost, REASON_SHIM_LOST),
        "{}",
        status.message
    );
    assert!(status.finish_time.is_some());

    // The dead runs' leftovers are gone: mounts, cgroups, container state.
    for (task, run) in &before {
        let name = &task.metadata.name;
        assert_eq!(mounted_under(run), Vec::<String>::new(), "{name}");
        let spec = spec_of(run);
        assert_eq!(cgroup_dirs(&spec), Vec::<String>::new(), "{name}");
        assert!(
            !spec.container_root.join(&spec.container_id).exists(),
            "{name}: the container's state is left"
        );
        assert!(
            run.join("exit.json").exists(),
            "{name}: the loss is recorded"
        );
    }
    // A task that never restarts is not run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.runs(&batch).len(), 1, "batch ran twice");
    assert_eq!(phase(&h.tasks().get("batch").await.unwrap()), "Lost");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_without_a_start_record_goes_through_the_shim() {
    need_root!();
    let h = Harness::new("shimstop").await;
    h.import_busybox();
    let nodelet = h.start(h.config(), None);
    // One that ends on SIGTERM, one that only SIGKILL ends (a pid namespace's
    // init without a handler ignores SIGTERM).
    h.create(json!({"metadata": {"name": "polite"}, "spec": {
        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
        "terminationGracePeriodSeconds": 30
    }}))
    .await;
    h.create(json!({"metadata": {"name": "stubborn"}, "spec": {
        "command": ["sleep", "300"], "terminationGracePeriodSeconds": 1
    }}))
    .await;
    let mut runs = Vec::new();
    for name in ["polite", "stubborn"] {
        let task = h.wait_for(name, LONG, |t| phase(t) == "Running").await;
        let run = h.runs(&task)[0].clone();
        let started: nodelet::run::Started =
            serde_json::from_slice(&std::fs::read(run.join("started.json")).unwrap()).unwrap();
        // The run's start record is gone: the nodelet can only reach the shim.
        std::fs::remove_file(run.join("started.json")).unwrap();
        runs.push((task, run, started.pid));
    }
    for (task, _, _) in &runs {
        h.tasks()
            .delete(&task.metadata.name, &Default::default())
            .await
            .unwrap();
    }
    let asked = Instant::now();
    for (task, run, pid) in &runs {
        let name = &task.metadata.name;
        let deadline = Instant::now() + LONG;
        while Path::new(&format!("/proc/{pid}")).exists() || run.exists() {
            assert!(
                Instant::now() < deadline,
                "{name}: the task was not stopped through its shim"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(mounted_under(run), Vec::<String>::new(), "{name}");
        if name == "polite" {
            // SIGTERM reached it through the shim: long before its grace period.
            assert!(asked.elapsed() < Duration::from_secs(10), "{name}");
        }
    }
    nodelet.stop().await;
}
