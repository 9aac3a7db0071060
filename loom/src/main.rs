//! The all-in-one `loom` binary.
//!
//! `loom up` serves the API over the embedded store in its data directory until
//! Ctrl-C or SIGTERM; the controllers, scheduler and nodelet join it as they are
//! built. `loom apiserver` runs the API server alone, over SQLite or etcd.

mod certs_cmd;
mod join;
mod node_cmd;
mod proxy_cmd;
mod snapshot_cmd;
mod token_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use api_types::well_known::{LEASE_CONTROLLERS, LEASE_SCHEDULER, SYSTEM_NAMESPACE};
use apiserver::StoreUrl;
use apiserver::store::{EmbeddedOptions, EmbeddedStore, Store};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// The API server allocates a small JSON tree per request; glibc's malloc took a
// fifth of its CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "loom",
    version,
    about = "Loom: a declarative control plane for containers and batch jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single-node Loom on the embedded store.
    Up(UpArgs),
    /// Run the API server.
    Apiserver(Box<ApiserverArgs>),
    /// Run the scheduler against an API server.
    Scheduler(SchedulerArgs),
    /// Run the controllers (Job, Service, garbage collector, node lifecycle, node IPAM) against an API server.
    ///
    /// With --cluster-cidr, every Node without a task subnet (`spec.taskCIDR`) is
    /// given the lowest free subnet of --node-cidr-mask-size in that range, once
    /// (it never changes after); the node's container tasks get their
    /// addresses from it.
    Controllers(ControllersArgs),
    /// Run a node agent: registers the node and runs the tasks bound to it.
    Nodelet(Box<node_cmd::NodeletArgs>),
    /// Run the node proxy beside a nodelet: Services' virtual addresses
    /// (`spec.clusterIP`) routed to their ready endpoints, and the cluster's
    /// names (`NAME.NAMESPACE.svc`) answered to the node's tasks.
    Proxy(Box<proxy_cmd::ProxyArgs>),
    /// Manage a node's image store.
    Image(node_cmd::ImageArgs),
    /// Make the cluster's certificates in a directory, once: the CA, the API
    /// server's serving certificate, an administrator's client certificate and
    /// the service-account signing key.
    Certs(certs_cmd::CertsArgs),
    /// Bootstrap tokens nodes join with: create (printing the join
    /// command), list, delete.
    Token(token_cmd::TokenArgs),
    /// Back up and restore the cluster's store: save a consistent snapshot
    /// of a running cluster, check one, make a data dir from one.
    Snapshot(snapshot_cmd::SnapshotArgs),
    /// The per-run shim the nodelet starts (internal).
    #[command(hide = true)]
    Shim {
        /// The run directory.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ControllersArgs {
    #[command(flatten)]
    api: node_cmd::ApiArgs,
    /// Seconds without a Lease renewal before a node goes NotReady.
    #[arg(long, env = "LOOM_NODE_GRACE_SECONDS", default_value_t = 40)]
    node_grace_seconds: u64,
    /// Further seconds before a NotReady node's tasks are marked Lost.
    #[arg(long, env = "LOOM_LOST_GRACE_SECONDS", default_value_t = 60)]
    lost_grace_seconds: u64,
    #[command(flatten)]
    task_cidrs: TaskCidrArgs,
}

/// Where nodes' task subnets come from.
#[derive(Debug, clap::Args)]
struct TaskCidrArgs {
    /// The IPv4 range nodes' task subnets (`spec.taskCIDR`) are given from, e.g.
    /// 10.77.0.0/16 (unset or empty: no node is given one, and tasks have no
    /// network but `lo`).
    #[arg(long, env = "LOOM_CLUSTER_CIDR")]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's subnet in --cluster-cidr (8 to 30).
    #[arg(long, env = "LOOM_NODE_CIDR_MASK_SIZE", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
}

impl TaskCidrArgs {
    fn cluster_cidr(&self) -> anyhow::Result<Option<controllers::node_ipam::ClusterCidr>> {
        match self.cluster_cidr.as_deref() {
            None | Some("") => Ok(None),
            Some(cidr) => Ok(Some(
                controllers::node_ipam::ClusterCidr::new(cidr, self.node_cidr_mask_size)
                    .context("bad --cluster-cidr or --node-cidr-mask-size")?,
            )),
        }
    }
}

#[derive(Debug, clap::Args)]
struct SchedulerArgs {
    #[command(flatten)]
    api: node_cmd::ApiArgs,
    /// Also claim a node (a conditional write on it) before each bind, so that
    /// schedulers running at once never over-commit it. Leader election already
    /// runs one scheduler at a time; claims cost a write per task.
    #[arg(long)]
    claim_nodes: bool,
}

