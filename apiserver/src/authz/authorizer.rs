//! The authorizer every request passes: a tower layer in front of the router
//! (behind authentication) that derives the request's attributes, decides,
//! and answers 403 before any handler reads the body or writes anything.
//!
//! RBAC's rules come from the watch caches of the four RBAC kinds: a task per
//! kind follows its cache and rebuilds an [`Index`] (roles by name, bindings
//! by namespace) whenever one of them changes, and a request reads the
//! current index under a read lock, without touching the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api_types::{
    ClusterRole, ClusterRoleBinding, GroupResource, Resource, Role, RoleBinding, Task,
};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::attributes::request_attributes;
use super::node;
use super::rbac::{self, Attributes, Binding, Decision, PolicyRule, RuleSource, UserInfo};
use crate::catalog::{Catalog, ServedResource};
use crate::error::ApiError;
use crate::http::User;
use crate::watch_cache::{Filter, WatchCache, WatchError, WatchItem};

/// The group whose members may do anything (Kubernetes' `system:masters`).
pub const MASTERS_GROUP: &str = "system:masters";

/// Paths anyone may read, authenticated or not, whatever the mode: the
/// health checks and the version.
pub const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/livez", "/version"];

/// How the API server authorizes requests (`apiserver::Config::authorization`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Authorization {
    /// Every request is allowed (Kubernetes' `AlwaysAllow`): for an
    /// embedder that authorizes elsewhere; nothing in Loom runs it.
    AlwaysAllow,
    /// Kubernetes' RBAC over Role, ClusterRole and their bindings;
    /// `system:masters` may do anything. The default, and what `loom
    /// apiserver` and `loom up` run.
    #[default]
    Rbac,
}

/// The roles and bindings of the cluster, indexed for a request's lookups.
#[derive(Debug, Default)]
pub struct Index {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<String, HashMap<String, Vec<PolicyRule>>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

impl RuleSource for Index {
    fn cluster_role_bindings(&self) -> &[Binding] {
        &self.cluster_bindings
    }

    fn role_bindings(&self, namespace: &str) -> &[Binding] {
        self.bindings
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn cluster_role(&self, name: &str) -> Option<&[PolicyRule]> {
        self.cluster_roles.get(name).map(Vec::as_slice)
    }

    fn role(&self, namespace: &str, name: &str) -> Option<&[PolicyRule]> {
        self.roles.get(namespace)?.get(name).map(Vec::as_slice)
    }
}

/// The caches the index is built from.
struct Caches {
    roles: Arc<WatchCache>,
    cluster_roles: Arc<WatchCache>,
    bindings: Arc<WatchCache>,
    cluster_bindings: Arc<WatchCache>,
}

fn all<K: Resource>(cache: &WatchCache) -> Vec<K> {
    cache
        .list_at_most(&Filter::default(), usize::MAX)
        .map(|(objects, _)| objects)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| serde_json::from_slice::<K>(&o.json).ok())
        .collect()
}

impl Caches {
    fn index(&self) -> Index {
        let mut index = Index::default();
        for role in all::<ClusterRole>(&self.cluster_roles) {
            index.cluster_roles.insert(role.metadata.name, role.rules);
        }
        for role in all::<Role>(&self.roles) {
            index
                .roles
                .entry(role.metadata.namespace)
                .or_default()
                .insert(role.metadata.name, role.rules);
        }
        for binding in all::<ClusterRoleBinding>(&self.cluster_bindings) {
            index.cluster_bindings.push(Binding {
                name: binding.metadata.name,
                subjects: binding.subjects,
                role_ref: binding.role_ref,
            });
        }
        for binding in all::<RoleBinding>(&self.bindings) {
            index
                .bindings
                .entry(binding.metadata.namespace)
                .or_default()
                .push(Binding {
                    name: binding.metadata.name,
                    subjects: binding.subjects,
                    role_ref: binding.role_ref,
                });
        }
        index
    }
}

/// Decides requests.
pub struct Authorizer {
    mode: Authorization,
    index: RwLock<Arc<Index>>,
    /// Woken after every rebuild of the index.
    rebuilt: Notify,
    /// Held across a rebuild's read of the caches and its write of the
    /// index: the four caches' followers rebuild concurrently, and an index
    /// read before a change must never be written after one read after it.
    rebuilding: std::sync::Mutex<()>,
    caches: Option<Caches>,
    /// The tasks, for the Node authorizer (which tasks are bound where).
    tasks: Option<Arc<ServedResource>>,
    /// The certificate signing requests, for who asked for which: a node or
    /// a bootstrap token reads only its own.
    csrs: Option<Arc<ServedResource>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer of `mode`; for RBAC it follows the RBAC kinds' caches
    /// of `catalog` until they stop.
    pub fn start(mode: Authorization, catalog: &Catalog) -> Arc<Self> {
        let caches = Caches {
            roles: catalog.builtin_resource::<Role>().cache.clone(),
            cluster_roles: catalog.builtin_resource::<ClusterRole>().cache.clone(),
            bindings: catalog.builtin_resource::<RoleBinding>().cache.clone(),
            cluster_bindings: catalog
                .builtin_resource::<ClusterRoleBinding>()
                .cache
                .clone(),
        };
        let authorizer = Arc::new(Authorizer {
            mode,
            index: RwLock::new(Arc::new(Index::default())),
            rebuilt: Notify::new(),
            rebuilding: std::sync::Mutex::new(()),
            caches: Some(caches),
            tasks: Some(catalog.builtin_resource::<Task>()),
            csrs: Some(catalog.builtin_resource::<api_types::CertificateSigningRequest>()),
        });
        if let Some(caches) = &authorizer.caches {
            for cache in [
                &caches.roles,
                &caches.cluster_roles,
                &caches.bindings,
                &caches.cluster_bindings,
            ] {
                tokio::spawn(follow(Arc::downgrade(&authorizer), cache.clone()));
            }
        }
        authorizer
    }

