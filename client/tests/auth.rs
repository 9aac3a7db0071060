//! Bearer tokens and in-cluster inference: the header against a small fake
//! API server that records it, and a task's service account against the real
//! API server (its identity, and a rotated token picked up after a 401).

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use client::config::Environment;
use client::{Auth, Client, Config, Credential, Kubeconfig};

/// A fake API server answering `/version` and recording each request's
/// `Authorization` header (`None` when absent).
struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

async fn fake(status: axum::http::StatusCode) -> Fake {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/version",
        axum::routing::get(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                record.lock().expect("lock").push(auth);
                let body = if status.is_success() {
                    serde_json::json!({"gitVersion": "v1.32.0-loom"})
                } else {
                    serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "Unauthorized", "reason": "Unauthorized",
                        "code": status.as_u16(),
                    })
                };
                (status, axum::Json(body))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake { url, seen }
}

async fn version(client: &Client) -> client::Result<serde_json::Value> {
    client
        .request(client::client::Method::GET, "/version", None)
        .await
}

#[tokio::test]
async fn a_token_is_sent_as_a_bearer_header() {
    let server = fake(axum::http::StatusCode::OK).await;
    let mut config = Config::new(&server.url);
    config.auth = Some(Auth::Token("T".to_owned()));
    let client = Client::new(config).expect("client");
    version(&client).await.expect("version");
    // Without a token, no header at all.
    version(&Client::new(Config::new(&server.url)).expect("client"))
        .await
        .expect("version");
    assert_eq!(
        *server.seen.lock().expect("lock"),
        vec![Some("Bearer T".to_owned()), None]
    );
    assert!(!format!("{client:?}").contains("\"T\""));
}

#[tokio::test]
async fn a_kubeconfig_token_reaches_the_server() {
    let server = fake(axum::http::StatusCode::OK).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config");
    Kubeconfig::single(
        "fake",
        &server.url,
        None,
        Some(Credential::Token("from-the-file".to_owned())),
        "",
    )
    .write(&path)
    .expect("write");
    let client = Client::new(Config::from_file(&path).expect("config")).expect("client");
    version(&client).await.expect("version");
    assert_eq!(
        *server.seen.lock().expect("lock"),
        vec![Some("Bearer from-the-file".to_owned())]
    );
}

#[tokio::test]
async fn a_token_file_is_re_read_after_a_401() {
    let server = fake(axum::http::StatusCode::UNAUTHORIZED).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "first\n").expect("write");
    let mut config = Config::new(&server.url);
    config.auth = Some(Auth::TokenFile(token.clone()));
    config.retries = 0;
    let client = Client::new(config).expect("client");
    let error = version(&client).await.expect_err("401");
    assert_eq!(error.code(), Some(401), "{error:?}");
    // Rotated: the next request, though within the minute, sends the new one.
    std::fs::write(&token, "second\n").expect("write");
    let _ = version(&client).await;
    assert_eq!(
        *server.seen.lock().expect("lock"),
        vec![
            Some("Bearer first".to_owned()),
            Some("Bearer second".to_owned())
        ]
    );
    // A missing token file is a configuration error naming it, not a panic.
    let mut config = Config::new(&server.url);
    config.auth = Some(Auth::TokenFile(dir.path().join("gone")));
    let error = Client::new(config).expect_err("no file");
    assert!(error.to_string().contains("gone"), "{error}");
}

fn service_account(dir: &Path, ca_pem: &str) {
    std::fs::write(dir.join("token"), "sa-token\n").expect("write");
    std::fs::write(dir.join("ca.crt"), ca_pem).expect("write");
    std::fs::write(dir.join("namespace"), "team\n").expect("write");
}

