//! Authentication against a real API server over TLS: client certificates,
//! static tokens and service-account tokens accepted and refused, the 401
//! Status, the paths open without a credential, whoami and TokenReview,
//! TokenRequest, and Namespace and ServiceAccount in the core group (also
//! with the real kubectl).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apiserver::authn::service_account::DEFAULT_ISSUER;
use apiserver::authn::{Authentication, ServiceAccountTokens, StaticTokens};
use chrono::Utc;
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use serde_json::{Value, json};
use tokio::time::Instant;

const TOKEN_FILE: &str = "s3cret-alice,alice,1001,\"dev,ops\"\nbob-token,bob,1002\n";

/// A key pair for service-account tokens.
fn key_pair() -> Arc<ServiceAccountTokens> {
    let (private, public) = pki::signing_key_pair().unwrap();
    accounts(&public, Some(private))
}

/// Service-account tokens verified with `public`, signed with `private`.
fn accounts(public: &str, private: Option<String>) -> Arc<ServiceAccountTokens> {
    Arc::new(
        ServiceAccountTokens::from_pem(
            DEFAULT_ISSUER,
            &[("sa.pub".into(), public.to_owned())],
            private.map(|key| ("sa.key".into(), key)),
        )
        .unwrap(),
    )
}

/// The configuration of a server that lets nothing through without a credential.
fn secure_config(accounts: &Arc<ServiceAccountTokens>) -> apiserver::Config {
    let tokens = StaticTokens::parse(TOKEN_FILE, Path::new("tokens.csv")).unwrap();
    apiserver::Config {
        authentication: Authentication {
            anonymous: false,
            x509: true,
            tokens: Some(Arc::new(tokens)),
            service_accounts: Some(accounts.clone()),
        },
        ..apiserver::Config::default()
    }
}

async fn secure_server() -> (TestServer, Arc<ServiceAccountTokens>) {
    let accounts = key_pair();
    let server = TestServer::embedded(secure_config(&accounts))
        .await
        .unwrap();
    (server, accounts)
}

/// A client presenting no certificate and `authorization` as its header.
fn with_header(server: &TestServer, authorization: &str) -> JsonClient {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(authorization).unwrap(),
    );
    JsonClient {
        http: server
            .pki
            .http_client(None)
            .default_headers(headers)
            .build()
            .unwrap(),
        base: server.url.clone(),
    }
}

fn bearer(server: &TestServer, token: &str) -> JsonClient {
    with_header(server, &format!("Bearer {token}"))
}

fn anonymous(server: &TestServer) -> JsonClient {
    JsonClient {
        http: server.http_anonymous(),
        base: server.url.clone(),
    }
}

fn certificate(server: &TestServer, user: &str, group: Option<&str>) -> JsonClient {
    JsonClient {
        http: server.http_as(user, group),
        base: server.url.clone(),
    }
}

/// `kubectl auth whoami`'s request: the caller's userInfo.
async fn whoami(client: &JsonClient) -> (u16, Value) {
    let (code, body) = client
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await;
    (code, body["status"]["userInfo"].clone())
}

/// Asserts a 401 Status whose message says `why`.
fn assert_unauthorized(code: u16, body: &Value, why: &str) {
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["reason"], "Unauthorized", "{body}");
    assert_eq!(body["code"], 401, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Unauthorized") && message.contains(why),
        "{message:?} should say {why:?}"
    );
}

