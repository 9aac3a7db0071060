//! The endpoints controller: for every Service, an Endpoints of the same name
//! listing the addresses of its running tasks — ready ones in `addresses`, the
//! others in `notReadyAddresses` — with the task ports its Service ports lead to.
//!
//! A Service's tasks are those of its namespace labelled `loom.dev/service=NAME`
//! (every task the Service controller makes; a task a user labels so joins
//! too), and those it controls (a Service whose name is too long for a label
//! value). A task counts once it runs and has an address on the task network
//! (`status.taskIP`); a task being deleted or finished is left out at once, so
//! traffic stops going to it before it stops. A named `targetPort` is resolved
//! in each task's own `ports`: tasks that give one name different numbers (in
//! a rollout) land in different subsets, as Kubernetes' controller does; a task
//! that has none of the Service's ports is left out. The result is sorted, so
//! the same tasks always give the same object, and written only when it changes.
//!
//! The `kubernetes` Service in `default` is left alone: the API servers write
//! its Endpoints (their own addresses).
//!
//! The Endpoints is owned by its Service (a controller ownerReference). The
//! garbage collector looks after Tasks, Jobs and Services only, so this module
//! finishes the collection of Endpoints itself: one whose owning Service is
//! gone (or is another Service of that name now) is deleted, with its uid as a
//! precondition. Nothing else is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use api_types::kinds::endpoints::MAX_ENDPOINT_ADDRESSES;
use api_types::kinds::service::{API_SERVER_SERVICE_NAME, API_SERVER_SERVICE_NAMESPACE};
use api_types::well_known::LABEL_SERVICE;
use api_types::{
    EndpointAddress, EndpointPort, EndpointSubset, EndpointTargetRef, Endpoints, ObjectMeta,
    OwnerReference, Resource, Service, Task, TaskPhase,
};
use client::{Action, Api, Client, DeleteParams, ObjectKey, PostParams, Store};
use tracing::{info, warn};

use crate::service::is_ready;
use crate::{Error, Result, at_least, key_of, observe};

/// Task index: `namespace/name` of each Service the task belongs to.
pub const BY_SERVICE: &str = "service";

/// The annotation on an Endpoints that held more addresses than it may
/// (Kubernetes' `endpoints.kubernetes.io/over-capacity`).
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// The keys ([`BY_SERVICE`]) of the Services a task belongs to.
pub fn service_keys(task: &Task) -> Vec<String> {
    let namespace = &task.metadata.namespace;
    let mut keys = BTreeSet::new();
    if let Some(name) = task.metadata.labels.get(LABEL_SERVICE) {
        keys.insert(format!("{namespace}/{name}"));
    }
    if let Some(owner) = task.metadata.controller_ref()
        && owner.kind == Service::KIND
        && owner.api_version == Service::api_version()
    {
        keys.insert(format!("{namespace}/{}", owner.name));
    }
    keys.into_iter().collect()
}

/// The caches and client the endpoints controller uses.
#[derive(Clone, Debug)]
pub struct Context {
    /// The API.
    pub client: Client,
    /// Every Task, indexed [`BY_SERVICE`].
    pub tasks: Store<Task>,
    /// Every Service.
    pub services: Store<Service>,
    /// Every Endpoints.
    pub endpoints: Store<Endpoints>,
}

impl Context {
    async fn wait_ready(&self) {
        self.tasks.wait_ready().await;
        self.services.wait_ready().await;
        self.endpoints.wait_ready().await;
    }
}

/// Whether a task's address may be listed: it runs, has an address, and is
/// neither being deleted nor finished.
fn listed(task: &Task) -> bool {
    task.metadata.deletion_timestamp.is_none()
        && task.phase() == TaskPhase::Running
        && task.status.as_ref().is_some_and(|s| !s.task_ip.is_empty())
}

fn address(task: &Task) -> EndpointAddress {
    let status = task.status.as_ref();
    let node = if task.spec.node_name.is_empty() {
        status.map(|s| s.node_name.clone()).unwrap_or_default()
    } else {
        task.spec.node_name.clone()
    };
    EndpointAddress {
        ip: status.map(|s| s.task_ip.clone()).unwrap_or_default(),
        node_name: node,
        target_ref: Some(EndpointTargetRef {
            kind: Task::KIND.to_owned(),
            name: task.metadata.name.clone(),
            namespace: task.metadata.namespace.clone(),
            uid: task.metadata.uid.clone(),
        }),
    }
}

