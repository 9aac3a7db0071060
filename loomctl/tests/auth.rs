//! `loomctl auth whoami` and `auth can-i` against the real API server (can-i
//! beside kubectl's answers), and `can-i`'s requests in detail against a fake
//! server that records each SelfSubjectAccessReview.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use loom_testing::TestServer;
use serde_json::{Value, json};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn loomctl(args: &[&str], home: &std::path::Path) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .args(args)
        .env("HOME", home)
        .env_remove("LOOMCONFIG")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_certificate_s_user_and_groups() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig().unwrap();
    let config = kubeconfig.to_str().unwrap();
    let run = loomctl(&["--kubeconfig", config, "auth", "whoami"], home.path()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["ATTRIBUTE", "VALUE"], "{}", run.stdout);
    assert_eq!(rows[1], ["Username", "loom-admin"], "{}", run.stdout);
    let groups = rows.iter().find(|r| r[0] == "Groups").unwrap();
    assert!(
        groups.join(" ").contains("system:masters"),
        "{}",
        run.stdout
    );
    assert!(
        groups.join(" ").contains("system:authenticated"),
        "{}",
        run.stdout
    );
    let json = loomctl(
        &["--kubeconfig", config, "auth", "whoami", "-o", "json"],
        home.path(),
    )
    .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let review: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(review["kind"], "SelfSubjectReview");
    assert_eq!(review["status"]["userInfo"]["username"], "loom-admin");
}

