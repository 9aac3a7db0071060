//! Per-kind REST storage: each kind's module says everything special about it
//! — its strategy, hooks and subresources — as Kubernetes'
//! `pkg/registry/<group>/<resource>/{strategy,storage}.go` do.
//!
//! The generic machinery (storage, watch, patches, deletion) lives in
//! [`generic`](crate::generic) and never names a kind: a kind's rules go in its
//! [`Strategy`], what must happen around its writes in its [`Hooks`], and paths
//! below its objects (`tasks/{name}/binding`) in its [`Subresource`]s.

pub mod conversion;
pub mod custom;
pub mod endpoints;
pub mod event;
pub mod job;
pub mod kubernetes_service;
pub mod lease;
pub mod namespace;
pub mod node;
pub mod resource_definition;
pub mod scale;
pub mod service;
pub mod service_account;
pub mod service_ips;
pub mod task;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use api_types::{FieldError, FieldValidation, Resource, Validate};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::catalog::ServedResource;
use crate::error::ApiResult;
use crate::generic::GenericStore;

/// A column of the server-side table (`kubectl get`).
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// The header.
    pub name: &'static str,
    /// `string`, `integer`, `date`.
    pub kind: &'static str,
    /// What the column shows.
    pub description: &'static str,
    /// 0 for every view, 1 for `-o wide` only.
    pub priority: u8,
    /// The cell of an object.
    pub cell: fn(&Value) -> Value,
}

/// The NAME column every table starts with.
pub const NAME: Column = Column {
    name: "Name",
    kind: "string",
    description: "The object's name",
    priority: 0,
    cell: |o| json!(crate::object::name(o)),
};

/// The AGE column every table ends with.
pub const AGE: Column = Column {
    name: "Age",
    kind: "string",
    description: "Time since the object was created",
    priority: 0,
    cell: |o| json!(age(crate::object::meta_str(o, "creationTimestamp"))),
};

/// A short age like kubectl's: `45s`, `12m`, `3h`, `5d`.
pub fn age(timestamp: Option<&str>) -> String {
    let Some(created) = timestamp.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".to_owned();
    };
    let seconds = (Utc::now() - created.with_timezone(&Utc))
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A string field of an object by dotted path, or "".
pub fn field(object: &Value, path: &str) -> Value {
    json!(api_types::selector::json_field(object, path).unwrap_or_default())
}

/// What is special about one kind.
pub trait Strategy: Send + Sync + 'static {
    /// Admits a write: decodes the object into its type (type errors name their
    /// fields), checks the kind's rules (as a replacement for `old`, if given), and
    /// returns it normalized (defaults filled, quantities canonical).
    fn admit(&self, object: Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>>;

    /// Rules on an admitted object beyond its type's own (a definition's schema
    /// must compile): the problems, each naming its field.
    fn validate_admitted(&self, object: &Value) -> Vec<FieldError> {
        let _ = object;
        Vec::new()
    }

    /// Warnings for a write the kind admitted (deprecated fields), sent back as
    /// `Warning` headers.
    fn warnings(&self, object: &Value) -> Vec<String> {
        let _ = object;
        Vec::new()
    }

    /// Whether a create may set `status` (nodes register with theirs).
    fn status_on_create(&self) -> bool {
        false
    }

    /// The status a new object starts with (the status a create sends is ignored).
    fn initial_status(&self) -> Option<Value> {
        None
    }

    /// Fields a field selector may use beyond `metadata.name` and `metadata.namespace`.
    fn selectable_fields(&self) -> Vec<String> {
        Vec::new()
    }

    /// The table columns.
    fn columns(&self) -> Vec<Column> {
        vec![NAME, AGE]
    }
}

/// The strategy of a built-in kind: its Rust type decodes, normalizes and validates.
pub struct Typed<K> {
    columns: Vec<Column>,
    initial_status: Option<Value>,
    selectable: Vec<&'static str>,
    status_on_create: bool,
    validate_admitted: Option<fn(&Value) -> Vec<FieldError>>,
    warnings: Option<fn(&Value) -> Vec<String>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for Typed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed")
            .field("selectable", &self.selectable)
            .finish_non_exhaustive()
    }
}

