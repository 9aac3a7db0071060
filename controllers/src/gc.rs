//! The garbage collector: dependents go with their owners through ownerReferences.
//!
//! The API server marks deletions; this collector finishes them:
//! - Background (the default): the owner is gone at once; each dependent whose
//!   every owner is gone is deleted. This is the same check that, at start-up,
//!   collects the dependents of owners deleted while the collector was down.
//! - Foreground: the owner waits with the `foregroundDeletion` finalizer while the
//!   collector deletes its dependents (themselves in the foreground, so whole
//!   trees go bottom-up), and loses the finalizer once none is left.
//! - Orphan: the owner waits with the `orphan` finalizer while the collector
//!   removes the owner's reference from every dependent, then loses the finalizer.
//!
//! Owners and dependents are the built-in namespaced kinds that own things: Task,
//! Job and Service. A reference to any other kind is left alone.

use std::sync::Arc;
use std::time::Duration;

use api_types::well_known::{FINALIZER_FOREGROUND, FINALIZER_ORPHAN};
use api_types::{Job, OwnerReference, Resource, Service, Task};
use client::controller::{self, Action, Controller};
use client::{Api, DeleteParams, Informer, ObjectKey, Patch, PatchParams, Store};
use serde_json::json;
use tracing::{debug, info};

use crate::{BY_OWNER, Context, Error, Result, key_of};

/// How often a dependent's owners are checked again without any change.
const RECHECK: Duration = Duration::from_secs(300);

/// A kind the collector looks after.
pub trait Collected: Resource {
    /// This kind's cache.
    fn store(ctx: &Context) -> &Store<Self>;
}

impl Collected for Task {
    fn store(ctx: &Context) -> &Store<Self> {
        &ctx.tasks
    }
}

impl Collected for Job {
    fn store(ctx: &Context) -> &Store<Self> {
        &ctx.jobs
    }
}

impl Collected for Service {
    fn store(ctx: &Context) -> &Store<Self> {
        &ctx.services
    }
}

fn api<K: Collected>(ctx: &Context, namespace: &str) -> Api<K> {
    if K::NAMESPACED {
        Api::namespaced(ctx.client.clone(), namespace)
    } else {
        Api::all(ctx.client.clone())
    }
}

/// The keys of the `K`s that `object` names as owners.
fn owners_of<K: Collected, O: Collected>(object: &O) -> Vec<ObjectKey> {
    let meta = object.meta();
    meta.owner_references
        .iter()
        .filter(|r| r.kind == K::KIND && r.api_version == K::api_version())
        .map(|r| ObjectKey::new(if K::NAMESPACED { &meta.namespace } else { "" }, &r.name))
        .collect()
}

/// The `K`s that name `uid` as an owner.
fn dependents_of<K: Collected>(ctx: &Context, uid: &str) -> Vec<Arc<K>> {
    K::store(ctx).by_index(BY_OWNER, uid)
}

/// Maps a change to an `O` to the `K`s the collector must look at again, and only
/// those: the owners being deleted that wait on it, and, when it is gone or being
/// deleted itself, its dependents. (Every other change, such as a job's status,
/// concerns no collection: mapping it would look at a big job's every task on each
/// of its status writes.)
fn watch_kind<K: Collected, O: Collected>(
    controller: Controller<K>,
    informer: &Informer<O>,
    ctx: Arc<Context>,
) -> Controller<K> {
    controller.watches(informer, move |o: &O| {
        let mut keys: Vec<ObjectKey> = owners_of::<K, O>(o)
            .into_iter()
            .filter(|key| {
                K::store(&ctx)
                    .get(key)
                    .is_some_and(|owner| owner.meta().deletion_timestamp.is_some())
            })
            .collect();
        // The cache already holds this change: absent means deleted.
        let leaving = O::store(&ctx).get(&ObjectKey::of(o)).is_none_or(|now| {
            now.meta().uid != o.meta().uid || now.meta().deletion_timestamp.is_some()
        });
        if leaving {
            keys.extend(
                dependents_of::<K>(&ctx, &o.meta().uid)
                    .iter()
                    .map(|d| ObjectKey::of(d.as_ref())),
            );
        }
        keys
    })
}

