//! A full state dir: the nodelet keeps running, a task that cannot start
//! waits (an event says why) instead of failing, and starts once there is
//! room again. The state dir is a small tmpfs of the test's own (root).
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loom_testing::nodelet::{Harness, is_root, phase};
use nodelet::{FakeDriver, FakeOutcome};
use serde_json::json;

/// Unmounts the tmpfs when dropped, even when the test fails.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(dir: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", size, "loom-test-disk"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            dir.display()
        );
        Mounted(dir.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes `file` until the filesystem is full.
fn fill(file: &Path) {
    let mut out = std::fs::File::create(file).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while let Ok(n) = out.write(&chunk) {
        if n == 0 {
            break;
        }
    }
    let small = [0u8; 512];
    while let Ok(n) = out.write(&small) {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_for_room_in_a_full_state_dir_then_runs() {
    if !is_root() {
        eprintln!("skipped: a tmpfs needs root");
        return;
    }
    let h = Harness::new("diskfull").await;
    let mounted = Mounted::tmpfs(&h.state, "size=4m");
    let driver = FakeDriver::default();
    driver.set_default(FakeOutcome::Exit(0, Duration::from_millis(500)));
    let mut config = h.config();
    config.allow_raw_exec = true;
    let nodelet = h.start(config, Some(Arc::new(driver.clone())));
    // The node is up (a first task runs) before its disk fills.
    h.create(json!({"metadata": {"name": "before"}, "spec": {"driver": "raw", "command": ["x"]}}))
        .await;
    h.wait_for("before", Duration::from_secs(15), |t| {
        phase(t) == "Completed"
    })
    .await;

    let filler = h.state.join("fill");
    fill(&filler);
    h.create(json!({"metadata": {"name": "waits"}, "spec": {"driver": "raw", "command": ["x"]}}))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let task = h.tasks().get("waits").await.unwrap();
    let status = task.status.clone().unwrap_or_default();
    assert!(
        !matches!(phase(&task), "Failed" | "Completed" | "Running"),
        "a task on a full state dir did not wait: {} {} {}",
        phase(&task),
        status.reason,
        status.message
    );
    assert_eq!(driver.starts().len(), 1, "started on a full disk");
    let events: client::Api<api_types::Event> =
        client::Api::namespaced(h.client.clone(), "default");
    let said = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| e.reason == "DiskFull" && e.message.contains("waits to start"));
    assert!(said, "no DiskFull event says why the task waits");

    std::fs::remove_file(&filler).unwrap();
    h.wait_for("waits", Duration::from_secs(15), |t| {
        phase(t) == "Completed"
    })
    .await;
    nodelet.stop().await;
    drop(mounted);
}
