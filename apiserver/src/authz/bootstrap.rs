//! The roles and bindings every cluster has, created at start when missing
//! (as Kubernetes' bootstrap policy; an edited one is left alone, a deleted
//! one comes back at the next start): cluster-admin for `system:masters`,
//! admin, edit and view to grant in namespaces, the discovery and
//! self-review roles of every user, and one role per Loom component with
//! exactly what it calls.

use std::time::Duration;

use api_types::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RBAC_GROUP, Resource, RoleRef, Subject,
};
use serde::Serialize;
use tracing::warn;

use crate::generic::{GenericStore, Part, WriteOptions};

/// Loom's API group.
const LOOM: &str = api_types::GROUP;
/// The core group (Namespace and ServiceAccount are served there too).
const CORE: &str = "";

/// Reading.
const READ: [&str; 3] = ["get", "list", "watch"];
/// What recording an Event takes (the recorder reads a repeated Event to
/// count it).
const EVENTS: [&str; 4] = ["get", "create", "patch", "update"];
/// Writing.
const WRITE: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The user the scheduler runs as.
pub const SCHEDULER_USER: &str = "system:loom-scheduler";
/// The user the controllers run as.
pub const CONTROLLERS_USER: &str = "system:loom-controllers";
/// The node proxies' user (`loom proxy`).
pub const PROXY_USER: &str = "system:loom-proxy";
/// The group of every node (`system:node:NAME`).
pub const NODES_GROUP: &str = "system:nodes";
/// Every authenticated user's group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule::resources(verbs, groups, resources)
}

/// What `view` may read in a namespace.
fn view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &READ,
            &[LOOM],
            &[
                "tasks",
                "tasks/log",
                "tasks/status",
                "jobs",
                "jobs/status",
                "services",
                "services/status",
                "services/scale",
                "endpoints",
                "events",
                "namespaces",
                "namespaces/status",
                "serviceaccounts",
            ],
        ),
        rule(
            &READ,
            &[CORE],
            &["namespaces", "namespaces/status", "serviceaccounts"],
        ),
    ]
}

/// What `edit` may change in a namespace, beyond what `view` reads.
fn edit_rules() -> Vec<PolicyRule> {
    let mut rules = view_rules();
    rules.push(rule(
        &WRITE,
        &[LOOM],
        &["tasks", "jobs", "services", "endpoints", "serviceaccounts"],
    ));
    rules.push(rule(&WRITE, &[CORE], &["serviceaccounts"]));
    rules.push(rule(&["create"], &[CORE, LOOM], &["serviceaccounts/token"]));
    rules.push(rule(&["update", "patch"], &[LOOM], &["services/scale"]));
    rules
}

/// What `admin` may do in a namespace: `edit`, and grant roles there.
fn admin_rules() -> Vec<PolicyRule> {
    let mut rules = edit_rules();
    rules.push(rule(
        &[
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ],
        &[RBAC_GROUP],
        &["roles", "rolebindings"],
    ));
    rules.push(rule(
        &["create"],
        &[api_types::authorization::AUTHORIZATION_GROUP],
        &["localsubjectaccessreviews"],
    ));
    rules
}

/// The scheduler: follows tasks and nodes, binds tasks, writes their
/// Scheduled condition and Events, claims room on nodes (annotations), and
/// holds its leader Lease.
fn scheduler_rules() -> Vec<PolicyRule> {
    vec![
        rule(&READ, &[LOOM], &["tasks", "nodes"]),
        rule(&["create"], &[LOOM], &["tasks/binding"]),
        rule(&["patch", "update"], &[LOOM], &["tasks/status", "nodes"]),
        rule(&EVENTS, &[LOOM], &["events"]),
        rule(
            &["get", "list", "watch", "create", "update", "patch"],
            &[LOOM],
            &["leases"],
        ),
    ]
}

