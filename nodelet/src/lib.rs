//! The nodelet: Loom's node agent. It registers its Node and renews its Lease,
//! watches the tasks bound to it, runs each through a driver (a libcontainer
//! container, or a host process in its own cgroup) from a per-run shim process,
//! reports their status, enforces time limits, restart policies and grace periods,
//! serves their logs, and adopts the runs still alive after its own restart.

pub mod cgroup;
pub mod driver;
pub mod image;
pub mod ipam;
pub mod logfile;
pub mod metrics;
pub mod network;
pub mod node;
pub mod node_network;
pub mod permissions;
pub mod probe;
pub mod pull;
pub mod run;
pub mod server;
pub mod service_account;
pub mod shim;
pub mod spec;
pub mod state_version;
pub mod tasks;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use api_types::{Quantity, Taint, Task};
use client::reflector::Change;
use client::{Api, Client, Informer, Recorder, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use driver::{Driver, FakeDriver, FakeOutcome, ShimDriver};

/// How a nodelet runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's name.
    pub name: String,
    /// Where it keeps task runs, logs, images and container state.
    pub state_dir: PathBuf,
    /// Labels added to the node's attribute labels.
    pub labels: BTreeMap<String, String>,
    /// Taints the node registers with.
    pub taints: Vec<Taint>,
    /// The cgroup parent: containers go to `/PARENT/NODE/ID` in each hierarchy.
    pub cgroup_parent: String,
    /// The shim command (program and leading arguments).
    pub shim: Vec<OsString>,
    /// Where the log endpoint listens.
    pub listen: SocketAddr,
    /// The URL the apiserver reaches the endpoint at (default: from `listen`).
    pub advertise: Option<String>,
    /// Serve the endpoint over TLS (the node's serving certificate, client
    /// certificates verified against the cluster CA) to these callers only;
    /// `None` serves plain HTTP to anyone.
    pub endpoint_tls: Option<EndpointTls>,
    /// CPU offered (default: the machine's cores).
    pub cpu: Option<Quantity>,
    /// Memory offered (default: the machine's).
    pub memory: Option<Quantity>,
    /// Tasks offered at once.
    pub max_tasks: u32,
    /// The pids limit of a task that asks for none.
    pub pids_limit: i64,
    /// A task's log is capped at twice this.
    pub log_max_bytes: u64,
    /// The grace period of a stop when the task names none.
    pub default_grace: Duration,
    /// The first restart delay; it doubles per restart.
    pub backoff_base: Duration,
    /// The longest restart delay.
    pub backoff_max: Duration,
    /// The lease's duration.
    pub lease_duration: Duration,
    /// How often the lease is renewed.
    pub renew_interval: Duration,
    /// How often the node's status (usage, heartbeat) is written.
    pub status_interval: Duration,
    /// Stop every task when the nodelet exits (`loom up`); otherwise tasks keep
    /// running and the next nodelet adopts them.
    pub stop_tasks_on_exit: bool,
    /// Registries (`host:port`) pulled from over plain HTTP; loopback ones are
    /// always.
    pub insecure_registries: Vec<String>,
    /// Host directories tasks may mount (each mount's source, resolved, must lie
    /// under one of them); none by default. The node's own state directory is
    /// never mountable, nor any directory holding it.
    pub allow_host_paths: Vec<PathBuf>,
    /// Whether tasks may use the unconfined `raw` driver (root on the host).
    pub allow_raw_exec: bool,
    /// An image layer whose entries add up to more than this many bytes is
    /// refused, as is a layer blob larger than it and an eighth (for the tar's
    /// headers). 8 GiB by default.
    pub max_layer_bytes: u64,
    /// The uid and gid the confined `exec` driver runs tasks as (it owns their
    /// work directories and writable mounts); `nobody` by default.
    pub exec_uid: u32,
    /// Whether container tasks join the node's task network once the node
    /// has a task subnet (`spec.taskCIDR`); on by default.
    pub task_network: bool,
    /// The task network's bridge.
    pub bridge: String,
    /// The node's address other nodes route task traffic to, reported as its
    /// `InternalIP` (default: the endpoint's address when it is a routable
    /// IPv4 one).
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Point container tasks' resolver at the node's (`loom proxy`, on the
    /// task bridge's address), which answers the cluster's names
    /// (`NAME.NAMESPACE.svc`) and forwards the rest; otherwise they use the
    /// node's own resolvers.
    pub cluster_dns: bool,
}

/// The endpoint's TLS.
#[derive(Clone, Debug)]
pub struct EndpointTls {
    /// The serving certificate and the CA of client certificates.
    pub server: Arc<loom_listener::tls::ServerConfig>,
    /// Who may call it.
    pub callers: server::Callers,
}

impl Config {
    /// Defaults for a node `name` keeping its state in `state_dir`.
    pub fn new(name: &str, state_dir: PathBuf) -> Config {
        Config {
            name: name.to_owned(),
            state_dir,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            cgroup_parent: "loom".to_owned(),
            shim: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            endpoint_tls: None,
            cpu: None,
            memory: None,
            max_tasks: 110,
            pids_limit: 4096,
            log_max_bytes: 10 << 20,
            default_grace: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            lease_duration: Duration::from_secs(40),
            renew_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(30),
            stop_tasks_on_exit: false,
            insecure_registries: Vec::new(),
            allow_host_paths: Vec::new(),
            allow_raw_exec: false,
            max_layer_bytes: image::DEFAULT_MAX_LAYER_BYTES,
            exec_uid: 65534,
            task_network: true,
            bridge: network::DEFAULT_BRIDGE.to_owned(),
            node_ip: None,
            cluster_dns: false,
        }
    }
}

impl Config {
    /// The node's address for task traffic: `node_ip`, else the endpoint's
    /// address when it is a routable IPv4 one.
    pub fn node_ip(&self, endpoint: &str) -> Option<std::net::Ipv4Addr> {
        self.node_ip.or_else(|| node_network::endpoint_ip(endpoint))
    }
}

/// Parses `k=v,k2=v2` labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
        let mut problems = api_types::names::is_label_key(key);
        problems.extend(api_types::names::is_label_value(value));
        if !problems.is_empty() {
            return Err(format!("label {pair:?}: {}", problems.join("; ")));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// Parses `key=value:Effect,key:Effect` taints.
pub fn parse_taints(text: &str) -> Result<Vec<Taint>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kv, effect) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {item:?} is not key[=value]:Effect"))?;
        let effect = match effect {
            "NoSchedule" => api_types::TaintEffect::NoSchedule,
            "PreferNoSchedule" => api_types::TaintEffect::PreferNoSchedule,
            "NoExecute" => api_types::TaintEffect::NoExecute,
            other => {
                return Err(format!(
                    "taint {item:?}: effect {other:?} is not NoSchedule, PreferNoSchedule or NoExecute"
                ));
            }
        };
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if !api_types::names::is_label_key(key).is_empty() {
            return Err(format!("taint {item:?}: {key:?} is not a valid key"));
        }
        out.push(Taint {
            key: key.to_owned(),
            value: value.to_owned(),
            effect: Some(effect),
        });
    }
    Ok(out)
}

