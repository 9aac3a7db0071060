//! The config file: a kubeconfig (`apiVersion: v1`, `kind: Config`) that
//! kubectl, the Python `kubernetes` client and kube-rs read unchanged; reading
//! it into a [`Config`], merging, and writing it owner-only and atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::config::{Auth, Config, TlsConfig};

/// What kubectl prints for embedded certificate data in `config view`.
pub const DATA_OMITTED: &str = "DATA+OMITTED";
/// What kubectl prints for a token in `config view`.
pub const REDACTED: &str = "REDACTED";

/// Fields this crate does not interpret, kept as read so a rewrite loses none.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// A failure to read, understand or write a kubeconfig; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of a kubeconfig's shape.
    #[error("{path}: not a kubeconfig: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// The file is in the format Loom used before TLS (contexts holding a server).
    #[error(
        "{path} is in Loom's old config format (contexts with a server, no clusters or \
         credentials); run `loom up` again to rewrite it, or convert it with \
         `loomctl config set-cluster NAME --server URL --certificate-authority CA_FILE`"
    )]
    OldFormat {
        /// The file.
        path: PathBuf,
    },
    /// A field's value is wrong: `users[admin].client-key-data: not base64`.
    #[error("{path}: {field}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field, as `section[name].field`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A kubeconfig file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kubeconfig {
    /// `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The clusters: where an API server is and what it is trusted by.
    pub clusters: Vec<NamedCluster>,
    /// The contexts: a cluster, a user and a namespace under one name.
    pub contexts: Vec<NamedContext>,
    /// The context in use.
    #[serde(rename = "current-context")]
    pub current_context: String,
    /// `Config`.
    pub kind: String,
    /// The users: credentials.
    pub users: Vec<NamedAuthInfo>,
    /// Everything else (`preferences`, `extensions`), kept.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Default for Kubeconfig {
    fn default() -> Self {
        Kubeconfig {
            api_version: "v1".to_owned(),
            clusters: Vec::new(),
            contexts: Vec::new(),
            current_context: String::new(),
            kind: "Config".to_owned(),
            users: Vec::new(),
            extra: Extra::new(),
        }
    }
}

/// A cluster under a name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedCluster {
    /// The cluster.
    pub cluster: Cluster,
    /// Its name.
    pub name: String,
}

/// Where an API server is and what its certificate must chain to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Cluster {
    /// A PEM CA file (relative to the kubeconfig's directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// The PEM CA certificates, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    /// The API server's URL.
    pub server: String,
    /// The name the server's certificate must carry, when not the URL's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Everything else, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A user's credentials under a name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedAuthInfo {
    /// Its name.
    pub name: String,
    /// The credentials.
    pub user: AuthInfo,
}

/// Credentials: a client certificate and key, or a bearer token (inline or in a file).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AuthInfo {
    /// A PEM client certificate file (relative to the kubeconfig's directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The PEM client certificate, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    /// A PEM private key file (relative to the kubeconfig's directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// The PEM private key, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    /// A bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding a bearer token, re-read as it rotates.
    #[serde(rename = "tokenFile", skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Everything else, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

impl std::fmt::Debug for AuthInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("AuthInfo")
            .field("client_certificate", &self.client_certificate)
            .field(
                "client_certificate_data",
                &self.client_certificate_data.as_ref().map(|_| DATA_OMITTED),
            )
            .field("client_key", &self.client_key)
            .field("client_key_data", &redacted(&self.client_key_data))
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A context under a name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedContext {
    /// The context.
    pub context: Context,
    /// Its name.
    pub name: String,
}

