//! delete: finalizers and propagation policies mark an object instead of
//! removing it; the kind's hooks may refuse a delete, act before the object
//! goes, and after.

use serde_json::{Value, json};

use api_types::options::DeleteOptions;
use api_types::{FieldValidation, Status};

use super::{GenericStore, Part, RETRIES, now, parse_revision};
use crate::admission::{Operation, Review};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::{self, ListOptions};

impl GenericStore {
    /// Deletes an object; with finalizers (or a Foreground/Orphan policy) it is
    /// only marked, and goes when its last finalizer does.
    pub async fn delete(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<Value> {
        res.hooks.check_delete(res, name)?;
        let policy = match (&options.propagation_policy, options.orphan_dependents) {
            (Some(p), _) => match p.as_str() {
                "Foreground" | "Background" | "Orphan" => Some(p.clone()),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "propagationPolicy {other:?} is not supported: use Foreground, Background or Orphan"
                    )));
                }
            },
            (None, Some(true)) => Some("Orphan".to_owned()),
            _ => None,
        };
        let dry_run = options.dry_run.iter().any(|d| d == "All");
        let precondition_rv = match options
            .preconditions
            .as_ref()
            .and_then(|p| p.resource_version.as_deref())
        {
            Some(rv) if !rv.is_empty() => {
                Some(parse_revision(rv, "preconditions.resourceVersion")?)
            }
            _ => None,
        };
        for _ in 0..RETRIES {
            let kv = self.load(res, namespace, name).await?;
            let current =
                object::from_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?;
            if let Some(uid) = options
                .preconditions
                .as_ref()
                .and_then(|p| p.uid.as_deref())
                && object::meta_str(&current, "uid") != Some(uid)
            {
                return Err(ApiError::from(Status::conflict(
                    &res.group_resource(),
                    name,
                    &format!(
                        "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                        object::meta_str(&current, "uid").unwrap_or("")
                    ),
                )));
            }
            if let Some(rv) = precondition_rv
                && rv != kv.mod_revision
            {
                return Err(ApiError::from(Status::conflict(
                    &res.group_resource(),
                    name,
                    &format!(
                        "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                        kv.mod_revision
                    ),
                )));
            }
            self.admission
                .admit(&mut Review {
                    operation: Operation::Delete,
                    resource: res,
                    part: Part::Main,
                    namespace,
                    name,
                    object: Value::Null,
                    old: Some(&current),
                    field_validation: FieldValidation::default(),
                    dry_run,
                    warnings: Vec::new(),
                    errors: Vec::new(),
                })
                .await?;
            let mut finalizers = object::finalizers(&current);
            let policy_finalizer = match policy.as_deref() {
                Some("Foreground") => Some(api_types::well_known::FINALIZER_FOREGROUND),
                Some("Orphan") => Some(api_types::well_known::FINALIZER_ORPHAN),
                _ => None,
            };
            if let Some(f) = policy_finalizer
                && !finalizers.iter().any(|x| x == f)
                && object::meta_str(&current, "deletionTimestamp").is_none()
            {
                finalizers.push(f.to_owned());
            }
            let key = res.key(namespace, name);
            if !finalizers.is_empty() {
                if object::meta_str(&current, "deletionTimestamp").is_some()
                    && finalizers == object::finalizers(&current)
                {
                    return Ok(current);
                }
                let mut marked = current.clone();
                object::set_meta(&mut marked, "deletionTimestamp", json!(now()));
                object::set_meta(&mut marked, "deletionGracePeriodSeconds", json!(0));
                object::set_meta(&mut marked, "finalizers", json!(finalizers));
                if dry_run {
                    return Ok(marked);
                }
                match self
                    .store
                    .update(&key, object::to_stored(&marked), kv.mod_revision)
                    .await
                {
                    Ok(kv) => {
                        return object::from_stored(&kv.value, kv.mod_revision)
                            .map_err(ApiError::internal);
                    }
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(error) => {
                        return Err(ApiError::from_store(error, &res.group_resource(), name));
                    }
                }
            }
            if dry_run {
                return Ok(current);
            }
            res.hooks.before_remove(self, &current).await?;
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(deleted) => {
                    let mut gone = current;
                    object::set_meta(
                        &mut gone,
                        "resourceVersion",
                        json!(deleted.revision.to_string()),
                    );
                    res.hooks.after_remove(self, &gone).await;
                    return Ok(gone);
                }
                Err(store::Error::Conflict { .. }) => continue,
                Err(error) => return Err(ApiError::from_store(error, &res.group_resource(), name)),
            }
        }
        Err(ApiError::from(Status::conflict(
            &res.group_resource(),
            name,
            "too many concurrent writes; try again",
        )))
    }

    /// Deletes every object under a store prefix, a page at a time.
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> ApiResult<()> {
        loop {
            let page = self
                .store
                .list(
                    prefix,
                    ListOptions {
                        limit: Some(500),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    ApiError::from_store(e, &api_types::GroupResource::new("", prefix), "")
                })?;
            if page.items.is_empty() {
                return Ok(());
            }
            for kv in page.items {
                match self.store.delete(&kv.key, None).await {
                    Ok(_) | Err(store::Error::NotFound { .. }) => {}
                    Err(error) => {
                        return Err(ApiError::from_store(
                            error,
                            &api_types::GroupResource::new("", prefix),
                            &kv.key,
                        ));
                    }
                }
            }
        }
    }
}
