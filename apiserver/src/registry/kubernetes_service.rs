//! The `kubernetes` Service in `default`: the API servers themselves, at the
//! service range's first address, port 443, as in Kubernetes — for clients
//! inside tasks.
//!
//! Every API server given an advertised address (`--advertise-address`)
//! records it under `apiservers/IP:PORT` with the time, every
//! [`RENEW_INTERVAL`], makes the Service if it is missing, and writes the
//! Service's Endpoints from the records younger than [`EXPIRY`] (deleting
//! older ones: an API server that stopped without removing its own), as
//! Kubernetes' lease endpoint reconciler does. An API server that stops
//! removes its record and writes the Endpoints without it. The endpoints
//! controller leaves this Service's Endpoints to the API servers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api_types::kinds::service::{API_SERVER_SERVICE_NAME, API_SERVER_SERVICE_NAMESPACE};
use api_types::{Endpoints, Service, ServiceRange};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::error::ApiResult;
use crate::generic::{GenericStore, Part, WriteOptions};
use crate::store::{self, ListOptions};

/// Where the API servers' advertised addresses are recorded.
pub const KEY_PREFIX: &str = "apiservers/";

/// How often an API server renews its record and rewrites the Endpoints.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// A record not renewed for this long is an API server gone.
pub const EXPIRY: Duration = Duration::from_secs(30);

/// The field manager of the API servers' writes.
const MANAGER: &str = "loom-apiserver";

fn options() -> WriteOptions {
    WriteOptions {
        field_manager: MANAGER.to_owned(),
        ..WriteOptions::default()
    }
}

/// Keeps this API server in the `kubernetes` Service's Endpoints until
/// `cancel`, then takes it out.
pub fn keep(
    api: Arc<GenericStore>,
    range: ServiceRange,
    advertise: SocketAddr,
    cancel: CancellationToken,
) {
    tokio::spawn(
        async move {
            loop {
                if let Err(error) = reconcile(&api, range, Some(advertise)).await {
                    warn!(%error, "cannot keep the kubernetes Service's endpoints; trying again");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(RENEW_INTERVAL) => {}
                }
            }
            let key = format!("{KEY_PREFIX}{advertise}");
            if let Err(error) = api.store.delete(&key, None).await
                && !matches!(error, store::Error::NotFound { .. })
            {
                warn!(%error, "cannot remove this API server's address record");
            }
            if let Err(error) = reconcile(&api, range, None).await {
                warn!(%error, "cannot take this API server out of the kubernetes Service's endpoints");
            }
        }
        .instrument(info_span!("kubernetes-service", %advertise)),
    );
}

/// One round: renews `advertise`'s record (if given), makes the Service if
/// missing, and writes the Endpoints from the live records.
pub async fn reconcile(
    api: &GenericStore,
    range: ServiceRange,
    advertise: Option<SocketAddr>,
) -> ApiResult<()> {
    let now = Utc::now();
    if let Some(address) = advertise {
        renew(api, address, now).await?;
    }
    let live = live_addresses(api, now).await?;
    ensure_service(
        api,
        range,
        advertise.or_else(|| live.iter().next().copied()),
    )
    .await?;
    write_endpoints(api, &live).await
}

async fn renew(api: &GenericStore, address: SocketAddr, now: DateTime<Utc>) -> ApiResult<()> {
    let key = format!("{KEY_PREFIX}{address}");
    let value =
        Bytes::from(json!({"renewed": now.to_rfc3339_opts(SecondsFormat::Secs, true)}).to_string());
    let written = match api.store.get(&key).await {
        Ok(Some(kv)) => api
            .store
            .update(&key, value, kv.mod_revision)
            .await
            .map(drop),
        Ok(None) => api.store.create(&key, value).await.map(drop),
        Err(error) => Err(error),
    };
    match written {
        // Another round of this server's wrote it meanwhile: fresh enough.
        Ok(()) | Err(store::Error::Conflict { .. } | store::Error::AlreadyExists { .. }) => Ok(()),
        Err(error) => Err(crate::error::ApiError::internal(format!(
            "cannot record this API server's address: {error}"
        ))),
    }
}

