//! The kinds' own rules: each kind's strategy decodes, checks and normalizes
//! what is written.

use async_trait::async_trait;

use super::{AdmissionStep, Operation, Phase, Review};
use crate::error::ApiResult;
use crate::generic::{Part, invalid};

/// Validating: the kind's [`Strategy`](crate::registry::Strategy) admits the
/// object (type errors naming their fields, the kind's rules, as a
/// replacement of the stored object on an update) and gives it back
/// normalized, in its canonical encoding; then its rules on the admitted
/// object, and its warnings. After schema problems it adds its own on what is
/// left, for fields not already named, and ends the review with one 422
/// listing them all: later steps see only objects with no problems.
#[derive(Clone, Copy, Debug, Default)]
pub struct KindRules;

#[async_trait]
impl AdmissionStep for KindRules {
    fn name(&self) -> &'static str {
        "KindRules"
    }

    fn phase(&self) -> Phase {
        Phase::Validating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        // A binding writes what it checked itself, as Kubernetes' does: the
        // kind's rules do not run again on an object admitted before.
        if review.operation == Operation::Delete || review.part == Part::Whole {
            return Ok(());
        }
        let strategy = &review.resource.strategy;
        if !review.errors.is_empty() {
            let rest = std::mem::take(&mut review.object);
            if let Err(more) = strategy.admit(rest, review.old) {
                for error in more {
                    if !review.errors.iter().any(|e| e.field == error.field) {
                        review.errors.push(error);
                    }
                }
            }
            return Err(invalid(review.resource, review.name, &review.errors));
        }
        review.object = strategy
            .admit(std::mem::take(&mut review.object), review.old)
            .map_err(|errors| invalid(review.resource, review.name, &errors))?;
        let errors = strategy.validate_admitted(&review.object);
        if !errors.is_empty() {
            return Err(invalid(review.resource, review.name, &errors));
        }
        let warnings = strategy.warnings(&review.object);
        review.warnings.extend(warnings);
        Ok(())
    }
}
