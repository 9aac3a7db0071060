//! The `scale` subresource of Services through the real API server: the
//! autoscaling/v1 Scale a GET answers, PUT and every PATCH format changing
//! only `spec.replicas`, the resourceVersion precondition, the Service's
//! bounds (422 naming `spec.replicas`), discovery, RBAC's `services/scale`
//! apart from `services`, and the real `kubectl scale` and
//! `kubectl get --subresource=scale`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use apiserver::authz::Authorization;
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use serde_json::{Value, json};

const SERVICES: &str = "/apis/loom.dev/v1/namespaces/default/services";
const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

fn service(name: &str, replicas: Option<i32>) -> Value {
    let mut svc = json!({
        "apiVersion": "loom.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "template": {"spec": {"image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    });
    if let Some(replicas) = replicas {
        svc["spec"]["replicas"] = json!(replicas);
    }
    svc
}

fn scale_path(name: &str) -> String {
    format!("{SERVICES}/{name}/scale")
}

async fn create(api: &JsonClient, svc: &Value) -> Value {
    let (code, body) = api.post(SERVICES, svc).await;
    assert_eq!(code, 201, "{body}");
    body
}

async fn get_service(api: &JsonClient, name: &str) -> Value {
    let (code, body) = api.get(&format!("{SERVICES}/{name}")).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Asserts a 422 for the Scale `name` whose one cause is on `spec.replicas`
/// and says `rule`.
fn assert_invalid_replicas(code: u16, body: &Value, name: &str, rule: &str) {
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["reason"], "Invalid", "{body}");
    assert_eq!(body["details"]["kind"], "Scale", "{body}");
    assert_eq!(body["details"]["group"], "autoscaling", "{body}");
    assert_eq!(body["details"]["name"], name, "{body}");
    let causes = body["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{body}");
    assert_eq!(causes[0]["field"], "spec.replicas", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "Scale.autoscaling \"{name}\" is invalid: spec.replicas:"
        )),
        "{message}"
    );
    assert!(message.contains(rule), "{message} should say {rule:?}");
}

