//! A private etcd on free loopback ports, and the embedded store's temp dirs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::store::{EtcdOptions, EtcdStore, EtcdTls};

use crate::{Error, Result};

/// etcd's own request limit, raised so the store's 1.5 MiB value limit is the one that applies.
const ETCD_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// A throwaway etcd server in its own data directory; killed and removed on drop,
/// and killed by the kernel if the process that started it dies first.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
    tls: Option<EtcdTls>,
}

impl EtcdServer {
    /// Starts etcd (the `etcd` on `PATH`, or `$LOOM_ETCD_BIN`) and waits until it answers.
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Starts etcd serving only TLS and requiring client certificates of the
    /// test CA ([`crate::TestPki`]), as a production etcd runs.
    pub async fn start_tls() -> Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Result<Self> {
        let binary = std::env::var("LOOM_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
        // Free ports can be taken between probing and binding: try a few times.
        let mut attempt = 1;
        loop {
            match Self::try_start(&binary, tls).await {
                Ok(server) => return Ok(server),
                Err(error) if attempt == 5 => return Err(error),
                Err(_) => attempt += 1,
            }
        }
    }

    async fn try_start(binary: &str, tls: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("loom-etcd-")
            .tempdir()
            .map_err(Error::io("create a temp dir for etcd"))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))
            .map_err(Error::io("create the etcd log"))?;
        let log_err = log.try_clone().map_err(Error::io("open the etcd log"))?;
        let (tls_flags, client_tls) = if tls {
            let (flags, client) = etcd_tls_files(dir.path())?;
            (Some(flags), Some(client))
        } else {
            (None, None)
        };
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
            .args(tls_flags.iter().flatten())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        crate::process::die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| Error::EtcdSpawn {
            binary: binary.to_owned(),
            source,
        })?;
        let mut server = EtcdServer {
            child,
            dir,
            endpoint,
            tls: client_tls,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::EtcdExited {
                    status,
                    log: server.log_tail(),
                });
            }
            let mut options = EtcdOptions::new(vec![server.endpoint.clone()]);
            options.connect_timeout = Duration::from_millis(500);
            options.tls = server.tls.clone();
            if EtcdStore::connect(options).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(Error::EtcdTimeout {
                    log: server.log_tail(),
                });
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

    /// The client credential of an etcd started with [`EtcdServer::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Connects a store under `prefix`.
    pub async fn store(&self, prefix: &str) -> Result<EtcdStore> {
        let mut options = EtcdOptions::new(vec![self.endpoint.clone()]);
        options.prefix = prefix.to_owned();
        options.tls = self.tls.clone();
        Ok(EtcdStore::connect(options).await?)
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

/// etcd's serving certificate and the CA of its clients in `dir`, as its
/// flags, and the client credential of the API server.
fn etcd_tls_files(dir: &Path) -> Result<(Vec<String>, EtcdTls)> {
    let pki = crate::TestPki::shared();
    let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let issue = |profile: &pki::Profile| {
        pki.ca()
            .issue(profile)
            .map_err(|e| Error::Tls(format!("cannot issue an etcd certificate: {e}")))
    };
    let serving = issue(&pki::Profile::server("etcd", &names))?;
    let client = issue(&pki::Profile::client("loom-apiserver-etcd-client", None))?;
    let write = |name: &str, text: &str| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(Error::io("write etcd's certificates"))?;
        Ok(path.display().to_string())
    };
    let flags = vec![
        format!("--cert-file={}", write("etcd.crt", &serving.cert_pem)?),
        format!("--key-file={}", write("etcd.key", &serving.key_pem)?),
        format!("--trusted-ca-file={}", write("ca.crt", pki.ca_pem())?),
        "--client-cert-auth".to_owned(),
    ];
    Ok((
        flags,
        EtcdTls {
            ca_pem: pki.ca_pem().to_owned(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
        },
    ))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("find a free port"))?;
    let address = listener
        .local_addr()
        .map_err(Error::io("find a free port"))?;
    Ok(address.port())
}

/// A fresh temporary directory for an embedded store, and the database path in it.
pub fn temp_dir() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("loom-store-")
        .tempdir()
        .map_err(Error::io("create a temp dir"))?;
    let path = dir.path().join("loom.db");
    Ok((dir, path))
}
