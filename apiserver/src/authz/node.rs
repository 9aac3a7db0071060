//! A node is only itself: Kubernetes' Node authorizer and NodeRestriction
//! admission for the users `system:node:NAME` of the group `system:nodes`.
//!
//! What a node may do, exactly (issue 17's decisions): get, update and patch
//! its own Node and its status (and create it: registration), list and watch
//! Nodes; get, create, update and patch its own Lease in the node-lease
//! namespace; list and watch the Tasks bound to it (a `spec.nodeName=NAME`
//! field selector), get them and update or patch their status, and create
//! tokens of the service accounts they run as; get, create, patch and update
//! Events; list and watch Services and Endpoints; get and
//! create the node-lease namespace it registers into; create TokenReviews
//! and SubjectAccessReviews (to authenticate and authorize the callers of
//! its own server); create CertificateSigningRequests (its client
//! certificate's renewal and its serving certificate: the certificate
//! admission step approves only those naming the node itself, and denies
//! the rest; reading its answer back, by name and only its own, is the
//! authorizer's own-request check). Anything else is up to
//! RBAC, where nodes hold nothing but discovery and self reviews, so it is a
//! 403. The authorizer decides by the request's path and the Task cache; the
//! admission step checks what the path does not show (the name in a create's
//! body, the node a status write's task is bound to).

use std::sync::Arc;

use api_types::well_known::NODE_LEASE_NAMESPACE;
use api_types::{GroupResource, Lease, Namespace, Node, Task};
use async_trait::async_trait;
use serde_json::Value;

use super::authorizer::request_user;
use super::rbac::{Attributes, Decision, UserInfo};
use crate::admission::{AdmissionStep, Operation, Phase, Review};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};