    /// An authorizer over fixed rules (tests, and reviews of a hypothetical
    /// cluster).
    pub fn fixed(mode: Authorization, index: Index) -> Arc<Self> {
        Arc::new(Authorizer {
            mode,
            index: RwLock::new(Arc::new(index)),
            rebuilt: Notify::new(),
            rebuilding: std::sync::Mutex::new(()),
            caches: None,
            tasks: None,
            csrs: None,
        })
    }

    /// How it decides.
    pub fn mode(&self) -> Authorization {
        self.mode
    }

    /// The roles and bindings as last seen.
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn rebuild(&self) {
        if let Some(caches) = &self.caches {
            let _rebuilding = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
            let index = Arc::new(caches.index());
            *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
            self.rebuilt.notify_waiters();
        }
    }

    /// Waits until the index has been rebuilt at least once more, or `timeout`.
    pub async fn wait_rebuilt(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.rebuilt.notified())
            .await
            .is_ok()
    }

    /// Decides a request, by the mode: anything for `AlwaysAllow` and for
    /// `system:masters`, else RBAC.
    pub fn authorize(&self, request: &Attributes) -> Decision {
        if self.mode == Authorization::AlwaysAllow {
            return Decision::Allowed {
                reason: String::new(),
            };
        }
        if request.user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return Decision::Allowed {
                reason: format!("allowed for members of {MASTERS_GROUP}"),
            };
        }
        if !request.resource_request && is_open(&request.path) && request.verb == "get" {
            return Decision::Allowed {
                reason: "an open path".to_owned(),
            };
        }
        // A node's or a bootstrap token's read of a certificate signing
        // request: its own only, unless RBAC grants more.
        if let Some(csrs) = &self.csrs
            && let Some(decision) = own_certificate_request(request, csrs)
        {
            if decision.is_allowed() {
                return decision;
            }
            let rbac = rbac::authorize(&*self.index(), request);
            return if rbac.is_allowed() { rbac } else { decision };
        }
        // A node: the Node authorizer, then RBAC (Kubernetes' `Node,RBAC`).
        if let (Some(node), Some(tasks)) = (node::node_of(&request.user), &self.tasks) {
            let decision = node::decide(node, request, tasks);
            if decision.is_allowed() {
                return decision;
            }
            let rbac = rbac::authorize(&*self.index(), request);
            return if rbac.is_allowed() { rbac } else { decision };
        }
        rbac::authorize(&*self.index(), request)
    }

    /// The rules `user` holds in `namespace` (`""`: cluster-wide), all of
    /// them for `system:masters`.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return vec![
                PolicyRule::resources(&["*"], &["*"], &["*"]),
                PolicyRule::urls(&["*"], &["*"]),
            ];
        }
        rbac::rules_for(&*self.index(), user, namespace)
    }
}

/// How a node (`system:node:NAME` in `system:nodes`) or a bootstrap token
/// (`system:bootstrappers`) may read certificate signing requests: `get` of
/// one it asked for itself (its `spec.username` is the reader), by the
/// requests' cache; a name the cache does not hold (yet) is refused too (a
/// request created a moment ago is not read by another who guesses its
/// name). Lists and watches are refused: a node reads
/// the answer to its request by name. `None` for every other request or
/// user (RBAC decides).
fn own_certificate_request(request: &Attributes, csrs: &ServedResource) -> Option<Decision> {
    use api_types::certificates::{BOOTSTRAPPERS_GROUP, CERTIFICATES_GROUP};
    let bootstrapper = request.user.groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP);
    if !request.resource_request
        || request.api_group != CERTIFICATES_GROUP
        || request.resource != "certificatesigningrequests"
        || !request.subresource.is_empty()
        || !matches!(request.verb.as_str(), "get" | "list" | "watch")
        || !(bootstrapper || node::node_of(&request.user).is_some())
    {
        return None;
    }
    let user = &request.user.name;
    if request.verb != "get" || request.name.is_empty() {
        return Some(Decision::Denied {
            reason: format!(
                "{user:?} may read only the certificate signing requests it asked for, one by name (get)"
            ),
        });
    }
    let Some(object) = csrs.cache.get(&csrs.key("", &request.name)) else {
        // Not known (yet: the cache follows the store closely): whose it is
        // cannot be told, so it is nobody's to read.
        return Some(Decision::Denied {
            reason: format!(
                "certificate signing request {:?} is not known (yet), so not known to be {user:?}'s",
                request.name
            ),
        });
    };
    let requester = object
        .value()
        .pointer("/spec/username")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(if requester == *user {
        Decision::Allowed {
            reason: format!("{user:?} reads the certificate signing request it asked for"),
        }
    } else {
        Decision::Denied {
            reason: format!(
                "certificate signing request {:?} was asked for by {requester:?}, not by {user:?}",
                request.name
            ),
        }
    })
}

