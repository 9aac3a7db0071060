//! A node joining a cluster by TLS bootstrapping, as a kubelet does:
//! `loom nodelet --server URL --token T --ca-cert-hash sha256:…` fetches the
//! cluster CA and trusts it only if it matches the hash, asks for the node's
//! client certificate with the bootstrap token, keeps it in
//! `STATE_DIR/node.conf` (a kubeconfig, 0600), runs the nodelet with it, and
//! renews it with itself at 80 % of its life (then the nodelet starts again
//! with the new one; its tasks keep running and are adopted unless
//! `--stop-tasks-on-exit`). A node restarted later finds its `node.conf` and
//! needs no token.
//!
//! With that certificate the node also asks for the serving certificate of
//! its endpoint (logs, later exec): a CSR of the kubelet-serving signer for
//! `CN=system:node:NAME, O=system:nodes` naming `DNS:NAME` alone, which the
//! API server approves for the node itself and checks when it calls it. It is
//! kept in `STATE_DIR/serving.crt` and `serving.key` (0600) and renewed at
//! 80 % of its life, served from the next handshake on without a restart.
//! A node given its own credential by `--kubeconfig` (`node-NAME.conf` of
//! `loom certs --node NAME`) asks for its serving certificate the same way
//! ([`node_identity`]), renewing with that kubeconfig as it stands then.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::node_cmd::ApiArgs;

/// The node's kubeconfig, in its state directory.
pub const NODE_KUBECONFIG: &str = "node.conf";
/// The node's serving certificate, in its state directory.
pub const SERVING_CERT: &str = "serving.crt";
/// Its private key, in its state directory.
pub const SERVING_KEY: &str = "serving.key";
/// A certificate is renewed in the last fifth of its life (at 80 %).
pub const RENEW_IN_LAST: f64 = 0.2;
/// How long a node waits for its request to be signed.
const SIGN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long after a failed renewal a node tries again.
const RETRY_RENEWAL: Duration = Duration::from_secs(60);

/// How a node joins.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct JoinArgs {
    /// Join the cluster with this bootstrap token (`loom token create` prints
    /// the whole command): the node gets its own client certificate with it
    /// and keeps it in STATE_DIR/node.conf. Needs --server and --ca-cert-hash.
    #[arg(
        long,
        env = "LOOM_TOKEN",
        hide_env_values = true,
        requires = "ca_cert_hash"
    )]
    pub token: Option<String>,
    /// `sha256:<hex>` of the cluster CA's public key: the CA the server sends
    /// is trusted only if it matches.
    #[arg(long, env = "LOOM_CA_CERT_HASH", requires = "token")]
    pub ca_cert_hash: Option<String>,
}

/// A node's own credential.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Its kubeconfig.
    pub path: PathBuf,
    /// The client configuration it holds.
    pub config: client::Config,
    /// When to renew the certificate.
    pub renew_at: SystemTime,
    /// When the certificate expires.
    pub not_after: SystemTime,
}

/// Reads `node`'s credential from `path`.
pub fn read(path: &Path, node: &str) -> anyhow::Result<Credentials> {
    let config = client::Config::from_kubeconfig(path, None)
        .with_context(|| format!("cannot read the node's kubeconfig {}", path.display()))?;
    let Some((cert, _)) = config.tls.as_ref().and_then(|tls| tls.identity.clone()) else {
        anyhow::bail!("{} holds no client certificate", path.display());
    };
    of_certificate(path, config, &cert, node)
}

/// `config`, read from `path`, as `node`'s credential: its client
/// certificate `cert` must be `system:node:NODE`'s.
fn of_certificate(
    path: &Path,
    config: client::Config,
    cert: &str,
    node: &str,
) -> anyhow::Result<Credentials> {
    let info = pki::CertInfo::from_pem(cert)
        .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
    let user = format!("{}{node}", api_types::certificates::NODE_USER_PREFIX);
    anyhow::ensure!(
        info.common_name == user,
        "{} is the credential of {:?}, not of node {node:?}",
        path.display(),
        info.common_name
    );
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    Ok(Credentials {
        path: path.to_owned(),
        config,
        renew_at: info.not_before + life.mul_f64(1.0 - RENEW_IN_LAST),
        not_after: info.not_after,
    })
}

/// Writes a node's kubeconfig, owner-only.
fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    cert_pem: String,
    key_pem: String,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    client::Kubeconfig::single(
        "loom",
        server,
        Some(ca_pem),
        Some(client::Credential::ClientCert { cert_pem, key_pem }),
        "",
    )
    .write(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    Ok(())
}