/// The group of every node.
pub const NODES_GROUP: &str = "system:nodes";
/// The user-name prefix of a node: `system:node:NAME`.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The node `user` is, if it is one: `system:node:NAME` in `system:nodes`.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// Whether a field selector asks for exactly the tasks bound to `node`.
fn selects_node(selector: &str, node: &str) -> bool {
    selector.split(',').any(|requirement| {
        let requirement = requirement.trim();
        requirement
            .strip_prefix("spec.nodeName")
            .and_then(|rest| rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')))
            == Some(node)
    })
}

/// The node a task is bound to, by the Task cache.
fn bound_node(tasks: &ServedResource, namespace: &str, name: &str) -> Option<String> {
    let object = tasks.cache.get(&tasks.key(namespace, name))?;
    object.fields.get("spec.nodeName").cloned()
}

/// Whether a task of `namespace` bound to `node` runs as the service
/// account `account` (`default` when it names none).
fn runs_as(tasks: &ServedResource, node: &str, namespace: &str, account: &str) -> bool {
    let filter = crate::watch_cache::Filter {
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    tasks
        .cache
        .list_at_most(&filter, usize::MAX)
        .map(|(objects, _)| objects)
        .unwrap_or_default()
        .iter()
        .filter(|o| o.fields.get("spec.nodeName").map(String::as_str) == Some(node))
        .any(|o| {
            let task = o.value();
            let named = task
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("");
            let named = if named.is_empty() { "default" } else { named };
            named == account
        })
}

/// The Node authorizer's answer for `node`'s request: allowed, or why not.
pub fn decide(node: &str, request: &Attributes, tasks: &ServedResource) -> Decision {
    let allowed = || Decision::Allowed {
        reason: format!("allowed to node {node:?} by the node authorizer"),
    };
    if !request.resource_request {
        return Decision::denied();
    }
    let verb = request.verb.as_str();
    let sub = request.subresource.as_str();
    let own = request.name == node;
    let loom = request.api_group == api_types::GROUP;
    let core_or_loom = loom || request.api_group.is_empty();
    let ok = match request.resource.as_str() {
        "nodes" if loom => match verb {
            "get" | "update" | "patch" => own && matches!(sub, "" | "status"),
            // The name is in the body: NodeRestriction checks it.
            "create" => sub.is_empty(),
            "list" | "watch" => sub.is_empty(),
            _ => false,
        },
        "leases" if loom && request.namespace == NODE_LEASE_NAMESPACE => match verb {
            "get" | "update" | "patch" => own && sub.is_empty(),
            "create" => sub.is_empty(),
            _ => false,
        },
        "tasks" if loom => match (verb, sub) {
            ("list" | "watch", "") => selects_node(&request.field_selector, node),
            ("get", "") | ("update" | "patch", "status") => {
                bound_node(tasks, &request.namespace, &request.name).as_deref() == Some(node)
            }
            _ => false,
        },
        "events" if loom => matches!(verb, "get" | "create" | "patch" | "update") && sub.is_empty(),
        "services" | "endpoints" if loom => matches!(verb, "list" | "watch") && sub.is_empty(),
        // A token for the account a task bound to it runs as (what it
        // mounts into the task).
        "serviceaccounts" if core_or_loom => {
            verb == "create"
                && sub == "token"
                && runs_as(tasks, node, &request.namespace, &request.name)
        }
        // Who a caller of its own server is, and what the caller may do
        // (the nodelet authenticates and authorizes its callers as the
        // kubelet does: TokenReview, SubjectAccessReview).
        "tokenreviews" if request.api_group == "authentication.k8s.io" => verb == "create",
        "subjectaccessreviews" if request.api_group == "authorization.k8s.io" => verb == "create",
        // What it may ask for is the certificate admission step's to say.
        "certificatesigningrequests"
            if request.api_group == api_types::certificates::CERTIFICATES_GROUP =>
        {
            verb == "create" && sub.is_empty()
        }
        "namespaces" if core_or_loom => match verb {
            "get" => request.name == NODE_LEASE_NAMESPACE && sub.is_empty(),
            "create" => sub.is_empty(),
            _ => false,
        },
        _ => false,
    };
    if ok {
        allowed()
    } else {
        Decision::Denied {
            reason: format!("no relationship found between node {node:?} and this object"),
        }
    }
}

/// NodeRestriction: a node's writes may only be about itself.
#[derive(Debug)]
pub struct NodeRestriction {
    enabled: bool,
}

impl NodeRestriction {
    /// The step, doing nothing unless `enabled` (RBAC mode).
    pub fn new(enabled: bool) -> Arc<Self> {
        Arc::new(NodeRestriction { enabled })
    }
}

fn forbidden(resource: &ServedResource, name: &str, why: String) -> ApiError {
    ApiError::from(api_types::Status::forbidden(
        &GroupResource::new(resource.info.group.clone(), resource.info.plural.clone()),
        name,
        &why,
    ))
}

fn node_name_of(object: &Value) -> Option<&str> {
    object.pointer("/spec/nodeName").and_then(Value::as_str)
}

#[async_trait]
impl AdmissionStep for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    fn phase(&self) -> Phase {
        Phase::Validating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        if !self.enabled || review.operation == Operation::Delete {
            return Ok(());
        }
        let Some(user) = request_user() else {
            return Ok(());
        };
        let Some(node) = node_of(&user) else {
            return Ok(());
        };
        let resource = review.resource;
        let name = review.name;
        if resource.is::<Node>() && name != node {
            return Err(forbidden(
                resource,
                name,
                format!("node {node:?} is not allowed to modify node {name:?}"),
            ));
        }
        if resource.is::<Lease>() && (name != node || review.namespace != NODE_LEASE_NAMESPACE) {
            return Err(forbidden(
                resource,
                name,
                format!("node {node:?} may only write its own Lease {NODE_LEASE_NAMESPACE}/{node}"),
            ));
        }
        if resource.is::<Namespace>() && name != NODE_LEASE_NAMESPACE {
            return Err(forbidden(
                resource,
                name,
                format!("node {node:?} may only create the namespace {NODE_LEASE_NAMESPACE}"),
            ));
        }
        if resource.is::<Task>() {
            let before = review.old.and_then(node_name_of);
            let after = node_name_of(&review.object);
            if review.operation != Operation::Update || before != Some(node) || after != Some(node)
            {
                return Err(forbidden(
                    resource,
                    name,
                    format!("node {node:?} may only write the status of tasks bound to it"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_its_user_in_the_nodes_group() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(node_of(&user("system:node:a", &[NODES_GROUP])), Some("a"));
        assert_eq!(node_of(&user("system:node:a", &[])), None);
        assert_eq!(node_of(&user("system:node:", &[NODES_GROUP])), None);
        assert_eq!(node_of(&user("alice", &[NODES_GROUP])), None);
    }

    #[test]
    fn field_selectors_of_one_node() {
        assert!(selects_node("spec.nodeName=a", "a"));
        assert!(selects_node("status.phase=Running,spec.nodeName==a", "a"));
        assert!(!selects_node("spec.nodeName=b", "a"));
        assert!(!selects_node("spec.nodeName!=a", "a"));
        assert!(!selects_node("spec.nodeName=ab", "a"));
        assert!(!selects_node("", "a"));
    }
}
