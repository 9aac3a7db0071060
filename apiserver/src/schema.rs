//! Validation of objects against their kind's JSON schema: unknown fields found (and
//! pruned when asked), then every schema violation reported at once with its field.

use api_types::FieldError;
use serde_json::{Map, Value};

/// The deepest JSON nesting a write may have.
pub const MAX_DEPTH: usize = 64;

/// Which JSON schema dialect a schema is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// What schemars derives for built-in kinds.
    Draft2020,
    /// OpenAPI v3 schemas of custom kinds (JSON schema draft 4 with extensions).
    OpenApiV3,
}

/// A schema that does not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema: {0}")]
pub struct InvalidSchema(String);

/// A kind's compiled schema.
pub struct SchemaValidator {
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidator").finish_non_exhaustive()
    }
}

impl SchemaValidator {
    /// Compiles a schema; an error says what is wrong with it.
    pub fn new(schema: Value, dialect: Dialect) -> Result<Self, InvalidSchema> {
        let validator = match dialect {
            Dialect::Draft2020 => jsonschema::draft202012::new(&schema),
            Dialect::OpenApiV3 => jsonschema::draft4::new(&with_nullable_types(&schema)),
        }
        .map_err(|e| InvalidSchema(e.to_string()))?;
        Ok(SchemaValidator { schema, validator })
    }

    /// The schema.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Paths of fields the schema does not declare; with `prune`, they are removed.
    pub fn unknown_fields(&self, value: &mut Value, prune: bool) -> Vec<String> {
        let mut unknown = Vec::new();
        walk(
            &self.schema,
            &self.schema,
            value,
            "",
            prune,
            &mut unknown,
            0,
        );
        unknown
    }

    /// Every violation of the schema, each naming its field.
    pub fn violations(&self, value: &Value) -> Vec<FieldError> {
        if self.validator.is_valid(value) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        for error in self.validator.iter_errors(value) {
            flatten(&error, &mut errors);
        }
        errors.dedup_by(|a, b| a.field == b.field && a.message == b.message);
        errors
    }
}

/// Reports an error; for a union (`Option<T>` is `anyOf: [T, null]`) whose value
/// fits the shape of only one branch, reports that branch's errors instead.
fn flatten(error: &jsonschema::ValidationError<'_>, out: &mut Vec<FieldError>) {
    use jsonschema::error::ValidationErrorKind;
    let context = match error.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            Some(context)
        }
        _ => None,
    };
    if let Some(context) = context {
        let here = error.instance_path().as_str();
        // A branch fails on shape when its only error is a type mismatch right here.
        let fitting: Vec<_> = context
            .iter()
            .filter(|branch| {
                !(branch.len() == 1
                    && branch[0].instance_path().as_str() == here
                    && matches!(branch[0].kind(), ValidationErrorKind::Type { .. }))
            })
            .collect();
        if let [branch] = fitting.as_slice() {
            for inner in branch.iter() {
                flatten(inner, out);
            }
            return;
        }
    }
    let field = pointer_to_path(error.instance_path().as_str());
    let message = error.masked().to_string();
    out.push(FieldError::invalid(
        field,
        Raw(compact(error.instance().as_ref())),
        message,
    ));
}

/// OpenAPI v3's `nullable: true`, which JSON schema validators do not know, as
/// the JSON schema it means: `null` is also allowed.
fn with_nullable_types(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), with_nullable_types(v)))
                .collect();
            if out.get("nullable").and_then(Value::as_bool) == Some(true) {
                out.remove("nullable");
                match out.get("type").cloned() {
                    Some(Value::String(t)) => {
                        out.insert(
                            "type".to_owned(),
                            Value::Array(vec![Value::String(t), Value::String("null".to_owned())]),
                        );
                        if let Some(Value::Array(values)) = out.get_mut("enum") {
                            values.push(Value::Null);
                        }
                    }
                    Some(_) => {}
                    None => {
                        let inner = Value::Object(out);
                        return serde_json::json!({"anyOf": [inner, {"type": "null"}]});
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(with_nullable_types).collect()),
        other => other.clone(),
    }
}

/// A rendered value shown as is.
struct Raw(String);

impl api_types::validation::FieldValue for Raw {
    fn render(&self) -> String {
        self.0.clone()
    }
}

fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 80 {
        format!("{}…", &text[..text.floor_char_boundary(77)])
    } else {
        text
    }
}

/// `/spec/env/0/name` → `spec.env[0].name`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            path.push('[');
            path.push_str(&part);
            path.push(']');
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&part);
        }
    }
    path
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Follows `$ref`s (local ones, `#/$defs/X` or `#/definitions/X`).
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..32 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            return schema;
        };
        match root.pointer(pointer) {
            Some(target) => schema = target,
            None => return schema,
        }
    }
    schema
}

