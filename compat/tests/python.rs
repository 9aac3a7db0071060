//! The Python kubernetes client (PyPI `kubernetes`, installed by
//! `scripts/deps` into its own virtualenv) against Loom's API server: it lists
//! Loom's kinds and the core ones, and watches a Job and a ServiceAccount
//! (`tests/python/kinds.py`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use loom_testing::TestServer;
use serde_json::{Value, json};

/// The virtualenv `scripts/deps` makes (`LOOM_PYTHON` names another interpreter).
const VENV_PYTHON: &str = "/var/tmp/loom-python/bin/python3";

/// How long the script may run: its watches end after 30 s of nothing.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// The interpreter with the client installed, or `None` (the test is then
/// skipped, except under CI, where `scripts/deps` must have installed it).
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("LOOM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VENV_PYTHON));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is absent: scripts/deps installs the Python kubernetes client there",
        path.display()
    );
    println!(
        "{} is absent (run scripts/deps): the Python client's test is skipped",
        path.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_lists_and_watches_loom_kinds() {
    let Some(python) = python() else {
        return;
    };
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/kinds.py");
    let output = tokio::time::timeout(
        SCRIPT_TIMEOUT,
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(&kubeconfig)
            // Nothing of the user's Python setup is read.
            .env("PYTHONNOUSERSITE", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    for (plural, kind) in [
        ("jobs", "JobList"),
        ("tasks", "TaskList"),
        ("services", "ServiceList"),
        ("nodes", "NodeList"),
    ] {
        assert_eq!(report[plural], kind, "{report:#}");
    }
    let namespaces = report["namespaces"].as_array().unwrap();
    assert!(namespaces.contains(&json!("default")), "{report:#}");
    // The watches saw each change once, in order, resourceVersions rising.
    let events = |key: &str| -> Vec<(String, u64)> {
        report[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_str().unwrap().to_owned(), e[2].as_u64().unwrap()))
            .collect()
    };
    for (key, expected) in [
        ("job_events", vec!["ADDED", "MODIFIED", "DELETED"]),
        ("account_events", vec!["ADDED", "DELETED"]),
    ] {
        let seen = events(key);
        assert_eq!(
            seen.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            expected,
            "{report:#}"
        );
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "resourceVersions rise: {seen:?}"
        );
    }
}
