//! Conversion of a kind's objects between the `apiVersion` the store records
//! and a version it is served at: one hook per kind, called on every read
//! (as a response or watch event is presented) and on every create and update
//! (before the object is stored). No kind needs one yet: without a hook an
//! object is served as stored, apart from the `apiVersion` rewrite of a kind
//! served at several paths, and reading the registry costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// Converts one kind's objects between its stored version and a served one
/// (Kubernetes' conversion functions, or a conversion webhook of a custom kind).
pub trait Conversion: Send + Sync {
    /// On every read: `object` as stored, to be presented at `served` (a
    /// `group/version`; the object's `apiVersion` already says it).
    fn to_served(&self, object: &mut Value, served: &str);

    /// On every create and update, before validation and storage: `object` as
    /// sent at `served`, to be made into its stored form at `stored`. An
    /// error refuses the write with 400 and the message.
    fn to_stored(&self, object: &mut Value, served: &str, stored: &str) -> Result<(), String>;
}

struct Entry {
    group: String,
    kind: String,
    hook: Arc<dyn Conversion>,
}

/// Whether any kind has a hook: while none does, a lookup takes no lock.
static ANY: AtomicBool = AtomicBool::new(false);
static HOOKS: RwLock<Vec<Entry>> = RwLock::new(Vec::new());

/// Registers `hook` for `kind` of `group` (its storage group), in place of an
/// earlier one; before the API server serves the kind.
pub fn register(group: &str, kind: &str, hook: Arc<dyn Conversion>) {
    let mut hooks = HOOKS.write().unwrap_or_else(|e| e.into_inner());
    hooks.retain(|e| !(e.group == group && e.kind == kind));
    hooks.push(Entry {
        group: group.to_owned(),
        kind: kind.to_owned(),
        hook,
    });
    ANY.store(true, Ordering::Release);
}

/// The hook of `kind` in `group`; `None` is the identity, which every
/// built-in kind has today.
pub fn hook(group: &str, kind: &str) -> Option<Arc<dyn Conversion>> {
    if !ANY.load(Ordering::Acquire) {
        return None;
    }
    let hooks = HOOKS.read().unwrap_or_else(|e| e.into_inner());
    hooks
        .iter()
        .find(|e| e.group == group && e.kind == kind)
        .map(|e| e.hook.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;

    use serde_json::json;

    use super::*;

    /// Stores `spec.color`, serves `spec.colour`, and counts its calls.
    #[derive(Default)]
    struct Spelling {
        reads: AtomicUsize,
        writes: AtomicUsize,
    }

    fn rename(object: &mut Value, from: &str, to: &str) {
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
            && let Some(value) = spec.remove(from)
        {
            spec.insert(to.to_owned(), value);
        }
    }

    impl Conversion for Spelling {
        fn to_served(&self, object: &mut Value, _served: &str) {
            self.reads.fetch_add(1, Ordering::Relaxed);
            rename(object, "color", "colour");
        }

        fn to_stored(
            &self,
            object: &mut Value,
            _served: &str,
            _stored: &str,
        ) -> Result<(), String> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            rename(object, "colour", "color");
            Ok(())
        }
    }

    #[test]
    fn a_registered_hook_converts_its_kind_only_and_replaces_an_earlier_one() {
        assert!(hook("unit.example.com", "Paint").is_none());
        let first = Arc::new(Spelling::default());
        register("unit.example.com", "Paint", first.clone());
        let second = Arc::new(Spelling::default());
        register("unit.example.com", "Paint", second.clone());
        assert!(hook("unit.example.com", "Other").is_none());
        assert!(hook("other.example.com", "Paint").is_none());
        let found = hook("unit.example.com", "Paint").unwrap();
        let mut object = json!({"spec": {"colour": "red"}});
        found
            .to_stored(&mut object, "unit.example.com/v2", "unit.example.com/v1")
            .unwrap();
        assert_eq!(object, json!({"spec": {"color": "red"}}));
        found.to_served(&mut object, "unit.example.com/v2");
        assert_eq!(object, json!({"spec": {"colour": "red"}}));
        assert_eq!(second.writes.load(Ordering::Relaxed), 1);
        assert_eq!(second.reads.load(Ordering::Relaxed), 1);
        assert_eq!(first.writes.load(Ordering::Relaxed), 0);
    }
}