#[derive(Debug, clap::Args)]
struct ApiserverArgs {
    /// Address to serve the API on.
    #[arg(long, env = "LOOM_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// The store: sqlite:PATH or etcd://HOST:PORT[,HOST:PORT].
    #[arg(
        long,
        env = "LOOM_STORE",
        default_value = "sqlite:/var/lib/loom/loom.db"
    )]
    store: StoreUrl,
    /// Key prefix in etcd.
    #[arg(long, env = "LOOM_STORE_PREFIX", default_value = "/loom/")]
    store_prefix: String,
    /// Reach etcd over TLS: the PEM CA its serving certificate chains to;
    /// with --etcd-certfile and --etcd-keyfile.
    #[arg(long, env = "LOOM_ETCD_CAFILE", requires_all = ["etcd_certfile", "etcd_keyfile"])]
    etcd_cafile: Option<PathBuf>,
    /// Call nodelets serving TLS with this PEM client certificate (user
    /// `system:loom-apiserver`: `apiserver-nodelet-client.crt` of `loom
    /// certs`); with --nodelet-client-key and --nodelet-certificate-authority.
    #[arg(long, env = "LOOM_NODELET_CLIENT_CERTIFICATE", requires_all = ["nodelet_client_key", "nodelet_certificate_authority"])]
    nodelet_client_certificate: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(
        long,
        env = "LOOM_NODELET_CLIENT_KEY",
        requires = "nodelet_client_certificate"
    )]
    nodelet_client_key: Option<PathBuf>,
    /// The PEM CA nodelets' serving certificates chain to.
    #[arg(
        long,
        env = "LOOM_NODELET_CERTIFICATE_AUTHORITY",
        requires = "nodelet_client_certificate"
    )]
    nodelet_certificate_authority: Option<PathBuf>,
    /// The PEM client certificate the API server presents to etcd.
    #[arg(long, env = "LOOM_ETCD_CERTFILE", requires = "etcd_cafile")]
    etcd_certfile: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long, env = "LOOM_ETCD_KEYFILE", requires = "etcd_cafile")]
    etcd_keyfile: Option<PathBuf>,
    /// Seconds between compactions of etcd's history, shared with the other API
    /// servers on the same etcd; 0 leaves compaction to someone else.
    #[arg(
        long,
        env = "LOOM_ETCD_COMPACTION_INTERVAL_SECONDS",
        default_value_t = 300
    )]
    etcd_compaction_interval_seconds: u64,
    /// Seconds an Event is kept after it was last seen (Kubernetes'
    /// --event-ttl, 1 h); 0 keeps Events for ever.
    #[arg(long, env = "LOOM_EVENT_TTL_SECONDS", default_value_t = 3600)]
    event_ttl_seconds: u64,
    /// The IPv4 range Services' virtual addresses (`spec.clusterIP`) come from,
    /// /12 to /29; its first address is kept for the `kubernetes` Service.
    /// Every API server on one store must be given the same range.
    #[arg(long, env = "LOOM_SERVICE_CIDR", default_value = api_types::kinds::service::DEFAULT_SERVICE_CIDR)]
    service_cidr: api_types::ServiceRange,
    /// The address tasks reach this API server at (with --listen's port):
    /// listed in the Endpoints of the `kubernetes` Service in `default`, which
    /// is made if missing. Not a loopback or unspecified address.
    #[arg(long, env = "LOOM_ADVERTISE_ADDRESS", value_parser = advertise_address)]
    advertise_address: Option<std::net::IpAddr>,
    /// The memory limit given to a task that asks for none (0 or empty: none).
    #[arg(long, env = "LOOM_DEFAULT_TASK_MEMORY", default_value = "512Mi", value_parser = task_memory)]
    default_task_memory: TaskMemory,
    #[command(flatten)]
    limits: ApiLimitArgs,
    #[command(flatten)]
    audit: AuditArgs,
    /// Serve HTTPS with this PEM certificate (chain, leaf first), e.g. the
    /// `apiserver.crt` of `loom certs`; with --tls-private-key-file.
    #[arg(long, env = "LOOM_TLS_CERT_FILE", requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's PEM private key.
    #[arg(long, env = "LOOM_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Verify client certificates against this PEM CA (`ca.crt` of `loom
    /// certs`); clients without one are still served.
    #[arg(long, env = "LOOM_CLIENT_CA_FILE", requires = "tls_cert_file")]
    client_ca_file: Option<PathBuf>,
    /// Bearer tokens of users, in Kubernetes' CSV format: one
    /// `token,user,uid,"group1,group2"` a line.
    #[arg(long, env = "LOOM_TOKEN_AUTH_FILE")]
    token_auth_file: Option<PathBuf>,
    /// PEM public key verifying service-account tokens (`sa.pub` of `loom
    /// certs`), the same on every API server of the cluster; repeat it (or
    /// separate with commas) while a key is being rotated out.
    #[arg(long, env = "LOOM_SERVICE_ACCOUNT_KEY_FILE", value_delimiter = ',')]
    service_account_key_file: Vec<PathBuf>,
    /// PEM (PKCS #8) private key signing the tokens TokenRequest mints
    /// (`sa.key` of `loom certs`); a server without it verifies tokens only.
    #[arg(
        long,
        env = "LOOM_SERVICE_ACCOUNT_SIGNING_KEY_FILE",
        requires = "service_account_key_file"
    )]
    service_account_signing_key_file: Option<PathBuf>,
    /// The issuer (`iss`) of service-account tokens, minted and accepted.
    #[arg(
        long,
        env = "LOOM_SERVICE_ACCOUNT_ISSUER",
        default_value = apiserver::authn::service_account::DEFAULT_ISSUER
    )]
    service_account_issuer: String,
    /// Sign nodes' (and approved) certificate requests with this PEM CA
    /// certificate (`ca.crt` of `loom certs`); with --cluster-signing-key-file.
    #[arg(
        long,
        env = "LOOM_CLUSTER_SIGNING_CERT_FILE",
        requires = "cluster_signing_key_file"
    )]
    cluster_signing_cert_file: Option<PathBuf>,
    /// The signing CA's PEM private key (`ca.key` of `loom certs`).
    #[arg(
        long,
        env = "LOOM_CLUSTER_SIGNING_KEY_FILE",
        requires = "cluster_signing_cert_file"
    )]
    cluster_signing_key_file: Option<PathBuf>,
    /// The longest certificate signed, in hours (nodes' last this long).
    #[arg(long, env = "LOOM_CLUSTER_SIGNING_DURATION_HOURS", default_value_t = 720, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_signing_duration_hours: u64,
}

