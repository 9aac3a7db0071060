//! Namespaces: objects of namespaced kinds may only live in one that exists
//! (the [`NamespaceLifecycle`](crate::admission::NamespaceLifecycle) step);
//! the built-in ones may not be deleted, and a namespace's objects go with it.

use api_types::{Namespace, Status};
use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Column, Hooks, Rest, Typed};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::generic::GenericStore;
use crate::object;

/// Namespaces every cluster has.
pub const BUILT_IN: [&str; 2] = [
    api_types::well_known::DEFAULT_NAMESPACE,
    api_types::well_known::SYSTEM_NAMESPACE,
];

/// The Namespace REST storage: its strategy and its deletion hooks.
pub fn rest() -> Rest {
    Rest::new(strategy()).hooks(NamespaceHooks)
}

/// The Namespace strategy.
pub fn strategy() -> Typed<Namespace> {
    Typed::new(vec![Column {
        name: "Status",
        kind: "string",
        description: "Active or Terminating",
        priority: 0,
        cell: |o| match api_types::selector::json_field(o, "status.phase") {
            Some(phase) => json!(phase),
            None => json!("Active"),
        },
    }])
    .selectable(&["status.phase"])
    .initial_status(json!({"phase": "Active"}))
}

/// A built-in namespace stays; a namespace's objects go before it does.
#[derive(Clone, Copy, Debug)]
struct NamespaceHooks;

#[async_trait]
impl Hooks for NamespaceHooks {
    fn check_delete(&self, res: &ServedResource, name: &str) -> ApiResult<()> {
        if BUILT_IN.contains(&name) {
            return Err(ApiError::from(Status::forbidden(
                &res.group_resource(),
                name,
                "this namespace may not be deleted",
            )));
        }
        Ok(())
    }

    async fn before_remove(&self, store: &GenericStore, object: &Value) -> ApiResult<()> {
        let namespace = object::name(object);
        let mut prefixes: Vec<String> = store
            .catalog
            .resources()
            .iter()
            .filter(|r| r.info.namespaced)
            .map(|r| r.prefix(Some(namespace)))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        for prefix in prefixes {
            store.delete_prefix(&prefix).await?;
        }
        Ok(())
    }
}
