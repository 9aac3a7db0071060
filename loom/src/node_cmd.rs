//! `loom nodelet`, `loom image` and the hidden `loom shim`.

use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// `loom nodelet`.
#[derive(Debug, clap::Args)]
pub struct NodeletArgs {
    /// How to reach the API server, and as whom.
    #[command(flatten)]
    pub api: ApiArgs,
    /// How the node joins the cluster (a bootstrap token).
    #[command(flatten)]
    pub join: crate::join::JoinArgs,
    /// The node's name (default: the host name).
    #[arg(long, env = "LOOM_NODE_NAME")]
    pub name: Option<String>,
    /// Where task runs, logs, images and container state are kept.
    #[arg(long, env = "LOOM_STATE_DIR", default_value = "/var/lib/loom/nodelet")]
    pub state_dir: PathBuf,
    /// Labels added to the node: k=v,k2=v2.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Taints the node registers with: key=value:Effect,...
    #[arg(long, default_value = "")]
    pub taints: String,
    /// Cgroup parent: tasks go to /PARENT/NODE/ID in each hierarchy.
    #[arg(long, default_value = "loom")]
    pub cgroup_parent: String,
    /// Address of the log endpoint the apiserver proxies to.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// URL the apiserver reaches the log endpoint at (default: from --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Serve the endpoint over HTTPS with this PEM certificate (`node-NAME-serving.crt`
    /// of `loom certs --node NAME@IP`); with --tls-private-key-file and --client-ca-file.
    /// A node whose credential is its own (`system:node:NAME`: joined with
    /// --token, its node.conf, or `--kubeconfig node-NAME.conf` of `loom
    /// certs --node NAME`) needs none: it asks the cluster for its serving
    /// certificate and renews it.
    #[arg(long, env = "LOOM_NODELET_TLS_CERT_FILE", requires_all = ["tls_private_key_file", "client_ca_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// INSECURE: serve the endpoint (every task's log) over plain HTTP, with
    /// no TLS and no check of who calls, to anyone who reaches its port.
    /// Refused unless --listen is a loopback address; for tests only.
    #[arg(long, conflicts_with = "tls_cert_file")]
    pub insecure_endpoint: bool,
    /// The serving certificate's PEM private key.
    #[arg(
        long,
        env = "LOOM_NODELET_TLS_PRIVATE_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_private_key_file: Option<PathBuf>,
    /// The cluster's CA, which callers' client certificates must chain to.
    #[arg(long, env = "LOOM_NODELET_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,
    /// CPU offered to tasks (default: every core).
    #[arg(long)]
    pub cpu: Option<api_types::Quantity>,
    /// Memory offered to tasks (default: all of it).
    #[arg(long)]
    pub memory: Option<api_types::Quantity>,
    /// Tasks at once.
    #[arg(long, default_value_t = 110)]
    pub max_tasks: u32,
    /// OCI image layouts (directories or tars) to import at start.
    #[arg(long = "import-image")]
    pub import_images: Vec<PathBuf>,
    /// Stop every task when the nodelet exits (by default they keep running and
    /// the next nodelet adopts them).
    #[arg(long)]
    pub stop_tasks_on_exit: bool,
    /// Host directories tasks may mount, comma-separated (none by default): each
    /// mount's source must resolve under one of them.
    #[arg(long, value_delimiter = ',')]
    pub allow_host_paths: Vec<PathBuf>,
    /// Let tasks use the unconfined `raw` driver (a root process on this machine;
    /// off by default).
    #[arg(long)]
    pub allow_raw_exec: bool,
    /// The most an image layer may unpack to (its entries' sizes summed); a
    /// larger layer is refused.
    #[arg(long, default_value = "8Gi")]
    pub max_layer_bytes: api_types::Quantity,
    /// The unprivileged uid (and gid) the confined `exec` driver runs tasks as;
    /// it owns their work directories and writable mounts.
    #[arg(long, default_value_t = 65534)]
    pub exec_uid: u32,
    /// Keep container tasks off the task network (only `lo` in their
    /// namespace) even when the node has a task subnet (`spec.taskCIDR`).
    #[arg(long)]
    pub no_task_network: bool,
    /// The task network's bridge on this machine.
    #[arg(long, default_value = nodelet::network::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// This node's address other nodes route task traffic to, reported as its
    /// InternalIP (default: the --advertise or --listen address when it is a
    /// routable IPv4 address).
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Point container tasks' resolver at this node's `loom proxy` (on the
    /// task bridge's address), which answers `NAME.NAMESPACE.svc` and
    /// forwards other names; run `loom proxy` on the node with it.
    #[arg(long)]
    pub cluster_dns: bool,
}

/// How a component reaches the API server and who it is there.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ApiArgs {
    /// A kubeconfig naming the API server, its CA and this component's
    /// credential (e.g. `scheduler.conf` of `loom certs --server URL`).
    #[arg(long, env = "LOOM_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, or several comma-separated to fail over between;
    /// overrides the kubeconfig's (default: the kubeconfig's, else
    /// `$LOOMCONFIG`, `$KUBECONFIG`, `~/.loom/config` or the in-cluster
    /// service account).
    #[arg(long, env = "LOOM_SERVER")]
    pub server: Option<String>,
}

