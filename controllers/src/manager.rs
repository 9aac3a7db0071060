//! The controller-manager: one informer a kind, shared by every reconciler, and
//! every built-in controller run until shutdown.

use std::sync::Arc;
use std::time::Duration;

use api_types::well_known::{LEASE_CONTROLLERS, NODE_LEASE_NAMESPACE};
use api_types::{
    BootstrapToken, Endpoints, Job, Lease, Namespace, Node, ObjectMeta, Service, Task,
};
use client::controller::{self, Action, Controller};
use client::{Api, Client, Informer, ObjectKey, PostParams, StoreBuilder, watcher};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{BY_CONTROLLER, BY_DEPENDENCY, BY_NODE, BY_OWNER, Context, Error, gc, job};
use crate::{endpoints, node_ipam, node_lifecycle, service, token_cleaner, ttl};

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Who records Events (`reportingInstance`).
    pub identity: String,
    /// A node whose Lease is not renewed for this long goes NotReady and gets the
    /// `loom.dev/unreachable:NoExecute` taint.
    pub node_grace: Duration,
    /// After a further this long its unfinished tasks are marked Lost.
    pub lost_grace: Duration,
    /// Where the nodes' Leases are.
    pub node_lease_namespace: String,
    /// A Service rollout fails once a task of the new template restarted this many
    /// times (or failed) without becoming ready.
    pub rollout_failure_restarts: i32,
    /// Reconciles at once per controller.
    pub concurrency: usize,
    /// Where nodes' task subnets (`spec.taskCIDR`) come from; `None`: no node is
    /// given one (as Kubernetes' `--allocate-node-cidrs=false`).
    pub cluster_cidr: Option<node_ipam::ClusterCidr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identity: LEASE_CONTROLLERS.to_owned(),
            node_grace: Duration::from_secs(40),
            lost_grace: Duration::from_secs(60),
            node_lease_namespace: NODE_LEASE_NAMESPACE.to_owned(),
            rollout_failure_restarts: 3,
            concurrency: 8,
            cluster_cidr: None,
        }
    }
}

fn owner_uids(meta: &ObjectMeta) -> Vec<String> {
    meta.owner_references
        .iter()
        .map(|r| r.uid.clone())
        .collect()
}

/// The task cache, indexed by controlling owner, by every owner, by node and by
/// the Services it belongs to.
pub(crate) fn task_store() -> StoreBuilder<Task> {
    StoreBuilder::default()
        .index(BY_CONTROLLER, |t: &Task| {
            t.metadata
                .controller_ref()
                .map(|r| vec![r.uid.clone()])
                .unwrap_or_default()
        })
        .index(BY_OWNER, |t: &Task| owner_uids(&t.metadata))
        .index(BY_NODE, |t: &Task| {
            if t.spec.node_name.is_empty() {
                Vec::new()
            } else {
                vec![t.spec.node_name.clone()]
            }
        })
        .index(endpoints::BY_SERVICE, endpoints::service_keys)
}

/// The job cache, indexed by owner and by each job it depends on.
pub(crate) fn job_store() -> StoreBuilder<Job> {
    StoreBuilder::default()
        .index(BY_OWNER, |j: &Job| owner_uids(&j.metadata))
        .index(BY_DEPENDENCY, |j: &Job| {
            j.spec
                .depends_on
                .iter()
                .map(|d| format!("{}/{d}", j.metadata.namespace))
                .collect()
        })
}

/// The service cache, indexed by owner.
pub(crate) fn service_store() -> StoreBuilder<Service> {
    StoreBuilder::default().index(BY_OWNER, |s: &Service| owner_uids(&s.metadata))
}

fn error_policy<K, C>(_: Arc<K>, _: &Error, _: Arc<C>) -> Action {
    // The controller backs off per key; nothing else to do.
    Action::await_change()
}

