//! JSON Patch (RFC 6902) applied one operation at a time under a size bound,
//! so a patch that would build a huge document stops before it does.

use serde_json::Value;

/// Why a JSON Patch was not applied.
#[derive(Debug)]
pub(crate) enum PatchRefused {
    /// It would build too large a document, or copy too much.
    TooLarge(String),
    /// An operation failed (a `test`, a missing path).
    Failed(json_patch::PatchError),
}

/// Applies a JSON Patch one operation at a time, keeping an estimate of the
/// document's serialized size: an operation that would take it over
/// `max_bytes`, or `copy` operations copying more than `max_bytes` in all, stop
/// the patch there. (Applied whole, ten `copy` operations of the document into
/// itself would build it 1,024 times over before anything could look at it.)
///
/// Every value the estimate walks is bounded: an added or copied value is
/// walked only up to what is left of the limit, and a removed one was built
/// from the document, the patch body or a bounded copy.
pub(crate) fn apply_json_patch(
    doc: &mut Value,
    patch: &[json_patch::PatchOperation],
    max_bytes: usize,
) -> Result<(), PatchRefused> {
    use json_patch::PatchOperation;
    let too_large = |index: usize| {
        PatchRefused::TooLarge(format!(
            "the JSON patch would make the object larger than {max_bytes} bytes (at operation {index})"
        ))
    };
    let mut size = json_size(doc, usize::MAX).unwrap_or(usize::MAX);
    let mut copied = 0usize;
    for (index, operation) in patch.iter().enumerate() {
        // What the operation takes away, then what it adds, within what is left.
        let path = operation.path().as_str();
        let shrink = match operation {
            PatchOperation::Move(op) if op.from.as_str() == path => 0,
            // A member moved up over its ancestor: the ancestor goes, the member stays.
            PatchOperation::Move(op) if op.from.as_str().starts_with(&format!("{path}/")) => {
                let moved = doc
                    .pointer(op.from.as_str())
                    .and_then(|v| json_size(v, usize::MAX))
                    .unwrap_or(0);
                replaced_member(doc, path).saturating_sub(moved)
            }
            PatchOperation::Move(op) => {
                member_overhead(doc, op.from.as_str()) + replaced_member(doc, path)
            }
            PatchOperation::Add(_) | PatchOperation::Copy(_) => replaced_member(doc, path),
            PatchOperation::Remove(_) => {
                doc.pointer(path)
                    .and_then(|old| json_size(old, usize::MAX))
                    .unwrap_or(0)
                    + member_overhead(doc, path)
            }
            PatchOperation::Replace(_) => doc
                .pointer(path)
                .and_then(|old| json_size(old, usize::MAX))
                .unwrap_or(0),
            PatchOperation::Test(_) => 0,
        };
        let room = (max_bytes + shrink).saturating_sub(size);
        // Only what adds a member pays for its key: the pointer is walked then.
        let key = || member_overhead(doc, path);
        let grow = match operation {
            PatchOperation::Add(op) => json_size(&op.value, room).map(|n| n + key()),
            PatchOperation::Replace(op) => json_size(&op.value, room),
            PatchOperation::Move(_) => Some(key()),
            PatchOperation::Copy(op) => {
                let budget = room.min(max_bytes - copied);
                match doc.pointer(op.from.as_str()) {
                    Some(from) => match json_size(from, budget) {
                        Some(n) => {
                            copied += n;
                            Some(n + key())
                        }
                        None if budget < room => {
                            return Err(PatchRefused::TooLarge(format!(
                                "the JSON patch copies more than {max_bytes} bytes in all (at operation {index})"
                            )));
                        }
                        None => None,
                    },
                    // The operation fails below, naming the bad path.
                    None => Some(0),
                }
            }
            PatchOperation::Remove(_) | PatchOperation::Test(_) => Some(0),
        };
        let Some(grow) = grow.filter(|grow| *grow <= room) else {
            return Err(too_large(index));
        };
        json_patch::patch_unsafe(doc, std::slice::from_ref(operation)).map_err(|mut error| {
            error.operation = index;
            PatchRefused::Failed(error)
        })?;
        size = (size + grow).saturating_sub(shrink);
    }
    Ok(())
}

/// The size of what an `add` (or `copy`, `move`) to `path` replaces: the
/// whole document for `""`, an object's existing member with its key; nothing
/// for a new member or an array insert.
fn replaced_member(doc: &Value, path: &str) -> usize {
    if path.is_empty() {
        return json_size(doc, usize::MAX).unwrap_or(0);
    }
    let Some((parent, last)) = path.rsplit_once('/') else {
        return 0;
    };
    let key = unescape_token(last);
    match doc.pointer(parent) {
        Some(Value::Object(map)) => map
            .get(&key)
            .and_then(|old| json_size(old, usize::MAX))
            .map_or(0, |size| size + key.len() + 4),
        _ => 0,
    }
}

/// What a member at `path` costs besides its value: its quoted key, colon and
/// comma in an object, its comma in an array, nothing for the document itself.
fn member_overhead(doc: &Value, path: &str) -> usize {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return 0;
    };
    match doc.pointer(parent) {
        Some(Value::Object(_)) => unescape_token(last).len() + 4,
        Some(Value::Array(_)) => 1,
        _ => 0,
    }
}

