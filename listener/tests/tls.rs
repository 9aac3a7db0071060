//! The listener over TLS: a client certificate of the cluster's CA reaches the
//! request, a client without one is served too, one of another CA is refused
//! at the handshake, a plain-HTTP client gets no answer, and a client that
//! never finishes its handshake is cut off after the header timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use loom_listener::tls::{PeerCertificates, server_config};
use loom_listener::{Limits, serve_tls};
use pki::{Ca, CertInfo, Profile};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn who(certificates: Option<Extension<PeerCertificates>>) -> String {
    match certificates {
        Some(Extension(PeerCertificates(chain))) => CertInfo::from_der(&chain[0])
            .map(|info| info.common_name)
            .unwrap_or_else(|e| e),
        None => "anonymous".to_owned(),
    }
}

struct Server {
    address: std::net::SocketAddr,
    ca: Ca,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start(header_timeout: Duration) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::generate("loom-ca").expect("ca");
    let serving = ca
        .issue(&Profile::server(
            "loom-apiserver",
            &["127.0.0.1".to_owned()],
        ))
        .expect("serving certificate");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let config = server_config(
        &write("tls.crt", &serving.cert_pem),
        &write("tls.key", &serving.key_pem),
        Some(&write("ca.crt", ca.cert_pem())),
    )
    .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let limits = Limits {
        header_read_timeout: header_timeout,
        ..Limits::default()
    };
    tokio::spawn(serve_tls(
        listener,
        Router::new().route("/", get(who)),
        limits,
        config,
        stop.clone(),
    ));
    Server {
        address,
        ca,
        stop,
        _dir: dir,
    }
}

fn client_config(ca: &Ca, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca pem"))
        .expect("add ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
    })
}

/// GET / over TLS; the body, or the error of the handshake or the read.
async fn get_root(server: &Server, config: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let tcp = TcpStream::connect(server.address)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    tls.read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or(response.clone())?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.to_owned());
    }
    Ok(body.to_owned())
}

#[tokio::test]
async fn client_certificates_reach_the_request_and_foreign_ones_are_refused() {
    let server = start(Duration::from_secs(5)).await;
    let alice = server
        .ca
        .issue(&Profile::client("alice", Some("team")))
        .expect("client certificate");
    let body = get_root(
        &server,
        client_config(&server.ca, Some((&alice.cert_pem, &alice.key_pem))),
    )
    .await
    .expect("served with a certificate");
    assert_eq!(body, "alice");
    // No certificate: served, for a token to authenticate.
    let body = get_root(&server, client_config(&server.ca, None))
        .await
        .expect("served without a certificate");
    assert_eq!(body, "anonymous");
    // A certificate of another CA: no answer.
    let other = Ca::generate("other").expect("other ca");
    let mallory = other
        .issue(&Profile::client("mallory", Some("system:masters")))
        .expect("foreign certificate");
    let refused = get_root(
        &server,
        client_config(&server.ca, Some((&mallory.cert_pem, &mallory.key_pem))),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    server.stop.cancel();
}

#[tokio::test]
async fn plain_http_and_a_stalled_handshake_get_nothing() {
    let server = start(Duration::from_millis(500)).await;
    // Plain HTTP on the TLS port: the connection ends without an HTTP answer.
    let mut plain = TcpStream::connect(server.address).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // A client that connects and says nothing is cut off after the timeout.
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    let began = Instant::now();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer))
        .await
        .expect("cut off within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "{:?}",
        began.elapsed()
    );
    server.stop.cancel();
}

#[test]
fn unusable_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::generate("loom-ca").expect("ca");
    let serving = ca
        .issue(&Profile::server("x", &["127.0.0.1".to_owned()]))
        .expect("serving");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&cert, &serving.cert_pem).expect("write");
    std::fs::write(&key, &serving.key_pem).expect("write");
    std::fs::write(&garbage, "not PEM at all").expect("write");
    let other_key = dir.path().join("other.key");
    std::fs::write(
        &other_key,
        &ca.issue(&Profile::client("y", None))
            .expect("other")
            .key_pem,
    )
    .expect("write");
    let cases = [
        (server_config(&garbage, &key, None), "garbage.pem"),
        (server_config(&cert, &garbage, None), "garbage.pem"),
        (server_config(&cert, &key, Some(&garbage)), "garbage.pem"),
        (
            server_config(&cert, &dir.path().join("missing.key"), None),
            "missing.key",
        ),
        (server_config(&cert, &other_key, None), "other.key"),
    ];
    for (result, file) in cases {
        let error = result.expect_err(file).to_string();
        assert!(error.contains(file), "{file}: {error}");
    }
}
