//! The nodelet's endpoint lets in callers the API server vouches for, as the
//! kubelet does: the API server's own client certificate at once; anyone
//! else authenticated (a client certificate of the cluster CA, or a bearer
//! token by TokenReview) and authorized by SubjectAccessReview — a task's
//! log is `get tasks/log` of that task, so the RBAC rule that lets a user
//! read it through the API lets them read it from the node, and nothing
//! else does. The node asks with its own credential (`system:node:NAME`).
//! Answers are cached; a review that cannot be made is a 503, never an allow.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use api_types::Node;
use client::Api;
use loom_testing::nodelet::{Harness, Running, phase};
use nodelet::server::{API_SERVER_USER, Callers};
use nodelet::{EndpointTls, FakeDriver, FakeOutcome};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

/// A TCP forwarder to the API server, standing in for the network between
/// the node and it: stopping it closes every connection and refuses new ones.
struct Forwarder {
    url: String,
    stop: CancellationToken,
}

impl Forwarder {
    async fn start(upstream: String) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let (upstream, token) = (upstream.clone(), token.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Forwarder { url, stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A nodelet serving TLS, running as its node (through a forwarder), with a
/// task `t1` and a task `t2` running in `default`, each with a log.
struct Setup {
    h: Harness,
    nodelet: Option<Running>,
    forwarder: Forwarder,
    /// `https://127.0.0.1:PORT` of the nodelet.
    base: String,
    _dir: tempfile::TempDir,
}

async fn setup(tag: &str) -> Setup {
    let mut h = Harness::new(tag).await;
    h.import_busybox();
    let pki = h.server.pki.clone();
    let dir = tempfile::tempdir().unwrap();
    let serving = pki
        .ca()
        .issue(&pki::Profile::server(
            &format!("system:node:{}", h.name),
            // The API server may check the node's name, a test may the address.
            &["127.0.0.1".to_owned(), h.name.clone()],
        ))
        .unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = write("serving.crt", &serving.cert_pem);
    let key = write("serving.key", &serving.key_pem);
    let ca = write("ca.crt", pki.ca_pem());
    let mut config = h.config();
    config.endpoint_tls = Some(EndpointTls {
        server: loom_listener::tls::server_config(&cert, &key, Some(&ca)).unwrap(),
        callers: Callers {
            users: vec![API_SERVER_USER.to_owned()],
        },
    });
    // The nodelet is its node, not the administrator: its own rights must
    // cover the reviews.
    let forwarder = Forwarder::start(h.server.address().to_owned()).await;
    let node = pki.user(&format!("system:node:{}", h.name), Some("system:nodes"));
    let node_client = client::Client::new(pki.client_config(&forwarder.url, &node)).unwrap();
    let admin = std::mem::replace(&mut h.client, node_client);
    let driver = FakeDriver::default();
    driver.set_default(FakeOutcome::UntilSignalled { ignore_term: false });
    let nodelet = h.start(config, Some(Arc::new(driver)));
    h.client = admin;

    let nodes: Api<Node> = Api::all(h.client.clone());
    let endpoint = loom_testing::eventually("the node's https endpoint", || async {
        let node = nodes.get_opt(&h.name).await.ok()??;
        let endpoint = node.status?.nodelet_endpoint;
        (!endpoint.is_empty()).then_some(endpoint)
    })
    .await;
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    for name in ["t1", "t2"] {
        h.create(json!({"metadata": {"name": name}, "spec": {}}))
            .await;
        let task = h
            .wait_for(name, Duration::from_secs(30), |t| phase(t) == "Running")
            .await;
        let logs = h.state.join("tasks").join(&task.metadata.uid).join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("log"), format!("hello from {name}\n")).unwrap();
    }
    Setup {
        base: endpoint.trim_end_matches('/').to_owned(),
        h,
        nodelet: Some(nodelet),
        forwarder,
        _dir: dir,
    }
}

impl Setup {
    fn pki(&self) -> &loom_testing::TestPki {
        &self.h.server.pki
    }

    /// A client presenting the bearer token `token`, and no certificate.
    fn with_token(&self, token: &str) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        self.pki()
            .http_client(None)
            .default_headers(headers)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// A client presenting a certificate of `user` in `group`.
    fn with_certificate(&self, user: &str, group: Option<&str>) -> reqwest::Client {
        self.pki()
            .http_client(Some(&self.pki().user(user, group)))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn token_of(&self, user: &str) -> reqwest::Client {
        self.with_token(&self.pki().token(user))
    }

    /// GET `path` of the nodelet: the code and the body.
    async fn get(&self, client: &reqwest::Client, path: &str) -> (u16, String) {
        let response = client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        (code, response.text().await.unwrap())
    }

    /// Posts `object` to the API server as the administrator.
    async fn admin_post(&self, path: &str, object: Value) {
        let response = self
            .h
            .server
            .http()
            .post(format!("{}{path}", self.h.server.url))
            .json(&object)
            .send()
            .await
            .unwrap();
        let code = response.status();
        assert!(
            code.is_success(),
            "{path}: {code} {}",
            response.text().await.unwrap()
        );
    }

    async fn admin_delete(&self, path: &str) {
        let response = self
            .h
            .server
            .http()
            .delete(format!("{}{path}", self.h.server.url))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}");
    }

    /// Binds `role` (a `kind` Role or ClusterRole) to user `user` in namespace `ns`.
    async fn bind(&self, ns: &str, name: &str, kind: &str, role: &str, user: &str) {
        self.admin_post(
            &format!("{RBAC}/namespaces/{ns}/rolebindings"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}),
        )
        .await;
    }

    /// Whether the API server answers `allowed` for `user` and `attributes`.
    async fn wait_review(&self, user: &str, attributes: Value, allowed: bool) {
        let mut spec = json!({"user": user, "groups": ["system:authenticated"]});
        let key = if attributes.get("path").is_some() {
            "nonResourceAttributes"
        } else {
            "resourceAttributes"
        };
        spec[key] = attributes;
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec});
        let url = format!(
            "{}/apis/authorization.k8s.io/v1/subjectaccessreviews",
            self.h.server.url
        );
        let http = self.h.server.http();
        loom_testing::eventually(
            &format!("the API server to answer {allowed} for {user}"),
            || async {
                let answer: Value = http
                    .post(&url)
                    .json(&review)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (answer["status"]["allowed"] == allowed).then_some(())
            },
        )
        .await;
    }

    async fn stop(mut self) {
        if let Some(nodelet) = self.nodelet.take() {
            nodelet.stop().await;
        }
    }
}

