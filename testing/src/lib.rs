//! What Loom's tests, end-to-end suite and benchmarks start: a private etcd,
//! API servers on loopback, a plain JSON client of them, fault proxies,
//! network-namespace hosts, and (with features) a small cluster and a nodelet
//! harness. A dev-dependency only: nothing here is compiled into the product.

pub mod etcd;
pub mod http;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;
pub mod wait;

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "nodelet")]
pub mod nodelet;

pub use etcd::{EtcdServer, free_port, temp_dir};
pub use server::TestServer;
pub use tls::TestPki;
pub use wait::eventually;

use std::process::ExitStatus;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a test fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local resource (a temp dir, a log file, a port) could not be had.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The etcd binary could not be started.
    #[error("cannot start {binary}: {source} (install etcd-server)")]
    EtcdSpawn {
        /// The program run.
        binary: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// etcd exited before it answered.
    #[error("etcd exited with {status}: {log}")]
    EtcdExited {
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The test PKI's files make no TLS configuration.
    #[error("the test TLS configuration: {0}")]
    Tls(String),
    /// etcd did not answer in time.
    #[error("etcd did not answer within 20 s: {log}")]
    EtcdTimeout {
        /// The end of its log.
        log: String,
    },
    /// A store could not be opened or connected.
    #[error("cannot open the store: {0}")]
    Store(#[from] apiserver::store::Error),
    /// The API server's address could not be bound again after a restart.
    #[error("cannot bind {address} again: {source}")]
    Rebind {
        /// The address it served on.
        address: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be imported.
    #[cfg(feature = "nodelet")]
    #[error("cannot import the image: {0}")]
    Image(#[from] ::nodelet::image::ImageError),
    /// A command setting up, cutting or removing a test host failed.
    #[error("{command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Why it failed (its exit status and stderr).
        detail: String,
    },
    /// The API server did not become ready in time.
    #[error("the API server did not become ready within 20 s")]
    NotReady,
}

impl Error {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}