/// The CA `loom apiserver` signs certificate requests with, if given.
fn cluster_signing(
    args: &ApiserverArgs,
) -> anyhow::Result<Option<apiserver::certificates::Signing>> {
    let (Some(cert), Some(key)) = (
        &args.cluster_signing_cert_file,
        &args.cluster_signing_key_file,
    ) else {
        return Ok(None);
    };
    let cert_pem = pki::read_file(cert)?;
    let key_pem = pki::read_file(key)?;
    let ca = pki::Ca::from_pem(&cert_pem, &key_pem).map_err(|why| {
        anyhow::anyhow!(
            "--cluster-signing-cert-file {} / --cluster-signing-key-file {}: {why}",
            cert.display(),
            key.display()
        )
    })?;
    let mut signing = apiserver::certificates::Signing::new(ca);
    signing.duration =
        std::time::Duration::from_secs(args.cluster_signing_duration_hours.saturating_mul(3600));
    Ok(Some(signing))
}

/// How `loom apiserver` authenticates: client certificates of
/// --client-ca-file, --token-auth-file and service-account tokens; never
/// anonymously (only /healthz, /livez, /readyz and /version are open).
fn authentication(args: &ApiserverArgs) -> anyhow::Result<apiserver::authn::Authentication> {
    use apiserver::authn::{Authentication, ServiceAccountTokens, StaticTokens};
    let tokens = match &args.token_auth_file {
        Some(path) => Some(Arc::new(
            StaticTokens::from_file(path).context("bad --token-auth-file")?,
        )),
        None => None,
    };
    let service_accounts = if args.service_account_key_file.is_empty() {
        None
    } else {
        Some(Arc::new(
            ServiceAccountTokens::from_files(
                &args.service_account_issuer,
                &args.service_account_key_file,
                args.service_account_signing_key_file.as_deref(),
            )
            .context("bad service-account key")?,
        ))
    };
    Ok(Authentication {
        anonymous: false,
        x509: args.client_ca_file.is_some(),
        tokens,
        service_accounts,
    })
}

/// `--default-task-memory`: a quantity, or none for `0` or an empty value.
#[derive(Clone, Debug)]
struct TaskMemory(Option<api_types::Quantity>);

fn task_memory(value: &str) -> Result<TaskMemory, String> {
    if value.trim().is_empty() {
        return Ok(TaskMemory(None));
    }
    let quantity = api_types::Quantity::parse(value.trim()).map_err(|e| e.to_string())?;
    if quantity.is_negative() {
        return Err("must not be negative".to_owned());
    }
    Ok(TaskMemory(Some(quantity).filter(|q| !q.is_zero())))
}

/// The API server's limits on what one client may take (defaults as Kubernetes').
#[derive(Debug, clap::Args)]
struct ApiLimitArgs {
    /// A list without `limit` returning more objects than this is refused (413).
    #[arg(long, env = "LOOM_MAX_LIST_OBJECTS", default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_list_objects: u64,
    /// Concurrent watches of one user (429 beyond; system:masters exempt).
    #[arg(long, alias = "max-watches-per-source", env = "LOOM_MAX_WATCHES_PER_USER", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_watches_per_user: u64,
    /// Concurrent watches in all (429 beyond).
    #[arg(long, env = "LOOM_MAX_WATCHES", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_watches: u64,
    /// Mutating requests in flight in all (429 beyond; system:masters exempt).
    #[arg(long, env = "LOOM_MAX_MUTATING_REQUESTS_INFLIGHT", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    max_mutating_requests_inflight: u64,
    /// Mutating requests in flight of one user (429 beyond; system:masters exempt).
    #[arg(long, env = "LOOM_MAX_MUTATING_REQUESTS_INFLIGHT_PER_USER", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    max_mutating_requests_inflight_per_user: u64,
    /// Other requests in flight in all, watches aside (429 beyond; system:masters exempt).
    #[arg(long, env = "LOOM_MAX_REQUESTS_INFLIGHT", default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..))]
    max_requests_inflight: u64,
    /// Seconds: a watch without timeoutSeconds ends after between this and twice this.
    #[arg(long, env = "LOOM_MIN_REQUEST_TIMEOUT", default_value_t = 1_800, value_parser = clap::value_parser!(u64).range(1..))]
    min_request_timeout: u64,
    /// Operations one JSON Patch may have (413 beyond).
    #[arg(long, env = "LOOM_MAX_JSON_PATCH_OPERATIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_json_patch_operations: u64,
    /// Seconds a client has to send a request's headers (1 to 30).
    #[arg(long, env = "LOOM_HEADER_READ_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=30))]
    header_read_timeout: u64,
    /// Seconds a client has to send a request's whole body (408 after).
    #[arg(long, env = "LOOM_BODY_READ_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout: u64,
    /// Open connections; more wait in the listen backlog.
    #[arg(long, env = "LOOM_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
}

