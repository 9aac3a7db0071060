//! update: a replacement (PUT) of an object or its status, and the
//! conditional read-transform-write loop every change of a stored object goes
//! through (Kubernetes' `GuaranteedUpdate`), in named steps.

use serde_json::{Value, json};

use api_types::{FieldError, Status};

use super::{
    GenericStore, Part, RETRIES, WriteOptions, Written, invalid, parse_revision, set_status,
};
use crate::apply;
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::{self, Revision};

/// The object an update starts from.
struct Current {
    object: Value,
    revision: Revision,
    /// Read from the watch cache, which may be behind the store.
    from_cache: bool,
}

/// Metadata only the server sets: a write keeps the stored values.
const SERVER_OWNED: [&str; 5] = [
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];

/// Step: the part of the object a write is not for keeps its stored value (a
/// write of the main resource keeps the status; a status write keeps the rest,
/// but may still move labels and annotations, as Kubernetes allows).
fn keep_unwritten_part(res: &ServedResource, part: Part, current: &Value, new: &mut Value) {
    if !res.info.has_status {
        return;
    }
    match part {
        Part::Main => set_status(new, current.get("status").cloned()),
        Part::Status => {
            let status = new.get("status").cloned();
            let meta = new.get("metadata").cloned();
            *new = current.clone();
            set_status(new, status);
            if let Some(meta) = meta {
                for key in ["labels", "annotations"] {
                    object::set_meta(new, key, meta.get(key).cloned().unwrap_or(Value::Null));
                }
            }
        }
        Part::Whole => {}
    }
}

/// Step: what the server owns comes from the stored object.
fn keep_server_owned(current: &Value, new: &mut Value) {
    for field in SERVER_OWNED {
        let value = current
            .get("metadata")
            .and_then(|m| m.get(field))
            .cloned()
            .unwrap_or(Value::Null);
        object::set_meta(new, field, value);
    }
    object::set_meta(new, "resourceVersion", Value::Null);
}