/// The node's credential: its `node.conf` if it has a valid one, else one
/// got with `--token` now; `None` when the node is given its credential
/// another way (`--kubeconfig`, or no token and no `node.conf`).
pub async fn credentials(
    api: &ApiArgs,
    join: &JoinArgs,
    state_dir: &Path,
    node: &str,
) -> anyhow::Result<Option<Credentials>> {
    let path = state_dir.join(NODE_KUBECONFIG);
    if join.token.is_none() && (api.kubeconfig.is_some() || !path.exists()) {
        return Ok(None);
    }
    if path.exists() {
        match read(&path, node) {
            Ok(mut found) if SystemTime::now() < found.not_after => {
                if let Some(server) = &api.server {
                    found.config.server = server.trim().trim_end_matches('/').to_owned();
                }
                return Ok(Some(found));
            }
            Ok(_) if join.token.is_none() => anyhow::bail!(
                "the node's certificate in {} has expired: join again with --token",
                path.display()
            ),
            Err(error) if join.token.is_none() => return Err(error),
            // Expired or unreadable: join again with the token.
            Ok(_) | Err(_) => {}
        }
    }
    let (Some(token), Some(hash)) = (&join.token, &join.ca_cert_hash) else {
        anyhow::bail!("--token needs --ca-cert-hash");
    };
    let Some(server) = &api.server else {
        anyhow::bail!("--token needs --server, the API server to join");
    };
    let server = server.trim().trim_end_matches('/');
    let first = server.split(',').next().unwrap_or(server).trim();
    let ca_pem = client::bootstrap::fetch_cluster_ca(first, hash)
        .await
        .with_context(|| format!("cannot get the cluster CA from {first}"))?;
    let mut config = client::Config::new(server);
    config.tls = Some(client::TlsConfig {
        ca_pem: ca_pem.clone(),
        identity: None,
    });
    config.auth = Some(client::Auth::Token(token.trim().to_owned()));
    let bootstrap = client::Client::new(config)?;
    let (cert, key) = client::bootstrap::request_node_certificate(&bootstrap, node, SIGN_TIMEOUT)
        .await
        .context("cannot get the node's certificate with the bootstrap token")?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    // A serving certificate of an earlier join (another cluster, perhaps) is
    // not this credential's: a new one is asked for.
    for stale in [SERVING_CERT, SERVING_KEY] {
        let stale = state_dir.join(stale);
        if stale.exists() {
            std::fs::remove_file(&stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }
    write(&path, server, &ca_pem, cert, key)?;
    println!(
        "node {node} joined {server}: its credential is in {}",
        path.display()
    );
    read(&path, node).map(Some)
}

/// The credential `api` names (`--kubeconfig`, else the inferred one) when
/// it is a node identity, a client certificate of `system:node:NODE`: with
/// it the node asks for its serving certificate as a joined node does.
/// `None` for any other credential (a token, another user's certificate);
/// an error for another node's certificate.
pub fn node_identity(api: &ApiArgs, node: &str) -> anyhow::Result<Option<Credentials>> {
    let config = api.config()?;
    let Some((cert, _)) = config.tls.as_ref().and_then(|tls| tls.identity.clone()) else {
        return Ok(None);
    };
    let path = api.kubeconfig.clone().unwrap_or_default();
    let info = pki::CertInfo::from_pem(&cert)
        .map_err(|why| anyhow::anyhow!("the client certificate of {}: {why}", path.display()))?;
    let prefix = api_types::certificates::NODE_USER_PREFIX;
    if !info.common_name.starts_with(prefix) {
        return Ok(None);
    }
    of_certificate(&path, config, &cert, node).map(Some)
}

/// `credentials` as they stand now: read again from their kubeconfig (a
/// renewal or an operator may have replaced it), still with the API server
/// they were first given, or as they were when they came from no file.
fn reread(credentials: &Credentials, node: &str) -> anyhow::Result<Credentials> {
    if credentials.path.as_os_str().is_empty() {
        return Ok(credentials.clone());
    }
    let mut now = read(&credentials.path, node)?;
    now.config.server.clone_from(&credentials.config.server);
    Ok(now)
}

/// A new certificate for `node`, asked for with its current one.
pub async fn renew(current: &Credentials, node: &str) -> anyhow::Result<Credentials> {
    let client = client::Client::new(current.config.clone())?;
    let (cert, key) = client::bootstrap::request_node_certificate(&client, node, SIGN_TIMEOUT)
        .await
        .context("cannot renew the node's certificate")?;
    let ca_pem = current
        .config
        .tls
        .as_ref()
        .map(|tls| tls.ca_pem.clone())
        .unwrap_or_default();
    write(&current.path, &current.config.server, &ca_pem, cert, key)?;
    read(&current.path, node)
}

/// Runs the nodelet with the node's own credential until `shutdown`,
/// renewing it at 80 % of its life and starting the nodelet again with it.
pub async fn run_renewing(
    mut credentials: Credentials,
    config: nodelet::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let node = config.name.clone();
    loop {
        let client = client::Client::new(credentials.config.clone())?;
        let run = shutdown.child_token();
        let mut work = tokio::spawn(nodelet::run(client, config.clone(), run.clone()));
        loop {
            let wait = credentials
                .renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                finished = &mut work => return finished.context("the nodelet panicked")?,
                () = tokio::time::sleep(wait) => {}
            }
            match renew(&credentials, &node).await {
                Ok(renewed) => {
                    tracing::info!(node = %node, file = %renewed.path.display(), "renewed the node's certificate");
                    credentials = renewed;
                    break;
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot renew the node's certificate yet");
                    credentials.renew_at = SystemTime::now() + RETRY_RENEWAL;
                }
            }
        }
        // Again with the new certificate.
        run.cancel();
        work.await.context("the nodelet panicked")??;
    }
}

/// The node's serving certificate as it stands.
#[derive(Clone, Debug)]
pub struct Serving {
    /// The PEM certificate.
    pub cert_pem: String,
    /// Its PEM private key.
    pub key_pem: String,
    /// When to renew it.
    pub renew_at: SystemTime,
}

/// `cert_pem` and `key_pem` as node `node`'s serving certificate, or why
/// they are not one.
fn serving_of(node: &str, cert_pem: String, key_pem: String) -> anyhow::Result<Serving> {
    let info = pki::CertInfo::from_pem(&cert_pem).map_err(|why| anyhow::anyhow!("{why}"))?;
    let user = format!("{}{node}", api_types::certificates::NODE_USER_PREFIX);
    anyhow::ensure!(
        info.common_name == user && info.server_auth && info.dns_names.iter().any(|d| d == node),
        "it is not node {node:?}'s serving certificate (subject {:?}, names {:?})",
        info.common_name,
        info.dns_names
    );
    anyhow::ensure!(SystemTime::now() < info.not_after, "it has expired");
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    Ok(Serving {
        cert_pem,
        key_pem,
        renew_at: info.not_before + life.mul_f64(1.0 - RENEW_IN_LAST),
    })
}

/// Node `node`'s serving certificate: the one in `state_dir` if it is the
/// node's and has not expired (one due for renewal is renewed by
/// [`renew_serving_forever`] at once, so a node restarted while the API
/// server is away still serves), else a new one asked for with
/// `credentials` and written there (the key owner-only).
pub async fn serving(
    credentials: &Credentials,
    state_dir: &Path,
    node: &str,
) -> anyhow::Result<Serving> {
    let cert_path = state_dir.join(SERVING_CERT);
    let key_path = state_dir.join(SERVING_KEY);
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        match serving_of(node, cert, key) {
            Ok(found) => return Ok(found),
            Err(error) => {
                tracing::warn!(file = %cert_path.display(), error = %format!("{error:#}"), "asking for a new serving certificate");
            }
        }
    }
    renew_serving(credentials, state_dir, node).await
}

