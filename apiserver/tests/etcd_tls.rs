//! The API server reaches etcd over TLS with a client certificate
//! (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`), and nothing else
//! reaches that etcd.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use apiserver::store::EtcdTls;
use apiserver::{StoreUrl, open_store, open_store_with_tls};
use loom_testing::http::JsonClient;
use loom_testing::{EtcdServer, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_an_etcd_that_requires_client_certificates() {
    let etcd = EtcdServer::start_tls().await.unwrap();
    assert!(etcd.endpoint().starts_with("https://"));
    let tls = etcd.tls().unwrap().clone();
    let hosts = etcd.endpoint().trim_start_matches("https://");
    let url: StoreUrl = format!("etcd://{hosts}").parse().unwrap();

    // As `loom apiserver` opens it: the etcd:// URL, TLS from the three files.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca = write("ca.crt", &tls.ca_pem);
    let cert = write("client.crt", &tls.cert_pem);
    let key = write("client.key", &tls.key_pem);
    let from_files = EtcdTls::from_files(&ca, &cert, &key).unwrap();
    let store = open_store_with_tls(&url, "/loom/", Duration::ZERO, Some(from_files))
        .await
        .unwrap();
    let server = TestServer::over(store, apiserver::Config::default())
        .await
        .unwrap();
    let (code, list) = JsonClient::new(&server)
        .send(
            reqwest::Method::GET,
            "/apis/loom.dev/v1/namespaces",
            "application/json",
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["metadata"]["name"] == "default"),
        "{list}"
    );

    // Without TLS, or with a certificate of another CA, etcd is not reached.
    let plain = tokio::time::timeout(
        Duration::from_secs(20),
        open_store(&url, "/loom/", Duration::ZERO),
    )
    .await
    .expect("a refused connection is an error, not a hang");
    assert!(plain.is_err());
    let other = pki::Ca::generate("another-ca").unwrap();
    let stranger = other
        .issue(&pki::Profile::client("stranger", None))
        .unwrap();
    let foreign = EtcdTls {
        ca_pem: tls.ca_pem.clone(),
        cert_pem: stranger.cert_pem,
        key_pem: stranger.key_pem,
    };
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        open_store_with_tls(&url, "/loom/", Duration::ZERO, Some(foreign)),
    )
    .await
    .expect("a refused certificate is an error, not a hang");
    assert!(refused.is_err());
}

#[test]
fn etcd_tls_files_that_are_missing_or_not_pem_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    let error = EtcdTls::from_files(&ca, &cert, &key).unwrap_err();
    assert!(error.starts_with("--etcd-cafile "), "{error}");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    let error = EtcdTls::from_files(&ca, &cert, &key).unwrap_err();
    assert!(
        error.starts_with("--etcd-certfile ") && error.contains("no PEM CERTIFICATE"),
        "{error}"
    );
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let error = EtcdTls::from_files(&ca, &cert, &key).unwrap_err();
    assert!(error.starts_with("--etcd-keyfile "), "{error}");
}
