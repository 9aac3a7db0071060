//! delete and deletecollection: finalizers and propagation policies mark an
//! object instead of removing it; the kind's hooks may refuse a delete, act
//! before the object goes, and after.

use bytes::Bytes;
use serde_json::{Value, json};

use api_types::options::DeleteOptions;
use api_types::{FieldValidation, Status};

use super::get_list::{ListQuery, ListSource, list_source};
use super::{GenericStore, Part, RETRIES, now, parse_revision};
use crate::admission::{Operation, Review};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::{self, ContinueToken, ListOptions};
use crate::watch_cache::CachedObject;

/// Objects a deletecollection reads and deletes at a time.
const DELETE_PAGE: usize = 500;

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
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
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

    /// Deletes every object a list query selects, a page at a time (never the
    /// whole collection in memory at once), and returns the deleted objects as JSON.
    pub async fn delete_collection(
        &self,
        res: &ServedResource,
        query: ListQuery,
        options: &DeleteOptions,
    ) -> ApiResult<Vec<Bytes>> {
        let query = ListQuery {
            limit: None,
            continue_token: None,
            ..query
        };
        let mut deleted = Vec::new();
        match list_source(&query)? {
            ListSource::Cache(wanted) => {
                self.cache_at(res, wanted).await?;
                // Pages by key: objects that stay (held by finalizers) are not seen twice.
                let mut after: Option<String> = None;
                loop {
                    let page = res
                        .cache
                        .list_page(&query.filter, after.as_deref(), DELETE_PAGE);
                    let Some(last) = page.last() else { break };
                    after = Some(last.key.clone());
                    for object in &page {
                        self.delete_member(
                            res,
                            &object.namespace,
                            &object.name,
                            options,
                            &mut deleted,
                        )
                        .await?;
                    }
                }
            }
            ListSource::Store(exact) => {
                let prefix = res.prefix(query.filter.namespace.as_deref());
                let selectable = res.selectable_fields();
                let mut revision = exact;
                let mut after: Option<String> = None;
                loop {
                    let continue_token = match (&after, revision) {
                        (Some(key), Some(revision)) => Some(
                            ContinueToken {
                                revision,
                                last_key: key.clone(),
                            }
                            .encode(),
                        ),
                        _ => None,
                    };
                    let options_page = ListOptions {
                        revision: if continue_token.is_some() {
                            None
                        } else {
                            revision
                        },
                        limit: Some(DELETE_PAGE),
                        continue_token,
                    };
                    let page = match self.store.list(&prefix, options_page).await {
                        Ok(page) => page,
                        Err(store::Error::Compacted { .. }) if after.is_some() => {
                            // The snapshot the pages read went while deleting: go on
                            // from the same key at the latest revision.
                            let latest =
                                self.store.current_revision().await.map_err(|e| {
                                    ApiError::from_store(e, &res.group_resource(), "")
                                })?;
                            revision = Some(latest);
                            continue;
                        }
                        Err(e) => return Err(ApiError::from_store(e, &res.group_resource(), "")),
                    };
                    revision = Some(page.revision);
                    let Some(last) = page.items.last() else { break };
                    after = Some(last.key.clone());
                    for kv in &page.items {
                        let Some(object) = CachedObject::from_kv(kv, kv.mod_revision, &selectable)
                        else {
                            continue;
                        };
                        if !query.filter.matches(&object) {
                            continue;
                        }
                        self.delete_member(
                            res,
                            &object.namespace,
                            &object.name,
                            options,
                            &mut deleted,
                        )
                        .await?;
                    }
                    if page.continue_token.is_none() {
                        break;
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes one member of a collection being deleted; one already gone is skipped.
    async fn delete_member(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
        deleted: &mut Vec<Bytes>,
    ) -> ApiResult<()> {
        match self.delete(res, namespace, name, options).await {
            Ok(object) => {
                deleted.push(Bytes::from(
                    serde_json::to_vec(&object).map_err(ApiError::internal)?,
                ));
                Ok(())
            }
            Err(error) if error.code() == 404 => Ok(()),
            Err(error) => Err(error),
        }
    }
}
