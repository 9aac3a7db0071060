//! Running the API server: opening the store, serving HTTP, shutting down cleanly.

use std::sync::Arc;
use std::time::Duration;

use api_types::{Namespace, Resource};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::{CacheConfig, Catalog};
use crate::handlers::{Api, WriteOptions};
use crate::http::{AppState, router};
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

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path, e.g. sqlite:/var/lib/loom/loom.db".to_owned(),
                );
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
                return Err("etcd:// needs at least one HOST:PORT".to_owned());
            }
            return Ok(StoreUrl::Etcd(endpoints));
        }
        Err(format!(
            "unsupported store {url:?}: use sqlite:PATH or etcd://HOST:PORT[,HOST:PORT]"
        ))
    }
}

fn why(error: crate::store::Error) -> String {
    match error {
        crate::store::Error::Backend(why) => why,
        other => other.to_string(),
    }
}

/// Opens the store a URL names.
pub async fn open_store(url: &StoreUrl, prefix: &str) -> Result<Arc<dyn Store>, String> {
    match url {
        StoreUrl::Sqlite(path) => EmbeddedStore::open(EmbeddedOptions::new(path))
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(why),
        StoreUrl::Etcd(endpoints) => {
            let mut options = EtcdOptions::new(endpoints.clone());
            options.prefix = prefix.to_owned();
            EtcdStore::connect(options)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(why)
        }
    }
}

/// How the API server runs.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Watch cache sizes and bookmark interval.
    pub cache: CacheConfig,
}

/// Serves the API on `listener` over `store` until `shutdown` is cancelled.
pub async fn run(
    store: Arc<dyn Store>,
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = Metrics::new();
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, metrics.clone()));
    let caches = shutdown.child_token();
    let catalog = Catalog::new(store.clone(), config.cache.clone(), caches.clone());
    catalog.follow_definitions();
    let api = Arc::new(Api { store, catalog });
    ensure_namespaces(&api).await;
    let app = router(AppState { api, metrics });
    info!(address = %listener.local_addr()?, "API server listening");
    let stop = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    caches.cancel();
    served
}

/// Creates the namespaces every cluster has, if they are missing.
async fn ensure_namespaces(api: &Api) {
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
