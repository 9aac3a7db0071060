//! A node joining a cluster by TLS bootstrapping, as a kubelet does:
//! `loom nodelet --server URL --token T --ca-cert-hash sha256:…` fetches the
//! cluster CA and trusts it only if it matches the hash, asks for the node's
//! client certificate with the bootstrap token, keeps it in
//! `STATE_DIR/node.conf` (a kubeconfig, 0600), runs the nodelet with it, and
//! renews it with itself at 80 % of its life (then the nodelet starts again
//! with the new one; its tasks keep running and are adopted unless
//! `--stop-tasks-on-exit`). A node restarted later finds its `node.conf` and
//! needs no token.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::node_cmd::ApiArgs;

/// The node's kubeconfig, in its state directory.
pub const NODE_KUBECONFIG: &str = "node.conf";
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
    let Some((cert, _)) = config.tls.as_ref().and_then(|tls| tls.identity.as_ref()) else {
        anyhow::bail!("{} holds no client certificate", path.display());
    };
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
    write(&path, server, &ca_pem, cert, key)?;
    println!(
        "node {node} joined {server}: its credential is in {}",
        path.display()
    );
    read(&path, node).map(Some)
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
