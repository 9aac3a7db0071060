//! The HTTP listener every Loom server runs (the API server, the nodelet's
//! endpoint): each connection must send its request headers within a timeout
//! (which also closes idle keep-alive connections), at most a bounded number of
//! connections are open at once, and a shutdown stops accepting, frees the
//! address, lets open requests finish under a timeout and closes idle ones.
//!
//! HTTP/1 only: hyper-util's HTTP/1-or-2 detection waits for a client's first
//! bytes without any timeout, and no Loom client speaks cleartext HTTP/2.
//!
//! [`serve_tls`] serves over TLS ([`tls`]): the handshake must finish within
//! the header read timeout too.

pub mod auth;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{Instrument as _, debug, warn};

/// The most a header read timeout may be.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The peer address of a request's connection, in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// What a listener allows its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a connection may take to send a request's headers, and stay idle
    /// between requests.
    pub header_read_timeout: Duration,
    /// Connections open at once; more wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// How long a shutdown waits for open requests.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: MAX_HEADER_READ_TIMEOUT,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A limit a listener cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// The header read timeout is 0 or over [`MAX_HEADER_READ_TIMEOUT`].
    #[error(
        "header_read_timeout must be more than 0 and at most {max} s, not {timeout:?}",
        max = MAX_HEADER_READ_TIMEOUT.as_secs(),
        timeout = .0
    )]
    HeaderReadTimeout(Duration),
    /// No connection would ever be served.
    #[error("max_connections must be more than 0")]
    NoConnections,
}

impl Limits {
    /// Refuses limits a server cannot run with, naming the field.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.header_read_timeout.is_zero() || self.header_read_timeout > MAX_HEADER_READ_TIMEOUT
        {
            return Err(LimitsError::HeaderReadTimeout(self.header_read_timeout));
        }
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        Ok(())
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains.
/// Every request carries its connection's [`Peer`] in its extensions.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    serve_with(listener, app, limits, None, shutdown).await;
}

/// [`serve`] over TLS with `config` (see [`tls::server_config`]). A request
/// of a connection whose client presented a verified certificate also
/// carries [`tls::PeerCertificates`].
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve_with(listener, app, limits, Some(acceptor), shutdown).await;
}

async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        // A connection over the limit is not accepted: it waits in the kernel's
        // backlog (bounded by the listen backlog) until an open one closes.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let builder = builder.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        connections.spawn(
            async move {
                let _slot = slot;
                match tls {
                    None => serve_connection(stream, peer, None, app, &builder, &stop).await,
                    Some(acceptor) => {
                        // A client that never finishes its handshake is cut off
                        // like one that never sends its headers.
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    debug!(%error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                        let certificates = stream.get_ref().1.peer_certificates().map(|chain| {
                            tls::PeerCertificates(Arc::new(
                                chain.iter().map(|c| c.clone().into_owned()).collect(),
                            ))
                        });
                        serve_connection(stream, peer, certificates, app, &builder, &stop).await;
                    }
                }
            }
            .instrument(tracing::debug_span!("connection", %peer)),
        );
    }
    // Free the address at once (a restart may bind it again), then drain.
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "connections still open {} s after shutdown; leaving them",
            limits.drain_timeout.as_secs()
        );
    }
}

/// Serves one connection's requests until it closes or `stop` asks it to.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    certificates: Option<tls::PeerCertificates>,
    app: Router,
    builder: &http1::Builder,
    stop: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app.map_request(
        move |request: http::Request<hyper::body::Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(Peer(peer));
            if let Some(certificates) = &certificates {
                request.extensions_mut().insert(certificates.clone());
            }
            request
        },
    ));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        debug!(%error, "connection ended with an error");
    }
}

/// Errors of `accept`: a connection reset before it was accepted is the
/// client's business; anything else (out of file descriptors) is waited out,
/// as hyper's and axum's servers do, rather than spinning.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    warn!(%error, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/peer",
            get(
                |axum::Extension(Peer(peer)): axum::Extension<Peer>| async move {
                    peer.ip().to_string()
                },
            ),
        );
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        (address, shutdown, served)
    }

    #[tokio::test]
    async fn silent_connections_are_closed_after_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (address, shutdown, served) = start(limits).await;
        let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        // The server closes it (possibly after a 408): the read ends.
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the silent connection stayed open");
        assert!(started.elapsed() >= Duration::from_millis(250));
        // A client that speaks is served, with its peer address.
        let body = reqwest::get(format!("http://{address}/peer"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "127.0.0.1");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_slot() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let (address, shutdown, _served) = start(limits).await;
        let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
        first
            .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = first.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // The second is not served while the first holds the only slot.
        let second = reqwest::Client::new()
            .get(format!("http://{address}/peer"))
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        assert!(second.is_err(), "served over the connection limit");
        drop(first);
        let third = reqwest::Client::new()
            .get(format!("http://{address}/peer"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(third.status(), 200);
        shutdown.cancel();
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().validate().is_ok());
        let zero = Limits {
            header_read_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("header_read_timeout")
        );
        let long = Limits {
            header_read_timeout: Duration::from_secs(31),
            ..Limits::default()
        };
        assert!(long.validate().is_err());
        let none = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(none.validate(), Err(LimitsError::NoConnections));
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("max_connections")
        );
    }
}
