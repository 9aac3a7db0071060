//! The `scale` subresource of Services (`services/NAME/scale`, Kubernetes'
//! `deployments/NAME/scale`): the Service's replicas as an `autoscaling/v1`
//! Scale, read with GET and changed with PUT or PATCH, so `kubectl scale`,
//! `loomctl scale` and autoscalers change `spec.replicas` and nothing else.
//!
//! A write is authorized as `services/scale` (its own RBAC resource), keeps
//! a `metadata.resourceVersion` (and `uid`) it carries as a precondition on
//! the Service, and passes the Service's own admission and rules.

use std::sync::Mutex;

use api_types::autoscaling::{AUTOSCALING_GROUP, AUTOSCALING_VERSION, SCALE_KIND};
use api_types::{FieldError, GroupKind, Scale, Service, Status, Validate};
use async_trait::async_trait;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{AGE, Subresource, SubresourceRequest};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::generic::{self, Part, PatchRefused, WriteOptions, apply_json_patch};
use crate::http;
use crate::object;
use crate::store::Revision;

/// `GET|PUT|PATCH services/{name}/scale`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceScale;

/// The patch formats a Scale takes. A strategic merge patch (what Go
/// clients may send) is a merge patch here: a Scale has no lists to merge.
const PATCH_TYPES: [&str; 3] = [
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
];

fn scale_kind() -> GroupKind {
    GroupKind::new(AUTOSCALING_GROUP, SCALE_KIND)
}

fn invalid(name: &str, errors: &[FieldError]) -> ApiError {
    ApiError::from(Status::invalid(&scale_kind(), name, errors))
}

#[async_trait]
impl Subresource for ServiceScale {
    fn name(&self) -> &'static str {
        api_types::autoscaling::SCALE_SUBRESOURCE
    }

    fn kind(&self) -> Option<&'static str> {
        Some(SCALE_KIND)
    }

    fn group_version(&self) -> Option<(&'static str, &'static str)> {
        Some((AUTOSCALING_GROUP, AUTOSCALING_VERSION))
    }

    fn verbs(&self) -> &'static [&'static str] {
        &["get", "patch", "update"]
    }

    async fn serve(&self, request: SubresourceRequest<'_>) -> ApiResult<Response> {
        let res = request.resource;
        match *request.method {
            Method::GET => {
                let service = request
                    .store
                    .get(res, request.namespace, request.name)
                    .await?;
                let scale = scale_of(&service)?;
                if http::wants_table(request.headers) {
                    return Ok(http::json_response(StatusCode::OK, &table(&scale)?));
                }
                Ok(http::json_response(StatusCode::OK, &to_value(&scale)?))
            }
            Method::PUT => put(&request).await,
            Method::PATCH => patch(&request).await,
            _ => Err(ApiError::from(Status::method_not_allowed(
                &api_types::GroupResource::new(&res.info.group, "services/scale"),
                &request.method.as_str().to_lowercase(),
            ))),
        }
    }
}

/// `PUT`: the Scale sent replaces the Service's `spec.replicas`.
async fn put(request: &SubresourceRequest<'_>) -> ApiResult<Response> {
    let options = http::write_options(request.query, request.headers, "loom")?;
    let body = http::parse_body(request.headers, &request.body)?;
    let (wanted, warnings) = Scale::decode(body, options.field_validation)
        .map_err(|errors| invalid(request.name, &errors))?;
    check_identity(request, &wanted)?;
    let precondition = revision_of(&wanted)?;
    write(request, precondition, &options, warnings, |_| {
        Ok((wanted.clone(), Vec::new()))
    })
    .await
}

/// `PATCH`: the patch applies to the Scale of the Service as it is; the
/// Scale it makes replaces the Service's `spec.replicas`.
async fn patch(request: &SubresourceRequest<'_>) -> ApiResult<Response> {
    let options = http::write_options(request.query, request.headers, "loom")?;
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = request.name;
    let patch = if content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json")
    {
        let patch: Value = serde_json::from_slice(&request.body)
            .map_err(|e| ApiError::bad_request(format!("the merge patch is not JSON: {e}")))?;
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        ScalePatch::Merge(patch)
    } else if content_type.starts_with("application/json-patch+json") {
        let patch: json_patch::Patch = serde_json::from_slice(&request.body)
            .map_err(|e| ApiError::bad_request(format!("the JSON patch is not valid: {e}")))?;
        let max = request.store.max_patch_operations;
        if patch.len() > max {
            return Err(ApiError::from(Status::request_entity_too_large(&format!(
                "the JSON patch has {} operations, more than the {max} allowed",
                patch.len()
            ))));
        }
        ScalePatch::Json(patch)
    } else {
        return Err(ApiError::from(Status::unsupported_media_type(&PATCH_TYPES)));
    };
    // A resourceVersion in a merge patch is a precondition, checked before
    // anything is read from a cache that may be behind.
    let precondition = match &patch {
        ScalePatch::Merge(body) => match object::meta_str(body, "resourceVersion") {
            Some(rv) if !rv.is_empty() => {
                Some(generic::parse_revision(rv, "metadata.resourceVersion")?)
            }
            _ => None,
        },
        ScalePatch::Json(_) => None,
    };
    let mode = options.field_validation;
    write(request, precondition, &options, Vec::new(), |current| {
        let mut value = to_value(current)?;
        patch.apply(&mut value, name)?;
        Scale::decode(value, mode).map_err(|errors| invalid(name, &errors))
    })
    .await
}

/// A patch of a Scale.
enum ScalePatch {
    /// A merge patch (RFC 7386), or a strategic merge patch read as one.
    Merge(Value),
    /// A JSON patch (RFC 6902).
    Json(json_patch::Patch),
}

