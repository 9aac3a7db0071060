//! The audit log of a real API server over TLS: the Event of a create, a get,
//! a 401 and a 403 field by field (with RBAC's decision), token values that never reach the file (static
//! tokens, a TokenRequest's token, a TokenReview's), rotation by size, and
//! a policy file or log the server cannot use.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apiserver::audit::{LogFile, Policy};
use apiserver::authn::service_account::DEFAULT_ISSUER;
use apiserver::authn::{Authentication, ServiceAccountTokens, StaticTokens};
use loom_testing::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

const JOBS: &str = "/apis/loom.dev/v1/namespaces/default/jobs";
const ALICE_TOKEN: &str = "s3cret-alice";
const TOKEN_FILE: &str = "s3cret-alice,alice,1001,\"dev,ops\"\n";

fn job(name: &str) -> Value {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "template": {"spec": {"image": "busybox", "command": ["true"]}}}
    })
}

/// A server that authenticates everyone (certificates, the token file,
/// service-account tokens) and audits to `dir/audit.log` under `policy`.
async fn audited_server(dir: &Path, policy: &str, max_size_bytes: u64) -> (TestServer, PathBuf) {
    audited_server_with(
        dir,
        policy,
        max_size_bytes,
        apiserver::authz::Authorization::AlwaysAllow,
    )
    .await
}

/// [`audited_server`] authorizing with `authorization`.
async fn audited_server_with(
    dir: &Path,
    policy: &str,
    max_size_bytes: u64,
    authorization: apiserver::authz::Authorization,
) -> (TestServer, PathBuf) {
    let path = dir.join("audit.log");
    let (private, public) = pki::signing_key_pair().unwrap();
    let accounts = ServiceAccountTokens::from_pem(
        DEFAULT_ISSUER,
        &[("sa.pub".into(), public)],
        Some(("sa.key".into(), private)),
    )
    .unwrap();
    let config = apiserver::Config {
        authentication: Authentication {
            tokens: Some(Arc::new(
                StaticTokens::parse(TOKEN_FILE, Path::new("tokens.csv")).unwrap(),
            )),
            service_accounts: Some(Arc::new(accounts)),
            ..Authentication::secure()
        },
        audit: Some(apiserver::audit::Config {
            log: LogFile {
                path: path.clone(),
                max_size_bytes,
                max_backups: 2,
            },
            policy: Policy::parse(policy, Path::new("policy.yaml")).unwrap(),
        }),
        authorization,
        ..apiserver::Config::default()
    };
    (TestServer::embedded(config).await.unwrap(), path)
}

/// What a request got: code, body and the audit ID the server gave it.
struct Answer {
    code: u16,
    body: Value,
    audit_id: String,
}

async fn send(
    server: &TestServer,
    http: &reqwest::Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let mut request = http
        .request(method, format!("{}{path}", server.url))
        .header("User-Agent", "audit-test/1.0");
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let code = response.status().as_u16();
    let audit_id = response
        .headers()
        .get("audit-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        code,
        body,
        audit_id,
    }
}

