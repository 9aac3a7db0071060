//! The finalizer helper: a controller adds its finalizer on first sight, runs its
//! cleanup when the object is being deleted, then removes the finalizer.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use crate::api::{Api, Object, Patch, PatchParams};
use crate::controller::Action;

/// What the helper asks the controller to do.
#[derive(Debug)]
pub enum FinalizerEvent<K> {
    /// The object lives: make the world match it.
    Apply(Arc<K>),
    /// The object is being deleted: clean up what it made.
    Cleanup(Arc<K>),
}

/// Why the helper failed.
#[derive(Debug, thiserror::Error)]
pub enum FinalizerError<E: std::error::Error + 'static> {
    /// The controller's apply failed.
    #[error("apply failed: {0}")]
    Apply(#[source] E),
    /// The controller's cleanup failed (the finalizer stays, the object too).
    #[error("cleanup failed: {0}")]
    Cleanup(#[source] E),
    /// Adding or removing the finalizer failed.
    #[error("cannot update the finalizer: {0}")]
    Client(#[source] crate::Error),
}

/// Runs `handle` under the finalizer `name`: adds it first (and returns, the
/// change brings the object back), runs Cleanup on deletion and then removes it.
pub async fn finalizer<K, E, F, Fut>(
    api: &Api<K>,
    name: &str,
    object: Arc<K>,
    handle: F,
) -> Result<Action, FinalizerError<E>>
where
    K: Object,
    E: std::error::Error + 'static,
    F: FnOnce(FinalizerEvent<K>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    let meta = object.meta();
    let position = meta.finalizers.iter().position(|f| f == name);
    let deleting = meta.deletion_timestamp.is_some();
    match (deleting, position) {
        (false, Some(_)) => handle(FinalizerEvent::Apply(object))
            .await
            .map_err(FinalizerError::Apply),
        (false, None) => {
            // Conditional on the resourceVersion: a stale view must not overwrite the
            // finalizers another writer just changed.
            let mut finalizers = meta.finalizers.clone();
            finalizers.push(name.to_owned());
            let patch = json!({"metadata": {
                "resourceVersion": meta.resource_version,
                "finalizers": finalizers,
            }});
            match api
                .patch(&meta.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                // Either way the change (ours or theirs) brings the object back.
                Ok(_) => Ok(Action::await_change()),
                Err(error) if error.is_conflict() => Ok(Action::await_change()),
                Err(error) => Err(FinalizerError::Client(error)),
            }
        }
        (true, Some(index)) => {
            let name_for_patch = meta.name.clone();
            let action = handle(FinalizerEvent::Cleanup(object.clone()))
                .await
                .map_err(FinalizerError::Cleanup)?;
            let patch = json_patch::Patch(
                serde_json::from_value(json!([
                    {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": name},
                    {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
                ]))
                .map_err(|e| FinalizerError::Client(crate::Error::Decode(e.to_string())))?,
            );
            match api
                .patch::<()>(
                    &name_for_patch,
                    &PatchParams::default(),
                    &Patch::Json(patch),
                )
                .await
            {
                Ok(_) => Ok(action),
                // Removing the last finalizer may delete it before we answer.
                Err(error) if error.is_not_found() => Ok(action),
                Err(error) => Err(FinalizerError::Client(error)),
            }
        }
        // Being deleted without our finalizer: nothing of ours is left.
        (true, None) => Ok(Action::await_change()),
    }
}
