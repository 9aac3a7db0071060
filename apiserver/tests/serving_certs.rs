//! Nodes' serving certificates, through the real API server over HTTPS: a
//! node's kubelet-serving request for itself (`DNS:NAME` alone) is approved
//! and signed at once; one naming another node (in the CN or the names), an
//! IP address or another host is stored Denied with the reason and never
//! signed; a bootstrap token cannot ask for one (403, nothing written); an
//! administrator's waits to be approved and is refused by the signer if it
//! names another host than its node. And the API server believes a
//! nodelet's HTTPS endpoint only if its certificate is the node's the task
//! is bound to: another node's certificate (even for the same address), or
//! one without the node's name, gets a 503 naming why; the right one, served
//! after a swap without a restart, gets the log.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use apiserver::certificates::Signing;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use loom_testing::TestServer;
use serde_json::{Value, json};

const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const SERVING: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
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

/// A kubelet-serving CSR object for `cn` in `o`, naming `dns` and `ips`.
fn serving_csr(cn: &str, o: Option<&str>, dns: &[&str], ips: &[&str]) -> Value {
    let mut names: Vec<String> = dns.iter().map(|d| (*d).to_owned()).collect();
    names.extend(ips.iter().map(|i| (*i).to_owned()));
    let mut profile = pki::Profile::server(cn, &names);
    profile.organization = o.map(str::to_owned);
    let (request, _key) = pki::request(&profile).unwrap();
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-serving-"},
        "spec": {
            "request": BASE64.encode(request),
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": SERVING,
        },
    })
}

