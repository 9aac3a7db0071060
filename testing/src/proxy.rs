//! A fault-injecting TCP proxy (on loopback, or any address given, such as
//! the host end of a network-namespace host's veth), standing in for the
//! network between two of Loom's parts (this kernel has no netem): it
//! forwards bytes, or delays each chunk, or cuts the link.
//!
//! A cut ([`Fault::Partition`]) behaves as a firewall dropping every packet:
//! connections open at the time are dead for good (their bytes are dropped
//! in both directions until a peer gives up and closes them), and new
//! connections are accepted but hear nothing, so clients see timeouts, not
//! resets. [`Fault::Reset`] closes every connection and refuses new ones at
//! once, as a crashed peer would. Healing ([`Fault::None`]) lets new
//! connections through; connections cut stay dead, as TCP's would after a
//! long partition.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Forward each chunk after this long (both directions).
    Delay(Duration),
    /// Drop everything, keeping connections open (a partition).
    Partition,
    /// Close every connection and refuse new ones (a crashed peer).
    Reset,
}

struct Shared {
    fault: Mutex<Fault>,
    /// Bumped by every cut: a connection opened before the latest cut is dead.
    cuts: AtomicU64,
    /// Bumped by every reset: a connection opened before it closes.
    resets: AtomicU64,
    /// Connections proxied so far.
    connections: AtomicU64,
}

/// A proxy from a local port to `upstream`, until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Listens on `listen` (port 0: a free one), forwarding to `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(Error::io("bind the fault proxy"))?;
        let address = listener
            .local_addr()
            .map_err(Error::io("read the fault proxy's address"))?;
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            cuts: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, upstream, shared.clone(), stop.clone()));
        Ok(FaultProxy {
            address,
            upstream,
            shared,
            stop,
            task,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where the traffic goes.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Connections proxied so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The fault now in force.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `fault` in force (for new and open connections).
    pub fn set(&self, fault: Fault) {
        match fault {
            Fault::Partition => {
                self.shared.cuts.fetch_add(1, Ordering::SeqCst);
            }
            Fault::Reset => {
                self.shared.resets.fetch_add(1, Ordering::SeqCst);
            }
            Fault::None | Fault::Delay(_) => {}
        }
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // Out of descriptors or the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let fault = *shared.fault.lock().unwrap_or_else(|e| e.into_inner());
        if fault == Fault::Reset {
            drop(client);
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, upstream, shared.clone(), stop.clone()));
    }
}

/// One proxied connection, until either side closes, it is reset, or the
/// proxy stops.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let cuts = shared.cuts.load(Ordering::SeqCst);
    let resets = shared.resets.load(Ordering::SeqCst);
    let dead = |shared: &Shared| shared.cuts.load(Ordering::SeqCst) != cuts;
    let partitioned = || {
        *shared.fault.lock().unwrap_or_else(|e| e.into_inner()) == Fault::Partition || dead(&shared)
    };
    // A connection accepted during a partition is held open, silent, until
    // its client gives up.
    if partitioned() {
        hold(client, &shared, resets, &stop).await;
        return;
    }
    // The upstream is down: the client is refused at once, as it would be
    // without the proxy (never left hanging on a connection that goes
    // nowhere).
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, &shared, cuts, resets);
    let down = pump(server_read, client_write, &shared, cuts, resets);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

/// Reads and drops whatever `client` sends until it closes (or a reset).
async fn hold(mut client: TcpStream, shared: &Shared, resets: u64, stop: &CancellationToken) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if shared.resets.load(Ordering::SeqCst) != resets {
                    return;
                }
            }
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// Copies one direction, applying the fault in force to each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
    cuts: u64,
    resets: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // A reset closes idle connections too.
            _ = wait_reset(shared, resets) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if shared.resets.load(Ordering::SeqCst) != resets {
            return;
        }
        if shared.cuts.load(Ordering::SeqCst) != cuts {
            // Cut: the bytes are lost; the connection stays open, silent.
            continue;
        }
        let fault = *shared.fault.lock().unwrap_or_else(|e| e.into_inner());
        if let Fault::Delay(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_reset(shared: &Shared, resets: u64) {
    while shared.resets.load(Ordering::SeqCst) == resets {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, stream.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf.to_vec())
    }

    #[tokio::test]
    async fn an_upstream_that_is_down_closes_the_connection_at_once() {
        // A port nothing listens on.
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = unused.local_addr().unwrap();
        drop(unused);
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("closed, not held");
        assert!(matches!(read, Ok(0) | Err(_)));
    }

    #[tokio::test]
    async fn forwards_delays_partitions_heals_and_resets() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        let quick = Duration::from_millis(500);
        assert_eq!(
            round_trip(&mut open, quick).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.set(Fault::Delay(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        assert!(
            round_trip(&mut open, Duration::from_secs(2))
                .await
                .is_some()
        );
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "each direction delayed"
        );

        proxy.set(Fault::Partition);
        assert_eq!(round_trip(&mut open, quick).await, None, "cut");
        let mut during = TcpStream::connect(proxy.address()).await.unwrap();
        assert_eq!(
            round_trip(&mut during, quick).await,
            None,
            "new connections hear nothing"
        );

        proxy.set(Fault::None);
        assert_eq!(
            round_trip(&mut open, quick).await,
            None,
            "a connection cut stays dead"
        );
        let mut healed = TcpStream::connect(proxy.address()).await.unwrap();
        assert!(round_trip(&mut healed, quick).await.is_some(), "healed");

        proxy.set(Fault::Reset);
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), healed.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "reset closes open ones");
        proxy.set(Fault::None);
        let mut after = TcpStream::connect(proxy.address()).await.unwrap();
        assert!(round_trip(&mut after, quick).await.is_some());
    }
}