/// The subsets of `service` from `tasks` (its tasks, in any order): sorted,
/// deterministic, at most [`MAX_ENDPOINT_ADDRESSES`] addresses (ready ones
/// first); the flag says whether some were left out for that limit.
pub fn subsets(service: &Service, tasks: &[Arc<Task>]) -> (Vec<EndpointSubset>, bool) {
    // Addresses by the ports they serve: (ready, not ready).
    type Group = (BTreeSet<EndpointAddress>, BTreeSet<EndpointAddress>);
    let mut groups: BTreeMap<Vec<EndpointPort>, Group> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for task in tasks.iter().filter(|t| listed(t)) {
        if !seen.insert(&task.metadata.uid) {
            continue;
        }
        let mut ports: Vec<EndpointPort> = service
            .spec
            .ports
            .iter()
            .filter_map(|port| {
                Some(EndpointPort {
                    name: port.name.clone(),
                    port: port.resolve_target(&task.spec)?,
                    protocol: Some(port.protocol()),
                })
            })
            .collect();
        if ports.is_empty() && !service.spec.ports.is_empty() {
            continue;
        }
        ports.sort();
        let group = groups.entry(ports).or_default();
        if is_ready(task) {
            group.0.insert(address(task));
        } else {
            group.1.insert(address(task));
        }
    }
    // Within the limit: every ready address before any not-ready one.
    let mut room = MAX_ENDPOINT_ADDRESSES;
    let mut truncated = false;
    let take = |set: BTreeSet<EndpointAddress>, room: &mut usize| {
        let kept: Vec<EndpointAddress> = set.into_iter().take(*room).collect();
        *room -= kept.len();
        kept
    };
    let mut staged: Vec<(
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        BTreeSet<EndpointAddress>,
    )> = Vec::new();
    for (ports, (ready, not_ready)) in groups {
        let count = ready.len();
        let kept = take(ready, &mut room);
        truncated |= kept.len() < count;
        staged.push((ports, kept, not_ready));
    }
    let mut subsets = Vec::new();
    for (ports, addresses, not_ready_set) in staged {
        let count = not_ready_set.len();
        let not_ready_addresses = take(not_ready_set, &mut room);
        truncated |= not_ready_addresses.len() < count;
        if addresses.is_empty() && not_ready_addresses.is_empty() {
            continue;
        }
        subsets.push(EndpointSubset {
            addresses,
            not_ready_addresses,
            ports,
        });
    }
    (subsets, truncated)
}

/// The Endpoints `service` should have.
pub fn desired(service: &Service, tasks: &[Arc<Task>]) -> Endpoints {
    let (subsets, truncated) = subsets(service, tasks);
    let mut annotations = BTreeMap::new();
    if truncated {
        annotations.insert(ANNOTATION_OVER_CAPACITY.to_owned(), "truncated".to_owned());
    }
    Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            annotations,
            owner_references: vec![owner(service)],
            ..ObjectMeta::default()
        },
        subsets,
        ..Endpoints::default()
    }
}

fn owner(service: &Service) -> OwnerReference {
    OwnerReference {
        // The collector does not wait on Endpoints: nothing to block.
        block_owner_deletion: None,
        ..OwnerReference::to(service, true)
    }
}

/// Whether `current` says what `wanted` does (subsets, the over-capacity
/// mark, this Service as its owner).
fn up_to_date(current: &Endpoints, wanted: &Endpoints) -> bool {
    current.subsets == wanted.subsets
        && current.metadata.annotations.get(ANNOTATION_OVER_CAPACITY)
            == wanted.metadata.annotations.get(ANNOTATION_OVER_CAPACITY)
        && current.metadata.owner_references == wanted.metadata.owner_references
}

