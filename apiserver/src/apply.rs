//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Loom implements a documented subset of Kubernetes' server-side apply: a
//! manager owns the leaf fields it set, where maps (objects) are walked into and
//! lists and scalars are atomic leaves (Kubernetes merges some lists by key; Loom
//! treats every list as one value). Applying sets the applied fields, removes
//! fields the manager applied before and no longer applies (unless another
//! manager owns them too), and conflicts when it would change a field another
//! manager owns, unless forced, which takes the field over. Ordinary writes
//! (create, update, patch) give their manager the fields they change.

use std::collections::BTreeSet;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// A field path: keys from the object's root.
pub type Path = Vec<String>;

/// One manager's entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    /// When the manager last changed its fields (kept when they did not change,
    /// so a repeated identical write changes nothing).
    time: String,
    fields: BTreeSet<Path>,
}

/// A field another manager owns that an apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// The field, dotted (`spec.replicas`).
    pub field: String,
}

/// The leaf fields of an object that ownership tracks: everything but
/// apiVersion, kind and server-owned metadata; `status` only when `status` is set.
pub fn tracked_fields(object: &Value, status: bool) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" if !status => {
                for owned in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(v) = value.get(owned) {
                        leaves(v, vec!["metadata".to_owned(), owned.to_owned()], &mut out);
                    }
                }
            }
            "status" if !status => {}
            _ if status && key != "status" => {}
            _ => leaves(value, vec![key.clone()], &mut out),
        }
    }
    out
}

fn leaves(value: &Value, path: Path, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let mut next = path.clone();
                next.push(key.clone());
                leaves(child, next, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// The value at a path.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |v, key| v.get(key))
}

fn set_at(object: &mut Value, path: &[String], value: Value) {
    let mut current = object;
    for key in &path[..path.len().saturating_sub(1)] {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Some(map) = current.as_object_mut() else {
            return;
        };
        current = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let (Some(last), Some(map)) = (path.last(), current.as_object_mut()) {
        map.insert(last.clone(), value);
    } else if !current.is_object() {
        let mut map = Map::new();
        if let Some(last) = path.last() {
            map.insert(last.clone(), value);
        }
        *current = Value::Object(map);
    }
}

fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = object;
    for key in parents {
        match current.get_mut(key) {
            Some(next) => current = next,
            None => return,
        }
    }
    if let Some(map) = current.as_object_mut() {
        map.remove(last);
    }
}

fn dotted(path: &[String]) -> String {
    path.join(".")
}

fn to_fields_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for path in fields {
        let keys: Path = path.iter().map(|k| format!("f:{k}")).collect();
        set_at(&mut root, &keys, json!({}));
    }
    root
}

fn from_fields_v1(value: &Value, path: Path, out: &mut BTreeSet<Path>) {
    let Some(map) = value.as_object() else { return };
    let children: Vec<_> = map
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("f:")?.to_owned(), v)))
        .collect();
    if children.is_empty() {
        if !path.is_empty() {
            out.insert(path);
        }
        return;
    }
    for (key, child) in children {
        let mut next = path.clone();
        next.push(key);
        from_fields_v1(child, next, out);
    }
}

fn read_entries(object: &Value) -> Vec<Entry> {
    let Some(list) = object
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let mut fields = BTreeSet::new();
            if let Some(v1) = e.get("fieldsV1") {
                from_fields_v1(v1, Vec::new(), &mut fields);
            }
            Entry {
                manager: text("manager"),
                operation: text("operation"),
                api_version: text("apiVersion"),
                subresource: text("subresource"),
                time: text("time"),
                fields,
            }
        })
        .collect()
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut entry = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                entry["subresource"] = json!(e.subresource);
            }
            entry
        })
        .collect();
    let meta = crate::object::metadata_mut(object);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".to_owned(), Value::Array(list));
    }
}

fn entry_mut<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: &str,
) -> &'a mut Entry {
    let at = entries.iter().position(|e| {
        e.manager == manager && e.operation == operation && e.subresource == subresource
    });
    let at = match at {
        Some(at) => at,
        None => {
            entries.push(Entry {
                manager: manager.to_owned(),
                operation: operation.to_owned(),
                api_version: api_version.to_owned(),
                subresource: subresource.to_owned(),
                time: now(),
                fields: BTreeSet::new(),
            });
            entries.len() - 1
        }
    };
    &mut entries[at]
}

