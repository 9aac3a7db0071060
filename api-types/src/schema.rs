//! JSON schemas of the kinds, derived from their Rust types: self-contained draft 2020-12 schemas and the OpenAPI v3 components document.
//!
//! Every struct is marked `#[schemars(deny_unknown_fields)]`, so its schema says
//! `additionalProperties: false` and a validator can name unknown fields; serde itself
//! tolerates them, leaving the choice (Strict, Warn, Ignore) to the caller.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::kinds::{Event, Job, Lease, Namespace, Node, ResourceDefinition, Service, Task};
use crate::resource::Resource;

/// The self-contained JSON schema (draft 2020-12, subschemas inlined) of `T`.
pub fn json_schema<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The OpenAPI v3.0 schema of kind `K` (subschemas inlined), with
/// `x-kubernetes-group-version-kind`.
pub fn openapi_v3_schema<K: Resource + JsonSchema>() -> Value {
    let mut schema = SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<K>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.insert(
            "x-kubernetes-group-version-kind".to_string(),
            json!([{"group": K::GROUP, "version": K::VERSION, "kind": K::KIND}]),
        );
    }
    schema
}

/// The key of a kind in `components.schemas`: the group reversed, the version, the kind
/// (`loom.dev`, `v1`, `Task` → `dev.loom.v1.Task`).
pub fn openapi_schema_key(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').filter(|p| !p.is_empty()).collect();
    parts.reverse();
    parts.push(version);
    parts.push(kind);
    parts.join(".")
}

fn insert_kind<K: Resource + JsonSchema>(schemas: &mut Map<String, Value>) {
    schemas.insert(
        openapi_schema_key(K::GROUP, K::VERSION, K::KIND),
        openapi_v3_schema::<K>(),
    );
}

