//! Schema validation: every write of a kind is checked against its JSON schema
//! (derived from the Rust type, or a definition's), unknown fields per
//! `fieldValidation`.

use api_types::{FieldError, FieldValidation};
use async_trait::async_trait;
use serde_json::Value;

use super::{AdmissionStep, Operation, Phase, Review};
use crate::error::{ApiError, ApiResult};
use crate::generic::Part;
use crate::object;

/// Validating: nesting depth (400), unknown fields (forbidden when Strict,
/// warned about when Warn) and every schema violation. The problems are left
/// in the review with the offending fields removed from the object, so the
/// kind's own rules can still report the rest in the same answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchemaValidation;

#[async_trait]
impl AdmissionStep for SchemaValidation {
    fn name(&self) -> &'static str {
        "SchemaValidation"
    }

    fn phase(&self) -> Phase {
        Phase::Validating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        // A binding writes what it checked itself, not a client's object.
        if review.operation == Operation::Delete || review.part == Part::Whole {
            return Ok(());
        }
        let object = &mut review.object;
        if object::depth(object) > crate::schema::MAX_DEPTH {
            return Err(ApiError::bad_request(format!(
                "the object is nested deeper than {} levels",
                crate::schema::MAX_DEPTH
            )));
        }
        let schema = &review.resource.schema;
        let mode = review.field_validation;
        let unknown = schema.unknown_fields(object, mode != FieldValidation::Strict);
        let mut errors: Vec<FieldError> = Vec::new();
        match mode {
            FieldValidation::Strict if !unknown.is_empty() => {
                errors.extend(unknown.iter().map(|path| {
                    FieldError::forbidden(path.clone(), "field not declared in schema")
                }));
                // Check the rest without the unknown fields, so each problem shows once.
                let mut pruned = object.clone();
                schema.unknown_fields(&mut pruned, true);
                errors.extend(schema.violations(&pruned));
            }
            FieldValidation::Strict => errors.extend(schema.violations(object)),
            FieldValidation::Warn | FieldValidation::Ignore => {
                if mode == FieldValidation::Warn {
                    review
                        .warnings
                        .extend(unknown.iter().map(|p| format!("unknown field \"{p}\"")));
                }
                errors.extend(schema.violations(object));
            }
        }
        if !errors.is_empty() {
            // The object will not be stored: what is left of it, without the
            // bad fields, is for the next steps to report their own problems on.
            for error in &errors {
                remove_path(object, &error.field);
            }
            schema.unknown_fields(object, true);
            review.errors.extend(errors);
        }
        Ok(())
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
            // Only `[i]` indexes: a key may hold `]` itself (`a [b]]`).
            while rest.starts_with('[')
                && let Some(close) = rest.find(']')
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_with_brackets_in_keys_do_not_panic() {
        // Found by loom-fuzz: an unknown key `phase&a [*a]]` panicked here.
        let mut object = json!({"status": {"phase&a [*a]]": 1, "x": 2}});
        remove_path(&mut object, "status.phase&a [*a]]");
        remove_path(&mut object, "]]");
        remove_path(&mut object, "a[0]x]");
        let mut object = json!({"spec": {"env": [{"name": "a"}, {"name": "b"}]}});
        remove_path(&mut object, "spec.env[1].name");
        assert_eq!(object, json!({"spec": {"env": [{"name": "a"}, {}]}}));
    }
}
