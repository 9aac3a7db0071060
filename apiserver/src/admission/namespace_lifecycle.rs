//! Namespace lifecycle: objects are created only in a namespace that exists
//! and is not being deleted.

use std::sync::Arc;

use api_types::{Namespace, Status};
use async_trait::async_trait;

use super::{AdmissionStep, Operation, Phase, Review};
use crate::catalog::Catalog;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::Store;

/// Validating, on create: the object's namespace must exist (404) and not be
/// terminating (403), as Kubernetes' `NamespaceLifecycle` plugin. The
/// namespace is read from its watch cache, or from the store when the cache
/// has not seen it yet.
pub struct NamespaceLifecycle {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for NamespaceLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceLifecycle").finish_non_exhaustive()
    }
}

impl NamespaceLifecycle {
    /// The step over the namespaces of `catalog`, stored in `store`.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>) -> Self {
        NamespaceLifecycle { store, catalog }
    }
}

#[async_trait]
impl AdmissionStep for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn phase(&self) -> Phase {
        Phase::Validating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        if review.operation != Operation::Create || !review.resource.info.namespaced {
            return Ok(());
        }
        let namespace = review.namespace;
        let namespaces = self.catalog.builtin_resource::<Namespace>();
        let key = namespaces.key("", namespace);
        let found = match namespaces.cache.get(&key) {
            Some(cached) => Some(cached.value()),
            None => match self.store.get(&key).await {
                Ok(Some(kv)) => object::from_stored(&kv.value, kv.mod_revision).ok(),
                Ok(None) => None,
                Err(error) => {
                    return Err(ApiError::from_store(
                        error,
                        &namespaces.group_resource(),
                        namespace,
                    ));
                }
            },
        };
        match found {
            None => Err(ApiError::from(Status::not_found(
                &namespaces.group_resource(),
                namespace,
            ))),
            Some(ns) if object::meta_str(&ns, "deletionTimestamp").is_some() => {
                Err(ApiError::from(Status::forbidden(
                    &review.resource.group_resource(),
                    "",
                    &format!(
                        "unable to create new content in namespace {namespace} because it is being terminated"
                    ),
                )))
            }
            Some(_) => Ok(()),
        }
    }
}