/// The API server's audit log (Kubernetes' flags of the same names).
#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// Write an audit log here, one audit.k8s.io/v1 Event a line (`-`:
    /// standard output). Without it nothing is audited.
    #[arg(long, env = "LOOM_AUDIT_LOG_PATH")]
    audit_log_path: Option<PathBuf>,
    /// The audit.k8s.io/v1 Policy saying what is logged at which level;
    /// without it, writes at Metadata and no reads (as `loom up`).
    #[arg(long, env = "LOOM_AUDIT_POLICY_FILE", requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Megabytes the audit log may reach before it is rotated (0: never).
    #[arg(long, env = "LOOM_AUDIT_LOG_MAXSIZE", default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept, PATH.1 the newest (0: all).
    #[arg(long, env = "LOOM_AUDIT_LOG_MAXBACKUP", default_value_t = 10)]
    audit_log_maxbackup: u64,
}

/// The audit configuration the flags ask for, the policy file read and checked.
fn audit_config(args: &AuditArgs) -> anyhow::Result<Option<apiserver::audit::Config>> {
    let Some(path) = &args.audit_log_path else {
        return Ok(None);
    };
    let policy = match &args.audit_policy_file {
        Some(file) => apiserver::audit::Policy::from_file(file)?,
        None => apiserver::audit::Policy::default_for_up(),
    };
    Ok(Some(apiserver::audit::Config {
        log: apiserver::audit::LogFile {
            path: path.clone(),
            max_size_bytes: args.audit_log_maxsize.saturating_mul(1024 * 1024),
            max_backups: usize::try_from(args.audit_log_maxbackup).unwrap_or(usize::MAX),
        },
        policy,
    }))
}

/// The API server's configuration with a cluster's task defaults and limits.
fn api_config(memory: &TaskMemory, limits: &ApiLimitArgs) -> apiserver::Config {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    apiserver::Config {
        default_task_memory: memory.0,
        max_list_objects: count(limits.max_list_objects),
        max_watches_per_user: count(limits.max_watches_per_user),
        max_mutating_requests_inflight: count(limits.max_mutating_requests_inflight),
        max_mutating_requests_inflight_per_user: count(
            limits.max_mutating_requests_inflight_per_user,
        ),
        max_requests_inflight: count(limits.max_requests_inflight),
        max_watches: count(limits.max_watches),
        min_watch_timeout: std::time::Duration::from_secs(limits.min_request_timeout),
        max_patch_operations: count(limits.max_json_patch_operations),
        header_read_timeout: std::time::Duration::from_secs(limits.header_read_timeout),
        body_read_timeout: std::time::Duration::from_secs(limits.body_read_timeout),
        max_connections: count(limits.max_connections),
        ..apiserver::Config::default()
    }
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Where Loom keeps its state.
    #[arg(long, env = "LOOM_DATA_DIR", default_value = "/var/lib/loom")]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, env = "LOOM_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Report the store's health and exit instead of running.
    #[arg(long)]
    check: bool,
    /// The node's name (default: the host name).
    #[arg(long, env = "LOOM_NODE_NAME")]
    name: Option<String>,
    /// Cgroup parent of the node's tasks.
    #[arg(long, default_value = "loom")]
    cgroup_parent: String,
    /// Run only the API server (no controllers, scheduler or nodelet).
    #[arg(long)]
    api_only: bool,
    /// More names the API server's certificate is valid for (IP addresses or
    /// DNS names), besides loopback, this host's name and the listen address.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Host directories tasks may mount, comma-separated (default: DATA_DIR/volumes
    /// and the examples' output directory /var/tmp/loom-demo).
    #[arg(long, value_delimiter = ',')]
    allow_host_paths: Option<Vec<PathBuf>>,
    /// Let tasks use the unconfined `raw` driver (a root process on this machine).
    #[arg(long)]
    allow_raw_exec: bool,
    /// The memory limit given to a task that asks for none (0 or empty: none).
    #[arg(long, env = "LOOM_DEFAULT_TASK_MEMORY", default_value = "512Mi", value_parser = task_memory)]
    default_task_memory: TaskMemory,
    #[command(flatten)]
    limits: ApiLimitArgs,
    /// Take a snapshot of the store every this many seconds (0: never;
    /// `loom snapshot save` takes one by hand).
    #[arg(long, env = "LOOM_SNAPSHOT_INTERVAL_SECONDS", default_value_t = 0)]
    snapshot_interval_seconds: u64,
    /// Where scheduled snapshots go (default: DATA_DIR/snapshots).
    #[arg(long, env = "LOOM_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Scheduled snapshots kept, the newest.
    #[arg(long, env = "LOOM_SNAPSHOT_KEEP", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_keep: u64,
    /// The IPv4 range nodes' task subnets (`spec.taskCIDR`) are given from (empty:
    /// none: tasks have no network but `lo`).
    /// The default is a range no common container tool picks (podman takes
    /// 10.88.0.0/16, CRI-O 10.85.0.0/16, k3s 10.42.0.0/16, kind 10.244.0.0/16).
    #[arg(long, env = "LOOM_CLUSTER_CIDR", default_value = UP_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// The prefix length of each node's subnet in --cluster-cidr (8 to 30).
    #[arg(long, env = "LOOM_NODE_CIDR_MASK_SIZE", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// The IPv4 range Services' virtual addresses (`spec.clusterIP`) come from,
    /// /12 to /29, apart from --cluster-cidr; its first address is kept for the
    /// `kubernetes` Service.
    #[arg(long, env = "LOOM_SERVICE_CIDR", default_value = api_types::kinds::service::DEFAULT_SERVICE_CIDR)]
    service_cidr: api_types::ServiceRange,
    /// The address tasks reach the API server at (with --listen's port, so
    /// --listen must serve on it): listed in the Endpoints of the `kubernetes`
    /// Service in `default`, which is made if missing. Not a loopback or
    /// unspecified address.
    #[arg(long, env = "LOOM_ADVERTISE_ADDRESS", value_parser = advertise_address)]
    advertise_address: Option<std::net::IpAddr>,
}

