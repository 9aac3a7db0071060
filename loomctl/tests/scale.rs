//! `loomctl scale` as a process against a real API server: a Service's
//! replicas through its scale subresource, in any namespace, with the
//! --current-replicas and --resource-version preconditions, the server's
//! bounds, and kinds that cannot be scaled.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use serde_json::{Value, json};

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

fn services(namespace: &str) -> String {
    format!("/apis/loom.dev/v1/namespaces/{namespace}/services")
}

async fn create_service(api: &JsonClient, namespace: &str, name: &str, replicas: i32) {
    let (code, body) = api
        .post(
            &services(namespace),
            &json!({"apiVersion": "loom.dev/v1", "kind": "Service",
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "template": {"spec": {"image": "nginx"}}}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
}

async fn replicas(api: &JsonClient, namespace: &str, name: &str) -> Value {
    let (code, body) = api.get(&format!("{}/{name}", services(namespace))).await;
    assert_eq!(code, 200, "{body}");
    body["spec"]["replicas"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_a_service_with_and_without_preconditions() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let api = JsonClient::new(&server);
    create_service(&api, "default", "web", 2).await;

    let run = loomctl(&server, home, &["scale", "service/web", "--replicas", "5"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "service.loom.dev/web scaled\n");
    assert_eq!(replicas(&api, "default", "web").await, 5);
    let run = loomctl(&server, home, &["scale", "svc", "web", "--replicas=0"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(replicas(&api, "default", "web").await, 0);

    // Preconditions: the replicas there are, and the resourceVersion.
    let run = loomctl(
        &server,
        home,
        &[
            "scale",
            "service/web",
            "--current-replicas",
            "0",
            "--replicas",
            "3",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(replicas(&api, "default", "web").await, 3);
    let run = loomctl(
        &server,
        home,
        &[
            "scale",
            "service/web",
            "--current-replicas",
            "7",
            "--replicas",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("expected 7 replicas, it has 3"),
        "{}",
        run.stderr
    );
    let (_, svc) = api.get(&format!("{}/web", services("default"))).await;
    let rv = svc["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = loomctl(
        &server,
        home,
        &[
            "scale",
            "service/web",
            "--resource-version",
            "1",
            "--replicas",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("expected resource version 1, it is at {rv}")),
        "{}",
        run.stderr
    );
    assert_eq!(replicas(&api, "default", "web").await, 3);
    let run = loomctl(
        &server,
        home,
        &[
            "scale",
            "service/web",
            "--resource-version",
            &rv,
            "--replicas",
            "4",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(replicas(&api, "default", "web").await, 4);

    // The server's bounds, named by field.
    for (wanted, rule) in [
        ("-1", "must be greater than or equal to 0"),
        ("100001", "must be less than or equal to 100000"),
    ] {
        let run = loomctl(
            &server,
            home,
            &["scale", "service/web", "--replicas", wanted],
        )
        .await;
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(
            run.stderr.contains("spec.replicas") && run.stderr.contains(rule),
            "{wanted}: {}",
            run.stderr
        );
    }
    assert_eq!(replicas(&api, "default", "web").await, 4);

    // Another namespace.
    let (code, body) = api
        .post(
            "/apis/loom.dev/v1/namespaces",
            &json!({"apiVersion": "loom.dev/v1", "kind": "Namespace", "metadata": {"name": "other"}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    create_service(&api, "other", "web", 1).await;
    let run = loomctl(
        &server,
        home,
        &["-n", "other", "scale", "service/web", "--replicas", "6"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(replicas(&api, "other", "web").await, 6);
    assert_eq!(replicas(&api, "default", "web").await, 4);

    // What cannot be scaled, or is not there.
    let run = loomctl(&server, home, &["scale", "job/train", "--replicas", "2"]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("job.loom.dev cannot be scaled: the server serves no jobs/scale"),
        "{}",
        run.stderr
    );
    let run = loomctl(&server, home, &["scale", "service/nope", "--replicas", "2"]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("\"nope\" not found"), "{}", run.stderr);
    let run = loomctl(&server, home, &["scale", "service/web"]).await;
    assert_eq!(run.code, 2, "--replicas is required: {}", run.stderr);
}
