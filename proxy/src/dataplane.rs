//! The data plane: one listener takes every connection made to a Service's
//! virtual address on this node (nftables redirects the service range to it,
//! see [`crate::redirect`]), reads where the connection was going
//! (`SO_ORIGINAL_DST`), and joins it to one of the Service's ready endpoints,
//! round robin, trying the next when one refuses. A connection to a Service
//! with no endpoint waits for one when the Service scales from zero (its
//! owner is woken), else is closed at once. Established connections are never
//! cut when an endpoint leaves the table: they drain as their ends close.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How long a connection attempt to one endpoint may take before the next is
/// tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many endpoints a connection tries before it is given up.
pub const MAX_ATTEMPTS: usize = 3;

/// One Service port on its virtual address: where its connections go.
#[derive(Debug)]
pub struct Backends {
    /// `namespace/name` of the Service, for metrics and logs.
    pub service: String,
    /// The port's name (empty for a single unnamed port).
    pub port_name: String,
    /// Its ready endpoints' addresses and target ports.
    pub endpoints: Vec<SocketAddrV4>,
    /// How long a connection waits for an endpoint when there is none
    /// (a Service that scales to zero); `None`: closed at once.
    pub hold: Option<Duration>,
    /// The round-robin position.
    next: AtomicUsize,
}

impl Backends {
    /// The backends of a Service port.
    pub fn new(
        service: impl Into<String>,
        port_name: impl Into<String>,
        endpoints: Vec<SocketAddrV4>,
        hold: Option<Duration>,
    ) -> Backends {
        Backends {
            service: service.into(),
            port_name: port_name.into(),
            endpoints,
            hold,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints to try for one connection, in order: round robin from
    /// the next one, at most [`MAX_ATTEMPTS`].
    fn attempts(&self) -> Vec<SocketAddrV4> {
        let n = self.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n.min(MAX_ATTEMPTS))
            .map(|i| self.endpoints[(start + i) % n])
            .collect()
    }
}

/// Every Service port of the cluster, by virtual address and port.
pub type Table = HashMap<SocketAddrV4, Arc<Backends>>;

/// Called when a connection arrives for a Service with no endpoint that
/// scales from zero: asks for a replica.
pub trait Waker: Send + Sync + std::fmt::Debug {
    /// Asks for `service` (`namespace/name`) to be scaled up.
    fn wake(&self, service: &str);
}

/// Where a connection was going before nftables redirected it.
pub trait Destination: Send + Sync + std::fmt::Debug {
    /// The original destination of `stream`.
    fn of(&self, stream: &TcpStream) -> io::Result<SocketAddrV4>;
}

/// The kernel's record: `SO_ORIGINAL_DST` of the connection's conntrack entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct OriginalDestination;

impl Destination for OriginalDestination {
    fn of(&self, stream: &TcpStream) -> io::Result<SocketAddrV4> {
        original_destination(stream)
    }
}

/// `SO_ORIGINAL_DST` of a redirected connection.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data; zeroed is a valid value.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `address`, which
    // we own, on the stream's descriptor, valid while `stream` lives.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut address).cast(),
            &mut length,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        u32::from_be(address.sin_addr.s_addr).into(),
        u16::from_be(address.sin_port),
    ))
}

/// The proxy's data plane.
#[derive(Debug)]
pub struct Proxy {
    table: watch::Receiver<Arc<Table>>,
    destination: Arc<dyn Destination>,
    waker: Option<Arc<dyn Waker>>,
    metrics: Metrics,
}

impl Proxy {
    /// A proxy routing by `table` (kept current by the control plane).
    pub fn new(
        table: watch::Receiver<Arc<Table>>,
        destination: Arc<dyn Destination>,
        waker: Option<Arc<dyn Waker>>,
        metrics: Metrics,
    ) -> Proxy {
        Proxy {
            table,
            destination,
            waker,
            metrics,
        }
    }

