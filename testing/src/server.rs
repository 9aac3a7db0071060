//! An API server on a free loopback port over an embedded store, a private
//! etcd, or a store given, in the test's own runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::Config;
use apiserver::store::{EmbeddedOptions, EmbeddedStore, Store};
use tokio_util::sync::CancellationToken;

use crate::etcd::{EtcdServer, temp_dir};
use crate::{Error, Result};

/// An API server on a free loopback port over a store, stopped on drop.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store it serves (to check it directly).
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Over a fresh embedded store in a temp dir.
    pub async fn embedded(config: Config) -> Result<Self> {
        let (dir, path) = temp_dir()?;
        let store = EmbeddedStore::open(EmbeddedOptions::new(path))?;
        Self::start(Arc::new(store), config, None, Some(dir)).await
    }

    /// Over a private etcd.
    pub async fn etcd(config: Config) -> Result<Self> {
        let etcd = EtcdServer::start().await?;
        let store = etcd.store("/loom/").await?;
        Self::start(Arc::new(store), config, Some(etcd), None).await
    }

    /// Over a given store (e.g. a second server sharing one etcd).
    pub async fn over(store: Arc<dyn Store>, config: Config) -> Result<Self> {
        Self::start(store, config, None, None).await
    }

    async fn start(
        store: Arc<dyn Store>,
        config: Config,
        etcd: Option<EtcdServer>,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("bind the API server"))?;
        let address = listener
            .local_addr()
            .map_err(Error::io("bind the API server"))?;
        let shutdown = serve(store.clone(), listener, config);
        let server = TestServer {
            url: format!("http://{address}"),
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
    pub async fn restart(&mut self, config: Config) -> Result<()> {
        self.shutdown.cancel();
        let address = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(source) if Instant::now() > deadline => {
                    return Err(Error::Rebind { address, source });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.shutdown = serve(self.store.clone(), listener, config);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<()> {
        let address = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(true)) =
                tokio::time::timeout(Duration::from_secs(2), readyz(&address)).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady);
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
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    config: Config,
) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let server = apiserver::run(store, listener, config, shutdown.clone());
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "test API server failed");
        }
    });
    shutdown
}

/// A minimal `GET /readyz`, so that the apiserver's own tests need no HTTP client.
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
