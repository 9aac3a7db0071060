//! A node joining by TLS bootstrapping, through the real API server over
//! HTTPS: bootstrap tokens accepted, and refused when expired, malformed,
//! unknown or wrong (401); a bootstrap token may do nothing but ask for a
//! node's client certificate (403 for tasks, for another user's certificate,
//! nothing written); the request auto-approved and signed by the cluster CA
//! for 30 days, and the node renewing with that certificate for its own name
//! only; an administrator's request pending until approved; the cluster CA
//! served to anyone.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use apiserver::certificates::Signing;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use loom_testing::TestServer;
use serde_json::{Value, json};

const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const TOKENS: &str = "/apis/loom.dev/v1/bootstraptokens";
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

/// Creates the bootstrap token `id.SECRET` as the administrator, expiring at `expiration`.
async fn create_token(
    server: &TestServer,
    id: &str,
    expiration: Option<chrono::DateTime<chrono::Utc>>,
) {
    let token = json!({
        "apiVersion": "loom.dev/v1",
        "kind": "BootstrapToken",
        "metadata": {"name": id},
        "spec": {"secretHash": pki::sha256(SECRET.as_bytes()), "expiration": expiration},
    });
    let (code, body) = send(
        server
            .http()
            .post(format!("{}{TOKENS}", server.url))
            .json(&token),
    )
    .await;
    assert_eq!(code, 201, "{body}");
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

/// A CSR object asking for `cn` in `o` with `usages`, and its key.
fn csr(cn: &str, o: Option<&str>, usages: &[&str]) -> (Value, String) {
    let (request, key) = pki::request(&pki::Profile::client(cn, o)).unwrap();
    let object = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": BASE64.encode(request),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": usages,
            // Who asks is the server's to say: this is overwritten.
            "username": "admin",
            "groups": ["system:masters"],
        },
    });
    (object, key)
}

const CLIENT: [&str; 2] = ["digital signature", "client auth"];

/// Waits until the bootstrappers' role is in force (the authorizer follows the
/// bootstrap roles by watch), then returns the client.
async fn bootstrapper(server: &TestServer, token: &str) -> reqwest::Client {
    let client = with_token(server, token);
    loom_testing::wait::eventually("the bootstrappers may create CSRs", || async {
        may_create_csrs(server, &client).await.then_some(())
    })
    .await;
    client
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

fn certificate_of(object: &Value) -> String {
    let encoded = object["status"]["certificate"].as_str().unwrap_or_default();
    String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap()
}

#[tokio::test]
async fn bootstrap_tokens_are_accepted_and_refused_as_kubernetes_does() {
    let server = server().await;
    create_token(
        &server,
        "abcdef",
        Some(chrono::Utc::now() + chrono::Duration::hours(1)),
    )
    .await;
    create_token(
        &server,
        "expird",
        Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
    )
    .await;

    let good = bootstrapper(&server, &format!("abcdef.{SECRET}")).await;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let (code, who) = send(
        good.post(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            server.url
        ))
        .json(&review),
    )
    .await;
    assert_eq!(code, 201, "{who}");
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:bootstrap:abcdef"
    );
    let groups = who["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:bootstrappers"), "{groups}");

    for (token, why) in [
        (format!("expird.{SECRET}"), "expired"),
        ("abcdef.fedcba9876543210".to_owned(), "not known"),
        (format!("zzzzzz.{SECRET}"), "not known"),
        (format!("ABCDEF.{SECRET}"), "not one this server knows"),
        ("abcdef.0123".to_owned(), "not one this server knows"),
        (format!("abcdef.{SECRET}x"), "not one this server knows"),
    ] {
        let client = with_token(&server, &token);
        let (code, status) = send(client.get(format!("{}{CSRS}", server.url))).await;
        assert_eq!(code, 401, "{token}: {status}");
        assert_eq!(status["reason"], "Unauthorized", "{token}");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(why), "{token}: {message}");
        assert!(
            !message.contains(SECRET),
            "the secret is never echoed: {message}"
        );
    }
    // The secret is never stored.
    let (_, stored) = send(server.http().get(format!("{}{TOKENS}/abcdef", server.url))).await;
    assert!(!stored.to_string().contains(SECRET), "{stored}");
}

