//! Running the API server: opening the store, serving HTTP, shutting down cleanly.

use std::sync::Arc;
use std::time::Duration;

use api_types::{Namespace, Resource};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission;
use crate::catalog::{CacheConfig, Catalog};
use crate::generic::{GenericStore, WriteOptions};
use crate::http::{AppState, router};
use crate::limits::{Caps, Limits};
use crate::metrics::{MeteredStore, Metrics};
use crate::registry::namespace::BUILT_IN;
use crate::store::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Store};

/// Where the store is: `sqlite:PATH` or `etcd://HOST:PORT[,HOST:PORT…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded store in this file.
    Sqlite(std::path::PathBuf),
    /// etcd at these client URLs.
    Etcd(Vec<String>),
}

/// What is wrong with how the API server was asked to run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `sqlite:` without a path.
    #[error("sqlite: needs a file path, e.g. sqlite:/var/lib/loom/loom.db")]
    SqliteWithoutPath,
    /// `etcd://` without a host.
    #[error("etcd:// needs at least one HOST:PORT")]
    EtcdWithoutHosts,
    /// A store URL of no known scheme.
    #[error("unsupported store {0:?}: use sqlite:PATH or etcd://HOST:PORT[,HOST:PORT]")]
    UnsupportedStore(String),
    /// A count limit of 0.
    #[error("{0} must be at least 1")]
    ZeroCount(&'static str),
    /// A time limit of 0.
    #[error("{0} must be more than 0")]
    ZeroDuration(&'static str),
    /// A limit of the HTTP listener.
    #[error(transparent)]
    Listener(#[from] loom_listener::LimitsError),
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct OpenStoreError(#[source] pub crate::store::Error);

/// A backend's own words, without the store's prefix.
fn describe(error: &crate::store::Error) -> String {
    match error {
        crate::store::Error::Backend(why) => why.clone(),
        other => other.to_string(),
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = ConfigError;

    fn from_str(url: &str) -> Result<Self, ConfigError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(ConfigError::SqliteWithoutPath);
            }
            return Ok(StoreUrl::Sqlite(path.into()));
        }
        if let Some(hosts) = url.strip_prefix("etcd://") {
            let endpoints: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("http://{h}"))
                .collect();
            if endpoints.is_empty() {
                return Err(ConfigError::EtcdWithoutHosts);
            }
            return Ok(StoreUrl::Etcd(endpoints));
        }
        Err(ConfigError::UnsupportedStore(url.to_owned()))
    }
}

/// Opens the store a URL names; an etcd store compacts etcd's history every
/// `etcd_compaction_interval` with the other API servers (zero: never).
pub async fn open_store(
    url: &StoreUrl,
    prefix: &str,
    etcd_compaction_interval: Duration,
) -> Result<Arc<dyn Store>, OpenStoreError> {
    open_store_with_tls(url, prefix, etcd_compaction_interval, None).await
}

/// [`open_store`], reaching etcd over TLS with a client certificate when
/// `etcd_tls` is given.
pub async fn open_store_with_tls(
    url: &StoreUrl,
    prefix: &str,
    etcd_compaction_interval: Duration,
    etcd_tls: Option<crate::store::EtcdTls>,
) -> Result<Arc<dyn Store>, OpenStoreError> {
    match url {
        StoreUrl::Sqlite(path) => EmbeddedStore::open(EmbeddedOptions::new(path))
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(OpenStoreError),
        StoreUrl::Etcd(endpoints) => {
            let endpoints = match &etcd_tls {
                Some(_) => endpoints
                    .iter()
                    .map(|e| e.replacen("http://", "https://", 1))
                    .collect(),
                None => endpoints.clone(),
            };
            let mut options = EtcdOptions::new(endpoints);
            options.tls = etcd_tls;
            options.prefix = prefix.to_owned();
            options.compaction_interval = etcd_compaction_interval;
            EtcdStore::connect(options)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(OpenStoreError)
        }
    }
}

/// How the API server runs, with the limits that keep one client from taking
/// the server's memory, connections or watch slots from the others.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch cache sizes and bookmark interval.
    pub cache: CacheConfig,
    /// A list without `limit` that would return more objects than this is
    /// refused (413): such clients must page with `limit` and `continue`.
    pub max_list_objects: usize,
    /// Concurrent watches of one user (of one source address when requests
    /// carry no user); more get 429. `system:masters` is exempt.
    pub max_watches_per_user: usize,
    /// Concurrent watches in all; more get 429.
    pub max_watches: usize,
    /// Mutating requests (create, update, patch, delete) in flight in all;
    /// more get 429 (Kubernetes' `--max-mutating-requests-inflight`).
    /// `system:masters` is exempt, as in Kubernetes.
    pub max_mutating_requests_inflight: usize,
    /// Mutating requests in flight of one user; more get 429.
    pub max_mutating_requests_inflight_per_user: usize,
    /// Other requests in flight in all, watches and followed logs aside; more
    /// get 429 (Kubernetes' `--max-requests-inflight`).
    pub max_requests_inflight: usize,
    /// A watch without `timeoutSeconds` ends after a random time between this
    /// and twice this (Kubernetes' `--min-request-timeout`), so long-lived
    /// watches spread over restarts and load balancers.
    pub min_watch_timeout: Duration,
    /// Operations in one JSON Patch.
    pub max_patch_operations: usize,
    /// Time a client has to send a request's headers (also how long an idle
    /// keep-alive connection is kept); at most 30 s.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body; 408 after it.
    pub body_read_timeout: Duration,
    /// Open connections; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// The memory limit given at creation to a task that asks for none, so the
    /// scheduler counts it and the node enforces it (`None`: no default; the
    /// `loom apiserver` flag defaults to 512Mi).
    pub default_task_memory: Option<api_types::Quantity>,
    /// Serve HTTPS with this configuration ([`loom_listener::tls::server_config`]:
    /// the serving certificate, its key and the CA of client certificates);
    /// `None` serves plain HTTP.
    pub tls: Option<Arc<loom_listener::tls::ServerConfig>>,
    /// How requests are authenticated (client certificates, token file,
    /// service-account tokens; whether requests without a credential pass).
    pub authentication: crate::authn::Authentication,
    /// How requests are authorized: RBAC (the default) or `AlwaysAllow`.
    pub authorization: crate::authz::Authorization,
    /// Write an audit log (`None`: none).
    pub audit: Option<crate::audit::Config>,
    /// How nodelets serving TLS are called (`None`: only plain-HTTP ones are).
    pub nodelet_client: Option<crate::logs::NodeletClientTls>,
    /// Sign approved CertificateSigningRequests with this CA, and serve its
    /// certificate to joining nodes (`None`: requests stay unsigned).
    pub cluster_signing: Option<crate::certificates::Signing>,
    /// The range Services' virtual addresses (`spec.clusterIP`) come from
    /// (`--service-cidr`); every API server on one store must be given the same.
    pub service_cidr: api_types::ServiceRange,
    /// How long an Event is kept after it was last seen (Kubernetes'
    /// `--event-ttl`, 1 h by default); zero keeps them for ever.
    pub event_ttl: Duration,
    /// The address tasks reach this API server at (`--advertise-address` and
    /// the port served on): listed in the Endpoints of the `kubernetes`
    /// Service in `default`, which is made if missing (`None`: neither).
    pub advertise_address: Option<std::net::SocketAddr>,
}

