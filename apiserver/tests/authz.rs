//! Authorization by RBAC through the real HTTP server (HTTPS, users by their
//! client certificates): a table of identities and requests, denied watches,
//! escalation prevention, the access reviews, the bootstrap roles, and the
//! real kubectl's `auth can-i`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use apiserver::authz::Authorization;
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use reqwest::Method;
use serde_json::{Value, json};

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";
const REVIEWS: &str = "/apis/authorization.k8s.io/v1";

fn config() -> apiserver::Config {
    apiserver::Config {
        authorization: Authorization::Rbac,
        // Requests without credentials pass authentication, to be refused here.
        authentication: apiserver::authn::Authentication {
            anonymous: true,
            service_accounts: Some(service_account_tokens()),
            ..apiserver::authn::Authentication::default()
        },
        ..apiserver::Config::default()
    }
}

/// Service-account tokens signed and verified with a fresh key pair.
fn service_account_tokens() -> std::sync::Arc<apiserver::authn::ServiceAccountTokens> {
    let (private, public) = pki::signing_key_pair().unwrap();
    std::sync::Arc::new(
        apiserver::authn::ServiceAccountTokens::from_pem(
            apiserver::authn::service_account::DEFAULT_ISSUER,
            &[("sa.pub".into(), public)],
            Some(("sa.key".into(), private)),
        )
        .unwrap(),
    )
}

fn as_user(server: &TestServer, user: &str, group: Option<&str>) -> JsonClient {
    JsonClient {
        http: server.http_as(user, group),
        base: server.url.clone(),
    }
}

fn anonymous(server: &TestServer) -> JsonClient {
    JsonClient {
        http: server.http_anonymous(),
        base: server.url.clone(),
    }
}

fn tasks(namespace: &str) -> String {
    format!("/apis/loom.dev/v1/namespaces/{namespace}/tasks")
}

fn task(name: &str) -> Value {
    json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": name}, "spec": {"image": "busybox"}})
}

fn binding(namespace: &str, name: &str, kind: &str, role: &str, user: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
    })
}

fn role(namespace: &str, name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    })
}

/// Asks (as the administrator) whether `user` may `verb` `resource` in
/// `namespace`, by a SubjectAccessReview.
async fn may(admin: &JsonClient, user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    // `tasks/status#t1`: a subresource of the object t1.
    let (resource, name) = resource.split_once('#').unwrap_or((resource, ""));
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (code, review) = admin
        .post(
            &format!("{REVIEWS}/subjectaccessreviews"),
            &json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": ["system:authenticated"],
                    "resourceAttributes": {"verb": verb, "group": "loom.dev", "resource": resource, "subresource": subresource, "namespace": namespace, "name": name},
                },
            }),
        )
        .await;
    assert_eq!(code, 201, "{review}");
    review["status"]["allowed"] == true
}

