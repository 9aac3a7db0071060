//! `loom certs`: the cluster's certificates in one directory, made once and
//! kept (as `kubeadm init phase certs`): the CA, the API server's serving
//! certificate, the client certificates of the administrator, the scheduler
//! and the controllers, and the key pair that signs service-account tokens;
//! with `--server`, a kubeconfig for each of them beside (as kubeadm's
//! `admin.conf`, `scheduler.conf`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pki::{ClusterPki, Credential, Profile};

/// The administrator's user name.
pub const ADMIN_USER: &str = "loom-admin";
/// The group every right is given to.
pub const MASTERS_GROUP: &str = "system:masters";
/// The scheduler's user name.
pub const SCHEDULER_USER: &str = "system:loom-scheduler";
/// The controllers' user name.
pub const CONTROLLERS_USER: &str = "system:loom-controllers";
/// The node proxies' user name (`loom proxy`).
pub const PROXY_USER: &str = "system:loom-proxy";
/// The group of every node.
pub const NODES_GROUP: &str = "system:nodes";

/// A node's user name.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}

/// `loom certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The directory (made, owner only, if missing).
    #[arg(long, default_value = "/var/lib/loom/pki")]
    dir: PathBuf,
    /// More names the serving certificate is valid for (IP addresses or DNS
    /// names), besides loopback, `localhost` and this host's name.
    #[arg(long = "tls-san", value_delimiter = ',')]
    sans: Vec<String>,
    /// Also write `admin.conf`, `scheduler.conf`, `controllers.conf` and `proxy.conf`
    /// kubeconfigs for this API server URL (e.g. `https://10.0.0.1:7443`).
    #[arg(long)]
    server: Option<String>,
    /// Also issue a node credential (`system:node:NAME` in `system:nodes`)
    /// and, with --server, its kubeconfig `node-NAME.conf`; `NAME@IP,...`
    /// also issues the serving certificate of its nodelet's endpoint for those
    /// addresses (`node-NAME-serving.crt`).
    #[arg(long = "node")]
    nodes: Vec<String>,
}

/// Every credential of a cluster's control plane, as files in its PKI dir.
#[derive(Debug)]
pub struct ClusterCredentials {
    /// The CA and the service-account keys.
    pub pki: ClusterPki,
    /// The API server's serving certificate.
    pub serving: Credential,
    /// The administrator (`loom-admin` in `system:masters`).
    pub admin: Credential,
    /// The scheduler.
    pub scheduler: Credential,
    /// The controllers.
    pub controllers: Credential,
    /// The node proxies.
    pub proxy: Credential,
    /// The API server as it calls nodelets (`system:loom-apiserver`).
    pub nodelet_client: Credential,
}

impl ClusterCredentials {
    /// Makes what is missing in `dir` and reissues what no longer fits: the
    /// serving certificate then covers loopback, this host and `sans`.
    pub fn ensure(dir: &Path, sans: &[String]) -> anyhow::Result<Self> {
        let pki = ClusterPki::ensure(dir)?;
        let serving = pki
            .ensure_credential(
                "apiserver",
                &Profile::server("loom-apiserver", &serving_names(sans)),
            )
            .context("--tls-san")?;
        let admin =
            pki.ensure_credential("admin", &Profile::client(ADMIN_USER, Some(MASTERS_GROUP)))?;
        let scheduler =
            pki.ensure_credential("scheduler", &Profile::client(SCHEDULER_USER, None))?;
        let controllers =
            pki.ensure_credential("controllers", &Profile::client(CONTROLLERS_USER, None))?;
        let proxy = pki.ensure_credential("proxy", &Profile::client(PROXY_USER, None))?;
        let nodelet_client = pki.ensure_credential(
            "apiserver-nodelet-client",
            &Profile::client(nodelet::server::API_SERVER_USER, None),
        )?;
        Ok(ClusterCredentials {
            pki,
            serving,
            admin,
            scheduler,
            controllers,
            proxy,
            nodelet_client,
        })
    }

    /// The credential of node `name` (`node-NAME.crt`/`.key`).
    pub fn node(&self, name: &str) -> anyhow::Result<Credential> {
        let problems = api_types::names::is_dns1123_subdomain(name);
        anyhow::ensure!(
            problems.is_empty(),
            "--node {name:?} is not a valid node name: {}",
            problems.join("; ")
        );
        let file = format!("node-{}", name.replace('.', "-"));
        Ok(self
            .pki
            .ensure_credential(&file, &Profile::client(&node_user(name), Some(NODES_GROUP)))?)
    }

    /// The serving certificate of node `name`'s endpoint, for `addresses` and
    /// the DNS name `name` (what the API server checks when it calls the node),
    /// `O=system:nodes` as the certificates nodes ask for themselves. One made
    /// before without the name is made again.
    pub fn node_serving(&self, name: &str, addresses: &[String]) -> anyhow::Result<Credential> {
        let file = format!("node-{}-serving", name.replace('.', "-"));
        let mut names = vec![name.to_owned()];
        names.extend(addresses.iter().cloned());
        let mut profile = Profile::server(&node_user(name), &names);
        profile.organization = Some(NODES_GROUP.to_owned());
        self.pki
            .ensure_credential(&file, &profile)
            .with_context(|| format!("--node {name}@{}", addresses.join(",")))
    }