impl<K> Typed<K> {
    /// A strategy with these table columns (NAME and AGE added around them).
    pub fn new(columns: Vec<Column>) -> Self {
        let mut all = vec![NAME];
        all.extend(columns);
        all.push(AGE);
        Typed {
            columns: all,
            initial_status: None,
            selectable: Vec::new(),
            status_on_create: false,
            validate_admitted: None,
            warnings: None,
            _kind: PhantomData,
        }
    }

    /// Rules checked once the object is admitted (see [`Strategy::validate_admitted`]).
    pub fn validate_admitted(mut self, rules: fn(&Value) -> Vec<FieldError>) -> Self {
        self.validate_admitted = Some(rules);
        self
    }

    /// Warnings for admitted writes (Kubernetes' `WarningsOnCreate`/`OnUpdate`).
    pub fn warnings(mut self, warnings: fn(&Value) -> Vec<String>) -> Self {
        self.warnings = Some(warnings);
        self
    }

    /// Adds fields field selectors may use.
    pub fn selectable(mut self, fields: &[&'static str]) -> Self {
        self.selectable.extend_from_slice(fields);
        self
    }

    /// The status every new object starts with.
    pub fn initial_status(mut self, status: Value) -> Self {
        self.initial_status = Some(status);
        self
    }

    /// Lets a create set `status`.
    pub fn status_on_create(mut self) -> Self {
        self.status_on_create = true;
        self
    }
}

/// Decodes a kind, fast; on failure again, slowly, to name every bad field.
fn decode<K: Resource>(object: &Value) -> Result<K, Vec<FieldError>> {
    if let Ok(typed) = K::deserialize(object) {
        return Ok(typed);
    }
    api_types::decode::decode_value::<K>(object.clone(), FieldValidation::Ignore)
        .map(|decoded| decoded.object)
        .map_err(|error| {
            let problems = error.problems();
            if problems.is_empty() {
                return vec![FieldError::invalid("", "", error.to_string())];
            }
            problems
                .iter()
                .map(|p| FieldError {
                    field: p.path.clone(),
                    kind: api_types::validation::FieldErrorKind::Invalid,
                    value: None,
                    message: p.message.clone(),
                })
                .collect()
        })
}

impl<K: Resource + Validate> Strategy for Typed<K> {
    fn admit(&self, object: Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
        let typed: K = decode(&object)?;
        let old = old.and_then(|old| K::deserialize(old).ok());
        let mut errors = match &old {
            Some(old) => typed.validate_update(old),
            None => typed.validate(),
        };
        if let Some(old) = &old
            && !errors.is_empty()
        {
            // Ratcheting: a problem the stored object already had, with the same
            // value, is not this write's; objects stored before a rule tightened
            // (an absolute logPath, say) still take status writes. What the API
            // server does with such a value is checked where it is used.
            let before = old.validate();
            errors.retain(|e| !before.contains(e));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        serde_json::to_value(&typed)
            .map_err(|e| vec![FieldError::invalid("", "", format!("cannot encode: {e}"))])
    }

    fn validate_admitted(&self, object: &Value) -> Vec<FieldError> {
        self.validate_admitted
            .map(|rules| rules(object))
            .unwrap_or_default()
    }

    fn warnings(&self, object: &Value) -> Vec<String> {
        self.warnings.map(|w| w(object)).unwrap_or_default()
    }

    fn status_on_create(&self) -> bool {
        self.status_on_create
    }

    fn initial_status(&self) -> Option<Value> {
        self.initial_status.clone()
    }

    fn selectable_fields(&self) -> Vec<String> {
        self.selectable.iter().map(|s| s.to_string()).collect()
    }

    fn columns(&self) -> Vec<Column> {
        self.columns.clone()
    }
}

/// What must happen around the generic store's writes of one kind, beyond
/// storing them (Kubernetes' `AfterCreate`, `BeginDelete`, `AfterDelete`).
/// Every hook does nothing unless the kind says otherwise.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// After an object was created or updated (not on a dry run): in-process
    /// state that follows the object (a definition's kind served at once).
    fn after_write(&self, store: &GenericStore, object: &Value) {
        let _ = (store, object);
    }

