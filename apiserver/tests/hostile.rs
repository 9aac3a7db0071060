//! Hostile input through the public API: log paths that name host files, counts
//! that would flood the cluster, Node objects that point the API server's calls
//! elsewhere, and stand-in nodelets that redirect, stall or never stop talking.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::StreamExt;
use loom_testing::TestServer;
use serde_json::{Value, json};

const API: &str = "/apis/loom.dev/v1";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(server: &TestServer) -> Client {
        Client {
            http: server.http(),
            base: format!("{}{API}", server.url),
        }
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn patch_status(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .patch(format!("{}{path}/status", self.base))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// Registers a node whose nodelet is at `endpoint`, and a task bound to it.
    async fn node_with_task(&self, node: &str, endpoint: &str, task: &str) {
        let created = self
            .post("/nodes", json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": node}, "status": {"nodeletEndpoint": endpoint}}))
            .await;
        assert_eq!(
            created.status().as_u16(),
            201,
            "{}",
            created.text().await.unwrap()
        );
        let created = self
            .post(
                "/namespaces/default/tasks",
                task_manifest(task, json!({"nodeName": node})),
            )
            .await;
        assert_eq!(
            created.status().as_u16(),
            201,
            "{}",
            created.text().await.unwrap()
        );
    }
}

fn task_manifest(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["image"] = json!("busybox");
    json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": name}, "spec": spec})
}

fn job_manifest(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["template"] = json!({"spec": {"image": "busybox"}});
    json!({"apiVersion": "loom.dev/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

/// The answer's status code and its Status `message`.
async fn answer(response: reqwest::Response) -> (u16, String) {
    let code = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (code, body["message"].as_str().unwrap_or("").to_owned())
}

async fn server() -> TestServer {
    TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap()
}

/// Serves `app` on a loopback port; returns `http://127.0.0.1:PORT`.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_path_is_a_file_name_not_a_host_path() {
    let server = server().await;
    let client = Client::new(&server);
    for (i, path) in [
        "/etc/shadow",
        "/dev/zero",
        "../../../etc/passwd",
        "..",
        "a/b",
        ".hidden",
    ]
    .into_iter()
    .enumerate()
    {
        let (code, message) = answer(
            client
                .post(
                    "/namespaces/default/tasks",
                    task_manifest(&format!("t{i}"), json!({"logPath": path})),
                )
                .await,
        )
        .await;
        assert_eq!(code, 422, "{path}: {message}");
        assert!(
            message.contains("spec.logPath")
                && message.contains("must be a file name inside the task's log directory"),
            "{path}: {message}"
        );
    }
    let created = client
        .post(
            "/namespaces/default/tasks",
            task_manifest("named", json!({"logPath": "train.log"})),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    // Templates and overrides carry the same field into every task.
    let mut job = job_manifest("j", json!({}));
    job["spec"]["template"]["spec"]["logPath"] = json!("/etc/shadow");
    let (code, message) = answer(client.post("/namespaces/default/jobs", job).await).await;
    assert_eq!(code, 422);
    assert!(message.contains("spec.template.spec.logPath"), "{message}");
    let job = job_manifest(
        "j",
        json!({"replicas": 2, "overrides": [{"indexes": "1", "spec": {"logPath": "/root/.bashrc"}}]}),
    );
    let (code, message) = answer(client.post("/namespaces/default/jobs", job).await).await;
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.overrides[0].spec.logPath"),
        "{message}"
    );
    let mut svc = json!({"apiVersion": "loom.dev/v1", "kind": "Service", "metadata": {"name": "web"},
                         "spec": {"template": {"spec": {"image": "nginx", "logPath": "/var/log/../../etc/shadow"}}}});
    let (code, message) = answer(
        client
            .post("/namespaces/default/services", svc.clone())
            .await,
    )
    .await;
    assert_eq!(code, 422);
    assert!(message.contains("spec.template.spec.logPath"), "{message}");
    svc["spec"]["template"]["spec"]["logPath"] = json!("web.log");
    assert_eq!(
        client
            .post("/namespaces/default/services", svc)
            .await
            .status()
            .as_u16(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_log_dir_is_accepted_with_a_warning() {
    let server = server().await;
    let client = Client::new(&server);
    let created = client
        .post(
            "/namespaces/default/jobs",
            job_manifest("old", json!({"logDir": "/etc"})),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let warnings: Vec<&str> = created
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        ["299 - \"spec.logDir is deprecated and ignored: the node chooses log locations\""]
    );
    // Kept as written (so applying the manifest again changes nothing), used by nobody.
    let job: Value = created.json().await.unwrap();
    assert_eq!(job["spec"]["logDir"], "/etc");
    let patched = client
        .http
        .patch(format!("{}/namespaces/default/jobs/old", client.base))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"spec": {"maxRetries": 1}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    assert_eq!(patched.headers().get_all("warning").iter().count(), 1);

    let created = client
        .post("/namespaces/default/jobs", job_manifest("new", json!({})))
        .await;
    assert_eq!(created.status().as_u16(), 201);
    assert!(created.headers().get("warning").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_bounded() {
    let server = server().await;
    let client = Client::new(&server);
    for (field, spec) in [
        ("spec.replicas", json!({"replicas": 100_001})),
        ("spec.parallelism", json!({"parallelism": 2_000_000_000})),
        ("spec.maxRetries", json!({"maxRetries": 1_000_000})),
    ] {
        let (code, message) = answer(
            client
                .post("/namespaces/default/jobs", job_manifest("big", spec))
                .await,
        )
        .await;
        assert_eq!(code, 422, "{message}");
        assert!(
            message.contains(field) && message.contains("must be less than or equal to"),
            "{message}"
        );
    }
    let ok = client
        .post(
            "/namespaces/default/jobs",
            job_manifest("max", json!({"replicas": 100_000, "parallelism": 100_000})),
        )
        .await;
    assert_eq!(ok.status().as_u16(), 201);
    let (code, message) = answer(
        client
            .post(
                "/namespaces/default/services",
                json!({"apiVersion": "loom.dev/v1", "kind": "Service", "metadata": {"name": "web"},
                       "spec": {"replicas": 100_001, "template": {"spec": {"image": "nginx"}}}}),
            )
            .await,
    )
    .await;
    assert_eq!(code, 422);
    assert!(
        message
            .contains("spec.replicas: Invalid value: 100001: must be less than or equal to 100000"),
        "{message}"
    );
    let ports: Vec<u32> = (1..=2000).collect();
    let (code, message) = answer(
        client
            .post(
                "/namespaces/default/tasks",
                task_manifest("ports", json!({"resources": {"ports": ports}})),
            )
            .await,
    )
    .await;
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.resources.ports: Too many: 2000: must have at most 1024 items"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodelet_endpoint_is_an_ip_and_port_and_never_changes() {
    let server = server().await;
    let client = Client::new(&server);
    for (i, endpoint) in [
        "http://169.254.169.254/latest",
        "http://169.254.169.254:80",
        "http://user@1.2.3.4:1/",
        "file:///etc/shadow",
        "http://localhost:7444",
        "http://10.0.0.5:7444/logs",
        "http://10.0.0.5:7444?x=1",
        "https://10.0.0.5:7444/logs",
        "https://169.254.169.254:443",
    ]
    .into_iter()
    .enumerate()
    {
        let (code, message) = answer(
            client
                .post("/nodes", json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": format!("n{i}")}, "status": {"nodeletEndpoint": endpoint}}))
                .await,
        )
        .await;
        assert_eq!(code, 422, "{endpoint}: {message}");
        assert!(
            message.contains("status.nodeletEndpoint"),
            "{endpoint}: {message}"
        );
    }
    // A node registered without an endpoint may not be given a bad one later either.
    let created = client
        .post(
            "/nodes",
            json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": "good"}}),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let (code, _) = answer(
        client
            .patch_status(
                "/nodes/good",
                json!({"status": {"nodeletEndpoint": "file:///etc/shadow"}}),
            )
            .await,
    )
    .await;
    assert_eq!(code, 422);
    // Set once: fine; the same again (every heartbeat): fine; another: refused.
    for endpoint in ["http://10.0.0.5:7444", "http://10.0.0.5:7444"] {
        let patched = client
            .patch_status(
                "/nodes/good",
                json!({"status": {"nodeletEndpoint": endpoint}}),
            )
            .await;
        assert_eq!(patched.status().as_u16(), 200);
    }
    for endpoint in ["http://10.0.0.6:7444", "http://127.0.0.1:2379", ""] {
        let (code, message) = answer(
            client
                .patch_status(
                    "/nodes/good",
                    json!({"status": {"nodeletEndpoint": endpoint}}),
                )
                .await,
        )
        .await;
        assert_eq!(code, 422, "{endpoint}: {message}");
        assert!(
            message.contains("status.nodeletEndpoint") && message.contains("field is immutable"),
            "{message}"
        );
    }
    let node: Value = client.get("/nodes/good").await.json().await.unwrap();
    assert_eq!(node["status"]["nodeletEndpoint"], "http://10.0.0.5:7444");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_proxy_does_not_follow_redirects() {
    let server = server().await;
    let client = Client::new(&server);
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let elsewhere = serve(axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "secret" }
    }))
    .await;
    let target = format!("{elsewhere}/latest/meta-data");
    let redirecting = serve(axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                axum::http::StatusCode::FOUND,
                [(axum::http::header::LOCATION, target)],
            )
        }
    }))
    .await;
    // The stand-in for "elsewhere" answers when asked directly.
    assert_eq!(
        server
            .http()
            .get(&elsewhere)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "secret"
    );
    hits.store(0, Ordering::SeqCst);

    client.node_with_task("n1", &redirecting, "t1").await;
    let response = client.get("/namespaces/default/tasks/t1/log").await;
    let (code, message) = answer(response).await;
    assert_eq!(code, 502, "{message}");
    assert!(message.contains("answered 302"), "{message}");
    assert!(!message.contains("secret"));
    // A followed redirect would have been requested before the answer came back.
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_proxy_gives_up_on_a_nodelet_that_never_answers() {
    let server = server().await;
    let client = Client::new(&server);
    // Accepts connections and reads, but never writes a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    client
        .node_with_task("n1", &format!("http://{address}"), "t1")
        .await;
    let started = Instant::now();
    let response = tokio::time::timeout(
        apiserver::logs::RESPONSE_TIMEOUT + Duration::from_secs(10),
        client.get("/namespaces/default/tasks/t1/log?follow=true"),
    )
    .await
    .expect("the API server waited for the nodelet forever");
    let elapsed = started.elapsed();
    let (code, message) = answer(response).await;
    assert_eq!(code, 503, "{message}");
    assert!(message.contains("no answer within"), "{message}");
    assert!(
        elapsed >= apiserver::logs::RESPONSE_TIMEOUT - Duration::from_millis(100),
        "gave up after {elapsed:?}"
    );
    assert!(!held.lock().unwrap().is_empty(), "never connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_proxy_bounds_a_whole_log() {
    let server = server().await;
    let client = Client::new(&server);
    // A nodelet that never stops sending a "whole" log.
    let endless = serve(axum::Router::new().fallback(|| async {
        let chunk = Bytes::from(vec![b'x'; 64 << 10]);
        axum::body::Body::from_stream(futures::stream::repeat_with(move || {
            Ok::<_, std::convert::Infallible>(chunk.clone())
        }))
    }))
    .await;
    client.node_with_task("n1", &endless, "t1").await;
    let response = client.get("/namespaces/default/tasks/t1/log").await;
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.bytes_stream();
    let mut received = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => received += chunk.len() as u64,
                Err(_) => return true,
            }
        }
        false
    })
    .await
    .expect("the log never ended");
    assert!(ended, "a cut log must end in an error, not look whole");
    assert!(
        received <= apiserver::logs::MAX_LOG_BYTES,
        "{received} bytes passed"
    );
    assert!(received >= apiserver::logs::MAX_LOG_BYTES / 2, "{received}");
}

/// Sets its flag when dropped: the stand-in's response body is dropped when
/// the API server hangs up on it.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_log_ends_at_the_nodelet_when_the_client_leaves() {
    let server = server().await;
    let client = Client::new(&server);
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let following = serve(axum::Router::new().fallback(move || {
        let guard = Dropped(flag.clone());
        async move {
            let ticks = futures::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::convert::Infallible>("line\n"), guard))
            });
            axum::body::Body::from_stream(ticks)
        }
    }))
    .await;
    client.node_with_task("n1", &following, "t1").await;
    let response = client
        .get("/namespaces/default/tasks/t1/log?follow=true")
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("no line")
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"line"));
    assert!(!closed.load(Ordering::SeqCst));
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !closed.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the API server kept following after its client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_proxy_refuses_a_stored_endpoint_that_breaks_the_rule() {
    let server = server().await;
    let client = Client::new(&server);
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let target = serve(axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "secret" }
    }))
    .await;
    // As if written before the rule existed: straight into the store.
    let port = target.rsplit(':').next().unwrap();
    let node = json!({"apiVersion": "loom.dev/v1", "kind": "Node",
                      "metadata": {"name": "old", "uid": "u-old", "creationTimestamp": "2024-01-01T00:00:00Z"},
                      "status": {"nodeletEndpoint": format!("http://localhost:{port}/redirect")}});
    server
        .store
        .create("loom.dev/nodes/old", Bytes::from(node.to_string()))
        .await
        .unwrap();
    let created = client
        .post(
            "/namespaces/default/tasks",
            task_manifest("t1", json!({"nodeName": "old"})),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, message) = loop {
        let (code, message) = answer(client.get("/namespaces/default/tasks/t1/log").await).await;
        // The cache may not have the node yet.
        if !message.contains("does not exist") || Instant::now() > deadline {
            break (code, message);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, 503, "{message}");
    assert!(
        message.contains("must be https://IP:PORT or http://IP:PORT"),
        "{message}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // And it still takes heartbeats that keep the endpoint as it is.
    let patched = client
        .patch_status(
            "/nodes/old",
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await;
    assert_eq!(
        patched.status().as_u16(),
        200,
        "{}",
        patched.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_memory_gets_the_cluster_default() {
    let default = api_types::Quantity::parse("512Mi").unwrap();
    let server = TestServer::embedded(apiserver::Config {
        default_task_memory: Some(default),
        ..apiserver::Config::default()
    })
    .await
    .unwrap();
    let client = Client::new(&server);
    let created = client
        .post(
            "/namespaces/default/tasks",
            task_manifest("bare", json!({})),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let task: Value = created.json().await.unwrap();
    assert_eq!(task["spec"]["resources"]["memory"], "512Mi");
    let created = client
        .post(
            "/namespaces/default/tasks",
            task_manifest("own", json!({"resources": {"memory": "64Mi", "cpu": "1"}})),
        )
        .await;
    let task: Value = created.json().await.unwrap();
    assert_eq!(task["spec"]["resources"]["memory"], "64Mi");
    assert_eq!(task["spec"]["resources"]["cpu"], "1");
    // Sending the manifest back without the field changes nothing (the spec is
    // immutable, and the default is part of it now).
    let mut again = task_manifest("bare", json!({}));
    let stored: Value = client
        .get("/namespaces/default/tasks/bare")
        .await
        .json()
        .await
        .unwrap();
    again["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
    let replaced = client
        .http
        .put(format!("{}/namespaces/default/tasks/bare", client.base))
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_eq!(
        replaced.status().as_u16(),
        200,
        "{}",
        replaced.text().await.unwrap()
    );
    let task: Value = client
        .get("/namespaces/default/tasks/bare")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["spec"]["resources"]["memory"], "512Mi");

    // Without a default (the library's, or the flag's `0`), nothing is added.
    let plain = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let task: Value = Client::new(&plain)
        .post(
            "/namespaces/default/tasks",
            task_manifest("bare", json!({})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(task["spec"]["resources"]["memory"].is_null(), "{task}");
}