/// A JSON Pointer reference token as the key it names (RFC 6901).
fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// About the length of `value` as compact JSON (string escapes aside), or
/// `None` once it is over `budget`: the walk stops there, so measuring a huge
/// value against a small budget is cheap. Iterative: patched documents can be
/// deep.
fn json_size(value: &Value, budget: usize) -> Option<usize> {
    let mut total = 0usize;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        total += match value {
            Value::Null => 4,
            Value::Bool(b) => 4 + usize::from(!b),
            Value::Number(n) => number_size(n),
            Value::String(text) => text.len() + 2,
            Value::Array(items) => {
                pending.extend(items.iter());
                items.len() + 1
            }
            Value::Object(map) => {
                total += map.keys().map(|k| k.len() + 4).sum::<usize>();
                pending.extend(map.values());
                2
            }
        };
        if total > budget {
            return None;
        }
    }
    Some(total)
}

/// Digits (and sign) of an integer; a float counts as its longest form.
fn number_size(n: &serde_json::Number) -> usize {
    let digits = |u: u64| u.checked_ilog10().map_or(1, |d| d as usize + 1);
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => digits(u),
        (None, Some(i)) => digits(i.unsigned_abs()) + 1,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn patch(ops: Value) -> json_patch::Patch {
        serde_json::from_value(ops).unwrap()
    }

    #[test]
    fn a_doubling_copy_patch_stops_at_the_size_limit_after_a_few_operations() {
        let mut doc = json!({"spec": {"a": "x".repeat(1000)}});
        // Each copy doubles the document: 10,000 of them would never finish.
        let ops: Vec<Value> = (0..10_000)
            .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/c{i}")}))
            .collect();
        let started = std::time::Instant::now();
        let refused = apply_json_patch(&mut doc, &patch(json!(ops)), 3 * 1024 * 1024);
        let Err(PatchRefused::TooLarge(why)) = refused else {
            panic!("the patch must be refused as too large: {refused:?}");
        };
        assert!(why.contains("larger than 3145728 bytes"), "{why}");
        let at: usize = why
            .rsplit("operation ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        assert!(at < 20, "stopped only at operation {at}: {why}");
        assert!(
            serde_json::to_vec(&doc).unwrap().len() <= 3 * 1024 * 1024,
            "the document was built past the limit"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn copies_are_bounded_in_all_even_when_each_is_removed_again() {
        let mut doc = json!({"big": "x".repeat(100_000)});
        let mut ops = Vec::new();
        for _ in 0..1_000 {
            ops.push(json!({"op": "copy", "from": "/big", "path": "/copy"}));
            ops.push(json!({"op": "remove", "path": "/copy"}));
        }
        let refused = apply_json_patch(&mut doc, &patch(json!(ops)), 1024 * 1024);
        let Err(PatchRefused::TooLarge(why)) = refused else {
            panic!("the patch must be refused: {refused:?}");
        };
        assert!(why.contains("copies more than 1048576 bytes"), "{why}");
    }

    #[test]
    fn ordinary_patches_apply_and_failures_name_their_operation() {
        let mut doc = json!({"spec": {"replicas": 1, "list": [1, 2]}, "status": {}});
        let ops = patch(json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
            {"op": "move", "from": "/spec/copy", "path": "/status/moved"},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "test", "path": "/spec/replicas", "value": 3},
        ]));
        apply_json_patch(&mut doc, &ops, 1024).unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 3, "list": [2, 3]}, "status": {"moved": [1, 2, 3]}})
        );
        let failing = patch(json!([
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "test", "path": "/spec/replicas", "value": 4},
        ]));
        let Err(PatchRefused::Failed(error)) = apply_json_patch(&mut doc, &failing, 1024) else {
            panic!("a failed test must fail the patch");
        };
        assert_eq!(error.operation, 1);
    }

    #[test]
    fn replacing_and_moving_keep_the_estimate_close() {
        // Replacing a large value by a small one many times must not look like growth.
        let mut doc = json!({"a": "x".repeat(500)});
        let mut ops = Vec::new();
        for i in 0..200 {
            ops.push(json!({"op": "add", "path": "/a", "value": "x".repeat(500 + i % 2)}));
            ops.push(json!({"op": "move", "from": "/a", "path": "/b"}));
            ops.push(json!({"op": "move", "from": "/b", "path": "/a"}));
        }
        apply_json_patch(&mut doc, &patch(json!(ops)), 2_000).unwrap();
    }

    #[test]
    fn json_size_is_the_compact_length_and_stops_at_its_budget() {
        let value = json!({"a": [1, -20, 3.5, null, true, false, "x\u{e9}"], "bb": {}});
        let exact = serde_json::to_vec(&value).unwrap().len();
        let estimate = json_size(&value, usize::MAX).unwrap();
        // Floats count as their longest form; everything else exactly.
        assert!(
            estimate >= exact && estimate <= exact + 24,
            "{estimate} vs {exact}"
        );
        assert_eq!(json_size(&value, 10), None);
    }
}