#[tokio::test]
async fn a_bootstrap_token_may_only_ask_for_a_nodes_client_certificate() {
    let server = server().await;
    create_token(&server, "abcdef", None).await;
    let token = bootstrapper(&server, &format!("abcdef.{SECRET}")).await;

    let (code, status) = send(token.get(format!(
        "{}/apis/loom.dev/v1/namespaces/default/tasks",
        server.url
    )))
    .await;
    assert_eq!(code, 403, "{status}");
    assert_eq!(status["reason"], "Forbidden");
    let (code, _) = send(token.get(format!("{}{TOKENS}", server.url))).await;
    assert_eq!(code, 403);

    for (cn, o, usages, why) in [
        (
            "admin",
            Some("system:masters"),
            &CLIENT[..],
            "system:node:NAME",
        ),
        (
            "system:node:n1",
            Some("system:masters"),
            &CLIENT[..],
            "O must be system:nodes",
        ),
        (
            "system:node:n1",
            None,
            &CLIENT[..],
            "O must be system:nodes",
        ),
        (
            "system:node:n1",
            Some("system:nodes"),
            &["server auth"][..],
            "usages",
        ),
        (
            "system:node:",
            Some("system:nodes"),
            &CLIENT[..],
            "system:node:NAME",
        ),
    ] {
        let (object, _) = csr(cn, o, usages);
        let (code, status) = send(token.post(format!("{}{CSRS}", server.url)).json(&object)).await;
        assert_eq!(code, 403, "{cn} {o:?} {usages:?}: {status}");
        assert_eq!(status["reason"], "Forbidden");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        assert!(message.contains("system:bootstrap:abcdef"), "{message}");
    }
    // Another signer is refused too.
    let (mut object, _) = csr("system:node:n1", Some("system:nodes"), &CLIENT);
    object["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
    let (code, _) = send(token.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 403);
    // A request that is not a certificate request is a 422 naming the field.
    let (mut object, _) = csr("system:node:n1", Some("system:nodes"), &CLIENT);
    object["spec"]["request"] = json!(BASE64.encode("-----BEGIN JUNK-----"));
    let (code, status) = send(token.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 422, "{status}");
    assert!(status.to_string().contains("spec.request"), "{status}");

    let (code, list) = send(server.http().get(format!("{}{CSRS}", server.url))).await;
    assert_eq!(code, 200);
    assert_eq!(list["items"], json!([]), "nothing was written");
}

#[tokio::test]
async fn a_node_joins_with_a_token_and_renews_with_its_certificate_for_its_own_name_only() {
    let server = server().await;
    create_token(&server, "abcdef", None).await;
    let token = bootstrapper(&server, &format!("abcdef.{SECRET}")).await;

    // The CA, from its public address, without any credential.
    let anonymous = server.http_anonymous();
    let response = anonymous
        .get(format!("{}/.well-known/loom/cluster-ca.crt", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let ca = response.text().await.unwrap();
    assert_eq!(ca, server.pki.ca_pem());

    let (object, key) = csr("system:node:n1", Some("system:nodes"), &CLIENT);
    let (code, created) = send(token.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["username"], "system:bootstrap:abcdef");
    let groups = created["spec"]["groups"].to_string();
    assert!(!groups.contains("system:masters"), "{groups}");
    assert_eq!(created["status"]["conditions"][0]["type"], "Approved");
    assert_eq!(created["status"]["conditions"][0]["reason"], "AutoApproved");
    let certificate = certificate_of(&created);
    assert!(server.pki.ca().signed(&certificate));
    let info = pki::CertInfo::from_pem(&certificate).unwrap();
    assert_eq!(info.common_name, "system:node:n1");
    assert_eq!(info.organizations, ["system:nodes"]);
    assert!(info.client_auth && !info.server_auth);
    let life = info.not_after.duration_since(SystemTime::now()).unwrap();
    let thirty_days = Duration::from_secs(30 * 24 * 3600);
    assert!(
        life <= thirty_days && life > thirty_days - Duration::from_secs(600),
        "{life:?}"
    );

    // The bootstrapper can read its answer back.
    let name = created["metadata"]["name"].as_str().unwrap();
    let (code, read) = send(token.get(format!("{}{CSRS}/{name}", server.url))).await;
    assert_eq!(code, 200);
    assert_eq!(certificate_of(&read), certificate);
    // But not approve or rewrite it.
    for sub in ["status", "approval"] {
        let (code, _) = send(
            token
                .put(format!("{}{CSRS}/{name}/{sub}", server.url))
                .json(&read),
        )
        .await;
        assert_eq!(code, 403, "{sub}");
    }

    // The node, with its new certificate: itself, and may renew only itself.
    let identity = pki::KeyAndCert {
        cert_pem: certificate,
        key_pem: key,
    };
    let node = server.pki.http_client(Some(&identity)).build().unwrap();
    let (object, _) = csr("system:node:n1", Some("system:nodes"), &CLIENT);
    let (code, renewed) = send(node.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 201, "{renewed}");
    assert_eq!(renewed["spec"]["username"], "system:node:n1");
    let info = pki::CertInfo::from_pem(&certificate_of(&renewed)).unwrap();
    assert_eq!(info.common_name, "system:node:n1");
    let (object, _) = csr("system:node:n2", Some("system:nodes"), &CLIENT);
    let (code, status) = send(node.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 403, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("n2"),
        "{status}"
    );
    // A node has no business with tasks not bound to it.
    let (code, _) = send(node.get(format!(
        "{}/apis/loom.dev/v1/namespaces/default/tasks",
        server.url
    )))
    .await;
    assert_eq!(code, 403);
}

#[tokio::test]
async fn an_administrators_request_waits_for_approval_then_is_signed() {
    let server = server().await;
    let admin = server.http();
    let (mut object, _) = csr("carol", Some("dev"), &CLIENT);
    object["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
    object["spec"]["expirationSeconds"] = json!(3600);
    let (code, created) = send(admin.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 201, "{created}");
    assert!(created["status"]["certificate"].is_null(), "{created}");
    assert!(
        created["status"]["conditions"].is_null(),
        "pending: {created}"
    );

    let name = created["metadata"]["name"].as_str().unwrap();
    let mut approved = created.clone();
    approved["status"] = json!({"conditions": [{
        "type": "Approved", "status": "True", "reason": "ByHand", "message": "ok"}]});
    let (code, signed) = send(
        admin
            .put(format!("{}{CSRS}/{name}/status", server.url))
            .json(&approved),
    )
    .await;
    assert_eq!(code, 200, "{signed}");
    let info = pki::CertInfo::from_pem(&certificate_of(&signed)).unwrap();
    assert_eq!(info.common_name, "carol");
    assert_eq!(info.organizations, ["dev"]);
    let life = info.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(life <= Duration::from_secs(3600), "{life:?}");
    // kubectl certificate approve's path: only the conditions are taken.
    let (object, _) = csr("dave", Some("dev"), &CLIENT);
    let mut object = object;
    object["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
    let (code, pending) = send(admin.post(format!("{}{CSRS}", server.url)).json(&object)).await;
    assert_eq!(code, 201, "{pending}");
    let other = pending["metadata"]["name"].as_str().unwrap();
    let mut approval = pending.clone();
    approval["spec"]["username"] = json!("someone-else");
    approval["status"] = json!({
        "certificate": BASE64.encode("forged"),
        "conditions": [{"type": "Approved", "status": "True", "reason": "KubectlApprove"}],
    });
    let (code, approved) = send(
        admin
            .put(format!("{}{CSRS}/{other}/approval", server.url))
            .json(&approval),
    )
    .await;
    assert_eq!(code, 200, "{approved}");
    assert_eq!(approved["spec"]["username"], pending["spec"]["username"]);
    let info = pki::CertInfo::from_pem(&certificate_of(&approved)).unwrap();
    assert_eq!(info.common_name, "dave");
    // The spec never changes.
    let mut changed = signed.clone();
    changed["spec"]["usages"] = json!(["client auth"]);
    let (code, _) = send(
        admin
            .put(format!("{}{CSRS}/{name}", server.url))
            .json(&changed),
    )
    .await;
    assert_eq!(code, 422);
}

/// The `kubectl` on `PATH`, if there is one.
fn kubectl() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|path| path.is_file())
    })
}

#[tokio::test]
async fn kubectl_certificate_approve_signs_and_deny_does_not() {
    let Some(kubectl) = kubectl() else {
        eprintln!("skipped: no kubectl on PATH");
        return;
    };
    let server = server().await;
    let kubeconfig = server.kubeconfig().unwrap();
    let admin = server.http();
    let mut names = Vec::new();
    for user in ["erin", "frank"] {
        let (mut object, _) = csr(user, Some("dev"), &CLIENT);
        object["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
        let (code, created) = send(admin.post(format!("{}{CSRS}", server.url)).json(&object)).await;
        assert_eq!(code, 201, "{created}");
        names.push(created["metadata"]["name"].as_str().unwrap().to_owned());
    }
    let run = |verb: &'static str, name: String| {
        let kubectl = kubectl.clone();
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["certificate", verb, &name])
                .output()
                .unwrap()
        })
    };
    let approved = run("approve", names[0].clone()).await.unwrap();
    assert!(approved.status.success(), "{approved:?}");
    let denied = run("deny", names[1].clone()).await.unwrap();
    assert!(denied.status.success(), "{denied:?}");

    let (_, erin) = send(admin.get(format!("{}{CSRS}/{}", server.url, names[0]))).await;
    let info = pki::CertInfo::from_pem(&certificate_of(&erin)).unwrap();
    assert_eq!(info.common_name, "erin");
    assert_eq!(erin["status"]["conditions"][0]["reason"], "KubectlApprove");
    let (_, frank) = send(admin.get(format!("{}{CSRS}/{}", server.url, names[1]))).await;
    assert_eq!(frank["status"]["conditions"][0]["type"], "Denied");
    assert!(frank["status"]["certificate"].is_null(), "{frank}");
}