impl ApiArgs {
    /// The client configuration these flags name.
    pub fn config(&self) -> anyhow::Result<client::Config> {
        let mut config = match &self.kubeconfig {
            Some(path) => client::Config::from_kubeconfig(path, None)?,
            None => client::Config::infer()?,
        };
        if let Some(server) = &self.server {
            config.server = server.trim().trim_end_matches('/').to_owned();
        }
        Ok(config)
    }

    /// A client of the API server.
    pub fn client(&self) -> anyhow::Result<client::Client> {
        Ok(client::Client::new(self.config()?)?)
    }
}

/// A size flag in bytes: positive and whole.
fn bytes_flag(flag: &str, value: &api_types::Quantity) -> anyhow::Result<u64> {
    u64::try_from(value.value())
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| anyhow::anyhow!("{flag} {value}: must be a positive number of bytes"))
}

impl NodeletArgs {
    /// The nodelet's configuration from the flags.
    pub fn config(&self) -> anyhow::Result<nodelet::Config> {
        let name = match &self.name {
            Some(name) => name.clone(),
            None => super::hostname(),
        };
        let problems = api_types::names::is_dns1123_subdomain(&name);
        anyhow::ensure!(
            problems.is_empty(),
            "--name {name:?} is not a valid node name: {}",
            problems.join("; ")
        );
        let mut config = nodelet::Config::new(&name, self.state_dir.clone());
        config.labels =
            nodelet::parse_labels(&self.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
        config.taints =
            nodelet::parse_taints(&self.taints).map_err(|e| anyhow::anyhow!("--taints: {e}"))?;
        config.cgroup_parent = self.cgroup_parent.trim_matches('/').to_owned();
        config.listen = self.listen;
        config.advertise = self.advertise.clone();
        anyhow::ensure!(
            !self.insecure_endpoint || self.listen.ip().is_loopback(),
            "--insecure-endpoint serves every task's log to anyone who reaches the port: \
             it is refused on --listen {}, which is not a loopback address",
            self.listen
        );
        if let (Some(cert), Some(key), Some(ca)) = (
            &self.tls_cert_file,
            &self.tls_private_key_file,
            &self.client_ca_file,
        ) {
            config.endpoint_tls = Some(nodelet::EndpointTls {
                server: loom_listener::tls::server_config(cert, key, Some(ca))?,
                callers: api_server_callers(),
            });
        }
        config.cpu = self.cpu;
        config.memory = self.memory;
        config.max_tasks = self.max_tasks;
        config.stop_tasks_on_exit = self.stop_tasks_on_exit;
        for dir in &self.allow_host_paths {
            anyhow::ensure!(
                dir.is_absolute(),
                "--allow-host-paths {}: must be an absolute path",
                dir.display()
            );
        }
        config.allow_host_paths = self.allow_host_paths.clone();
        config.allow_raw_exec = self.allow_raw_exec;
        config.max_layer_bytes = bytes_flag("--max-layer-bytes", &self.max_layer_bytes)?;
        anyhow::ensure!(
            self.exec_uid != 0,
            "--exec-uid 0: the exec driver's uid must not be root (the raw driver runs as root, with --allow-raw-exec)"
        );
        config.exec_uid = self.exec_uid;
        config.task_network = !self.no_task_network;
        nodelet::network::check_bridge_name(&self.bridge)
            .map_err(|e| anyhow::anyhow!("--bridge {:?}: {e}", self.bridge))?;
        config.bridge = self.bridge.clone();
        if let Some(ip) = self.node_ip {
            anyhow::ensure!(
                !(ip.is_loopback()
                    || ip.is_unspecified()
                    || ip.is_multicast()
                    || ip.is_broadcast()),
                "--node-ip {ip}: must be an address other machines can route to"
            );
        }
        config.node_ip = self.node_ip;
        config.cluster_dns = self.cluster_dns;
        config.shim = shim_command()?;
        Ok(config)
    }
}

/// Who a nodelet's endpoint lets in: the API server, which authorized the
/// request it proxies.
pub fn api_server_callers() -> nodelet::server::Callers {
    nodelet::server::Callers {
        users: vec![nodelet::server::API_SERVER_USER.to_owned()],
    }
}

/// The shim each run starts: `loom-shim` beside this binary when it was built
/// (`cargo build -p loom-bin -p loom-nodelet`), else this binary's hidden `shim` subcommand.
/// The small binary starts in about a third of the CPU time: it maps no TLS
/// libraries and far less code, and a shim starts for every run of every task.
pub fn shim_command() -> anyhow::Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().context("cannot find the loom binary for the shim")?;
    let small = exe.with_file_name("loom-shim");
    if small.is_file() {
        return Ok(vec![small.into_os_string()]);
    }
    tracing::debug!(
        missing = %small.display(),
        "loom-shim not built: runs use `loom shim`"
    );
    Ok(vec![exe.into_os_string(), "shim".into()])
}

