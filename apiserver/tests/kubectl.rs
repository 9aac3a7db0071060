//! Real kubectl against the API server: create, get (tables, YAML, JSON, names), apply
//! (client-side and server-side), label, watch, delete, validation errors and discovery.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use loom_testing::TestServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::time::Instant;

/// How long one kubectl run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a watch may take to print a row.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `kubectl` on `PATH`, if there is one.
fn kubectl() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What one kubectl run printed and how it exited.
#[derive(Debug)]
struct Output {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    /// Asserts exit code 0 and returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "kubectl {} failed: {self:#?}",
            self.args
        );
        &self.stdout
    }

    /// Asserts exit code 1 (what kubectl uses for every error) and returns stderr.
    fn failed(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "kubectl {} should have failed: {self:#?}",
            self.args
        );
        &self.stderr
    }

    /// stdout parsed as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("kubectl {} printed no JSON ({e}): {self:#?}", self.args))
    }

    /// stdout's lines split into whitespace-separated cells.
    fn table(&self) -> Vec<Vec<String>> {
        self.ok().lines().map(cells).collect()
    }
}

/// A table row's cells.
fn cells(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// kubectl pointed at one server, with its config and caches in a private temp dir.
struct Kubectl {
    binary: PathBuf,
    server: TestServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// Starts `server` and a kubectl for it, or says the test is skipped and
/// returns `None` when kubectl is absent (before starting anything).
async fn setup(
    test: &str,
    server: impl Future<Output = loom_testing::Result<TestServer>>,
) -> Option<Kubectl> {
    let Some(binary) = kubectl() else {
        println!("{test}: skipped because kubectl is absent (not on PATH)");
        return None;
    };
    let server = server.await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("loom-kubectl-")
        .tempdir()
        .unwrap();
    let kubeconfig = server.kubeconfig().unwrap();
    Some(Kubectl {
        binary,
        server,
        dir,
        kubeconfig,
    })
}

fn embedded() -> impl Future<Output = loom_testing::Result<TestServer>> {
    TestServer::embedded(apiserver::Config::default())
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("KUBECONFIG", &self.kubeconfig)
            // So that nothing of the user's (~/.kube, aliases, plugins) is read or written.
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl to completion.
    async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::time::timeout(RUN_TIMEOUT, self.command(args).output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "kubectl {} did not finish within {RUN_TIMEOUT:?}",
                    args.join(" ")
                )
            })
            .unwrap();
        Output {
            args: args.join(" "),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Writes a manifest into the temp dir and returns its path as an argument.
    fn manifest(&self, file: &str, text: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// `get job NAME -o json`, managed fields included.
    async fn job(&self, name: &str) -> Value {
        self.run(&["get", "job", name, "-o", "json", "--show-managed-fields"])
            .await
            .json()
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// A Job manifest as a user writes it.
fn job_manifest(name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: loom.dev/v1
kind: Job
metadata:
  name: {name}
spec:
  replicas: {replicas}
  template:
    spec:
      image: busybox
      command: [\"echo\", \"hello\"]
"
    )
}

/// `(manager, operation)` of every managedFields entry.
fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_owned(),
                e["operation"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_get_as_table_yaml_json_and_name() {
    let Some(k) = setup("create_then_get_as_table_yaml_json_and_name", embedded()).await else {
        return;
    };
    let file = k.manifest("job.yaml", &job_manifest("hello", 2));
    assert_eq!(
        k.run(&["create", "-f", &file]).await.ok(),
        "job.loom.dev/hello created\n"
    );

    let table = k.run(&["get", "jobs"]).await.table();
    assert_eq!(table.len(), 2, "a header and one row: {table:?}");
    assert_eq!(table[0], ["NAME", "PHASE", "TASKS", "AGE"]);
    assert_eq!(table[1][..3], ["hello", "Pending", "0/2"], "{table:?}");
    assert_eq!(table[1].len(), 4, "{table:?}");

    let yaml = k
        .run(&["get", "jobs.loom.dev", "hello", "-o", "yaml"])
        .await;
    let from_yaml: Value = serde_saphyr::from_str(yaml.ok())
        .unwrap_or_else(|e| panic!("get -o yaml printed no YAML ({e}): {yaml:#?}"));
    assert_eq!(from_yaml["apiVersion"], "loom.dev/v1");
    assert_eq!(from_yaml["kind"], "Job");
    assert_eq!(from_yaml["metadata"]["name"], "hello");
    assert_eq!(from_yaml["metadata"]["namespace"], "default");
    let rv = from_yaml["metadata"]["resourceVersion"].as_str().unwrap();
    assert!(
        rv.parse::<u64>().is_ok_and(|rv| rv > 0),
        "resourceVersion {rv:?}"
    );
    let uid = from_yaml["metadata"]["uid"].as_str().unwrap();
    assert!(!uid.is_empty());
    assert_eq!(from_yaml["spec"]["replicas"], 2);
    assert_eq!(
        from_yaml["spec"]["template"]["spec"]["command"],
        serde_json::json!(["echo", "hello"])
    );

    let from_json = k.run(&["get", "job", "hello", "-o", "json"]).await.json();
    assert_eq!(from_json, from_yaml, "YAML and JSON show the same object");

    assert_eq!(
        k.run(&["get", "job", "-o", "name"]).await.ok(),
        "job.loom.dev/hello\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_creates_configures_and_leaves_unchanged() {
    let Some(k) = setup(
        "client_side_apply_creates_configures_and_leaves_unchanged",
        embedded(),
    )
    .await
    else {
        return;
    };
    let file = k.manifest("app.yaml", &job_manifest("app", 2));
    assert_eq!(
        k.run(&["apply", "-f", &file]).await.ok(),
        "job.loom.dev/app created\n"
    );
    k.manifest("app.yaml", &job_manifest("app", 3));
    assert_eq!(
        k.run(&["apply", "-f", &file]).await.ok(),
        "job.loom.dev/app configured\n"
    );
    assert_eq!(
        k.run(&["apply", "-f", &file]).await.ok(),
        "job.loom.dev/app unchanged\n"
    );

    let job = k.job("app").await;
    assert_eq!(job["spec"]["replicas"], 3);
    let last_applied =
        job["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap_or_else(|| panic!("no last-applied-configuration annotation: {job:#}"));
    let last_applied: Value = serde_json::from_str(last_applied).unwrap();
    assert_eq!(last_applied["metadata"]["name"], "app");
    assert_eq!(last_applied["spec"]["replicas"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_conflicts_with_another_manager_unless_forced() {
    let Some(k) = setup(
        "server_side_apply_conflicts_with_another_manager_unless_forced",
        embedded(),
    )
    .await
    else {
        return;
    };
    let mine = k.manifest("mine.yaml", &job_manifest("ssa", 2));
    let theirs = k.manifest("theirs.yaml", &job_manifest("ssa", 5));
    assert_eq!(
        k.run(&["apply", "--server-side", "-f", &mine]).await.ok(),
        "job.loom.dev/ssa serverside-applied\n"
    );
    let job = k.job("ssa").await;
    assert_eq!(job["spec"]["replicas"], 2);
    assert_eq!(managers(&job), [("kubectl".to_owned(), "Apply".to_owned())]);
    // Applying the same manifest again is a no-op update.
    assert_eq!(
        k.run(&["apply", "--server-side", "-f", &mine]).await.ok(),
        "job.loom.dev/ssa serverside-applied\n"
    );

    let conflict = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &theirs,
        ])
        .await;
    let stderr = conflict.failed();
    assert!(
        stderr.contains("Apply failed with 1 conflict")
            && stderr.contains("conflict with \"kubectl\"")
            && stderr.contains(".spec.replicas"),
        "{conflict:#?}"
    );
    assert_eq!(
        k.job("ssa").await["spec"]["replicas"],
        2,
        "a conflict changes nothing"
    );

    assert_eq!(
        k.run(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            &theirs,
        ])
        .await
        .ok(),
        "job.loom.dev/ssa serverside-applied\n"
    );
    assert_eq!(k.job("ssa").await["spec"]["replicas"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_takes_repeated_edits_from_one_manager() {
    let Some(k) = setup(
        "server_side_apply_takes_repeated_edits_from_one_manager",
        embedded(),
    )
    .await
    else {
        return;
    };
    // The usual workflow: edit the manifest, apply, edit again, apply again. The
    // only manager of spec.replicas must never conflict with itself.
    for replicas in [2, 3, 4] {
        let file = k.manifest("edited.yaml", &job_manifest("edited", replicas));
        let applied = k.run(&["apply", "--server-side", "-f", &file]).await;
        assert_eq!(
            applied.code,
            Some(0),
            "applying replicas {replicas} as the only manager failed: {applied:#?}"
        );
        assert_eq!(applied.stdout, "job.loom.dev/edited serverside-applied\n");
        assert_eq!(k.job("edited").await["spec"]["replicas"], replicas);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_unlabel() {
    let Some(k) = setup("label_and_unlabel", embedded()).await else {
        return;
    };
    let file = k.manifest("job.yaml", &job_manifest("web", 1));
    k.run(&["create", "-f", &file]).await.ok();

    assert_eq!(
        k.run(&["label", "job", "web", "tier=web"]).await.ok(),
        "job.loom.dev/web labeled\n"
    );
    let table = k.run(&["get", "job", "web", "--show-labels"]).await.table();
    assert_eq!(table[0], ["NAME", "PHASE", "TASKS", "AGE", "LABELS"]);
    assert_eq!(table[1][0], "web");
    assert_eq!(table[1].last().unwrap(), "tier=web", "{table:?}");
    assert_eq!(
        k.run(&["get", "jobs", "-l", "tier=web", "-o", "name"])
            .await
            .ok(),
        "job.loom.dev/web\n"
    );

    assert_eq!(
        k.run(&["label", "job", "web", "tier-"]).await.ok(),
        "job.loom.dev/web unlabeled\n"
    );
    let table = k.run(&["get", "job", "web", "--show-labels"]).await.table();
    assert_eq!(table[1].last().unwrap(), "<none>", "{table:?}");
}

/// The cells of the next line a watch prints before `deadline`.
async fn next_row(
    lines: &mut Lines<BufReader<ChildStdout>>,
    deadline: Instant,
    stderr: &Path,
) -> Vec<String> {
    let stderr = || std::fs::read_to_string(stderr).unwrap_or_default();
    match tokio::time::timeout_at(deadline, lines.next_line()).await {
        Ok(Ok(Some(line))) => cells(&line),
        Ok(Ok(None)) => panic!("kubectl get -w ended; stderr: {}", stderr()),
        Ok(Err(error)) => panic!("cannot read kubectl get -w: {error}"),
        Err(_) => panic!(
            "kubectl get -w printed nothing new within {WATCH_TIMEOUT:?}; stderr: {}",
            stderr()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_existing_then_new_jobs() {
    let Some(k) = setup("get_watch_prints_existing_then_new_jobs", embedded()).await else {
        return;
    };
    let first = k.manifest("first.yaml", &job_manifest("first", 1));
    let second = k.manifest("second.yaml", &job_manifest("second", 3));
    k.run(&["create", "-f", &first]).await.ok();

    let stderr = k.path("watch.stderr");
    let mut watch = k
        .command(&["get", "jobs", "-w"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();

    let deadline = Instant::now() + WATCH_TIMEOUT;
    let header = next_row(&mut lines, deadline, &stderr).await;
    assert_eq!(header, ["NAME", "PHASE", "TASKS", "AGE"]);
    let row = next_row(&mut lines, deadline, &stderr).await;
    assert_eq!(row[..3], ["first", "Pending", "0/1"], "{row:?}");

    // The list has been printed, so kubectl is watching from its resourceVersion.
    k.run(&["create", "-f", &second]).await.ok();
    let deadline = Instant::now() + WATCH_TIMEOUT;
    let row = next_row(&mut lines, deadline, &stderr).await;
    assert_eq!(row[..3], ["second", "Pending", "0/3"], "{row:?}");

    assert!(
        watch.try_wait().unwrap().is_none(),
        "the watch ended by itself; stderr: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    watch.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_get_is_not_found() {
    let Some(k) = setup("delete_then_get_is_not_found", embedded()).await else {
        return;
    };
    let file = k.manifest("job.yaml", &job_manifest("doomed", 1));
    k.run(&["create", "-f", &file]).await.ok();
    assert_eq!(
        k.run(&["delete", "job", "doomed"]).await.ok(),
        "job.loom.dev \"doomed\" deleted\n"
    );
    let get = k.run(&["get", "job", "doomed"]).await;
    assert_eq!(
        get.failed(),
        "Error from server (NotFound): jobs.loom.dev \"doomed\" not found\n"
    );
    assert_eq!(get.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_an_invalid_manifest_naming_each_field() {
    let Some(k) = setup(
        "create_rejects_an_invalid_manifest_naming_each_field",
        embedded(),
    )
    .await
    else {
        return;
    };
    let file = k.manifest(
        "bad.yaml",
        "apiVersion: loom.dev/v1
kind: Job
metadata:
  name: bad
spec:
  replicas: -1
  bogus: true
  template:
    spec:
      image: busybox
      command: [\"true\"]
",
    );
    let create = k.run(&["create", "-f", &file]).await;
    let stderr = create.failed();
    assert_eq!(create.stdout, "");
    assert!(
        stderr.starts_with("The Job \"bad\" is invalid"),
        "{create:#?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    for field in ["spec.replicas", "spec.bogus"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("* {field}: "))),
            "no line for {field}: {create:#?}"
        );
    }
    assert!(
        k.server
            .store
            .get("loom.dev/jobs/default/bad")
            .await
            .unwrap()
            .is_none(),
        "an invalid job was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_kinds_and_short_names() {
    let Some(k) = setup("cluster_scoped_kinds_and_short_names", embedded()).await else {
        return;
    };
    let nodes = k.run(&["get", "nodes"]).await;
    assert_eq!(nodes.ok(), "");
    // Cluster-scoped: no "in default namespace".
    assert_eq!(nodes.stderr, "No resources found\n");

    let table = k.run(&["get", "namespaces"]).await.table();
    assert_eq!(table[0], ["NAME", "STATUS", "AGE"]);
    let rows: Vec<&[String]> = table[1..].iter().map(|r| &r[..2]).collect();
    assert_eq!(rows, [["default", "Active"], ["loom-system", "Active"]]);

    for (short, scope) in [
        ("t", "No resources found in default namespace.\n"),
        ("svc", "No resources found in default namespace.\n"),
        ("no", "No resources found\n"),
    ] {
        let get = k.run(&["get", short]).await;
        assert_eq!(get.ok(), "", "{get:#?}");
        assert_eq!(get.stderr, scope, "{get:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_get_over_etcd() {
    let etcd = TestServer::etcd(apiserver::Config::default());
    let Some(k) = setup("create_and_get_over_etcd", etcd).await else {
        return;
    };
    let file = k.manifest("job.yaml", &job_manifest("on-etcd", 4));
    assert_eq!(
        k.run(&["create", "-f", &file]).await.ok(),
        "job.loom.dev/on-etcd created\n"
    );
    let job = k.run(&["get", "job", "on-etcd", "-o", "json"]).await.json();
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["name"], "on-etcd");
    assert_eq!(job["spec"]["replicas"], 4);
    let rv = job["metadata"]["resourceVersion"].as_str().unwrap();
    let stored = k
        .server
        .store
        .get("loom.dev/jobs/default/on-etcd")
        .await
        .unwrap()
        .expect("the job is in etcd");
    assert_eq!(rv, stored.mod_revision.to_string());
}