/// Records an ordinary write: `manager` owns the fields it changed; fields it
/// removed are no longer anyone's.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    status: bool,
) {
    let mut entries = match old {
        Some(old) => read_entries(old),
        None => Vec::new(),
    };
    let after = tracked_fields(new, status);
    let before = old.map(|o| tracked_fields(o, status)).unwrap_or_default();
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = before.difference(&after).cloned().collect();
    for entry in entries.iter_mut() {
        entry
            .fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() {
        let subresource = if status { "status" } else { "" };
        let entry = entry_mut(&mut entries, manager, "Update", api_version, subresource);
        entry.fields.extend(changed);
        entry.time = now();
    }
    write_entries(new, &entries);
}

/// Applies `applied` (a partial object) as `manager` onto `current` (or onto
/// nothing, for a create). Returns the new object, or the conflicts.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = current.map(read_entries).unwrap_or_default();
    let wanted = tracked_fields(applied, false);
    let previous = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource.is_empty())
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut conflicts = Vec::new();
    if let Some(current) = current {
        for entry in &entries {
            if entry.manager == manager && entry.operation == "Apply" {
                continue;
            }
            for path in wanted.intersection(&entry.fields) {
                if value_at(current, path) != value_at(applied, path) {
                    conflicts.push(Conflict {
                        manager: entry.manager.clone(),
                        field: dotted(path),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut object = match current {
        Some(current) => current.clone(),
        None => json!({}),
    };
    for key in ["apiVersion", "kind"] {
        if let Some(value) = applied.get(key) {
            object[key] = value.clone();
        }
    }
    if let Some(meta) = applied.get("metadata").and_then(Value::as_object) {
        for key in ["name", "namespace", "generateName"] {
            if let Some(value) = meta.get(key) {
                crate::object::set_meta(&mut object, key, value.clone());
            }
        }
    }
    for path in &wanted {
        if let Some(value) = value_at(applied, path) {
            set_at(&mut object, path, value.clone());
        }
    }
    let others: BTreeSet<Path> = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for path in previous.difference(&wanted) {
        if !others.contains(path) {
            remove_at(&mut object, path);
        }
    }
    if force {
        let taken: BTreeSet<Path> = conflicts
            .iter()
            .map(|c| c.field.split('.').map(str::to_owned).collect())
            .collect();
        for entry in entries.iter_mut() {
            entry.fields.retain(|p| !taken.contains(p));
        }
    }
    let entry = entry_mut(&mut entries, manager, "Apply", api_version, "");
    if entry.fields != wanted {
        entry.fields = wanted;
        entry.time = now();
    }
    write_entries(&mut object, &entries);
    Ok(object)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn managers(object: &Value) -> Vec<(String, String)> {
        read_entries(object)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    #[test]
    fn apply_creates_then_removes_what_it_no_longer_applies() {
        let applied = json!({"apiVersion": "loom.dev/v1", "kind": "Job", "metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 2, "owner": "me"}});
        let created = apply(None, &applied, "alice", "loom.dev/v1", false).unwrap();
        assert_eq!(created["spec"]["replicas"], 2);
        assert_eq!(
            managers(&created),
            [("alice".to_owned(), "Apply".to_owned())]
        );
        let smaller = json!({"apiVersion": "loom.dev/v1", "kind": "Job", "metadata": {"name": "a"}, "spec": {"replicas": 3}});
        let next = apply(Some(&created), &smaller, "alice", "loom.dev/v1", false).unwrap();
        assert_eq!(next["spec"]["replicas"], 3);
        assert!(next["spec"].get("owner").is_none());
        assert!(
            next["metadata"]
                .get("labels")
                .is_none_or(|l| l.get("x").is_none())
        );
    }

    #[test]
    fn changing_another_managers_field_conflicts_unless_forced() {
        let applied = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}});
        let mut object = apply(None, &applied, "alice", "loom.dev/v1", false).unwrap();
        let before = object.clone();
        object["spec"]["replicas"] = json!(5);
        record_update(Some(&before), &mut object, "scaler", "loom.dev/v1", false);
        let conflicts = apply(Some(&object), &applied, "alice", "loom.dev/v1", false).unwrap_err();
        assert_eq!(
            conflicts,
            [Conflict {
                manager: "scaler".into(),
                field: "spec.replicas".into()
            }]
        );
        // The same value is shared ownership, not a conflict.
        let same = json!({"metadata": {"name": "a"}, "spec": {"replicas": 5}});
        assert!(apply(Some(&object), &same, "alice", "loom.dev/v1", false).is_ok());
        let forced = apply(Some(&object), &applied, "alice", "loom.dev/v1", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let scaler = read_entries(&forced)
            .into_iter()
            .find(|e| e.manager == "scaler");
        assert!(scaler.is_none(), "the forced field left the other manager");
    }

    #[test]
    fn fields_v1_round_trips() {
        let fields: BTreeSet<Path> = [
            vec!["spec".into(), "replicas".into()],
            vec!["metadata".into(), "labels".into(), "a".into()],
        ]
        .into_iter()
        .collect();
        let mut back = BTreeSet::new();
        from_fields_v1(&to_fields_v1(&fields), Vec::new(), &mut back);
        assert_eq!(back, fields);
    }
}
