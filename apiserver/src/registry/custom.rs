//! Custom kinds: objects of a kind a ResourceDefinition defines, checked against its schema.

use api_types::validation::{NameRule, validate_object_meta, validate_object_meta_update};
use api_types::{FieldError, ObjectMeta};
use serde_json::Value;

use super::Strategy;

/// The strategy of one custom kind.
#[derive(Debug)]
pub struct Custom {
    namespaced: bool,
}

impl Custom {
    /// A custom kind, namespaced or cluster-wide.
    pub fn new(namespaced: bool) -> Self {
        Custom { namespaced }
    }
}

fn metadata(object: &Value) -> Result<ObjectMeta, Vec<FieldError>> {
    let meta = object.get("metadata").cloned().unwrap_or(Value::Null);
    serde_json::from_value(meta)
        .map_err(|e| vec![FieldError::invalid("metadata", "", e.to_string())])
}

impl Strategy for Custom {
    fn normalize(&self, object: Value) -> Result<Value, Vec<FieldError>> {
        // The schema has checked the shape; metadata must still decode.
        metadata(&object)?;
        Ok(object)
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        match metadata(object) {
            Ok(meta) => validate_object_meta(&meta, self.namespaced, NameRule::Subdomain),
            Err(errors) => errors,
        }
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errors = self.validate(new);
        if let (Ok(new), Ok(old)) = (metadata(new), metadata(old)) {
            errors.extend(validate_object_meta_update(&new, &old));
        }
        errors
    }
}
