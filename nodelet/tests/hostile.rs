//! Tasks that try to reach outside their sandbox through what the nodelet does
//! for them: host mounts, the raw driver, log files. Each attack must fail with
//! a clear reason and leave a canary tree on the host untouched. Real nodelet,
//! real shims and containers, real API server; needs root, skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::well_known::{LABEL_ALLOW_HOST_PATHS, LABEL_ALLOW_RAW_EXEC, LABEL_ARCH};
use api_types::{Node, Task};
use client::{Api, PostParams};
use futures::StreamExt as _;
use loom_testing::nodelet::{Harness, is_root, phase};
use serde_json::json;
use sha2::{Digest as _, Sha256};

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the nodelet's hostile tests need root");
            return;
        }
    };
}

const LONG: Duration = Duration::from_secs(20);

/// Every path below `root` with its kind, mode and content digest: what a
/// canary tree looks like, to compare before and after an attack.
fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else {
                let digest = Sha256::digest(std::fs::read(&path).unwrap());
                format!("file {digest:x}")
            };
            out.insert(
                path,
                format!("{what} {:o} {}:{}", meta.mode(), meta.uid(), meta.gid()),
            );
        }
    }
    out
}

fn canary(dir: &Path) -> PathBuf {
    let canary = dir.join("canary");
    std::fs::create_dir_all(canary.join("etc")).unwrap();
    std::fs::write(canary.join("etc/shadow"), "root:secret:1:0:99999:7:::\n").unwrap();
    std::fs::write(canary.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    canary
}

async fn node_labels(h: &Harness) -> BTreeMap<String, String> {
    let nodes: Api<Node> = Api::all(h.client.clone());
    // Not registered yet: no labels.
    nodes
        .get_opt(&h.name)
        .await
        .unwrap()
        .map(|n| n.metadata.labels)
        .unwrap_or_default()
}

async fn wait_labels(h: &Harness, want: impl Fn(&BTreeMap<String, String>) -> bool) {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let labels = node_labels(h).await;
        if want(&labels) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node labels never matched: {labels:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mounts_and_the_raw_driver_need_the_operators_permission() {
    need_root!();
    let h = Harness::new("perm").await;
    h.import_busybox();
    let top = h.state.parent().unwrap().to_path_buf();
    let canary = canary(&top);
    let allowed = top.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::os::unix::fs::symlink(&canary, allowed.join("link")).unwrap();
    std::os::unix::fs::symlink("../canary", allowed.join("rel")).unwrap();
    let before = fingerprint(&canary);

    let mut config = h.config();
    config.allow_host_paths = vec![allowed.clone()];
    config.allow_raw_exec = false;
    let nodelet = h.start(config, None);
    wait_labels(&h, |l| {
        l.get(LABEL_ALLOW_HOST_PATHS).map(String::as_str) == Some("true")
            && !l.contains_key(LABEL_ALLOW_RAW_EXEC)
            && l.contains_key(LABEL_ARCH)
    })
    .await;

    let write_all =
        "for d in /x /x/etc; do echo pwned > $d/shadow; echo pwned > $d/new; done; true";
    let attacks = [
        ("etc", "/etc".to_owned()),
        ("canary", canary.display().to_string()),
        ("link", allowed.join("link").display().to_string()),
        ("rel", allowed.join("rel").display().to_string()),
        (
            "through-link",
            allowed.join("link/etc").display().to_string(),
        ),
        ("state", h.state.display().to_string()),
        ("state-parent", top.display().to_string()),
    ];
    for (name, source) in &attacks {
        h.create(json!({"metadata": {"name": name}, "spec": {
            "command": ["sh", "-c", write_all],
            "mounts": [{"source": source, "target": "/x", "readOnly": false}],
        }}))
        .await;
    }
    h.create(json!({"metadata": {"name": "raw"}, "spec": {
        "driver": "raw",
        "command": ["sh", "-c", format!("echo pwned > {}/raw", canary.display())],
    }}))
    .await;
    h.create(json!({"metadata": {"name": "fine"}, "spec": {
        "command": ["sh", "-c", "echo ok > /x/out.txt"],
        "mounts": [{"source": allowed.join("out/0").display().to_string(), "target": "/x", "readOnly": false}],
    }}))
    .await;

    for (name, source) in &attacks {
        let task = h.wait_for(name, LONG, |t| phase(t) == "Failed").await;
        let status = task.status.unwrap();
        assert_eq!(
            status.reason, "HostPathNotAllowed",
            "{name}: {}",
            status.message
        );
        assert!(
            status.message.contains(source.as_str()),
            "{name}: {}",
            status.message
        );
        assert_eq!(status.start_time, None, "{name} never started");
    }
    let raw = h.wait_for("raw", LONG, |t| phase(t) == "Failed").await;
    let status = raw.status.unwrap();
    assert_eq!(status.reason, "RawExecNotAllowed");
    assert!(
        status.message.contains("--allow-raw-exec"),
        "{}",
        status.message
    );
    let fine = h.wait_for("fine", LONG, |t| phase(t) == "Completed").await;
    assert_eq!(fine.status.unwrap().exit_code, Some(0));
    assert_eq!(
        std::fs::read_to_string(allowed.join("out/0/out.txt")).unwrap(),
        "ok\n"
    );
    assert_eq!(fingerprint(&canary), before, "the canary tree changed");
    assert!(Path::new("/etc/shadow").exists());
    assert!(!Path::new("/etc/new").exists());
    nodelet.stop().await;

    // The operator allows the raw driver: the node says so and runs it.
    let mut config = h.config();
    config.allow_host_paths = Vec::new();
    config.allow_raw_exec = true;
    let nodelet = h.start(config, None);
    wait_labels(&h, |l| {
        l.get(LABEL_ALLOW_RAW_EXEC).map(String::as_str) == Some("true")
            && !l.contains_key(LABEL_ALLOW_HOST_PATHS)
            && l.contains_key(LABEL_ARCH)
    })
    .await;
    h.create(json!({"metadata": {"name": "raw-allowed"}, "spec": {
        "driver": "raw",
        "command": ["sh", "-c", format!("id -u > {}/raw-ran", allowed.display())],
    }}))
    .await;
    h.wait_for("raw-allowed", LONG, |t| phase(t) == "Completed")
        .await;
    assert_eq!(
        std::fs::read_to_string(allowed.join("raw-ran")).unwrap(),
        "0\n"
    );
    // Host paths are no longer allowed on this node.
    h.create(json!({"metadata": {"name": "fine-again"}, "spec": {
        "command": ["true"],
        "mounts": [{"source": allowed.join("out/1").display().to_string(), "target": "/x", "readOnly": false}],
    }}))
    .await;
    let task = h
        .wait_for("fine-again", LONG, |t| phase(t) == "Failed")
        .await;
    assert_eq!(task.status.unwrap().reason, "HostPathNotAllowed");
    assert!(!allowed.join("out/1").exists());
    nodelet.stop().await;
    assert_eq!(fingerprint(&canary), before, "the canary tree changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_paths_that_climb_and_log_paths_that_are_paths() {
    need_root!();
    let h = Harness::new("paths").await;
    let tasks = h.tasks();
    for (spec, field) in [
        (
            json!({"command": ["true"], "mounts": [{"source": "/tmp/../etc", "target": "/x"}]}),
            "spec.mounts[0].source",
        ),
        (
            json!({"command": ["true"], "mounts": [{"source": "/tmp", "target": "/x/../../etc"}]}),
            "spec.mounts[0].target",
        ),
        (
            json!({"command": ["true"], "logPath": "/etc/shadow"}),
            "spec.logPath",
        ),
        (
            json!({"command": ["true"], "logPath": "../../x"}),
            "spec.logPath",
        ),
        (
            json!({"command": ["true"], "logPath": "/dev/zero"}),
            "spec.logPath",
        ),
    ] {
        let mut task = json!({"apiVersion": "loom.dev/v1", "kind": "Task",
            "metadata": {"name": "bad"}, "spec": spec});
        task["spec"]["image"] = "busybox".into();
        let task: Task = serde_json::from_value(task).unwrap();
        let err = tasks
            .create(&PostParams::default(), &task)
            .await
            .expect_err("a hostile path was accepted");
        assert_eq!(err.code(), Some(422), "{field}: {err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    assert!(tasks.get_opt("bad").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_written_and_read_only_inside_the_tasks_log_dir() {
    need_root!();
    let h = Harness::new("logs").await;
    h.import_busybox();
    let nodelet = h.start(h.config(), None);
    let task = h
        .create(json!({"metadata": {"name": "named"}, "spec": {
            "command": ["sh", "-c", "echo to the named log"],
            "logPath": "train.log",
        }}))
        .await;
    h.wait_for("named", LONG, |t| phase(t) == "Completed").await;
    let dir = h.state.join("tasks").join(&task.metadata.uid).join("logs");
    assert_eq!(
        std::fs::read_to_string(dir.join("train.log")).unwrap(),
        "to the named log\n"
    );
    let mut log = Vec::new();
    let mut stream = Box::pin(h.tasks().logs("named", false, None).await.unwrap());
    while let Some(chunk) = stream.next().await {
        log.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(log).unwrap(), "to the named log\n");

    // A link planted where the log is (by anyone) is never followed by the endpoint.
    let secret = h.state.parent().unwrap().join("secret");
    std::fs::write(&secret, "not for the task's owner\n").unwrap();
    std::fs::remove_file(dir.join("train.log")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("train.log")).unwrap();
    let read = h.tasks().logs("named", false, None).await;
    let mut got = Vec::new();
    if let Ok(stream) = read {
        let mut stream = Box::pin(stream);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => got.extend_from_slice(&bytes),
                Err(_) => break,
            }
        }
    }
    assert!(
        !String::from_utf8_lossy(&got).contains("not for the task's owner"),
        "the endpoint followed a link"
    );
    nodelet.stop().await;
}

/// Mounts under `dir` in the host's mount table.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_exec_task_survives_its_nodelet_killed_mid_run_and_leaks_nothing() {
    need_root!();
    let h = Harness::new("exec-kill").await;
    let first = h.start(h.config(), None);
    let task = h
        .create(json!({"metadata": {"name": "confined"}, "spec": {
            "driver": "exec", "logPath": "run.log",
            "command": ["/bin/sh", "-c", "echo uid=$(id -u); sleep 2; echo done; exit 5"],
        }}))
        .await;
    h.wait_for("confined", LONG, |t| phase(t) == "Running")
        .await;
    // Killed like `kill -9` while the task runs: the shim and its sandbox go on.
    first.kill();
    assert!(
        host_mounts_under(&h.state).is_empty(),
        "the sandbox's binds show on the host: {:?}",
        host_mounts_under(&h.state)
    );
    let second = h.start(h.config(), None);
    let done = h.wait_for("confined", LONG, |t| phase(t) == "Failed").await;
    let status = done.status.unwrap();
    assert_eq!(status.exit_code, Some(5));
    assert_eq!(status.restart_count, 0);
    assert_eq!(h.runs(&task).len(), 1, "run once");
    let log = std::fs::read_to_string(
        h.state
            .join("tasks")
            .join(&task.metadata.uid)
            .join("logs/run.log"),
    )
    .unwrap();
    assert_eq!(log, "uid=65534\ndone\n");
    assert!(host_mounts_under(&h.state).is_empty());
    second.stop().await;
}
