//! A node or a bootstrap token reads only the certificate signing requests
//! it asked for itself, one by name, through the real API server over HTTPS:
//! another's request is a 403 naming who asked for it; a list or a watch (of
//! all, or narrowed to one name) is a 403, as is a name it does not know.
//! The administrator still reads them all, and a right RBAC grants on
//! purpose still counts.
#![allow(clippy::unwrap_used)]

use apiserver::certificates::Signing;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use loom_testing::TestServer;
use serde_json::{Value, json};

const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const SECRET: &str = "0123456789abcdef";

async fn server() -> TestServer {
    let pki = loom_testing::tls::TestPki::shared();
    let ca = pki::Ca::from_pem(pki.ca().cert_pem(), pki.ca().key_pem()).unwrap();
    TestServer::embedded(apiserver::Config {
        cluster_signing: Some(Signing::new(ca)),
        ..apiserver::Config::default()
    })
    .await
    .unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let code = response.status().as_u16();
    let body = response.text().await.unwrap();
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Node `name`'s client: its client certificate of the cluster CA.
fn node(server: &TestServer, name: &str) -> reqwest::Client {
    let identity = server
        .pki
        .user(&format!("system:node:{name}"), Some("system:nodes"));
    server.pki.http_client(Some(&identity)).build().unwrap()
}

/// A client presenting `token` and no certificate.
fn with_token(server: &TestServer, token: &str) -> reqwest::Client {
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

/// Whether `client`'s user may `verb` CertificateSigningRequests, by a
/// SelfSubjectAccessReview.
async fn may(server: &TestServer, client: &reqwest::Client, verb: &str) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "group": "certificates.k8s.io",
            "resource": "certificatesigningrequests",
            "verb": verb,
        }},
    });
    let (code, answer) = send(
        client
            .post(format!(
                "{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                server.url
            ))
            .json(&review),
    )
    .await;
    code == 201 && answer["status"]["allowed"] == true
}

/// Waits until `client` may create CSRs (the authorizer follows the
/// bootstrap roles by watch).
async fn ready(server: &TestServer, client: &reqwest::Client) {
    loom_testing::wait::eventually("the bootstrap roles in force", || async {
        may(server, client, "create").await.then_some(())
    })
    .await;
}

/// A CSR object of `signer` for `profile` with `usages`.
fn csr(profile: &pki::Profile, signer: &str, usages: &[&str]) -> Value {
    let (request, _key) = pki::request(profile).unwrap();
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {
            "request": BASE64.encode(request),
            "signerName": signer,
            "usages": usages,
        },
    })
}

/// Creates `object` as `client`; its name.
async fn create(server: &TestServer, client: &reqwest::Client, object: &Value) -> String {
    let (code, created) = send(client.post(format!("{}{CSRS}", server.url)).json(object)).await;
    assert_eq!(code, 201, "{created}");
    created["metadata"]["name"].as_str().unwrap().to_owned()
}

/// A 403 Status whose message holds every one of `words`.
fn assert_forbidden(code: u16, status: &Value, words: &[&str]) {
    assert_eq!(code, 403, "{status}");
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["reason"], "Forbidden", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    for word in words {
        assert!(message.contains(word), "{word:?} not in {message}");
    }
}