/// A new serving certificate for `node`, asked for with `credentials` and
/// written in `state_dir`.
pub async fn renew_serving(
    credentials: &Credentials,
    state_dir: &Path,
    node: &str,
) -> anyhow::Result<Serving> {
    let client = client::Client::new(credentials.config.clone())?;
    let (cert, key) =
        client::bootstrap::request_node_serving_certificate(&client, node, SIGN_TIMEOUT)
            .await
            .context("cannot get the node's serving certificate")?;
    let serving = serving_of(node, cert, key).context("the signed serving certificate")?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    // The key first: a certificate is never on disk without its key.
    pki::write_private(&state_dir.join(SERVING_KEY), &serving.key_pem)?;
    pki::write_public(&state_dir.join(SERVING_CERT), &serving.cert_pem)?;
    Ok(serving)
}

/// The TLS of a joined node's endpoint: `serving`, replaceable while it
/// runs, and callers' client certificates checked against the cluster CA
/// of `credentials`. The certificate it serves, to renew.
pub fn endpoint_tls(
    credentials: &Credentials,
    serving: &Serving,
) -> anyhow::Result<(nodelet::EndpointTls, Arc<loom_listener::tls::ServingCert>)> {
    let ca_pem = credentials
        .config
        .tls
        .as_ref()
        .map(|tls| tls.ca_pem.clone())
        .unwrap_or_default();
    let cert = loom_listener::tls::ServingCert::from_pem(&serving.cert_pem, &serving.key_pem)?;
    let server = loom_listener::tls::server_config_with(cert.clone(), &ca_pem)?;
    Ok((
        nodelet::EndpointTls {
            server,
            callers: crate::node_cmd::api_server_callers(),
        },
        cert,
    ))
}