/// A cluster, a user and a default namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Context {
    /// The cluster's name.
    pub cluster: String,
    /// The namespace namespaced commands use by default.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The user's name (none: anonymous).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Everything else, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The credential [`Kubeconfig::single`] embeds.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A PEM client certificate and its PEM private key.
    ClientCert {
        /// The certificate.
        cert_pem: String,
        /// The private key.
        key_pem: String,
    },
    /// A bearer token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientCert { cert_pem, .. } => f
                .debug_struct("ClientCert")
                .field("cert_pem", cert_pem)
                .field("key_pem", &REDACTED)
                .finish(),
            Credential::Token(_) => f.debug_tuple("Token").field(&REDACTED).finish(),
        }
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// Replaces the entry named like `entry`, or appends it.
fn upsert<T>(list: &mut Vec<T>, entry: T, name: impl Fn(&T) -> &str) {
    match list.iter().position(|e| name(e) == name(&entry)) {
        Some(i) => list[i] = entry,
        None => list.push(entry),
    }
}

impl Kubeconfig {
    /// A kubeconfig of one context named `context`, with a cluster and a user of
    /// the same name: `server`, its CA embedded, the credential embedded, and
    /// `namespace` (empty: the server's default). The context is current.
    pub fn single(
        context: &str,
        server: &str,
        ca_pem: Option<&str>,
        credential: Option<Credential>,
        namespace: &str,
    ) -> Kubeconfig {
        let user = match credential {
            None => None,
            Some(Credential::ClientCert { cert_pem, key_pem }) => Some(AuthInfo {
                client_certificate_data: Some(b64(&cert_pem)),
                client_key_data: Some(b64(&key_pem)),
                ..AuthInfo::default()
            }),
            Some(Credential::Token(token)) => Some(AuthInfo {
                token: Some(token),
                ..AuthInfo::default()
            }),
        };
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: context.to_owned(),
                cluster: Cluster {
                    server: server.trim_end_matches('/').to_owned(),
                    certificate_authority_data: ca_pem.map(b64),
                    ..Cluster::default()
                },
            }],
            contexts: vec![NamedContext {
                name: context.to_owned(),
                context: Context {
                    cluster: context.to_owned(),
                    user: if user.is_some() {
                        context.to_owned()
                    } else {
                        String::new()
                    },
                    namespace: namespace.to_owned(),
                    extra: Extra::new(),
                },
            }],
            users: user
                .map(|user| NamedAuthInfo {
                    name: context.to_owned(),
                    user,
                })
                .into_iter()
                .collect(),
            current_context: context.to_owned(),
            ..Kubeconfig::default()
        }
    }

    /// Parses a kubeconfig; `path` names the file in errors. Empty text is an
    /// empty kubeconfig, as for kubectl.
    pub fn parse(text: &str, path: &Path) -> Result<Kubeconfig, KubeconfigError> {
        if text.trim().is_empty() {
            return Ok(Kubeconfig::default());
        }
        let parse_error = |message: String| KubeconfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let value = parse_yaml(text).map_err(parse_error)?;
        if !value.is_object() {
            return Err(parse_error("not a mapping".to_owned()));
        }
        if is_old_format(&value) {
            return Err(KubeconfigError::OldFormat {
                path: path.to_owned(),
            });
        }
        let config: Kubeconfig = serde_path_to_error::deserialize(value).map_err(|e| {
            parse_error(format!(
                "{}: {}",
                e.path(),
                hide_values(&e.inner().to_string())
            ))
        })?;
        if !config.kind.is_empty() && config.kind != "Config" {
            return Err(KubeconfigError::Field {
                path: path.to_owned(),
                field: "kind".to_owned(),
                message: format!("{:?}, not Config", config.kind),
            });
        }
        Ok(config)
    }

    /// Reads a kubeconfig file.
    pub fn read(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Kubeconfig::parse(&text, path)
    }

    /// Reads a kubeconfig file to change it: a missing file is an empty
    /// kubeconfig, and one in Loom's old format is converted (each old context
    /// becomes a context and a cluster of its name, with no credentials).
    pub fn read_for_update(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kubeconfig::default()),
            Err(source) => {
                return Err(KubeconfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        match Kubeconfig::parse(&text, path) {
            Err(KubeconfigError::OldFormat { .. }) => {
                let old = parse_yaml(&text).map_err(|message| KubeconfigError::Parse {
                    path: path.to_owned(),
                    message,
                })?;
                Ok(Kubeconfig::from_old_format(&old))
            }
            other => other,
        }
    }

    fn from_old_format(old: &serde_json::Value) -> Kubeconfig {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let mut config = Kubeconfig {
            current_context: text(&old["current-context"]),
            ..Kubeconfig::default()
        };
        for context in old["contexts"].as_array().into_iter().flatten() {
            let name = text(&context["name"]);
            config.clusters.push(NamedCluster {
                name: name.clone(),
                cluster: Cluster {
                    server: text(&context["server"]),
                    ..Cluster::default()
                },
            });
            config.contexts.push(NamedContext {
                name: name.clone(),
                context: Context {
                    cluster: name,
                    namespace: text(&context["namespace"]),
                    ..Context::default()
                },
            });
        }
        config
    }

    /// Adds `other`'s clusters, users and contexts, replacing those of the same
    /// name and keeping the rest. `other`'s current context becomes current if
    /// this one has none that exists.
    pub fn merge(&mut self, other: Kubeconfig) {
        for cluster in other.clusters {
            upsert(&mut self.clusters, cluster, |c| &c.name);
        }
        for user in other.users {
            upsert(&mut self.users, user, |u| &u.name);
        }
        for context in other.contexts {
            upsert(&mut self.contexts, context, |c| &c.name);
        }
        let current_exists = self.contexts.iter().any(|c| c.name == self.current_context);
        if !current_exists && !other.current_context.is_empty() {
            self.current_context = other.current_context;
        }
    }

    /// Merges `self` into the kubeconfig at `path` (see [`Kubeconfig::merge`]
    /// and [`Kubeconfig::read_for_update`]) and writes it if that changed it.
    /// Returns whether it was written.
    pub fn merge_into_file(&self, path: &Path) -> Result<bool, KubeconfigError> {
        let before = Kubeconfig::read_for_update(path)?;
        let mut after = before.clone();
        after.merge(self.clone());
        if after == before && path.exists() && Kubeconfig::read(path).is_ok() {
            return Ok(false);
        }
        after.write(path)?;
        Ok(true)
    }

    /// Writes the file atomically (a temporary file in its directory, synced,
    /// renamed over it), readable by its owner only (0600); creates the
    /// directory (0700) if it is missing.
    pub fn write(&self, path: &Path) -> Result<(), KubeconfigError> {
        let write_error = |source: std::io::Error| KubeconfigError::Write {
            path: path.to_owned(),
            source,
        };
        let text = serde_saphyr::to_string(self)
            .map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(write_error)?;
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".to_owned());
        // Unique per process and write, so concurrent writers never share one.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let temp = dir.join(format!(
            ".{file_name}.tmp.{}.{}",
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
            if let Ok(dir) = std::fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(write_error)
    }

    /// The context `name`, or the current one (the first if none is set).
    pub fn context(&self, name: Option<&str>) -> Option<&NamedContext> {
        match name.unwrap_or(&self.current_context) {
            "" => self.contexts.first(),
            name => self.contexts.iter().find(|c| c.name == name),
        }
    }

    /// The client config of context `context` (default: the current one);
    /// `path` is the file this came from: relative paths resolve against its
    /// directory, and errors name it.
    pub fn config(&self, path: &Path, context: Option<&str>) -> Result<Config, KubeconfigError> {
        let field_error = |field: String, message: String| KubeconfigError::Field {
            path: path.to_owned(),
            field,
            message,
        };
        let named = self.context(context).ok_or_else(|| match context {
            Some(name) => field_error("contexts".to_owned(), format!("no context named {name:?}")),
            None if self.current_context.is_empty() => field_error(
                "current-context".to_owned(),
                "no context set and none defined".to_owned(),
            ),
            None => field_error(
                "current-context".to_owned(),
                format!("no context named {:?}", self.current_context),
            ),
        })?;
        let ctx = &named.context;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .ok_or_else(|| {
                field_error(
                    format!("contexts[{}].cluster", named.name),
                    format!("no cluster named {:?}", ctx.cluster),
                )
            })?;
        let user = match ctx.user.as_str() {
            "" => None,
            name => Some(self.users.iter().find(|u| u.name == name).ok_or_else(|| {
                field_error(
                    format!("contexts[{}].user", named.name),
                    format!("no user named {name:?}"),
                )
            })?),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let resolver = Resolver { path, base };
        let server = cluster.cluster.server.trim();
        if server.is_empty() {
            return Err(field_error(
                format!("clusters[{}].server", cluster.name),
                "empty".to_owned(),
            ));
        }
        let mut config = Config::new(server);
        if !ctx.namespace.is_empty() {
            config.namespace = ctx.namespace.clone();
        }
        let section = format!("clusters[{}]", cluster.name);
        let ca_pem = resolver.pem(
            &section,
            (
                "certificate-authority-data",
                &cluster.cluster.certificate_authority_data,
            ),
            (
                "certificate-authority",
                &cluster.cluster.certificate_authority,
            ),
        )?;
        let mut identity = None;
        if let Some(user) = user {
            let section = format!("users[{}]", user.name);
            let cert = resolver.pem(
                &section,
                (
                    "client-certificate-data",
                    &user.user.client_certificate_data,
                ),
                ("client-certificate", &user.user.client_certificate),
            )?;
            let key = resolver.pem(
                &section,
                ("client-key-data", &user.user.client_key_data),
                ("client-key", &user.user.client_key),
            )?;
            identity = match (cert, key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(field_error(
                        format!("{section}.client-key-data"),
                        "a client certificate without its key".to_owned(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(field_error(
                        format!("{section}.client-certificate-data"),
                        "a client key without its certificate".to_owned(),
                    ));
                }
            };
            // Credentials Loom cannot use: refused by name rather than
            // silently sending no credential at all.
            for unsupported in ["exec", "auth-provider", "username", "password", "as"] {
                if user.user.extra.contains_key(unsupported) {
                    return Err(field_error(
                        format!("{section}.{unsupported}"),
                        "not supported by Loom's client: use a client certificate or a token"
                            .to_owned(),
                    ));
                }
            }
            config.auth = match (&user.user.token, &user.user.token_file) {
                (Some(token), _) if !token.trim().is_empty() => {
                    Some(Auth::Token(token.trim().to_owned()))
                }
                (Some(_), None) => {
                    return Err(field_error(format!("{section}.token"), "empty".to_owned()));
                }
                (_, Some(file)) => {
                    let file = resolver.file(file);
                    let token = std::fs::read_to_string(&file).map_err(|e| {
                        field_error(
                            format!("{section}.tokenFile"),
                            format!("cannot read {}: {e}", file.display()),
                        )
                    })?;
                    if token.trim().is_empty() {
                        return Err(field_error(
                            format!("{section}.tokenFile"),
                            format!("{} is empty", file.display()),
                        ));
                    }
                    Some(Auth::TokenFile(file))
                }
                (None, None) => None,
            };
        }
        let https = server
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        match (ca_pem, https) {
            (Some(ca_pem), _) => {
                // Fail here, naming the file and field, rather than at the first request.
                let ca_only = TlsConfig {
                    ca_pem,
                    identity: None,
                };
                ca_only.rustls().map_err(|e| {
                    field_error(
                        format!("{section}.certificate-authority-data"),
                        e.to_string(),
                    )
                })?;
                let tls = TlsConfig {
                    identity,
                    ..ca_only
                };
                tls.rustls().map_err(|e| {
                    field_error(
                        format!(
                            "users[{}].client-certificate-data",
                            user.map_or("", |u| u.name.as_str())
                        ),
                        e.to_string(),
                    )
                })?;
                config.tls = Some(tls);
            }
            (None, true) => {
                return Err(field_error(
                    format!("{section}.certificate-authority-data"),
                    "an https server needs the cluster's CA (certificate-authority-data or \
                     certificate-authority): Loom trusts no other roots, and does not skip \
                     verification (insecure-skip-tls-verify)"
                        .to_owned(),
                ));
            }
            (None, false) => {}
        }
        config.tls_server_name = cluster.cluster.tls_server_name.clone();
        Ok(config)
    }

    /// A copy with secrets hidden as `kubectl config view` hides them: embedded
    /// certificate and key data as `DATA+OMITTED`, tokens as `REDACTED`.
    pub fn redacted(&self) -> Kubeconfig {
        let mut copy = self.clone();
        let omit = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some(DATA_OMITTED.to_owned());
            }
        };
        for cluster in &mut copy.clusters {
            omit(&mut cluster.cluster.certificate_authority_data);
        }
        for user in &mut copy.users {
            omit(&mut user.user.client_certificate_data);
            omit(&mut user.user.client_key_data);
            if user.user.token.is_some() {
                user.user.token = Some(REDACTED.to_owned());
            }
            for (key, value) in user.user.extra.iter_mut() {
                if key == "password" {
                    *value = serde_json::Value::String(REDACTED.to_owned());
                }
            }
        }
        copy
    }

    /// The YAML text of the file.
    pub fn to_yaml(&self) -> Result<String, KubeconfigError> {
        serde_saphyr::to_string(self).map_err(|e| KubeconfigError::Write {
            path: PathBuf::from("(kubeconfig)"),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// The YAML's value; a syntax error says where, never quoting the file's
/// lines (they may hold keys and tokens).
fn parse_yaml(text: &str) -> Result<serde_json::Value, String> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
        .map_err(|e| e.to_string())
}

/// A decoding error without the values it quotes (`` `1234` ``, `"abc"`):
/// the value may be a token.
fn hide_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

/// Whether `value` is Loom's config before it was a kubeconfig: no
/// `apiVersion`/`kind`/`clusters`/`users`, and contexts holding a `server`.
fn is_old_format(value: &serde_json::Value) -> bool {
    value.get("apiVersion").is_none()
        && value.get("kind").is_none()
        && value.get("clusters").is_none()
        && value.get("users").is_none()
        && value["contexts"]
            .as_array()
            .is_some_and(|contexts| contexts.iter().any(|c| c.get("server").is_some()))
}

/// Reads a PEM given inline (base64) or as a file.
struct Resolver<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Resolver<'_> {
    fn file(&self, name: &str) -> PathBuf {
        let name = Path::new(name);
        if name.is_absolute() {
            name.to_owned()
        } else {
            self.base.join(name)
        }
    }

    /// The PEM text of `data` (base64) if set, else of the file `file` names.
    fn pem(
        &self,
        section: &str,
        (data_field, data): (&str, &Option<String>),
        (file_field, file): (&str, &Option<String>),
    ) -> Result<Option<String>, KubeconfigError> {
        let error = |field: &str, message: String| KubeconfigError::Field {
            path: self.path.to_owned(),
            field: format!("{section}.{field}"),
            message,
        };
        let (field, text) = match (data, file) {
            (Some(data), _) if !data.trim().is_empty() => {
                let compact: String = data.split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact.as_bytes())
                    .map_err(|_| error(data_field, "not base64".to_owned()))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| error(data_field, "not PEM text once decoded".to_owned()))?;
                (data_field, text)
            }
            (_, Some(file)) if !file.trim().is_empty() => {
                let file = self.file(file);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    error(file_field, format!("cannot read {}: {e}", file.display()))
                })?;
                (file_field, text)
            }
            _ => return Ok(None),
        };
        if !text.contains("-----BEGIN ") {
            return Err(error(field, "not PEM (no -----BEGIN line)".to_owned()));
        }
        Ok(Some(text))
    }
}

