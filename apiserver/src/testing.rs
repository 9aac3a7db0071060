//! Fixtures for tests and benchmarks: a private etcd on free loopback ports, an API server on one.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::store::{EtcdOptions, EtcdStore};

/// etcd's own request limit, raised so the store's 1.5 MiB value limit is the one that applies.
const ETCD_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// A throwaway etcd server in its own data directory; killed and removed on drop,
/// and killed by the kernel if the process that started it dies first.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl EtcdServer {
    /// Starts etcd (the `etcd` on `PATH`, or `$LOOM_ETCD_BIN`) and waits until it answers.
    pub async fn start() -> Result<Self, String> {
        let binary = std::env::var("LOOM_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
        let mut last_error = String::new();
        // Free ports can be taken between probing and binding: try a few times.
        for _ in 0..5 {
            match Self::try_start(&binary).await {
                Ok(server) => return Ok(server),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn try_start(binary: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("loom-etcd-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for etcd: {e}"))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))
            .map_err(|e| format!("cannot create the etcd log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot open the etcd log: {e}"))?;
        let mut command = Command::new(binary);
        command
            .arg("--name=loom-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=loom-test={peer}"))
            .arg(format!("--max-request-bytes={ETCD_MAX_REQUEST_BYTES}"))
            .arg("--quota-backend-bytes=8589934592")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl is async-signal-safe and only touches the child being set up.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e} (install etcd-server)"))?;
        let mut server = EtcdServer {
            child,
            dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("etcd exited with {status}: {}", server.log_tail()));
            }
            let mut options = EtcdOptions::new(vec![server.endpoint.clone()]);
            options.connect_timeout = Duration::from_millis(500);
            if EtcdStore::connect(options).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd did not answer within 20 s: {}",
                    server.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's directory (data and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a store under `prefix`.
    pub async fn store(&self, prefix: &str) -> Result<EtcdStore, String> {
        let mut options = EtcdOptions::new(vec![self.endpoint.clone()]);
        options.prefix = prefix.to_owned();
        EtcdStore::connect(options).await.map_err(|e| e.to_string())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// A fresh temporary directory for an embedded store.
pub fn temp_dir() -> Result<(tempfile::TempDir, PathBuf), String> {
    let dir = tempfile::Builder::new()
        .prefix("loom-store-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let path = dir.path().join("loom.db");
    Ok((dir, path))
}

/// An API server on a free loopback port over a store, stopped on drop.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store it serves (to check it directly).
    pub store: std::sync::Arc<dyn crate::store::Store>,
    shutdown: tokio_util::sync::CancellationToken,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Over a fresh embedded store in a temp dir.
    pub async fn embedded(config: crate::Config) -> Result<Self, String> {
        let (dir, path) = temp_dir()?;
        let store = crate::store::EmbeddedStore::open(crate::store::EmbeddedOptions::new(path))
            .map_err(|e| e.to_string())?;
        Self::start(std::sync::Arc::new(store), config, None, Some(dir)).await
    }

    /// Over a private etcd.
    pub async fn etcd(config: crate::Config) -> Result<Self, String> {
        let etcd = EtcdServer::start().await?;
        let store = etcd.store("/loom/").await?;
        Self::start(std::sync::Arc::new(store), config, Some(etcd), None).await
    }

    /// Over a given store (e.g. a second server sharing one etcd).
    pub async fn over(
        store: std::sync::Arc<dyn crate::store::Store>,
        config: crate::Config,
    ) -> Result<Self, String> {
        Self::start(store, config, None, None).await
    }

    async fn start(
        store: std::sync::Arc<dyn crate::store::Store>,
        config: crate::Config,
        etcd: Option<EtcdServer>,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind: {e}"))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let shutdown = serve(store.clone(), listener, config);
        let server = TestServer {
            url,
            store,
            shutdown,
            _etcd: etcd,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Stops the server (cutting every watch) and starts a new one on the same
    /// address over the same store, as an API server restart.
    pub async fn restart(&mut self, config: crate::Config) -> Result<(), String> {
        self.shutdown.cancel();
        let address = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() > deadline => {
                    return Err(format!("cannot bind {address} again: {error}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.shutdown = serve(self.store.clone(), listener, config);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let address = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(true)) =
                tokio::time::timeout(Duration::from_secs(2), readyz(&address)).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the API server did not become ready within 20 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn serve(
    store: std::sync::Arc<dyn crate::store::Store>,
    listener: tokio::net::TcpListener,
    config: crate::Config,
) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = crate::run(store, listener, config, shutdown.clone());
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "test API server failed");
        }
    });
    shutdown
}

/// A minimal `GET /readyz` (the library has no HTTP client of its own).
async fn readyz(address: &str) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response.starts_with(b"HTTP/1.1 200"))
}
