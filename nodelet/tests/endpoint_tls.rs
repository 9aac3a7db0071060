//! The nodelet's endpoint (task logs) over TLS: its serving certificate of
//! the cluster CA, callers' client certificates verified against it, the API
//! server's user let in, and others only as the API server allows — no
//! certificate is a 401, a user without the right a 403.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::Node;
use client::Api;
use loom_testing::nodelet::Harness;
use nodelet::server::{API_SERVER_USER, Callers};
use nodelet::{EndpointTls, FakeDriver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_tls_to_callers_the_api_server_allows() {
    let h = Harness::new("endpoint-tls").await;
    let pki = h.server.pki.clone();
    let dir = tempfile::tempdir().unwrap();
    let serving = pki
        .ca()
        .issue(&pki::Profile::server(
            &format!("system:node:{}", h.name),
            &["127.0.0.1".to_owned()],
        ))
        .unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = write("serving.crt", &serving.cert_pem);
    let key = write("serving.key", &serving.key_pem);
    let ca = write("ca.crt", pki.ca_pem());
    let mut config = h.config();
    config.endpoint_tls = Some(EndpointTls {
        server: loom_listener::tls::server_config(&cert, &key, Some(&ca)).unwrap(),
        callers: Callers {
            users: vec![API_SERVER_USER.to_owned()],
        },
    });
    let nodelet = h.start(config, Some(Arc::new(FakeDriver::default())));

    // The node advertises an https endpoint.
    let nodes: Api<Node> = Api::all(h.client.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    let endpoint = loop {
        if let Some(node) = nodes.get_opt(&h.name).await.unwrap()
            && let Some(status) = node.status
            && !status.nodelet_endpoint.is_empty()
        {
            break status.nodelet_endpoint;
        }
        assert!(Instant::now() < deadline, "no endpoint registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let base = endpoint.trim_end_matches('/').to_owned();

    let get = |client: reqwest::Client, path: &'static str| {
        let url = format!("{base}{path}");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let anonymous = pki.http_client(None).build().unwrap();
    let admin = pki.http_client(Some(pki.admin())).build().unwrap();
    let api_server = pki
        .http_client(Some(&pki.user(API_SERVER_USER, None)))
        .build()
        .unwrap();
    assert_eq!(get(anonymous.clone(), "/healthz").await, 200);
    assert_eq!(get(anonymous, "/logs/default/t").await, 401);
    let nobody = pki
        .http_client(Some(&pki.user("nobody", None)))
        .build()
        .unwrap();
    assert_eq!(
        get(nobody, "/logs/default/t").await,
        403,
        "a user the API server does not allow to read logs"
    );
    // An administrator is not the API server, but the API server allows it
    // (caller_auth.rs tests who else is let in).
    let code = get(admin.clone(), "/logs/default/t").await;
    assert!(code != 401 && code != 403, "the administrator: {code}");
    assert_eq!(get(admin, "/metrics").await, 200);
    let code = get(api_server.clone(), "/logs/default/t").await;
    assert!(
        code != 401 && code != 403,
        "the API server is let in: {code}"
    );
    assert_eq!(get(api_server, "/metrics").await, 200);

    // A client certificate of another CA does not even connect.
    let other = pki::Ca::generate("another-ca").unwrap();
    let stranger = other
        .issue(&pki::Profile::client(API_SERVER_USER, None))
        .unwrap();
    let foreign = pki.http_client(Some(&stranger)).build().unwrap();
    assert!(foreign.get(format!("{base}/metrics")).send().await.is_err());
    // Plain HTTP gets no answer.
    let plain = base.replacen("https://", "http://", 1);
    let answer = pki
        .http_client(None)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{plain}/metrics"))
        .send()
        .await;
    assert!(answer.is_err() || !answer.unwrap().status().is_success());
    nodelet.stop().await;
}
