//! Objects as the API server handles them: JSON values, with typed access to their metadata.
//!
//! Objects are stored without `metadata.resourceVersion` (the store's revision is
//! the resourceVersion) and get it back on every read.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

/// `metadata.<field>` of an object, if it is a string.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// The object's name.
pub fn name(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or("")
}

/// The object's namespace.
pub fn namespace(object: &Value) -> &str {
    meta_str(object, "namespace").unwrap_or("")
}

/// The object's labels.
pub fn labels(object: &Value) -> BTreeMap<String, String> {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The object's finalizers.
pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `metadata` map, created if missing.
pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let map = object.as_object_mut().expect("made an object above");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object above")
}

/// Sets `metadata.<field>`; `Value::Null` removes it.
pub fn set_meta(object: &mut Value, field: &str, value: Value) {
    let meta = metadata_mut(object);
    if value.is_null() {
        meta.remove(field);
    } else {
        meta.insert(field.to_owned(), value);
    }
}

/// The object's top-level fields other than apiVersion, kind, metadata and status:
/// what a change to bumps `metadata.generation`.
pub fn spec_fields(object: &Value) -> BTreeMap<&str, &Value> {
    object
        .as_object()
        .map(|map| {
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                })
                .map(|(k, v)| (k.as_str(), v))
                .collect()
        })
        .unwrap_or_default()
}

/// Serializes an object for the store: without its resourceVersion.
pub fn to_stored(object: &Value) -> Bytes {
    if meta_str(object, "resourceVersion").is_none() {
        return Bytes::from(serde_json::to_vec(object).unwrap_or_default());
    }
    let mut object = object.clone();
    set_meta(&mut object, "resourceVersion", Value::Null);
    Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
}

/// Parses a stored object and gives it its resourceVersion.
pub fn from_stored(bytes: &[u8], revision: i64) -> Result<Value, serde_json::Error> {
    let mut object: Value = serde_json::from_slice(bytes)?;
    set_meta(
        &mut object,
        "resourceVersion",
        Value::String(revision.to_string()),
    );
    Ok(object)
}

/// The stored bytes with `"resourceVersion":"N"` added to `metadata`, without
/// parsing the object: what watch events and cached lists send.
pub fn with_resource_version(bytes: &[u8], revision: i64) -> Bytes {
    const META: &[u8] = b"\"metadata\":{";
    // Stored objects are serialized with sorted keys, so `metadata` follows only
    // `apiVersion` and `kind`, whose values are plain names: its first match is it.
    if let Some(at) = find(bytes, META) {
        let insert_at = at + META.len();
        let rv = format!("\"resourceVersion\":\"{revision}\"");
        let mut out = BytesMut::with_capacity(bytes.len() + rv.len() + 1);
        out.put_slice(&bytes[..insert_at]);
        out.put_slice(rv.as_bytes());
        if bytes.get(insert_at) != Some(&b'}') {
            out.put_u8(b',');
        }
        out.put_slice(&bytes[insert_at..]);
        return out.freeze();
    }
    match from_stored(bytes, revision) {
        Ok(object) => Bytes::from(serde_json::to_vec(&object).unwrap_or_default()),
        Err(_) => Bytes::copy_from_slice(bytes),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The depth of the deepest nesting in a JSON value.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_version_is_spliced_in() {
        let object = json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": "a"}, "spec": {"x": 1}});
        let stored = to_stored(&object);
        let out: Value = serde_json::from_slice(&with_resource_version(&stored, 42)).unwrap();
        assert_eq!(out["metadata"]["resourceVersion"], "42");
        assert_eq!(out["metadata"]["name"], "a");
        assert_eq!(out["spec"]["x"], 1);

        let empty = to_stored(&json!({"apiVersion": "v1", "kind": "X", "metadata": {}}));
        let out: Value = serde_json::from_slice(&with_resource_version(&empty, 7)).unwrap();
        assert_eq!(out["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn stored_objects_drop_their_resource_version() {
        let object = json!({"metadata": {"name": "a", "resourceVersion": "9"}});
        let stored: Value = serde_json::from_slice(&to_stored(&object)).unwrap();
        assert!(stored["metadata"].get("resourceVersion").is_none());
        assert_eq!(
            from_stored(&to_stored(&object), 10).unwrap()["metadata"]["resourceVersion"],
            "10"
        );
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a": [{"b": 1}]})), 3);
    }
}