    /// After a create or an update (`old`) was admitted, dry runs too: rules
    /// that read other objects (no two Services on one nodePort). A refusal
    /// ends the write.
    async fn check_write(
        &self,
        store: &GenericStore,
        object: &Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let _ = (store, object, old);
        Ok(())
    }

    /// Before a create is written (admitted, not a dry run): what the new
    /// object takes from state every API server shares (a Service's address),
    /// set in it. A refusal ends the create.
    async fn before_create(&self, store: &GenericStore, object: &mut Value) -> ApiResult<()> {
        let _ = (store, object);
        Ok(())
    }

    /// A create [`before_create`](Hooks::before_create) prepared was not
    /// written: give back what it took.
    async fn create_failed(&self, store: &GenericStore, object: &Value) {
        let _ = (store, object);
    }

    /// Before a delete marks or removes the object named `name`: a refusal
    /// (403 for a namespace every cluster has) ends the delete.
    fn check_delete(&self, res: &ServedResource, name: &str) -> ApiResult<()> {
        let _ = (res, name);
        Ok(())
    }

    /// Just before a delete removes the object from the store (nothing holds
    /// it any more): what must go first (a namespace's contents).
    async fn before_remove(&self, store: &GenericStore, object: &Value) -> ApiResult<()> {
        let _ = (store, object);
        Ok(())
    }

    /// After a delete removed the object: what goes with it (a definition's
    /// kind and its objects).
    async fn after_remove(&self, store: &GenericStore, object: &Value) {
        let _ = (store, object);
    }
}

/// The hooks of a kind that needs none.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// One request to a subresource, its body already read.
#[derive(Debug)]
pub struct SubresourceRequest<'a> {
    /// The generic store, for the reads and writes the subresource makes.
    pub store: &'a GenericStore,
    /// The resource whose object the subresource is of.
    pub resource: &'a ServedResource,
    /// The HTTP method.
    pub method: &'a Method,
    /// The object's namespace (`""` for a cluster-scoped kind).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The query parameters.
    pub query: &'a HashMap<String, String>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// The request's extensions (the authenticated user, the token issuer).
    pub extensions: &'a axum::http::Extensions,
}

/// A path below a kind's objects, `{plural}/{name}/{subresource}` (Kubernetes'
/// per-resource REST objects such as `pods/binding` and `pods/log`). `status`
/// is not one: every kind with a status has it, in the generic store.
///
/// A subresource answers the whole HTTP request, so one that streams (a log)
/// or proxies to a nodelet fits. Exec, attach and port-forward will also need
/// the connection upgrade: give [`SubresourceRequest`] the request's upgrade
/// handle when they come.
#[async_trait]
pub trait Subresource: Send + Sync + std::fmt::Debug + 'static {
    /// Its path segment, and its name in discovery (`binding`).
    fn name(&self) -> &'static str;

    /// The kind its requests carry, if not the resource's own (`Binding`).
    fn kind(&self) -> Option<&'static str> {
        None
    }

    /// The group and version of that kind, if not the resource's own
    /// (`autoscaling`, `v1` for a Scale).
    fn group_version(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// The verbs discovery lists for it.
    fn verbs(&self) -> &'static [&'static str];

    /// Serves one request.
    async fn serve(&self, request: SubresourceRequest<'_>) -> ApiResult<Response>;
}

/// Everything a kind registers with the catalog: its REST storage.
#[derive(Clone)]
pub struct Rest {
    /// Its rules.
    pub strategy: Arc<dyn Strategy>,
    /// What happens around its writes.
    pub hooks: Arc<dyn Hooks>,
    /// Its subresources besides `status`, in discovery order.
    pub subresources: Vec<Arc<dyn Subresource>>,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("subresources", &self.subresources)
            .finish_non_exhaustive()
    }
}

impl Rest {
    /// A kind with this strategy, no hooks and no subresources.
    pub fn new(strategy: impl Strategy) -> Self {
        Rest {
            strategy: Arc::new(strategy),
            hooks: Arc::new(NoHooks),
            subresources: Vec::new(),
        }
    }

    /// Its hooks.
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Adds a subresource.
    pub fn subresource(mut self, subresource: impl Subresource) -> Self {
        self.subresources.push(Arc::new(subresource));
        self
    }
}
