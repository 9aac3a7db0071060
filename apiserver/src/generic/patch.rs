//! patch: merge patches, JSON patches (applied one operation at a time within
//! a size bound) and server-side apply, each through the generic update.

use bytes::Bytes;
use serde_json::Value;

use api_types::{FieldError, Status};

use super::bounded_patch::{PatchRefused, apply_json_patch};
use super::{GenericStore, Part, WriteOptions, Written, parse_revision};
use crate::apply;
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::object;

/// The largest object a JSON Patch may build while it is applied (the request
/// body limit), and the most bytes its `copy` operations may copy in all.
const MAX_PATCHED_BYTES: usize = crate::http::MAX_BODY_BYTES;

/// A patch's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386 (`application/merge-patch+json`).
    Merge,
    /// RFC 6902 (`application/json-patch+json`).
    Json,
    /// Server-side apply (`application/apply-patch+yaml`).
    Apply,
}

impl GenericStore {
    /// Patches an object; a server-side apply of a missing object creates it.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        body: &Bytes,
        part: Part,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        match kind {
            PatchKind::Merge => {
                let patch: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("the merge patch is not JSON: {e}"))
                })?;
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let precondition = match object::meta_str(&patch, "resourceVersion") {
                    Some(rv) if !rv.is_empty() => {
                        Some(parse_revision(rv, "metadata.resourceVersion")?)
                    }
                    _ => None,
                };
                self.guaranteed_update(
                    res,
                    namespace,
                    name,
                    precondition,
                    part,
                    options,
                    |current| {
                        let mut patched = current.clone();
                        json_patch::merge(&mut patched, &patch);
                        Ok(patched)
                    },
                )
                .await
            }
            PatchKind::Json => {
                let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("the JSON patch is not valid: {e}"))
                })?;
                if patch.len() > self.max_patch_operations {
                    return Err(ApiError::from(Status::request_entity_too_large(&format!(
                        "the JSON patch has {} operations, more than the {} allowed",
                        patch.len(),
                        self.max_patch_operations
                    ))));
                }
                self.guaranteed_update(res, namespace, name, None, part, options, |current| {
                    let mut patched = current.clone();
                    apply_json_patch(&mut patched, &patch, MAX_PATCHED_BYTES).map_err(
                        |refused| match refused {
                            PatchRefused::TooLarge(why) => {
                                ApiError::from(Status::request_entity_too_large(&why))
                            }
                            PatchRefused::Failed(e) => ApiError::from(Status::invalid(
                                &res.info.group_kind(),
                                name,
                                &[FieldError::invalid(
                                    "",
                                    "",
                                    format!("the JSON patch cannot be applied: {e}"),
                                )],
                            )),
                        },
                    )?;
                    Ok(patched)
                })
                .await
            }
            PatchKind::Apply => self.apply(res, namespace, name, body, part, options).await,
        }
    }

    async fn apply(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        body: &Bytes,
        part: Part,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        if part == Part::Status {
            return Err(ApiError::bad_request(
                "server-side apply to the status subresource is not supported; use a merge patch",
            ));
        }
        if options.field_manager.is_empty() {
            return Err(ApiError::bad_request(
                "server-side apply requires the fieldManager query parameter",
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the applied configuration is not UTF-8"))?;
        let mut applied: Value = api_types::decode::yaml_str_to_value(text).map_err(|e| {
            ApiError::bad_request(format!(
                "the applied configuration is not valid YAML or JSON: {e}"
            ))
        })?;
        self.check_identity(res, Some(namespace), Some(name), &mut applied)?;
        let api_version = res.info.api_version();
        let conflict = |conflicts: Vec<apply::Conflict>| {
            let mut status = Status::conflict(
                &res.group_resource(),
                name,
                &format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    conflicts
                        .iter()
                        .map(|c| format!("conflict with \"{}\": .{}", c.manager, c.field))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            );
            if let Some(details) = status.details.as_mut() {
                details.causes = conflicts
                    .iter()
                    .map(|c| api_types::status::StatusCause {
                        reason: "FieldManagerConflict".to_owned(),
                        message: format!("conflict with \"{}\"", c.manager),
                        field: format!(".{}", c.field),
                    })
                    .collect();
            }
            ApiError::from(status)
        };
        match self.store.get(&res.key(namespace, name)).await {
            Ok(None) => {
                let object = apply::apply(
                    None,
                    &applied,
                    &options.field_manager,
                    &api_version,
                    options.force,
                )
                .map_err(conflict)?;
                let options = WriteOptions {
                    applied: true,
                    ..options.clone()
                };
                self.create(res, Some(namespace), object, &options).await
            }
            Ok(Some(_)) => {
                // apply() computes the ownership itself; an empty manager keeps it as is.
                let keep_ownership = WriteOptions {
                    field_manager: String::new(),
                    ..options.clone()
                };
                self.guaranteed_update(
                    res,
                    namespace,
                    name,
                    None,
                    Part::Main,
                    &keep_ownership,
                    |current| {
                        apply::apply(
                            Some(current),
                            &applied,
                            &options.field_manager,
                            &api_version,
                            options.force,
                        )
                        .map_err(conflict)
                    },
                )
                .await
            }
            Err(error) => Err(ApiError::from_store(error, &res.group_resource(), name)),
        }
    }
}