fn certificate_of(object: &Value) -> Option<pki::CertInfo> {
    let encoded = object["status"]["certificate"].as_str()?;
    let pem = String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap();
    Some(pki::CertInfo::from_pem(&pem).unwrap())
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Node `name`'s client: its client certificate of the cluster CA.
fn node(server: &TestServer, name: &str) -> reqwest::Client {
    let identity = server
        .pki
        .user(&format!("system:node:{name}"), Some("system:nodes"));
    server.pki.http_client(Some(&identity)).build().unwrap()
}

/// Waits until nodes may create CSRs (the authorizer's caches follow the
/// bootstrap roles by watch).
async fn ready(server: &TestServer, client: &reqwest::Client) {
    loom_testing::wait::eventually("nodes may create CSRs", || async {
        may_create_csrs(server, client).await.then_some(())
    })
    .await;
}

/// Whether `client`'s user may create CertificateSigningRequests, by a
/// SelfSubjectAccessReview (the authorizer's caches follow the bootstrap
/// roles by watch).
async fn may_create_csrs(server: &TestServer, client: &reqwest::Client) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "group": "certificates.k8s.io",
            "resource": "certificatesigningrequests",
            "verb": "create",
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

#[tokio::test]
async fn a_node_gets_a_serving_certificate_for_itself_only() {
    let server = server().await;
    let n1 = node(&server, "n1");
    ready(&server, &n1).await;
    let post = |client: &reqwest::Client, object: Value| {
        send(client.post(format!("{}{CSRS}", server.url)).json(&object))
    };

    // Its own: approved and signed at once.
    let (code, own) = post(
        &n1,
        serving_csr("system:node:n1", Some("system:nodes"), &["n1"], &[]),
    )
    .await;
    assert_eq!(code, 201, "{own}");
    assert_eq!(own["spec"]["username"], "system:node:n1");
    assert_eq!(
        condition(&own, "Approved").unwrap()["reason"],
        "AutoApproved"
    );
    let info = certificate_of(&own).expect("signed");
    assert_eq!(info.common_name, "system:node:n1");
    assert_eq!(info.organizations, ["system:nodes"]);
    assert_eq!(info.dns_names, ["n1"]);
    assert!(info.ip_addresses.is_empty());
    assert!(info.server_auth && !info.client_auth);

    // Anything else it asks: stored Denied, saying why, never signed.
    for (object, why) in [
        (
            serving_csr("system:node:n2", Some("system:nodes"), &["n2"], &[]),
            "not node \"n2\"'s",
        ),
        (
            serving_csr("system:node:n2", Some("system:nodes"), &["n1"], &[]),
            "not node \"n2\"'s",
        ),
        (
            serving_csr("system:node:n1", Some("system:nodes"), &["n1", "n2"], &[]),
            "not \"n2\"",
        ),
        (
            serving_csr("system:node:n1", Some("system:nodes"), &["n2"], &[]),
            "not \"n2\"",
        ),
        (
            serving_csr(
                "system:node:n1",
                Some("system:nodes"),
                &["n1", "api.example.com"],
                &[],
            ),
            "api.example.com",
        ),
        (
            serving_csr(
                "system:node:n1",
                Some("system:nodes"),
                &["n1"],
                &["10.0.0.2"],
            ),
            "IP addresses (10.0.0.2)",
        ),
        (
            serving_csr("system:node:n1", Some("system:masters"), &["n1"], &[]),
            "O must be system:nodes",
        ),
        (
            serving_csr("system:node:n1", Some("system:nodes"), &[], &[]),
            "at least the node",
        ),
    ] {
        let (code, denied) = post(&n1, object).await;
        assert_eq!(code, 201, "{denied}");
        let refusal = condition(&denied, "Denied").unwrap_or_else(|| panic!("{denied}"));
        let message = refusal["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
        assert!(condition(&denied, "Approved").is_none(), "{denied}");
        assert!(certificate_of(&denied).is_none(), "{denied}");
    }
    // The wrong usages too.
    let mut client_usage = serving_csr("system:node:n1", Some("system:nodes"), &["n1"], &[]);
    client_usage["spec"]["usages"] = json!(["digital signature", "client auth"]);
    let (code, denied) = post(&n1, client_usage).await;
    assert_eq!(code, 201, "{denied}");
    assert!(condition(&denied, "Denied").is_some(), "{denied}");
    assert!(certificate_of(&denied).is_none());

    // A denied request stays unsigned even if the node writes Approved.
    let name = denied["metadata"]["name"].as_str().unwrap();
    let mut approved = denied.clone();
    approved["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
    let (code, _) = send(
        n1.put(format!("{}{CSRS}/{name}/approval", server.url))
            .json(&approved),
    )
    .await;
    assert_eq!(code, 403);
    let (_, stored) = send(server.http().get(format!("{}{CSRS}/{name}", server.url))).await;
    assert!(certificate_of(&stored).is_none(), "{stored}");
}

#[tokio::test]
async fn a_bootstrap_token_cannot_ask_for_a_serving_certificate() {
    let server = server().await;
    let token = json!({
        "apiVersion": "loom.dev/v1",
        "kind": "BootstrapToken",
        "metadata": {"name": "abcdef"},
        "spec": {"secretHash": pki::sha256(SECRET.as_bytes())},
    });
    let (code, body) = send(
        server
            .http()
            .post(format!("{}/apis/loom.dev/v1/bootstraptokens", server.url))
            .json(&token),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer abcdef.{SECRET}")).unwrap(),
    );
    let bootstrapper = server
        .pki
        .http_client(None)
        .default_headers(headers)
        .build()
        .unwrap();
    ready(&server, &bootstrapper).await;
    let (code, status) = send(bootstrapper.post(format!("{}{CSRS}", server.url)).json(
        &serving_csr("system:node:n1", Some("system:nodes"), &["n1"], &[]),
    ))
    .await;
    assert_eq!(code, 403, "{status}");
    assert_eq!(status["kind"], "Status");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("may only ask for a node's client certificate"),
        "{status}"
    );
    let (_, list) = send(server.http().get(format!("{}{CSRS}", server.url))).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        0,
        "nothing written"
    );
}

#[tokio::test]
async fn an_administrators_serving_request_is_signed_once_approved_if_it_names_its_node_only() {
    let server = server().await;
    let admin = server.http();
    let approve = |object: &Value| {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut approved = object.clone();
        approved["status"] = json!({"conditions": [{
            "type": "Approved", "status": "True", "reason": "ByHand", "message": "checked"}]});
        send(
            admin
                .put(format!("{}{CSRS}/{name}/approval", server.url))
                .json(&approved),
        )
    };
    // With an address the administrator checked: pending, then signed.
    let (code, pending) = send(
        admin
            .post(format!("{}{CSRS}", server.url))
            .json(&serving_csr(
                "system:node:n3",
                Some("system:nodes"),
                &["n3"],
                &["10.0.0.3"],
            )),
    )
    .await;
    assert_eq!(code, 201, "{pending}");
    assert!(pending["status"]["conditions"].is_null(), "{pending}");
    let (code, signed) = approve(&pending).await;
    assert_eq!(code, 200, "{signed}");
    let info = certificate_of(&signed).expect("signed");
    assert_eq!(info.dns_names, ["n3"]);
    assert_eq!(info.ip_addresses, ["10.0.0.3".parse::<IpAddr>().unwrap()]);
    assert!(info.server_auth);

    // Naming another node: the signer refuses even an approved one.
    let (_, pending) = send(
        admin
            .post(format!("{}{CSRS}", server.url))
            .json(&serving_csr(
                "system:node:n3",
                Some("system:nodes"),
                &["n3", "n4"],
                &[],
            )),
    )
    .await;
    let (code, failed) = approve(&pending).await;
    assert_eq!(code, 200, "{failed}");
    assert!(certificate_of(&failed).is_none(), "{failed}");
    let message = condition(&failed, "Failed").unwrap()["message"].to_string();
    assert!(message.contains("n4"), "{message}");
}

/// A stand-in for a node's HTTPS endpoint serving `cert` (replaceable while
/// it runs) and a log; its address.
async fn tls_nodelet(
    server: &TestServer,
    cert: std::sync::Arc<loom_listener::tls::ServingCert>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/logs/{namespace}/{task}",
        axum::routing::get(|| async { "a line of the log\n" }),
    );
    let config = loom_listener::tls::server_config_with(cert, server.pki.ca_pem()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(loom_listener::serve_tls(
        listener,
        app,
        loom_listener::Limits::default(),
        config,
        shutdown,
    ));
    address
}

fn issue(server: &TestServer, cn: &str, names: &[&str]) -> pki::KeyAndCert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut profile = pki::Profile::server(cn, &names);
    profile.organization = Some("system:nodes".to_owned());
    server.pki.ca().issue(&profile).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_believes_a_nodelet_only_with_its_own_nodes_certificate() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let http = server.http();
    let shutdown = tokio_util::sync::CancellationToken::new();
    // The endpoint first shows node n2's certificate, valid for its address.
    let other = issue(&server, "system:node:n2", &["n2", "127.0.0.1"]);
    let cert = loom_listener::tls::ServingCert::from_pem(&other.cert_pem, &other.key_pem).unwrap();
    let address = tls_nodelet(&server, cert.clone(), shutdown.clone()).await;
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{}{path}", server.url)).json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for (node, task) in [("n1", "t1"), ("1.2.3.4", "t2")] {
        assert_eq!(
            post("/apis/loom.dev/v1/nodes", json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": node}, "status": {"nodeletEndpoint": format!("https://{address}")}})).await,
            201
        );
        assert_eq!(
            post("/apis/loom.dev/v1/namespaces/default/tasks", json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": task}, "spec": {"image": "busybox", "nodeName": node}})).await,
            201
        );
    }
    let log = |task: &'static str| {
        let request = http.get(format!(
            "{}/apis/loom.dev/v1/namespaces/default/tasks/{task}/log",
            server.url
        ));
        async move {
            let response = request.send().await.unwrap();
            let code = response.status().as_u16();
            (code, response.text().await.unwrap())
        }
    };
    let (code, body) = log("t1").await;
    assert_eq!(code, 503, "another node's certificate: {body}");
    assert!(
        body.contains("n1") && body.contains("certificate"),
        "{body}"
    );

    // Another node's subject with this node's name: refused too.
    let forged = issue(&server, "system:node:n2", &["n1"]);
    cert.replace(&forged.cert_pem, &forged.key_pem).unwrap();
    let (code, body) = log("t1").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("system:node:n2"), "{body}");

    // The node's own subject for its address only (no DNS:n1): refused.
    let unnamed = issue(&server, "system:node:n1", &["127.0.0.1"]);
    cert.replace(&unnamed.cert_pem, &unnamed.key_pem).unwrap();
    let (code, body) = log("t1").await;
    assert_eq!(code, 503, "{body}");

    // Another CA's certificate for the right name: refused.
    let stranger = pki::Ca::generate("another-ca").unwrap();
    let mut profile = pki::Profile::server("system:node:n1", &["n1".to_owned()]);
    profile.organization = Some("system:nodes".to_owned());
    let foreign = stranger.issue(&profile).unwrap();
    cert.replace(&foreign.cert_pem, &foreign.key_pem).unwrap();
    let (code, body) = log("t1").await;
    assert_eq!(code, 503, "{body}");

    // Its own, swapped in without a restart: the log.
    let own = issue(&server, "system:node:n1", &["n1"]);
    cert.replace(&own.cert_pem, &own.key_pem).unwrap();
    let (code, body) = log("t1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "a line of the log\n");

    // A node named like an address is never called by that address.
    let (code, body) = log("t2").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("read as an address"), "{body}");

    // A key that does not fit its certificate is refused; the current stays.
    assert!(cert.replace(&own.cert_pem, &other.key_pem).is_err());
    assert_eq!(log("t1").await.0, 200);
    shutdown.cancel();
}