/// Whether `path` is one anyone may read.
pub fn is_open(path: &str) -> bool {
    OPEN_PATHS.iter().any(|open| {
        path.strip_prefix(open)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Follows one cache: rebuilds the index at once and after every change,
/// until the authorizer is gone or the cache stops.
async fn follow(authorizer: std::sync::Weak<Authorizer>, cache: Arc<WatchCache>) {
    loop {
        let watch = match cache.watch(None, Filter::default()).await {
            Ok(watch) => watch,
            Err(WatchError::Stopped) => return,
            Err(error) => {
                debug!(%error, "the RBAC cache is not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(strong) = authorizer.upgrade() else {
            return;
        };
        strong.rebuild();
        drop(strong);
        let mut live = watch.live;
        while let Some(item) = live.recv().await {
            if !matches!(item, WatchItem::Event(..)) {
                continue;
            }
            // Take every change already queued, then rebuild once.
            while live.try_recv().is_ok() {}
            let Some(strong) = authorizer.upgrade() else {
                return;
            };
            strong.rebuild();
        }
        // Cut off (or the cache relisted): start over.
        if authorizer.strong_count() == 0 {
            return;
        }
        warn!("the authorizer's watch of an RBAC cache ended; following it again");
    }
}

/// What the middleware decided, in the response's extensions (the audit log
/// reads it), with the attributes it decided on.
#[derive(Clone, Debug)]
pub struct Authorized {
    /// The request as authorization saw it.
    pub attributes: Arc<Attributes>,
    /// The decision.
    pub decision: Decision,
}

tokio::task_local! {
    /// The user of the request being served, for the admission steps that
    /// check what its writer may grant (the escalation check). Unset for
    /// the server's own writes (the bootstrap roles), which are trusted.
    pub static REQUEST_USER: UserInfo;
}

/// The user of the request being served, if any.
pub fn request_user() -> Option<UserInfo> {
    REQUEST_USER.try_with(Clone::clone).ok()
}

/// Kubernetes' words for a denied request: `User "alice" cannot list
/// resource "tasks" in API group "loom.dev" in the namespace "a"`.
pub fn forbidden_message(attributes: &Attributes) -> String {
    let user = &attributes.user.name;
    let verb = &attributes.verb;
    if !attributes.resource_request {
        return format!("User {user:?} cannot {verb} path {:?}", attributes.path);
    }
    let mut resource = attributes.resource.clone();
    if !attributes.subresource.is_empty() {
        resource = format!("{resource}/{}", attributes.subresource);
    }
    let group = &attributes.api_group;
    if attributes.namespace.is_empty() {
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} at the cluster scope"
        )
    } else {
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} in the namespace {:?}",
            attributes.namespace
        )
    }
}

/// The 403 of a denied request (Kubernetes' `responsewriters.Forbidden`).
pub fn forbidden(attributes: &Attributes, reason: &str) -> ApiError {
    let mut message = forbidden_message(attributes);
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    let resource = if attributes.resource_request {
        GroupResource::new(attributes.api_group.clone(), attributes.resource.clone())
    } else {
        GroupResource::default()
    };
    ApiError::from(api_types::Status::forbidden(
        &resource,
        &attributes.name,
        &message,
    ))
}

/// The layer: authorizes every request before the router sees it.
pub async fn middleware(
    State(authorizer): State<Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    let user = request
        .extensions()
        .get::<User>()
        .cloned()
        .unwrap_or_else(User::anonymous);
    let attributes = Arc::new(request_attributes(
        &user,
        request.method().as_str(),
        request.uri().path(),
        request.uri().query().unwrap_or(""),
    ));
    let decision = authorizer.authorize(&attributes);
    let authorized = Authorized {
        attributes: attributes.clone(),
        decision: decision.clone(),
    };
    let mut response = match &decision {
        Decision::Denied { reason } => {
            debug!(user = %user.name, verb = %attributes.verb, path = %attributes.path, "forbidden");
            forbidden(&attributes, reason).into_response()
        }
        Decision::Allowed { .. } => {
            match super::review::intercept(&authorizer, &attributes, request).await {
                Ok(answer) => answer,
                Err(request) => {
                    REQUEST_USER
                        .scope(attributes.user.clone(), next.run(request))
                        .await
                }
            }
        }
    };
    response.extensions_mut().insert(authorized);
    response
}