/// `10.96.0.0/16`, [`api_types::kinds::service::DEFAULT_SERVICE_CIDR`].
pub fn default_service_cidr() -> api_types::ServiceRange {
    api_types::ServiceRange::parse(api_types::kinds::service::DEFAULT_SERVICE_CIDR)
        .unwrap_or_else(|why| panic!("the default service range: {why}"))
}

/// The longest header read timeout allowed.
pub use loom_listener::MAX_HEADER_READ_TIMEOUT;

impl Default for Config {
    fn default() -> Self {
        Config {
            cache: CacheConfig::default(),
            max_list_objects: 250_000,
            max_watches_per_user: 2_000,
            max_watches: 20_000,
            max_mutating_requests_inflight: 200,
            max_mutating_requests_inflight_per_user: 100,
            max_requests_inflight: 400,
            min_watch_timeout: Duration::from_secs(30 * 60),
            max_patch_operations: 10_000,
            header_read_timeout: MAX_HEADER_READ_TIMEOUT,
            body_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            default_task_memory: None,
            tls: None,
            authentication: crate::authn::Authentication::default(),
            authorization: crate::authz::Authorization::Rbac,
            audit: None,
            nodelet_client: None,
            cluster_signing: None,
            service_cidr: default_service_cidr(),
            event_ttl: crate::registry::event::DEFAULT_EVENT_TTL,
            advertise_address: None,
        }
    }
}