/// Renews the serving certificate at 80 % of its life until `shutdown`,
/// asking with the node's credential as its kubeconfig (`node.conf` of a
/// joined node, `--kubeconfig` of another) holds it then, and serves each
/// new one from the next handshake on.
pub async fn renew_serving_forever(
    mut serving: Serving,
    cert: Arc<loom_listener::tls::ServingCert>,
    credentials: Credentials,
    state_dir: PathBuf,
    node: String,
    shutdown: CancellationToken,
) {
    loop {
        let wait = serving
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let renewed = match reread(&credentials, &node) {
            Ok(credentials) => renew_serving(&credentials, &state_dir, &node).await,
            Err(error) => Err(error),
        };
        match renewed.and_then(|renewed| {
            cert.replace(&renewed.cert_pem, &renewed.key_pem)?;
            Ok(renewed)
        }) {
            Ok(renewed) => {
                tracing::info!(node = %node, "renewed the node's serving certificate");
                serving = renewed;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot renew the node's serving certificate yet");
                serving.renew_at = SystemTime::now() + RETRY_RENEWAL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig at `path` for `server` holding a client certificate of
    /// `user` in `group` from `ca`.
    fn kubeconfig(path: &Path, ca: &pki::Ca, server: &str, user: &str, group: Option<&str>) {
        let issued = ca.issue(&pki::Profile::client(user, group)).expect("issue");
        client::Kubeconfig::single(
            "loom",
            server,
            Some(ca.cert_pem()),
            Some(client::Credential::ClientCert {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            }),
            "",
        )
        .write(path)
        .expect("write the kubeconfig");
    }

    fn api(path: &Path) -> ApiArgs {
        ApiArgs {
            kubeconfig: Some(path.to_owned()),
            server: None,
        }
    }

    #[test]
    fn only_the_nodes_own_certificate_is_its_identity() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = pki::Ca::generate("test-ca").expect("a CA");
        let conf = dir.path().join("node.conf");
        kubeconfig(
            &conf,
            &ca,
            "https://a:1",
            "system:node:n1",
            Some("system:nodes"),
        );
        let found = node_identity(&api(&conf), "n1")
            .expect("read")
            .expect("the node's own");
        assert_eq!(found.path, conf);
        // Another node's certificate: an error naming both.
        let error = node_identity(&api(&conf), "n2").expect_err("another node's");
        let text = format!("{error:#}");
        assert!(
            text.contains("system:node:n1") && text.contains("n2"),
            "{text}"
        );
        // A user's certificate, or a token: not a node identity.
        let admin = dir.path().join("admin.conf");
        kubeconfig(
            &admin,
            &ca,
            "https://a:1",
            "loom-admin",
            Some("system:masters"),
        );
        assert!(node_identity(&api(&admin), "n1").expect("read").is_none());
        let token = dir.path().join("token.conf");
        client::Kubeconfig::single(
            "loom",
            "https://a:1",
            Some(ca.cert_pem()),
            Some(client::Credential::Token("t".to_owned())),
            "",
        )
        .write(&token)
        .expect("write");
        assert!(node_identity(&api(&token), "n1").expect("read").is_none());
    }

    #[test]
    fn a_credential_is_read_again_with_the_server_it_was_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = pki::Ca::generate("test-ca").expect("a CA");
        let conf = dir.path().join("node.conf");
        kubeconfig(
            &conf,
            &ca,
            "https://a:1",
            "system:node:n1",
            Some("system:nodes"),
        );
        let mut given = node_identity(
            &ApiArgs {
                kubeconfig: Some(conf.clone()),
                server: Some("https://b:2,https://c:3".to_owned()),
            },
            "n1",
        )
        .expect("read")
        .expect("the node's own");
        assert_eq!(given.config.server, "https://b:2,https://c:3");
        let first = given.config.tls.clone().and_then(|t| t.identity);
        // The file replaced (a renewal, an operator): the new certificate,
        // the same servers.
        kubeconfig(
            &conf,
            &ca,
            "https://a:1",
            "system:node:n1",
            Some("system:nodes"),
        );
        let now = reread(&given, "n1").expect("read again");
        assert_eq!(now.config.server, "https://b:2,https://c:3");
        assert_ne!(now.config.tls.and_then(|t| t.identity), first);
        // A credential from no file is kept as it is.
        given.path = PathBuf::new();
        let kept = reread(&given, "n1").expect("kept");
        assert_eq!(kept.config.tls.and_then(|t| t.identity), first);
    }
}