/// The task actors by task uid: the latest task view each sees, and its handle.
type Actors = HashMap<
    String,
    (
        watch::Sender<Option<Arc<Task>>>,
        tokio::task::JoinHandle<()>,
    ),
>;

/// Runs a nodelet until `shutdown`, with the real shim driver.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!config.shim.is_empty(), "no shim command configured");
    let driver = Arc::new(ShimDriver {
        command: config.shim.clone(),
    });
    run_with(client, config, driver, shutdown).await
}

/// Runs a nodelet with `driver` until `shutdown`.
pub async fn run_with(
    client: Client,
    config: Config,
    driver: Arc<dyn Driver>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    state_version::open(&config.state_dir)?;
    for dir in ["tasks", "containers", "images"] {
        let path = config.state_dir.join(dir);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let previous = match (config.listen.port(), &config.advertise) {
        (0, None) => node::registered_address(&client, &config.name, config.listen.ip()).await,
        _ => None,
    };
    let listener = match previous {
        Some(previous) => match tokio::net::TcpListener::bind(previous).await {
            Ok(listener) => Ok(listener),
            Err(_) => tokio::net::TcpListener::bind(config.listen).await,
        },
        None => tokio::net::TcpListener::bind(config.listen).await,
    }
    .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let scheme = if config.endpoint_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    let config = Arc::new(config);

    // Until the API server can be reached and grants this node its rights (its
    // RBAC caches fill after it starts; a node credential may be bound later),
    // registration is retried, as the kubelet does; a refused Node (bad
    // labels, say) is a configuration error and ends the nodelet.
    let mut backoff = Duration::from_millis(200);
    loop {
        match node::register(&client, &config, &endpoint).await {
            Ok(_) => break,
            Err(error) if error.is_transient() || matches!(error.code(), Some(401 | 403)) => {
                warn!(node = %config.name, %error, retry_in = ?backoff, "cannot register the node yet");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot register node {}", config.name));
            }
        }
    }
    node::renew_lease(&client, &config)
        .await
        .context("cannot create the node lease")?;
    info!(node = %config.name, %endpoint, "node registered and ready");

    // The task network follows the Nodes: the bridge once this node has a
    // subnet, routes to the others'.
    let network = Arc::new(node_network::NodeNetwork::new(
        config.task_network,
        &config.bridge,
        config.state_dir.clone(),
    ));
    let network_follower = tokio::spawn(network.clone().follow(
        client.clone(),
        config.name.clone(),
        config.node_ip(&endpoint),
        shutdown.clone(),
    ));

    let informer = Informer::start(
        Api::<Task>::all(client.clone()),
        watcher::Config {
            field_selector: Some(format!("spec.nodeName={}", config.name)),
            ..watcher::Config::default()
        },
    );
    let mut changes = informer.subscribe();
    let store = informer.store();
    let ctx = Arc::new(tasks::Ctx {
        config: config.clone(),
        driver,
        images: image::ImageStore::new(&config.state_dir.join("images"))
            .with_max_layer_bytes(config.max_layer_bytes),
        puller: pull::Puller::new(
            image::ImageStore::new(&config.state_dir.join("images"))
                .with_max_layer_bytes(config.max_layer_bytes),
            config.insecure_registries.clone(),
        ),
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "loom-nodelet", &config.name),
        shutdown: shutdown.clone(),
        metrics: metrics::Metrics::default(),
        fence: tasks::Fence::new(config.lease_duration),
        network: network.clone(),
    });

    let server_shutdown = shutdown.clone();
    let server = tokio::spawn({
        let state = server::ServerState {
            ctx: ctx.clone(),
            tasks: store.clone(),
        };
        let tls = config.endpoint_tls.clone();
        async move {
            // Connections get the same header timeout and limit as the API
            // server's; the endpoint serves only reads, so no body timeout.
            let limits = loom_listener::Limits {
                max_connections: 1_000,
                ..loom_listener::Limits::default()
            };
            match tls {
                Some(tls) => {
                    let router = server::secure_router(state, tls.callers);
                    loom_listener::serve_tls(listener, router, limits, tls.server, server_shutdown)
                        .await;
                }
                None => {
                    loom_listener::serve(listener, server::router(state), limits, server_shutdown)
                        .await;
                }
            }
        }
    });
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        config.clone(),
        endpoint.clone(),
        ctx.fence.clone(),
        shutdown.clone(),
    ));

    // Running tasks' service-account tokens, requested again at 80 % of
    // their life (the files change in place: the mounts follow).
    let refresher = tokio::spawn({
        let (ctx, store, shutdown) = (ctx.clone(), store.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(service_account::REFRESH_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                for task in store.list() {
                    let task_dir = ctx.task_dir(&task.metadata.uid);
                    let dir = service_account::dir_of(&task_dir);
                    let finished = task.status.as_ref().is_some_and(|s| s.phase.is_terminal());
                    if finished || !dir.is_dir() || !service_account::due(&dir, chrono::Utc::now())
                    {
                        continue;
                    }
                    if let Err(failure) =
                        service_account::project(&ctx.client, &task, &task_dir).await
                    {
                        warn!(task = %format!("{}/{}", task.metadata.namespace, task.metadata.name), reason = failure.reason, error = %failure.message, "cannot renew the service-account token");
                    }
                }
            }
        }
    });

    store.wait_ready().await;
    let mut actors: Actors = HashMap::new();
    let spawn = |actors: &mut Actors, uid: &str, task: Option<Arc<Task>>| {
        let (tx, rx) = watch::channel(task);
        let handle = tokio::spawn(tasks::drive(ctx.clone(), uid.to_owned(), rx));
        actors.insert(uid.to_owned(), (tx, handle));
    };
    // Runs on disk first: adopt them, or stop and clean up those whose task is gone.
    let known: HashMap<String, Arc<Task>> = store
        .list()
        .into_iter()
        .map(|t| (t.metadata.uid.clone(), t))
        .collect();
    for (uid, record) in tasks::on_disk(&config.state_dir) {
        let task = known.get(&uid).cloned();
        if task.is_none() {
            info!(task = %format!("{}/{}", record.namespace, record.name), "its task is gone: stopping and cleaning up");
        }
        spawn(&mut actors, &uid, task);
    }
    for (uid, task) in known {
        if !actors.contains_key(&uid) {
            spawn(&mut actors, &uid, Some(task));
        }
    }
    let mut resync = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            change = changes.recv() => match change {
                Ok(Change::Applied(task)) => {
                    let uid = task.metadata.uid.clone();
                    match actors.get(&uid) {
                        Some((tx, handle)) if !handle.is_finished() => { tx.send_replace(Some(task)); }
                        _ => spawn(&mut actors, &uid, Some(task)),
                    }
                }
                Ok(Change::Deleted(task)) => {
                    if let Some((tx, _)) = actors.get(&task.metadata.uid) {
                        tx.send_replace(None);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "fell behind the task watch; resyncing");
                    resync.reset_immediately();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = resync.tick() => {
                // Level-triggered: every actor sees the cache's view.
                let current: HashMap<String, Arc<Task>> = store
                    .list()
                    .into_iter()
                    .map(|t| (t.metadata.uid.clone(), t))
                    .collect();
                actors.retain(|_, (_, handle)| !handle.is_finished());
                for (uid, (tx, _)) in &actors {
                    tx.send_replace(current.get(uid).cloned());
                }
                for (uid, task) in current {
                    if !actors.contains_key(&uid) {
                        spawn(&mut actors, &uid, Some(task));
                    }
                }
            }
        }
    }
    info!(node = %config.name, "nodelet stopping");
    // Actors finish (stopping their tasks first when configured to).
    for (_, (_, handle)) in actors.drain() {
        let _ = handle.await;
    }
    informer.stop();
    let _ = heartbeat.await;
    let _ = refresher.await;
    let _ = server.await;
    let _ = network_follower.await;
    if config.stop_tasks_on_exit {
        // The node's tasks are stopped: their network goes too.
        let network = network.clone();
        let _ = tokio::task::spawn_blocking(move || network.teardown()).await;
        cgroup::remove_tree(&format!("/{}/{}", config.cgroup_parent, config.name));
        // The parent too, if no other node on this machine uses it.
        cgroup::remove_tree(&config.cgroup_parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_parse_with_clear_errors() {
        let labels = parse_labels("zone=a, disk=ssd").unwrap();
        assert_eq!(labels["zone"], "a");
        assert!(parse_labels("zone").unwrap_err().contains("key=value"));
        let taints = parse_taints("gpu=true:NoSchedule,dedicated:NoExecute").unwrap();
        assert_eq!(taints.len(), 2);
        assert_eq!(taints[1].key, "dedicated");
        assert!(
            parse_taints("gpu=true:Sometimes")
                .unwrap_err()
                .contains("NoSchedule")
        );
    }
}