/// The collector of kind `K`: it looks again at a `K` whenever one of its owners or
/// dependents changes.
pub fn controller<K: Collected>(
    primary: &Informer<K>,
    tasks: &Informer<Task>,
    jobs: &Informer<Job>,
    services: &Informer<Service>,
    ctx: Arc<Context>,
    config: controller::Config,
) -> Controller<K> {
    let controller = Controller::new(primary, config);
    let controller = watch_kind(controller, tasks, ctx.clone());
    let controller = watch_kind(controller, jobs, ctx.clone());
    watch_kind(controller, services, ctx)
}

/// Every dependent of `uid` in the namespace, of every collected kind, as
/// (kind, name, object's own ownerReferences, resourceVersion, being deleted).
struct Dependent {
    kind: &'static str,
    name: String,
    namespace: String,
    uid: String,
    owner_references: Vec<OwnerReference>,
    resource_version: String,
    deleting: bool,
}

fn dependent<K: Collected>(object: &K) -> Dependent {
    let meta = object.meta();
    Dependent {
        kind: K::KIND,
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        owner_references: meta.owner_references.clone(),
        resource_version: meta.resource_version.clone(),
        deleting: meta.deletion_timestamp.is_some(),
    }
}

fn all_dependents(ctx: &Context, namespace: &str, uid: &str) -> Vec<Dependent> {
    let mut all: Vec<Dependent> = Vec::new();
    all.extend(
        dependents_of::<Task>(ctx, uid)
            .iter()
            .map(|o| dependent(o.as_ref())),
    );
    all.extend(
        dependents_of::<Job>(ctx, uid)
            .iter()
            .map(|o| dependent(o.as_ref())),
    );
    all.extend(
        dependents_of::<Service>(ctx, uid)
            .iter()
            .map(|o| dependent(o.as_ref())),
    );
    all.retain(|d| d.namespace == namespace);
    all
}