#[tokio::test]
async fn get_put_and_patch_change_only_spec_replicas() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let api = JsonClient::new(&server);
    let created = create(&api, &service("web", Some(2))).await;

    // GET: the Service's identity, its replicas and its tasks' selector.
    let (code, scale) = api.get(&scale_path("web")).await;
    assert_eq!(code, 200, "{scale}");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["kind"], "Scale");
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        assert_eq!(
            scale["metadata"][field], created["metadata"][field],
            "metadata.{field}: {scale}"
        );
    }
    assert!(
        scale["metadata"].get("labels").is_none(),
        "only the identity: {scale}"
    );
    assert_eq!(scale["spec"], json!({"replicas": 2}));
    assert_eq!(
        scale["status"],
        json!({"replicas": 0, "selector": "loom.dev/service=web"})
    );

    // A Service that names no replicas runs one.
    create(&api, &service("one", None)).await;
    let (_, one) = api.get(&scale_path("one")).await;
    assert_eq!(one["spec"]["replicas"], 1, "{one}");

    // PUT without a resourceVersion: the replicas, and nothing else, change.
    let before = get_service(&api, "web").await;
    let (code, put) = api
        .put(
            &scale_path("web"),
            &json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"}, "spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["kind"], "Scale");
    assert_eq!(put["spec"]["replicas"], 5);
    let after = get_service(&api, "web").await;
    assert_eq!(
        put["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(after["spec"]["replicas"], 5);
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"].as_i64().unwrap() + 1,
        "a spec change moves the generation"
    );
    let mut unchanged = after.clone();
    unchanged["spec"]["replicas"] = before["spec"]["replicas"].clone();
    for field in ["resourceVersion", "generation", "managedFields"] {
        unchanged["metadata"][field] = before["metadata"][field].clone();
    }
    assert_eq!(unchanged, before, "only spec.replicas changed");

    // PUT with the current resourceVersion; then with a stale one: 409, unwritten.
    let current = after["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, put) = api
        .put(
            &scale_path("web"),
            &json!({"metadata": {"name": "web", "resourceVersion": current}, "spec": {"replicas": 4}}),
        )
        .await;
    assert_eq!(code, 200, "{put}");
    let (code, stale) = api
        .put(
            &scale_path("web"),
            &json!({"metadata": {"name": "web", "resourceVersion": current}, "spec": {"replicas": 9}}),
        )
        .await;
    assert_eq!(code, 409, "{stale}");
    assert_eq!(stale["reason"], "Conflict", "{stale}");
    assert!(
        stale["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified"),
        "{stale}"
    );
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 4);
    // A uid that is not the Service's is a conflict too.
    let (code, body) = api
        .put(
            &scale_path("web"),
            &json!({"metadata": {"uid": "not-its-uid"}, "spec": {"replicas": 9}}),
        )
        .await;
    assert_eq!(code, 409, "{body}");

    // Every patch format kubectl and clients send.
    for (content_type, patch, replicas) in [
        (MERGE, r#"{"spec":{"replicas":3}}"#.to_owned(), 3),
        (STRATEGIC, r#"{"spec":{"replicas":6}}"#.to_owned(), 6),
        (
            JSON_PATCH,
            r#"[{"op":"test","path":"/spec/replicas","value":6},{"op":"replace","path":"/spec/replicas","value":7}]"#
                .to_owned(),
            7,
        ),
        (
            MERGE,
            // Zero is a replica count like any other.
            r#"{"spec":{"replicas":0}}"#.to_owned(),
            0,
        ),
    ] {
        let (code, body) = api.patch(&scale_path("web"), content_type, &patch).await;
        assert_eq!(code, 200, "{content_type} {patch}: {body}");
        assert_eq!(body["spec"]["replicas"], replicas, "{body}");
        assert_eq!(
            get_service(&api, "web").await["spec"]["replicas"],
            replicas,
            "{content_type} {patch}"
        );
    }

    // A merge patch's resourceVersion is a precondition.
    let svc = get_service(&api, "web").await;
    let rv = svc["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let stale_rv: i64 = rv.parse::<i64>().unwrap() - 1;
    let (code, body) = api
        .patch(
            &scale_path("web"),
            MERGE,
            &json!({"metadata": {"resourceVersion": stale_rv.to_string()}, "spec": {"replicas": 8}}).to_string(),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = api
        .patch(
            &scale_path("web"),
            MERGE,
            &json!({"metadata": {"resourceVersion": rv}, "spec": {"replicas": 8}}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // A JSON patch's failed test writes nothing.
    let (code, body) = api
        .patch(
            &scale_path("web"),
            JSON_PATCH,
            r#"[{"op":"test","path":"/spec/replicas","value":1},{"op":"replace","path":"/spec/replicas","value":2}]"#,
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 8);

    // The status a client sends is not the Service's.
    let (code, body) = api
        .patch(&scale_path("web"), MERGE, r#"{"status":{"replicas":50}}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"]["replicas"], 0, "{body}");
    assert!(
        get_service(&api, "web")
            .await
            .get("status")
            .is_none_or(|s| s["replicas"].is_null())
    );

    // A dry run checks and writes nothing.
    let (code, body) = api
        .patch(
            &format!("{}?dryRun=All", scale_path("web")),
            MERGE,
            r#"{"spec":{"replicas":11}}"#,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["spec"]["replicas"], 11);
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 8);

    // What the scale is not: other verbs, other patch formats, other names.
    let (code, body) = api
        .post(&scale_path("web"), &json!({"spec": {"replicas": 1}}))
        .await;
    assert_eq!(code, 405, "{body}");
    let (code, body) = api
        .patch(
            &scale_path("web"),
            "application/apply-patch+yaml",
            r#"{"spec":{"replicas":1}}"#,
        )
        .await;
    assert_eq!(code, 415, "{body}");
    let (code, body) = api.get(&scale_path("nope")).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = api
        .patch(&scale_path("nope"), MERGE, r#"{"spec":{"replicas":1}}"#)
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = api
        .put(
            &scale_path("web"),
            &json!({"metadata": {"name": "other"}, "spec": {"replicas": 1}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 8);
    drop(server);
}

#[tokio::test]
async fn replicas_out_of_the_services_bounds_are_refused_naming_spec_replicas() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let api = JsonClient::new(&server);
    create(&api, &service("web", Some(2))).await;
    let rv = get_service(&api, "web").await["metadata"]["resourceVersion"].clone();
    let below = "must be greater than or equal to 0";
    let above = "must be less than or equal to 100000";
    let (code, body) = api
        .put(&scale_path("web"), &json!({"spec": {"replicas": -1}}))
        .await;
    assert_invalid_replicas(code, &body, "web", below);
    for (content_type, patch, rule) in [
        (MERGE, r#"{"spec":{"replicas":100001}}"#, above),
        (STRATEGIC, r#"{"spec":{"replicas":-3}}"#, below),
        (MERGE, r#"{"spec":{"replicas":5000000000}}"#, above),
        (
            MERGE,
            r#"{"spec":{"replicas":"five"}}"#,
            "must be an integer",
        ),
        (
            JSON_PATCH,
            r#"[{"op":"replace","path":"/spec/replicas","value":-1}]"#,
            below,
        ),
    ] {
        let (code, body) = api.patch(&scale_path("web"), content_type, patch).await;
        assert_invalid_replicas(code, &body, "web", rule);
    }
    // A JSON patch that would build a huge Scale stops at the body bound.
    let doubling: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "/status", "path": format!("/status/s{i}")}))
        .collect();
    let (code, body) = api
        .patch(
            &scale_path("web"),
            JSON_PATCH,
            &Value::from(doubling).to_string(),
        )
        .await;
    assert_eq!(code, 413, "{body}");
    // At the bound it is fine.
    let (code, body) = api
        .patch(&scale_path("web"), MERGE, r#"{"spec":{"replicas":100000}}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    // Unknown fields are refused by default, as in every write.
    let (code, body) = api
        .patch(&scale_path("web"), MERGE, r#"{"spec":{"replica":3}}"#)
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec.replica"),
        "{body}"
    );
    let svc = get_service(&api, "web").await;
    assert_eq!(svc["spec"]["replicas"], 100000);
    assert_ne!(svc["metadata"]["resourceVersion"], rv);
    drop(server);
}

#[tokio::test]
async fn discovery_lists_services_scale_as_an_autoscaling_v1_scale() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let api = JsonClient::new(&server);
    let (code, list) = api.get("/apis/loom.dev/v1").await;
    assert_eq!(code, 200, "{list}");
    let entry = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "services/scale")
        .unwrap_or_else(|| panic!("no services/scale: {list}"))
        .clone();
    assert_eq!(entry["kind"], "Scale");
    assert_eq!(entry["group"], "autoscaling");
    assert_eq!(entry["version"], "v1");
    assert_eq!(entry["namespaced"], true);
    assert_eq!(entry["verbs"], json!(["get", "patch", "update"]));

    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    let response = server
        .http()
        .get(format!("{}/apis", server.url))
        .header("Accept", aggregated)
        .send()
        .await
        .unwrap();
    let doc: Value = response.json().await.unwrap();
    let loom = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "loom.dev")
        .unwrap();
    let services = loom["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "services")
        .unwrap();
    let scale = services["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subresource"] == "scale")
        .unwrap_or_else(|| panic!("no scale subresource: {services}"));
    assert_eq!(
        scale["responseKind"],
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    );
    assert_eq!(scale["verbs"], json!(["get", "patch", "update"]));
    drop(server);
}

fn rbac_config() -> apiserver::Config {
    apiserver::Config {
        authorization: Authorization::Rbac,
        ..apiserver::Config::default()
    }
}

/// Asks whether `user` may `verb` `resource`/`subresource` in `default`.
async fn may(admin: &JsonClient, user: &str, verb: &str, resource: &str, sub: &str) -> bool {
    let (code, review) = admin
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": ["system:authenticated"], "resourceAttributes": {
                    "verb": verb, "group": "loom.dev", "resource": resource, "subresource": sub, "namespace": "default"}},
            }),
        )
        .await;
    assert_eq!(code, 201, "{review}");
    review["status"]["allowed"] == true
}

async fn grant(admin: &JsonClient, user: &str, rules: Value) {
    let (code, body) = admin
        .post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": user}, "rules": rules}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin
        .post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test]
async fn rbac_authorizes_services_scale_apart_from_services() {
    let server = TestServer::embedded(rbac_config()).await.unwrap();
    let admin = JsonClient::new(&server);
    create(&admin, &service("web", Some(2))).await;
    // uma may change Services but not their scale; sam the scale only.
    grant(
        &admin,
        "uma",
        json!([{"apiGroups": ["loom.dev"], "resources": ["services"], "verbs": ["get", "update", "patch"]}]),
    )
    .await;
    grant(
        &admin,
        "sam",
        json!([{"apiGroups": ["loom.dev"], "resources": ["services/scale"], "verbs": ["get", "update", "patch"]}]),
    )
    .await;
    loom_testing::eventually("the roles to be seen", || async {
        (may(&admin, "uma", "patch", "services", "").await
            && may(&admin, "sam", "patch", "services", "scale").await)
            .then_some(())
    })
    .await;
    let as_user = |user: &str| JsonClient {
        http: server.http_as(user, None),
        base: server.url.clone(),
    };
    let (uma, sam) = (as_user("uma"), as_user("sam"));
    let replicas = r#"{"spec":{"replicas":4}}"#;

    for (code, body) in [
        uma.get(&scale_path("web")).await,
        uma.patch(&scale_path("web"), MERGE, replicas).await,
        uma.put(&scale_path("web"), &json!({"spec": {"replicas": 4}}))
            .await,
    ] {
        assert_eq!(code, 403, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("resource \"services/scale\""),
            "{body}"
        );
    }
    let (code, body) = uma.patch(&format!("{SERVICES}/web"), MERGE, replicas).await;
    assert_eq!(code, 200, "uma may patch the Service itself: {body}");

    let (code, body) = sam
        .patch(
            &format!("{SERVICES}/web"),
            MERGE,
            r#"{"spec":{"replicas":5}}"#,
        )
        .await;
    assert_eq!(code, 403, "sam may not patch the Service: {body}");
    let (code, body) = sam.get(&format!("{SERVICES}/web")).await;
    assert_eq!(code, 403, "{body}");
    let (code, scale) = sam.get(&scale_path("web")).await;
    assert_eq!(code, 200, "{scale}");
    assert_eq!(scale["spec"]["replicas"], 4);
    let (code, body) = sam
        .patch(&scale_path("web"), MERGE, r#"{"spec":{"replicas":6}}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = sam
        .put(&scale_path("web"), &json!({"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "spec": {"replicas": 7}}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_service(&admin, "web").await["spec"]["replicas"], 7);

    // The bootstrap roles: view reads the scale, edit (and admin) and the
    // controllers change it.
    for (user, role) in [("vic", "view"), ("eddie", "edit"), ("adam", "admin")] {
        server.bind_cluster_role("User", user, role).await;
    }
    for (user, verb, allowed) in [
        ("vic", "get", true),
        ("vic", "patch", false),
        ("vic", "update", false),
        ("eddie", "get", true),
        ("eddie", "patch", true),
        ("eddie", "update", true),
        ("adam", "patch", true),
        ("adam", "update", true),
    ] {
        assert_eq!(
            may(&admin, user, verb, "services", "scale").await,
            allowed,
            "{user} {verb} services/scale"
        );
    }
    assert!(
        may(
            &admin,
            apiserver::authz::bootstrap::CONTROLLERS_USER,
            "update",
            "services",
            "scale"
        )
        .await
    );
    drop(server);
}

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

/// One kubectl run: exit code, stdout, stderr.
async fn run_kubectl(
    binary: &PathBuf,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .env("KUBECACHEDIR", dir.join("cache"))
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {} did not finish in 30 s", args.join(" ")))
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_scale_and_get_subresource_scale() {
    let Some(binary) = kubectl() else {
        println!("kubectl_scale_and_get_subresource_scale: skipped because kubectl is absent");
        return;
    };
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let api = JsonClient::new(&server);
    create(&api, &service("web", Some(2))).await;
    let dir = tempfile::Builder::new()
        .prefix("loom-kubectl-scale-")
        .tempdir()
        .unwrap();
    let kubeconfig = server.kubeconfig().unwrap();
    let kubectl =
        |args: &'static [&'static str]| run_kubectl(&binary, dir.path(), &kubeconfig, args);

    // As kubectl 1.32 scales without preconditions: one merge patch of the
    // scale subresource.
    let (code, stdout, stderr) = kubectl(&["scale", "service/web", "--replicas=5", "-v=8"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("service.loom.dev/web scaled"), "{stdout}");
    assert!(
        stderr.contains("PATCH ") && stderr.contains("/services/web/scale"),
        "kubectl patches the scale: {stderr}"
    );
    assert!(stderr.contains(MERGE), "{stderr}");
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 5);

    // With a precondition, kubectl reads the scale and PUTs it back.
    let (code, stdout, stderr) = kubectl(&[
        "scale",
        "service/web",
        "--current-replicas=5",
        "--replicas=3",
        "-v=8",
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("PUT ") && stderr.contains("/services/web/scale"),
        "{stderr}"
    );
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 3);
    let (code, stdout, stderr) = kubectl(&[
        "scale",
        "service/web",
        "--current-replicas=9",
        "--replicas=1",
    ])
    .await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Expected replicas to be 9, was 3"),
        "{stderr}"
    );
    let (code, stdout, stderr) = kubectl(&[
        "scale",
        "service/web",
        "--resource-version=1",
        "--replicas=1",
    ])
    .await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("resource version"), "{stderr}");
    // Zero and the bound.
    let (code, stdout, stderr) = kubectl(&["scale", "svc/web", "--replicas=0"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 0);
    let (code, _, stderr) = kubectl(&["scale", "service/web", "--replicas=100001"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("spec.replicas") && stderr.contains("less than or equal to 100000"),
        "{stderr}"
    );
    let (code, stdout, stderr) = kubectl(&["scale", "service/web", "--replicas=2"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");

    // kubectl patch of the subresource: a strategic merge patch, since
    // kubectl knows the Scale type.
    let (code, stdout, stderr) = kubectl(&[
        "patch",
        "service/web",
        "--subresource=scale",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
        "-v=8",
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains(STRATEGIC), "{stderr}");
    assert_eq!(get_service(&api, "web").await["spec"]["replicas"], 4);

    // get --subresource=scale: the Scale as JSON, and as a table.
    let (code, stdout, stderr) =
        kubectl(&["get", "service/web", "--subresource=scale", "-o", "json"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let scale: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["apiVersion"], "autoscaling/v1", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 4, "{scale}");
    assert_eq!(
        scale["status"]["selector"], "loom.dev/service=web",
        "{scale}"
    );
    let (code, stdout, stderr) = kubectl(&["get", "service/web", "--subresource=scale"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][..3], ["NAME", "DESIRED", "AVAILABLE"], "{stdout}");
    assert_eq!(lines[1][..3], ["web", "4", "0"], "{stdout}");
    drop(server);
}

#[tokio::test]
async fn a_scale_write_is_audited_as_the_subresource() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let config = apiserver::Config {
        audit: Some(apiserver::audit::Config {
            log: apiserver::audit::LogFile {
                path: log.clone(),
                max_size_bytes: 10 << 20,
                max_backups: 1,
            },
            policy: apiserver::audit::Policy::parse(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Request\n",
                std::path::Path::new("policy.yaml"),
            )
            .unwrap(),
        }),
        ..apiserver::Config::default()
    };
    let server = TestServer::embedded(config).await.unwrap();
    let api = JsonClient::new(&server);
    create(&api, &service("web", Some(2))).await;
    let (code, body) = api
        .patch(&scale_path("web"), MERGE, r#"{"spec":{"replicas":3}}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    let event = loom_testing::eventually("the scale patch's audit event", || async {
        std::fs::read_to_string(&log)
            .ok()?
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|e| e["stage"] == "ResponseComplete" && e["objectRef"]["subresource"] == "scale")
    })
    .await;
    assert_eq!(event["verb"], "patch", "{event}");
    assert_eq!(event["objectRef"]["resource"], "services", "{event}");
    assert_eq!(event["objectRef"]["name"], "web", "{event}");
    assert_eq!(event["objectRef"]["namespace"], "default", "{event}");
    assert_eq!(event["responseStatus"]["code"], 200, "{event}");
    assert_eq!(
        event["requestObject"],
        json!({"spec": {"replicas": 3}}),
        "{event}"
    );
    drop(server);
}