/// The controllers: jobs, services (their scale too, for the autoscaler), their tasks and endpoints; node lifecycle (the
/// nodes' Leases, their status); TTL deletion; expired bootstrap tokens'
/// deletion; the nodes' Lease namespace;
/// Events; their leader Lease.
fn controllers_rules() -> Vec<PolicyRule> {
    let all: Vec<&str> = READ.iter().chain(&WRITE).copied().collect();
    vec![
        rule(&all, &[LOOM], &["tasks", "jobs", "services", "endpoints"]),
        rule(
            &["get", "update", "patch"],
            &[LOOM],
            &[
                "tasks/status",
                "jobs/status",
                "services/status",
                "services/scale",
            ],
        ),
        rule(&READ, &[LOOM], &["nodes"]),
        rule(&["update", "patch"], &[LOOM], &["nodes", "nodes/status"]),
        rule(
            &["get", "list", "watch", "create", "update", "patch"],
            &[LOOM],
            &["leases"],
        ),
        rule(
            &["get", "list", "watch", "create"],
            &[LOOM, CORE],
            &["namespaces"],
        ),
        rule(&EVENTS, &[LOOM], &["events"]),
        rule(
            &["get", "list", "watch", "delete"],
            &[LOOM],
            &["bootstraptokens"],
        ),
    ]
}

/// The node proxy (Kubernetes' `system:node-proxier`): follows Services,
/// their Endpoints, Job tasks (the resolver's names) and Nodes (its own
/// node's task subnet), and records Events.
fn proxy_rules() -> Vec<PolicyRule> {
    vec![
        rule(&READ, &[LOOM], &["services", "endpoints", "tasks", "nodes"]),
        rule(&EVENTS, &[LOOM], &["events"]),
    ]
}

/// A node, as RBAC would see every node: bound to no one by default (the
/// Node authorizer grants each node what it needs of its own objects); for
/// an operator who must grant a node more by hand: registers and updates its Node, renews its Lease, follows
/// the tasks bound to it and writes their status, follows Services and their
/// Endpoints (the node's proxy and resolver), records Events, creates
/// the Lease namespace if missing, mints its tasks' service-account
/// tokens, and asks who the callers of its own server are and what they may
/// do (TokenReview, SubjectAccessReview: as Kubernetes' `system:node`).
fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["get", "list", "watch", "create", "update", "patch"],
            &[LOOM],
            &["nodes"],
        ),
        rule(&["get", "update", "patch"], &[LOOM], &["nodes/status"]),
        rule(&["get", "create", "update", "patch"], &[LOOM], &["leases"]),
        rule(&READ, &[LOOM], &["tasks", "services", "endpoints"]),
        rule(&["get", "update", "patch"], &[LOOM], &["tasks/status"]),
        rule(&EVENTS, &[LOOM], &["events"]),
        rule(&["get", "create"], &[LOOM, CORE], &["namespaces"]),
        rule(&["create"], &[CORE, LOOM], &["serviceaccounts/token"]),
        rule(
            &["create"],
            &[api_types::service_account::AUTHENTICATION_GROUP],
            &["tokenreviews"],
        ),
        rule(
            &["create"],
            &[api_types::authorization::AUTHORIZATION_GROUP],
            &["subjectaccessreviews"],
        ),
    ]
}

/// What a node joining with a bootstrap token, or renewing its certificate,
/// may do with certificate requests: ask (the certificate admission step
/// refuses any request but the node's own client certificate, as
/// Kubernetes' `system:node-bootstrapper` and `selfnodeclient` approval
/// do). It reads the answer by name, and only its own: the authorizer
/// decides that by the request's requester, which no rule can say.
fn certificate_request_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["create"],
        &[api_types::certificates::CERTIFICATES_GROUP],
        &["certificatesigningrequests"],
    )]
}

/// The rule the roles of [`certificate_request_rules`] held before: reading
/// every request. Taken back from a stored role that still holds it as it
/// was made (reconciliation otherwise only adds).
fn retired_certificate_request_rule() -> PolicyRule {
    rule(
        &["create", "get", "list", "watch"],
        &[api_types::certificates::CERTIFICATES_GROUP],
        &["certificatesigningrequests"],
    )
}

/// The role of bootstrap tokens.
pub const NODE_BOOTSTRAPPER_ROLE: &str = "system:node-bootstrapper";
/// The role nodes renew their certificates by.
pub const SELF_NODE_CLIENT_ROLE: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";