/// Step: an object being deleted takes no new finalizers.
fn check_finalizers(
    res: &ServedResource,
    name: &str,
    current: &Value,
    new: &Value,
) -> ApiResult<()> {
    if object::meta_str(current, "deletionTimestamp").is_none() {
        return Ok(());
    }
    let before = object::finalizers(current);
    let errors: Vec<FieldError> = object::finalizers(new)
        .iter()
        .filter(|f| !before.contains(f))
        .map(|added| {
            FieldError::forbidden(
                "metadata.finalizers",
                format!("no new finalizers can be added if the object is being deleted, found new finalizer {added:?}"),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(res, name, &errors))
    }
}

/// Step: `metadata.generation` moves with the spec, and `managedFields` record
/// who changed what (an empty manager keeps them as they are, as a binding and
/// server-side apply, which computed its own, want).
fn record_generation_and_managers(
    res: &ServedResource,
    part: Part,
    options: &WriteOptions,
    current: &Value,
    new: &mut Value,
) {
    let mut generation = current
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if object::spec_fields(new) != object::spec_fields(current) {
        generation += 1;
    }
    object::set_meta(new, "generation", json!(generation));
    if !options.field_manager.is_empty() {
        apply::record_update(
            Some(current),
            new,
            &options.field_manager,
            &res.info.api_version(),
            part == Part::Status,
        );
    } else if new
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_none()
    {
        let managed = current
            .get("metadata")
            .and_then(|m| m.get("managedFields"))
            .cloned();
        object::set_meta(new, "managedFields", managed.unwrap_or(Value::Null));
    }
}

/// Whether a write would leave the stored object as it is.
fn unchanged(current: &Value, new: &Value) -> bool {
    let mut unchanged = current.clone();
    object::set_meta(&mut unchanged, "resourceVersion", Value::Null);
    *new == unchanged
}

impl GenericStore {
    /// Replaces an object (PUT), or its status.
    pub async fn update(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        mut object: Value,
        part: Part,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        self.check_identity(res, Some(namespace), Some(name), &mut object)?;
        let precondition = match object::meta_str(&object, "resourceVersion") {
            Some(rv) if !rv.is_empty() => Some(parse_revision(rv, "metadata.resourceVersion")?),
            _ => None,
        };
        self.guaranteed_update(res, namespace, name, precondition, part, options, |_| {
            Ok(object.clone())
        })
        .await
    }

    /// Reads, transforms and writes an object conditionally, retrying lost races
    /// unless the caller pinned a resourceVersion: load, transform, keep what
    /// the write may not change, admit, record generation and managers, write
    /// if anything changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn guaranteed_update(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        precondition: Option<Revision>,
        part: Part,
        options: &WriteOptions,
        transform: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Written> {
        if part == Part::Status && !res.info.has_status {
            return Err(ApiError::no_route(&format!("{}/status", res.info.plural)));
        }
        for attempt in 0..RETRIES {
            let current = self
                .load_current(res, namespace, name, attempt, precondition, options.dry_run)
                .await?;
            if let Some(expected) = precondition
                && expected != current.revision
            {
                return Err(ApiError::from(Status::conflict_modified(
                    &res.group_resource(),
                    name,
                )));
            }
            let mut new = transform(&current.object)?;
            self.check_identity(res, Some(namespace), Some(name), &mut new)?;
            keep_unwritten_part(res, part, &current.object, &mut new);
            keep_server_owned(&current.object, &mut new);
            check_finalizers(res, name, &current.object, &new)?;
            let mut warnings = self
                .admit_write(res, part, &mut new, Some(&current.object), options)
                .await?;
            res.hooks
                .check_write(self, &new, Some(&current.object))
                .await?;
            record_generation_and_managers(res, part, options, &current.object, &mut new);
            if unchanged(&current.object, &new) {
                if current.from_cache {
                    // No write to catch a stale copy: confirm against the store.
                    continue;
                }
                return Ok(Written {
                    object: current.object,
                    warnings,
                    created: false,
                });
            }
            if options.dry_run {
                return Ok(Written {
                    object: new,
                    warnings,
                    created: false,
                });
            }
            match self
                .write_conditionally(res, namespace, name, &current, new)
                .await
            {
                Ok(object) => {
                    res.hooks.after_write(self, &object);
                    warnings.shrink_to_fit();
                    return Ok(Written {
                        object,
                        warnings,
                        created: false,
                    });
                }
                Err(store::Error::Conflict { .. }) if precondition.is_none() => continue,
                Err(store::Error::Conflict { .. }) => {
                    return Err(ApiError::from(Status::conflict_modified(
                        &res.group_resource(),
                        name,
                    )));
                }
                Err(error) => return Err(ApiError::from_store(error, &res.group_resource(), name)),
            }
        }
        Err(ApiError::from(Status::conflict(
            &res.group_resource(),
            name,
            "too many concurrent writes; try again",
        )))
    }

    /// Step: the object to change. The first attempt starts from the watch
    /// cache's copy, as Kubernetes' GuaranteedUpdate does: the write is
    /// conditioned on that copy's revision, so a stale copy only costs a retry
    /// from the store. A copy that cannot meet the caller's precondition is
    /// never trusted.
    async fn load_current(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        attempt: usize,
        precondition: Option<Revision>,
        dry_run: bool,
    ) -> ApiResult<Current> {
        let cached = res.cache.get(&res.key(namespace, name)).filter(|cached| {
            attempt == 0
                && !dry_run
                && precondition.is_none_or(|expected| expected == cached.revision)
        });
        if let Some(cached) = cached {
            return Ok(Current {
                object: cached.value(),
                revision: cached.revision,
                from_cache: true,
            });
        }
        let kv = self.load(res, namespace, name).await?;
        let object = object::from_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?;
        Ok(Current {
            object,
            revision: kv.mod_revision,
            from_cache: false,
        })
    }

    /// Step: the write, conditioned on the revision read. An object whose last
    /// finalizer went is deleted now: the delete that was waiting for it.
    async fn write_conditionally(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        current: &Current,
        new: Value,
    ) -> Result<Value, store::Error> {
        let key = res.key(namespace, name);
        let finished = object::meta_str(&new, "deletionTimestamp").is_some()
            && object::finalizers(&new).is_empty();
        let (mut written, revision) = if finished {
            let deleted = self.store.delete(&key, Some(current.revision)).await?;
            (new, deleted.revision)
        } else {
            // The stored bytes are `new` serialized: no need to parse them back.
            let kv = self
                .store
                .update(&key, object::to_stored(&new), current.revision)
                .await?;
            (new, kv.mod_revision)
        };
        object::set_meta(&mut written, "resourceVersion", json!(revision.to_string()));
        Ok(written)
    }
}