/// The value of a counter of the server's /metrics, 0 if absent.
async fn counter(server: &TestServer, series: &str) -> f64 {
    let text = server
        .http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_request_without_a_credential_gets_401_except_health_and_version() {
    let (server, _) = secure_server().await;
    let nobody = anonymous(&server);
    let before = counter(
        &server,
        "loom_apiserver_authentication_failures_total{reason=\"no_credential\"}",
    )
    .await;
    for path in [
        "/api",
        "/apis",
        "/api/v1/namespaces",
        "/apis/loom.dev/v1/tasks",
        "/metrics",
        "/openapi/v3",
        "/no/such/path",
    ] {
        let (code, body) = nobody.get(path).await;
        assert_unauthorized(code, &body, "no credential");
    }
    let (code, body) = nobody
        .post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sneaky"}}),
        )
        .await;
    assert_unauthorized(code, &body, "no credential");
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let response = server
            .http_anonymous()
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // Nothing was written.
    let (code, _) = JsonClient::new(&server)
        .get("/api/v1/namespaces/sneaky")
        .await;
    assert_eq!(code, 404);
    let after = counter(
        &server,
        "loom_apiserver_authentication_failures_total{reason=\"no_credential\"}",
    )
    .await;
    assert_eq!(after - before, 8.0);
}

#[tokio::test]
async fn anonymous_requests_pass_only_when_allowed_and_bad_credentials_never() {
    // Authentication alone is under test: RBAC would not let the anonymous
    // user ask who it is.
    let server = TestServer::embedded(apiserver::Config {
        authentication: Authentication {
            anonymous: true,
            ..Authentication::default()
        },
        authorization: apiserver::authz::Authorization::AlwaysAllow,
        ..apiserver::Config::default()
    })
    .await
    .unwrap();
    let (code, user) = whoami(&anonymous(&server)).await;
    assert_eq!(code, 201);
    assert_eq!(user["username"], "system:anonymous");
    assert_eq!(user["groups"], json!(["system:unauthenticated"]));
    // A credential that names no one is refused even where anonymous requests pass.
    let (code, body) = bearer(&server, "made-up").get("/api").await;
    assert_unauthorized(code, &body, "not one this server knows");
    let (code, body) = bearer(&server, "made-up").get("/healthz").await;
    assert_unauthorized(code, &body, "not one this server knows");
}

#[tokio::test]
async fn a_client_certificate_names_its_user_and_groups_and_another_ca_is_refused() {
    let (server, _) = secure_server().await;
    let (code, user) = whoami(&certificate(&server, "alice", Some("dev"))).await;
    assert_eq!(code, 201);
    assert_eq!(user["username"], "alice");
    assert_eq!(user["groups"], json!(["dev", "system:authenticated"]));
    let (_, admin) = whoami(&JsonClient::new(&server)).await;
    assert_eq!(admin["username"], "loom-admin");
    assert_eq!(
        admin["groups"],
        json!(["system:masters", "system:authenticated"])
    );
    // A certificate of another CA ends the handshake: no request is served.
    let other = pki::Ca::generate("another-ca").unwrap();
    let foreign = other
        .issue(&pki::Profile::client("mallory", Some("system:masters")))
        .unwrap();
    let client = server.pki.http_client(Some(&foreign)).build().unwrap();
    let refused = client
        .get(format!("{}/api/v1/namespaces", server.url))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn static_tokens_name_their_users_and_anything_else_is_refused() {
    let (server, _) = secure_server().await;
    let (code, user) = whoami(&bearer(&server, "s3cret-alice")).await;
    assert_eq!(code, 201);
    assert_eq!(
        user,
        json!({"username": "alice", "uid": "1001", "groups": ["dev", "ops", "system:authenticated"]})
    );
    let (_, bob) = whoami(&bearer(&server, "bob-token")).await;
    assert_eq!(bob["groups"], json!(["system:authenticated"]));
    let before = counter(
        &server,
        "loom_apiserver_authentication_failures_total{reason=\"invalid_credential\"}",
    )
    .await;
    let (code, body) = bearer(&server, "s3cret-alicE").get("/api").await;
    assert_unauthorized(code, &body, "not one this server knows");
    // The refusal never echoes the token.
    assert!(!body.to_string().contains("s3cret"), "{body}");
    for (header, why) in [
        ("Basic YWxpY2U6czNjcmV0", "scheme is not Bearer"),
        ("Bearer", "not \"Bearer TOKEN\""),
        ("Bearer  ", "not \"Bearer TOKEN\""),
        ("Bearer s3cret-alice extra", "empty or has spaces"),
        ("s3cret-alice", "not \"Bearer TOKEN\""),
    ] {
        let (code, body) = with_header(&server, header).get("/api").await;
        assert_unauthorized(code, &body, why);
        // Public paths too: a bad credential is never let through.
        let (code, body) = with_header(&server, header).get("/healthz").await;
        assert_unauthorized(code, &body, why);
    }
    let after = counter(
        &server,
        "loom_apiserver_authentication_failures_total{reason=\"invalid_credential\"}",
    )
    .await;
    assert_eq!(after - before, 11.0);
}

/// Creates the account `name` in `namespace` through the core group.
async fn create_account(admin: &JsonClient, namespace: &str, name: &str) -> Value {
    let (code, account) = admin
        .post(
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        )
        .await;
    assert_eq!(code, 201, "{account}");
    account
}

/// A TokenRequest for `namespace/name` with `spec`.
async fn request_token(
    admin: &JsonClient,
    namespace: &str,
    name: &str,
    spec: Value,
) -> (u16, Value) {
    admin
        .post(
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        )
        .await
}

async fn token_review(admin: &JsonClient, token: &str, audiences: &[&str]) -> Value {
    let (code, review) = admin
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}}),
        )
        .await;
    assert_eq!(code, 201, "{review}");
    assert!(review["spec"].get("token").is_none(), "{review}");
    review["status"].clone()
}