async fn delete_dependent(ctx: &Context, d: &Dependent, policy: &str) -> Result<()> {
    let params = DeleteParams {
        propagation_policy: Some(policy.to_owned()),
        preconditions: Some(client::api::Preconditions {
            uid: Some(d.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let result = match d.kind {
        "Task" => api::<Task>(ctx, &d.namespace)
            .delete(&d.name, &params)
            .await
            .map(drop),
        "Job" => api::<Job>(ctx, &d.namespace)
            .delete(&d.name, &params)
            .await
            .map(drop),
        _ => api::<Service>(ctx, &d.namespace)
            .delete(&d.name, &params)
            .await
            .map(drop),
    };
    match result {
        Ok(()) => Ok(()),
        // Gone already, or a new object of that name (its uid differs).
        Err(error) if error.is_not_found() || error.is_conflict() => Ok(()),
        Err(error) => Err(Error::api(
            "delete dependent",
            format!("{}/{}", d.namespace, d.name),
        )(error)),
    }
}

/// Patches `metadata` of a `kind` object, conditioned on its resourceVersion.
async fn patch_meta(
    ctx: &Context,
    kind: &str,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
) -> std::result::Result<(), client::Error> {
    let params = PatchParams::default();
    let patch = Patch::Merge(patch);
    match kind {
        "Task" => api::<Task>(ctx, namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop),
        "Job" => api::<Job>(ctx, namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop),
        _ => api::<Service>(ctx, namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop),
    }
}

async fn remove_finalizer<K: Collected>(ctx: &Context, object: &K, finalizer: &str) -> Result<()> {
    let meta = object.meta();
    let rest: Vec<&String> = meta.finalizers.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"resourceVersion": meta.resource_version, "finalizers": rest}});
    match patch_meta(ctx, K::KIND, &meta.namespace, &meta.name, patch).await {
        Ok(()) => Ok(()),
        // A newer version (or its absence) brings us back.
        Err(error) if error.is_not_found() || error.is_conflict() => Ok(()),
        Err(error) => Err(Error::api("remove finalizer of", key_of(object))(error)),
    }
}

/// Whether the owner a reference names still exists (the cache first; a miss is
/// checked with the API, since the owner's watch may lag its dependent's).
async fn owner_exists(ctx: &Context, namespace: &str, owner: &OwnerReference) -> Result<bool> {
    let key = ObjectKey::new(namespace, &owner.name);
    let cached = match owner.kind.as_str() {
        "Task" => ctx.tasks.get(&key).map(|o| o.metadata.uid.clone()),
        "Job" => ctx.jobs.get(&key).map(|o| o.metadata.uid.clone()),
        "Service" => ctx.services.get(&key).map(|o| o.metadata.uid.clone()),
        // Not a kind the collector knows: assume it lives.
        _ => return Ok(true),
    };
    if cached.as_deref() == Some(owner.uid.as_str()) {
        return Ok(true);
    }
    let live = match owner.kind.as_str() {
        "Task" => api::<Task>(ctx, namespace)
            .get_opt(&owner.name)
            .await
            .map(|o| o.map(|o| o.metadata.uid)),
        "Job" => api::<Job>(ctx, namespace)
            .get_opt(&owner.name)
            .await
            .map(|o| o.map(|o| o.metadata.uid)),
        _ => api::<Service>(ctx, namespace)
            .get_opt(&owner.name)
            .await
            .map(|o| o.map(|o| o.metadata.uid)),
    }
    .map_err(Error::api(
        "get owner",
        format!("{namespace}/{}", owner.name),
    ))?;
    Ok(live.as_deref() == Some(owner.uid.as_str()))
}

/// Collects one object: finishes its own Foreground or Orphan deletion, and deletes
/// it (or drops dangling references) when its owners are gone.
pub async fn reconcile<K: Collected>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wait_ready().await;
    let meta = object.meta();
    if meta.deletion_timestamp.is_some() {
        if meta.has_finalizer(FINALIZER_ORPHAN) {
            for d in all_dependents(&ctx, &meta.namespace, &meta.uid) {
                let rest: Vec<&OwnerReference> = d
                    .owner_references
                    .iter()
                    .filter(|r| r.uid != meta.uid)
                    .collect();
                let patch = json!({"metadata": {
                    "resourceVersion": d.resource_version,
                    "ownerReferences": rest,
                }});
                match patch_meta(&ctx, d.kind, &d.namespace, &d.name, patch).await {
                    Ok(()) => debug!(dependent = %d.name, owner = %meta.name, "orphaned"),
                    Err(error) if error.is_not_found() => {}
                    // Changed meanwhile: its change brings us back.
                    Err(error) if error.is_conflict() => {
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    }
                    Err(error) => {
                        return Err(Error::api("orphan", format!("{}/{}", d.namespace, d.name))(
                            error,
                        ));
                    }
                }
            }
            remove_finalizer(&ctx, object.as_ref(), FINALIZER_ORPHAN).await?;
            return Ok(Action::await_change());
        }
        if meta.has_finalizer(FINALIZER_FOREGROUND) {
            let dependents = all_dependents(&ctx, &meta.namespace, &meta.uid);
            if dependents.is_empty() {
                info!(object = %key_of(object.as_ref()), "dependents gone; deleting");
                remove_finalizer(&ctx, object.as_ref(), FINALIZER_FOREGROUND).await?;
                return Ok(Action::await_change());
            }
            for d in dependents.iter().filter(|d| !d.deleting) {
                delete_dependent(&ctx, d, "Foreground").await?;
            }
            // Their deletions bring us back; look again anyway in case a watch lags.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
    }
    if meta.owner_references.is_empty() {
        return Ok(Action::await_change());
    }
    let mut dangling = Vec::new();
    for owner in &meta.owner_references {
        if !owner_exists(&ctx, &meta.namespace, owner).await? {
            dangling.push(owner.uid.clone());
        }
    }
    if dangling.is_empty() {
        // An owner's deletion may be missed by a watch that fell behind: look again
        // now and then.
        return Ok(Action::requeue(RECHECK));
    }
    let target = dependent(object.as_ref());
    if dangling.len() == meta.owner_references.len() {
        if meta.deletion_timestamp.is_none() {
            info!(object = %key_of(object.as_ref()), "owner gone; deleting");
            delete_dependent(&ctx, &target, "Background").await?;
        }
    } else {
        let rest: Vec<&OwnerReference> = meta
            .owner_references
            .iter()
            .filter(|r| !dangling.contains(&r.uid))
            .collect();
        let patch = json!({"metadata": {
            "resourceVersion": meta.resource_version,
            "ownerReferences": rest,
        }});
        match patch_meta(&ctx, K::KIND, &meta.namespace, &meta.name, patch).await {
            Ok(()) => {}
            Err(error) if error.is_not_found() || error.is_conflict() => {}
            Err(error) => {
                return Err(Error::api(
                    "drop dangling owners of",
                    key_of(object.as_ref()),
                )(error));
            }
        }
    }
    Ok(Action::await_change())
}