impl From<KubeconfigError> for crate::Error {
    fn from(error: KubeconfigError) -> Self {
        crate::Error::Config(error.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Auth;

    struct Pems {
        ca: String,
        cert: String,
        key: String,
    }

    fn pems() -> Pems {
        let ca = pki::Ca::generate("test-ca").unwrap();
        let admin = ca
            .issue(&pki::Profile::client("admin", Some("system:masters")))
            .unwrap();
        Pems {
            ca: ca.cert_pem().to_owned(),
            cert: admin.cert_pem,
            key: admin.key_pem,
        }
    }

    fn message(error: KubeconfigError) -> String {
        error.to_string()
    }

    #[test]
    fn single_round_trips_and_resolves_to_a_config() {
        let pems = pems();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let written = Kubeconfig::single(
            "loom",
            "https://127.0.0.1:7443/",
            Some(&pems.ca),
            Some(Credential::ClientCert {
                cert_pem: pems.cert.clone(),
                key_pem: pems.key.clone(),
            }),
            "team",
        );
        written.write(&path).unwrap();
        let read = Kubeconfig::read(&path).unwrap();
        assert_eq!(read, written);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("apiVersion: v1"), "{text}");
        assert!(text.contains("kind: Config"), "{text}");
        assert!(text.contains("certificate-authority-data:"), "{text}");
        assert!(text.contains("client-key-data:"), "{text}");
        let config = read.config(&path, None).unwrap();
        assert_eq!(config.server, "https://127.0.0.1:7443");
        assert_eq!(config.namespace, "team");
        let tls = config.tls.unwrap();
        assert_eq!(tls.ca_pem, pems.ca);
        assert_eq!(tls.identity, Some((pems.cert, pems.key)));
        assert_eq!(config.auth, None);
    }

    #[test]
    fn the_file_is_owner_only_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("config");
        let config = Kubeconfig::single(
            "a",
            "http://a:1",
            None,
            Some(Credential::Token("t".into())),
            "",
        );
        config.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // A second write leaves no temporary file behind.
        config.write(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config")]);
    }

    #[test]
    fn merge_replaces_same_names_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let mut other = Kubeconfig::single("other", "http://other:1", None, None, "ns");
        other.extra.insert(
            "preferences".to_owned(),
            serde_json::json!({"colors": true}),
        );
        other.write(&path).unwrap();
        let first = Kubeconfig::single(
            "loom",
            "http://old:1",
            None,
            Some(Credential::Token("old".into())),
            "",
        );
        assert!(first.merge_into_file(&path).unwrap());
        let merged = Kubeconfig::read(&path).unwrap();
        // The existing current context stays current.
        assert_eq!(merged.current_context, "other");
        assert_eq!(merged.contexts.len(), 2);
        assert_eq!(
            merged.extra["preferences"],
            serde_json::json!({"colors": true})
        );
        let second = Kubeconfig::single(
            "loom",
            "http://new:2",
            None,
            Some(Credential::Token("new".into())),
            "",
        );
        assert!(second.merge_into_file(&path).unwrap());
        assert!(
            !second.merge_into_file(&path).unwrap(),
            "unchanged: not rewritten"
        );
        let merged = Kubeconfig::read(&path).unwrap();
        assert_eq!(merged.clusters.len(), 2);
        assert_eq!(merged.users.len(), 1);
        let loom = merged.config(&path, Some("loom")).unwrap();
        assert_eq!(loom.server, "http://new:2");
        assert_eq!(loom.auth, Some(Auth::Token("new".into())));
        assert_eq!(merged.config(&path, None).unwrap().server, "http://other:1");
        // Into a missing file: the new context is current.
        let fresh = dir.path().join("fresh");
        assert!(second.merge_into_file(&fresh).unwrap());
        assert_eq!(Kubeconfig::read(&fresh).unwrap().current_context, "loom");
    }