/// Every bootstrap cluster role.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let everything = vec![
        rule(&["*"], &["*"], &["*"]),
        PolicyRule::urls(&["*"], &["*"]),
    ];
    let health = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let mut discovery: Vec<&str> = vec![
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/openapi",
        "/openapi/*",
    ];
    discovery.extend(health);
    let roles = [
        ("cluster-admin", everything),
        ("admin", admin_rules()),
        ("edit", edit_rules()),
        ("view", view_rules()),
        (
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &[api_types::authorization::AUTHORIZATION_GROUP],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        (
            "system:public-info-viewer",
            vec![PolicyRule::urls(&["get"], &health)],
        ),
        (
            "system:discovery",
            vec![PolicyRule::urls(&["get"], &discovery)],
        ),
        ("system:loom-scheduler", scheduler_rules()),
        ("system:loom-controllers", controllers_rules()),
        ("system:loom-proxy", proxy_rules()),
        ("system:node", node_rules()),
        (NODE_BOOTSTRAPPER_ROLE, certificate_request_rules()),
        (SELF_NODE_CLIENT_ROLE, certificate_request_rules()),
    ];
    roles
        .into_iter()
        .map(|(name, rules)| {
            let mut role = ClusterRole::new(name, rules);
            label(&mut role.metadata);
            role
        })
        .collect()
}

/// Every bootstrap cluster role binding.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let bindings = [
        ("cluster-admin", vec![Subject::group("system:masters")]),
        ("system:basic-user", vec![Subject::group(AUTHENTICATED)]),
        (
            "system:public-info-viewer",
            vec![
                Subject::group(AUTHENTICATED),
                Subject::group(UNAUTHENTICATED),
            ],
        ),
        ("system:discovery", vec![Subject::group(AUTHENTICATED)]),
        ("system:loom-scheduler", vec![Subject::user(SCHEDULER_USER)]),
        (
            "system:loom-controllers",
            vec![Subject::user(CONTROLLERS_USER)],
        ),
        ("system:loom-proxy", vec![Subject::user(PROXY_USER)]),
        // Nodes are authorized by the Node authorizer, each to its own
        // objects; binding this role to `system:nodes` would give every node
        // every node's rights (Kubernetes leaves it unbound too).
        ("system:node", Vec::new()),
        (
            NODE_BOOTSTRAPPER_ROLE,
            vec![Subject::group(api_types::certificates::BOOTSTRAPPERS_GROUP)],
        ),
        (SELF_NODE_CLIENT_ROLE, vec![Subject::group(NODES_GROUP)]),
    ];
    bindings
        .into_iter()
        .map(|(name, subjects)| {
            let mut binding = ClusterRoleBinding::new(name, RoleRef::cluster_role(name), subjects);
            label(&mut binding.metadata);
            binding
        })
        .collect()
}

fn label(meta: &mut api_types::ObjectMeta) {
    meta.labels
        .insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    meta.annotations.insert(
        "rbac.authorization.kubernetes.io/autoupdate".into(),
        "true".into(),
    );
}

/// Creates every bootstrap role and binding that is missing, and gives back
/// what a stored one lost (Kubernetes' reconciliation of its
/// `rbac.authorization.kubernetes.io/autoupdate` objects: permissions and
/// subjects are added, nothing is taken away; `autoupdate: "false"` leaves
/// the object alone).
pub async fn ensure(api: &GenericStore) {
    for role in cluster_roles() {
        reconcile(api, &role, |stored: &mut ClusterRole, wanted| {
            let mut retired = false;
            if [NODE_BOOTSTRAPPER_ROLE, SELF_NODE_CLIENT_ROLE]
                .contains(&wanted.metadata.name.as_str())
            {
                let before = stored.rules.len();
                let old = retired_certificate_request_rule();
                stored.rules.retain(|rule| *rule != old);
                retired = stored.rules.len() != before;
            }
            let lost: Vec<PolicyRule> = wanted
                .rules
                .iter()
                .filter(|rule| {
                    !super::rbac::uncovered(&stored.rules, std::slice::from_ref(rule)).is_empty()
                })
                .cloned()
                .collect();
            stored.rules.extend(lost.iter().cloned());
            retired || !lost.is_empty()
        })
        .await;
    }
    for binding in cluster_role_bindings() {
        reconcile(api, &binding, |stored: &mut ClusterRoleBinding, wanted| {
            let missing: Vec<Subject> = wanted
                .subjects
                .iter()
                .filter(|s| !stored.subjects.contains(s))
                .cloned()
                .collect();
            stored.subjects.extend(missing.iter().cloned());
            // A binding to another role is a user's choice: roleRef never changes.
            !missing.is_empty()
        })
        .await;
    }
}

