//! The admission chain: the ordered steps every write passes before it is
//! stored, mutating steps first, then validating ones (Kubernetes' admission
//! plugins).
//!
//! The chain is configured once, at start ([`Chain::standard`] in
//! `server::run`), and the generic store runs it on every create, update,
//! patch, server-side apply, delete and binding. A step is a small type behind
//! [`AdmissionStep`]; a check or default that applies to many kinds
//! (authorization, node restriction, namespace policy, quota, webhooks) is a
//! new step, not a branch in the generic store. Authentication and
//! authorization of the request itself run before any of this, as tower
//! layers in front of the router (see [`crate::http::User`]).

mod kind_rules;
mod namespace_lifecycle;
mod schema;

use std::sync::Arc;

use api_types::{FieldError, FieldValidation};
use async_trait::async_trait;
use serde_json::Value;

pub use kind_rules::KindRules;
pub use namespace_lifecycle::NamespaceLifecycle;
pub use schema::SchemaValidation;

use crate::catalog::{Catalog, ServedResource};
use crate::error::ApiResult;
use crate::generic::{Part, invalid};
use crate::store::Store;

/// What a request does to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A create, or a server-side apply of a missing object.
    Create,
    /// An update, patch, apply, status write or binding of a stored object.
    Update,
    /// A delete, or one member of a deletecollection.
    Delete,
}

/// When a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// First, in order: may change the object (defaults).
    Mutating,
    /// Then, in order: checks the object as the mutating steps left it.
    Validating,
}

/// One write under review.
#[derive(Debug)]
pub struct Review<'a> {
    /// What the request does.
    pub operation: Operation,
    /// The resource written.
    pub resource: &'a ServedResource,
    /// The part written: a binding writes the whole object, a status write
    /// only its status.
    pub part: Part,
    /// The object's namespace (`""` for a cluster-scoped kind).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The object as it will be stored (null for a delete).
    pub object: Value,
    /// The stored object, on an update or a delete.
    pub old: Option<&'a Value>,
    /// What to do with unknown fields.
    pub field_validation: FieldValidation,
    /// Nothing will be written (`dryRun=All`): a step must have no side effects.
    pub dry_run: bool,
    /// Warnings for the client.
    pub warnings: Vec<String>,
    /// Problems found so far, each naming its field: a validating step may add
    /// its own and let the next ones add theirs, and the answer is one 422
    /// naming them all ([`KindRules`] ends the review there).
    pub errors: Vec<FieldError>,
}

/// One step of the chain.
#[async_trait]
pub trait AdmissionStep: Send + Sync + std::fmt::Debug + 'static {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// When it runs.
    fn phase(&self) -> Phase;

    /// Reviews a write: changes the object (mutating steps), adds problems to
    /// `review.errors`, or refuses the request outright with an error.
    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()>;
}

/// The ordered steps.
#[derive(Debug, Default)]
pub struct Chain {
    mutating: Vec<Arc<dyn AdmissionStep>>,
    validating: Vec<Arc<dyn AdmissionStep>>,
}

impl Chain {
    /// A chain of `steps`, each run in its phase in the order given.
    pub fn new(steps: Vec<Arc<dyn AdmissionStep>>) -> Self {
        let (mutating, validating) = steps
            .into_iter()
            .partition(|step| step.phase() == Phase::Mutating);
        Chain {
            mutating,
            validating,
        }
    }

    /// Loom's chain: the task memory default, then schema validation, the
    /// kinds' own rules, and the namespace lifecycle.
    pub fn standard(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        default_task_memory: Option<api_types::Quantity>,
    ) -> Self {
        Chain::new(vec![
            Arc::new(crate::registry::task::DefaultMemory {
                memory: default_task_memory,
            }),
            Arc::new(SchemaValidation),
            Arc::new(KindRules),
            Arc::new(NamespaceLifecycle::new(store, catalog)),
        ])
    }

    /// The names of the steps, in the order they run.
    pub fn steps(&self) -> Vec<&'static str> {
        self.mutating
            .iter()
            .chain(&self.validating)
            .map(|step| step.name())
            .collect()
    }

    /// Runs every step on a write: the mutating ones, then the validating
    /// ones; the first error ends the review, and problems the steps found are
    /// one 422.
    pub async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        for step in self.mutating.iter().chain(&self.validating) {
            step.admit(review).await?;
        }
        if review.errors.is_empty() {
            return Ok(());
        }
        Err(invalid(review.resource, review.name, &review.errors))
    }
}