/// Writes the Endpoints of one Service.
pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = &service.metadata.namespace;
    let name = &service.metadata.name;
    if (namespace.as_str(), name.as_str())
        == (API_SERVER_SERVICE_NAMESPACE, API_SERVER_SERVICE_NAME)
    {
        // The API servers write their own Service's Endpoints.
        return Ok(Action::await_change());
    }
    ctx.wait_ready().await;
    let tasks = ctx
        .tasks
        .by_index(BY_SERVICE, &format!("{namespace}/{name}"));
    let tasks: Vec<Arc<Task>> = tasks
        .into_iter()
        .filter(|t| t.metadata.namespace == *namespace)
        .collect();
    let wanted = desired(&service, &tasks);
    let key = ObjectKey::of(service.as_ref());
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    let written = match ctx.endpoints.get(&key) {
        Some(current) if up_to_date(&current, &wanted) => return Ok(Action::await_change()),
        Some(current) => {
            let mut next = (*current).clone();
            next.subsets = wanted.subsets;
            next.metadata
                .owner_references
                .retain(|r| !(r.kind == Service::KIND && r.api_version == Service::api_version()));
            next.metadata.owner_references.push(owner(&service));
            match wanted.metadata.annotations.get(ANNOTATION_OVER_CAPACITY) {
                Some(mark) => {
                    next.metadata
                        .annotations
                        .insert(ANNOTATION_OVER_CAPACITY.to_owned(), mark.clone());
                }
                None => {
                    next.metadata.annotations.remove(ANNOTATION_OVER_CAPACITY);
                }
            }
            // Conditioned on the cached copy's resourceVersion: a stale cache
            // costs a conflict and a retry, never a lost write.
            api.replace(name, &PostParams::default(), &next)
                .await
                .map_err(Error::api("update endpoints", key_of(service.as_ref())))?
        }
        None => match api.create(&PostParams::default(), &wanted).await {
            Ok(created) => created,
            // In the API, not yet in the cache: the cache's event reconciles again.
            Err(error) if error.is_conflict() => return Ok(Action::await_change()),
            Err(error) => {
                return Err(Error::api("create endpoints", key_of(service.as_ref()))(
                    error,
                ));
            }
        },
    };
    if written
        .metadata
        .annotations
        .contains_key(ANNOTATION_OVER_CAPACITY)
    {
        warn!(service = %key_of(service.as_ref()), limit = MAX_ENDPOINT_ADDRESSES, "the service has more addresses than one Endpoints holds");
    }
    let version = written.metadata.resource_version.clone();
    observe(&ctx.endpoints, &key, |e| {
        e.is_some_and(|e| at_least(e, &version))
    })
    .await;
    Ok(Action::await_change())
}