fn log_of(namespace: &str, name: &str) -> Value {
    json!({"verb": "get", "group": "loom.dev", "resource": "tasks", "subresource": "log",
           "namespace": namespace, "name": name})
}

/// The Status of a refusal: its code and reason, and its message.
fn status(body: &str) -> (i64, String, String) {
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not a Status: {body}"));
    assert_eq!(value["kind"], "Status", "{body}");
    (
        value["code"].as_i64().unwrap_or_default(),
        value["reason"].as_str().unwrap_or_default().to_owned(),
        value["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_authenticated_and_authorized_by_the_api_server() {
    let s = setup("caller-auth").await;
    // alice may read logs in default; carol only in other; bob nowhere;
    // dave (a certificate) only t1's; erin (a certificate) /metrics.
    s.admin_post(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
    )
    .await;
    s.bind("default", "alice-view", "ClusterRole", "view", "alice")
        .await;
    s.bind("other", "carol-view", "ClusterRole", "view", "carol")
        .await;
    s.admin_post(
        &format!("{RBAC}/namespaces/default/roles"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "t1-log"},
               "rules": [{"apiGroups": ["loom.dev"], "resources": ["tasks/log"],
                          "resourceNames": ["t1"], "verbs": ["get"]}]}),
    )
    .await;
    s.bind("default", "dave-t1", "Role", "t1-log", "dave").await;
    s.admin_post(
        &format!("{RBAC}/clusterroles"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "metrics-reader"},
               "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
    )
    .await;
    s.admin_post(
        &format!("{RBAC}/clusterrolebindings"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "erin-metrics"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "metrics-reader"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "erin"}]}),
    )
    .await;
    // Nothing is asked of the nodelet before the API server knows them all
    // (a denial would be cached).
    s.wait_review("alice", log_of("default", "t1"), true).await;
    s.wait_review("carol", log_of("other", "t1"), true).await;
    s.wait_review("dave", log_of("default", "t1"), true).await;
    s.wait_review("erin", json!({"path": "/metrics", "verb": "get"}), true)
        .await;

    // A token with the right reads the log straight from the node.
    let alice = s.token_of("alice");
    assert_eq!(
        s.get(&alice, "/logs/default/t1").await,
        (200, "hello from t1\n".to_owned())
    );
    assert_eq!(s.get(&alice, "/logs/default/t2?tailLines=1").await.0, 200);
    // Without it, or with it in another namespace: 403 naming who and what.
    for (who, client) in [("bob", s.token_of("bob")), ("carol", s.token_of("carol"))] {
        let (code, body) = s.get(&client, "/logs/default/t1").await;
        assert_eq!(code, 403, "{who}: {body}");
        let (code, reason, message) = status(&body);
        assert_eq!((code, reason.as_str()), (403, "Forbidden"));
        assert!(
            message.contains(&format!("User \"{who}\""))
                && message.contains("tasks/log")
                && message.contains("\"default\""),
            "{message}"
        );
        assert!(!body.contains("hello"), "{body}");
    }
    // A certificate of the cluster CA names its user; its rights are checked
    // for the very task asked for.
    let dave = s.with_certificate("dave", None);
    assert_eq!(
        s.get(&dave, "/logs/default/t1").await,
        (200, "hello from t1\n".to_owned())
    );
    assert_eq!(s.get(&dave, "/logs/default/t2").await.0, 403);
    // Another node may not read this node's logs.
    let other_node = s.with_certificate("system:node:elsewhere", Some("system:nodes"));
    assert_eq!(s.get(&other_node, "/logs/default/t1").await.0, 403);
    // No credential, a token no one has, a header that is not a bearer
    // token: 401 with a Status.
    let anonymous = s.pki().http_client(None).build().unwrap();
    let mut basic = reqwest::header::HeaderMap::new();
    basic.insert(
        reqwest::header::AUTHORIZATION,
        "Basic YWxpY2U6eA==".parse().unwrap(),
    );
    let basic = s
        .pki()
        .http_client(None)
        .default_headers(basic)
        .build()
        .unwrap();
    for (what, client) in [
        ("no credential", anonymous.clone()),
        ("an unknown token", s.with_token("not-a-token-anyone-has")),
        (
            "a forged token",
            s.with_token(&format!("{}x", s.pki().token("alice"))),
        ),
        ("basic auth", basic),
    ] {
        let (code, body) = s.get(&client, "/logs/default/t1").await;
        assert_eq!(code, 401, "{what}: {body}");
        assert_eq!(status(&body).1, "Unauthorized", "{what}");
        // Also on a path the node does not serve: nothing about it is told.
        assert_eq!(s.get(&client, "/nothing-here").await.0, 401, "{what}");
    }
    assert_eq!(s.get(&anonymous, "/healthz").await, (200, "ok".to_owned()));
    // /metrics is its path.
    assert_eq!(s.get(&alice, "/metrics").await.0, 403);
    assert_eq!(
        s.get(&s.with_certificate("erin", None), "/metrics").await.0,
        200
    );
    let admin = s.pki().http_client(Some(s.pki().admin())).build().unwrap();
    assert_eq!(s.get(&admin, "/metrics").await.0, 200);
    assert_eq!(s.get(&admin, "/logs/default/t2").await.0, 200);
    // A percent-escaped name is not what would be reviewed: refused.
    assert_eq!(s.get(&alice, "/logs/default/%741").await.0, 400);
    // The API server's own certificate needs no review, and the API still
    // proxies the log to a user allowed there.
    let api_server = s.with_certificate(API_SERVER_USER, None);
    assert_eq!(s.get(&api_server, "/logs/default/t1").await.0, 200);
    let through_api = alice
        .get(format!(
            "{}/apis/loom.dev/v1/namespaces/default/tasks/t1/log",
            s.h.server.url
        ))
        .send()
        .await
        .unwrap();
    let code = through_api.status().as_u16();
    let text = through_api.text().await.unwrap();
    assert_eq!((code, text.as_str()), (200, "hello from t1\n"));

    // Answers are cached, as the kubelet's: an allow for 5 minutes (alice
    // keeps reading after her binding is gone), a denial for 30 seconds (bob
    // is still refused just after he is bound a role).
    let bob = s.token_of("bob");
    assert_eq!(s.get(&bob, "/logs/default/t2").await.0, 403);
    s.admin_delete(&format!(
        "{RBAC}/namespaces/default/rolebindings/alice-view"
    ))
    .await;
    s.bind("default", "bob-view", "ClusterRole", "view", "bob")
        .await;
    s.wait_review("alice", log_of("default", "t1"), false).await;
    s.wait_review("bob", log_of("default", "t2"), true).await;
    assert_eq!(s.get(&bob, "/logs/default/t2").await.0, 403);
    assert_eq!(s.get(&alice, "/logs/default/t1").await.0, 200);
    // Answers are per task: alice's right to a task never asked about is
    // asked now (denied), as is bob's (allowed: a task not on this node).
    assert_eq!(s.get(&alice, "/logs/default/t3").await.0, 403);
    assert_eq!(s.get(&bob, "/logs/default/t3").await.0, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_cannot_be_made_is_503_never_an_allow() {
    let s = setup("caller-auth-down").await;
    s.bind("default", "alice-view", "ClusterRole", "view", "alice")
        .await;
    s.bind("default", "carol-view", "ClusterRole", "view", "carol")
        .await;
    s.bind("default", "dave-view", "ClusterRole", "view", "dave")
        .await;
    for user in ["alice", "carol", "dave"] {
        s.wait_review(user, log_of("default", "t1"), true).await;
    }
    let alice = s.token_of("alice");
    assert_eq!(s.get(&alice, "/logs/default/t1").await.0, 200);

    // The API server can no longer be reached from the node.
    s.forwarder.stop.cancel();
    // Callers allowed by RBAC, but not asked about before: 503, not 200.
    for (who, client) in [
        ("carol (a token)", s.token_of("carol")),
        ("dave (a certificate)", s.with_certificate("dave", None)),
        ("an unknown token", s.with_token("not-a-token-anyone-has")),
    ] {
        let (code, body) = s.get(&client, "/logs/default/t1").await;
        assert_eq!(code, 503, "{who}: {body}");
        let (code, reason, message) = status(&body);
        assert_eq!(
            (code, reason.as_str()),
            (503, "ServiceUnavailable"),
            "{who}"
        );
        assert!(message.contains("API server"), "{message}");
        assert!(!body.contains("hello"), "{body}");
    }
    // Still no credential is 401 without asking anyone.
    let anonymous = s.pki().http_client(None).build().unwrap();
    assert_eq!(s.get(&anonymous, "/logs/default/t1").await.0, 401);
    // alice's answers were cached before; the API server's certificate needs
    // no review.
    assert_eq!(s.get(&alice, "/logs/default/t1").await.0, 200);
    let api_server = s.with_certificate(API_SERVER_USER, None);
    assert_eq!(s.get(&api_server, "/logs/default/t1").await.0, 200);
    s.stop().await;
}