/// An OpenAPI v3 document whose `components.schemas` holds every built-in kind, keyed like
/// `dev.loom.v1.Task`.
pub fn openapi_v3_components() -> Value {
    let mut schemas = Map::new();
    insert_kind::<Task>(&mut schemas);
    insert_kind::<Job>(&mut schemas);
    insert_kind::<Service>(&mut schemas);
    insert_kind::<Node>(&mut schemas);
    insert_kind::<Namespace>(&mut schemas);
    insert_kind::<Event>(&mut schemas);
    insert_kind::<Lease>(&mut schemas);
    insert_kind::<ResourceDefinition>(&mut schemas);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Loom", "version": crate::resource::VERSION},
        "paths": {},
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::quantity::Quantity;

    /// A tiny stand-in for a schema validator: the paths of properties that the schema's
    /// `additionalProperties: false` rejects.
    fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
        for combinator in ["anyOf", "oneOf", "allOf"] {
            if let Some(alternatives) = schema.get(combinator).and_then(Value::as_array) {
                let mut best: Option<Vec<String>> = None;
                for alternative in alternatives {
                    if !type_allows(alternative, value) {
                        continue;
                    }
                    let mut found = Vec::new();
                    unknown_fields(alternative, value, path, &mut found);
                    if best.as_ref().is_none_or(|b| found.len() < b.len()) {
                        best = Some(found);
                    }
                }
                out.extend(best.unwrap_or_default());
            }
        }
        match value {
            Value::Object(object) => {
                let properties = schema.get("properties").and_then(Value::as_object);
                for (k, v) in object {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match properties.and_then(|p| p.get(k)) {
                        Some(sub) => unknown_fields(sub, v, &child, out),
                        None => match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => out.push(child),
                            Some(sub @ Value::Object(_)) => unknown_fields(sub, v, &child, out),
                            _ => {}
                        },
                    }
                }
            }
            Value::Array(items) => {
                if let Some(sub) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        unknown_fields(sub, v, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }

    fn type_allows(schema: &Value, value: &Value) -> bool {
        let name = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        match schema.get("type") {
            None => true,
            Some(Value::String(t)) => t == name || (t == "integer" && name == "number"),
            Some(Value::Array(ts)) => ts
                .iter()
                .any(|t| t == name || (t == "integer" && name == "number")),
            _ => true,
        }
    }

    fn check(schema: &Value, value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        unknown_fields(schema, value, "", &mut out);
        out.sort();
        out
    }

    #[test]
    fn schema_rejects_unknown_fields() {
        let schema = json_schema::<Task>();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert!(schema.get("$defs").is_none(), "self-contained: {schema:#}");
        let manifest = json!({
            "apiVersion": "loom.dev/v1",
            "kind": "Task",
            "metadata": {"name": "t", "labels": {"a": "b"}, "bogus": 1},
            "spec": {
                "image": "busybox",
                "imagee": "typo",
                "env": [{"name": "A", "value": "1", "valu": "2"}],
                "resources": {"cpu": "1", "gpu": "1"},
                "constraints": [{"key": "a", "operator": "Exists", "extra": true}],
            },
            "status": {"phase": "Running", "usage": {"cpu": "1", "disk": "1"}},
        });
        assert_eq!(
            check(&schema, &manifest),
            vec![
                "metadata.bogus",
                "spec.constraints[0].extra",
                "spec.env[0].valu",
                "spec.imagee",
                "spec.resources.gpu",
                "status.usage.disk",
            ]
        );
        let clean = serde_json::to_value(Task::new(
            "t",
            crate::kinds::TaskSpec {
                image: "x".into(),
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(check(&schema, &clean).is_empty());
    }

    #[test]
    fn every_kind_has_a_closed_schema() {
        for schema in [
            json_schema::<Job>(),
            json_schema::<Service>(),
            json_schema::<Node>(),
            json_schema::<Namespace>(),
            json_schema::<Event>(),
            json_schema::<Lease>(),
            json_schema::<ResourceDefinition>(),
        ] {
            assert_eq!(schema["additionalProperties"], false, "{schema:#}");
            assert_eq!(check(&schema, &json!({"nope": 1})), vec!["nope"]);
            assert_eq!(
                check(&schema, &json!({"metadata": {"nope": 1}})),
                vec!["metadata.nope"]
            );
        }
        let job = json_schema::<Job>();
        assert_eq!(
            check(
                &job,
                &json!({"spec": {"template": {"metadata": {"name": "x"}, "spec": {"imag": "x"}}, "overrides": [{"indexes": "0", "spec": {"argz": []}}]}})
            ),
            vec![
                "spec.overrides[0].spec.argz",
                "spec.template.metadata.name",
                "spec.template.spec.imag"
            ]
        );
        // Custom schemas and managed fields are open.
        let rd = json_schema::<ResourceDefinition>();
        assert!(check(&rd, &json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"type": "object", "anything": 1}}}]}})).is_empty());
    }

    #[test]
    fn quantity_schema_is_int_or_string() {
        let schema = json_schema::<Quantity>();
        assert_eq!(schema["x-kubernetes-int-or-string"], true);
        assert_eq!(schema["anyOf"][0]["type"], "integer");
        assert_eq!(schema["anyOf"][1]["type"], "string");
        assert!(
            schema["anyOf"][1]["pattern"]
                .as_str()
                .unwrap()
                .starts_with('^')
        );
        let task = json_schema::<Task>();
        let cpu = &task["properties"]["spec"]["properties"]["resources"]["properties"]["cpu"];
        assert!(
            cpu.to_string().contains("x-kubernetes-int-or-string"),
            "{cpu:#}"
        );
    }

    #[test]
    fn openapi_document() {
        let doc = openapi_v3_components();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut keys: Vec<&String> = schemas.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "dev.loom.v1.Event",
                "dev.loom.v1.Job",
                "dev.loom.v1.Lease",
                "dev.loom.v1.Namespace",
                "dev.loom.v1.Node",
                "dev.loom.v1.ResourceDefinition",
                "dev.loom.v1.Service",
                "dev.loom.v1.Task",
            ]
        );
        let task = &schemas["dev.loom.v1.Task"];
        assert_eq!(
            task["x-kubernetes-group-version-kind"],
            json!([{"group": "loom.dev", "version": "v1", "kind": "Task"}])
        );
        assert!(task.get("$schema").is_none());
        assert_eq!(task["additionalProperties"], false);
        assert!(!doc.to_string().contains("$ref"), "inlined");
        assert_eq!(openapi_schema_key("", "v1", "Status"), "v1.Status");
    }
}
