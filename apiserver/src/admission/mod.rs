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

    /// The chain with one more step, run last in its phase.
    pub fn with(mut self, step: Arc<dyn AdmissionStep>) -> Self {
        match step.phase() {
            Phase::Mutating => self.mutating.push(step),
            Phase::Validating => self.validating.push(step),
        }
        self
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use api_types::{Quantity, Task};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::catalog::CacheConfig;
    use crate::registry::task::DefaultMemory;
    use crate::store::{EmbeddedOptions, EmbeddedStore};

    /// A step that writes down that it ran, and may find a problem.
    #[derive(Debug)]
    struct Record {
        name: &'static str,
        phase: Phase,
        ran: Arc<Mutex<Vec<&'static str>>>,
        problem: bool,
    }

    #[async_trait]
    impl AdmissionStep for Record {
        fn name(&self) -> &'static str {
            self.name
        }

        fn phase(&self) -> Phase {
            self.phase
        }

        async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
            self.ran.lock().unwrap().push(self.name);
            if self.problem {
                review
                    .errors
                    .push(FieldError::invalid(format!("spec.{}", self.name), "", "no"));
            }
            Ok(())
        }
    }

    /// A catalog over an embedded store in a temporary directory.
    fn catalog() -> (tempfile::TempDir, Arc<Catalog>, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("loom.db"))).unwrap(),
        );
        let cancel = CancellationToken::new();
        let catalog = Catalog::new(store, CacheConfig::default(), cancel.clone());
        (dir, catalog, cancel)
    }

    fn review<'a>(
        resource: &'a ServedResource,
        object: Value,
        old: Option<&'a Value>,
    ) -> Review<'a> {
        Review {
            operation: if old.is_some() {
                Operation::Update
            } else {
                Operation::Create
            },
            resource,
            part: Part::Main,
            namespace: "default",
            name: "t",
            object,
            old,
            field_validation: FieldValidation::Strict,
            dry_run: false,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }

    #[tokio::test]
    async fn mutating_steps_run_first_then_validating_ones_each_in_order_and_problems_are_one_422()
    {
        let (_dir, catalog, cancel) = catalog();
        let tasks = catalog.builtin_resource::<Task>();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let step = |name, phase, problem| -> Arc<dyn AdmissionStep> {
            Arc::new(Record {
                name,
                phase,
                ran: ran.clone(),
                problem,
            })
        };
        let chain = Chain::new(vec![
            step("a", Phase::Validating, true),
            step("b", Phase::Mutating, false),
            step("c", Phase::Validating, true),
            step("d", Phase::Mutating, false),
        ]);
        assert_eq!(chain.steps(), ["b", "d", "a", "c"]);
        let mut review = review(&tasks, json!({}), None);
        let refused = chain.admit(&mut review).await.unwrap_err();
        assert_eq!(*ran.lock().unwrap(), ["b", "d", "a", "c"]);
        assert_eq!(refused.code(), 422);
        let causes = refused.0.details.unwrap().causes;
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.a", "spec.c"]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_task_without_memory_gets_the_default_at_creation_and_keeps_its_own_after() {
        let (_dir, catalog, cancel) = catalog();
        let tasks = catalog.builtin_resource::<Task>();
        let step = DefaultMemory {
            memory: Some(Quantity::parse("512Mi").unwrap()),
        };
        let mut new = review(&tasks, json!({"spec": {"image": "busybox"}}), None);
        step.admit(&mut new).await.unwrap();
        assert_eq!(new.object["spec"]["resources"]["memory"], "512Mi");

        let mut asked = review(
            &tasks,
            json!({"spec": {"resources": {"memory": "1Gi", "cpu": "1"}}}),
            None,
        );
        step.admit(&mut asked).await.unwrap();
        assert_eq!(asked.object["spec"]["resources"]["memory"], "1Gi");

        // A replacement that leaves memory out keeps the stored value, even
        // when the stored task has none.
        let stored = json!({"spec": {"resources": {"memory": "64Mi"}}});
        let mut replaced = review(&tasks, json!({"spec": {"resources": {}}}), Some(&stored));
        step.admit(&mut replaced).await.unwrap();
        assert_eq!(replaced.object["spec"]["resources"]["memory"], "64Mi");
        let without = json!({"spec": {}});
        let mut replaced = review(&tasks, json!({"spec": {}}), Some(&without));
        step.admit(&mut replaced).await.unwrap();
        assert_eq!(replaced.object, json!({"spec": {}}));

        // Other kinds are not its business.
        let jobs = catalog.builtin_resource::<api_types::Job>();
        let mut job = review(&jobs, json!({"spec": {}}), None);
        step.admit(&mut job).await.unwrap();
        assert_eq!(job.object, json!({"spec": {}}));
        cancel.cancel();
    }
}
