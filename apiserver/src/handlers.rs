//! The verbs, generic over every resource: get, list, create, update, patch,
//! delete, deletecollection, with admission (schema, strategy, namespaces),
//! status/spec separation, generation, finalizers and field ownership.

use std::sync::Arc;

use api_types::kinds::task::TASK_CONDITION_SCHEDULED;
use api_types::meta::set_condition;
use api_types::{
    Condition, ConditionStatus, FieldError, FieldValidation, GroupKind, Namespace,
    ResourceDefinition, Status,
};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::apply;
use crate::catalog::{Catalog, ServedResource};
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::registry::namespace::BUILT_IN;
use crate::store::{self, ContinueToken, KeyValue, ListOptions, Revision, Store};
use crate::watch_cache::{CachedObject, Filter};

/// How many times a write retries after losing a race it did not ask to lose.
const RETRIES: usize = 16;
/// Objects a deletecollection reads and deletes at a time.
const DELETE_PAGE: usize = 500;
/// The largest object a JSON Patch may build while it is applied (the request
/// body limit), and the most bytes its `copy` operations may copy in all.
const MAX_PATCHED_BYTES: usize = crate::http::MAX_BODY_BYTES;

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

/// `DeleteOptions`, from the body or the query.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteOptions {
    /// `Foreground`, `Background` or `Orphan`.
    pub propagation_policy: Option<String>,
    /// Only delete this exact object.
    pub preconditions: Option<Preconditions>,
    /// `["All"]` for a dry run.
    pub dry_run: Vec<String>,
    /// Accepted and ignored: deletion is immediate unless finalizers hold it.
    pub grace_period_seconds: Option<i64>,
    /// Kubernetes' older form of `propagationPolicy`.
    pub orphan_dependents: Option<bool>,
}

/// Conditions a delete must meet.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Preconditions {
    /// The object's uid.
    pub uid: Option<String>,
    /// The object's resourceVersion.
    pub resource_version: Option<String>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The objects, as JSON with their resourceVersion.
    pub items: Vec<Bytes>,
    /// The list's resourceVersion.
    pub revision: Revision,
    /// The token for the next page.
    pub continue_token: Option<String>,
}

/// What a list asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Namespace, labels and fields.
    pub filter: Filter,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
}

/// The verbs over a store and a catalog.
pub struct Api {
    /// Where objects live.
    pub store: Arc<dyn Store>,
    /// What is served.
    pub catalog: Arc<Catalog>,
    /// The most objects a list without `limit` returns (413 beyond).
    pub max_list_objects: usize,
    /// The most operations one JSON Patch may have (413 beyond).
    pub max_patch_operations: usize,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn invalid(res: &ServedResource, name: &str, errors: &[FieldError]) -> ApiError {
    ApiError::from(Status::invalid(&res.info.group_kind(), name, errors))
}

fn parse_revision(text: &str, field: &str) -> ApiResult<Revision> {
    text.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!("{field} {text:?} is not a valid resource version"))
        })
}

/// Five characters for `generateName`, from Kubernetes' alphabet (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