impl ScalePatch {
    /// Patches the Scale `scale` of the Service `name`; a JSON patch is
    /// applied within the body size bound, as every JSON patch.
    fn apply(&self, scale: &mut Value, name: &str) -> ApiResult<()> {
        match self {
            ScalePatch::Merge(patch) => {
                json_patch::merge(scale, patch);
                Ok(())
            }
            ScalePatch::Json(patch) => apply_json_patch(scale, patch, http::MAX_BODY_BYTES)
                .map_err(|refused| match refused {
                    PatchRefused::TooLarge(why) => {
                        ApiError::from(Status::request_entity_too_large(&why))
                    }
                    PatchRefused::Failed(e) => invalid(
                        name,
                        &[FieldError::invalid(
                            "",
                            "",
                            format!("the JSON patch cannot be applied: {e}"),
                        )],
                    ),
                }),
        }
    }
}

/// Changes the Service's `spec.replicas` to the Scale `wanted` makes of
/// the current one, conditionally, retrying lost races unless pinned to
/// `precondition`; answers with the Scale of the Service as written.
async fn write(
    request: &SubresourceRequest<'_>,
    precondition: Option<Revision>,
    options: &WriteOptions,
    mut warnings: Vec<String>,
    wanted: impl Fn(&Scale) -> ApiResult<(Scale, Vec<String>)> + Send + Sync,
) -> ApiResult<Response> {
    let res = request.resource;
    let name = request.name;
    // The warnings of the attempt that was written.
    let last_warnings = Mutex::new(Vec::new());
    let written = request
        .store
        .guaranteed_update(
            res,
            request.namespace,
            name,
            precondition,
            Part::Main,
            options,
            |current| {
                let scale = scale_of(current)?;
                let (new, decode_warnings) = wanted(&scale)?;
                check_preconditions(res, name, &scale, &new)?;
                let errors = new.validate();
                if !errors.is_empty() {
                    return Err(invalid(name, &errors));
                }
                if let Ok(mut last) = last_warnings.lock() {
                    *last = decode_warnings;
                }
                let mut service = current.clone();
                match service.get_mut("spec").and_then(Value::as_object_mut) {
                    Some(spec) => {
                        spec.insert("replicas".to_owned(), json!(new.spec.replicas));
                    }
                    None => service["spec"] = json!({"replicas": new.spec.replicas}),
                }
                Ok(service)
            },
        )
        .await?;
    warnings.extend(last_warnings.into_inner().unwrap_or_default());
    warnings.extend(written.warnings);
    let scale = to_value(&scale_of(&written.object)?)?;
    Ok(http::written_response(StatusCode::OK, scale, &warnings))
}

/// A Scale's `metadata.resourceVersion`, when it sets one.
fn revision_of(scale: &Scale) -> ApiResult<Option<Revision>> {
    match scale.metadata.resource_version.as_str() {
        "" => Ok(None),
        rv => generic::parse_revision(rv, "metadata.resourceVersion").map(Some),
    }
}

/// The name and namespace a PUT's Scale carries, if any, are the path's.
fn check_identity(request: &SubresourceRequest<'_>, scale: &Scale) -> ApiResult<()> {
    let meta = &scale.metadata;
    if !meta.name.is_empty() && meta.name != request.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            meta.name, request.name
        )));
    }
    if !meta.namespace.is_empty() && meta.namespace != request.namespace {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({}) does not match the namespace sent on the request ({})",
            meta.namespace, request.namespace
        )));
    }
    Ok(())
}

/// The resourceVersion and uid of the Scale to write, when set, are the
/// Service's (a JSON patch may have set them; a merge patch's or a PUT's
/// resourceVersion was checked as the write's precondition already).
fn check_preconditions(
    res: &ServedResource,
    name: &str,
    current: &Scale,
    new: &Scale,
) -> ApiResult<()> {
    let (now, asked) = (&current.metadata, &new.metadata);
    if !asked.resource_version.is_empty() && asked.resource_version != now.resource_version {
        return Err(ApiError::from(Status::conflict_modified(
            &res.group_resource(),
            name,
        )));
    }
    if !asked.uid.is_empty() && asked.uid != now.uid {
        return Err(ApiError::from(Status::conflict(
            &res.group_resource(),
            name,
            &format!(
                "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                asked.uid, now.uid
            ),
        )));
    }
    Ok(())
}

/// The Scale of a stored Service.
fn scale_of(service: &Value) -> ApiResult<Scale> {
    let service: Service = serde_json::from_value(service.clone())
        .map_err(|e| ApiError::internal(format!("a stored Service does not decode: {e}")))?;
    Ok(Scale::of_service(&service))
}

fn to_value(scale: &Scale) -> ApiResult<Value> {
    serde_json::to_value(scale).map_err(ApiError::internal)
}

/// A Scale as a one-row server-side Table (`kubectl get --subresource=scale`):
/// Name, Desired, Available, Age.
fn table(scale: &Scale) -> ApiResult<Value> {
    let object = to_value(scale)?;
    let column = |name: &str, kind: &str, description: &str| json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": description, "priority": 0});
    Ok(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": scale.metadata.resource_version},
        "columnDefinitions": [
            column("Name", "string", "The scaled object's name"),
            column("Desired", "integer", "The replicas wanted (spec.replicas)"),
            column("Available", "integer", "The replicas there are (status.replicas)"),
            column(AGE.name, AGE.kind, AGE.description),
        ],
        "rows": [{
            "cells": [
                scale.metadata.name,
                scale.spec.replicas,
                scale.status.replicas,
                (AGE.cell)(&object),
            ],
            "object": object,
        }],
    }))
}