/// Runs `loom nodelet` until Ctrl-C or SIGTERM.
pub async fn nodelet(args: NodeletArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    anyhow::ensure!(
        nix_is_root(),
        "the nodelet must run as root (it creates containers, cgroups and mounts)"
    );
    let images = nodelet::image::ImageStore::new(&config.state_dir.join("images"))
        .with_max_layer_bytes(config.max_layer_bytes);
    for path in &args.import_images {
        let names = images
            .import(path, None)
            .with_context(|| format!("cannot import {}", path.display()))?;
        println!("imported {}", names.join(", "));
    }
    let mut config = config;
    let shutdown = CancellationToken::new();
    let credentials =
        crate::join::credentials(&args.api, &args.join, &config.state_dir, &config.name).await?;
    let mut renewer = None;
    if args.insecure_endpoint {
        tracing::warn!(
            listen = %config.listen,
            "--insecure-endpoint: the node's endpoint serves every task's log over plain HTTP to anyone on this machine"
        );
    } else if config.endpoint_tls.is_none() {
        // A node whose credential is its own (joined, or given by
        // --kubeconfig) serves HTTPS with its own serving certificate,
        // renewed while it runs; no node serves plain HTTP unless told to.
        let identity = match &credentials {
            Some(joined) => joined.clone(),
            None => crate::join::node_identity(&args.api, &config.name)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "node {name}'s endpoint needs a serving certificate, and its credential is not \
                     the node's own (system:node:{name}), so it cannot ask for one: run it with \
                     --kubeconfig node-{name}.conf of `loom certs --node {name}`, or join with \
                     --token, or give --tls-cert-file (--insecure-endpoint serves plain HTTP on a \
                     loopback --listen, for tests only)",
                    name = config.name
                )
            })?,
        };
        let serving = crate::join::serving(&identity, &config.state_dir, &config.name).await?;
        let (tls, cert) = crate::join::endpoint_tls(&identity, &serving)?;
        config.endpoint_tls = Some(tls);
        renewer = Some(tokio::spawn(crate::join::renew_serving_forever(
            serving,
            cert,
            identity,
            config.state_dir.clone(),
            config.name.clone(),
            shutdown.clone(),
        )));
    }
    let mut work = match credentials {
        // Its own certificate, renewed as it ages.
        Some(credentials) => tokio::spawn(crate::join::run_renewing(
            credentials,
            config,
            shutdown.clone(),
        )),
        None => tokio::spawn(nodelet::run(args.api.client()?, config, shutdown.clone())),
    };
    tokio::select! {
        result = super::shutdown_signal() => result?,
        // It stopped on its own: a configuration or registration error.
        finished = &mut work => {
            shutdown.cancel();
            return finished.context("the nodelet panicked")?;
        }
    }
    shutdown.cancel();
    if let Some(renewer) = renewer {
        let _ = renewer.await;
    }
    work.await.context("the nodelet panicked")?
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `loom image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// Image subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) into a node's image store.
    Import {
        /// The layout.
        path: PathBuf,
        /// The name to store it under (default: its ref.name annotation).
        #[arg(long)]
        name: Option<String>,
        /// The nodelet's state directory.
        #[arg(long, env = "LOOM_STATE_DIR", default_value = "/var/lib/loom/nodelet")]
        state_dir: PathBuf,
        /// The most a layer may unpack to.
        #[arg(long, default_value = "8Gi")]
        max_layer_bytes: api_types::Quantity,
    },
    /// Pull an image from a registry into a node's image store.
    Pull {
        /// The image: `host[:port]/repository[:tag|@digest]`.
        reference: String,
        /// The nodelet's state directory.
        #[arg(long, env = "LOOM_STATE_DIR", default_value = "/var/lib/loom/nodelet")]
        state_dir: PathBuf,
        /// Reach the registry over plain HTTP (loopback registries always are).
        #[arg(long)]
        insecure: bool,
        /// The registry user (token and basic auth); anonymous without it.
        #[arg(long, env = "LOOM_REGISTRY_USERNAME")]
        username: Option<String>,
        /// The registry user's password or token.
        #[arg(long, env = "LOOM_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// The most a layer may unpack to.
        #[arg(long, default_value = "8Gi")]
        max_layer_bytes: api_types::Quantity,
    },
    /// List the images of a node's image store.
    List {
        /// The nodelet's state directory.
        #[arg(long, env = "LOOM_STATE_DIR", default_value = "/var/lib/loom/nodelet")]
        state_dir: PathBuf,
    },
}

/// Runs `loom image …`.
pub fn image(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Import {
            path,
            name,
            state_dir,
            max_layer_bytes,
        } => {
            let store = nodelet::image::ImageStore::new(&state_dir.join("images"))
                .with_max_layer_bytes(bytes_flag("--max-layer-bytes", &max_layer_bytes)?);
            let names = store
                .import(&path, name.as_deref())
                .with_context(|| format!("cannot import {}", path.display()))?;
            for name in names {
                println!("imported {name}");
            }
        }
        ImageCommand::Pull {
            reference,
            state_dir,
            insecure,
            username,
            password,
            max_layer_bytes,
        } => {
            let store = nodelet::image::ImageStore::new(&state_dir.join("images"))
                .with_max_layer_bytes(bytes_flag("--max-layer-bytes", &max_layer_bytes)?);
            let auth = match username {
                Some(user) => {
                    nodelet::pull::RegistryAuth::Basic(user, password.unwrap_or_default())
                }
                None => nodelet::pull::RegistryAuth::Anonymous,
            };
            let plain: Vec<String> = if insecure {
                reference
                    .split('/')
                    .next()
                    .map(str::to_owned)
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            };
            // The other image commands run without a runtime; a pull needs one.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let started = std::time::Instant::now();
            let pulled =
                runtime.block_on(nodelet::pull::pull(&store, &reference, &auth, &plain))?;
            println!(
                "pulled {} ({}): {} blobs fetched ({} bytes), {} cached, in {:.2}s",
                nodelet::image::normalize(&reference),
                pulled.image.config.digest,
                pulled.fetched,
                pulled.bytes,
                pulled.cached,
                started.elapsed().as_secs_f64()
            );
        }
        ImageCommand::List { state_dir } => {
            let store = nodelet::image::ImageStore::new(&state_dir.join("images"));
            for (name, digest) in store.list() {
                println!("{name}\t{digest}");
            }
        }
    }
    Ok(())
}