/// Deletes an Endpoints whose owning Service is gone: the garbage collection
/// of Endpoints (see the module's note).
pub async fn collect(endpoints: Arc<Endpoints>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wait_ready().await;
    let meta = &endpoints.metadata;
    let Some(owner) = meta.owner_references.iter().find(|r| {
        r.controller == Some(true)
            && r.kind == Service::KIND
            && r.api_version == Service::api_version()
    }) else {
        return Ok(Action::await_change());
    };
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let service_key = ObjectKey::new(&meta.namespace, &owner.name);
    if ctx
        .services
        .get(&service_key)
        .is_some_and(|s| s.metadata.uid == owner.uid)
    {
        return Ok(Action::await_change());
    }
    // The Service's watch may lag: ask the API before deleting.
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &meta.namespace);
    let service = services
        .get_opt(&owner.name)
        .await
        .map_err(Error::api("get service", service_key.to_string()))?;
    if service.is_some_and(|s| s.metadata.uid == owner.uid) {
        return Ok(Action::await_change());
    }
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &meta.namespace);
    let params = DeleteParams {
        preconditions: Some(client::api::Preconditions {
            uid: Some(meta.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&meta.name, &params).await {
        Ok(_) => {
            info!(endpoints = %key_of(endpoints.as_ref()), "deleted endpoints whose service is gone");
        }
        Err(error) if error.is_not_found() || error.is_conflict() => {}
        Err(error) => {
            return Err(Error::api("delete endpoints", key_of(endpoints.as_ref()))(
                error,
            ));
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": {
                "template": {"spec": {"image": "web", "ports": [{"name": "http", "containerPort": 8080}]}},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "metrics", "port": 9090, "targetPort": 9100},
                ],
            },
        }))
        .unwrap()
    }

    fn task(name: &str, phase: &str, ip: &str, ready: bool, http: i32) -> Arc<Task> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                             "labels": {LABEL_SERVICE: "web"}},
                "spec": {"image": "web", "nodeName": "n1",
                         "ports": [{"name": "http", "containerPort": http}]},
                "status": {"phase": phase, "taskIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap(),
        )
    }

    fn ips(addresses: &[EndpointAddress]) -> Vec<&str> {
        addresses.iter().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn running_tasks_with_an_address_are_listed_ready_or_not() {
        let mut deleting = (*task("d", "Running", "10.77.1.9", true, 8080)).clone();
        deleting.metadata.deletion_timestamp = Some(chrono::Utc::now());
        let tasks = vec![
            task("b", "Running", "10.77.1.6", false, 8080),
            task("a", "Running", "10.77.1.5", true, 8080),
            task("p", "Pending", "10.77.1.7", true, 8080),
            task("n", "Running", "", true, 8080),
            task("c", "Completed", "10.77.1.8", true, 8080),
            Arc::new(deleting),
        ];
        let (subsets, truncated) = subsets(&service(), &tasks);
        assert!(!truncated);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.77.1.5"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.77.1.6"]);
        let a = &subsets[0].addresses[0];
        assert_eq!(a.node_name, "n1");
        assert_eq!(
            a.target_ref,
            Some(EndpointTargetRef {
                kind: "Task".into(),
                name: "a".into(),
                namespace: "default".into(),
                uid: "uid-a".into(),
            })
        );
        let ports: Vec<(&str, i32)> = subsets[0]
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect();
        assert_eq!(ports, [("http", 8080), ("metrics", 9100)]);
    }

    #[test]
    fn the_result_does_not_depend_on_the_order_of_tasks() {
        let tasks = vec![
            task("a", "Running", "10.77.1.5", true, 8080),
            task("b", "Running", "10.77.2.5", true, 8081),
            task("c", "Running", "10.77.1.6", false, 8080),
            task("d", "Running", "10.77.1.4", true, 8080),
        ];
        let mut reversed = tasks.clone();
        reversed.reverse();
        let forward = desired(&service(), &tasks);
        assert_eq!(forward, desired(&service(), &reversed));
        // A named target port resolved per task: 8081 is its own subset.
        let subsets = &forward.subsets;
        assert_eq!(subsets.len(), 2);
        assert_eq!(ips(&subsets[0].addresses), ["10.77.1.4", "10.77.1.5"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.77.1.6"]);
        assert_eq!(subsets[0].ports[0].port, 8080);
        assert_eq!(ips(&subsets[1].addresses), ["10.77.2.5"]);
        assert_eq!(subsets[1].ports[0].port, 8081);
        assert_eq!(forward.metadata.owner_references[0].uid, "svc-uid");
        assert_eq!(forward.metadata.owner_references[0].controller, Some(true));
    }

    #[test]
    fn a_task_without_the_named_port_serves_only_the_numbered_one() {
        let mut bare = (*task("x", "Running", "10.77.1.5", true, 8080)).clone();
        bare.spec.ports.clear();
        let (subsets, _) = subsets(&service(), &[Arc::new(bare.clone())]);
        assert_eq!(subsets.len(), 1);
        let ports: Vec<&str> = subsets[0].ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(ports, ["metrics"]);
        // A Service whose only port it lacks: the task is left out.
        let mut only_http = service();
        only_http.spec.ports.truncate(1);
        assert!(super::subsets(&only_http, &[Arc::new(bare)]).0.is_empty());
        // A Service without ports lists addresses without ports.
        let mut portless = service();
        portless.spec.ports.clear();
        let (subsets, _) = super::subsets(&portless, &[task("y", "Running", "10.77.1.5", true, 1)]);
        assert_eq!(ips(&subsets[0].addresses), ["10.77.1.5"]);
        assert!(subsets[0].ports.is_empty());
    }

    #[test]
    fn too_many_addresses_are_cut_ready_ones_kept_first() {
        let mut tasks = Vec::new();
        for i in 0..(MAX_ENDPOINT_ADDRESSES + 10) {
            let ip = format!("10.77.{}.{}", i / 200, i % 200 + 1);
            tasks.push(task(&format!("r{i}"), "Running", &ip, true, 8080));
        }
        tasks.push(task("late", "Running", "10.78.0.1", false, 8080));
        let wanted = desired(&service(), &tasks);
        let total: usize = wanted
            .subsets
            .iter()
            .map(|s| s.addresses.len() + s.not_ready_addresses.len())
            .sum();
        assert_eq!(total, MAX_ENDPOINT_ADDRESSES);
        assert!(
            wanted
                .subsets
                .iter()
                .all(|s| s.not_ready_addresses.is_empty())
        );
        assert_eq!(
            wanted.metadata.annotations.get(ANNOTATION_OVER_CAPACITY),
            Some(&"truncated".to_owned())
        );
    }

    #[test]
    fn service_keys_come_from_the_label_and_the_controller() {
        let t = task("a", "Running", "10.77.1.5", true, 8080);
        assert_eq!(service_keys(&t), ["default/web"]);
        let mut owned = (*t).clone();
        owned.metadata.labels.clear();
        owned.metadata.owner_references = vec![OwnerReference::to(&service(), true)];
        assert_eq!(service_keys(&owned), ["default/web"]);
        owned.metadata.labels.clear();
        owned.metadata.owner_references.clear();
        assert!(service_keys(&owned).is_empty());
    }
}