/// The addresses of the API servers whose records are fresh; stale records
/// are deleted (conditionally: a server renewing it meanwhile wins).
async fn live_addresses(api: &GenericStore, now: DateTime<Utc>) -> ApiResult<BTreeSet<SocketAddr>> {
    let page = api
        .store
        .list(KEY_PREFIX, ListOptions::default())
        .await
        .map_err(|e| crate::error::ApiError::internal(format!("cannot list API servers: {e}")))?;
    let mut live = BTreeSet::new();
    for kv in page.items {
        let Some(address) = kv
            .key
            .strip_prefix(KEY_PREFIX)
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let renewed = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|v| v.get("renewed")?.as_str().map(str::to_owned))
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
        let fresh = renewed.is_some_and(|at| {
            now.signed_duration_since(at.with_timezone(&Utc))
                .to_std()
                .map_or(true, |age| age < EXPIRY)
        });
        if fresh {
            live.insert(address);
        } else if let Err(error) = api.store.delete(&kv.key, Some(kv.mod_revision)).await
            && !matches!(
                error,
                store::Error::NotFound { .. } | store::Error::Conflict { .. }
            )
        {
            warn!(%error, %address, "cannot remove a stale API server address");
        }
    }
    Ok(live)
}

/// Makes the Service if it is missing; one that exists is left as it is.
async fn ensure_service(
    api: &GenericStore,
    range: ServiceRange,
    target: Option<SocketAddr>,
) -> ApiResult<()> {
    let services = api.catalog.builtin_resource::<Service>();
    let Some(target) = target else {
        return Ok(());
    };
    match api
        .get(
            &services,
            API_SERVER_SERVICE_NAMESPACE,
            API_SERVER_SERVICE_NAME,
        )
        .await
    {
        Ok(_) => return Ok(()),
        Err(error) if error.code() == 404 => {}
        Err(error) => return Err(error),
    }
    let service = json!({
        "apiVersion": "loom.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": API_SERVER_SERVICE_NAME,
            "namespace": API_SERVER_SERVICE_NAMESPACE,
            "labels": {"component": "apiserver", "provider": "loom"},
        },
        "spec": {
            // The API servers are not tasks: the Service runs none.
            "replicas": 0,
            "template": {"spec": {"image": "loom-apiserver"}},
            "clusterIP": range.api_server_address().to_string(),
            "ports": [{"name": "https", "port": 443, "targetPort": target.port(), "protocol": "TCP"}],
        },
    });
    match api
        .create(
            &services,
            Some(API_SERVER_SERVICE_NAMESPACE),
            service,
            &options(),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Another API server made it first.
        Err(error) if error.code() == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The Endpoints of the live API servers (one subset a port).
fn endpoints_of(live: &BTreeSet<SocketAddr>) -> Value {
    let mut by_port: std::collections::BTreeMap<u16, Vec<Value>> = Default::default();
    for address in live {
        by_port
            .entry(address.port())
            .or_default()
            .push(json!({"ip": address.ip().to_string()}));
    }
    let subsets: Vec<Value> = by_port
        .into_iter()
        .map(|(port, addresses)| {
            json!({"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    json!(subsets)
}

async fn write_endpoints(api: &GenericStore, live: &BTreeSet<SocketAddr>) -> ApiResult<()> {
    let res = api.catalog.builtin_resource::<Endpoints>();
    let subsets = endpoints_of(live);
    let current = match api
        .get(&res, API_SERVER_SERVICE_NAMESPACE, API_SERVER_SERVICE_NAME)
        .await
    {
        Ok(current) => Some(current),
        Err(error) if error.code() == 404 => None,
        Err(error) => return Err(error),
    };
    let wanted_subsets =
        |object: &Value| object.get("subsets").cloned().unwrap_or_else(|| json!([]));
    match current {
        Some(current) if wanted_subsets(&current) == subsets => Ok(()),
        Some(mut current) => {
            current["subsets"] = subsets;
            match api
                .update(
                    &res,
                    API_SERVER_SERVICE_NAMESPACE,
                    API_SERVER_SERVICE_NAME,
                    current,
                    Part::Main,
                    &options(),
                )
                .await
            {
                Ok(_) => Ok(()),
                // Another API server wrote it: the next round looks again.
                Err(error) if error.code() == 409 => Ok(()),
                Err(error) => Err(error),
            }
        }
        None if live.is_empty() => Ok(()),
        None => {
            let endpoints = json!({
                "apiVersion": "loom.dev/v1",
                "kind": "Endpoints",
                "metadata": {"name": API_SERVER_SERVICE_NAME, "namespace": API_SERVER_SERVICE_NAMESPACE},
                "subsets": subsets,
            });
            match api
                .create(
                    &res,
                    Some(API_SERVER_SERVICE_NAMESPACE),
                    endpoints,
                    &options(),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(error) if error.code() == 409 => Ok(()),
                Err(error) => Err(error),
            }
        }
    }
}
