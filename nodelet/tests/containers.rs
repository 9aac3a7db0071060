//! The nodelet with real containers (libcontainer, seccomp, cgroups v1) and real
//! exec processes, against a real API server. Needs root; skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use api_types::TaskPhase;
use api_types::well_known::REASON_TIME_LIMIT_EXCEEDED;
use client::{Patch, PatchParams};
use futures::StreamExt as _;
use loom_testing::nodelet::{Harness, is_root, phase};
use serde_json::json;

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the nodelet's container tests need root");
            return;
        }
    };
}

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_env_args_mounts_and_logs() {
    need_root!();
    let h = Harness::new("exit").await;
    h.import_busybox();
    let input = h.state.parent().unwrap().join("input");
    let output = h.state.parent().unwrap().join("output");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("in.txt"), "from the input\n").unwrap();
    let nodelet = h.start(h.config(), None);

    h.create(json!({"metadata": {"name": "ok"}, "spec": {
        "command": ["sh", "-c", "echo \"$GREETING $1 $LOOM_TASK_NAME\"; cat /input/in.txt > /output/out.txt; echo x > /input/y || echo input-is-read-only; ip -o link show lo; grep -E '^(Seccomp|NoNewPrivs|CapBnd):' /proc/self/status; exit 0", "sh", "world"],
        "env": [{"name": "GREETING", "value": "hello"}],
        "mounts": [
            {"source": input.display().to_string(), "target": "/input"},
            {"source": output.display().to_string(), "target": "/output", "readOnly": false}
        ],
        "resources": {"cpu": "500m", "memory": "64Mi"}
    }}))
    .await;
    h.create(json!({"metadata": {"name": "fails"}, "spec": {"command": ["sh", "-c", "exit 3"]}}))
        .await;
    h.create(
        json!({"metadata": {"name": "noimage"}, "spec": {"image": "nope:1", "command": ["true"]}}),
    )
    .await;

    let ok = h.wait_for("ok", LONG, |t| phase(t) == "Completed").await;
    let status = ok.status.unwrap();
    assert_eq!(status.exit_code, Some(0));
    assert!(status.start_time.is_some() && status.finish_time.is_some());
    assert_eq!(status.node_name, h.name);
    assert_eq!(
        std::fs::read_to_string(output.join("out.txt")).unwrap(),
        "from the input\n"
    );
    assert!(!input.join("y").exists());

    // The log, through the apiserver's proxy to the nodelet.
    let mut log = Vec::new();
    let mut stream = Box::pin(h.tasks().logs("ok", false, None).await.unwrap());
    while let Some(chunk) = stream.next().await {
        log.extend_from_slice(&chunk.unwrap());
    }
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("hello world ok"), "{log}");
    assert!(log.contains("input-is-read-only"), "{log}");
    assert!(log.contains("UP"), "lo is up: {log}");
    // Seccomp filtering on, no new privileges, Docker's default capability set
    // without MKNOD and NET_RAW.
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("CapBnd:\t00000000a00405fb"), "{log}");

    let fails = h.wait_for("fails", LONG, |t| phase(t) == "Failed").await;
    let status = fails.status.unwrap();
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.reason, "Error");

    let noimage = h.wait_for("noimage", LONG, |t| phase(t) == "Failed").await;
    let status = noimage.status.unwrap();
    assert_eq!(status.reason, "ImageNotFound");
    assert!(status.message.contains("nope:1"), "{}", status.message);
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_pids_limits_are_enforced() {
    need_root!();
    let h = Harness::new("limits").await;
    h.import_busybox();
    let mut config = h.config();
    config.pids_limit = 10;
    let nodelet = h.start(config, None);
    h.create(json!({"metadata": {"name": "hog"}, "spec": {
        "command": ["sh", "-c", "a=$(yes | head -c 100000000); echo survived"],
        "resources": {"memory": "16Mi"}
    }}))
    .await;
    h.create(json!({"metadata": {"name": "forks"}, "spec": {
        "command": ["sh", "-c", "for i in $(seq 30); do sleep 2 & done; echo forked"],
    }}))
    .await;
    let hog = h.wait_for("hog", LONG, |t| phase(t) == "Failed").await;
    let status = hog.status.unwrap();
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, Some(137));
    h.wait_for("forks", LONG, |t| {
        t.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    })
    .await;
    let mut log = Vec::new();
    let mut stream = Box::pin(h.tasks().logs("forks", false, None).await.unwrap());
    while let Some(chunk) = stream.next().await {
        log.extend_from_slice(&chunk.unwrap());
    }
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.contains("can't fork"),
        "the pids limit stops the 10th process: {log}"
    );
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_grace_period_and_restarts() {
    need_root!();
    let h = Harness::new("time").await;
    h.import_busybox();
    let output = h.state.parent().unwrap().join("counter");
    let nodelet = h.start(h.config(), None);
    h.create(json!({"metadata": {"name": "slow"}, "spec": {
        "command": ["sleep", "60"], "timeLimitSeconds": 1
    }}))
    .await;
    // PID 1 without a handler ignores SIGTERM; the grace period must still end it.
    h.create(json!({"metadata": {"name": "stubborn"}, "spec": {
        "command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        "terminationGracePeriodSeconds": 1
    }}))
    .await;
    // Fails twice, then succeeds: OnFailure restarts it with backoff.
    h.create(json!({"metadata": {"name": "flaky"}, "spec": {
        "command": ["sh", "-c", "n=$(cat /out/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /out/n; [ $n -ge 3 ]"],
        "restartPolicy": "OnFailure",
        "mounts": [{"source": output.display().to_string(), "target": "/out", "readOnly": false}]
    }}))
    .await;

    let slow = h.wait_for("slow", LONG, |t| phase(t) == "Killed").await;
    let status = slow.status.unwrap();
    assert_eq!(status.reason, REASON_TIME_LIMIT_EXCEEDED);
    let ran = status.finish_time.unwrap() - status.start_time.unwrap();
    assert!(
        ran >= chrono::Duration::milliseconds(900) && ran < chrono::Duration::seconds(5),
        "{ran}"
    );

    h.wait_for("stubborn", LONG, |t| phase(t) == "Running")
        .await;
    let asked = chrono::Utc::now();
    h.tasks()
        .patch_status(
            "stubborn",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Killed", "reason": "Killed", "message": "by the test"}})),
        )
        .await
        .unwrap();
    let stubborn = h
        .wait_for("stubborn", LONG, |t| {
            t.status.as_ref().is_some_and(|s| s.finish_time.is_some())
        })
        .await;
    let status = stubborn.status.unwrap();
    assert_eq!(status.phase, TaskPhase::Killed);
    assert_eq!(
        status.exit_code,
        Some(137),
        "SIGKILLed after the grace period"
    );
    let took = status.finish_time.unwrap() - asked;
    assert!(
        took >= chrono::Duration::milliseconds(900) && took < chrono::Duration::seconds(6),
        "{took}"
    );

    let flaky = h.wait_for("flaky", LONG, |t| phase(t) == "Completed").await;
    assert_eq!(flaky.status.as_ref().unwrap().restart_count, 2);
    assert_eq!(h.runs(&flaky).len(), 3);
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodelet_adopts_its_running_containers() {
    need_root!();
    let h = Harness::new("adopt").await;
    h.import_busybox();
    let first = h.start(h.config(), None);
    h.create(json!({"metadata": {"name": "survivor"}, "spec": {"command": ["sh", "-c", "sleep 2; exit 7"]}}))
        .await;
    h.create(json!({"metadata": {"name": "lived"}, "spec": {"command": ["sh", "-c", "sleep 30"]}}))
        .await;
    let survivor = h
        .wait_for("survivor", LONG, |t| phase(t) == "Running")
        .await;
    let lived = h.wait_for("lived", LONG, |t| phase(t) == "Running").await;
    let started: nodelet::run::Started =
        serde_json::from_slice(&std::fs::read(h.runs(&lived)[0].join("started.json")).unwrap())
            .unwrap();
    first.kill();

    // While no nodelet runs, `survivor` exits; `lived` keeps running.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(std::path::Path::new(&format!("/proc/{}", started.pid)).exists());
    let second = h.start(h.config(), None);
    let survivor_done = h.wait_for("survivor", LONG, |t| phase(t) == "Failed").await;
    assert_eq!(survivor_done.status.as_ref().unwrap().exit_code, Some(7));
    assert_eq!(survivor_done.status.as_ref().unwrap().restart_count, 0);
    assert_eq!(h.runs(&survivor).len(), 1, "run once");
    // The same container, adopted: deleting the task stops that very process.
    let lived_now = h.tasks().get("lived").await.unwrap();
    assert_eq!(phase(&lived_now), "Running");
    assert_eq!(h.runs(&lived).len(), 1, "not started again");
    h.tasks()
        .delete("lived", &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + LONG;
    while std::path::Path::new(&format!("/proc/{}", started.pid)).exists() {
        assert!(
            Instant::now() < deadline,
            "the adopted container was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And its directory goes with it.
    let dir = h.state.join("tasks").join(&lived.metadata.uid);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tasks_run_in_their_cgroup_see_host_paths_and_logs_follow() {
    need_root!();
    let h = Harness::new("exec").await;
    let output = h.state.parent().unwrap().join("out");
    let nodelet = h.start(h.config(), None);
    h.create(json!({"metadata": {"name": "host"}, "spec": {
        "driver": "exec",
        "command": ["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done; echo $LOOM_OUTPUT_DIR > $LOOM_OUTPUT_DIR/where; echo memory-limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)"],
        "env": [{"name": "LOOM_OUTPUT_DIR", "value": "/output"}],
        "mounts": [{"source": output.display().to_string(), "target": "/output", "readOnly": false}],
        "resources": {"memory": "32Mi"}
    }}))
    .await;
    h.wait_for("host", LONG, |t| phase(t) != "Pending").await;
    // Follow the log through the apiserver until the task ends.
    let mut log = Vec::new();
    let mut stream = Box::pin(h.tasks().logs("host", true, None).await.unwrap());
    let deadline = tokio::time::Instant::now() + LONG;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        log.extend_from_slice(&chunk.unwrap());
    }
    let log = String::from_utf8(log).unwrap();
    for i in 1..=5 {
        assert!(log.contains(&format!("line {i}")), "{log}");
    }
    let host = h.wait_for("host", LONG, |t| phase(t) == "Completed").await;
    assert_eq!(host.status.unwrap().exit_code, Some(0));
    assert_eq!(
        std::fs::read_to_string(output.join("where"))
            .unwrap()
            .trim(),
        output.display().to_string()
    );
    // In a cgroup namespace the process sees its own cgroup as the root: the
    // limit there is the task's.
    assert!(
        log.contains(&format!("memory-limit={}", 32 << 20)),
        "ran in its cgroup: {log}"
    );
    nodelet.stop().await;
}