/// Waits until the authorizer has seen a binding: `user` may `verb`.
async fn wait_until_may(admin: &JsonClient, user: &str, verb: &str, resource: &str, ns: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !may(admin, user, verb, resource, ns).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} never may {verb} {resource} in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Namespaces `a` and `b`; in `a`: alice edits, vic views, adam administers,
/// bob may patch the status of task t1 only; task t1 exists.
async fn cluster() -> (TestServer, JsonClient) {
    let server = TestServer::embedded(config()).await.unwrap();
    let admin = JsonClient::new(&server);
    for ns in ["a", "b"] {
        let (code, body) = admin
            .post(
                "/apis/loom.dev/v1/namespaces",
                &json!({"apiVersion": "loom.dev/v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    let rolebindings = format!("{RBAC}/namespaces/a/rolebindings");
    for (name, kind, role_name, user) in [
        ("alice-edit", "ClusterRole", "edit", "alice"),
        ("vic-view", "ClusterRole", "view", "vic"),
        ("adam-admin", "ClusterRole", "admin", "adam"),
        ("bob-status", "Role", "status-writer", "bob"),
    ] {
        let (code, body) = admin
            .post(&rolebindings, &binding("a", name, kind, role_name, user))
            .await;
        assert_eq!(code, 201, "{body}");
    }
    let (code, body) = admin
        .post(
            &format!("{RBAC}/namespaces/a/roles"),
            &role(
                "a",
                "status-writer",
                json!([{"apiGroups": ["loom.dev"], "resources": ["tasks/status"], "resourceNames": ["t1"], "verbs": ["patch", "update"]}]),
            ),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin.post(&tasks("a"), &task("t1")).await;
    assert_eq!(code, 201, "{body}");
    wait_until_may(&admin, "alice", "create", "tasks", "a").await;
    wait_until_may(&admin, "vic", "get", "tasks", "a").await;
    wait_until_may(&admin, "adam", "create", "tasks", "a").await;
    wait_until_may(&admin, "bob", "patch", "tasks/status#t1", "a").await;
    (server, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_decision_table() {
    let (server, admin) = cluster().await;
    let alice = as_user(&server, "alice", None);
    let vic = as_user(&server, "vic", None);
    let bob = as_user(&server, "bob", None);
    let carol = as_user(&server, "carol", None);
    let nobody = anonymous(&server);
    let scheduler = as_user(&server, "system:loom-scheduler", None);
    let controllers = as_user(&server, "system:loom-controllers", None);
    let node = as_user(&server, "system:node:n1", Some("system:nodes"));
    let status = |phase: &str| format!(r#"{{"status":{{"phase":"{phase}"}}}}"#);
    let merge = "application/merge-patch+json";
    let node_object =
        json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": "n1"}});
    let job = json!({"apiVersion": "loom.dev/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {"image": "busybox"}}}});
    type Case<'a> = (&'a str, &'a JsonClient, Method, String, Option<String>, u16);
    let post = |value: &Value| Some(value.to_string());
    let cases: Vec<Case> = vec![
        // The administrator (system:masters) may do anything.
        (
            "admin",
            &admin,
            Method::GET,
            "/apis/loom.dev/v1/nodes".into(),
            None,
            200,
        ),
        ("admin", &admin, Method::GET, "/metrics".into(), None, 200),
        // An editor, in its namespace only.
        (
            "alice",
            &alice,
            Method::POST,
            tasks("a"),
            post(&task("t2")),
            201,
        ),
        ("alice", &alice, Method::GET, tasks("a"), None, 200),
        (
            "alice",
            &alice,
            Method::GET,
            format!("{}/t1", tasks("a")),
            None,
            200,
        ),
        (
            "alice",
            &alice,
            Method::DELETE,
            format!("{}/t2", tasks("a")),
            None,
            200,
        ),
        (
            "alice",
            &alice,
            Method::POST,
            tasks("b"),
            post(&task("t3")),
            403,
        ),
        ("alice", &alice, Method::GET, tasks("b"), None, 403),
        (
            "alice",
            &alice,
            Method::GET,
            "/apis/loom.dev/v1/tasks".into(),
            None,
            403,
        ),
        (
            "alice",
            &alice,
            Method::GET,
            "/apis/loom.dev/v1/nodes".into(),
            None,
            403,
        ),
        (
            "alice",
            &alice,
            Method::PATCH,
            format!("{}/t1/status", tasks("a")),
            Some(status("Running")),
            403,
        ),
        (
            "alice",
            &alice,
            Method::GET,
            format!("{RBAC}/namespaces/a/rolebindings"),
            None,
            403,
        ),
        // A viewer reads and writes nothing.
        (
            "vic",
            &vic,
            Method::GET,
            format!("{}/t1", tasks("a")),
            None,
            200,
        ),
        (
            "vic",
            &vic,
            Method::GET,
            format!("{}?watch=false", tasks("a")),
            None,
            200,
        ),
        (
            "vic",
            &vic,
            Method::POST,
            tasks("a"),
            post(&task("v1")),
            403,
        ),
        (
            "vic",
            &vic,
            Method::DELETE,
            format!("{}/t1", tasks("a")),
            None,
            403,
        ),
        ("vic", &vic, Method::DELETE, tasks("a"), None, 403),
        // A role limited to one name and one subresource.
        (
            "bob",
            &bob,
            Method::PATCH,
            format!("{}/t1/status", tasks("a")),
            Some(status("Running")),
            200,
        ),
        (
            "bob",
            &bob,
            Method::PATCH,
            format!("{}/t1", tasks("a")),
            Some(r#"{"metadata":{"labels":{"x":"y"}}}"#.into()),
            403,
        ),
        (
            "bob",
            &bob,
            Method::GET,
            format!("{}/t1", tasks("a")),
            None,
            403,
        ),
        // Authenticated, bound to nothing: discovery and the health checks only.
        ("carol", &carol, Method::GET, "/apis".into(), None, 200),
        (
            "carol",
            &carol,
            Method::GET,
            "/apis/loom.dev/v1".into(),
            None,
            200,
        ),
        ("carol", &carol, Method::GET, "/healthz".into(), None, 200),
        ("carol", &carol, Method::GET, "/metrics".into(), None, 403),
        ("carol", &carol, Method::GET, tasks("a"), None, 403),
        (
            "carol",
            &carol,
            Method::POST,
            tasks("a"),
            post(&task("c1")),
            403,
        ),
        // Anonymous: the open paths only.
        (
            "anonymous",
            &nobody,
            Method::GET,
            "/healthz".into(),
            None,
            200,
        ),
        (
            "anonymous",
            &nobody,
            Method::GET,
            "/version".into(),
            None,
            200,
        ),
        ("anonymous", &nobody, Method::GET, "/apis".into(), None, 403),
        ("anonymous", &nobody, Method::GET, tasks("a"), None, 403),
        // The components, each with what it needs.
        (
            "scheduler",
            &scheduler,
            Method::GET,
            "/apis/loom.dev/v1/tasks?watch=false".into(),
            None,
            200,
        ),
        (
            "scheduler",
            &scheduler,
            Method::GET,
            "/apis/loom.dev/v1/nodes".into(),
            None,
            200,
        ),
        (
            "scheduler",
            &scheduler,
            Method::PATCH,
            format!("{}/t1/status", tasks("a")),
            Some(status("Pending")),
            200,
        ),
        (
            "scheduler",
            &scheduler,
            Method::POST,
            tasks("a"),
            post(&task("s1")),
            403,
        ),
        (
            "scheduler",
            &scheduler,
            Method::DELETE,
            format!("{}/t1", tasks("a")),
            None,
            403,
        ),
        (
            "scheduler",
            &scheduler,
            Method::GET,
            "/apis/loom.dev/v1/jobs".into(),
            None,
            403,
        ),
        (
            "controllers",
            &controllers,
            Method::POST,
            "/apis/loom.dev/v1/namespaces/a/jobs".into(),
            post(&job),
            201,
        ),
        (
            "controllers",
            &controllers,
            Method::GET,
            "/apis/loom.dev/v1/nodes".into(),
            None,
            200,
        ),
        (
            "controllers",
            &controllers,
            Method::DELETE,
            "/apis/loom.dev/v1/nodes/n9".into(),
            None,
            403,
        ),
        (
            "controllers",
            &controllers,
            Method::POST,
            format!("{RBAC}/clusterroles"),
            post(&json!({})),
            403,
        ),
        (
            "node",
            &node,
            Method::POST,
            "/apis/loom.dev/v1/nodes".into(),
            post(&node_object),
            201,
        ),
        (
            "node",
            &node,
            Method::GET,
            "/apis/loom.dev/v1/namespaces/a/services".into(),
            None,
            200,
        ),
        (
            "node",
            &node,
            Method::POST,
            tasks("a"),
            post(&task("n1")),
            403,
        ),
        (
            "node",
            &node,
            Method::DELETE,
            "/apis/loom.dev/v1/nodes/n1".into(),
            None,
            403,
        ),
    ];
    for (who, client, method, path, body, expected) in cases {
        let content_type = if method == Method::PATCH {
            merge
        } else {
            "application/json"
        };
        let (code, answer) = client
            .send(
                method.clone(),
                &path,
                content_type,
                body.map(String::into_bytes),
            )
            .await;
        assert_eq!(code, expected, "{who} {method} {path}: {answer}");
        if expected == 403 {
            assert_eq!(answer["kind"], "Status", "{who} {method} {path}: {answer}");
            assert_eq!(answer["reason"], "Forbidden", "{answer}");
        }
    }
    // Denied writes wrote nothing.
    for name in ["t3", "v1", "c1", "s1", "n1"] {
        for ns in ["a", "b"] {
            let (code, _) = admin.get(&format!("{}/{name}", tasks(ns))).await;
            assert_eq!(code, 404, "{ns}/{name} must not exist");
        }
    }
    let (code, _) = admin.get(&format!("{}/t1", tasks("a"))).await;
    assert_eq!(code, 200, "a denied delete deletes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denial_names_the_user_the_verb_the_resource_and_the_namespace() {
    let (server, _admin) = cluster().await;
    let alice = as_user(&server, "alice", None);
    let (code, status) = alice.post(&tasks("b"), &task("x")).await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        r#"tasks.loom.dev is forbidden: User "alice" cannot create resource "tasks" in API group "loom.dev" in the namespace "b""#
    );
    assert_eq!(status["details"]["group"], "loom.dev");
    assert_eq!(status["details"]["kind"], "tasks");
    let (_, status) = alice.get("/apis/loom.dev/v1/nodes/n1").await;
    assert_eq!(
        status["message"],
        r#"nodes.loom.dev "n1" is forbidden: User "alice" cannot get resource "nodes" in API group "loom.dev" at the cluster scope"#
    );
    let (_, status) = alice
        .send(
            Method::PUT,
            &format!("{}/t1/status", tasks("a")),
            "application/json",
            Some(task("t1").to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        status["message"],
        r#"tasks.loom.dev "t1" is forbidden: User "alice" cannot update resource "tasks/status" in API group "loom.dev" in the namespace "a""#
    );
    let (_, status) = as_user(&server, "carol", None).get("/metrics").await;
    assert_eq!(
        status["message"],
        r#"forbidden: User "carol" cannot get path "/metrics""#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_watch_gets_a_403_and_never_an_event() {
    let (server, admin) = cluster().await;
    let carol = as_user(&server, "carol", None);
    let response = carol
        .http
        .get(format!("{}{}?watch=true", server.url, tasks("a")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    // The whole answer is one Status: no event of t1 (which exists) leaks.
    let body = tokio::time::timeout(Duration::from_secs(5), response.text())
        .await
        .expect("a refused watch ends at once")
        .unwrap();
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert!(
        !body.contains("ADDED") && !body.contains("\"t1\""),
        "{body}"
    );
    // A watch of every namespace is refused to someone who may watch one.
    let vic = as_user(&server, "vic", None);
    let (code, _) = vic.get("/apis/loom.dev/v1/tasks?watch=true").await;
    assert_eq!(code, 403);
    // The one allowed sees events.
    let mut watch = vic.watch(&format!("{}?watch=true", tasks("a"))).await;
    let first = watch.next_change().await;
    assert_eq!(first["object"]["metadata"]["name"], "t1");
    admin.post(&tasks("a"), &task("t9")).await;
    let next = watch.next_change().await;
    assert_eq!(next["object"]["metadata"]["name"], "t9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nobody_grants_more_than_it_holds() {
    let (server, admin) = cluster().await;
    let alice = as_user(&server, "alice", None);
    let adam = as_user(&server, "adam", None);
    let make_admin = |name: &str, user: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
        })
    };
    // An editor cannot make itself cluster-admin, by any binding.
    let (code, status) = alice
        .post(
            &format!("{RBAC}/clusterrolebindings"),
            &make_admin("alice-root", "alice"),
        )
        .await;
    assert_eq!(code, 403, "{status}");
    let (code, _) = alice
        .post(
            &format!("{RBAC}/namespaces/a/rolebindings"),
            &binding("a", "alice-root", "ClusterRole", "cluster-admin", "alice"),
        )
        .await;
    assert_eq!(code, 403);
    let (code, _) = alice
        .post(
            &format!("{RBAC}/namespaces/a/roles"),
            &role(
                "a",
                "all",
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            ),
        )
        .await;
    assert_eq!(code, 403);
    // A namespace admin may grant what it holds, there...
    let roles = format!("{RBAC}/namespaces/a/roles");
    let (code, body) = adam
        .post(
            &roles,
            &role("a", "readers", json!([{"apiGroups": ["loom.dev"], "resources": ["tasks"], "verbs": ["get", "list"]}])),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = adam
        .post(
            &format!("{RBAC}/namespaces/a/rolebindings"),
            &binding("a", "erin-edit", "ClusterRole", "edit", "erin"),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    wait_until_may(&admin, "erin", "create", "tasks", "a").await;
    // ...but not more.
    let (code, status) = adam
        .post(
            &roles,
            &role("a", "nodes", json!([{"apiGroups": ["loom.dev"], "resources": ["nodes", "tasks"], "verbs": ["get"]}])),
        )
        .await;
    assert_eq!(code, 403, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(r#"roles.rbac.authorization.k8s.io "nodes" is forbidden: user "adam""#)
            && message.contains("is attempting to grant RBAC permissions not currently held")
            && message.contains(r#"{APIGroups:["loom.dev"], Resources:["nodes"], Verbs:["get"]}"#)
            && !message.contains(r#"Resources:["tasks"]"#),
        "{message}"
    );
    let (code, status) = adam
        .post(
            &format!("{RBAC}/namespaces/a/rolebindings"),
            &binding("a", "adam-root", "ClusterRole", "cluster-admin", "adam"),
        )
        .await;
    assert_eq!(code, 403, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("not currently held")
    );
    let (code, _) = adam
        .post(
            &format!("{RBAC}/namespaces/b/rolebindings"),
            &binding("b", "adam-b", "ClusterRole", "view", "adam"),
        )
        .await;
    assert_eq!(code, 403, "an admin of a is nothing in b");
    // Updating a role to grant more is the same escalation.
    let (_, mut readers) = adam.get(&format!("{roles}/readers")).await;
    readers["rules"][0]["resources"] = json!(["tasks", "nodes"]);
    let (code, _) = adam.put(&format!("{roles}/readers"), &readers).await;
    assert_eq!(code, 403);
    // `bind` on a role lets one grant it without holding it.
    let (code, body) = admin
        .post(
            &format!("{RBAC}/clusterroles"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "view-granter"},
                "rules": [
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create"]},
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["view"], "verbs": ["bind"]},
                ],
            }),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    admin
        .post(
            &format!("{RBAC}/namespaces/a/rolebindings"),
            &binding("a", "dana-granter", "ClusterRole", "view-granter", "dana"),
        )
        .await;
    let dana = as_user(&server, "dana", None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = dana
            .post(
                &format!("{RBAC}/namespaces/a/rolebindings"),
                &binding("a", "fred-view", "ClusterRole", "view", "fred"),
            )
            .await;
        if code == 201 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{code} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _) = dana
        .post(
            &format!("{RBAC}/namespaces/a/rolebindings"),
            &binding("a", "fred-edit", "ClusterRole", "edit", "fred"),
        )
        .await;
    assert_eq!(code, 403);
    // Nothing of the refused writes was stored.
    for path in [
        format!("{RBAC}/clusterrolebindings/alice-root"),
        format!("{RBAC}/namespaces/a/rolebindings/alice-root"),
        format!("{RBAC}/namespaces/a/rolebindings/adam-root"),
        format!("{RBAC}/namespaces/a/roles/nodes"),
        format!("{RBAC}/namespaces/a/rolebindings/fred-edit"),
    ] {
        assert_eq!(admin.get(&path).await.0, 404, "{path}");
    }
    let (_, readers) = admin.get(&format!("{roles}/readers")).await;
    assert_eq!(readers["rules"][0]["resources"], json!(["tasks"]));
}

/// A node is only itself (the Node authorizer and NodeRestriction).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_is_only_itself() {
    let (server, admin) = cluster().await;
    let n1 = as_user(&server, "system:node:n1", Some("system:nodes"));
    let node = |name: &str| json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": name}});
    let bound = |name: &str, node: &str| json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": name}, "spec": {"image": "busybox", "nodeName": node}});
    let lease = |name: &str| json!({"apiVersion": "loom.dev/v1", "kind": "Lease", "metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}});
    let token_request = |task: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"boundObjectRef": {"kind": "Task", "apiVersion": "loom.dev/v1", "name": task}}}).to_string()
    };
    let nodes = "/apis/loom.dev/v1/nodes";
    let leases = "/apis/loom.dev/v1/namespaces/loom-node-lease/leases";
    let (code, body) = admin
        .post(
            "/apis/loom.dev/v1/namespaces",
            &json!({"apiVersion": "loom.dev/v1", "kind": "Namespace", "metadata": {"name": "loom-node-lease"}}),
        )
        .await;
    assert!(code == 201 || code == 409, "{body}");
    assert_eq!(admin.post(nodes, &node("n2")).await.0, 201);
    for (name, on) in [("on1", "n1"), ("on2", "n2")] {
        let (code, body) = admin.post(&tasks("a"), &bound(name, on)).await;
        assert_eq!(code, 201, "{body}");
    }
    assert_eq!(admin.post(leases, &lease("n2")).await.0, 201);
    let merge = "application/merge-patch+json";
    let label = r#"{"metadata":{"labels":{"x":"y"}}}"#.to_owned();
    let running = r#"{"status":{"phase":"Running"}}"#.to_owned();
    type Case = (Method, String, Option<String>, u16);
    let cases: Vec<Case> = vec![
        // Its own Node and Lease, and only those.
        (
            Method::POST,
            nodes.into(),
            Some(node("n1").to_string()),
            201,
        ),
        (
            Method::POST,
            nodes.into(),
            Some(node("n3").to_string()),
            403,
        ),
        (Method::GET, format!("{nodes}/n1"), None, 200),
        (
            Method::PATCH,
            format!("{nodes}/n1"),
            Some(label.clone()),
            200,
        ),
        (
            Method::PATCH,
            format!("{nodes}/n1/status"),
            Some(r#"{"status":{}}"#.into()),
            200,
        ),
        (Method::GET, format!("{nodes}/n2"), None, 403),
        (
            Method::PATCH,
            format!("{nodes}/n2"),
            Some(label.clone()),
            403,
        ),
        (
            Method::PATCH,
            format!("{nodes}/n2/status"),
            Some(r#"{"status":{}}"#.into()),
            403,
        ),
        (Method::DELETE, format!("{nodes}/n1"), None, 403),
        (Method::GET, nodes.into(), None, 200),
        (
            Method::POST,
            leases.into(),
            Some(lease("n1").to_string()),
            201,
        ),
        (
            Method::POST,
            leases.into(),
            Some(lease("n9").to_string()),
            403,
        ),
        (Method::GET, format!("{leases}/n1"), None, 200),
        (
            Method::PATCH,
            format!("{leases}/n2"),
            Some(label.clone()),
            403,
        ),
        (Method::GET, format!("{leases}/n2"), None, 403),
        // The tasks bound to it: listed by its selector, their status written.
        (
            Method::GET,
            "/apis/loom.dev/v1/tasks?fieldSelector=spec.nodeName%3Dn1".into(),
            None,
            200,
        ),
        (Method::GET, "/apis/loom.dev/v1/tasks".into(), None, 403),
        (
            Method::GET,
            "/apis/loom.dev/v1/tasks?fieldSelector=spec.nodeName%3Dn2".into(),
            None,
            403,
        ),
        (Method::GET, format!("{}/on1", tasks("a")), None, 200),
        (Method::GET, format!("{}/on2", tasks("a")), None, 403),
        (Method::GET, format!("{}/t1", tasks("a")), None, 403),
        (
            Method::PATCH,
            format!("{}/on1/status", tasks("a")),
            Some(running.clone()),
            200,
        ),
        (
            Method::PATCH,
            format!("{}/on2/status", tasks("a")),
            Some(running.clone()),
            403,
        ),
        (
            Method::PATCH,
            format!("{}/on1", tasks("a")),
            Some(label.clone()),
            403,
        ),
        (Method::DELETE, format!("{}/on1", tasks("a")), None, 403),
        (
            Method::POST,
            tasks("a"),
            Some(bound("mine", "n1").to_string()),
            403,
        ),
        // Tokens of the accounts its tasks run as, and no other.
        (
            Method::POST,
            "/api/v1/namespaces/a/serviceaccounts/default/token".into(),
            Some(token_request("on1")),
            201,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/a/serviceaccounts/robot/token".into(),
            Some(token_request("on1")),
            403,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/b/serviceaccounts/default/token".into(),
            Some(token_request("on1")),
            403,
        ),
        // Reviews of its own callers.
        (
            Method::POST,
            format!("{REVIEWS}/subjectaccessreviews"),
            Some(json!({"spec": {"user": "alice", "resourceAttributes": {"verb": "get", "group": "loom.dev", "resource": "tasks", "namespace": "a"}}}).to_string()),
            201,
        ),
        // Services to list; nothing else of the cluster.
        (Method::GET, "/apis/loom.dev/v1/services".into(), None, 200),
        (Method::GET, "/apis/loom.dev/v1/jobs".into(), None, 403),
        (Method::GET, format!("{RBAC}/clusterroles"), None, 403),
    ];
    for (method, path, body, expected) in cases {
        let content_type = if method == Method::PATCH {
            merge
        } else {
            "application/json"
        };
        let (code, answer) = n1
            .send(
                method.clone(),
                &path,
                content_type,
                body.map(String::into_bytes),
            )
            .await;
        assert_eq!(code, expected, "{method} {path}: {answer}");
    }
    // Nothing of another node was written.
    let (_, n2) = admin.get(&format!("{nodes}/n2")).await;
    assert!(n2["metadata"]["labels"]["x"].is_null(), "{n2}");
    let (_, on2) = admin.get(&format!("{}/on2", tasks("a"))).await;
    assert_ne!(on2["status"]["phase"], "Running", "{on2}");
    assert_eq!(admin.get(&format!("{nodes}/n3")).await.0, 404);
    assert_eq!(admin.get(&format!("{leases}/n9")).await.0, 404);
    let (_, denied) = n1.get(&format!("{nodes}/n2")).await;
    assert_eq!(
        denied["message"],
        r#"nodes.loom.dev "n2" is forbidden: User "system:node:n1" cannot get resource "nodes" in API group "loom.dev" at the cluster scope: no relationship found between node "n1" and this object"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rbac_objects_are_validated() {
    let server = TestServer::embedded(config()).await.unwrap();
    let admin = JsonClient::new(&server);
    let (code, status) = admin
        .post(
            &format!("{RBAC}/clusterroles"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "bad"},
                "rules": [{"apiGroups": ["loom.dev"], "resources": ["tasks"], "verbs": ["get", "steal"]}],
            }),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "rules[0].verbs[1]");
    assert!(
        status["message"].as_str().unwrap().contains("steal"),
        "{status}"
    );
    let (code, status) = admin
        .post(
            &format!("{RBAC}/clusterrolebindings"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "bad"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Robot", "name": "view"},
                "subjects": [{"kind": "User", "name": "x"}],
            }),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("roleRef"),
        "{status}"
    );
    let (code, status) = admin
        .post(
            &format!("{RBAC}/clusterrolebindings"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "ok"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "x"}],
            }),
        )
        .await;
    assert_eq!(code, 201, "{status}");
    let mut changed = status.clone();
    changed["roleRef"]["name"] = json!("cluster-admin");
    let (code, status) = admin
        .put(&format!("{RBAC}/clusterrolebindings/ok"), &changed)
        .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("cannot change roleRef"),
        "{status}"
    );
    let (_, stored) = admin.get(&format!("{RBAC}/clusterrolebindings/ok")).await;
    assert_eq!(stored["roleRef"]["name"], "view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_reviews_answer_for_the_asker_and_for_others() {
    let (server, admin) = cluster().await;
    let alice = as_user(&server, "alice", None);
    let ssar = |verb: &str, namespace: &str| {
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "group": "loom.dev", "resource": "tasks", "namespace": namespace}},
        })
    };
    let path = format!("{REVIEWS}/selfsubjectaccessreviews");
    let (code, review) = alice.post(&path, &ssar("create", "a")).await;
    assert_eq!(code, 201, "{review}");
    assert_eq!(review["kind"], "SelfSubjectAccessReview");
    assert_eq!(review["status"]["allowed"], true, "{review}");
    assert!(
        review["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("alice-edit")
    );
    let (_, review) = alice.post(&path, &ssar("create", "b")).await;
    assert_eq!(review["status"]["allowed"], false);
    let (_, review) = alice
        .post(
            &path,
            &json!({"spec": {"nonResourceAttributes": {"path": "/metrics", "verb": "get"}}}),
        )
        .await;
    assert_eq!(review["status"]["allowed"], false);
    let (code, status) = alice.post(&path, &json!({"spec": {}})).await;
    assert_eq!(code, 422, "{status}");
    // Another user's rights: for whoever may create SubjectAccessReviews.
    assert!(may(&admin, "vic", "get", "tasks", "a").await);
    assert!(!may(&admin, "vic", "delete", "tasks", "a").await);
    let (code, _) = alice
        .post(
            &format!("{REVIEWS}/subjectaccessreviews"),
            &json!({"spec": {"user": "vic", "resourceAttributes": {"verb": "get", "resource": "tasks"}}}),
        )
        .await;
    assert_eq!(code, 403);
    // Every rule of the asker in a namespace.
    let (code, rules) = alice
        .post(
            &format!("{REVIEWS}/selfsubjectrulesreviews"),
            &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "a"}}),
        )
        .await;
    assert_eq!(code, 201, "{rules}");
    let resource_rules = rules["status"]["resourceRules"].as_array().unwrap();
    assert!(resource_rules.iter().any(|r| {
        r["resources"].as_array().unwrap().contains(&json!("tasks"))
            && r["verbs"].as_array().unwrap().contains(&json!("create"))
    }));
    assert!(
        rules["status"]["nonResourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["nonResourceURLs"]
                .as_array()
                .unwrap()
                .contains(&json!("/apis")))
    );
    // Discovered, with the one verb they have.
    let (_, groups) = alice.get("/apis").await;
    assert!(
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "authorization.k8s.io")
    );
    let (code, list) = alice.get(REVIEWS).await;
    assert_eq!(code, 200);
    assert_eq!(list["resources"].as_array().unwrap().len(), 4);
    let (code, _) = admin.get(&path).await;
    assert_eq!(code, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_roles_exist_and_come_back() {
    let mut server = TestServer::embedded(config()).await.unwrap();
    let admin = JsonClient::new(&server);
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:public-info-viewer",
        "system:discovery",
        "system:loom-scheduler",
        "system:loom-controllers",
        "system:node",
        "system:node-bootstrapper",
    ] {
        let (code, role) = admin.get(&format!("{RBAC}/clusterroles/{name}")).await;
        assert_eq!(code, 200, "{name}: {role}");
    }
    let (_, binding) = admin
        .get(&format!("{RBAC}/clusterrolebindings/cluster-admin"))
        .await;
    assert_eq!(binding["subjects"][0]["name"], "system:masters");
    let (code, _) = admin.delete(&format!("{RBAC}/clusterroles/view")).await;
    assert_eq!(code, 200);
    assert_eq!(admin.get(&format!("{RBAC}/clusterroles/view")).await.0, 404);
    // edit loses a rule and gains one; admin is no longer updated.
    let extra = json!({"apiGroups": ["loom.dev"], "resources": ["nodes"], "verbs": ["get"]});
    let (_, mut edit) = admin.get(&format!("{RBAC}/clusterroles/edit")).await;
    let original = edit["rules"].clone();
    edit["rules"] = json!([extra]);
    let (code, body) = admin.put(&format!("{RBAC}/clusterroles/edit"), &edit).await;
    assert_eq!(code, 200, "{body}");
    let (_, mut admin_role) = admin.get(&format!("{RBAC}/clusterroles/admin")).await;
    admin_role["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
        json!("false");
    admin_role["rules"] = json!([extra]);
    let (code, body) = admin
        .put(&format!("{RBAC}/clusterroles/admin"), &admin_role)
        .await;
    assert_eq!(code, 200, "{body}");
    server.restart(config()).await.unwrap();
    let admin = JsonClient::new(&server);
    assert_eq!(admin.get(&format!("{RBAC}/clusterroles/view")).await.0, 200);
    let (_, edit) = admin.get(&format!("{RBAC}/clusterroles/edit")).await;
    let rules = edit["rules"].as_array().unwrap();
    assert_eq!(rules[0], extra, "what a user added stays");
    for rule in original.as_array().unwrap() {
        assert!(rules.contains(rule), "{rule} is back in {rules:?}");
    }
    let (_, admin_role) = admin.get(&format!("{RBAC}/clusterroles/admin")).await;
    assert_eq!(
        admin_role["rules"],
        json!([extra]),
        "autoupdate false is left alone"
    );
}

/// `kubectl auth can-i`, as alice and as a viewer, with the real kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_auth_can_i() {
    let Some(kubectl) = which("kubectl") else {
        println!("kubectl_auth_can_i: skipped because kubectl is absent (not on PATH)");
        return;
    };
    let (server, _admin) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |user: &str, args: &[&str]| {
        let kubeconfig = kubeconfig_for(&server, dir.path(), user);
        let mut command = std::process::Command::new(&kubectl);
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", dir.path())
            .env("KUBECACHEDIR", dir.path().join(format!("cache-{user}")));
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = run("alice", &["auth", "can-i", "create", "tasks", "-n", "a"]);
    assert_eq!((code, out.trim()), (Some(0), "yes"), "{err}");
    let (code, out, err) = run("alice", &["auth", "can-i", "create", "tasks", "-n", "b"]);
    assert_eq!((code, out.trim()), (Some(1), "no"), "{err}");
    let (code, out, err) = run(
        "vic",
        &["auth", "can-i", "delete", "tasks.loom.dev", "-n", "a"],
    );
    assert_eq!((code, out.trim()), (Some(1), "no"), "{err}");
    let (code, out, err) = run("alice", &["auth", "can-i", "--list", "-n", "a"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("tasks.loom.dev"), "{out}");
    // A view-only user's create is refused in Kubernetes' words.
    let manifest = dir.path().join("task.json");
    std::fs::write(&manifest, task("k1").to_string()).unwrap();
    let (code, out, err) = run(
        "vic",
        &["create", "-n", "a", "-f", manifest.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(r#"Error from server (Forbidden)"#)
            && err.contains(r#"User "vic" cannot create resource "tasks" in API group "loom.dev" in the namespace "a""#),
        "{err}"
    );
}

fn which(binary: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|c| {
            c.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A kubeconfig for `user`, with a client certificate of the test CA.
fn kubeconfig_for(server: &TestServer, dir: &Path, user: &str) -> std::path::PathBuf {
    let identity = server.pki.user(user, None);
    let cert = dir.join(format!("{user}.crt"));
    let key = dir.join(format!("{user}.key"));
    std::fs::write(&cert, &identity.cert_pem).unwrap();
    std::fs::write(&key, &identity.key_pem).unwrap();
    let path = dir.join(format!("{user}.conf"));
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "loom", "cluster": {"server": server.url, "certificate-authority": server.files.ca}}],
        "users": [{"name": user, "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": user, "context": {"cluster": "loom", "user": user}}],
        "current-context": user,
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}