    /// What the API server needs to call nodelets serving TLS.
    pub fn nodelet_client_tls(&self) -> anyhow::Result<apiserver::logs::NodeletClientTls> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(apiserver::logs::NodeletClientTls {
            ca_pem: self.pki.ca().cert_pem().to_owned(),
            cert_pem: read(&self.nodelet_client.cert)?,
            key_pem: read(&self.nodelet_client.key)?,
        })
    }

    /// The TLS of node `name`'s endpoint: its serving certificate for
    /// `addresses`, callers verified against the cluster CA, only the API
    /// server let in.
    pub fn endpoint_tls(
        &self,
        name: &str,
        addresses: &[String],
    ) -> anyhow::Result<nodelet::EndpointTls> {
        let serving = self.node_serving(name, addresses)?;
        Ok(nodelet::EndpointTls {
            server: loom_listener::tls::server_config(
                &serving.cert,
                &serving.key,
                Some(&self.pki.ca_cert()),
            )?,
            callers: crate::node_cmd::api_server_callers(),
        })
    }

    /// The client configuration of `credential` for `server`.
    pub fn client_config(
        &self,
        server: &str,
        credential: &Credential,
    ) -> anyhow::Result<client::Config> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let mut config = client::Config::new(server);
        config.tls = Some(client::config::TlsConfig {
            ca_pem: self.pki.ca().cert_pem().to_owned(),
            identity: Some((read(&credential.cert)?, read(&credential.key)?)),
        });
        Ok(config)
    }

    /// A kubeconfig with `credential` embedded, for `server`, context `context`.
    pub fn kubeconfig(
        &self,
        context: &str,
        server: &str,
        credential: &Credential,
    ) -> anyhow::Result<client::Kubeconfig> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(client::Kubeconfig::single(
            context,
            server,
            Some(self.pki.ca().cert_pem()),
            Some(client::kubeconfig::Credential::ClientCert {
                cert_pem: read(&credential.cert)?,
                key_pem: read(&credential.key)?,
            }),
            "default",
        ))
    }

    /// Writes `NAME.conf` for `credential` into the PKI dir (owner only).
    pub fn write_kubeconfig(
        &self,
        name: &str,
        server: &str,
        credential: &Credential,
    ) -> anyhow::Result<PathBuf> {
        let path = self.pki.dir().join(format!("{name}.conf"));
        self.kubeconfig("loom", server, credential)?
            .write(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// The names a serving certificate of this host covers: loopback, this
/// host's name and `extra`.
pub fn serving_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["127.0.0.1", "::1", "localhost"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    // Repeats are dropped by `Profile::server`.
    names.extend(extra.iter().map(|n| n.trim().to_owned()));
    names.retain(|n| !n.is_empty());
    names
}

/// Makes what is missing, reissues what no longer fits, and prints where
/// everything is.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let credentials = ClusterCredentials::ensure(&args.dir, &args.sans)?;
    let ClusterCredentials {
        pki,
        serving,
        admin,
        ..
    } = &credentials;
    let (sa_key, sa_pub) = pki.service_account_keys();
    println!("ca certificate:           {}", pki.ca_cert().display());
    println!("ca public key hash:       {}", pki.ca().cert_hash());
    println!(
        "serving certificate:      {} (key {})",
        serving.cert.display(),
        serving.key.display()
    );
    println!(
        "admin client certificate: {} (key {})",
        admin.cert.display(),
        admin.key.display()
    );
    println!(
        "service-account keys:     {} (public {})",
        sa_key.display(),
        sa_pub.display()
    );
    let mut nodes = Vec::new();
    for node in &args.nodes {
        let (node, addresses) = match node.split_once('@') {
            Some((name, addresses)) => (
                name.to_owned(),
                addresses.split(',').map(str::to_owned).collect(),
            ),
            None => (node.clone(), Vec::new()),
        };
        let node = &node;
        if !addresses.is_empty() {
            let serving = credentials.node_serving(node, &addresses)?;
            println!(
                "node {node} endpoint: {} (key {})",
                serving.cert.display(),
                serving.key.display()
            );
        }
        let credential = credentials.node(node)?;
        println!(
            "node {node}: {} (key {})",
            credential.cert.display(),
            credential.key.display()
        );
        nodes.push((node.clone(), credential));
    }
    if let Some(server) = &args.server {
        let mut written = vec![
            credentials.write_kubeconfig("admin", server, &credentials.admin)?,
            credentials.write_kubeconfig("scheduler", server, &credentials.scheduler)?,
            credentials.write_kubeconfig("controllers", server, &credentials.controllers)?,
            credentials.write_kubeconfig("proxy", server, &credentials.proxy)?,
        ];
        for (node, credential) in &nodes {
            let file = format!("node-{}", node.replace('.', "-"));
            written.push(credentials.write_kubeconfig(&file, server, credential)?);
        }
        for path in written {
            println!("kubeconfig:               {}", path.display());
        }
    }
    Ok(())
}