impl Api {
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
            None | Some("") => object["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
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

    /// Admission of a write: schema checks (unknown fields per `fieldValidation`,
    /// every violation), then the kind's own decoding, rules and normalization,
    /// with every problem in one answer. Returns the warnings.
    fn admit(
        &self,
        res: &ServedResource,
        object: &mut Value,
        old: Option<&Value>,
        mode: FieldValidation,
    ) -> ApiResult<Vec<String>> {
        if object::depth(object) > crate::schema::MAX_DEPTH {
            return Err(ApiError::bad_request(format!(
                "the object is nested deeper than {} levels",
                crate::schema::MAX_DEPTH
            )));
        }
        let name = object::name(object).to_owned();
        let unknown = res
            .schema
            .unknown_fields(object, mode != FieldValidation::Strict);
        let mut errors: Vec<FieldError> = Vec::new();
        let mut warnings = Vec::new();
        match mode {
            FieldValidation::Strict if !unknown.is_empty() => {
                errors.extend(unknown.iter().map(|path| {
                    FieldError::forbidden(path.clone(), "field not declared in schema")
                }));
                // Check the rest without the unknown fields, so each problem shows once.
                let mut pruned = object.clone();
                res.schema.unknown_fields(&mut pruned, true);
                errors.extend(res.schema.violations(&pruned));
            }
            FieldValidation::Strict => errors.extend(res.schema.violations(object)),
            FieldValidation::Warn | FieldValidation::Ignore => {
                if mode == FieldValidation::Warn {
                    warnings.extend(unknown.iter().map(|p| format!("unknown field \"{p}\"")));
                }
                errors.extend(res.schema.violations(object));
            }
        }
        if !errors.is_empty() {
            // Report the kind's own rules too, on the object without the bad fields,
            // so one answer lists every problem.
            let mut rest = object.clone();
            for error in &errors {
                remove_path(&mut rest, &error.field);
            }
            res.schema.unknown_fields(&mut rest, true);
            if let Err(more) = res.strategy.admit(rest, old) {
                for error in more {
                    if !errors.iter().any(|e| e.field == error.field) {
                        errors.push(error);
                    }
                }
            }
            return Err(invalid(res, &name, &errors));
        }
        *object = res
            .strategy
            .admit(std::mem::take(object), old)
            .map_err(|errors| invalid(res, &name, &errors))?;
        warnings.extend(res.strategy.warnings(object));
        Ok(warnings)
    }

    async fn namespace_usable(&self, res: &ServedResource, namespace: &str) -> ApiResult<()> {
        if !res.info.namespaced {
            return Ok(());
        }
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
                    &res.group_resource(),
                    "",
                    &format!(
                        "unable to create new content in namespace {namespace} because it is being terminated"
                    ),
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Reads one object.
    pub async fn get(&self, res: &ServedResource, namespace: &str, name: &str) -> ApiResult<Value> {
        let kv = self.load(res, namespace, name).await?;
        object::from_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)
    }

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

    /// Creates an object.
    pub async fn create(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        mut object: Value,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        self.check_identity(res, namespace, None, &mut object)?;
        let namespace = object::namespace(&object).to_owned();
        let generate = object::meta_str(&object, "generateName").map(str::to_owned);
        if object::name(&object).is_empty()
            && let Some(prefix) = &generate
        {
            object::set_meta(
                &mut object,
                "name",
                json!(format!("{prefix}{}", random_suffix())),
            );
        }
        // What the server owns.
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            object::set_meta(&mut object, field, Value::Null);
        }
        object::set_meta(&mut object, "uid", json!(uuid::Uuid::new_v4().to_string()));
        object::set_meta(&mut object, "creationTimestamp", json!(now()));
        object::set_meta(&mut object, "generation", json!(1));
        if res.info.has_status
            && !res.strategy.status_on_create()
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
            if let Some(status) = res.strategy.initial_status() {
                map.insert("status".to_owned(), status);
            }
        }
        let mut warnings = self.admit(res, &mut object, None, options.field_validation)?;
        self.check_definition(res, &object)?;
        self.namespace_usable(res, &namespace).await?;
        if !options.applied {
            object::set_meta(&mut object, "managedFields", Value::Null);
            apply::record_update(
                None,
                &mut object,
                &options.field_manager,
                &res.info.api_version(),
                false,
            );
        }
        if options.dry_run {
            return Ok(Written {
                object,
                warnings,
                created: true,
            });
        }
        for attempt in 0.. {
            let name = object::name(&object).to_owned();
            match self
                .store
                .create(&res.key(&namespace, &name), object::to_stored(&object))
                .await
            {
                Ok(kv) => {
                    let mut stored = object;
                    object::set_meta(
                        &mut stored,
                        "resourceVersion",
                        json!(kv.mod_revision.to_string()),
                    );
                    self.after_write(res, &stored);
                    warnings.shrink_to_fit();
                    return Ok(Written {
                        object: stored,
                        warnings,
                        created: true,
                    });
                }
                Err(store::Error::AlreadyExists { .. }) if generate.is_some() && attempt < 8 => {
                    let prefix = generate.clone().unwrap_or_default();
                    object::set_meta(
                        &mut object,
                        "name",
                        json!(format!("{prefix}{}", random_suffix())),
                    );
                }
                Err(error) => {
                    return Err(ApiError::from_store(error, &res.group_resource(), &name));
                }
            }
        }
        Err(ApiError::internal("unreachable"))
    }

    /// Extra rules for ResourceDefinitions: the schema must compile, built-in groups are taken.
    fn check_definition(&self, res: &ServedResource, object: &Value) -> ApiResult<()> {
        if res.definition.is_some() || res.info.kind != "ResourceDefinition" {
            return Ok(());
        }
        let definition: ResourceDefinition =
            serde_json::from_value(object.clone()).map_err(ApiError::internal)?;
        let name = definition.metadata.name.clone();
        let mut errors = Vec::new();
        if definition.spec.group == api_types::resource::GROUP {
            errors.push(FieldError::invalid(
                "spec.group",
                definition.spec.group.as_str(),
                "the loom.dev group is reserved for built-in kinds",
            ));
        }
        for (i, version) in definition.spec.versions.iter().enumerate() {
            if let Some(schema) = &version.schema
                && let Err(error) = crate::schema::SchemaValidator::new(
                    schema.open_api_v3_schema.clone(),
                    crate::schema::Dialect::OpenApiV3,
                )
            {
                errors.push(FieldError::invalid(
                    format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    "",
                    error,
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(res, &name, &errors))
        }
    }

    /// Keeps in-process state in step with a write (custom kinds served at once).
    fn after_write(&self, res: &ServedResource, object: &Value) {
        if res.definition.is_none() && res.info.kind == "ResourceDefinition" {
            match serde_json::from_value::<ResourceDefinition>(object.clone()) {
                Ok(definition) => {
                    if let Err(error) = self.catalog.apply_definition(&definition) {
                        tracing::warn!(%error, "cannot serve resource definition");
                    }
                }
                Err(error) => tracing::warn!(%error, "unreadable resource definition"),
            }
        }
    }

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

    /// Binds a task to a node (`POST tasks/{name}/binding`, as Kubernetes'
    /// `pods/{name}/binding`): one conditional write sets `spec.nodeName` and the
    /// `Scheduled=True` condition. A task already bound, being deleted, or not at
    /// the binding's `metadata.resourceVersion`/`uid` is a conflict.
    pub async fn bind(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        binding: &Value,
        options: &WriteOptions,
    ) -> ApiResult<Status> {
        let kind = GroupKind::new(&res.info.group, "Binding");
        let mut errors = Vec::new();
        let node = binding
            .get("target")
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() {
            errors.push(FieldError::required(
                "target.name",
                "the node to bind the task to",
            ));
        } else {
            for why in api_types::names::is_dns1123_subdomain(node) {
                errors.push(FieldError::invalid("target.name", node, why));
            }
        }
        match binding.get("target").and_then(|t| t.get("kind")) {
            None => {}
            Some(Value::String(k)) if k == "Node" => {}
            Some(other) => errors.push(FieldError::not_supported(
                "target.kind",
                other.to_string(),
                &["Node"],
            )),
        }
        if let Some(named) = object::meta_str(binding, "name")
            && !named.is_empty()
            && named != name
        {
            errors.push(FieldError::invalid(
                "metadata.name",
                named,
                "must match the task named in the path",
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::from(Status::invalid(&kind, name, &errors)));
        }
        let precondition = match object::meta_str(binding, "resourceVersion") {
            Some(rv) if !rv.is_empty() => Some(parse_revision(rv, "metadata.resourceVersion")?),
            _ => None,
        };
        let uid = object::meta_str(binding, "uid").filter(|u| !u.is_empty());
        let message = binding
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("bound to {node}"));
        let resource = res.group_resource();
        self.guaranteed_update(
            res,
            namespace,
            name,
            precondition,
            Part::Whole,
            options,
            |current| {
                let refuse =
                    |why: String| Err(ApiError::from(Status::conflict(&resource, name, &why)));
                if let Some(uid) = uid
                    && object::meta_str(current, "uid") != Some(uid)
                {
                    return refuse(format!("Precondition failed: UID in precondition: {uid}"));
                }
                if object::meta_str(current, "deletionTimestamp").is_some() {
                    return refuse("the task is being deleted and cannot be bound".to_owned());
                }
                let bound = current
                    .get("spec")
                    .and_then(|s| s.get("nodeName"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !bound.is_empty() {
                    return refuse(format!("the task is already bound to node {bound:?}"));
                }
                let mut new = current.clone();
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("nodeName".to_owned(), json!(node));
                }
                let mut conditions: Vec<Condition> = new
                    .get("status")
                    .and_then(|s| s.get("conditions"))
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .unwrap_or_default();
                set_condition(
                    &mut conditions,
                    Condition {
                        type_: TASK_CONDITION_SCHEDULED.into(),
                        status: ConditionStatus::True,
                        reason: "Scheduled".into(),
                        message: message.clone(),
                        ..Default::default()
                    },
                    Utc::now(),
                );
                let conditions = serde_json::to_value(conditions).map_err(ApiError::internal)?;
                match new.get_mut("status").and_then(Value::as_object_mut) {
                    Some(status) => {
                        status.insert("conditions".to_owned(), conditions);
                    }
                    None => set_status(&mut new, Some(json!({"conditions": conditions}))),
                }
                Ok(new)
            },
        )
        .await?;
        let mut done = Status::success();
        done.code = 201;
        Ok(done)
    }

    /// Reads, transforms and writes an object conditionally, retrying lost races
    /// unless the caller pinned a resourceVersion.
    #[allow(clippy::too_many_arguments)]
    async fn guaranteed_update(
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
        let key = res.key(namespace, name);
        for attempt in 0..RETRIES {
            // The first attempt starts from the watch cache's copy, as Kubernetes'
            // GuaranteedUpdate does: the write is conditioned on that copy's
            // revision, so a stale copy only costs a retry from the store. A copy
            // that cannot meet the caller's precondition is never trusted.
            let cached = res.cache.get(&key).filter(|cached| {
                attempt == 0
                    && !options.dry_run
                    && precondition.is_none_or(|expected| expected == cached.revision)
            });
            let from_cache = cached.is_some();
            let (current, mod_revision) = match cached {
                Some(cached) => (cached.value(), cached.revision),
                None => {
                    let kv = self.load(res, namespace, name).await?;
                    let current = object::from_stored(&kv.value, kv.mod_revision)
                        .map_err(ApiError::internal)?;
                    (current, kv.mod_revision)
                }
            };
            if let Some(expected) = precondition
                && expected != mod_revision
            {
                return Err(ApiError::from(Status::conflict_modified(
                    &res.group_resource(),
                    name,
                )));
            }
            let mut new = transform(&current)?;
            self.check_identity(res, Some(namespace), Some(name), &mut new)?;
            // The part not written keeps its stored value.
            if res.info.has_status {
                let keep_from_current = match part {
                    Part::Main => {
                        set_status(&mut new, current.get("status").cloned());
                        None
                    }
                    Part::Status => Some(new.get("status").cloned()),
                    Part::Whole => None,
                };
                if let Some(status) = keep_from_current {
                    let labels = new.get("metadata").cloned();
                    new = current.clone();
                    set_status(&mut new, status);
                    // A status write may still move labels and annotations, as Kubernetes allows.
                    if let Some(meta) = labels {
                        for key in ["labels", "annotations"] {
                            object::set_meta(
                                &mut new,
                                key,
                                meta.get(key).cloned().unwrap_or(Value::Null),
                            );
                        }
                    }
                }
            }
            // What the server owns comes from the stored object.
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                let value = current
                    .get("metadata")
                    .and_then(|m| m.get(field))
                    .cloned()
                    .unwrap_or(Value::Null);
                object::set_meta(&mut new, field, value);
            }
            object::set_meta(&mut new, "resourceVersion", Value::Null);
            let mut errors = Vec::new();
            if object::meta_str(&current, "deletionTimestamp").is_some() {
                let before = object::finalizers(&current);
                for added in object::finalizers(&new)
                    .iter()
                    .filter(|f| !before.contains(f))
                {
                    errors.push(FieldError::forbidden(
                        "metadata.finalizers",
                        format!("no new finalizers can be added if the object is being deleted, found new finalizer {added:?}"),
                    ));
                }
            }
            if !errors.is_empty() {
                return Err(invalid(res, name, &errors));
            }
            // A binding changes only `spec.nodeName` (checked by `bind`) and a typed
            // condition of an object admitted before: like Kubernetes' binding, it
            // does not run the kind's admission again.
            let mut warnings = if part == Part::Whole {
                Vec::new()
            } else {
                self.admit(res, &mut new, Some(&current), options.field_validation)?
            };
            self.check_definition(res, &new)?;
            let mut generation = current
                .get("metadata")
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if object::spec_fields(&new) != object::spec_fields(&current) {
                generation += 1;
            }
            object::set_meta(&mut new, "generation", json!(generation));
            if !options.field_manager.is_empty() {
                apply::record_update(
                    Some(&current),
                    &mut new,
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
                object::set_meta(&mut new, "managedFields", managed.unwrap_or(Value::Null));
            }
            let mut unchanged = current.clone();
            object::set_meta(&mut unchanged, "resourceVersion", Value::Null);
            if new == unchanged {
                if from_cache {
                    // No write to catch a stale copy: confirm against the store.
                    continue;
                }
                return Ok(Written {
                    object: current,
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
            let finished = object::meta_str(&new, "deletionTimestamp").is_some()
                && object::finalizers(&new).is_empty();
            let result = if finished {
                // The last finalizer is gone: the delete that was waiting for it happens now.
                self.store
                    .delete(&key, Some(mod_revision))
                    .await
                    .map(|deleted| {
                        let mut gone = new.clone();
                        object::set_meta(
                            &mut gone,
                            "resourceVersion",
                            json!(deleted.revision.to_string()),
                        );
                        gone
                    })
            } else {
                match self
                    .store
                    .update(&key, object::to_stored(&new), mod_revision)
                    .await
                {
                    // The stored bytes are `new` serialized: no need to parse them back.
                    Ok(kv) => {
                        let mut written = new;
                        object::set_meta(
                            &mut written,
                            "resourceVersion",
                            json!(kv.mod_revision.to_string()),
                        );
                        Ok(written)
                    }
                    Err(error) => Err(error),
                }
            };
            match result {
                Ok(object) => {
                    self.after_write(res, &object);
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

    /// Deletes an object; with finalizers (or a Foreground/Orphan policy) it is
    /// only marked, and goes when its last finalizer does.
    pub async fn delete(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<Value> {
        if res.info.kind == "Namespace" && res.definition.is_none() && BUILT_IN.contains(&name) {
            return Err(ApiError::from(Status::forbidden(
                &res.group_resource(),
                name,
                "this namespace may not be deleted",
            )));
        }
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
            if res.info.kind == "Namespace" && res.definition.is_none() {
                self.delete_namespace_contents(name).await?;
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(deleted) => {
                    let mut gone = current;
                    object::set_meta(
                        &mut gone,
                        "resourceVersion",
                        json!(deleted.revision.to_string()),
                    );
                    if res.definition.is_none() && res.info.kind == "ResourceDefinition" {
                        self.catalog.remove_definition(name);
                        self.delete_custom_objects(&gone).await;
                    }
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

    /// Deletes every object in a namespace that is going away.
    async fn delete_namespace_contents(&self, namespace: &str) -> ApiResult<()> {
        let mut prefixes: Vec<String> = self
            .catalog
            .resources()
            .iter()
            .filter(|r| r.info.namespaced)
            .map(|r| r.prefix(Some(namespace)))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        for prefix in prefixes {
            self.delete_prefix(&prefix).await?;
        }
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> ApiResult<()> {
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

    /// The objects of a deleted custom kind go with it.
    async fn delete_custom_objects(&self, definition: &Value) {
        let group = api_types::selector::json_field(definition, "spec.group").unwrap_or_default();
        let plural =
            api_types::selector::json_field(definition, "spec.names.plural").unwrap_or_default();
        if group.is_empty() || plural.is_empty() {
            return;
        }
        if let Err(error) = self.delete_prefix(&format!("{group}/{plural}/")).await {
            tracing::warn!(error = %error.0.message, "cannot delete the objects of a removed custom kind");
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

    /// Waits until the watch cache has caught up with `wanted` (a revision the
    /// client has seen), so a list from it is not older than that.
    async fn cache_at(&self, res: &ServedResource, wanted: Revision) -> ApiResult<()> {
        if res
            .cache
            .wait_for(wanted, std::time::Duration::from_secs(3))
            .await
        {
            return Ok(());
        }
        Err(ApiError::from_store(
            store::Error::FutureRevision {
                requested: wanted,
                current: res.cache.revision(),
            },
            &res.group_resource(),
            "",
        ))
    }

    fn list_too_large(&self, res: &ServedResource) -> ApiError {
        ApiError::from(Status::request_entity_too_large(&format!(
            "the list of {} has more than {} objects, the most a list without limit may return: list in pages with limit and continue",
            res.group_resource(),
            self.max_list_objects
        )))
    }

    /// Lists objects: from the watch cache when the request allows any recent
    /// state (`resourceVersion=0` or `NotOlderThan`), else from the store, exactly
    /// at the revision asked or the latest. Without `limit`, more than
    /// `max_list_objects` objects is a 413, decided before they are all
    /// gathered; a `limit` above it is lowered to it (the client pages on).
    pub async fn list(&self, res: &ServedResource, query: ListQuery) -> ApiResult<ListPage> {
        let max = self.max_list_objects;
        let exact = match list_source(&query)? {
            ListSource::Cache(wanted) => {
                self.cache_at(res, wanted).await?;
                match res.cache.list_at_most(&query.filter, max) {
                    Some((items, revision)) => {
                        return Ok(ListPage {
                            items: items.iter().map(|o| o.json.clone()).collect(),
                            revision,
                            continue_token: None,
                        });
                    }
                    // Too many for one answer; the client can page, so read the
                    // store a page at a time (at the latest revision, which is
                    // not older than what it asked for).
                    None if query.limit.is_some() => None,
                    None => return Err(self.list_too_large(res)),
                }
            }
            ListSource::Store(exact) => exact,
        };
        let prefix = res.prefix(query.filter.namespace.as_deref());
        let selectable = res.selectable_fields();
        let filtered = query.filter.labels.is_some() || query.filter.fields.is_some();
        let mut items = Vec::new();
        let mut token = query.continue_token.clone();
        let mut revision = exact;
        let wanted = query.limit.filter(|l| *l > 0).map(|l| l.min(max));
        loop {
            let page_size = wanted
                .map(|w| (w - items.len()).clamp(50, 10_000))
                .or(Some(10_000));
            let page = self
                .store
                .list(&prefix, ListOptions { revision, limit: page_size, continue_token: token.take() })
                .await
                .map_err(|e| match e {
                    store::Error::Compacted { requested, compacted } if query.continue_token.is_some() => {
                        ApiError::from(Status::gone(format!(
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results ({requested} < {compacted})"
                        )))
                    }
                    e => ApiError::from_store(e, &res.group_resource(), ""),
                })?;
            revision = Some(page.revision);
            let count = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                // Parse an object only when a selector has to look inside it.
                let json = if filtered {
                    let Some(cached) = CachedObject::from_kv(kv, kv.mod_revision, &selectable)
                    else {
                        continue;
                    };
                    if !query.filter.matches(&cached) {
                        continue;
                    }
                    cached.json
                } else {
                    object::with_resource_version(&kv.value, kv.mod_revision)
                };
                if wanted.is_none() && items.len() == max {
                    return Err(self.list_too_large(res));
                }
                items.push(json);
                if let Some(wanted) = wanted
                    && items.len() >= wanted
                {
                    let more = i + 1 < count || page.continue_token.is_some();
                    let continue_token = more.then(|| {
                        ContinueToken {
                            revision: page.revision,
                            last_key: kv.key.clone(),
                        }
                        .encode()
                    });
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token,
                    });
                }
            }
            match page.continue_token {
                Some(next) => token = Some(next),
                None => {
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token: None,
                    });
                }
            }
        }
    }
}

/// Where a list reads.
enum ListSource {
    /// The watch cache, once it has seen this revision.
    Cache(Revision),
    /// The store, at this revision or the latest.
    Store(Option<Revision>),
}

/// Where a list query reads: any recent state (`resourceVersion=0` or
/// `NotOlderThan`) comes from the watch cache; the rest from the store.
fn list_source(query: &ListQuery) -> ApiResult<ListSource> {
    let rv = query.resource_version.as_deref().filter(|v| !v.is_empty());
    let from_cache = query.continue_token.is_none()
        && matches!(
            (rv, query.resource_version_match.as_deref()),
            (Some("0"), _) | (Some(_), Some("NotOlderThan"))
        );
    if from_cache {
        return Ok(ListSource::Cache(parse_revision(
            rv.unwrap_or("0"),
            "resourceVersion",
        )?));
    }
    let exact = match (rv, query.resource_version_match.as_deref()) {
        (Some(rv), Some("Exact")) => Some(parse_revision(rv, "resourceVersion")?),
        (Some(rv), None) if query.continue_token.is_none() => {
            Some(parse_revision(rv, "resourceVersion")?)
        }
        (Some(_), Some(other)) if other != "Exact" && other != "NotOlderThan" => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch {other:?} is not supported: use Exact or NotOlderThan"
            )));
        }
        _ => None,
    };
    Ok(ListSource::Store(exact))
}

fn set_status(object: &mut Value, status: Option<Value>) {
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

/// Removes the field at a dotted path (`spec.env[0].name`), if present.
fn remove_path(object: &mut Value, path: &str) {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segments.push(rest[..open].to_owned());
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                segments.push(rest[1..close].to_owned());
                rest = &rest[close + 1..];
            }
        } else {
            segments.push(rest.to_owned());
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut current = object;
    for key in parents {
        let next = match current {
            Value::Object(map) => map.get_mut(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return,
        }
    }
    match current {
        Value::Object(map) => {
            map.remove(last);
        }
        Value::Array(items) => {
            if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < items.len()) {
                items[i] = Value::Null;
            }
        }
        _ => {}
    }
}

/// Why a JSON Patch was not applied.
#[derive(Debug)]
enum PatchRefused {
    /// It would build too large a document, or copy too much.
    TooLarge(String),
    /// An operation failed (a `test`, a missing path).
    Failed(json_patch::PatchError),
}

/// Applies a JSON Patch one operation at a time, keeping an estimate of the
/// document's serialized size: an operation that would take it over
/// `max_bytes`, or `copy` operations copying more than `max_bytes` in all, stop
/// the patch there. (Applied whole, ten `copy` operations of the document into
/// itself would build it 1,024 times over before anything could look at it.)
///
/// Every value the estimate walks is bounded: an added or copied value is
/// walked only up to what is left of the limit, and a removed one was built
/// from the document, the patch body or a bounded copy.
fn apply_json_patch(
    doc: &mut Value,
    patch: &[json_patch::PatchOperation],
    max_bytes: usize,
) -> Result<(), PatchRefused> {
    use json_patch::PatchOperation;
    let too_large = |index: usize| {
        PatchRefused::TooLarge(format!(
            "the JSON patch would make the object larger than {max_bytes} bytes (at operation {index})"
        ))
    };
    let mut size = json_size(doc, usize::MAX).unwrap_or(usize::MAX);
    let mut copied = 0usize;
    for (index, operation) in patch.iter().enumerate() {
        // What the operation takes away, then what it adds, within what is left.
        let path = operation.path().as_str();
        let shrink = match operation {
            PatchOperation::Move(op) if op.from.as_str() == path => 0,
            // A member moved up over its ancestor: the ancestor goes, the member stays.
            PatchOperation::Move(op) if op.from.as_str().starts_with(&format!("{path}/")) => {
                let moved = doc
                    .pointer(op.from.as_str())
                    .and_then(|v| json_size(v, usize::MAX))
                    .unwrap_or(0);
                replaced_member(doc, path).saturating_sub(moved)
            }
            PatchOperation::Move(op) => {
                member_overhead(doc, op.from.as_str()) + replaced_member(doc, path)
            }
            PatchOperation::Add(_) | PatchOperation::Copy(_) => replaced_member(doc, path),
            PatchOperation::Remove(_) => {
                doc.pointer(path)
                    .and_then(|old| json_size(old, usize::MAX))
                    .unwrap_or(0)
                    + member_overhead(doc, path)
            }
            PatchOperation::Replace(_) => doc
                .pointer(path)
                .and_then(|old| json_size(old, usize::MAX))
                .unwrap_or(0),
            PatchOperation::Test(_) => 0,
        };
        let room = (max_bytes + shrink).saturating_sub(size);
        // Only what adds a member pays for its key: the pointer is walked then.
        let key = || member_overhead(doc, path);
        let grow = match operation {
            PatchOperation::Add(op) => json_size(&op.value, room).map(|n| n + key()),
            PatchOperation::Replace(op) => json_size(&op.value, room),
            PatchOperation::Move(_) => Some(key()),
            PatchOperation::Copy(op) => {
                let budget = room.min(max_bytes - copied);
                match doc.pointer(op.from.as_str()) {
                    Some(from) => match json_size(from, budget) {
                        Some(n) => {
                            copied += n;
                            Some(n + key())
                        }
                        None if budget < room => {
                            return Err(PatchRefused::TooLarge(format!(
                                "the JSON patch copies more than {max_bytes} bytes in all (at operation {index})"
                            )));
                        }
                        None => None,
                    },
                    // The operation fails below, naming the bad path.
                    None => Some(0),
                }
            }
            PatchOperation::Remove(_) | PatchOperation::Test(_) => Some(0),
        };
        let Some(grow) = grow.filter(|grow| *grow <= room) else {
            return Err(too_large(index));
        };
        json_patch::patch_unsafe(doc, std::slice::from_ref(operation)).map_err(|mut error| {
            error.operation = index;
            PatchRefused::Failed(error)
        })?;
        size = (size + grow).saturating_sub(shrink);
    }
    Ok(())
}

/// The size of what an `add` (or `copy`, `move`) to `path` replaces: the
/// whole document for `""`, an object's existing member with its key; nothing
/// for a new member or an array insert.
fn replaced_member(doc: &Value, path: &str) -> usize {
    if path.is_empty() {
        return json_size(doc, usize::MAX).unwrap_or(0);
    }
    let Some((parent, last)) = path.rsplit_once('/') else {
        return 0;
    };
    let key = unescape_token(last);
    match doc.pointer(parent) {
        Some(Value::Object(map)) => map
            .get(&key)
            .and_then(|old| json_size(old, usize::MAX))
            .map_or(0, |size| size + key.len() + 4),
        _ => 0,
    }
}

/// What a member at `path` costs besides its value: its quoted key, colon and
/// comma in an object, its comma in an array, nothing for the document itself.
fn member_overhead(doc: &Value, path: &str) -> usize {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return 0;
    };
    match doc.pointer(parent) {
        Some(Value::Object(_)) => unescape_token(last).len() + 4,
        Some(Value::Array(_)) => 1,
        _ => 0,
    }
}

/// A JSON Pointer reference token as the key it names (RFC 6901).
fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// About the length of `value` as compact JSON (string escapes aside), or
/// `None` once it is over `budget`: the walk stops there, so measuring a huge
/// value against a small budget is cheap. Iterative: patched documents can be
/// deep.
fn json_size(value: &Value, budget: usize) -> Option<usize> {
    let mut total = 0usize;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        total += match value {
            Value::Null => 4,
            Value::Bool(b) => 4 + usize::from(!b),
            Value::Number(n) => number_size(n),
            Value::String(text) => text.len() + 2,
            Value::Array(items) => {
                pending.extend(items.iter());
                items.len() + 1
            }
            Value::Object(map) => {
                total += map.keys().map(|k| k.len() + 4).sum::<usize>();
                pending.extend(map.values());
                2
            }
        };
        if total > budget {
            return None;
        }
    }
    Some(total)
}

/// Digits (and sign) of an integer; a float counts as its longest form.
fn number_size(n: &serde_json::Number) -> usize {
    let digits = |u: u64| u.checked_ilog10().map_or(1, |d| d as usize + 1);
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => digits(u),
        (None, Some(i)) => digits(i.unsigned_abs()) + 1,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn patch(ops: Value) -> json_patch::Patch {
        serde_json::from_value(ops).unwrap()
    }

    #[test]
    fn a_doubling_copy_patch_stops_at_the_size_limit_after_a_few_operations() {
        let mut doc = json!({"spec": {"a": "x".repeat(1000)}});
        // Each copy doubles the document: 10,000 of them would never finish.
        let ops: Vec<Value> = (0..10_000)
            .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/c{i}")}))
            .collect();
        let started = std::time::Instant::now();
        let refused = apply_json_patch(&mut doc, &patch(json!(ops)), 3 * 1024 * 1024);
        let Err(PatchRefused::TooLarge(why)) = refused else {
            panic!("the patch must be refused as too large: {refused:?}");
        };
        assert!(why.contains("larger than 3145728 bytes"), "{why}");
        let at: usize = why
            .rsplit("operation ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        assert!(at < 20, "stopped only at operation {at}: {why}");
        assert!(
            serde_json::to_vec(&doc).unwrap().len() <= 3 * 1024 * 1024,
            "the document was built past the limit"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn copies_are_bounded_in_all_even_when_each_is_removed_again() {
        let mut doc = json!({"big": "x".repeat(100_000)});
        let mut ops = Vec::new();
        for _ in 0..1_000 {
            ops.push(json!({"op": "copy", "from": "/big", "path": "/copy"}));
            ops.push(json!({"op": "remove", "path": "/copy"}));
        }
        let refused = apply_json_patch(&mut doc, &patch(json!(ops)), 1024 * 1024);
        let Err(PatchRefused::TooLarge(why)) = refused else {
            panic!("the patch must be refused: {refused:?}");
        };
        assert!(why.contains("copies more than 1048576 bytes"), "{why}");
    }

    #[test]
    fn ordinary_patches_apply_and_failures_name_their_operation() {
        let mut doc = json!({"spec": {"replicas": 1, "list": [1, 2]}, "status": {}});
        let ops = patch(json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
            {"op": "move", "from": "/spec/copy", "path": "/status/moved"},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "test", "path": "/spec/replicas", "value": 3},
        ]));
        apply_json_patch(&mut doc, &ops, 1024).unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 3, "list": [2, 3]}, "status": {"moved": [1, 2, 3]}})
        );
        let failing = patch(json!([
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "test", "path": "/spec/replicas", "value": 4},
        ]));
        let Err(PatchRefused::Failed(error)) = apply_json_patch(&mut doc, &failing, 1024) else {
            panic!("a failed test must fail the patch");
        };
        assert_eq!(error.operation, 1);
    }

    #[test]
    fn replacing_and_moving_keep_the_estimate_close() {
        // Replacing a large value by a small one many times must not look like growth.
        let mut doc = json!({"a": "x".repeat(500)});
        let mut ops = Vec::new();
        for i in 0..200 {
            ops.push(json!({"op": "add", "path": "/a", "value": "x".repeat(500 + i % 2)}));
            ops.push(json!({"op": "move", "from": "/a", "path": "/b"}));
            ops.push(json!({"op": "move", "from": "/b", "path": "/a"}));
        }
        apply_json_patch(&mut doc, &patch(json!(ops)), 2_000).unwrap();
    }

    #[test]
    fn json_size_is_the_compact_length_and_stops_at_its_budget() {
        let value = json!({"a": [1, -20, 3.5, null, true, false, "x\u{e9}"], "bb": {}});
        let exact = serde_json::to_vec(&value).unwrap().len();
        let estimate = json_size(&value, usize::MAX).unwrap();
        // Floats count as their longest form; everything else exactly.
        assert!(
            estimate >= exact && estimate <= exact + 24,
            "{estimate} vs {exact}"
        );
        assert_eq!(json_size(&value, 10), None);
    }
}