/// The branches of a union a value may take: `anyOf`/`oneOf`/`allOf` members that
/// are not just `null`.
fn branches<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            for branch in list {
                let branch = resolve(root, branch);
                if branch.get("type").and_then(Value::as_str) != Some("null") {
                    out.push(branch);
                }
            }
        }
    }
    out
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn walk(
    root: &Value,
    schema: &Value,
    value: &mut Value,
    path: &str,
    prune: bool,
    unknown: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let schema = resolve(root, schema);
    let unions = branches(root, schema);
    if schema.get("properties").is_none()
        && schema.get("additionalProperties").is_none()
        && schema.get("items").is_none()
        && unions.len() == 1
    {
        // A wrapper such as `Option<T>`: check against T.
        walk(root, unions[0], value, path, prune, unknown, depth + 1);
        return;
    }
    match value {
        Value::Object(map) => {
            if preserves_unknown(schema) && schema.get("properties").is_none() {
                return;
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if properties.is_none() && additional.is_none() {
                // A free-form object (`{}` or `type: object` with nothing more).
                return;
            }
            let mut drop = Vec::new();
            for (key, child) in map.iter_mut() {
                let child_path = join(path, key);
                if let Some(property) = properties.and_then(|p| p.get(key)) {
                    walk(
                        root,
                        property,
                        child,
                        &child_path,
                        prune,
                        unknown,
                        depth + 1,
                    );
                } else {
                    match additional {
                        Some(Value::Bool(false)) => {
                            unknown.push(child_path);
                            drop.push(key.clone());
                        }
                        Some(extra @ Value::Object(_)) => {
                            walk(root, extra, child, &child_path, prune, unknown, depth + 1);
                        }
                        Some(_) => {}
                        None if preserves_unknown(schema) => {}
                        None => {
                            unknown.push(child_path);
                            drop.push(key.clone());
                        }
                    }
                }
            }
            if prune {
                prune_keys(map, &drop);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(
                        root,
                        item_schema,
                        item,
                        &format!("{path}[{i}]"),
                        prune,
                        unknown,
                        depth + 1,
                    );
                }
            }
        }
        _ => {}
    }
}

fn prune_keys(map: &mut Map<String, Value>, keys: &[String]) {
    for key in keys {
        map.remove(key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> SchemaValidator {
        SchemaValidator::new(
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "spec": {"$ref": "#/$defs/Spec"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "free": {}
                },
                "$defs": {
                    "Spec": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0},
                            "env": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/Env"}, {"type": "null"}]}}
                        }
                    },
                    "Env": {"type": "object", "additionalProperties": false, "properties": {"name": {"type": "string"}}}
                }
            }),
            Dialect::Draft2020,
        )
        .unwrap()
    }

    #[test]
    fn unknown_fields_are_found_at_every_depth_and_pruned() {
        let mut value = json!({
            "spec": {"replicas": 1, "bogus": 2, "env": [{"name": "A", "vlaue": "x"}]},
            "labels": {"a": "b"},
            "free": {"anything": 1},
            "top": true
        });
        let unknown = schema().unknown_fields(&mut value, true);
        assert_eq!(unknown, ["spec.bogus", "spec.env[0].vlaue", "top"]);
        assert_eq!(
            value,
            json!({"spec": {"replicas": 1, "env": [{"name": "A"}]}, "labels": {"a": "b"}, "free": {"anything": 1}})
        );
    }

    #[test]
    fn violations_name_each_field() {
        let errors = schema().violations(
            &json!({"spec": {"replicas": -1, "env": [{"name": 3}]}, "labels": {"a": 1}}),
        );
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.replicas"), "{errors:?}");
        assert!(fields.contains(&"spec.env[0].name"), "{errors:?}");
        assert!(fields.contains(&"labels.a"), "{errors:?}");
    }

    #[test]
    fn nullable_fields_accept_null() {
        let schema = SchemaValidator::new(
            json!({"type": "object", "properties": {
                "a": {"type": "string", "nullable": true},
                "b": {"nullable": true, "allOf": [{"type": "integer"}]},
                "c": {"type": "string"}
            }}),
            Dialect::OpenApiV3,
        )
        .unwrap();
        assert!(schema.violations(&json!({"a": null, "b": null})).is_empty());
        assert!(!schema.violations(&json!({"c": null})).is_empty());
        assert!(!schema.violations(&json!({"b": "x"})).is_empty());
    }

    #[test]
    fn pointers_become_paths() {
        assert_eq!(pointer_to_path("/spec/env/0/name"), "spec.env[0].name");
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(
            pointer_to_path("/metadata/labels/a~1b"),
            "metadata.labels.a/b"
        );
    }
}
