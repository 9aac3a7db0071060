//! `loom proxy`: the node proxy, its own process beside the nodelet (so a
//! nodelet restart drops no proxied connection): Services' virtual
//! addresses and the node's resolver.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::node_cmd::ApiArgs;

/// `loom proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// How to reach the API server, and as whom (e.g. `proxy.conf` of
    /// `loom certs --server URL`).
    #[command(flatten)]
    pub api: ApiArgs,
    /// The node this proxy serves (default: this machine's name).
    #[arg(long)]
    pub node: Option<String>,
    /// The cluster's service range (the API servers' --service-cidr):
    /// connections to it are proxied.
    #[arg(long, env = "LOOM_SERVICE_CIDR", default_value = api_types::kinds::service::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: String,
    /// The port connections to the service range are redirected to.
    #[arg(long, default_value_t = 15001)]
    pub port: u16,
    /// The task bridges whose traffic is proxied, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = nodelet::network::DEFAULT_BRIDGE)]
    pub bridges: Vec<String>,
    /// The nftables table of the redirect.
    #[arg(long, default_value = proxy::redirect::DEFAULT_TABLE)]
    pub nft_table: String,
    /// Do not serve the cluster's names to tasks.
    #[arg(long)]
    pub no_dns: bool,
    /// Resolvers other names are forwarded to, comma-separated `IP:PORT`
    /// (default: the node's /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    pub upstream_dns: Vec<SocketAddr>,
}

impl ProxyArgs {
    /// The proxy's configuration from the flags.
    pub fn config(&self) -> anyhow::Result<proxy::control::Config> {
        let node = self.node.clone().unwrap_or_else(super::hostname);
        let service_cidr = api_types::ServiceRange::parse(&self.service_cidr)
            .map_err(|e| anyhow::anyhow!("--service-cidr {e}"))?
            .net();
        proxy::redirect::check_name(&self.nft_table)
            .map_err(|e| anyhow::anyhow!("--nft-table {e}"))?;
        for bridge in &self.bridges {
            nodelet::network::check_bridge_name(bridge)
                .map_err(|e| anyhow::anyhow!("--bridges {bridge:?}: {e}"))?;
        }
        let mut config = proxy::control::Config::new(&node, service_cidr);
        config.listen_port = self.port;
        config.bridges = self.bridges.clone();
        config.table = self.nft_table.clone();
        config.dns = !self.no_dns;
        config.upstream_dns = self.upstream_dns.clone();
        Ok(config)
    }
}

/// Runs `loom proxy` until SIGTERM or Ctrl-C.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let client = args.api.client()?;
    let shutdown = CancellationToken::new();
    let mut proxy = tokio::spawn(proxy::control::run(client, config, shutdown.clone()));
    tokio::select! {
        result = super::shutdown_signal() => {
            result?;
            shutdown.cancel();
            proxy.await.context("the proxy panicked")?
        }
        // It ends by itself only when it cannot start (its redirect, its port).
        finished = &mut proxy => finished.context("the proxy panicked")?,
    }
}