    #[test]
    fn files_resolve_against_the_kubeconfig_directory() {
        let pems = pems();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/ca.crt"), &pems.ca).unwrap();
        std::fs::write(dir.path().join("pki/admin.crt"), &pems.cert).unwrap();
        std::fs::write(dir.path().join("pki/admin.key"), &pems.key).unwrap();
        std::fs::write(dir.path().join("token"), "file-token\n").unwrap();
        let path = dir.path().join("config");
        let text = "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: pki/ca.crt\n    tls-server-name: api.loom\n    insecure-skip-tls-verify: false\nusers:\n- name: u\n  user:\n    client-certificate: pki/admin.crt\n    client-key: pki/admin.key\n    tokenFile: token\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n";
        std::fs::write(&path, text).unwrap();
        let file = Kubeconfig::read(&path).unwrap();
        assert_eq!(
            file.clusters[0].cluster.extra["insecure-skip-tls-verify"],
            serde_json::json!(false)
        );
        let config = file.config(&path, None).unwrap();
        assert_eq!(config.namespace, "default");
        assert_eq!(config.tls_server_name.as_deref(), Some("api.loom"));
        let tls = config.tls.unwrap();
        assert_eq!(tls.ca_pem, pems.ca);
        assert_eq!(tls.identity, Some((pems.cert, pems.key)));
        assert_eq!(config.auth, Some(Auth::TokenFile(dir.path().join("token"))));
        // Unknown fields survive a rewrite.
        let again = Kubeconfig::parse(&file.to_yaml().unwrap(), &path).unwrap();
        assert_eq!(again, file);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let pems = pems();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let check = |config: &Kubeconfig, context: Option<&str>, expected: &str| {
            let error = message(config.config(&path, context).unwrap_err());
            assert!(error.starts_with(&path.display().to_string()), "{error}");
            assert!(error.contains(expected), "{error} lacks {expected}");
        };
        let mut bad_key = Kubeconfig::single(
            "admin",
            "https://a:1",
            Some(&pems.ca),
            Some(Credential::ClientCert {
                cert_pem: pems.cert.clone(),
                key_pem: pems.key.clone(),
            }),
            "",
        );
        bad_key.users[0].user.client_key_data = Some("not base64!".to_owned());
        check(&bad_key, None, "users[admin].client-key-data: not base64");
        bad_key.users[0].user.client_key_data = Some(b64("just text"));
        check(&bad_key, None, "users[admin].client-key-data: not PEM");
        bad_key.users[0].user.client_key_data = None;
        check(
            &bad_key,
            None,
            "users[admin].client-key-data: a client certificate without its key",
        );
        let mut plugin = Kubeconfig::single(
            "p",
            "http://a:1",
            None,
            Some(Credential::Token("t".into())),
            "",
        );
        plugin.users[0]
            .user
            .extra
            .insert("exec".to_owned(), serde_json::json!({"command": "aws"}));
        check(&plugin, None, "users[p].exec: not supported");
        let mut no_ca = Kubeconfig::single("x", "https://a:1", None, None, "");
        check(
            &no_ca,
            None,
            "clusters[x].certificate-authority-data: an https server needs",
        );
        no_ca.clusters[0].cluster.certificate_authority = Some("missing.crt".to_owned());
        check(
            &no_ca,
            None,
            "clusters[x].certificate-authority: cannot read",
        );
        check(&no_ca, Some("nope"), "contexts: no context named \"nope\"");
        no_ca.contexts[0].context.cluster = "gone".to_owned();
        check(
            &no_ca,
            None,
            "contexts[x].cluster: no cluster named \"gone\"",
        );
        no_ca.contexts[0].context.cluster = "x".to_owned();
        no_ca.contexts[0].context.user = "ghost".to_owned();
        check(&no_ca, None, "contexts[x].user: no user named \"ghost\"");
        let mut bad_ca = Kubeconfig::single(
            "y",
            "https://a:1",
            Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None,
            "",
        );
        check(&bad_ca, None, "clusters[y].certificate-authority-data");
        bad_ca.current_context = "z".to_owned();
        check(&bad_ca, None, "current-context: no context named \"z\"");
        // Shapes: a wrong type names the path, a wrong kind is refused.
        let parse = |text: &str| message(Kubeconfig::parse(text, &path).unwrap_err());
        // A syntax error or a wrong type never quotes the value (a token, a key).
        let error =
            parse("apiVersion: v1\nusers:\n- name: a\n  user:\n    token: \"s3cr3t\n    x: [\n");
        assert!(!error.contains("s3cr3t"), "{error}");
        assert!(error.contains("line"), "{error}");
        let error = parse("apiVersion: v1\nusers:\n- name: a\n  user:\n    token: 987654321\n");
        assert!(!error.contains("987654321"), "{error}");
        assert!(error.contains("users[0].user.token"), "{error}");
        let error =
            parse("apiVersion: v1\nkind: Config\nusers:\n- name: a\n  user:\n    token: [1, 2]\n");
        assert!(error.contains("users[0].user.token"), "{error}");
        let error = parse("apiVersion: v1\nkind: Pod\n");
        assert!(error.contains("kind: \"Pod\", not Config"), "{error}");
        let error = parse("- a\n- b\n");
        assert!(error.contains("not a mapping"), "{error}");
        assert_eq!(
            Kubeconfig::parse("\n", &path).unwrap(),
            Kubeconfig::default()
        );
    }