/// An API server's advertised address: one a task can reach.
fn advertise_address(value: &str) -> Result<std::net::IpAddr, String> {
    let ip: std::net::IpAddr = value
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address"))?;
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "{ip} cannot be reached from tasks: give an address of this machine on the nodes' network"
        ));
    }
    Ok(ip)
}

/// `loom up`'s cluster CIDR.
const UP_CLUSTER_CIDR: &str = "10.77.0.0/16";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // These two fork or run containers: no async runtime, no threads.
    match &cli.command {
        Command::Shim { dir } => return nodelet::shim::main(dir),
        Command::Certs(_) => {
            let Command::Certs(args) = cli.command else {
                return ExitCode::FAILURE;
            };
            return match certs_cmd::certs(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("loom: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Image(_) => {
            let Command::Image(args) = cli.command else {
                return ExitCode::FAILURE;
            };
            return match node_cmd::image(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("loom: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loom: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Apiserver(args) => apiserver_command(*args).await,
            Command::Nodelet(args) => node_cmd::nodelet(*args).await,
            Command::Proxy(args) => proxy_cmd::run(*args).await,
            Command::Token(args) => token_cmd::run(args).await,
            Command::Snapshot(args) => snapshot_cmd::run(args).await,
            Command::Shim { .. } | Command::Image(_) | Command::Certs(_) => Ok(()),
            Command::Controllers(args) => {
                let cluster_cidr = args.task_cidrs.cluster_cidr()?;
                let client = args.api.client()?;
                let identity = leader_identity();
                let config = controllers::Config {
                    identity: identity.clone(),
                    node_grace: std::time::Duration::from_secs(args.node_grace_seconds),
                    lost_grace: std::time::Duration::from_secs(args.lost_grace_seconds),
                    cluster_cidr,
                    ..controllers::Config::default()
                };
                let leader_client = client.clone();
                run_elected(&leader_client, LEASE_CONTROLLERS, &identity, move |lead| {
                    controllers::run_manager(client.clone(), config.clone(), lead)
                })
                .await
            }
            Command::Scheduler(args) => {
                let client = args.api.client()?;
                let claim_nodes = args.claim_nodes;
                let leader_client = client.clone();
                run_elected(
                    &leader_client,
                    LEASE_SCHEDULER,
                    &leader_identity(),
                    move |lead| {
                        let config = scheduler::run::Config {
                            claim_nodes,
                            ..scheduler::run::Config::default()
                        };
                        scheduler::run_with(client.clone(), config, lead)
                    },
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loom: {error:#}");
            ExitCode::FAILURE
        }
    }
}

impl UpArgs {
    fn cluster_cidr(&self) -> anyhow::Result<Option<controllers::node_ipam::ClusterCidr>> {
        TaskCidrArgs {
            cluster_cidr: Some(self.cluster_cidr.clone()),
            node_cidr_mask_size: self.node_cidr_mask_size,
        }
        .cluster_cidr()
    }

    /// The service range, refused if it shares an address with the cluster CIDR.
    fn service_cidr(&self) -> anyhow::Result<api_types::ServiceRange> {
        if let Some(cluster) = self.cluster_cidr()?
            && self.service_cidr.overlaps(&cluster.range())
        {
            anyhow::bail!(
                "--service-cidr {} overlaps --cluster-cidr {}: Services' virtual addresses and tasks' addresses must come from separate ranges",
                self.service_cidr,
                cluster.range()
            );
        }
        Ok(self.service_cidr)
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    // Refused before anything starts.
    args.cluster_cidr()?;
    args.service_cidr()?;
    let path = args.data_dir.join("loom.db");
    let store = EmbeddedStore::open(EmbeddedOptions::new(&path))
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    let health = store.health().await.context("cannot read the store")?;
    println!(
        "store {}: healthy, revision {}, {} keys, {} rows of history (compacted to {}), {} KiB on disk",
        path.display(),
        health.revision,
        health.keys,
        health.history_rows,
        health.compacted,
        (health.file_bytes + health.wal_bytes) / 1024
    );
    if args.check {
        store.close().await;
        return Ok(());
    }
    let store: Arc<dyn Store> = Arc::new(store);
    if args.snapshot_interval_seconds > 0 {
        let schedule = snapshot_cmd::Schedule {
            dir: args
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| args.data_dir.join("snapshots")),
            interval: std::time::Duration::from_secs(args.snapshot_interval_seconds),
            keep: usize::try_from(args.snapshot_keep).unwrap_or(usize::MAX),
        };
        println!(
            "a snapshot of the store every {} s into {} (the newest {} kept)",
            args.snapshot_interval_seconds,
            schedule.dir.display(),
            schedule.keep
        );
        tokio::spawn(tracing::Instrument::instrument(
            snapshot_cmd::run_schedule(store.clone(), schedule),
            tracing::info_span!("snapshot_schedule"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // Made once in the data dir, kept, and reissued only when they no longer
    // fit (a new listen address, say).
    let mut sans = args.tls_sans.clone();
    if !address.ip().is_unspecified() {
        sans.push(address.ip().to_string());
    }
    let credentials = certs_cmd::ClusterCredentials::ensure(&args.data_dir.join("pki"), &sans)?;
    // Local clients reach a wildcard listener on loopback.
    let local = if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    };
    let server = format!("https://{local}");
    match write_context(&server, &credentials) {
        Ok(Some(path)) => println!(
            "loomctl context \"{UP_CONTEXT}\" written to {}",
            path.display()
        ),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "cannot write the loomctl context"),
    }
    let mut config = api_config(&args.default_task_memory, &args.limits);
    config.service_cidr = args.service_cidr()?;
    config.advertise_address = args
        .advertise_address
        .map(|ip| SocketAddr::new(ip, args.listen.port()));
    config.tls = Some(loom_listener::tls::server_config(
        &credentials.serving.cert,
        &credentials.serving.key,
        Some(&credentials.pki.ca_cert()),
    )?);
    // Every request authenticated (client certificates of the cluster CA,
    // service-account tokens of its key) and authorized by RBAC.
    let (sa_key, sa_pub) = credentials.pki.service_account_keys();
    config.authentication = apiserver::authn::Authentication {
        service_accounts: Some(Arc::new(
            apiserver::authn::ServiceAccountTokens::from_files(
                apiserver::authn::service_account::DEFAULT_ISSUER,
                &[sa_pub],
                Some(&sa_key),
            )?,
        )),
        ..apiserver::authn::Authentication::secure()
    };
    config.authorization = apiserver::authz::Authorization::Rbac;
    config.nodelet_client = Some(credentials.nodelet_client_tls()?);
    // Nodes join with bootstrap tokens: the cluster CA signs their certificates.
    let ca = credentials.pki.ca();
    config.cluster_signing = Some(apiserver::certificates::Signing::new(
        pki::Ca::from_pem(ca.cert_pem(), ca.key_pem()).map_err(anyhow::Error::msg)?,
    ));
    // Nodes join with bootstrap tokens: the cluster CA signs their certificates.
    let ca = credentials.pki.ca();
    config.cluster_signing = Some(apiserver::certificates::Signing::new(
        pki::Ca::from_pem(ca.cert_pem(), ca.key_pem()).map_err(anyhow::Error::msg)?,
    ));
    // Who changed what: every write at Metadata level, beside the store.
    config.audit = Some(apiserver::audit::Config::for_up(
        args.data_dir.join("audit.log"),
    ));
    if args.api_only {
        return serve_on(store, listener, config).await;
    }
    all_in_one(args, store, listener, server, config, credentials).await
}

/// The API server, the controllers, the scheduler and a nodelet in one process,
/// until Ctrl-C or SIGTERM; then the nodelet stops its tasks first.
async fn all_in_one(
    args: UpArgs,
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    server: String,
    api_config: apiserver::Config,
    credentials: certs_cmd::ClusterCredentials,
) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "loom up runs containers and must run as root (or use --api-only)"
    );
    let nodelet_args = node_cmd::NodeletArgs {
        api: node_cmd::ApiArgs::default(),
        join: join::JoinArgs::default(),
        name: args.name.clone(),
        state_dir: args.data_dir.join("nodelet"),
        labels: String::new(),
        taints: String::new(),
        cgroup_parent: args.cgroup_parent.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: None,
        tls_cert_file: None,
        tls_private_key_file: None,
        client_ca_file: None,
        insecure_endpoint: false,
        cpu: None,
        memory: None,
        max_tasks: 110,
        import_images: Vec::new(),
        stop_tasks_on_exit: true,
        allow_host_paths: args.allow_host_paths.clone().unwrap_or_else(|| {
            vec![
                args.data_dir.join("volumes"),
                PathBuf::from("/var/tmp/loom-demo"),
            ]
        }),
        allow_raw_exec: args.allow_raw_exec,
        max_layer_bytes: api_types::Quantity::from_value(
            i64::try_from(nodelet::image::DEFAULT_MAX_LAYER_BYTES).unwrap_or(i64::MAX),
            api_types::Format::BinarySi,
        ),
        exec_uid: 65534,
        no_task_network: false,
        bridge: nodelet::network::DEFAULT_BRIDGE.to_owned(),
        node_ip: None,
        cluster_dns: true,
    };
    let mut nodelet_config = nodelet_args.config()?;
    // The node's endpoint (task logs) serves TLS to the API server only.
    nodelet_config.endpoint_tls = Some(credentials.endpoint_tls(
        &nodelet_config.name,
        &[nodelet_config.listen.ip().to_string()],
    )?);
    for dir in &nodelet_config.allow_host_paths {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the allowed host path {}", dir.display()))?;
    }
    println!(
        "Tasks may mount host paths under: {}",
        if nodelet_config.allow_host_paths.is_empty() {
            "nothing".to_owned()
        } else {
            let dirs: Vec<String> = nodelet_config
                .allow_host_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            dirs.join(", ")
        }
    );
    println!(
        "The raw (unconfined) driver is {}",
        if nodelet_config.allow_raw_exec {
            "allowed"
        } else {
            "not allowed (--allow-raw-exec allows it)"
        }
    );
    import_busybox(&nodelet_config.state_dir);
    println!("Loom API server at {server}");

    let api_shutdown = CancellationToken::new();
    let api = tokio::spawn(apiserver::run(
        store,
        listener,
        api_config,
        api_shutdown.clone(),
    ));
    // Each part is its own user, with only the rights its role gives it.
    let client_as = |credential: &pki::Credential| -> anyhow::Result<client::Client> {
        Ok(client::Client::new(
            credentials.client_config(&server, credential)?,
        )?)
    };
    let node_credential = credentials.node(&nodelet_config.name)?;
    let node_client = client_as(&node_credential)?;
    let parts = CancellationToken::new();
    let controllers_config = controllers::Config {
        identity: format!("{}-up", hostname()),
        cluster_cidr: args.cluster_cidr()?,
        ..controllers::Config::default()
    };
    let controllers = tokio::spawn(controllers::run_manager(
        client_as(&credentials.controllers)?,
        controllers_config,
        parts.clone(),
    ));
    // One scheduler in this process: no claims needed.
    let scheduler_config = scheduler::run::Config {
        claim_nodes: false,
        ..scheduler::run::Config::default()
    };
    let scheduler = tokio::spawn(scheduler::run_with(
        client_as(&credentials.scheduler)?,
        scheduler_config,
        parts.clone(),
    ));
    // The node proxy: Services' addresses and the resolver of the cluster's
    // names. Without nftables it cannot redirect: Loom runs on without it.
    let mut proxy_config =
        proxy::control::Config::new(&nodelet_config.name, args.service_cidr()?.net());
    proxy_config.listen_port = 0;
    proxy_config.bridges = vec![nodelet_config.bridge.clone()];
    let proxy = tokio::spawn({
        let client = client_as(&credentials.proxy)?;
        let shutdown = parts.clone();
        async move {
            if let Err(error) = proxy::control::run(client, proxy_config, shutdown).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the node proxy is not running: Services' addresses will not answer"
                );
            }
        }
    });
    let node_shutdown = CancellationToken::new();
    let node_name = nodelet_config.name.clone();
    let mut node = tokio::spawn(nodelet::run(
        node_client,
        nodelet_config,
        node_shutdown.clone(),
    ));
    println!("node {node_name} running; Ctrl-C stops Loom and every task it started");

    tokio::select! {
        result = shutdown_signal() => result?,
        finished = &mut node => {
            parts.cancel();
            api_shutdown.cancel();
            return finished.context("the nodelet panicked")?;
        }
    }
    tracing::info!("shutting down: stopping tasks");
    node_shutdown.cancel();
    let node_result = node.await.context("the nodelet panicked")?;
    parts.cancel();
    proxy.await.context("the proxy panicked")?;
    controllers.await.context("the controllers panicked")?;
    scheduler.await.context("the scheduler panicked")?;
    api_shutdown.cancel();
    api.await
        .context("the API server panicked")?
        .context("the API server failed")?;
    node_result
}

/// Puts a `busybox` image built from the host's static busybox into the node's
/// image store, so the examples run without a registry.
fn import_busybox(state_dir: &std::path::Path) {
    let images = nodelet::image::ImageStore::new(&state_dir.join("images"));
    if images.resolve("busybox").is_ok() {
        return;
    }
    let busybox = std::path::Path::new("/bin/busybox");
    if !busybox.exists() {
        tracing::warn!("no /bin/busybox (apt install busybox-static): no busybox image");
        return;
    }
    let layout = state_dir.join("busybox-layout");
    let result = nodelet::image::busybox_layout(&layout, busybox, "latest")
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            images
                .import(&layout, Some("busybox"))
                .map_err(anyhow::Error::from)
        });
    let _ = std::fs::remove_dir_all(&layout);
    match result {
        Ok(_) => println!("image busybox:latest imported from /bin/busybox"),
        Err(error) => tracing::warn!(%error, "cannot import the busybox image"),
    }
}

/// The loomctl context `loom up` writes.
const UP_CONTEXT: &str = "loom-up";

/// Points the `loom-up` context of the loomctl config (a kubeconfig) at this
/// server, as the administrator, and makes it current. Returns the file
/// written, if it changed.
fn write_context(
    server: &str,
    credentials: &certs_cmd::ClusterCredentials,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let path = match std::env::var_os("LOOMCONFIG") {
        Some(path) => std::path::PathBuf::from(path),
        None => match client::config::default_path() {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    let up = credentials.kubeconfig(UP_CONTEXT, server, &credentials.admin)?;
    Ok(up.merge_into_file(&path)?.then_some(path))
}

async fn apiserver_command(args: ApiserverArgs) -> anyhow::Result<()> {
    let compaction = std::time::Duration::from_secs(args.etcd_compaction_interval_seconds);
    let etcd_tls = match (&args.etcd_cafile, &args.etcd_certfile, &args.etcd_keyfile) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(apiserver::store::EtcdTls::from_files(ca, cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    anyhow::ensure!(
        etcd_tls.is_none() || matches!(args.store, StoreUrl::Etcd(_)),
        "--etcd-cafile: the store is not etcd"
    );
    let store =
        apiserver::open_store_with_tls(&args.store, &args.store_prefix, compaction, etcd_tls)
            .await
            .map_err(anyhow::Error::msg)
            .context("cannot open the store")?;
    let mut config = api_config(&args.default_task_memory, &args.limits);
    config.service_cidr = args.service_cidr;
    config.event_ttl = std::time::Duration::from_secs(args.event_ttl_seconds);
    config.advertise_address = args
        .advertise_address
        .map(|ip| SocketAddr::new(ip, args.listen.port()));
    // Every request is authorized by RBAC: there is no flag to turn it off.
    config.authorization = apiserver::authz::Authorization::Rbac;
    config.audit = audit_config(&args.audit)?;
    if let (Some(cert), Some(key), Some(ca)) = (
        &args.nodelet_client_certificate,
        &args.nodelet_client_key,
        &args.nodelet_certificate_authority,
    ) {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
        };
        config.nodelet_client = Some(apiserver::logs::NodeletClientTls {
            ca_pem: read("--nodelet-certificate-authority", ca)?,
            cert_pem: read("--nodelet-client-certificate", cert)?,
            key_pem: read("--nodelet-client-key", key)?,
        });
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_private_key_file) {
        config.tls = Some(loom_listener::tls::server_config(
            cert,
            key,
            args.client_ca_file.as_deref(),
        )?);
    }
    config.authentication = authentication(&args)?;
    config.cluster_signing = cluster_signing(&args)?;
    serve(store, args.listen, config).await
}

/// Serves the API until Ctrl-C or SIGTERM.
async fn serve(
    store: Arc<dyn Store>,
    listen: SocketAddr,
    config: apiserver::Config,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    serve_on(store, listener, config).await
}

async fn serve_on(
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    config: apiserver::Config,
) -> anyhow::Result<()> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("Loom API server at {scheme}://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(apiserver::run(store, listener, config, shutdown.clone()));
    shutdown_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    server
        .await
        .context("the API server panicked")?
        .context("the API server failed")?;
    Ok(())
}

/// Who this process is in a leader election: host and pid.
fn leader_identity() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

/// Runs `work` whenever this process holds the Lease `name` in `loom-system`
/// (several replicas may run; one leads), until Ctrl-C or SIGTERM.
async fn run_elected<F, Fut>(
    client: &client::Client,
    name: &str,
    identity: &str,
    work: F,
) -> anyhow::Result<()>
where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let leases: client::Api<api_types::Lease> =
        client::Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let elector = client::LeaderElector::new(
        client::ApiLease::new(leases, name),
        SYSTEM_NAMESPACE,
        name,
        identity,
        client::ElectionConfig::default(),
    );
    let (leadership, elector_task) = elector.run(shutdown.clone());
    let work = tokio::spawn(client::while_leading(leadership, shutdown.clone(), work));
    tracing::info!(%identity, "{name} started; waiting for the lease");
    shutdown_signal().await?;
    shutdown.cancel();
    work.await.with_context(|| format!("{name} panicked"))?;
    elector_task.await.context("the elector panicked")?;
    Ok(())
}

/// This machine's name, for leader identities.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "loom".to_owned())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("loom").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn task_subnets_are_off_by_default_except_in_up() {
        let Command::Controllers(args) = parse(&["controllers"]) else {
            panic!("controllers");
        };
        assert_eq!(args.task_cidrs.cluster_cidr().unwrap(), None);
        let Command::Controllers(args) = parse(&[
            "controllers",
            "--cluster-cidr",
            "10.9.0.0/16",
            "--node-cidr-mask-size",
            "26",
        ]) else {
            panic!("controllers");
        };
        let cluster = args.task_cidrs.cluster_cidr().unwrap().unwrap();
        assert_eq!(cluster.to_string(), "10.9.0.0/16 in /26 subnets");
        let Command::Controllers(args) = parse(&["controllers", "--cluster-cidr", "10.9.0.1/16"])
        else {
            panic!("controllers");
        };
        let error = format!("{:#}", args.task_cidrs.cluster_cidr().unwrap_err());
        assert!(error.contains("no host bits set: 10.9.0.0/16"), "{error}");
        assert!(
            Cli::try_parse_from(["loom", "controllers", "--node-cidr-mask-size", "31"]).is_err()
        );

        let Command::Up(args) = parse(&["up"]) else {
            panic!("up");
        };
        assert_eq!(
            args.cluster_cidr().unwrap().unwrap().to_string(),
            "10.77.0.0/16 in /24 subnets"
        );
        let Command::Up(args) = parse(&["up", "--cluster-cidr", ""]) else {
            panic!("up");
        };
        assert_eq!(args.cluster_cidr().unwrap(), None);
    }

    #[test]
    fn the_service_range_is_a_flag_apart_from_the_cluster_cidr() {
        let Command::Up(args) = parse(&["up"]) else {
            panic!("up");
        };
        assert_eq!(args.service_cidr().unwrap().to_string(), "10.96.0.0/16");
        let Command::Apiserver(args) = parse(&["apiserver", "--service-cidr", "10.100.0.0/20"])
        else {
            panic!("apiserver");
        };
        assert_eq!(args.service_cidr.to_string(), "10.100.0.0/20");
        let Command::Up(args) = parse(&["up", "--service-cidr", "10.77.128.0/20"]) else {
            panic!("up");
        };
        let error = format!("{:#}", args.service_cidr().unwrap_err());
        assert!(
            error.contains("--service-cidr 10.77.128.0/20 overlaps --cluster-cidr 10.77.0.0/16"),
            "{error}"
        );
        let Command::Up(args) =
            parse(&["up", "--cluster-cidr", "", "--service-cidr", "10.77.0.0/16"])
        else {
            panic!("up");
        };
        assert!(args.service_cidr().is_ok(), "no cluster CIDR, no overlap");
        let Command::Apiserver(args) = parse(&[
            "apiserver",
            "--listen",
            "0.0.0.0:7443",
            "--advertise-address",
            "10.0.0.5",
        ]) else {
            panic!("apiserver");
        };
        assert_eq!(args.advertise_address, Some("10.0.0.5".parse().unwrap()));
        for bad in ["127.0.0.1", "0.0.0.0", "::1", "host.example"] {
            assert!(
                Cli::try_parse_from(["loom", "apiserver", "--advertise-address", bad]).is_err(),
                "{bad}"
            );
        }
        for bad in ["10.96.0.1/16", "10.0.0.0/8", "fd00::/112"] {
            assert!(
                Cli::try_parse_from(["loom", "apiserver", "--service-cidr", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
