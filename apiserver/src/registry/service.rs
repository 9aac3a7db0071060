//! Services: replicated long-running tasks, with the ports they serve at a
//! virtual address (`spec.clusterIP`) taken from the service range when they
//! are created and given back when they go ([`service_ips`](super::service_ips)).

use std::collections::BTreeSet;
use std::sync::Arc;

use api_types::{ClusterIp, FieldError, Resource, Service, ServiceRange, Status};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::service_ips::{REPAIR_GRACE, REPAIR_INTERVAL, ServiceIps};
use super::{Column, Hooks, Rest, Strategy, Typed};
use crate::error::{ApiError, ApiResult};
use crate::generic::GenericStore;
use crate::object;
use crate::store::ListOptions;
use crate::watch_cache::Filter;

/// The Service strategy, without the address rules (see [`rest`]).
pub fn strategy() -> Typed<Service> {
    Typed::new(vec![
        Column {
            name: "Ready",
            kind: "string",
            description: "Ready tasks of the replicas asked for",
            priority: 0,
            cell: |o| {
                json!(format!(
                    "{}/{}",
                    number(o, "/status/readyReplicas", 0),
                    number(o, "/spec/replicas", 1)
                ))
            },
        },
        Column {
            name: "Up-to-date",
            kind: "integer",
            description: "Tasks running the current template",
            priority: 0,
            cell: |o| json!(number(o, "/status/updatedReplicas", 0)),
        },
        Column {
            name: "Cluster-IP",
            kind: "string",
            description: "The Service's virtual address",
            priority: 0,
            cell: cluster_ip,
        },
        Column {
            name: "Ports",
            kind: "string",
            description: "The ports the Service serves, as PORT[:NODEPORT]/PROTOCOL",
            priority: 0,
            cell: ports,
        },
    ])
}

/// Everything the Service kind registers: its strategy, which keeps a
/// Service's address through updates that leave `spec.clusterIP` out, and its
/// hooks, which take the address from `range` and give it back.
pub fn rest(range: ServiceRange) -> Rest {
    let ips = ServiceIps::new(range);
    Rest {
        strategy: Arc::new(ServiceStrategy {
            typed: strategy(),
            ips,
        }),
        hooks: Arc::new(ServiceHooks { ips }),
        subresources: Vec::new(),
    }
}

struct ServiceStrategy {
    typed: Typed<Service>,
    ips: ServiceIps,
}

impl Strategy for ServiceStrategy {
    fn admit(&self, mut object: Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
        let old_ip = old
            .and_then(|old| old.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty());
        // A replacement that leaves the address out keeps it (Kubernetes'
        // `patchAllocatedValues`): a manifest applied again has none.
        if let Some(old_ip) = old_ip
            && object
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("clusterIP".to_owned(), json!(old_ip));
        }
        let admitted = Strategy::admit(&self.typed, object, old)?;
        let ip = admitted
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if old_ip != Some(ip)
            && let Ok(ClusterIp::Address(address)) = ClusterIp::parse(ip)
            && let Err(rule) = self.ips.check_requested(
                object::namespace(&admitted),
                object::name(&admitted),
                address,
            )
        {
            return Err(vec![FieldError::invalid("spec.clusterIP", ip, rule)]);
        }
        Ok(admitted)
    }

    fn validate_admitted(&self, object: &Value) -> Vec<FieldError> {
        Strategy::validate_admitted(&self.typed, object)
    }

    fn warnings(&self, object: &Value) -> Vec<String> {
        Strategy::warnings(&self.typed, object)
    }

    fn status_on_create(&self) -> bool {
        Strategy::status_on_create(&self.typed)
    }

    fn initial_status(&self) -> Option<Value> {
        Strategy::initial_status(&self.typed)
    }

    fn selectable_fields(&self) -> Vec<String> {
        Strategy::selectable_fields(&self.typed)
    }

    fn columns(&self) -> Vec<Column> {
        Strategy::columns(&self.typed)
    }
}

struct ServiceHooks {
    ips: ServiceIps,
}

