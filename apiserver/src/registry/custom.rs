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
    fn admit(&self, object: Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
        // The schema has checked the shape; metadata must still decode and follow the rules.
        let meta = metadata(&object)?;
        let mut errors = validate_object_meta(&meta, self.namespaced, NameRule::Subdomain);
        if let Some(Ok(old)) = old.map(metadata) {
            errors.extend(validate_object_meta_update(&meta, &old));
        }
        if errors.is_empty() {
            Ok(object)
        } else {
            Err(errors)
        }
    }
}
