//! A node asks for its serving certificate with `client::bootstrap` against
//! the real API server and follows the answer by reading its own request by
//! name (a node may neither list nor watch requests): signed at once when
//! the cluster signs; still pending when nobody signs, which the node waits
//! out and reports as such, never as a refusal.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use loom_testing::TestServer;

#[tokio::test]
async fn a_node_gets_its_serving_certificate_reading_its_own_request_by_name() {
    let pki = loom_testing::tls::TestPki::shared();
    let ca = pki::Ca::from_pem(pki.ca().cert_pem(), pki.ca().key_pem()).unwrap();
    let server = TestServer::embedded(apiserver::Config {
        cluster_signing: Some(apiserver::certificates::Signing::new(ca)),
        ..apiserver::Config::default()
    })
    .await
    .unwrap();
    let node = server.client_as("system:node:n1", Some("system:nodes"));
    let (cert, key) =
        client::bootstrap::request_node_serving_certificate(&node, "n1", Duration::from_secs(30))
            .await
            .unwrap();
    let info = pki::CertInfo::from_pem(&cert).unwrap();
    assert_eq!(info.common_name, "system:node:n1");
    assert_eq!(info.dns_names, ["n1"]);
    assert!(key.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_pending_request_is_waited_for_by_name_and_reported_pending() {
    // No cluster signing: the request is never signed.
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let node = server.client_as("system:node:n1", Some("system:nodes"));
    let started = std::time::Instant::now();
    let error =
        client::bootstrap::request_node_serving_certificate(&node, "n1", Duration::from_secs(3))
            .await
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("not answered within") && error.contains("pending"),
        "{error}"
    );
    assert!(
        !error.contains("403") && !error.contains("orbidden"),
        "{error}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2), "{error}");
}
