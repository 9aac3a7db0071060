//! Tasks: bound by the scheduler through their `binding` subresource, their
//! log proxied from their node through `log`, selectable by node and phase; a
//! task that asks for no memory gets the cluster's default limit.

use api_types::kinds::task::TASK_CONDITION_SCHEDULED;
use api_types::meta::set_condition;
use api_types::{Condition, ConditionStatus, FieldError, GroupKind, Quantity, Status, Task};
use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde_json::{Value, json};

use super::{Column, Rest, Subresource, SubresourceRequest, Typed, field};
use crate::admission::{AdmissionStep, Operation, Phase, Review};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::generic::{self, GenericStore, Part, WriteOptions};
use crate::http;
use crate::object;

/// The Task REST storage: its strategy, `log` and `binding`.
pub fn rest() -> Rest {
    Rest::new(strategy()).subresource(Log).subresource(Binding)
}

/// The Task strategy.
pub fn strategy() -> Typed<Task> {
    Typed::new(vec![
        Column {
            name: "Phase",
            kind: "string",
            description: "Where the task is in its life",
            priority: 0,
            cell: |o| phase(o),
        },
        Column {
            name: "Node",
            kind: "string",
            description: "The node the task is bound to",
            priority: 0,
            cell: |o| field(o, "spec.nodeName"),
        },
        Column {
            name: "Exit",
            kind: "string",
            description: "The exit code, once the task has ended",
            priority: 0,
            cell: |o| field(o, "status.exitCode"),
        },
        Column {
            name: "Reason",
            kind: "string",
            description: "Why the task is in its phase",
            priority: 1,
            cell: |o| field(o, "status.reason"),
        },
    ])
    .selectable(&["spec.nodeName", "status.phase"])
    .initial_status(json!({"phase": "Pending"}))
}

fn phase(object: &Value) -> Value {
    match api_types::selector::json_field(object, "status.phase") {
        Some(phase) => json!(phase),
        None => json!("Pending"),
    }
}

/// Mutating admission: gives a task without a memory limit the cluster's
/// default, at creation, so the scheduler counts it and the node enforces it
/// (as Kubernetes' LimitRanger). A replacement that omits the field keeps the
/// stored value (the spec is immutable; a client that sends back its own
/// manifest did not mean to change it).
#[derive(Clone, Debug, Default)]
pub struct DefaultMemory {
    /// The default (`None` or zero: none).
    pub memory: Option<Quantity>,
}

impl DefaultMemory {
    /// The memory a task without its own gets: the stored task's on an
    /// update, else the default.
    fn memory_for(&self, old: Option<&Value>) -> Option<Value> {
        match old {
            Some(old) => old
                .pointer("/spec/resources/memory")
                .filter(|m| !m.is_null())
                .cloned(),
            None => self
                .memory
                .filter(|q| !q.is_zero())
                .map(|q| json!(q.to_string())),
        }
    }
}

#[async_trait]
impl AdmissionStep for DefaultMemory {
    fn name(&self) -> &'static str {
        "DefaultTaskMemory"
    }

    fn phase(&self) -> Phase {
        Phase::Mutating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        if !review.resource.is::<Task>()
            || review.part == Part::Whole
            || !matches!(review.operation, Operation::Create | Operation::Update)
        {
            return Ok(());
        }
        let asked = review
            .object
            .pointer("/spec/resources/memory")
            .is_some_and(|m| !m.is_null());
        if asked {
            return Ok(());
        }
        let memory = self.memory_for(review.old);
        let Some(spec) = review.object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        match (spec.get_mut("resources"), memory) {
            (Some(Value::Object(resources)), Some(memory)) => {
                resources.insert("memory".to_owned(), memory);
            }
            (None, Some(memory)) => {
                spec.insert("resources".to_owned(), json!({ "memory": memory }));
            }
            // Not an object: the schema says so. No memory: none to give.
            _ => {}
        }
        Ok(())
    }
}

/// `GET tasks/{name}/log`: the task's log, from the nodelet that runs it.
#[derive(Clone, Copy, Debug)]
struct Log;

#[async_trait]
impl Subresource for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn verbs(&self) -> &'static [&'static str] {
        &["get"]
    }

    async fn serve(&self, request: SubresourceRequest<'_>) -> ApiResult<Response> {
        if request.method != Method::GET {
            return Err(ApiError::no_route(&format!(
                "{}/log",
                request.resource.info.plural
            )));
        }
        crate::logs::task_log(
            request.store,
            request.resource,
            request.namespace,
            request.name,
            request.query,
        )
        .await
    }
}

/// `POST tasks/{name}/binding`: the scheduler's one write of a placement.
#[derive(Clone, Copy, Debug)]
struct Binding;

#[async_trait]
impl Subresource for Binding {
    fn name(&self) -> &'static str {
        "binding"
    }

    fn kind(&self) -> Option<&'static str> {
        Some("Binding")
    }

    fn verbs(&self) -> &'static [&'static str] {
        &["create"]
    }

    async fn serve(&self, request: SubresourceRequest<'_>) -> ApiResult<Response> {
        let res = request.resource;
        if request.method != Method::POST {
            return Err(ApiError::from(Status::method_not_allowed(
                &api_types::GroupResource::new(&res.info.group, "tasks/binding"),
                request.method.as_str(),
            )));
        }
        // As Kubernetes' binding, the write leaves managedFields as they are.
        let mut options = http::write_options(request.query, request.headers, "")?;
        options.field_manager.clear();
        let binding = http::parse_body(request.headers, &request.body)?;
        let done = Binding::bind(
            request.store,
            res,
            request.namespace,
            request.name,
            &binding,
            &options,
        )
        .await?;
        let done = serde_json::to_value(done).map_err(ApiError::internal)?;
        Ok(http::json_response(StatusCode::CREATED, &done))
    }
}

impl Binding {
    /// Binds a task to a node (`POST tasks/{name}/binding`, as Kubernetes'
    /// `pods/{name}/binding`): one conditional write sets `spec.nodeName` and the
    /// `Scheduled=True` condition. A task already bound, being deleted, or not at
    /// the binding's `metadata.resourceVersion`/`uid` is a conflict.
    async fn bind(
        store: &GenericStore,
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
            Some(rv) if !rv.is_empty() => {
                Some(generic::parse_revision(rv, "metadata.resourceVersion")?)
            }
            _ => None,
        };
        let uid = object::meta_str(binding, "uid").filter(|u| !u.is_empty());
        let message = binding
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("bound to {node}"));
        let resource = res.group_resource();
        store
            .guaranteed_update(
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
                    let conditions =
                        serde_json::to_value(conditions).map_err(ApiError::internal)?;
                    match new.get_mut("status").and_then(Value::as_object_mut) {
                        Some(status) => {
                            status.insert("conditions".to_owned(), conditions);
                        }
                        None => {
                            generic::set_status(&mut new, Some(json!({"conditions": conditions})))
                        }
                    }
                    Ok(new)
                },
            )
            .await?;
        let mut done = Status::success();
        done.code = 201;
        Ok(done)
    }
}
