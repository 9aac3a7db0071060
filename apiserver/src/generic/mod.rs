//! The generic store: the verbs every resource shares, one file a verb, as
//! Kubernetes' `genericregistry.Store`.
//!
//! What is special about a kind (its strategy, hooks and subresources) comes
//! from its module under `registry/` through the [`ServedResource`]; every
//! write passes the [`admission`](crate::admission) chain. Nothing here names a
//! kind.

mod bounded_patch;
mod create;
mod delete;
mod delete_collection;
mod get_list;
mod patch;
mod update;
mod watch;

use std::sync::Arc;

use api_types::{FieldError, FieldValidation, Status};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

pub(crate) use bounded_patch::{PatchRefused, apply_json_patch};
pub use get_list::{ListPage, ListQuery};
pub use patch::PatchKind;
pub use watch::{watch_error_status, watch_from};

use crate::admission::{self, Operation, Review};
use crate::catalog::{Catalog, ServedResource};
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::{KeyValue, Revision, Store};

/// How many times a write retries after losing a race it did not ask to lose.
const RETRIES: usize = 16;

/// What a write may do.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Check everything, write nothing (`dryRun=All`).
    pub dry_run: bool,
    /// Who makes the change (`fieldManager`).
    pub field_manager: String,
    /// What to do with unknown fields.
    pub field_validation: FieldValidation,
    /// Server-side apply: take over conflicting fields.
    pub force: bool,
    /// The object's `managedFields` were computed by server-side apply: keep them.
    pub applied: bool,
}

/// Which part of an object a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but status.
    Main,
    /// The status subresource: only status.
    Status,
    /// Spec and status in one write, as the binding subresource makes.
    Whole,
}

/// A write's outcome.
#[derive(Debug)]
pub struct Written {
    /// The object as stored (or as it would be, for a dry run).
    pub object: Value,
    /// Warnings for the client (`Warning` headers).
    pub warnings: Vec<String>,
    /// Whether the write created the object.
    pub created: bool,
}

/// The verbs over a store and a catalog, with the admission chain every write passes.
pub struct GenericStore {
    /// Where objects live.
    pub store: Arc<dyn Store>,
    /// What is served.
    pub catalog: Arc<Catalog>,
    /// The admission steps, in order.
    pub admission: Arc<admission::Chain>,
    /// The most objects a list without `limit` returns (413 beyond).
    pub max_list_objects: usize,
    /// The most operations one JSON Patch may have (413 beyond).
    pub max_patch_operations: usize,
    /// How nodelets are called (task logs).
    pub nodelet_client: crate::logs::NodeletClient,
}

impl std::fmt::Debug for GenericStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericStore")
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A 422 naming every problem of an object of `res`.
pub(crate) fn invalid(res: &ServedResource, name: &str, errors: &[FieldError]) -> ApiError {
    ApiError::from(Status::invalid(&res.info.group_kind(), name, errors))
}

/// A resourceVersion from a request, in the field it came from.
pub(crate) fn parse_revision(text: &str, field: &str) -> ApiResult<Revision> {
    text.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!("{field} {text:?} is not a valid resource version"))
        })
}

/// Sets an object's status; `None` or null removes it.
pub(crate) fn set_status(object: &mut Value, status: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match status {
            Some(status) if !status.is_null() => {
                map.insert("status".to_owned(), status);
            }
            _ => {
                map.remove("status");
            }
        }
    }
}

impl GenericStore {
    /// Checks an object's apiVersion, kind, namespace and name against the request.
    pub fn check_identity(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: Option<&str>,
        object: &mut Value,
    ) -> ApiResult<()> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the body must be a JSON or YAML object",
            ));
        }
        let api_version = res.info.api_version();
        match object.get("apiVersion").and_then(Value::as_str) {
            // A kind served at two versions (Namespace at `v1` and
            // `loom.dev/v1`) is stored at one.
            None | Some("") => object["apiVersion"] = json!(res.stored_api_version),
            Some(v) if v == api_version || v == res.stored_api_version => {
                object["apiVersion"] = json!(res.stored_api_version);
            }
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match object.get("kind").and_then(Value::as_str) {
            None | Some("") => object["kind"] = json!(res.info.kind),
            Some(k) if k == res.info.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({}) of {}",
                    res.info.kind,
                    res.group_resource()
                )));
            }
        }
        let in_body = object::namespace(object).to_owned();
        if res.info.namespaced {
            let namespace = namespace.unwrap_or_default();
            if in_body.is_empty() {
                object::set_meta(object, "namespace", json!(namespace));
            } else if in_body != namespace {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({in_body}) does not match the namespace sent on the request ({namespace})"
                )));
            }
        } else if !in_body.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} is cluster-scoped: metadata.namespace must be empty, not {in_body:?}",
                res.group_resource()
            )));
        }
        if let Some(name) = name {
            let in_body = object::name(object);
            if in_body.is_empty() {
                object::set_meta(object, "name", json!(name));
            } else if in_body != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({in_body}) does not match the name on the URL ({name})"
                )));
            }
        }
        Ok(())
    }

    /// Passes a create or an update through the admission chain: the object as
    /// the chain leaves it (defaulted, normalized) replaces `object`; returns the
    /// warnings.
    async fn admit_write(
        &self,
        res: &ServedResource,
        part: Part,
        object: &mut Value,
        old: Option<&Value>,
        options: &WriteOptions,
    ) -> ApiResult<Vec<String>> {
        let name = object::name(object).to_owned();
        let namespace = object::namespace(object).to_owned();
        let mut review = Review {
            operation: if old.is_some() {
                Operation::Update
            } else {
                Operation::Create
            },
            resource: res,
            part,
            namespace: &namespace,
            name: &name,
            object: std::mem::take(object),
            old,
            field_validation: options.field_validation,
            dry_run: options.dry_run,
            warnings: Vec::new(),
            errors: Vec::new(),
        };
        let admitted = self.admission.admit(&mut review).await;
        *object = std::mem::take(&mut review.object);
        admitted.map(|()| review.warnings)
    }

    /// Reads one stored object.
    async fn load(&self, res: &ServedResource, namespace: &str, name: &str) -> ApiResult<KeyValue> {
        match self.store.get(&res.key(namespace, name)).await {
            Ok(Some(kv)) => Ok(kv),
            Ok(None) => Err(ApiError::from(Status::not_found(
                &res.group_resource(),
                name,
            ))),
            Err(error) => Err(ApiError::from_store(error, &res.group_resource(), name)),
        }
    }
}
