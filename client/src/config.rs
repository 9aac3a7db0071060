//! Where the API is and who the client is: explicit settings, a kubeconfig
//! (`$LOOMCONFIG`, `$KUBECONFIG`, `~/.loom/config`), or a service account's
//! files when running in a cluster.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kubeconfig::Kubeconfig;

/// The address a client uses when nothing else says: `loom up`'s default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7443";

/// How to reach the API.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The API server's base URL, e.g. `http://127.0.0.1:7443`.
    pub server: String,
    /// The namespace namespaced calls use unless told otherwise.
    pub namespace: String,
    /// How long one request may take (watches excepted).
    pub timeout: Duration,
    /// How many times a transient failure is retried.
    pub retries: u32,
    /// What an `https://` server is trusted by, and the certificate to show it.
    pub tls: Option<TlsConfig>,
    /// The name the server's certificate must carry when it is not the URL's
    /// host (a kubeconfig's `tls-server-name`).
    pub tls_server_name: Option<String>,
    /// A bearer token to send as `Authorization: Bearer`.
    pub auth: Option<Auth>,
}

/// A bearer token, or the file holding one (re-read as it rotates, at most
/// once a minute, and after a 401). Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// The token itself.
    Token(String),
    /// A file holding the token (a service account's, a kubeconfig's `tokenFile`).
    TokenFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token(REDACTED)"),
            Auth::TokenFile(path) => f.debug_tuple("TokenFile").field(path).finish(),
        }
    }
}