    #[test]
    fn the_old_format_is_refused_with_what_to_do_and_converted_for_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "current-context: b\ncontexts:\n- name: a\n  server: http://a:1\n- name: b\n  server: http://b:2/\n  namespace: team\n",
        )
        .unwrap();
        let error = message(Kubeconfig::read(&path).unwrap_err());
        assert!(error.contains("old config format"), "{error}");
        assert!(error.contains("loom up"), "{error}");
        assert!(error.contains("loomctl config set-cluster"), "{error}");
        let error = crate::Config::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("loom up"), "{error}");
        // Changing it converts it, keeping each context's server and namespace.
        let converted = Kubeconfig::read_for_update(&path).unwrap();
        let config = converted.config(&path, None).unwrap();
        assert_eq!(config.server, "http://b:2");
        assert_eq!(config.namespace, "team");
        let up = Kubeconfig::single("loom-up", "http://c:3", None, None, "");
        assert!(up.merge_into_file(&path).unwrap());
        let merged = Kubeconfig::read(&path).unwrap();
        assert_eq!(merged.contexts.len(), 3);
        assert_eq!(merged.current_context, "b");
    }

    #[test]
    fn a_corrupt_file_is_never_overwritten_by_a_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters: {oops\n").unwrap();
        let up = Kubeconfig::single("loom-up", "http://c:3", None, None, "");
        let error = message(up.merge_into_file(&path).unwrap_err());
        assert!(error.starts_with(&path.display().to_string()), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "apiVersion: v1\nkind: Config\nclusters: {oops\n"
        );
    }

    #[test]
    fn the_current_context_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: a\n  cluster: {server: 'http://a:1'}\n- name: b\n  cluster: {server: 'http://b:2/'}\ncontexts:\n- name: a\n  context: {cluster: a}\n- name: b\n  context: {cluster: b, namespace: team}\n",
        )
        .unwrap();
        let config = crate::Config::from_file(&path).unwrap();
        assert_eq!(config.server, "http://b:2");
        assert_eq!(config.namespace, "team");
    }

    #[test]
    fn redaction_hides_every_secret() {
        let pems = pems();
        let mut config = Kubeconfig::single(
            "a",
            "https://a:1",
            Some(&pems.ca),
            Some(Credential::ClientCert {
                cert_pem: pems.cert.clone(),
                key_pem: pems.key.clone(),
            }),
            "",
        );
        config.users[0].user.token = Some("s3cr3t-token".to_owned());
        config.users[0]
            .user
            .extra
            .insert("password".to_owned(), serde_json::json!("hunter2"));
        let shown = config.redacted().to_yaml().unwrap();
        for secret in [
            b64(&pems.key),
            b64(&pems.cert),
            b64(&pems.ca),
            "s3cr3t-token".to_owned(),
            "hunter2".to_owned(),
        ] {
            assert!(!shown.contains(&secret), "{shown}");
        }
        assert!(shown.contains("client-key-data: DATA+OMITTED"), "{shown}");
        assert!(
            shown.contains("certificate-authority-data: DATA+OMITTED"),
            "{shown}"
        );
        assert!(shown.contains("token: REDACTED"), "{shown}");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cr3t-token") && !debug.contains(&b64(&pems.key)),
            "{debug}"
        );
        let debug = format!(
            "{:?}",
            Credential::ClientCert {
                cert_pem: "c".into(),
                key_pem: "the-key".into()
            }
        );
        assert!(!debug.contains("the-key"), "{debug}");
        assert!(!format!("{:?}", Credential::Token("tok".into())).contains("tok\""));
    }
}