    /// Accepts connections on `listener` until `shutdown`; then waits at most
    /// `drain` for the connections in flight to end.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    tracker.spawn(async move { this.handle(stream, peer).await });
                }
                Err(error) => {
                    // Out of descriptors, say: back off rather than spin.
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(drain, tracker.wait()).await;
    }

    async fn handle(&self, mut client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let destination = match self.destination.of(&client) {
            Ok(destination) => destination,
            Err(error) => {
                debug!(%peer, %error, "a connection with no original destination");
                self.metrics.unrouted.inc();
                return;
            }
        };
        let Some(backends) = self.table.borrow().get(&destination).cloned() else {
            debug!(%peer, %destination, "no Service at this address");
            self.metrics.unrouted.inc();
            return;
        };
        let labels = crate::metrics::ServiceLabels {
            service: backends.service.clone(),
        };
        let active = self.metrics.active.get_or_create(&labels).clone();
        active.inc();
        let _active = scopeguard(move || {
            active.dec();
        });
        self.metrics.connections.get_or_create(&labels).inc();
        let Some(mut upstream) = self.connect(&destination, backends).await else {
            self.metrics.failed.get_or_create(&labels).inc();
            return;
        };
        let _ = upstream.set_nodelay(true);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            debug!(%peer, %destination, %error, "a proxied connection ended with an error");
        }
    }

    /// Connects to an endpoint of the Service at `destination`: those of
    /// `backends`, or, with none and a hold, the first that shows up.
    async fn connect(
        &self,
        destination: &SocketAddrV4,
        backends: Arc<Backends>,
    ) -> Option<TcpStream> {
        let mut backends = backends;
        if backends.endpoints.is_empty() {
            let hold = backends.hold?;
            backends = self
                .wait_for_endpoints(destination, &backends, hold)
                .await?;
        }
        for endpoint in backends.attempts() {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(error)) => {
                    debug!(service = %backends.service, %endpoint, %error, "endpoint refused; trying the next");
                }
                Err(_) => {
                    debug!(service = %backends.service, %endpoint, "endpoint timed out; trying the next");
                }
            }
        }
        None
    }

    /// Scale from zero: wakes the Service's owner and waits at most `hold`
    /// for an endpoint, recording how long it took.
    async fn wait_for_endpoints(
        &self,
        destination: &SocketAddrV4,
        backends: &Backends,
        hold: Duration,
    ) -> Option<Arc<Backends>> {
        if let Some(waker) = &self.waker {
            waker.wake(&backends.service);
        }
        let labels = crate::metrics::ServiceLabels {
            service: backends.service.clone(),
        };
        let started = Instant::now();
        let mut table = self.table.clone();
        let found = tokio::time::timeout(hold, async {
            loop {
                if let Some(b) = table.borrow_and_update().get(destination)
                    && !b.endpoints.is_empty()
                {
                    return Some(b.clone());
                }
                if table.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        match &found {
            Some(_) => self
                .metrics
                .cold_start
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64()),
            None => {
                warn!(service = %backends.service, ?hold, "no endpoint came up for a held connection");
                self.metrics
                    .cold_start_timeouts
                    .get_or_create(&labels)
                    .inc();
            }
        }
        found
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Every connection "was going to" one fixed address.
    #[derive(Debug)]
    struct Fixed(SocketAddrV4);

    impl Destination for Fixed {
        fn of(&self, _: &TcpStream) -> io::Result<SocketAddrV4> {
            Ok(self.0)
        }
    }

    /// A server answering each connection with its name, then closing.
    async fn named_server(name: &'static str) -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = stream.write_all(name.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn closed_port() -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        drop(listener);
        addr
    }

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);

    async fn start(table: Table) -> (SocketAddr, watch::Sender<Arc<Table>>, CancellationToken) {
        let (tx, rx) = watch::channel(Arc::new(table));
        let proxy = Arc::new(Proxy::new(
            rx,
            Arc::new(Fixed(VIP)),
            None,
            Metrics::default(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(proxy.serve(listener, shutdown.clone(), Duration::from_secs(1)));
        (addr, tx, shutdown)
    }

    async fn ask(proxy: SocketAddr) -> String {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_skip_a_refusing_endpoint() {
        let a = named_server("a").await;
        let b = named_server("b").await;
        let dead = closed_port().await;
        let table = Table::from([(
            VIP,
            Arc::new(Backends::new("default/web", "", vec![a, dead, b], None)),
        )]);
        let (proxy, _tx, shutdown) = start(table).await;
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(proxy).await);
        }
        assert!(seen.iter().all(|s| s == "a" || s == "b"), "{seen:?}");
        assert!(
            seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
            "{seen:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn no_service_or_no_endpoint_closes_the_connection() {
        let table = Table::from([(
            SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80),
            Arc::new(Backends::new(
                "default/other",
                "",
                vec![named_server("x").await],
                None,
            )),
        )]);
        let (proxy, tx, shutdown) = start(table).await;
        assert_eq!(ask(proxy).await, "", "an address with no Service");
        tx.send_replace(Arc::new(Table::from([(
            VIP,
            Arc::new(Backends::new("default/web", "", vec![], None)),
        )])));
        assert_eq!(ask(proxy).await, "", "a Service with no endpoint");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_held_connection_goes_through_once_an_endpoint_appears() {
        let (proxy, tx, shutdown) = start(Table::from([(
            VIP,
            Arc::new(Backends::new(
                "default/lazy",
                "",
                vec![],
                Some(Duration::from_secs(10)),
            )),
        )]))
        .await;
        let asked = tokio::spawn(ask(proxy));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!asked.is_finished(), "held, not closed");
        let up = named_server("woke").await;
        tx.send_replace(Arc::new(Table::from([(
            VIP,
            Arc::new(Backends::new(
                "default/lazy",
                "",
                vec![up],
                Some(Duration::from_secs(10)),
            )),
        )])));
        assert_eq!(asked.await.unwrap(), "woke");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_removed_endpoint_keeps_its_established_connections() {
        // An endpoint that echoes until its client closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(echo) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let (proxy, tx, shutdown) = start(Table::from([(
            VIP,
            Arc::new(Backends::new("default/web", "", vec![echo], None)),
        )]))
        .await;
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        stream.read_exact(&mut buf).await.unwrap();
        // The endpoint leaves the table: the connection stays up.
        tx.send_replace(Arc::new(Table::new()));
        stream.write_all(b"two").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two");
        shutdown.cancel();
    }
}