#[test]
fn in_a_cluster_the_service_account_is_used() {
    let ca = pki::Ca::generate("in-cluster").expect("ca");
    let home = tempfile::tempdir().expect("temp dir");
    let sa = tempfile::tempdir().expect("temp dir");
    service_account(sa.path(), ca.cert_pem());
    let env = Environment {
        home: Some(home.path().to_owned()),
        service_host: Some("10.0.0.1".to_owned()),
        service_port: Some("443".to_owned()),
        service_account_dir: sa.path().to_owned(),
        ..Environment::default()
    };
    let config = Config::infer_from(&env).expect("in-cluster config");
    assert_eq!(config.server, "https://10.0.0.1:443");
    assert_eq!(config.namespace, "team");
    assert_eq!(config.auth, Some(Auth::TokenFile(sa.path().join("token"))));
    assert_eq!(
        config.tls.as_ref().map(|t| t.ca_pem.as_str()),
        Some(ca.cert_pem())
    );
    // An IPv6 host is bracketed.
    let v6 = Environment {
        service_host: Some("fd00::1".to_owned()),
        ..env.clone()
    };
    assert_eq!(
        Config::infer_from(&v6).expect("config").server,
        "https://[fd00::1]:443"
    );
    // Without the files (not in a task), or without the variables: the default server.
    let no_files = Environment {
        service_account_dir: home.path().join("nothing"),
        ..env.clone()
    };
    assert_eq!(
        Config::infer_from(&no_files).expect("config").server,
        client::config::DEFAULT_SERVER
    );
    let no_vars = Environment {
        service_host: None,
        ..env.clone()
    };
    assert_eq!(
        Config::infer_from(&no_vars).expect("config").server,
        client::config::DEFAULT_SERVER
    );
    // A kubeconfig wins over the service account: ~/.loom/config, then
    // $KUBECONFIG's first entry, then $LOOMCONFIG.
    let write = |path: &Path, server: &str| {
        Kubeconfig::single("c", server, None, None, "")
            .write(path)
            .expect("write");
    };
    write(&home.path().join(".loom/config"), "http://home:1");
    assert_eq!(
        Config::infer_from(&env).expect("config").server,
        "http://home:1"
    );
    write(&home.path().join("kube-a"), "http://kube-a:1");
    let kube = Environment {
        kubeconfig: Some(
            format!(
                "{}:{}",
                home.path().join("kube-a").display(),
                home.path().join("kube-b").display()
            )
            .into(),
        ),
        ..env.clone()
    };
    assert_eq!(
        Config::infer_from(&kube).expect("config").server,
        "http://kube-a:1"
    );
    write(&home.path().join("loom"), "http://loom:1");
    let loom = Environment {
        loomconfig: Some(home.path().join("loom")),
        ..kube.clone()
    };
    assert_eq!(
        Config::infer_from(&loom).expect("config").server,
        "http://loom:1"
    );
    // A named file that is missing is an error naming it, not a silent default.
    let missing = Environment {
        loomconfig: Some(home.path().join("missing")),
        ..env
    };
    let error = Config::infer_from(&missing).expect_err("missing");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn a_bad_service_account_ca_is_an_error_naming_the_file() {
    let sa = tempfile::tempdir().expect("temp dir");
    service_account(sa.path(), "not a certificate");
    let error = Config::in_cluster("10.0.0.1", "443", sa.path()).expect_err("bad CA");
    assert!(error.to_string().contains("ca.crt"), "{error}");
    std::fs::write(sa.path().join("token"), "\n").expect("write");
    let error = Config::in_cluster("10.0.0.1", "443", sa.path()).expect_err("empty token");
    assert!(error.to_string().contains("token"), "{error}");
}

/// POSTs `body` as the client and returns the answer.
async fn post(
    client: &Client,
    path: &str,
    body: serde_json::Value,
) -> client::Result<serde_json::Value> {
    client
        .request(
            client::client::Method::POST,
            path,
            Some(client::client::Body {
                content_type: "application/json",
                bytes: serde_json::to_vec(&body).expect("json").into(),
            }),
        )
        .await
}

/// A service-account token for `default/name`, from the TokenRequest subresource.
async fn token_for(admin: &Client, name: &str) -> String {
    let answer = post(
        admin,
        &format!("/api/v1/namespaces/default/serviceaccounts/{name}/token"),
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await
    .expect("a token");
    answer["status"]["token"]
        .as_str()
        .expect("status.token")
        .to_owned()
}

async fn whoami(client: &Client) -> client::Result<String> {
    let review = post(
        client,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .await?;
    Ok(review["status"]["userInfo"]["username"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_task_the_client_is_its_service_account_and_follows_token_rotation() {
    use apiserver::authn::service_account::DEFAULT_ISSUER;
    use apiserver::authn::{Authentication, ServiceAccountTokens};
    let (private, public) = pki::signing_key_pair().expect("key pair");
    let accounts = ServiceAccountTokens::from_pem(
        DEFAULT_ISSUER,
        &[("sa.pub".into(), public)],
        Some(("sa.key".into(), private)),
    )
    .expect("service-account keys");
    let server = loom_testing::TestServer::embedded(apiserver::Config {
        authentication: Authentication {
            anonymous: false,
            x509: true,
            tokens: None,
            service_accounts: Some(Arc::new(accounts)),
        },
        ..apiserver::Config::default()
    })
    .await
    .expect("server");
    let admin = server.client();
    for name in ["robot", "relief"] {
        post(
            &admin,
            "/api/v1/namespaces/default/serviceaccounts",
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        )
        .await
        .expect("account created");
    }
    // What a task finds mounted, and in its environment.
    let sa = tempfile::tempdir().expect("temp dir");
    std::fs::write(sa.path().join("token"), token_for(&admin, "robot").await).expect("write");
    std::fs::write(sa.path().join("ca.crt"), server.pki.ca_pem()).expect("write");
    std::fs::write(sa.path().join("namespace"), "default").expect("write");
    let home = tempfile::tempdir().expect("temp dir");
    let (host, port) = server
        .url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .expect("host:port");
    let env = Environment {
        home: Some(home.path().to_owned()),
        service_host: Some(host.to_owned()),
        service_port: Some(port.to_owned()),
        service_account_dir: sa.path().to_owned(),
        ..Environment::default()
    };
    let mut config = Config::infer_from(&env).expect("in-cluster config");
    config.retries = 0;
    let client = Client::new(config).expect("client");
    assert_eq!(
        whoami(&client).await.expect("whoami"),
        "system:serviceaccount:default:robot"
    );
    // The token is rotated in the file and the old one stops working (its
    // account deleted): one 401, then the client reads the new token.
    std::fs::write(sa.path().join("token"), token_for(&admin, "relief").await).expect("write");
    admin
        .request_bytes(
            client::client::Method::DELETE,
            "/api/v1/namespaces/default/serviceaccounts/robot",
            None,
        )
        .await
        .expect("account deleted");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match whoami(&client).await {
            Ok(name) if name == "system:serviceaccount:default:relief" => break,
            Ok(name) => assert_eq!(name, "system:serviceaccount:default:robot"),
            Err(error) => assert_eq!(error.code(), Some(401), "{error}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated token was never used"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