#[async_trait]
impl Hooks for ServiceHooks {
    async fn check_write(
        &self,
        store: &GenericStore,
        object: &Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let wanted = node_ports(object);
        if wanted.is_empty() || old.is_some_and(|old| node_ports(old) == wanted) {
            return Ok(());
        }
        let namespace = object::namespace(object);
        let name = object::name(object);
        let res = store.catalog.builtin_resource::<Service>();
        let cache = &res.cache;
        // Every write finished before this one is in the cache first. (Two
        // Services created at once may still both take a port: nothing
        // allocates nodePorts until something forwards them.)
        let revision = cache
            .store_revision()
            .await
            .map_err(|e| ApiError::from_store(e, &res.group_resource(), name))?;
        if !cache.wait_for(revision, CACHE_WAIT).await {
            return Err(ApiError::internal(format!(
                "the Service cache did not reach revision {revision} in {CACHE_WAIT:?}: cannot check spec.ports[].nodePort"
            )));
        }
        let mut after: Option<String> = None;
        loop {
            let page = cache.list_page(&Filter::default(), after.as_deref(), 1_000);
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.key.clone());
            for other in &page {
                if other.namespace == namespace && other.name == name {
                    continue;
                }
                let taken: BTreeSet<i64> = node_ports(&other.value())
                    .into_iter()
                    .map(|(_, port)| port)
                    .collect();
                if let Some((i, port)) = wanted.iter().find(|(_, port)| taken.contains(port)) {
                    return Err(ApiError::from(Status::invalid(
                        &Service::info().group_kind(),
                        name,
                        &[FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            *port,
                            format!(
                                "provided port is already allocated: Service {}/{} uses it",
                                other.namespace, other.name
                            ),
                        )],
                    )));
                }
            }
        }
    }

    async fn before_create(&self, store: &GenericStore, object: &mut Value) -> ApiResult<()> {
        self.ips.take(store.store.as_ref(), object).await
    }

    async fn create_failed(&self, store: &GenericStore, object: &Value) {
        self.ips.release(store.store.as_ref(), object).await;
    }

    async fn after_remove(&self, store: &GenericStore, object: &Value) {
        self.ips.release(store.store.as_ref(), object).await;
    }
}

/// Runs the repair pass of service addresses now and every few minutes until
/// `cancel`: Services removed without their delete's hook (a namespace's
/// contents, a last finalizer removed) give their address back this way.
pub fn keep_addresses(api: Arc<GenericStore>, range: ServiceRange, cancel: CancellationToken) {
    let ips = ServiceIps::new(range);
    tokio::spawn(
        async move {
            loop {
                if let Err(error) = repair_once(&api, &ips).await {
                    warn!(%error, "service address repair failed; trying again later");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(REPAIR_INTERVAL) => {}
                }
            }
        }
        .instrument(info_span!("service-address-repair")),
    );
}

/// One repair pass over every Service (see [`ServiceIps::repair`]).
pub async fn repair_once(
    api: &GenericStore,
    ips: &ServiceIps,
) -> ApiResult<super::service_ips::RepairReport> {
    let store = api.store.as_ref();
    // The records first: a Service written after this read holds an address
    // recorded before it, which the grace keeps.
    let records = ips.records(store).await?;
    let res = api.catalog.builtin_resource::<Service>();
    let prefix = format!("{}/{}/", res.storage_group, Service::PLURAL);
    let mut services = Vec::new();
    let mut continue_token = None;
    loop {
        let page = store
            .list(
                &prefix,
                ListOptions {
                    limit: Some(1_000),
                    continue_token: continue_token.take(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| crate::error::ApiError::from_store(e, &res.group_resource(), ""))?;
        for kv in page.items {
            if let Ok(service) = object::from_stored(&kv.value, kv.mod_revision) {
                services.push(service);
            }
        }
        match page.continue_token {
            Some(token) => continue_token = Some(token),
            None => break,
        }
    }
    Ok(ips.repair(store, &services, records, REPAIR_GRACE).await)
}

/// How long a nodePort check waits for the Service cache to catch up.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The nodePorts a Service's ports ask for, with the index of each port.
fn node_ports(object: &Value) -> Vec<(usize, i64)> {
    object
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.get("nodePort")?.as_i64()?)))
        .collect()
}

fn cluster_ip(object: &Value) -> Value {
    match object.pointer("/spec/clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => json!(ip),
        _ => json!("<none>"),
    }
}

/// `80/TCP,53:30053/UDP`, as kubectl shows a Service's ports.
fn ports(object: &Value) -> Value {
    let Some(ports) = object.pointer("/spec/ports").and_then(Value::as_array) else {
        return json!("<none>");
    };
    if ports.is_empty() {
        return json!("<none>");
    }
    let cells: Vec<String> = ports
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or_default();
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    json!(cells.join(","))
}

fn number(object: &Value, pointer: &str, default: i64) -> i64 {
    object
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ip_and_ports_columns() {
        let columns = strategy().columns();
        let cell = |name: &str, o: &Value| {
            let column = columns
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no {name} column"));
            (column.cell)(o)
        };
        let svc = json!({"metadata": {"name": "web"}, "spec": {
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}],
        }});
        assert_eq!(cell("Cluster-IP", &svc), json!("10.96.0.10"));
        assert_eq!(cell("Ports", &svc), json!("80/TCP,53:30053/UDP"));
        let bare = json!({"metadata": {"name": "web"}});
        assert_eq!(cell("Cluster-IP", &bare), json!("<none>"));
        assert_eq!(cell("Ports", &bare), json!("<none>"));
        let headless = json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "None"}});
        assert_eq!(cell("Cluster-IP", &headless), json!("None"));
    }
}
