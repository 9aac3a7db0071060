//! loomctl as a process against a real API server: apply twice, prune, output
//! formats, watch, bad manifests, delete.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use loom_testing::TestServer;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn loomctl(server: &TestServer, home: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .arg("--server")
        .arg(&server.url)
        .arg("--kubeconfig")
        .arg(server.kubeconfig().unwrap())
        .args(args)
        .env("HOME", home)
        .env_remove("LOOMCONFIG")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn job(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: loom.dev/v1\nkind: Job\nmetadata:\n  name: {name}\n  labels: {{app: demo}}\nspec:\n  replicas: {replicas}\n  template:\n    spec:\n      image: busybox\n"
    )
}

async fn setup() -> (TestServer, tempfile::TempDir) {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests/more")).unwrap();
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_a_directory_twice_then_change_and_prune() {
    let (server, dir) = setup().await;
    let manifests = dir.path().join("manifests");
    write(
        &manifests,
        "a.yaml",
        &format!("{}---\n{}", job("a", 1), job("b", 2)),
    );
    write(&manifests.join("more"), "c.yaml", &job("c", 1));
    let m = manifests.to_str().unwrap();
    let first = loomctl(&server, dir.path(), &["apply", "-R", "-f", m]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.stdout,
        "job.loom.dev/a created\njob.loom.dev/b created\njob.loom.dev/c created\n"
    );
    let second = loomctl(&server, dir.path(), &["apply", "-R", "-f", m]).await;
    assert_eq!(
        second.stdout,
        "job.loom.dev/a unchanged\njob.loom.dev/b unchanged\njob.loom.dev/c unchanged\n"
    );
    // Without -R the subdirectory is not read.
    let flat = loomctl(&server, dir.path(), &["apply", "-f", m]).await;
    assert_eq!(flat.stdout.lines().count(), 2);
    // Change one, drop one, prune by label.
    write(&manifests, "a.yaml", &job("a", 5));
    let pruned = loomctl(
        &server,
        dir.path(),
        &["apply", "-R", "-f", m, "--prune", "-l", "app=demo"],
    )
    .await;
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert_eq!(
        pruned.stdout,
        "job.loom.dev/a configured\njob.loom.dev/c unchanged\njob.loom.dev/b pruned\n"
    );
    let names = loomctl(&server, dir.path(), &["get", "jobs", "-o", "name"]).await;
    assert_eq!(names.stdout, "job.loom.dev/a\njob.loom.dev/c\n");
    // A server-side dry run changes nothing.
    write(&manifests, "a.yaml", &job("a", 9));
    let dry = loomctl(
        &server,
        dir.path(),
        &[
            "apply",
            "-f",
            manifests.join("a.yaml").to_str().unwrap(),
            "--dry-run=server",
        ],
    )
    .await;
    assert_eq!(dry.stdout, "job.loom.dev/a configured (server dry run)\n");
    let replicas = loomctl(
        &server,
        dir.path(),
        &["get", "job", "a", "-o", "jsonpath={.spec.replicas}"],
    )
    .await;
    assert_eq!(replicas.stdout.trim(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_and_tables() {
    let (server, dir) = setup().await;
    write(
        dir.path(),
        "jobs.yaml",
        &format!("{}---\n{}", job("alpha", 2), job("beta", 3)),
    );
    let applied = loomctl(
        &server,
        dir.path(),
        &[
            "apply",
            "-f",
            dir.path().join("jobs.yaml").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(applied.code, 0);
    let table = loomctl(&server, dir.path(), &["get", "jobs"]).await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "TASKS", "AGE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..3], ["alpha", "Pending", "0/2"]);
    let wide = loomctl(&server, dir.path(), &["get", "jobs", "-o", "wide"]).await;
    assert!(wide.stdout.lines().next().unwrap().contains("REASON"));
    let all = loomctl(&server, dir.path(), &["get", "jobs", "-A"]).await;
    assert!(all.stdout.starts_with("NAMESPACE"), "{}", all.stdout);
    let yaml = loomctl(&server, dir.path(), &["get", "job", "alpha", "-o", "yaml"]).await;
    assert!(
        yaml.stdout.contains("kind: Job") && yaml.stdout.contains("replicas: 2"),
        "{}",
        yaml.stdout
    );
    assert!(!yaml.stdout.contains("managedFields"));
    let json = loomctl(&server, dir.path(), &["get", "jobs", "-o", "json"]).await;
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let path = loomctl(
        &server,
        dir.path(),
        &["get", "jobs", "-o", "jsonpath={.items[*].metadata.name}"],
    )
    .await;
    assert_eq!(path.stdout.trim(), "alpha beta");
    let labelled = loomctl(
        &server,
        dir.path(),
        &["get", "jobs", "-l", "app=demo", "-o", "name"],
    )
    .await;
    assert_eq!(labelled.stdout.lines().count(), 2);
    let missing = loomctl(&server, dir.path(), &["get", "job", "nope"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("NotFound") && missing.stderr.contains("\"nope\" not found"),
        "{}",
        missing.stderr
    );
    let unknown = loomctl(&server, dir.path(), &["get", "widgets"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .contains("does not serve a kind called \"widgets\""),
        "{}",
        unknown.stderr
    );
    let format = loomctl(&server, dir.path(), &["get", "jobs", "-o", "xml"]).await;
    assert_eq!(format.code, 1);
    assert!(
        format.stderr.contains("unknown output format"),
        "{}",
        format.stderr
    );
    for short in ["t", "job", "svc", "no", "ns"] {
        let run = loomctl(&server, dir.path(), &["get", short]).await;
        assert_eq!(run.code, 0, "{short}: {}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_name_the_file_document_and_field() {
    let (server, dir) = setup().await;
    write(
        dir.path(),
        "jobs.yaml",
        &format!(
            "{}---\n{}---\napiVersion: loom.dev/v1\nkind: Job\nmetadata: {{}}\n---\napiVersion: loom.dev/v1\nkind: Gizmo\nmetadata: {{name: g}}\n",
            job("ok", 1),
            job("bad", 1).replace("replicas: 1", "replicas: -1\n  bogus: true")
        ),
    );
    let run = loomctl(
        &server,
        dir.path(),
        &[
            "apply",
            "-f",
            dir.path().join("jobs.yaml").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    let file = dir.path().join("jobs.yaml").display().to_string();
    assert_eq!(run.stdout, "job.loom.dev/ok created\n");
    for expected in [
        format!("error: {file}: document 2: spec.bogus: Forbidden: field not declared in schema"),
        format!("error: {file}: document 2: spec.replicas: -1: must be greater than or equal to 0"),
        format!("error: {file}: document 3: metadata.name: required (apply needs a name)"),
        format!("error: {file}: document 4: the server does not serve Gizmo in loom.dev/v1"),
    ] {
        assert!(
            run.stderr.contains(&expected),
            "missing {expected:?} in:\n{}",
            run.stderr
        );
    }
    write(dir.path(), "broken.yaml", "kind: Job\nmetadata: [x\n");
    let run = loomctl(
        &server,
        dir.path(),
        &[
            "apply",
            "-f",
            dir.path().join("broken.yaml").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("broken.yaml") && run.stderr.contains("line"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"));
    let missing = loomctl(&server, dir.path(), &["apply", "-f", "/nonexistent.yaml"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("cannot read /nonexistent.yaml"),
        "{}",
        missing.stderr
    );
    let usage = loomctl(&server, dir.path(), &["apply"]).await;
    assert_eq!(usage.code, 2, "a wrong command line exits 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_and_delete_removes() {
    let (server, dir) = setup().await;
    write(dir.path(), "a.yaml", &job("a", 1));
    loomctl(
        &server,
        dir.path(),
        &["apply", "-f", dir.path().join("a.yaml").to_str().unwrap()],
    )
    .await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .args(["--server", &server.url, "get", "jobs", "-w"])
        .arg("--kubeconfig")
        .arg(server.kubeconfig().unwrap())
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let next = async |lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>| {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert!(next(&mut lines).await.starts_with("NAME"));
    assert!(next(&mut lines).await.starts_with("a "));
    write(dir.path(), "b.yaml", &job("b", 1));
    loomctl(
        &server,
        dir.path(),
        &["apply", "-f", dir.path().join("b.yaml").to_str().unwrap()],
    )
    .await;
    assert!(next(&mut lines).await.starts_with("b "));
    let deleted = loomctl(&server, dir.path(), &["delete", "job", "a", "--wait"]).await;
    assert_eq!(deleted.stdout, "job.loom.dev \"a\" deleted\n");
    assert!(
        next(&mut lines).await.starts_with("a "),
        "the delete shows as a row"
    );
    child.kill().await.unwrap();
    let by_file = loomctl(
        &server,
        dir.path(),
        &["delete", "-f", dir.path().join("b.yaml").to_str().unwrap()],
    )
    .await;
    assert_eq!(by_file.stdout, "job.loom.dev \"b\" deleted\n");
    let gone = loomctl(&server, dir.path(), &["get", "jobs"]).await;
    assert!(
        gone.stderr.contains("No resources found"),
        "{}",
        gone.stderr
    );
}

/// Runs a program to completion with `HOME` (kubectl's cache) and `LOOMCONFIG` set.
async fn run_with_config(program: &Path, config: &Path, home: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("LOOMCONFIG", config)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `kubectl` on `PATH`, if there is one.
fn kubectl() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("kubectl"))
        .find(|path| path.is_file())
}

/// Loads the kubeconfig given as argv[1] with the Python kubernetes client
/// and lists jobs; exits 3 if the client is not installed.
const PYTHON_LIST_JOBS: &str = r#"
import sys
try:
    from kubernetes import client, config
except ImportError:
    sys.exit(3)
config.load_kube_config(config_file=sys.argv[1])
jobs = client.CustomObjectsApi().list_namespaced_custom_object("loom.dev", "v1", "default", "jobs")
print(jobs["kind"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_contexts_and_completion() {
    let (server, dir) = setup().await;
    let config = dir.path().join("config");
    let loomctl = Path::new(env!("CARGO_BIN_EXE_loomctl"));
    let run = async |args: &[&str]| {
        let run = run_with_config(loomctl, &config, dir.path(), args).await;
        assert_eq!(run.code, 0, "loomctl {args:?}: {}", run.stderr);
        run.stdout
    };
    let files = &server.files;
    let (ca, cert, key) = (
        files.ca.to_str().unwrap(),
        files.admin_cert.to_str().unwrap(),
        files.admin_key.to_str().unwrap(),
    );
    let created = run(&[
        "config",
        "set-context",
        "test",
        "--server",
        &server.url,
        "--namespace",
        api_types::SYSTEM_NAMESPACE,
    ])
    .await;
    assert_eq!(created, "Context \"test\" created.\n");
    run(&[
        "config",
        "set-cluster",
        "test",
        "--certificate-authority",
        ca,
        "--embed-certs",
    ])
    .await;
    run(&[
        "config",
        "set-credentials",
        "admin",
        "--client-certificate",
        cert,
        "--client-key",
        key,
        "--embed-certs",
    ])
    .await;
    let modified = run(&["config", "set-context", "test", "--user", "admin"]).await;
    assert_eq!(modified, "Context \"test\" modified.\n");
    assert_eq!(run(&["config", "current-context"]).await.trim(), "test");
    // The file is owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The context's server, CA, certificate and namespace are used without flags.
    let version = run(&["version"]).await;
    assert!(version.contains("Server Version: v1.32"), "{version}");
    run(&["get", "leases"]).await;
    let script = run(&["completion", "bash"]).await;
    assert!(script.contains("loomctl"));
    // view hides what kubectl hides; --raw shows it.
    let key_data = base64_of(&std::fs::read_to_string(&files.admin_key).unwrap());
    let view = run(&["config", "view"]).await;
    assert!(view.contains("client-key-data: DATA+OMITTED"), "{view}");
    assert!(
        view.contains("certificate-authority-data: DATA+OMITTED"),
        "{view}"
    );
    assert!(!view.contains(&key_data), "{view}");
    let raw = run(&["config", "view", "--raw"]).await;
    assert!(raw.contains(&key_data), "{raw}");
    let contexts = run(&["config", "get-contexts"]).await;
    let rows: Vec<Vec<&str>> = contexts
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"],
            vec!["*", "test", "test", "admin", api_types::SYSTEM_NAMESPACE],
        ]
    );
    // Real kubectl reads the same file: its raw view, its current context, a list.
    if let Some(kubectl) = kubectl() {
        let file = config.to_str().unwrap();
        let raw = run_with_config(
            &kubectl,
            &config,
            dir.path(),
            &[
                "config",
                "view",
                "--raw",
                "--kubeconfig",
                file,
                "-o",
                "json",
            ],
        )
        .await;
        assert_eq!(raw.code, 0, "{}", raw.stderr);
        let raw: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
        assert_eq!(
            raw["users"][0]["user"]["client-key-data"],
            serde_json::json!(key_data)
        );
        assert_eq!(
            raw["clusters"][0]["cluster"]["server"],
            serde_json::json!(server.url)
        );
        let current = run_with_config(
            &kubectl,
            &config,
            dir.path(),
            &["--kubeconfig", file, "config", "current-context"],
        )
        .await;
        assert_eq!(
            (current.code, current.stdout.trim()),
            (0, "test"),
            "{}",
            current.stderr
        );
        let jobs = run_with_config(
            &kubectl,
            &config,
            dir.path(),
            &["--kubeconfig", file, "get", "jobs.loom.dev", "-o", "name"],
        )
        .await;
        assert_eq!(
            jobs.code, 0,
            "kubectl get with loomctl's config: {}",
            jobs.stderr
        );
    } else {
        println!("kubectl is absent (not on PATH): its part is skipped");
    }
    // So does the Python kubernetes client, when it is installed.
    let python = tokio::process::Command::new("python3")
        .args(["-c", PYTHON_LIST_JOBS, config.to_str().unwrap()])
        .output()
        .await;
    match python {
        Ok(out) if out.status.code() == Some(3) => {
            println!("the Python kubernetes client is absent: its part is skipped");
        }
        Ok(out) => assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
            (Some(0), "JobList"),
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => println!("python3 is absent: the Python client's part is skipped"),
    }
    let nope = run_with_config(
        loomctl,
        &config,
        dir.path(),
        &["config", "use-context", "nope"],
    )
    .await;
    assert_eq!(nope.code, 1);
    assert!(nope.stderr.contains("\"nope\""), "{}", nope.stderr);
    // A second context; deleting the current one leaves the other.
    run(&["config", "set-context", "other", "--cluster", "test"]).await;
    assert_eq!(
        run(&["config", "use-context", "other"]).await,
        "Switched to context \"other\".\n"
    );
    run(&["config", "delete-context", "test"]).await;
    assert_eq!(
        run(&["config", "get-contexts", "-o", "name"]).await,
        "other\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_file_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let loomctl = Path::new(env!("CARGO_BIN_EXE_loomctl"));
    // Loom's format before TLS.
    std::fs::write(
        &config,
        "current-context: a\ncontexts:\n- name: a\n  server: http://127.0.0.1:1\n",
    )
    .unwrap();
    let old = run_with_config(loomctl, &config, dir.path(), &["get", "jobs"]).await;
    assert_eq!(old.code, 1);
    assert!(
        old.stderr.contains(config.to_str().unwrap()),
        "{}",
        old.stderr
    );
    assert!(old.stderr.contains("loom up"), "{}", old.stderr);
    assert!(
        old.stderr.contains("loomctl config set-cluster"),
        "{}",
        old.stderr
    );
    // Converting it as the message says.
    let set = run_with_config(
        loomctl,
        &config,
        dir.path(),
        &[
            "config",
            "set-cluster",
            "a",
            "--server",
            "http://127.0.0.1:2",
        ],
    )
    .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    let view = run_with_config(loomctl, &config, dir.path(), &["config", "view"]).await;
    assert!(
        view.stdout.contains("server: http://127.0.0.1:2"),
        "{}",
        view.stdout
    );
    assert!(
        view.stdout.contains("current-context: a"),
        "{}",
        view.stdout
    );
    // A key that is not base64.
    std::fs::write(&config, "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: a\n  cluster: {server: 'http://127.0.0.1:1'}\nusers:\n- name: admin\n  user: {client-key-data: '%%%', client-certificate-data: '%%%'}\ncontexts:\n- name: a\n  context: {cluster: a, user: admin}\n").unwrap();
    let bad = run_with_config(loomctl, &config, dir.path(), &["get", "jobs"]).await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains(&format!(
            "{}: users[admin].client-certificate-data: not base64",
            config.display()
        )),
        "{}",
        bad.stderr
    );
    // A CA file that is not PEM is refused before anything is written.
    std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
    let before = std::fs::read_to_string(&config).unwrap();
    let refused = run_with_config(
        loomctl,
        &config,
        dir.path(),
        &[
            "config",
            "set-cluster",
            "a",
            "--certificate-authority",
            dir.path().join("ca.crt").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("--certificate-authority"),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_wait_kill_and_diff() {
    let (server, dir) = setup().await;
    let file = dir.path().join("a.yaml");
    write(dir.path(), "a.yaml", &job("a", 1));
    let f = file.to_str().unwrap();
    loomctl(&server, dir.path(), &["apply", "-f", f]).await;
    let described = loomctl(&server, dir.path(), &["describe", "job", "a"]).await;
    assert_eq!(described.code, 0, "{}", described.stderr);
    for line in [
        "Name:        a",
        "Namespace:   default",
        "Labels:      app=demo",
        "  replicas: 1",
        "Status:",
        "  phase: Pending",
        "Events:",
    ] {
        assert!(
            described.stdout.contains(line),
            "{line:?} in:\n{}",
            described.stdout
        );
    }
    let met = loomctl(
        &server,
        dir.path(),
        &["wait", "job/a", "--for=phase=Pending", "--timeout", "5"],
    )
    .await;
    assert_eq!(
        (met.code, met.stdout.as_str()),
        (0, "job.loom.dev/a condition met\n")
    );
    let timed_out = loomctl(
        &server,
        dir.path(),
        &["wait", "job/a", "--for=phase=Completed", "--timeout", "1"],
    )
    .await;
    assert_eq!(timed_out.code, 1);
    assert!(
        timed_out.stderr.contains("timed out after 1s"),
        "{}",
        timed_out.stderr
    );
    let killed = loomctl(&server, dir.path(), &["kill", "job/a"]).await;
    assert_eq!(killed.stdout, "job.loom.dev/a killed\n");
    let flag = loomctl(
        &server,
        dir.path(),
        &["get", "job", "a", "-o", "jsonpath={.spec.killed}"],
    )
    .await;
    assert_eq!(flag.stdout.trim(), "true");
    // diff: nothing for the applied file… (killed is not in it: apply keeps other managers' fields)
    let same = loomctl(&server, dir.path(), &["diff", "-f", f]).await;
    assert_eq!((same.code, same.stdout.as_str()), (0, ""));
    // …and the changed line for an edited one, without changing anything.
    write(dir.path(), "a.yaml", &job("a", 3));
    let changed = loomctl(&server, dir.path(), &["diff", "-f", f]).await;
    assert_eq!(changed.code, 1);
    assert!(
        changed.stdout.contains("-  replicas: 1\n+  replicas: 3"),
        "{}",
        changed.stdout
    );
    let still = loomctl(
        &server,
        dir.path(),
        &["get", "job", "a", "-o", "jsonpath={.spec.replicas}"],
    )
    .await;
    assert_eq!(still.stdout.trim(), "1");
    let gone = loomctl(
        &server,
        dir.path(),
        &["wait", "job", "a", "--for=delete", "--timeout", "1"],
    )
    .await;
    assert_eq!(gone.code, 1);
    // A wait sees the change it waits for as it happens (the delete comes a moment
    // after the wait starts; it would pass as well if it came first).
    let (gone, deleted) = tokio::join!(
        loomctl(
            &server,
            dir.path(),
            &["wait", "job/a", "--for=delete", "--timeout", "60s"],
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            loomctl(&server, dir.path(), &["delete", "job", "a"]).await
        }
    );
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(
        (gone.code, gone.stdout.as_str()),
        (0, "job.loom.dev/a condition met\n"),
        "{}",
        gone.stderr
    );
}

/// `--timeout` takes kubectl's durations (`60s`, `2m`, `1m30s`); a bare number is
/// seconds; anything else is a usage error naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_take_kubectl_durations() {
    let (server, dir) = setup().await;
    write(dir.path(), "a.yaml", &job("a", 1));
    let f = dir.path().join("a.yaml");
    loomctl(&server, dir.path(), &["apply", "-f", f.to_str().unwrap()]).await;
    for timeout in ["60s", "2m", "1m30s", "1h", "60"] {
        let met = loomctl(
            &server,
            dir.path(),
            &["wait", "job/a", "--for=phase=Pending", "--timeout", timeout],
        )
        .await;
        assert_eq!(
            (met.code, met.stdout.as_str()),
            (0, "job.loom.dev/a condition met\n"),
            "--timeout {timeout}: {}",
            met.stderr
        );
    }
    let timed_out = loomctl(
        &server,
        dir.path(),
        &["wait", "job/a", "--for=phase=Completed", "--timeout=1500ms"],
    )
    .await;
    assert_eq!(timed_out.code, 1);
    assert!(
        timed_out.stderr.contains("timed out after 1.5s"),
        "{}",
        timed_out.stderr
    );
    for (args, bad) in [
        (
            vec!["wait", "job/a", "--for=delete", "--timeout", "60x"],
            "60x",
        ),
        (
            vec!["rollout", "status", "service/web", "--timeout", "5 m"],
            "5 m",
        ),
        (vec!["drain", "n1", "--timeout=-1s"], "-1s"),
    ] {
        let run = loomctl(&server, dir.path(), &args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("--timeout") && run.stderr.contains(bad),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("like 60s, 2m, 1h or 1m30s"),
            "{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_nodes_taint_and_drain() {
    let (server, dir) = setup().await;
    let explained = loomctl(&server, dir.path(), &["explain", "job.spec.dependsOn"]).await;
    assert_eq!(explained.code, 0, "{}", explained.stderr);
    assert!(
        explained
            .stdout
            .contains("FIELD:    spec.dependsOn <[]string>"),
        "{}",
        explained.stdout
    );
    let resources = loomctl(&server, dir.path(), &["explain", "task.spec.resources"]).await;
    assert!(
        resources.stdout.contains("cpu\t<int-or-string>"),
        "{}",
        resources.stdout
    );
    let missing = loomctl(&server, dir.path(), &["explain", "job.spec.nope"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("Job.spec has no field \"nope\""),
        "{}",
        missing.stderr
    );
    let none = loomctl(&server, dir.path(), &["nodes"]).await;
    assert!(
        none.stderr
            .contains("loom nodelet --server URL --name NAME")
    );
    write(
        dir.path(),
        "node.yaml",
        "apiVersion: loom.dev/v1\nkind: Node\nmetadata:\n  name: n1\n",
    );
    loomctl(
        &server,
        dir.path(),
        &[
            "apply",
            "-f",
            dir.path().join("node.yaml").to_str().unwrap(),
        ],
    )
    .await;
    let tainted = loomctl(&server, dir.path(), &["taint", "n1", "gpu=true:NoSchedule"]).await;
    assert_eq!(tainted.code, 0, "{}", tainted.stderr);
    let taints = loomctl(
        &server,
        dir.path(),
        &["get", "node", "n1", "-o", "jsonpath={.spec.taints[*].key}"],
    )
    .await;
    assert_eq!(taints.stdout.trim(), "gpu");
    loomctl(&server, dir.path(), &["taint", "n1", "gpu-"]).await;
    let taints = loomctl(
        &server,
        dir.path(),
        &["get", "node", "n1", "-o", "jsonpath={.spec.taints[*].key}"],
    )
    .await;
    assert_eq!(taints.stdout.trim(), "");
    let bad = loomctl(&server, dir.path(), &["taint", "n1", "gpu"]).await;
    assert_eq!(bad.code, 1);
    write(
        dir.path(),
        "task.yaml",
        "apiVersion: loom.dev/v1\nkind: Task\nmetadata:\n  name: t1\nspec:\n  image: busybox\n  nodeName: n1\n",
    );
    loomctl(
        &server,
        dir.path(),
        &[
            "apply",
            "-f",
            dir.path().join("task.yaml").to_str().unwrap(),
        ],
    )
    .await;
    let nodes = loomctl(&server, dir.path(), &["nodes"]).await;
    let row: Vec<&str> = nodes
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[row.len() - 1]),
        ("n1", "NotReady", "1"),
        "{}",
        nodes.stdout
    );
    let drained = loomctl(&server, dir.path(), &["drain", "n1", "--timeout", "10"]).await;
    assert_eq!(drained.code, 0, "{}", drained.stderr);
    assert_eq!(
        drained.stdout,
        "node.loom.dev/n1 cordoned\ntask.loom.dev/t1 evicted\nnode.loom.dev/n1 drained\n"
    );
    let nodes = loomctl(&server, dir.path(), &["nodes"]).await;
    assert!(
        nodes.stdout.contains("NotReady,SchedulingDisabled"),
        "{}",
        nodes.stdout
    );
}

/// The tables exactly as a user sees them, ages aside (`LOOM_UPDATE_GOLDEN=1` rewrites the files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_tables() {
    let (server, dir) = setup().await;
    let manifests = format!(
        "{}---\n{}---\napiVersion: loom.dev/v1\nkind: Task\nmetadata:\n  name: t-0\nspec:\n  image: busybox\n  nodeName: n1\n---\napiVersion: loom.dev/v1\nkind: Node\nmetadata:\n  name: n1\nspec:\n  unschedulable: true\n---\napiVersion: loom.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  clusterIP: 10.96.0.50\n  ports: [{{name: http, port: 80}}, {{name: admin, port: 9000}}]\n  template:\n    spec:\n      image: busybox\n",
        job("alpha", 2),
        job("beta-with-a-longer-name", 10)
    );
    write(dir.path(), "all.yaml", &manifests);
    let applied = loomctl(
        &server,
        dir.path(),
        &["apply", "-f", dir.path().join("all.yaml").to_str().unwrap()],
    )
    .await;
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for (file, args) in [
        ("get-jobs.txt", vec!["get", "jobs"]),
        ("get-jobs-wide.txt", vec!["get", "jobs", "-o", "wide"]),
        ("get-tasks.txt", vec!["get", "tasks"]),
        ("get-services.txt", vec!["get", "svc"]),
        ("get-jobs-all-namespaces.txt", vec!["get", "jobs", "-A"]),
        ("nodes.txt", vec!["nodes"]),
    ] {
        let run = loomctl(&server, dir.path(), &args).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        // Ages depend on the clock: `0s` or `1s` become `<age>`.
        let shown: String = run
            .stdout
            .lines()
            .map(|line| {
                let trimmed = line.trim_end();
                match trimmed.rsplit_once(' ') {
                    Some((head, age))
                        if age.ends_with('s')
                            && age[..age.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        format!("{head} <age>\n")
                    }
                    _ => format!("{trimmed}\n"),
                }
            })
            .collect();
        let path = golden.join(file);
        if std::env::var_os("LOOM_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &shown).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(shown, expected, "{args:?} differs from {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_task() {
    let (server, dir) = setup().await;
    let app = axum::Router::new().route(
        "/logs/{namespace}/{task}",
        axum::routing::get(|| async { "hello from the task\nsecond line\n" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nodelet = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let node = format!(
        r#"{{"apiVersion":"loom.dev/v1","kind":"Node","metadata":{{"name":"n1"}},"status":{{"nodeletEndpoint":"{nodelet}"}}}}"#
    );
    server
        .client()
        .request_bytes(
            client::client::Method::POST,
            "/apis/loom.dev/v1/nodes",
            Some(client::client::Body {
                content_type: "application/json",
                bytes: node.into(),
            }),
        )
        .await
        .unwrap();
    write(
        dir.path(),
        "t.yaml",
        "apiVersion: loom.dev/v1\nkind: Task\nmetadata:\n  name: t1\nspec:\n  image: busybox\n  nodeName: n1\n---\napiVersion: loom.dev/v1\nkind: Task\nmetadata:\n  name: t2\nspec:\n  image: busybox\n",
    );
    loomctl(
        &server,
        dir.path(),
        &["apply", "-f", dir.path().join("t.yaml").to_str().unwrap()],
    )
    .await;
    let logs = loomctl(&server, dir.path(), &["logs", "t1"]).await;
    assert_eq!(
        (logs.code, logs.stdout.as_str()),
        (0, "hello from the task\nsecond line\n"),
        "{}",
        logs.stderr
    );
    let unbound = loomctl(&server, dir.path(), &["logs", "task/t2"]).await;
    assert_eq!(unbound.code, 1);
    assert!(
        unbound.stderr.contains("not bound to a node"),
        "{}",
        unbound.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_tokens_are_redacted_and_minify_keeps_the_current_context() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let loomctl = Path::new(env!("CARGO_BIN_EXE_loomctl"));
    let run = async |args: &[&str]| {
        let run = run_with_config(loomctl, &config, dir.path(), args).await;
        assert_eq!(run.code, 0, "loomctl {args:?}: {}", run.stderr);
        run.stdout
    };
    run(&["config", "set-cluster", "a", "--server", "http://a:1"]).await;
    run(&["config", "set-cluster", "b", "--server", "http://b:2"]).await;
    run(&["config", "set-credentials", "bob", "--token", "t0ps3cret"]).await;
    run(&[
        "config",
        "set-context",
        "a",
        "--cluster",
        "a",
        "--user",
        "bob",
    ])
    .await;
    run(&["config", "set-context", "b", "--cluster", "b"]).await;
    let view = run(&["config", "view"]).await;
    assert!(view.contains("token: REDACTED"), "{view}");
    assert!(!view.contains("t0ps3cret"), "{view}");
    assert!(
        run(&["config", "view", "--raw"])
            .await
            .contains("token: t0ps3cret")
    );
    // The first context set became current; --minify keeps only what it uses.
    let minified = run(&["config", "view", "--minify"]).await;
    assert!(minified.contains("server: http://a:1"), "{minified}");
    assert!(!minified.contains("http://b:2"), "{minified}");
    assert!(minified.contains("name: bob"), "{minified}");
    run(&["config", "use-context", "b"]).await;
    let minified = run(&["config", "view", "--minify"]).await;
    assert!(!minified.contains("bob"), "{minified}");
    // --context picks another context for one command.
    let other = run_with_config(
        loomctl,
        &config,
        dir.path(),
        &["--context", "nope", "get", "jobs"],
    )
    .await;
    assert_eq!(other.code, 1);
    assert!(
        other.stderr.contains("no context named \"nope\""),
        "{}",
        other.stderr
    );
}