#[tokio::test]
async fn nodes_and_bootstrap_tokens_read_only_their_own_requests_by_name() {
    let server = server().await;
    let token = json!({
        "apiVersion": "loom.dev/v1",
        "kind": "BootstrapToken",
        "metadata": {"name": "abcdef"},
        "spec": {
            "secretHash": pki::sha256(SECRET.as_bytes()),
            "expiration": chrono::Utc::now() + chrono::Duration::hours(1),
        },
    });
    let (code, body) = send(
        server
            .http()
            .post(format!("{}/apis/loom.dev/v1/bootstraptokens", server.url))
            .json(&token),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let n1 = node(&server, "n1");
    let n2 = node(&server, "n2");
    let joiner = with_token(&server, &format!("abcdef.{SECRET}"));
    for client in [&n1, &n2, &joiner] {
        ready(&server, client).await;
    }
    // What each asks for: n1 its serving certificate, the token a node's
    // client certificate.
    let mine = create(
        &server,
        &n1,
        &csr(
            &pki::Profile::node_serving("n1", &[]),
            "kubernetes.io/kubelet-serving",
            &["digital signature", "key encipherment", "server auth"],
        ),
    )
    .await;
    let joined = create(
        &server,
        &joiner,
        &csr(
            &pki::Profile::client("system:node:joiner", Some("system:nodes")),
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["digital signature", "client auth"],
        ),
    )
    .await;
    let url = |name: &str| format!("{}{CSRS}/{name}", server.url);

    // Its own, by name.
    let (code, read) = send(n1.get(url(&mine))).await;
    assert_eq!(code, 200, "{read}");
    assert_eq!(read["spec"]["username"], "system:node:n1");
    assert!(read["status"]["certificate"].is_string(), "{read}");
    let (code, read) = send(joiner.get(url(&joined))).await;
    assert_eq!(code, 200, "{read}");
    assert_eq!(read["spec"]["username"], "system:bootstrap:abcdef");

    // Another's: a 403 saying whose it is.
    let (code, status) = send(n2.get(url(&mine))).await;
    assert_forbidden(
        code,
        &status,
        &[&mine, "system:node:n1", "system:node:n2", "get"],
    );
    let (code, status) = send(joiner.get(url(&mine))).await;
    assert_forbidden(
        code,
        &status,
        &["system:node:n1", "system:bootstrap:abcdef"],
    );
    let (code, status) = send(n1.get(url(&joined))).await;
    assert_forbidden(
        code,
        &status,
        &["system:bootstrap:abcdef", "system:node:n1"],
    );

    // No list, no watch, not even of one name or of its own.
    for client in [&n1, &joiner] {
        for query in [
            String::new(),
            "?watch=true".to_owned(),
            format!("?fieldSelector=metadata.name%3D{mine}"),
            format!("?fieldSelector=metadata.name%3D{joined}&watch=true"),
        ] {
            let (code, status) = send(client.get(format!("{}{CSRS}{query}", server.url))).await;
            assert_forbidden(code, &status, &["one by name"]);
            assert!(
                !status.to_string().contains("BEGIN CERTIFICATE"),
                "{query}: {status}"
            );
        }
        assert!(!may(&server, client, "list").await);
        assert!(!may(&server, client, "watch").await);
    }
    // A name the server does not know (a request created a moment ago,
    // perhaps): whose it is cannot be told, a 403.
    let (code, status) = send(n1.get(url("no-such-request"))).await;
    assert_forbidden(code, &status, &["no-such-request", "not known"]);
    // Nor may they change one (their own included).
    let (code, read) = send(n1.get(url(&mine))).await;
    assert_eq!(code, 200);
    let (code, status) = send(n1.put(url(&mine)).json(&read)).await;
    assert_eq!(code, 403, "{status}");

    // The administrator reads them all.
    let (code, list) = send(server.http().get(format!("{}{CSRS}", server.url))).await;
    assert_eq!(code, 200, "{list}");
    let listed = list.to_string();
    assert!(
        listed.contains(&mine) && listed.contains(&joined),
        "{listed}"
    );

    // A right RBAC grants on purpose still counts: n2 bound to read them.
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "csr-reader"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["get", "list"]}],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "n2-csr-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:node:n2"}],
    });
    for (path, object) in [("clusterroles", role), ("clusterrolebindings", binding)] {
        let (code, body) = send(
            server
                .http()
                .post(format!(
                    "{}/apis/rbac.authorization.k8s.io/v1/{path}",
                    server.url
                ))
                .json(&object),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    loom_testing::wait::eventually("n2 bound to read CSRs", || async {
        may(&server, &n2, "list").await.then_some(())
    })
    .await;
    let (code, read) = send(n2.get(url(&mine))).await;
    assert_eq!(code, 200, "{read}");
    let (code, list) = send(n2.get(format!("{}{CSRS}", server.url))).await;
    assert_eq!(code, 200, "{list}");
    // n1 still may not.
    let (code, status) = send(n1.get(url(&joined))).await;
    assert_eq!(code, 403, "{status}");
}

#[tokio::test]
async fn a_stored_role_that_still_reads_every_request_is_trimmed_at_start() {
    let mut server = server().await;
    let rbac = format!(
        "{}/apis/rbac.authorization.k8s.io/v1/clusterroles",
        server.url
    );
    let old = json!({
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["certificatesigningrequests"],
        "verbs": ["create", "get", "list", "watch"],
    });
    let extra = json!({"apiGroups": ["loom.dev"], "resources": ["nodes"], "verbs": ["get"]});
    // The roles as an earlier Loom made them (and one a user added to, one
    // a user froze with autoupdate "false").
    let selfnodeclient =
        format!("{rbac}/system:certificates.k8s.io:certificatesigningrequests:selfnodeclient");
    let bootstrapper = format!("{rbac}/system:node-bootstrapper");
    let (_, mut role) = send(server.http().get(&selfnodeclient)).await;
    role["rules"] = json!([old, extra]);
    let (code, body) = send(server.http().put(&selfnodeclient).json(&role)).await;
    assert_eq!(code, 200, "{body}");
    let (_, mut frozen) = send(server.http().get(&bootstrapper)).await;
    frozen["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
        json!("false");
    frozen["rules"] = json!([old]);
    let (code, body) = send(server.http().put(&bootstrapper).json(&frozen)).await;
    assert_eq!(code, 200, "{body}");
    let n1 = node(&server, "n1");
    loom_testing::wait::eventually("the old rule in force", || async {
        may(&server, &n1, "list").await.then_some(())
    })
    .await;

    let pki = loom_testing::tls::TestPki::shared();
    let ca = pki::Ca::from_pem(pki.ca().cert_pem(), pki.ca().key_pem()).unwrap();
    server
        .restart(apiserver::Config {
            cluster_signing: Some(Signing::new(ca)),
            ..apiserver::Config::default()
        })
        .await
        .unwrap();
    let (_, role) = send(server.http().get(&selfnodeclient)).await;
    let rules = role["rules"].as_array().unwrap();
    assert!(!rules.contains(&old), "{rules:?}");
    assert!(rules.contains(&extra), "what a user added stays: {rules:?}");
    assert!(
        rules.iter().any(|r| r["verbs"] == json!(["create"])
            && r["resources"] == json!(["certificatesigningrequests"])),
        "{rules:?}"
    );
    let (_, frozen) = send(server.http().get(&bootstrapper)).await;
    assert_eq!(
        frozen["rules"],
        json!([old]),
        "autoupdate false is left alone"
    );
    let n1 = node(&server, "n1");
    ready(&server, &n1).await;
    let (code, status) = send(n1.get(format!("{}{CSRS}", server.url))).await;
    assert_forbidden(code, &status, &["one by name"]);
}