/// Where a service account's token, CA and namespace are mounted in a task.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What [`Config::infer`] looks at, gathered from the process's environment by
/// [`Environment::current`]; tests build their own.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `$LOOMCONFIG`.
    pub loomconfig: Option<PathBuf>,
    /// `$KUBECONFIG` (a `:`-separated list; the first entry is used).
    pub kubeconfig: Option<OsString>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$KUBERNETES_SERVICE_HOST`.
    pub service_host: Option<String>,
    /// `$KUBERNETES_SERVICE_PORT`.
    pub service_port: Option<String>,
    /// The service-account directory ([`SERVICE_ACCOUNT_DIR`]).
    pub service_account_dir: PathBuf,
}

impl Environment {
    /// This process's environment.
    pub fn current() -> Self {
        Environment {
            loomconfig: std::env::var_os("LOOMCONFIG").map(PathBuf::from),
            kubeconfig: std::env::var_os("KUBECONFIG"),
            home: std::env::var_os("HOME").map(PathBuf::from),
            service_host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            service_port: std::env::var("KUBERNETES_SERVICE_PORT").ok(),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        }
    }

    /// The kubeconfig file this environment names: `$LOOMCONFIG`, else the
    /// first entry of `$KUBECONFIG`, else `~/.loom/config` (which may not exist).
    pub fn kubeconfig_path(&self) -> Option<PathBuf> {
        if let Some(path) = &self.loomconfig {
            return Some(path.clone());
        }
        if let Some(list) = &self.kubeconfig
            && let Some(first) = std::env::split_paths(list).find(|p| !p.as_os_str().is_empty())
        {
            return Some(first);
        }
        self.home
            .as_ref()
            .map(|home| home.join(".loom").join("config"))
    }

    /// Whether `path` was named explicitly (`$LOOMCONFIG` or `$KUBECONFIG`)
    /// rather than being the default `~/.loom/config`.
    fn named_explicitly(&self) -> bool {
        self.loomconfig.is_some()
            || self
                .kubeconfig
                .as_ref()
                .is_some_and(|list| std::env::split_paths(list).any(|p| !p.as_os_str().is_empty()))
    }
}

/// What a client trusts over HTTPS, and what it presents.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM CA certificates the server's certificate must chain to (the
    /// cluster's `ca.crt`); only these are trusted.
    pub ca_pem: String,
    /// A PEM client certificate and its PEM private key, to authenticate with.
    pub identity: Option<(String, String)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &self.ca_pem)
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|(cert, _)| (cert, crate::kubeconfig::REDACTED)),
            )
            .finish()
    }
}

impl TlsConfig {
    /// The rustls configuration: the CA as the only root, the identity if
    /// any, HTTP/1.1 by ALPN.
    pub(crate) fn rustls(&self) -> Result<rustls::ClientConfig> {
        self.rustls_for(None)
    }

    /// As [`TlsConfig::rustls`], the server's certificate checked for
    /// `server_name` instead of the URL's host when given.
    pub(crate) fn rustls_for(&self, server_name: Option<&str>) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Config(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| bad("the CA certificate", &e))?;
            roots.add(ca).map_err(|e| bad("the CA certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "the CA certificate: no certificate in it".to_owned(),
            ));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS", &e))?;
        let builder = match server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| bad("tls-server-name", &e))?;
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("the CA certificate", &e))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(std::sync::Arc::new(NamedServer {
                        inner,
                        name,
                    }))
            }
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
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
}

/// The rustls configuration of a client without a CA: it trusts no server,
/// so only plain `http://` servers are reachable (reqwest is built without a
/// process-wide TLS provider, so one is always given).
pub(crate) fn rustls_trusting_nothing() -> Result<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Checks the server's certificate as WebPKI does, for a fixed name (a
/// kubeconfig's `tls-server-name`) instead of the URL's host.
#[derive(Debug)]
struct NamedServer {
    inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl Config {
    /// A config for `server`, namespace `default`.
    pub fn new(server: impl Into<String>) -> Self {
        Config {
            server: server.into().trim_end_matches('/').to_owned(),
            namespace: "default".to_owned(),
            timeout: Duration::from_secs(30),
            retries: 5,
            tls: None,
            tls_server_name: None,
            auth: None,
        }
    }

    /// The config this process should use: the kubeconfig `$LOOMCONFIG`
    /// names, else the first of `$KUBECONFIG`, else `~/.loom/config` if it
    /// exists, else the service account's when running in a cluster, else
    /// the default server.
    pub fn infer() -> Result<Self> {
        Self::infer_from(&Environment::current())
    }

    /// As [`Config::infer`], in `env`.
    pub fn infer_from(env: &Environment) -> Result<Self> {
        if let Some(path) = env.kubeconfig_path()
            && (env.named_explicitly() || path.exists())
        {
            return Self::from_file(&path);
        }
        if let (Some(host), Some(port)) = (&env.service_host, &env.service_port) {
            let dir = &env.service_account_dir;
            if ["token", "ca.crt", "namespace"]
                .iter()
                .all(|f| dir.join(f).is_file())
            {
                return Self::in_cluster(host, port, dir);
            }
            tracing::debug!(
                dir = %dir.display(),
                "KUBERNETES_SERVICE_HOST is set but no service-account files are; not in a cluster"
            );
        }
        Ok(Self::new(DEFAULT_SERVER))
    }

    /// The config of a task running in a cluster: the API server at
    /// `https://host:port`, trusted by `dir/ca.crt`, the bearer token in
    /// `dir/token` (re-read as it rotates), the namespace in `dir/namespace`.
    pub fn in_cluster(host: &str, port: &str, dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
        };
        let ca_pem = read("ca.crt")?;
        let namespace = read("namespace")?;
        if read("token")?.trim().is_empty() {
            return Err(Error::Config(format!(
                "{}: the service-account token is empty",
                dir.join("token").display()
            )));
        }
        let host = host.trim();
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let mut config = Config::new(format!("https://{host}:{}", port.trim()));
        if !namespace.trim().is_empty() {
            config.namespace = namespace.trim().to_owned();
        }
        let tls = TlsConfig {
            ca_pem,
            identity: None,
        };
        tls.rustls()
            .map_err(|e| Error::Config(format!("{}: {e}", dir.join("ca.crt").display())))?;
        config.tls = Some(tls);
        config.auth = Some(Auth::TokenFile(dir.join("token")));
        Ok(config)
    }

    /// The current context of a kubeconfig file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_kubeconfig(path, None)
    }

    /// The context `context` (default: the current one) of a kubeconfig file.
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Self> {
        Ok(Kubeconfig::read(path)?.config(path, context)?)
    }
}

/// `~/.loom/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".loom").join("config"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auth_never_shows_the_token() {
        let config = Config {
            auth: Some(Auth::Token("s3cr3t".to_owned())),
            tls: Some(TlsConfig {
                ca_pem: "ca".to_owned(),
                identity: Some(("cert".to_owned(), "the-private-key".to_owned())),
            }),
            ..Config::new("https://x")
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(!debug.contains("the-private-key"), "{debug}");
    }
}
