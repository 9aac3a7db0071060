//! TLS for a listener: the server's certificate chain and key, and the CA
//! whose client certificates it verifies. A client without a certificate is
//! let through (it authenticates otherwise, with a token); a certificate that
//! does not verify ends the handshake. The verified chain reaches every
//! request of the connection as [`PeerCertificates`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
pub use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The client's verified certificate chain (leaf first), in the extensions of
/// every request of a TLS connection that presented one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Why a TLS configuration could not be made, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file holds no usable certificate or key.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The certificates and key do not make a configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(failed("no certificate in it".to_owned()));
    }
    Ok(certs)
}

/// A server configuration from PEM files: `cert` (the chain, leaf first),
/// `key`, and `client_ca` (the CAs of accepted client certificates; without
/// it no client certificate is asked for). HTTP/1.1 only, by ALPN.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        message: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path)? {
                roots.add(ca).map_err(|e| TlsError::File {
                    path: path.to_owned(),
                    message: format!("not a CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::File {
            path: key.to_owned(),
            message: format!("does not fit the certificate in {}: {e}", cert.display()),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS configuration (ring, HTTP/1.1 by ALPN): `ca_pem`'s
/// certificates as the only roots (none: a client that trusts no server,
/// for plain-HTTP use of a reqwest built without a process-wide provider),
/// and `identity`, a PEM certificate chain and its PEM key, to present.
pub fn client_config(
    ca_pem: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Config(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    if let Some(ca_pem) = ca_pem {
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| bad("the CA certificate", &e))?;
            roots.add(ca).map_err(|e| bad("the CA certificate", &e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("the client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| bad("the client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("the client certificate", &e))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A serving certificate that can be replaced while its server runs (a
/// node's, renewed before it expires): every new handshake gets the current
/// one, connections already made keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Config(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the serving certificate", &e))?;
    if chain.is_empty() {
        return Err(TlsError::Config(
            "the serving certificate: no certificate in it".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad("the serving key", &e))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| bad("the serving key does not fit its certificate", &e))?;
    Ok(Arc::new(certified))
}

impl ServingCert {
    /// The PEM certificate chain (leaf first) and its PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<ServingCert>, TlsError> {
        Ok(Arc::new(ServingCert {
            current: std::sync::RwLock::new(certified_key(cert_pem, key_pem)?),
        }))
    }

    /// Serves `cert_pem` and `key_pem` from the next handshake on; on an
    /// error the current one stays.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A server configuration serving `cert` (replaceable while it runs) and
/// verifying client certificates against `client_ca_pem`'s CAs (a client
/// without one is let through, as [`server_config`]). HTTP/1.1 only.
pub fn server_config_with(
    cert: Arc<ServingCert>,
    client_ca_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Config(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| bad("the client CA", &e))?;
        roots.add(ca).map_err(|e| bad("the client CA", &e))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config("the client CA: no certificate".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
