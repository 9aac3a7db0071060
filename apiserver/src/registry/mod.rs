//! One strategy per resource: how its objects are checked, normalized and shown.
//!
//! The generic machinery (storage, watch, patches, deletion) lives in `handlers`;
//! a strategy only says what is special about its kind, as Kubernetes'
//! `pkg/registry/<group>/<resource>/strategy.go` do.

pub mod custom;
pub mod event;
pub mod job;
pub mod lease;
pub mod namespace;
pub mod node;
pub mod resource_definition;
pub mod service;
pub mod task;

use std::marker::PhantomData;
use std::sync::Arc;

use api_types::{FieldError, FieldValidation, Quantity, Resource, Validate};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

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

/// Cluster-wide defaults applied when objects are admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    /// The memory limit of a task that asks for none (`None`: no default).
    pub task_memory: Option<Quantity>,
}

/// Fills in defaults of a new object (`old` is `None`) or of a replacement.
type Prepare<K> = Arc<dyn Fn(&mut K, Option<&K>) + Send + Sync>;

/// The strategy of a built-in kind: its Rust type decodes, normalizes and validates.
pub struct Typed<K> {
    columns: Vec<Column>,
    initial_status: Option<Value>,
    selectable: Vec<&'static str>,
    status_on_create: bool,
    prepare: Option<Prepare<K>>,
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
            prepare: None,
            warnings: None,
            _kind: PhantomData,
        }
    }

    /// Defaults filled in before validation (Kubernetes' `PrepareForCreate` and
    /// `PrepareForUpdate`): `old` is the stored object on an update.
    pub fn prepare(mut self, prepare: impl Fn(&mut K, Option<&K>) + Send + Sync + 'static) -> Self {
        self.prepare = Some(Arc::new(prepare));
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
        let mut typed: K = decode(&object)?;
        let old = old.and_then(|old| K::deserialize(old).ok());
        if let Some(prepare) = &self.prepare {
            prepare(&mut typed, old.as_ref());
        }
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