/// Every SelfSubjectAccessReview the fake server got, with its Authorization header.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A fake API server: discovery of `tasks` (namespaced, short name `t`) and
/// `nodes` (cluster-scoped) in loom.dev/v1, and SelfSubjectAccessReview
/// allowing only `get tasks` and `get /healthz`. `refuse` makes it answer
/// reviews with 403.
async fn fake(refuse: bool) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let review = move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
        let record = record.clone();
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            record.lock().unwrap().push((auth, body.clone()));
            if refuse {
                return (
                    StatusCode::FORBIDDEN,
                    axum::Json(json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Forbidden", "code": 403,
                        "message": "selfsubjectaccessreviews.authorization.k8s.io is forbidden: User \"x\" cannot create resource \"selfsubjectaccessreviews\"",
                    })),
                );
            }
            let spec = &body["spec"];
            let allowed = (spec["resourceAttributes"]["verb"] == "get"
                && spec["resourceAttributes"]["resource"] == "tasks")
                || (spec["nonResourceAttributes"]["path"] == "/healthz"
                    && spec["nonResourceAttributes"]["verb"] == "get");
            let mut answer = body.clone();
            answer["status"] = if allowed {
                json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"x\""})
            } else {
                json!({"allowed": false, "reason": "no RBAC policy matched"})
            };
            (StatusCode::CREATED, axum::Json(answer))
        }
    };
    let app = axum::Router::new()
        .route(
            "/apis",
            axum::routing::get(|| async {
                axum::Json(json!({
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [{"name": "loom.dev", "versions": [{"groupVersion": "loom.dev/v1", "version": "v1"}]}],
                }))
            }),
        )
        .route(
            "/apis/loom.dev/v1",
            axum::routing::get(|| async {
                axum::Json(json!({
                    "kind": "APIResourceList", "groupVersion": "loom.dev/v1",
                    "resources": [
                        {"name": "tasks", "singularName": "task", "namespaced": true, "kind": "Task", "shortNames": ["t"], "verbs": ["get"]},
                        {"name": "tasks/status", "singularName": "", "namespaced": true, "kind": "Task", "verbs": ["get"]},
                        {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node", "verbs": ["get"]},
                    ],
                }))
            }),
        )
        .route(
            "/api/v1",
            axum::routing::get(|| async {
                axum::Json(json!({
                    "kind": "APIResourceList", "groupVersion": "v1",
                    "resources": [
                        {"name": "serviceaccounts", "singularName": "serviceaccount", "namespaced": true, "kind": "ServiceAccount", "shortNames": ["sa"], "verbs": ["get"]},
                        {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "shortNames": ["ns"], "verbs": ["get"]},
                    ],
                }))
            }),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            axum::routing::post(review),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_asks_with_kubernetes_attributes_and_answers_with_the_exit_code() {
    let (url, seen) = fake(false).await;
    let home = tempfile::tempdir().unwrap();
    let can_i = async |args: &[&str]| {
        let mut all = vec!["--server", &url, "--token", "T", "auth", "can-i"];
        all.extend_from_slice(args);
        loomctl(&all, home.path()).await
    };
    let last = || seen.lock().unwrap().last().cloned().unwrap();

    // A short name resolved through discovery, a name, a namespace; the token sent.
    let yes = can_i(&["get", "t/web", "-n", "team"]).await;
    assert_eq!(
        (yes.code, yes.stdout.as_str()),
        (0, "yes\n"),
        "{}",
        yes.stderr
    );
    let (auth, body) = last();
    assert_eq!(auth.as_deref(), Some("Bearer T"));
    assert_eq!(body["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(body["kind"], "SelfSubjectAccessReview");
    assert_eq!(
        body["spec"],
        json!({"resourceAttributes": {"namespace": "team", "verb": "get", "group": "loom.dev", "resource": "tasks", "name": "web"}})
    );

    // Denied: "no" with the reason, exit 1; a cluster-scoped kind has no
    // namespace; a subresource is passed on.
    let no = can_i(&["update", "Node", "--subresource", "status"]).await;
    assert_eq!(
        (no.code, no.stdout.as_str()),
        (1, "no - no RBAC policy matched\n"),
        "{}",
        no.stderr
    );
    assert_eq!(
        last().1["spec"],
        json!({"resourceAttributes": {"verb": "update", "group": "loom.dev", "resource": "nodes", "subresource": "status"}})
    );

    // Every namespace: no namespace at all.
    let all = can_i(&["list", "tasks.loom.dev", "--all-namespaces"]).await;
    assert_eq!(all.code, 1, "{}", all.stderr);
    assert_eq!(
        last().1["spec"],
        json!({"resourceAttributes": {"verb": "list", "group": "loom.dev", "resource": "tasks"}})
    );

    // A non-resource URL.
    let healthz = can_i(&["get", "/healthz"]).await;
    assert_eq!(
        (healthz.code, healthz.stdout.as_str()),
        (0, "yes\n"),
        "{}",
        healthz.stderr
    );
    assert_eq!(
        last().1["spec"],
        json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}})
    );

    // A resource the server does not list: asked as typed, with kubectl's warning.
    let unknown = can_i(&["get", "widgets.example.com"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .contains("the server doesn't have a resource type 'widgets.example.com'"),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        last().1["spec"],
        json!({"resourceAttributes": {"namespace": "default", "verb": "get", "group": "example.com", "resource": "widgets"}})
    );

    // The core group (/api/v1): group "", as Kubernetes spells it.
    let sa = can_i(&["create", "sa", "-n", "team"]).await;
    assert_eq!(sa.code, 1, "{}", sa.stderr);
    assert_eq!(sa.stderr, "");
    assert_eq!(
        last().1["spec"],
        json!({"resourceAttributes": {"namespace": "team", "verb": "create", "resource": "serviceaccounts"}})
    );
    can_i(&["delete", "ns/team"]).await;
    assert_eq!(
        last().1["spec"],
        json!({"resourceAttributes": {"verb": "delete", "resource": "namespaces", "name": "team"}})
    );

    // Quiet: only the exit code.
    let quiet = can_i(&["get", "tasks", "-q"]).await;
    assert_eq!((quiet.code, quiet.stdout.as_str()), (0, ""));
    let quiet = can_i(&["delete", "tasks", "-q"]).await;
    assert_eq!((quiet.code, quiet.stdout.as_str()), (1, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_refused_by_the_server_is_an_error_not_a_no() {
    let (url, _) = fake(true).await;
    let home = tempfile::tempdir().unwrap();
    let run = loomctl(
        &["--server", &url, "auth", "can-i", "get", "/healthz"],
        home.path(),
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("SelfSubjectAccessReview"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("forbidden"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_server_does_not_know_is_explained() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ca = server.files.ca.to_str().unwrap();
    let run = loomctl(
        &[
            "--server",
            &server.url,
            "--certificate-authority",
            ca,
            "--token",
            "not-a-token",
            "get",
            "jobs",
        ],
        home.path(),
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("You must be logged in to the server (Unauthorized)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not-a-token"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_against_the_real_server_agrees_with_kubectl() {
    let server = TestServer::embedded(apiserver::Config {
        authorization: apiserver::authz::Authorization::Rbac,
        ..apiserver::Config::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    // A user with a certificate of the cluster and the `view` role only.
    let viewer = server.pki.user("viewer", Some("viewers"));
    let config = home.path().join("viewer.kubeconfig");
    client::Kubeconfig::single(
        "viewer",
        &server.url,
        Some(server.pki.ca_pem()),
        Some(client::Credential::ClientCert {
            cert_pem: viewer.cert_pem.clone(),
            key_pem: viewer.key_pem.clone(),
        }),
        "default",
    )
    .write(&config)
    .unwrap();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "viewer-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "viewer"}],
    });
    server
        .client()
        .request_bytes(
            client::client::Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            Some(client::client::Body {
                content_type: "application/json",
                bytes: serde_json::to_vec(&binding).unwrap().into(),
            }),
        )
        .await
        .unwrap();
    let file = config.to_str().unwrap();
    // The authorizer learns of the binding through its watch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let run = loomctl(
            &["--kubeconfig", file, "auth", "can-i", "list", "jobs", "-q"],
            home.path(),
        )
        .await;
        if run.code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the binding never took effect: {}",
            run.stderr
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let who = loomctl(&["--kubeconfig", file, "auth", "whoami"], home.path()).await;
    assert_eq!(who.code, 0, "{}", who.stderr);
    assert!(who.stdout.contains("viewer"), "{}", who.stdout);
    let kubectl = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    });
    for (args, allowed) in [
        (vec!["list", "jobs"], true),
        (vec!["get", "tasks/web", "-n", "team"], true),
        (vec!["create", "jobs"], false),
        (vec!["delete", "tasks", "--all-namespaces"], false),
        (vec!["update", "tasks", "--subresource", "status"], false),
    ] {
        let mut all = vec!["--kubeconfig", file, "auth", "can-i"];
        all.extend_from_slice(&args);
        let run = loomctl(&all, home.path()).await;
        let answer = run.stdout.split(' ').next().unwrap_or_default().trim();
        assert_eq!(
            (run.code, answer),
            (
                if allowed { 0 } else { 1 },
                if allowed { "yes" } else { "no" }
            ),
            "loomctl {args:?}: {} {}",
            run.stdout,
            run.stderr
        );
        if let Some(kubectl) = &kubectl {
            // kubectl names Loom's kinds with their group (jobs alone is batch's).
            let mut kargs: Vec<String> = vec!["--kubeconfig".into(), file.into()];
            kargs.extend(["auth".into(), "can-i".into()]);
            for arg in &args {
                kargs.push(match *arg {
                    "jobs" => "jobs.loom.dev".to_owned(),
                    "tasks" => "tasks.loom.dev".to_owned(),
                    "tasks/web" => "tasks.loom.dev/web".to_owned(),
                    other => other.to_owned(),
                });
            }
            let output = tokio::process::Command::new(kubectl)
                .args(&kargs)
                .env("HOME", home.path())
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(
                (
                    output.status.code(),
                    stdout.split(' ').next().unwrap_or_default().trim()
                ),
                (Some(run.code), answer),
                "kubectl {kargs:?}: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_config_loomctl_says_where_one_comes_from() {
    let home = tempfile::tempdir().unwrap();
    let run = loomctl(&["get", "jobs"], home.path()).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no kubeconfig found"), "{}", run.stderr);
    assert!(run.stderr.contains("loom up"), "{}", run.stderr);
}