/// Creates `wanted`, or, if it exists and may be updated, lets `merge` add
/// what it lost and writes it back.
async fn reconcile<K>(api: &GenericStore, wanted: &K, merge: impl Fn(&mut K, &K) -> bool)
where
    K: Resource + Serialize + serde::de::DeserializeOwned,
{
    let resource = api.catalog.builtin_resource::<K>();
    let name = wanted.meta().name.clone();
    let Ok(value) = serde_json::to_value(wanted) else {
        return;
    };
    let options = WriteOptions {
        field_manager: "loom-apiserver".to_owned(),
        ..Default::default()
    };
    for attempt in 0..50 {
        let outcome = match api.create(&resource, None, value.clone(), &options).await {
            Ok(_) => return,
            Err(error) if error.code() == 409 => match api.get(&resource, "", &name).await {
                Ok(stored) => {
                    let Ok(mut stored) = serde_json::from_value::<K>(stored) else {
                        return;
                    };
                    let autoupdate = stored
                        .meta()
                        .annotations
                        .get("rbac.authorization.kubernetes.io/autoupdate")
                        .map(String::as_str);
                    if autoupdate == Some("false") || !merge(&mut stored, wanted) {
                        return;
                    }
                    let Ok(updated) = serde_json::to_value(&stored) else {
                        return;
                    };
                    api.update(&resource, "", &name, updated, Part::Main, &options)
                        .await
                        .map(|_| ())
                }
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => return,
            Err(error) => {
                if attempt % 10 == 0 {
                    warn!(kind = K::KIND, %name, error = %error.0.message, "cannot write a bootstrap role yet");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::Validate;

    #[test]
    fn every_bootstrap_object_is_valid_and_bound_to_its_role() {
        let roles = cluster_roles();
        for role in &roles {
            assert!(
                role.validate().is_empty(),
                "{}: {:?}",
                role.metadata.name,
                role.validate()
            );
        }
        for binding in cluster_role_bindings() {
            assert!(binding.validate().is_empty(), "{:?}", binding.validate());
            assert!(
                roles
                    .iter()
                    .any(|r| r.metadata.name == binding.role_ref.name)
            );
        }
    }

    #[test]
    fn a_node_may_review_its_callers_and_no_more() {
        let authn = api_types::service_account::AUTHENTICATION_GROUP;
        let authz = api_types::authorization::AUTHORIZATION_GROUP;
        let needed = [
            rule(&["create"], &[authn], &["tokenreviews"]),
            rule(&["create"], &[authz], &["subjectaccessreviews"]),
        ];
        assert!(super::super::rbac::uncovered(&node_rules(), &needed).is_empty());
        for wider in [
            rule(&["get"], &[authn], &["tokenreviews"]),
            rule(&["create"], &[authz], &["localsubjectaccessreviews"]),
            rule(&["create"], &[authz], &["selfsubjectrulesreviews"]),
        ] {
            assert!(!super::super::rbac::uncovered(&node_rules(), &[wider]).is_empty());
        }
    }

    #[test]
    fn edit_and_admin_hold_what_view_does() {
        let view = view_rules();
        assert!(super::super::rbac::uncovered(&edit_rules(), &view).is_empty());
        assert!(super::super::rbac::uncovered(&admin_rules(), &edit_rules()).is_empty());
        // edit cannot grant roles; admin cannot grant cluster-admin's rules.
        assert!(
            !super::super::rbac::uncovered(&admin_rules(), &[rule(&["*"], &["*"], &["*"])])
                .is_empty()
        );
    }
}