fn bearer(server: &TestServer, token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    server
        .pki
        .http_client(None)
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Every event in the log and its rotated files, oldest first.
fn events(path: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = (1..10)
        .rev()
        .map(|n| apiserver::audit::writer::backup(path, n))
        .collect();
    files.push(path.to_owned());
    files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| {
            text.lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// The event of `audit_id`, once the writer has written it.
async fn event(path: &Path, audit_id: &str) -> Value {
    assert!(!audit_id.is_empty(), "the response had no Audit-Id");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(event) = events(path).into_iter().find(|e| e["auditID"] == audit_id) {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event {audit_id} in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a timestamp is RFC 3339 UTC with microseconds, and returns it.
fn micro_time(event: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    let text = event[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field}: {event}"));
    let fraction = text.rsplit('.').next().unwrap();
    assert_eq!(fraction.len(), "123456Z".len(), "{field} {text}");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

const JOBS_IN_FULL: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: None
    nonResourceURLs: ["/readyz*", "/healthz*"]
  - level: RequestResponse
    resources:
      - group: loom.dev
        resources: ["jobs"]
  - level: Metadata
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_a_get_and_a_401_are_logged_as_kubernetes_events() {
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = audited_server(dir.path(), JOBS_IN_FULL, 0).await;
    let admin = server.http();

    let created = send(&server, &admin, Method::POST, JOBS, Some(&job("audited"))).await;
    assert_eq!(created.code, 201, "{}", created.body);
    let e = event(&log, &created.audit_id).await;
    assert_eq!(e["kind"], "Event");
    assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(e["level"], "RequestResponse");
    assert_eq!(e["stage"], "ResponseComplete");
    assert_eq!(e["requestURI"], JOBS);
    assert_eq!(e["verb"], "create");
    assert_eq!(e["user"]["username"], "loom-admin");
    let groups = e["user"]["groups"].as_array().unwrap();
    assert!(groups.contains(&json!("system:masters")), "{e}");
    assert!(groups.contains(&json!("system:authenticated")), "{e}");
    assert_eq!(e["sourceIPs"], json!(["127.0.0.1"]));
    assert_eq!(e["userAgent"], "audit-test/1.0");
    assert_eq!(
        e["objectRef"],
        json!({"resource": "jobs", "namespace": "default", "apiGroup": "loom.dev", "apiVersion": "v1"})
    );
    assert_eq!(e["responseStatus"], json!({"metadata": {}, "code": 201}));
    assert_eq!(e["requestObject"]["metadata"]["name"], "audited");
    assert_eq!(
        e["responseObject"]["metadata"]["uid"],
        created.body["metadata"]["uid"]
    );
    let received = micro_time(&e, "requestReceivedTimestamp");
    let completed = micro_time(&e, "stageTimestamp");
    assert!(received <= completed, "{e}");

    let got = send(
        &server,
        &admin,
        Method::GET,
        &format!("{JOBS}/audited"),
        None,
    )
    .await;
    assert_eq!(got.code, 200);
    let e = event(&log, &got.audit_id).await;
    assert_eq!(e["verb"], "get");
    assert_eq!(e["objectRef"]["name"], "audited");
    assert_eq!(e["responseObject"]["metadata"]["name"], "audited");
    assert!(e.get("requestObject").is_none(), "{e}");
    assert_ne!(got.audit_id, created.audit_id);

    // Refused before any handler ran: logged all the same, by the outermost layer.
    let anonymous = server.http_anonymous();
    let refused = send(
        &server,
        &anonymous,
        Method::POST,
        JOBS,
        Some(&job("nobody")),
    )
    .await;
    assert_eq!(refused.code, 401);
    let e = event(&log, &refused.audit_id).await;
    assert_eq!(e["verb"], "create");
    assert_eq!(e["user"]["username"], "system:anonymous");
    assert_eq!(e["responseStatus"]["code"], 401);
    assert_eq!(e["responseStatus"]["status"], "Failure");
    assert_eq!(e["responseStatus"]["reason"], "Unauthorized");
    assert!(
        e["responseStatus"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unauthorized"),
        "{e}"
    );
    // Its body was never read, so it is not logged either.
    assert!(e.get("requestObject").is_none(), "{e}");

    // The probes the policy leaves out are not logged; the rest is at Metadata.
    let ready = send(&server, &admin, Method::GET, "/readyz", None).await;
    let version = send(&server, &admin, Method::GET, "/version", None).await;
    let e = event(&log, &version.audit_id).await;
    assert_eq!(e["level"], "Metadata");
    assert_eq!(e["verb"], "get");
    assert!(e.get("objectRef").is_none(), "{e}");
    assert!(e.get("responseObject").is_none(), "{e}");
    assert!(
        events(&log).iter().all(|e| e["auditID"] != ready.audit_id),
        "/readyz is at level None"
    );

    let client = loom_testing::http::JsonClient {
        http: admin,
        base: server.url.clone(),
    };
    let (_, metrics) = client.get("/metrics").await;
    let text = metrics["raw"].as_str().unwrap();
    let written: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("loom_apiserver_audit_events_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(written >= 4.0, "{written}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_decisions_are_annotated_and_a_403_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = audited_server_with(
        dir.path(),
        JOBS_IN_FULL,
        0,
        apiserver::authz::Authorization::Rbac,
    )
    .await;

    let allowed = send(
        &server,
        &server.http(),
        Method::POST,
        JOBS,
        Some(&job("ok")),
    )
    .await;
    assert_eq!(allowed.code, 201, "{}", allowed.body);
    let e = event(&log, &allowed.audit_id).await;
    assert_eq!(
        e["annotations"]["authorization.k8s.io/decision"], "allow",
        "{e}"
    );
    assert!(
        e["annotations"]["authorization.k8s.io/reason"].is_string(),
        "{e}"
    );

    let alice = server.http_as("alice", Some("dev"));
    let denied = send(&server, &alice, Method::POST, JOBS, Some(&job("no"))).await;
    assert_eq!(denied.code, 403, "{}", denied.body);
    let e = event(&log, &denied.audit_id).await;
    assert_eq!(e["user"]["username"], "alice");
    assert!(
        e["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("dev")),
        "{e}"
    );
    assert_eq!(e["verb"], "create");
    assert_eq!(e["objectRef"]["resource"], "jobs");
    assert_eq!(e["objectRef"]["namespace"], "default");
    assert_eq!(
        e["annotations"]["authorization.k8s.io/decision"], "forbid",
        "{e}"
    );
    assert_eq!(e["responseStatus"]["code"], 403);
    assert_eq!(e["responseStatus"]["reason"], "Forbidden");
    let message = e["responseStatus"]["message"].as_str().unwrap();
    assert_eq!(message, denied.body["message"].as_str().unwrap());
    assert!(message.contains("alice"), "{message}");
    // Nothing was written, nor read of the body.
    assert!(e.get("requestObject").is_none(), "{e}");
    let (code, _) = loom_testing::http::JsonClient::new(&server)
        .get(&format!("{JOBS}/no"))
        .await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_values_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // Everything at the most verbose level the policy has.
    let everything =
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: RequestResponse\n";
    let (server, log) = audited_server(dir.path(), everything, 0).await;
    let admin = server.http();
    let alice = bearer(&server, ALICE_TOKEN);
    let mut ids = Vec::new();

    // A static token, in the header and (by a client's mistake) in the URI.
    let listed = send(&server, &alice, Method::GET, JOBS, None).await;
    assert_eq!(listed.code, 200, "{}", listed.body);
    ids.push(listed.audit_id);
    let quoted = send(
        &server,
        &alice,
        Method::GET,
        &format!("{JOBS}?labelSelector={ALICE_TOKEN}"),
        None,
    )
    .await;
    assert_eq!(quoted.code, 200, "{}", quoted.body);
    let e = event(&log, &quoted.audit_id).await;
    assert_eq!(
        e["requestURI"],
        format!("{JOBS}?labelSelector=[redacted]"),
        "{e}"
    );
    ids.push(quoted.audit_id);

    // A wrong token.
    let wrong = "wrong-token-0123456789";
    let refused = send(&server, &bearer(&server, wrong), Method::GET, JOBS, None).await;
    assert_eq!(refused.code, 401);
    ids.push(refused.audit_id);

    // A TokenRequest's token (once the default account exists), used, and reviewed.
    let path = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}});
    let deadline = Instant::now() + Duration::from_secs(10);
    let minted = loop {
        let minted = send(&server, &admin, Method::POST, path, Some(&request)).await;
        if minted.code == 201 || Instant::now() > deadline {
            break minted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(minted.code, 201, "{}", minted.body);
    let token = minted.body["status"]["token"].as_str().unwrap().to_owned();
    assert!(token.len() > 50, "{token}");
    let e = event(&log, &minted.audit_id).await;
    assert_eq!(
        e["level"], "Metadata",
        "TokenRequests at Metadata at most: {e}"
    );
    assert_eq!(e["objectRef"]["subresource"], "token");
    assert!(e.get("responseObject").is_none() && e.get("requestObject").is_none());
    ids.push(minted.audit_id);

    let account = bearer(&server, &token);
    let created = send(&server, &account, Method::POST, JOBS, Some(&job("by-sa"))).await;
    assert_eq!(created.code, 201, "{}", created.body);
    let e = event(&log, &created.audit_id).await;
    assert_eq!(
        e["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(e["requestObject"]["metadata"]["name"], "by-sa");
    ids.push(created.audit_id);

    let review = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}
    });
    let reviewed = send(
        &server,
        &admin,
        Method::POST,
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(&review),
    )
    .await;
    assert_eq!(reviewed.code, 201, "{}", reviewed.body);
    let e = event(&log, &reviewed.audit_id).await;
    assert_eq!(e["level"], "Metadata", "{e}");
    ids.push(reviewed.audit_id);

    for id in &ids {
        event(&log, id).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= ids.len());
    for secret in [ALICE_TOKEN, wrong, &token] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    // Nor any piece of the JWT that carries its signature.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_rotates_by_size_keeping_max_backups() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n";
    const MAX: u64 = 2048;
    let (server, log) = audited_server(dir.path(), metadata, MAX).await;
    let admin = server.http();
    let mut last = String::new();
    for _ in 0..40 {
        let answer = send(&server, &admin, Method::GET, JOBS, None).await;
        assert_eq!(answer.code, 200);
        last = answer.audit_id;
    }
    event(&log, &last).await;
    let backup = |n| apiserver::audit::writer::backup(&log, n);
    assert!(
        backup(1).exists() && backup(2).exists(),
        "rotated twice at least"
    );
    assert!(
        !backup(3).exists(),
        "only --audit-log-maxbackup=2 files are kept"
    );
    for file in [log.clone(), backup(1), backup(2)] {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.len() as u64 <= MAX,
            "{} is {} bytes",
            file.display(),
            text.len()
        );
        assert!(!text.is_empty(), "{}", file.display());
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["kind"], "Event");
        }
    }
}

#[tokio::test]
async fn a_bad_policy_file_or_an_unwritable_log_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n  - level: Everything\n",
    )
    .unwrap();
    let error = Policy::from_file(&policy).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("audit policy {}: rules[1]: ", policy.display()))
            && error.contains("Everything"),
        "{error}"
    );

    let store = apiserver::open_store(
        &apiserver::StoreUrl::Sqlite(dir.path().join("loom.db")),
        "",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = apiserver::Config {
        audit: Some(apiserver::audit::Config {
            log: LogFile {
                path: dir.path().join("missing-dir/audit.log"),
                max_size_bytes: 0,
                max_backups: 0,
            },
            policy: Policy::default_for_up(),
        }),
        ..apiserver::Config::default()
    };
    let run = apiserver::run(
        store,
        listener,
        config,
        tokio_util::sync::CancellationToken::new(),
    );
    let error = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the server stops at once")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("audit log") && error.contains("missing-dir/audit.log"),
        "{error}"
    );
}