/// Runs every built-in controller until `shutdown`, then stops its watches.
pub async fn run_manager(client: Client, config: Config, shutdown: CancellationToken) {
    let watch = watcher::Config::default;
    let tasks = Informer::start_with(Api::<Task>::all(client.clone()), watch(), task_store());
    let jobs = Informer::start_with(Api::<Job>::all(client.clone()), watch(), job_store());
    let services = Informer::start_with(
        Api::<Service>::all(client.clone()),
        watch(),
        service_store(),
    );
    let nodes = Informer::start(Api::<Node>::all(client.clone()), watch());
    let leases = Informer::start(
        Api::<Lease>::namespaced(client.clone(), &config.node_lease_namespace),
        watch(),
    );
    let bootstrap_tokens = Informer::start(Api::<BootstrapToken>::all(client.clone()), watch());
    let endpoints_informer = Informer::start(Api::<Endpoints>::all(client.clone()), watch());
    let watches = {
        let (t, j, s, n, l, b, e) = (
            tasks.clone(),
            jobs.clone(),
            services.clone(),
            nodes.clone(),
            leases.clone(),
            bootstrap_tokens.clone(),
            endpoints_informer.clone(),
        );
        StopOnDrop(vec![
            Box::new(move || t.stop()),
            Box::new(move || j.stop()),
            Box::new(move || s.stop()),
            Box::new(move || n.stop()),
            Box::new(move || l.stop()),
            Box::new(move || b.stop()),
            Box::new(move || e.stop()),
        ])
    };
    ensure_namespace(&client, &config.node_lease_namespace).await;

    let ctx = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        jobs: jobs.store(),
        tasks: tasks.store(),
        services: services.store(),
        nodes: nodes.store(),
        leases: leases.store(),
        heartbeats: Arc::default(),
    });
    let settings = controller::Config {
        concurrency: config.concurrency,
        ..controller::Config::default()
    };

    let dependents_ctx = ctx.clone();
    let job_controller = Controller::new(&jobs, settings.clone())
        .owns(&tasks)
        .watches(&jobs, move |j: &Job| job::dependents(&dependents_ctx, j))
        .run(job::reconcile, error_policy, ctx.clone(), shutdown.clone());

    let service_controller = Controller::new(&services, settings.clone())
        .owns(&tasks)
        .run(
            service::reconcile,
            error_policy,
            ctx.clone(),
            shutdown.clone(),
        );

    let endpoints_ctx = Arc::new(endpoints::Context {
        client: client.clone(),
        tasks: tasks.store(),
        services: services.store(),
        endpoints: endpoints_informer.store(),
    });
    let endpoints_controller = Controller::new(&services, settings.clone())
        .watches(&tasks, |t: &Task| {
            endpoints::service_keys(t)
                .iter()
                .filter_map(|key| key.split_once('/'))
                .map(|(namespace, name)| ObjectKey::new(namespace, name))
                .collect()
        })
        .watches(&endpoints_informer, |e: &Endpoints| vec![ObjectKey::of(e)])
        .run(
            endpoints::reconcile,
            error_policy,
            endpoints_ctx.clone(),
            shutdown.clone(),
        );
    let endpoints_collector = Controller::new(&endpoints_informer, settings.clone())
        .watches(&services, |s: &Service| vec![ObjectKey::of(s)])
        .run(
            endpoints::collect,
            error_policy,
            endpoints_ctx,
            shutdown.clone(),
        );

    let ttl_controller = Controller::new(&jobs, settings.clone()).run(
        ttl::reconcile,
        error_policy,
        ctx.clone(),
        shutdown.clone(),
    );

    let token_cleaner = Controller::new(&bootstrap_tokens, settings.clone()).run(
        token_cleaner::reconcile,
        error_policy,
        ctx.clone(),
        shutdown.clone(),
    );

    let lease_namespace = config.node_lease_namespace.clone();
    let node_controller = Controller::new(&nodes, settings.clone())
        .watches(&leases, move |l: &Lease| {
            if l.metadata.namespace == lease_namespace {
                vec![ObjectKey::new("", &l.metadata.name)]
            } else {
                Vec::new()
            }
        })
        .run(
            node_lifecycle::reconcile,
            error_policy,
            ctx.clone(),
            shutdown.clone(),
        );

    // Node IPAM runs only with a cluster CIDR; otherwise it is a future that is done.
    let node_ipam_controller = {
        let cluster = config.cluster_cidr;
        let ctx = ctx.clone();
        let nodes = nodes.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        async move {
            let Some(cluster) = cluster else { return };
            info!(%cluster, "node IPAM: assigning task subnets");
            let ipam = Arc::new(node_ipam::Ipam::new(ctx, cluster));
            let deleted = ipam.clone();
            Controller::new(&nodes, settings)
                .watches(&nodes, move |n: &Node| deleted.on_change(n))
                .run(node_ipam::reconcile, error_policy, ipam, shutdown)
                .await;
        }
    };

    let tasks_of_node = ctx.clone();
    let lost_tasks = Controller::new(&tasks, settings.clone())
        .watches(&nodes, move |n: &Node| {
            // Only a node's deletion concerns its tasks (the cache already holds
            // the change: absent means deleted), not its every status write.
            let key = ObjectKey::new("", &n.metadata.name);
            if tasks_of_node.nodes.get(&key).is_some() {
                return Vec::new();
            }
            tasks_of_node
                .tasks
                .by_index(BY_NODE, &n.metadata.name)
                .iter()
                .map(|t| ObjectKey::of(t.as_ref()))
                .collect()
        })
        .run(
            node_lifecycle::reconcile_task,
            error_policy,
            ctx.clone(),
            shutdown.clone(),
        );

    let gc_tasks = gc::controller(
        &tasks,
        &tasks,
        &jobs,
        &services,
        ctx.clone(),
        settings.clone(),
    )
    .run(
        gc::reconcile::<Task>,
        error_policy,
        ctx.clone(),
        shutdown.clone(),
    );
    let gc_jobs = gc::controller(
        &jobs,
        &tasks,
        &jobs,
        &services,
        ctx.clone(),
        settings.clone(),
    )
    .run(
        gc::reconcile::<Job>,
        error_policy,
        ctx.clone(),
        shutdown.clone(),
    );
    let gc_services = gc::controller(
        &services,
        &tasks,
        &jobs,
        &services,
        ctx.clone(),
        settings.clone(),
    )
    .run(
        gc::reconcile::<Service>,
        error_policy,
        ctx.clone(),
        shutdown.clone(),
    );

    info!("controllers running");
    tokio::join!(
        job_controller,
        service_controller,
        endpoints_controller,
        endpoints_collector,
        ttl_controller,
        token_cleaner,
        node_controller,
        node_ipam_controller,
        lost_tasks,
        gc_tasks,
        gc_jobs,
        gc_services
    );
    drop(watches);
    info!("controllers stopped");
}

/// Stops the informers' watches when the manager returns, or when its future is
/// dropped (an aborted task must not leave watches running).
struct StopOnDrop(Vec<Box<dyn Fn() + Send>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for stop in &self.0 {
            stop();
        }
    }
}

/// Creates the namespace of the nodes' Leases if it is missing, so nodelets can
/// write there (they may also create it themselves).
async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta::named(name),
        ..Namespace::default()
    };
    for _ in 0..5 {
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => return,
            Err(error) if error.is_conflict() => return,
            Err(error) => {
                warn!(%error, namespace = name, "cannot create the node lease namespace; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
