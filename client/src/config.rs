//! Where the API is: a kubeconfig-like file (`~/.loom/config`, `$LOOMCONFIG`) or explicit settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
            .field("identity", &self.identity.as_ref().map(|(cert, _)| cert))
            .finish()
    }
}

impl TlsConfig {
    /// The rustls configuration: the CA as the only root, the identity if
    /// any, HTTP/1.1 by ALPN.
    pub(crate) fn rustls(&self) -> Result<rustls::ClientConfig> {
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
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS", &e))?
            .with_root_certificates(roots);
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

impl Config {
    /// A config for `server`, namespace `default`.
    pub fn new(server: impl Into<String>) -> Self {
        Config {
            server: server.into().trim_end_matches('/').to_owned(),
            namespace: "default".to_owned(),
            timeout: Duration::from_secs(30),
            retries: 5,
            tls: None,
        }
    }

    /// The config from `$LOOMCONFIG`, else `~/.loom/config`, else the default server.
    pub fn infer() -> Result<Self> {
        if let Some(path) = std::env::var_os("LOOMCONFIG") {
            return Self::from_file(Path::new(&path));
        }
        match default_path() {
            Some(path) if path.exists() => Self::from_file(&path),
            _ => Ok(Self::new(DEFAULT_SERVER)),
        }
    }

    /// The current context of a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let file: ConfigFile = serde_saphyr::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        file.current()
            .map(|context| {
                let mut config = Config::new(&context.server);
                if !context.namespace.is_empty() {
                    config.namespace = context.namespace.clone();
                }
                config
            })
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: no context named {:?}",
                    path.display(),
                    file.current_context
                ))
            })
    }
}

/// `~/.loom/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".loom").join("config"))
}

/// The config file: named contexts and the current one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct ConfigFile {
    /// The context in use.
    pub current_context: String,
    /// Every context.
    pub contexts: Vec<Context>,
}

/// One cluster to talk to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Context {
    /// The context's name.
    pub name: String,
    /// The API server's URL.
    pub server: String,
    /// The default namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl ConfigFile {
    /// The current context.
    pub fn current(&self) -> Option<&Context> {
        self.contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .or(match self.current_context.as_str() {
                "" => self.contexts.first(),
                _ => None,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_current_context_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "current-context: b\ncontexts:\n- name: a\n  server: http://a:1\n- name: b\n  server: http://b:2/\n  namespace: team\n",
        )
        .unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.server, "http://b:2");
        assert_eq!(config.namespace, "team");
        std::fs::write(&path, "current-context: c\ncontexts: []\n").unwrap();
        assert!(matches!(Config::from_file(&path), Err(Error::Config(m)) if m.contains("\"c\"")));
    }
}