impl Config {
    /// What the HTTP listener allows each connection.
    fn listener_limits(&self) -> loom_listener::Limits {
        loom_listener::Limits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            ..loom_listener::Limits::default()
        }
    }

    /// The caps of watches and requests in flight.
    fn caps(&self) -> Caps {
        Caps {
            watches_per_user: self.max_watches_per_user,
            watches: self.max_watches,
            mutating_per_user: self.max_mutating_requests_inflight_per_user,
            mutating: self.max_mutating_requests_inflight,
            read_only: self.max_requests_inflight,
        }
    }

    /// Checks every limit is usable, naming the one that is not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("max_list_objects", self.max_list_objects),
            ("max_watches_per_user", self.max_watches_per_user),
            ("max_watches", self.max_watches),
            (
                "max_mutating_requests_inflight",
                self.max_mutating_requests_inflight,
            ),
            (
                "max_mutating_requests_inflight_per_user",
                self.max_mutating_requests_inflight_per_user,
            ),
            ("max_requests_inflight", self.max_requests_inflight),
            ("max_patch_operations", self.max_patch_operations),
            ("max_connections", self.max_connections),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        self.listener_limits()
            .validate()
            .map_err(ConfigError::Listener)?;
        for (name, value) in [
            ("body_read_timeout", self.body_read_timeout),
            ("min_watch_timeout", self.min_watch_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

/// Serves the API on `listener` over `store` until `shutdown` is cancelled.
pub async fn run(
    store: Arc<dyn Store>,
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    config
        .validate()
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
    let metrics = Metrics::new();
    let auditor = match &config.audit {
        Some(audit) => Some(Arc::new(crate::audit::Auditor::start(audit, &metrics)?)),
        None => None,
    };
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, metrics.clone()));
    let caches = shutdown.child_token();
    let catalog = Catalog::new(store.clone(), config.cache.clone(), caches.clone());
    catalog.builtin::<api_types::Service>(
        crate::registry::service::rest(config.service_cidr)
            .subresource(crate::registry::scale::ServiceScale),
    );
    catalog.follow_definitions();
    let authorizer = crate::authz::Authorizer::start(config.authorization, &catalog);
    let admission =
        admission::Chain::standard(store.clone(), catalog.clone(), config.default_task_memory)
            .with(Arc::new(crate::authz::Escalation::new(authorizer.clone())))
            .with(crate::authz::node::NodeRestriction::new(
                authorizer.mode() == crate::authz::Authorization::Rbac,
            ))
            .with(crate::certificates::CertificateAdmission::new(
                config.cluster_signing.clone(),
            ));
    info!(steps = ?admission.steps(), "admission chain");
    let api = Arc::new(GenericStore {
        store,
        catalog,
        admission: Arc::new(admission),
        max_list_objects: config.max_list_objects,
        max_patch_operations: config.max_patch_operations,
        nodelet_client: crate::logs::nodelet_client(config.nodelet_client.as_ref())
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?,
    });
    crate::authz::bootstrap::ensure(&api).await;
    ensure_namespaces(&api).await;
    crate::registry::service_account::ensure_built_in_defaults(&api).await;
    crate::registry::service_account::keep_default_accounts(api.clone(), caches.clone());
    crate::registry::service::keep_addresses(api.clone(), config.service_cidr, caches.clone());
    if !config.event_ttl.is_zero() {
        crate::registry::event::keep_expiring(api.clone(), config.event_ttl, caches.clone());
    }
    if let Some(advertise) = config.advertise_address {
        crate::registry::kubernetes_service::keep(
            api.clone(),
            config.service_cidr,
            advertise,
            caches.clone(),
        );
    }
    let authenticator = crate::authn::Authenticator::new(
        config.authentication.clone(),
        api.catalog.clone(),
        api.store.clone(),
        metrics.clone(),
    );
    let state = AppState {
        authenticator,
        authorizer,
        limits: Limits::new(config.caps(), metrics.clone()),
        api,
        metrics,
        min_watch_timeout: config.min_watch_timeout,
        body_read_timeout: config.body_read_timeout,
    };
    let app = router(state.clone()).merge(crate::snapshot::router(&state));
    let app = crate::certificates::serve_cluster_ca(
        app,
        config
            .cluster_signing
            .as_ref()
            .map(|signing| signing.ca.cert_pem().to_owned()),
    );
    // The audit layer is the outermost: it sees every answer, 401s and 429s too.
    let app = match auditor {
        Some(auditor) => app.layer(axum::middleware::from_fn_with_state(
            auditor,
            crate::audit::audit,
        )),
        None => app,
    };
    let limits = config.listener_limits();
    match config.tls {
        Some(tls) => {
            info!(address = %listener.local_addr()?, "API server listening (HTTPS)");
            loom_listener::serve_tls(listener, app, limits, tls, shutdown).await;
        }
        None => {
            info!(address = %listener.local_addr()?, "API server listening");
            loom_listener::serve(listener, app, limits, shutdown).await;
        }
    }
    caches.cancel();
    Ok(())
}

/// Creates the namespaces every cluster has, if they are missing.
async fn ensure_namespaces(api: &GenericStore) {
    let namespaces = api.catalog.builtin_resource::<Namespace>();
    for name in BUILT_IN {
        let object = json!({
            "apiVersion": Namespace::api_version(),
            "kind": Namespace::KIND,
            "metadata": {"name": name},
        });
        let options = WriteOptions {
            field_manager: "loom-apiserver".to_owned(),
            ..Default::default()
        };
        for attempt in 0..50 {
            match api
                .create(&namespaces, None, object.clone(), &options)
                .await
            {
                Ok(_) => break,
                Err(error) if error.code() == 409 => break,
                Err(error) => {
                    if attempt % 10 == 0 {
                        warn!(namespace = name, error = %error.0.message, "cannot create a built-in namespace yet");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