#[tokio::test]
async fn a_service_account_token_names_the_account_until_it_is_deleted() {
    let (server, accounts) = secure_server().await;
    let admin = JsonClient::new(&server);
    let (code, namespace) = admin
        .post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        )
        .await;
    assert_eq!(code, 201, "{namespace}");
    let account = create_account(&admin, "team", "builder").await;
    let uid = account["metadata"]["uid"].as_str().unwrap().to_owned();
    let started = Utc::now();
    let (code, answer) = request_token(&admin, "team", "builder", json!({})).await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["kind"], "TokenRequest");
    assert_eq!(answer["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(answer["spec"]["expirationSeconds"], 3600);
    assert_eq!(answer["spec"]["audiences"], json!([DEFAULT_ISSUER]));
    let expires: chrono::DateTime<Utc> = answer["status"]["expirationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let lifetime = (expires - started).num_seconds();
    assert!((3598..=3602).contains(&lifetime), "{lifetime}");
    let token = answer["status"]["token"].as_str().unwrap().to_owned();

    let (code, user) = whoami(&bearer(&server, &token)).await;
    assert_eq!(code, 201, "{user}");
    assert_eq!(user["username"], "system:serviceaccount:team:builder");
    assert_eq!(user["uid"], uid.as_str());
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team",
            "system:authenticated"
        ])
    );
    let status = token_review(&admin, &token, &[]).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:team:builder"
    );
    assert_eq!(status["audiences"], json!([DEFAULT_ISSUER]));
    let status = token_review(&admin, &token, &["vault"]).await;
    assert_eq!(status["authenticated"], false, "{status}");
    assert!(status["error"].as_str().unwrap().contains("audience"));

    // A token for another audience is not the API server's.
    let (_, vault) =
        request_token(&admin, "team", "builder", json!({"audiences": ["vault"]})).await;
    let vault = vault["status"]["token"].as_str().unwrap().to_owned();
    let (code, body) = bearer(&server, &vault).get("/api").await;
    assert_unauthorized(code, &body, "not for this audience");
    assert_eq!(
        token_review(&admin, &vault, &["vault"]).await["authenticated"],
        true
    );

    // Expired, not yet valid, signed by another key, malformed.
    let old = Utc::now() - chrono::Duration::hours(2);
    let expired = accounts
        .sign(&accounts.claims("team", "builder", &uid, &[], 3600, None, old))
        .unwrap();
    let (code, body) = bearer(&server, &expired).get("/api").await;
    assert_unauthorized(code, &body, "expired");
    let other = key_pair();
    let forged = other
        .sign(&other.claims("team", "builder", &uid, &[], 3600, None, Utc::now()))
        .unwrap();
    let (code, body) = bearer(&server, &forged).get("/api").await;
    assert_unauthorized(code, &body, "signature");
    let (code, body) = bearer(&server, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
        .get("/api")
        .await;
    assert_unauthorized(code, &body, "token");
    let mut tampered = token.clone();
    tampered.insert(token.find('.').unwrap() + 3, 'x');
    let (code, _) = bearer(&server, &tampered).get("/api").await;
    assert_eq!(code, 401);

    // Deleting the account revokes its tokens; a new account of the same name
    // (another uid) does not bring them back.
    let (code, _) = admin
        .delete("/api/v1/namespaces/team/serviceaccounts/builder")
        .await;
    assert_eq!(code, 200);
    eventually("the deleted account's token is refused", || async {
        bearer(&server, &token).get("/api").await.0 == 401
    })
    .await;
    let (code, body) = bearer(&server, &token).get("/api").await;
    assert_unauthorized(code, &body, "no longer exists");
    assert_eq!(
        token_review(&admin, &token, &[]).await["authenticated"],
        false
    );
    create_account(&admin, "team", "builder").await;
    let (_, fresh) = request_token(&admin, "team", "builder", json!({})).await;
    let fresh = fresh["status"]["token"].as_str().unwrap().to_owned();
    eventually("the new account's token is accepted", || async {
        bearer(&server, &fresh).get("/api").await.0 == 200
    })
    .await;
    let (code, body) = bearer(&server, &token).get("/api").await;
    assert_unauthorized(code, &body, "no longer exists");
}

