//! The client over HTTPS against a real API server serving TLS: it trusts only
//! the cluster's CA, presents its certificate, and fails clearly on a server of
//! another CA or with a certificate the server does not accept.

use std::sync::Arc;

use apiserver::store::{EmbeddedOptions, EmbeddedStore};
use client::{Api, Client, Config, Credential, Kubeconfig, TlsConfig};
use pki::{Ca, Profile};
use tokio_util::sync::CancellationToken;

struct Server {
    url: String,
    ca: Ca,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::generate("loom-ca").expect("ca");
    let serving = ca
        .issue(&Profile::server(
            "loom-apiserver",
            &["127.0.0.1".to_owned(), "api.loom.test".to_owned()],
        ))
        .expect("serving certificate");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let tls = loom_listener::tls::server_config(
        &write("tls.crt", &serving.cert_pem),
        &write("tls.key", &serving.key_pem),
        Some(&write("ca.crt", ca.cert_pem())),
    )
    .expect("server config");
    let store =
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("loom.db"))).expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().expect("address").port()
    );
    let stop = CancellationToken::new();
    let config = apiserver::Config {
        tls: Some(tls),
        ..apiserver::Config::default()
    };
    tokio::spawn(apiserver::run(
        Arc::new(store),
        listener,
        config,
        stop.clone(),
    ));
    Server {
        url,
        ca,
        stop,
        _dir: dir,
    }
}

fn client(server: &Server, ca: &Ca, identity: Option<&pki::KeyAndCert>) -> Client {
    let mut config = Config::new(&server.url);
    config.retries = 0;
    config.tls = Some(TlsConfig {
        ca_pem: ca.cert_pem().to_owned(),
        identity: identity.map(|i| (i.cert_pem.clone(), i.key_pem.clone())),
    });
    Client::new(config).expect("client")
}

async fn ready(client: &Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let nodes: Api<api_types::Node> = Api::all(client.clone());
        match nodes.list(&Default::default()).await {
            Ok(_) => return,
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "not ready: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_client_speaks_https_with_the_cluster_ca_and_its_certificate() {
    let server = start().await;
    let admin = server
        .ca
        .issue(&Profile::client("loom-admin", Some("system:masters")))
        .expect("admin certificate");
    let trusted = client(&server, &server.ca, Some(&admin));
    ready(&trusted).await;
    let namespaces: Api<api_types::Namespace> = Api::all(trusted.clone());
    let list = namespaces.list(&Default::default()).await.expect("list");
    assert!(list.items.iter().any(|n| n.metadata.name == "default"));

    // Without a certificate the handshake succeeds (a bearer token would
    // authenticate it), and with nothing else the API answers 401.
    let anonymous = client(&server, &server.ca, None);
    let nodes: Api<api_types::Node> = Api::all(anonymous);
    let refused = nodes
        .list(&Default::default())
        .await
        .expect_err("no credential");
    assert_eq!(refused.code(), Some(401), "{refused}");

    // A server the client's CA did not sign: refused, with the cause.
    let other = Ca::generate("other").expect("other ca");
    let wary = client(&server, &other, None);
    let nodes: Api<api_types::Node> = Api::all(wary);
    let error = nodes
        .list(&Default::default())
        .await
        .expect_err("untrusted server");
    assert!(
        format!("{error:?}").to_lowercase().contains("certificate"),
        "{error:?}"
    );

    // A certificate of another CA: the server ends the handshake.
    let mallory = other
        .issue(&Profile::client("mallory", Some("system:masters")))
        .expect("foreign certificate");
    let foreign = client(&server, &server.ca, Some(&mallory));
    let nodes: Api<api_types::Node> = Api::all(foreign);
    nodes
        .list(&Default::default())
        .await
        .expect_err("a foreign client certificate");
}

#[test]
fn a_bad_ca_or_key_is_a_configuration_error() {
    let mut config = Config::new("https://127.0.0.1:1");
    config.tls = Some(TlsConfig {
        ca_pem: "not a certificate".to_owned(),
        identity: None,
    });
    let error = Client::new(config).expect_err("bad CA");
    assert!(error.to_string().contains("CA certificate"), "{error}");
    let ca = Ca::generate("loom-ca").expect("ca");
    let mut config = Config::new("https://127.0.0.1:1");
    config.tls = Some(TlsConfig {
        ca_pem: ca.cert_pem().to_owned(),
        identity: Some((ca.cert_pem().to_owned(), "garbage".to_owned())),
    });
    let error = Client::new(config).expect_err("bad key");
    assert!(error.to_string().contains("client key"), "{error}");
}

#[tokio::test]
async fn a_kubeconfig_with_a_tls_server_name_checks_that_name() {
    let server = start().await;
    let admin = server
        .ca
        .issue(&Profile::client("loom-admin", Some("system:masters")))
        .expect("admin certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config");
    let mut kubeconfig = Kubeconfig::single(
        "tls",
        &server.url,
        Some(server.ca.cert_pem()),
        Some(Credential::ClientCert {
            cert_pem: admin.cert_pem.clone(),
            key_pem: admin.key_pem.clone(),
        }),
        "",
    );
    let client_named = |kubeconfig: &Kubeconfig| {
        kubeconfig.write(&path).expect("write");
        let mut config = Config::from_file(&path).expect("config");
        config.retries = 0;
        Client::new(config).expect("client")
    };
    // The URL's host, then a name the certificate carries: both trusted.
    ready(&client_named(&kubeconfig)).await;
    kubeconfig.clusters[0].cluster.tls_server_name = Some("api.loom.test".to_owned());
    ready(&client_named(&kubeconfig)).await;
    // A name it does not carry: refused, though the CA signed it.
    kubeconfig.clusters[0].cluster.tls_server_name = Some("elsewhere.test".to_owned());
    let nodes: Api<api_types::Node> = Api::all(client_named(&kubeconfig));
    let error = nodes
        .list(&Default::default())
        .await
        .expect_err("a name the certificate does not carry");
    assert!(
        format!("{error:?}").to_lowercase().contains("certificate"),
        "{error:?}"
    );
}