#[tokio::test]
async fn a_token_request_is_bounded_and_needs_an_account_and_a_signing_key() {
    let (server, _) = secure_server().await;
    let admin = JsonClient::new(&server);
    create_account(&admin, "default", "runner").await;
    let (code, body) = request_token(
        &admin,
        "default",
        "runner",
        json!({"expirationSeconds": 60}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.expirationSeconds"
    );
    let (code, body) = request_token(
        &admin,
        "default",
        "runner",
        json!({"expirationSeconds": 30 * 86400, "boundObjectRef": {"kind": "Task", "apiVersion": "loom.dev/v1", "name": "t1", "uid": "u1"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["spec"]["expirationSeconds"], 48 * 3600);
    let token = body["status"]["token"].as_str().unwrap();
    let (_, user) = whoami(&bearer(&server, token)).await;
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/task-name"],
        json!(["t1"])
    );
    let (code, body) = request_token(&admin, "default", "nobody", json!({})).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = admin
        .get("/api/v1/namespaces/default/serviceaccounts/runner/token")
        .await;
    assert_eq!(code, 405, "{body}");

    // A server without a signing key verifies tokens but mints none.
    let (_, public) = pki::signing_key_pair().unwrap();
    let verifier = TestServer::embedded(secure_config(&accounts(&public, None)))
        .await
        .unwrap();
    let admin = JsonClient::new(&verifier);
    create_account(&admin, "default", "runner").await;
    let (code, body) = request_token(&admin, "default", "runner", json!({})).await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--service-account-signing-key-file")
    );
}

#[tokio::test]
async fn a_token_minted_by_one_api_server_verifies_on_another() {
    let (private, public) = pki::signing_key_pair().unwrap();
    let first = TestServer::embedded(secure_config(&accounts(&public, Some(private))))
        .await
        .unwrap();
    // The second server has only the public key, over the same store.
    let second = TestServer::over(first.store.clone(), secure_config(&accounts(&public, None)))
        .await
        .unwrap();
    let admin = JsonClient::new(&first);
    create_account(&admin, "default", "shared").await;
    let (_, answer) = request_token(&admin, "default", "shared", json!({})).await;
    let token = answer["status"]["token"].as_str().unwrap().to_owned();
    eventually("the second server knows the account", || async {
        whoami(&bearer(&second, &token)).await.0 == 201
    })
    .await;
    let (_, user) = whoami(&bearer(&second, &token)).await;
    assert_eq!(user["username"], "system:serviceaccount:default:shared");
}

#[tokio::test]
async fn namespace_and_service_account_are_served_in_the_core_group_and_stored_once() {
    let (server, _) = secure_server().await;
    let admin = JsonClient::new(&server);
    let (_, api) = admin.get("/api").await;
    assert_eq!(api["versions"], json!(["v1"]));
    let (code, core) = admin.get("/api/v1").await;
    assert_eq!(code, 200);
    assert_eq!(core["groupVersion"], "v1");
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for name in [
        "namespaces",
        "namespaces/status",
        "serviceaccounts",
        "serviceaccounts/token",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let token = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "serviceaccounts/token")
        .unwrap();
    assert_eq!(token["kind"], "TokenRequest");
    assert_eq!(token["verbs"], json!(["create"]));
    let (_, sa) = admin.get("/apis/loom.dev/v1").await;
    assert!(
        sa["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "serviceaccounts" && r["shortNames"] == json!(["sa"]))
    );
    let (_, groups) = admin.get("/apis").await;
    let groups: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(groups.contains(&"authentication.k8s.io"), "{groups:?}");
    assert!(!groups.contains(&""), "{groups:?}");
    let (_, authentication) = admin.get("/apis/authentication.k8s.io/v1").await;
    let resources: Vec<&str> = authentication["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(resources, ["selfsubjectreviews", "tokenreviews"]);
    let aggregated = admin
        .http
        .get(format!("{}/apis", server.url))
        .header(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        aggregated["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "authentication.k8s.io")
    );

    // Every namespace has a default account, the built-in ones from the start.
    for namespace in ["default", "loom-system"] {
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/default");
        eventually(&path.clone(), || {
            let admin = admin.clone();
            let path = path.clone();
            async move { admin.get(&path).await.0 == 200 }
        })
        .await;
    }
    // A deleted default account is made again.
    let (_, default) = admin
        .get("/api/v1/namespaces/default/serviceaccounts/default")
        .await;
    let (code, _) = admin
        .delete("/api/v1/namespaces/default/serviceaccounts/default")
        .await;
    assert_eq!(code, 200);
    eventually("the default account is made again", || async {
        let (code, again) = admin
            .get("/api/v1/namespaces/default/serviceaccounts/default")
            .await;
        code == 200 && again["metadata"]["uid"] != default["metadata"]["uid"]
    })
    .await;
    let (code, created) = admin
        .post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "both"}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["apiVersion"], "v1");
    eventually("the new namespace's default account", || async {
        admin
            .get("/apis/loom.dev/v1/namespaces/both/serviceaccounts/default")
            .await
            .0
            == 200
    })
    .await;
    let (_, loom) = admin.get("/apis/loom.dev/v1/namespaces/both").await;
    assert_eq!(loom["apiVersion"], "loom.dev/v1");
    assert_eq!(loom["metadata"]["uid"], created["metadata"]["uid"]);

    // One object, two paths: a write through either shows through both, in
    // the path's version.
    let mut watch = admin
        .watch("/api/v1/namespaces/both/serviceaccounts?watch=true")
        .await;
    let account = create_account(&admin, "both", "worker").await;
    assert_eq!(account["apiVersion"], "v1");
    let (code, patched) = admin
        .patch(
            "/apis/loom.dev/v1/namespaces/both/serviceaccounts/worker",
            "application/merge-patch+json",
            r#"{"automountServiceAccountToken": false, "metadata": {"labels": {"team": "a"}}}"#,
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["apiVersion"], "loom.dev/v1");
    let (_, core) = admin
        .get("/api/v1/namespaces/both/serviceaccounts/worker")
        .await;
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["automountServiceAccountToken"], false);
    assert_eq!(core["metadata"]["uid"], account["metadata"]["uid"]);
    let mut put = core.clone();
    put["metadata"]["labels"]["team"] = json!("b");
    let (code, replaced) = admin
        .put("/api/v1/namespaces/both/serviceaccounts/worker", &put)
        .await;
    assert_eq!(code, 200, "{replaced}");
    assert_eq!(replaced["apiVersion"], "v1");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = watch.next_change().await;
        assert_eq!(event["object"]["apiVersion"], "v1", "{event}");
        seen.push(
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(seen.contains(&"worker".to_owned()), "{seen:?}");
    let (_, list) = admin.get("/api/v1/namespaces/both/serviceaccounts").await;
    assert_eq!(list["kind"], "ServiceAccountList");
    assert_eq!(list["apiVersion"], "v1");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["apiVersion"] == "v1")
    );
    let (_, list) = admin
        .get("/apis/loom.dev/v1/namespaces/both/serviceaccounts")
        .await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["apiVersion"] == "loom.dev/v1")
    );
    // A body of the other version is taken, one of any other refused.
    let (code, body) = admin
        .post(
            "/api/v1/namespaces/both/serviceaccounts",
            &json!({"apiVersion": "apps/v1", "kind": "ServiceAccount", "metadata": {"name": "x"}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    // Stored once: one key, the object's own apiVersion.
    let stored = server
        .store
        .get("loom.dev/serviceaccounts/both/worker")
        .await
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(stored["apiVersion"], "v1");
    let stored = server
        .store
        .get("loom.dev/namespaces/both")
        .await
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(stored["apiVersion"], "loom.dev/v1");
    // The namespace's accounts go with it.
    let (code, _) = admin.delete("/api/v1/namespaces/both").await;
    assert_eq!(code, 200);
    eventually("the namespace's accounts are gone", || async {
        admin
            .get("/apis/loom.dev/v1/namespaces/both/serviceaccounts/worker")
            .await
            .0
            == 404
    })
    .await;
    // Not even its default, once the keeper had its chance to make it again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, _) = admin
        .get("/api/v1/namespaces/both/serviceaccounts/default")
        .await;
    assert_eq!(code, 404);
    assert!(
        server
            .store
            .get("loom.dev/serviceaccounts/both/default")
            .await
            .unwrap()
            .is_none()
    );
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

/// Runs kubectl with `kubeconfig`; (exit code, stdout, stderr).
async fn run_kubectl(
    binary: &Path,
    kubeconfig: &Path,
    cache: &Path,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", cache)
            .env("HOME", cache)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_creates_a_namespace_an_account_and_its_token_and_says_who_it_is() {
    let Some(binary) = kubectl() else {
        println!("skipped: kubectl is absent (not on PATH)");
        return;
    };
    let (server, _) = secure_server().await;
    let kubeconfig = server.kubeconfig().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let kubectl =
        |args: &'static [&'static str]| run_kubectl(&binary, &kubeconfig, cache.path(), args);
    let ok = |(code, stdout, stderr): (Option<i32>, String, String)| {
        assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
        stdout
    };
    let out = ok(kubectl(&["create", "namespace", "ci"]).await);
    assert_eq!(out.trim(), "namespace/ci created");
    let out = ok(kubectl(&["create", "serviceaccount", "deployer", "-n", "ci"]).await);
    assert_eq!(out.trim(), "serviceaccount/deployer created");
    let out = ok(kubectl(&["get", "serviceaccounts", "-n", "ci", "-o", "name"]).await);
    assert!(out.contains("serviceaccount/deployer"), "{out}");
    let out = ok(kubectl(&["get", "namespace", "ci", "-o", "json"]).await);
    let namespace: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(namespace["apiVersion"], "v1");
    let token = ok(kubectl(&[
        "create",
        "token",
        "deployer",
        "-n",
        "ci",
        "--duration",
        "20m",
    ])
    .await);
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    // Manifests of core kinds apply too (kubectl validates them against
    // /openapi/v3's api/v1 document first).
    let manifest = cache.path().join("accounts.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: applied\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\n  namespace: applied\nautomountServiceAccountToken: false\n",
    )
    .unwrap();
    let manifest = manifest.display().to_string();
    let (code, out, err) = run_kubectl(
        &binary,
        &kubeconfig,
        cache.path(),
        &["apply", "-f", &manifest],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("namespace/applied created"), "{out}");
    assert!(out.contains("serviceaccount/robot created"), "{out}");
    let (code, out, err) = run_kubectl(
        &binary,
        &kubeconfig,
        cache.path(),
        &["apply", "-f", &manifest],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("serviceaccount/robot unchanged"), "{out}");
    let table = ok(kubectl(&["get", "sa", "-n", "applied"]).await);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SECRETS", "AGE"], "{table}");
    assert!(table.contains("robot"), "{table}");
    let out = ok(kubectl(&["auth", "whoami", "-o", "json"]).await);
    let review: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], "loom-admin");

    // The token alone, in a kubeconfig of its own, is the account.
    let token_config = cache.path().join("token-kubeconfig");
    std::fs::write(
        &token_config,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: sa\n",
            server.url,
            server.files.ca.display()
        ),
    )
    .unwrap();
    let (code, out, err) =
        run_kubectl(&binary, &token_config, cache.path(), &["auth", "whoami"]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("system:serviceaccount:ci:deployer"), "{out}");
    assert!(out.contains("system:serviceaccounts:ci"), "{out}");
    ok(kubectl(&["delete", "serviceaccount", "deployer", "-n", "ci"]).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, err) =
            run_kubectl(&binary, &token_config, cache.path(), &["auth", "whoami"]).await;
        if code != Some(0) {
            assert!(err.contains("Unauthorized"), "{err}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted account's token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_bodies_get_a_status_and_write_nothing() {
    let (server, _) = secure_server().await;
    let admin = JsonClient::new(&server);
    let protobuf = "application/vnd.kubernetes.protobuf";
    for (body, why) in [
        (b"junk".to_vec(), "k8s\\0 prefix"),
        (b"k8s\0\x0a\xff\xff\xff".to_vec(), "malformed"),
        // A Deployment (apps/v1), which Loom does not take as protobuf.
        (
            [
                b"k8s\0\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment".as_slice(),
                b"\x12\x00",
            ]
            .concat(),
            "send it as application/json",
        ),
    ] {
        let (code, status) = admin
            .send(
                reqwest::Method::POST,
                "/api/v1/namespaces",
                protobuf,
                Some(body),
            )
            .await;
        assert_eq!(code, 400, "{status}");
        assert_eq!(status["reason"], "BadRequest");
        assert!(
            status["message"].as_str().unwrap().contains(why),
            "{status}"
        );
    }
    let (_, before) = admin.get("/api/v1/namespaces").await;
    assert_eq!(before["items"].as_array().unwrap().len(), 2, "{before}");

    let reviews = "/apis/authentication.k8s.io/v1/tokenreviews";
    let (code, status) = admin.post(reviews, &json!({"spec": {}})).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.token");
    let (code, status) = admin.post(reviews, &json!([1, 2])).await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = admin
        .post(
            reviews,
            &json!({"apiVersion": "v1", "kind": "TokenReview", "spec": {"token": "x"}}),
        )
        .await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = admin
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}),
        )
        .await;
    assert_eq!(code, 400, "{status}");

    create_account(&admin, "default", "runner").await;
    let token = "/api/v1/namespaces/default/serviceaccounts/runner/token";
    let (code, status) = admin.post(token, &json!({"kind": "Pod", "spec": {}})).await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = admin
        .post(token, &json!({"spec": {"expirationSeconds": -5}}))
        .await;
    assert_eq!(code, 422, "{status}");
    let (code, status) = admin
        .post(token, &json!({"spec": {"audiences": "not-a-list"}}))
        .await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = admin
        .post(
            token,
            &json!({"spec": {"boundObjectRef": {"kind": "Task"}}}),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    let (code, status) = admin
        .send(
            reqwest::Method::POST,
            token,
            "application/json",
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(code, 400, "{status}");
}
