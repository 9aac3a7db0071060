//! RBAC's rules and how a request is matched against them, as Kubernetes'
//! `rbac.authorization.k8s.io/v1` evaluates them: a request is allowed when a
//! rule of a role bound to its user (or one of the user's groups) allows its
//! verb on its API group, resource (with subresource) and name, or on its
//! non-resource URL. Nothing denies: no rule, no access.
//!
//! Also the escalation check: a role may only be written by someone who holds
//! every permission it grants (Kubernetes' `ConfirmNoEscalation`).

pub use api_types::rbac::{PolicyRule, RoleKind, RoleRef, Subject, SubjectKind};

/// Who is asking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The user's name (`alice`, `system:node:a`,
    /// `system:serviceaccount:ns:name`).
    pub name: String,
    /// Its groups (`system:authenticated`, `system:nodes`, ...).
    pub groups: Vec<String>,
}

/// What a request does, as authorization sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Who.
    pub user: UserInfo,
    /// The verb (`get`, `list`, `watch`, `create`, ...; for a non-resource
    /// request the HTTP method in lowercase).
    pub verb: String,
    /// A request to the resource API (else to a non-resource path).
    pub resource_request: bool,
    /// The API group (`""` core, `loom.dev`, ...).
    pub api_group: String,
    /// The resource's plural.
    pub resource: String,
    /// The subresource (`status`, `log`, `binding`) or `""`.
    pub subresource: String,
    /// The namespace, `""` for cluster-scoped requests.
    pub namespace: String,
    /// The object's name, `""` for collections.
    pub name: String,
    /// The path of a non-resource request.
    pub path: String,
    /// A list's or watch's field selector, as sent (the Node authorizer lets
    /// a node list only the tasks bound to it).
    pub field_selector: String,
}

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|item| item == "*" || item == wanted)
}

/// Whether a rule allows a request.
pub trait RuleMatch {
    /// Whether this rule allows the request.
    fn allows(&self, request: &Attributes) -> bool;
}

impl RuleMatch for PolicyRule {
    fn allows(&self, request: &Attributes) -> bool {
        if !has(&self.verbs, &request.verb) {
            return false;
        }
        if !request.resource_request {
            return self.non_resource_urls.iter().any(|url| {
                url == "*"
                    || *url == request.path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| request.path.starts_with(prefix))
            });
        }
        has(&self.api_groups, &request.api_group)
            && covers_resource(self, &request.resource, &request.subresource)
            && (self.resource_names.is_empty() || self.resource_names.contains(&request.name))
    }
}

/// Whether `rule` names `resource` (with `subresource`, when not empty).
fn covers_resource(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        if r == "*" {
            return true;
        }
        if subresource.is_empty() {
            return r == resource;
        }
        match r.split_once('/') {
            Some((res, sub)) => {
                (res == resource || res == "*") && (sub == subresource || sub == "*") && {
                    // `*/*` is not a wildcard Kubernetes knows: only one side may be.
                    res != "*" || sub != "*"
                }
            }
            None => false,
        }
    })
}

/// Whether a subject names a user.
pub trait SubjectMatch {
    /// Whether `user` is this subject. A service account is the user
    /// `system:serviceaccount:NAMESPACE:NAME`; a service-account subject
    /// without a namespace takes the binding's.
    fn matches(&self, user: &UserInfo, binding_namespace: &str) -> bool;
}

impl SubjectMatch for Subject {
    fn matches(&self, user: &UserInfo, binding_namespace: &str) -> bool {
        match self.kind {
            SubjectKind::User => self.name == user.name,
            SubjectKind::Group => user.groups.contains(&self.name),
            SubjectKind::ServiceAccount => {
                let namespace = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                user.name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.strip_prefix(namespace))
                    .and_then(|rest| rest.strip_prefix(':'))
                    == Some(self.name.as_str())
            }
        }
    }
}

/// A binding as the authorizer holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// Its name.
    pub name: String,
    /// Who it grants its role to.
    pub subjects: Vec<Subject>,
    /// The role.
    pub role_ref: RoleRef,
}

/// Where the rules of a request come from: the roles and bindings the
/// authorizer reads (from its watch caches).
pub trait RuleSource {
    /// Every cluster role binding.
    fn cluster_role_bindings(&self) -> &[Binding];
    /// The role bindings of `namespace`.
    fn role_bindings(&self, namespace: &str) -> &[Binding];
    /// The rules of a cluster role, if it exists.
    fn cluster_role(&self, name: &str) -> Option<&[PolicyRule]>;
    /// The rules of a role of `namespace`, if it exists.
    fn role(&self, namespace: &str, name: &str) -> Option<&[PolicyRule]>;
}

/// Why a request was allowed, or that it was not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, and why (the binding and role, as Kubernetes' audit
    /// annotation `authorization.k8s.io/reason` words it).
    Allowed {
        /// How the user got the right.
        reason: String,
    },
    /// Nothing allows it.
    Denied {
        /// Why, when more can be said than that no rule allows it (empty
        /// otherwise, as RBAC's own denials are).
        reason: String,
    },
}

impl Decision {
    /// A denial with nothing more to say.
    pub fn denied() -> Self {
        Decision::Denied {
            reason: String::new(),
        }
    }

    /// Whether the request may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

fn subject_of<'a>(
    subjects: &'a [Subject],
    user: &UserInfo,
    namespace: &str,
) -> Option<&'a Subject> {
    subjects.iter().find(|s| s.matches(user, namespace))
}

fn kind_name(subject: &Subject) -> &'static str {
    match subject.kind {
        SubjectKind::User => "User",
        SubjectKind::Group => "Group",
        SubjectKind::ServiceAccount => "ServiceAccount",
    }
}

/// Decides a request: cluster role bindings first, then the role bindings of
/// the request's namespace (a role binding may name a cluster role: its rules
/// then apply in that namespace only).
pub fn authorize(source: &dyn RuleSource, request: &Attributes) -> Decision {
    for binding in source.cluster_role_bindings() {
        if binding.role_ref.kind != RoleKind::ClusterRole {
            continue;
        }
        let Some(subject) = subject_of(&binding.subjects, &request.user, "") else {
            continue;
        };
        let rules = source
            .cluster_role(&binding.role_ref.name)
            .unwrap_or_default();
        if rules.iter().any(|rule| rule.allows(request)) {
            return Decision::Allowed {
                reason: format!(
                    "RBAC: allowed by ClusterRoleBinding {:?} of ClusterRole {:?} to {} {:?}",
                    binding.name,
                    binding.role_ref.name,
                    kind_name(subject),
                    subject.name
                ),
            };
        }
    }
    if request.namespace.is_empty() {
        return Decision::denied();
    }
    for binding in source.role_bindings(&request.namespace) {
        let Some(subject) = subject_of(&binding.subjects, &request.user, &request.namespace) else {
            continue;
        };
        let role = &binding.role_ref;
        let rules = match role.kind {
            RoleKind::ClusterRole => source.cluster_role(&role.name),
            RoleKind::Role => source.role(&request.namespace, &role.name),
        }
        .unwrap_or_default();
        if rules.iter().any(|rule| rule.allows(request)) {
            return Decision::Allowed {
                reason: format!(
                    "RBAC: allowed by RoleBinding \"{}/{}\" of {} {:?} to {} {:?}",
                    binding.name,
                    request.namespace,
                    role.kind.as_str(),
                    role.name,
                    kind_name(subject),
                    subject.name
                ),
            };
        }
    }
    Decision::denied()
}

/// The rules that apply to `user` in `namespace` (`""`: cluster-wide only),
/// for the escalation check and `SelfSubjectRulesReview`.
pub fn rules_for(source: &dyn RuleSource, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    for binding in source.cluster_role_bindings() {
        if binding.role_ref.kind == RoleKind::ClusterRole
            && subject_of(&binding.subjects, user, "").is_some()
        {
            rules.extend_from_slice(
                source
                    .cluster_role(&binding.role_ref.name)
                    .unwrap_or_default(),
            );
        }
    }
    if !namespace.is_empty() {
        for binding in source.role_bindings(namespace) {
            if subject_of(&binding.subjects, user, namespace).is_none() {
                continue;
            }
            let role = &binding.role_ref;
            let granted = match role.kind {
                RoleKind::ClusterRole => source.cluster_role(&role.name),
                RoleKind::Role => source.role(namespace, &role.name),
            };
            rules.extend_from_slice(granted.unwrap_or_default());
        }
    }
    rules
}

/// The permissions of `wanted` that `held` does not cover: empty when whoever
/// holds `held` may grant `wanted` (Kubernetes' `Covers`). Each wanted rule is
/// broken into single (verb, group, resource, name) or (verb, URL) grants, and
/// each must be allowed by a held rule with the same or wider reach; a `*` in
/// a wanted rule is covered only by a `*` held.
pub fn uncovered(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for rule in wanted {
        for single in split(rule) {
            if !held.iter().any(|h| covers(h, &single)) {
                missing.push(single);
            }
        }
    }
    missing
}

/// One rule per verb × group × resource × name (or verb × URL).
fn split(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    });
                }
                for name in &rule.resource_names {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: one(name),
                        ..PolicyRule::default()
                    });
                }
            }
        }
    }
    out
}

/// Whether `held` grants everything the single-valued rule `wanted` does.
fn covers(held: &PolicyRule, wanted: &PolicyRule) -> bool {
    let verb_ok = wanted.verbs.iter().all(|v| has(&held.verbs, v));
    if !verb_ok {
        return false;
    }
    if let Some(url) = wanted.non_resource_urls.first() {
        return held.non_resource_urls.iter().any(|h| {
            h == "*" || h == url || h.strip_suffix('*').is_some_and(|p| url.starts_with(p))
        });
    }
    let (Some(group), Some(resource)) = (wanted.api_groups.first(), wanted.resources.first())
    else {
        return false;
    };
    let group_ok = has(&held.api_groups, group);
    let resource_ok = held.resources.iter().any(|h| {
        h == "*"
            || h == resource
            || match resource.split_once('/') {
                Some((res, sub)) => {
                    h.strip_prefix("*/") == Some(sub) || h.strip_suffix("/*") == Some(res)
                }
                None => false,
            }
    });
    let name_ok = held.resource_names.is_empty()
        || wanted
            .resource_names
            .first()
            .is_some_and(|n| held.resource_names.contains(n));
    group_ok && resource_ok && name_ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PolicyRule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            ..PolicyRule::default()
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn request(user: UserInfo, verb: &str, resource: &str, namespace: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            user,
            verb: verb.into(),
            resource_request: true,
            api_group: "loom.dev".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            ..Attributes::default()
        }
    }

    fn binding(subject_kind: SubjectKind, name: &str, role_kind: RoleKind, role: &str) -> Binding {
        Binding {
            name: format!("{name}-{role}"),
            subjects: vec![Subject {
                kind: subject_kind,
                name: name.into(),
                ..Subject::default()
            }],
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: role_kind,
                name: role.into(),
            },
        }
    }

    #[derive(Default)]
    struct Source {
        cluster_roles: HashMap<String, Vec<PolicyRule>>,
        roles: HashMap<(String, String), Vec<PolicyRule>>,
        cluster_bindings: Vec<Binding>,
        bindings: HashMap<String, Vec<Binding>>,
    }

    impl RuleSource for Source {
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
            self.roles
                .get(&(namespace.into(), name.into()))
                .map(Vec::as_slice)
        }
    }

    fn cluster() -> Source {
        let mut s = Source::default();
        s.cluster_roles.insert(
            "cluster-admin".into(),
            vec![
                rule(&["*"], &["*"], &["*"]),
                PolicyRule {
                    verbs: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..PolicyRule::default()
                },
            ],
        );
        s.cluster_roles.insert(
            "view".into(),
            vec![rule(
                &["get", "list", "watch"],
                &["loom.dev"],
                &["tasks", "jobs", "tasks/log"],
            )],
        );
        s.cluster_roles.insert(
            "edit".into(),
            vec![rule(&["*"], &["loom.dev"], &["tasks", "jobs"])],
        );
        s.cluster_roles.insert(
            "metrics".into(),
            vec![PolicyRule {
                verbs: vec!["get".into()],
                non_resource_urls: vec!["/metrics".into(), "/debug/*".into()],
                ..PolicyRule::default()
            }],
        );
        s.cluster_bindings.push(binding(
            SubjectKind::Group,
            "system:masters",
            RoleKind::ClusterRole,
            "cluster-admin",
        ));
        s.cluster_bindings.push(binding(
            SubjectKind::User,
            "prom",
            RoleKind::ClusterRole,
            "metrics",
        ));
        s.bindings.insert(
            "team-a".into(),
            vec![
                binding(SubjectKind::User, "alice", RoleKind::ClusterRole, "edit"),
                binding(SubjectKind::User, "bob", RoleKind::Role, "task-status"),
                binding(
                    SubjectKind::ServiceAccount,
                    "ci",
                    RoleKind::ClusterRole,
                    "view",
                ),
            ],
        );
        s.roles.insert(
            ("team-a".into(), "task-status".into()),
            vec![PolicyRule {
                resource_names: vec!["t1".into()],
                ..rule(&["update", "patch"], &["loom.dev"], &["tasks/status"])
            }],
        );
        s
    }

    #[test]
    fn the_decision_table() {
        let s = cluster();
        let admin = user("root", &["system:masters", "system:authenticated"]);
        let alice = user("alice", &["system:authenticated"]);
        let bob = user("bob", &[]);
        let ci = user(
            "system:serviceaccount:team-a:ci",
            &["system:serviceaccounts"],
        );
        let ci_elsewhere = user("system:serviceaccount:team-b:ci", &[]);
        let cases: &[(&UserInfo, &str, &str, &str, &str, bool)] = &[
            (&admin, "delete", "nodes", "", "", true),
            (&admin, "create", "tasks/binding", "x", "", true),
            (&alice, "create", "tasks", "team-a", "", true),
            (&alice, "delete", "jobs", "team-a", "j", true),
            (&alice, "create", "tasks", "team-b", "", false),
            (&alice, "update", "tasks/status", "team-a", "t1", false),
            (&alice, "get", "nodes", "", "", false),
            (&bob, "patch", "tasks/status", "team-a", "t1", true),
            (&bob, "patch", "tasks/status", "team-a", "t2", false),
            (&bob, "patch", "tasks", "team-a", "t1", false),
            (&ci, "get", "tasks/log", "team-a", "t1", true),
            (&ci, "watch", "jobs", "team-a", "", true),
            (&ci, "create", "tasks", "team-a", "", false),
            (&ci_elsewhere, "get", "tasks", "team-a", "", false),
        ];
        for (who, verb, resource, namespace, name, allowed) in cases {
            let mut r = request((*who).clone(), verb, resource, namespace);
            r.name = name.to_string();
            let decision = authorize(&s, &r);
            assert_eq!(
                decision.is_allowed(),
                *allowed,
                "{} {verb} {resource} in {namespace:?} name {name:?}: {decision:?}",
                who.name
            );
        }
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let s = cluster();
        let path = |who: &UserInfo, verb: &str, path: &str| Attributes {
            user: who.clone(),
            verb: verb.into(),
            path: path.into(),
            ..Attributes::default()
        };
        let prom = user("prom", &[]);
        assert!(authorize(&s, &path(&prom, "get", "/metrics")).is_allowed());
        assert!(authorize(&s, &path(&prom, "get", "/debug/pprof")).is_allowed());
        assert_eq!(
            authorize(&s, &path(&prom, "get", "/metricsx")),
            Decision::denied()
        );
        assert_eq!(
            authorize(&s, &path(&prom, "post", "/metrics")),
            Decision::denied()
        );
        // A resource rule never matches a path.
        let alice = user("alice", &[]);
        assert_eq!(
            authorize(
                &s,
                &path(&alice, "get", "/apis/loom.dev/v1/namespaces/team-a/tasks")
            ),
            Decision::denied()
        );
    }

    #[test]
    fn subresource_wildcards() {
        let any_status = rule(&["get"], &["loom.dev"], &["*/status"]);
        let task_subs = rule(&["get"], &["loom.dev"], &["tasks/*"]);
        let r = |res: &str| request(user("u", &[]), "get", res, "ns");
        assert!(any_status.allows(&r("tasks/status")) && any_status.allows(&r("jobs/status")));
        assert!(!any_status.allows(&r("tasks")) && !any_status.allows(&r("tasks/log")));
        assert!(task_subs.allows(&r("tasks/log")) && task_subs.allows(&r("tasks/status")));
        assert!(!task_subs.allows(&r("tasks")) && !task_subs.allows(&r("jobs/status")));
        // The core group is "", not "any".
        let core = rule(&["get"], &[""], &["namespaces"]);
        let mut ns = r("namespaces");
        assert!(!core.allows(&ns));
        ns.api_group = String::new();
        assert!(core.allows(&ns));
    }

    #[test]
    fn an_editor_cannot_grant_itself_more() {
        let s = cluster();
        let alice = user("alice", &[]);
        let held = rules_for(&s, &alice, "team-a");
        // Within its rights: fine.
        assert!(
            uncovered(
                &held,
                &[rule(&["get", "create"], &["loom.dev"], &["tasks"])]
            )
            .is_empty()
        );
        // cluster-admin's rules, nodes, a wildcard it does not hold: refused, each named.
        let missing = uncovered(&held, &[rule(&["*"], &["*"], &["*"])]);
        assert_eq!(missing, [rule(&["*"], &["*"], &["*"])]);
        let missing = uncovered(&held, &[rule(&["get"], &["loom.dev"], &["tasks", "nodes"])]);
        assert_eq!(missing, [rule(&["get"], &["loom.dev"], &["nodes"])]);
        // Elsewhere it holds nothing.
        assert!(
            !uncovered(
                &rules_for(&s, &alice, "team-b"),
                &[rule(&["get"], &["loom.dev"], &["tasks"])]
            )
            .is_empty()
        );
        // An admin may grant anything.
        let admin = rules_for(&s, &user("root", &["system:masters"]), "");
        assert!(uncovered(&admin, &[rule(&["*"], &["*"], &["*"])]).is_empty());
    }

    #[test]
    fn named_grants_are_covered_only_by_unnamed_or_the_same_name() {
        let named = |names: &[&str]| PolicyRule {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..rule(&["get"], &["loom.dev"], &["tasks"])
        };
        assert!(uncovered(&[named(&["a"])], &[named(&["a"])]).is_empty());
        assert_eq!(
            uncovered(&[named(&["a"])], &[named(&["a", "b"])]),
            [named(&["b"])]
        );
        assert_eq!(
            uncovered(
                &[named(&["a"])],
                &[rule(&["get"], &["loom.dev"], &["tasks"])]
            )
            .len(),
            1
        );
        assert!(
            uncovered(
                &[rule(&["get"], &["loom.dev"], &["tasks"])],
                &[named(&["z"])]
            )
            .is_empty()
        );
    }

    #[test]
    fn rules_read_the_kubernetes_wire_form() {
        let rule: PolicyRule = serde_json::from_value(serde_json::json!({
            "verbs": ["get"], "nonResourceURLs": ["/healthz"]
        }))
        .unwrap();
        assert_eq!(rule.non_resource_urls, ["/healthz"]);
        let rule: PolicyRule = serde_json::from_value(serde_json::json!({
            "verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"]
        }))
        .unwrap();
        assert_eq!((rule.api_groups.len(), rule.resource_names.len()), (1, 1));
        let role: RoleRef = serde_json::from_value(serde_json::json!({
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"
        }))
        .unwrap();
        assert_eq!(role.kind, RoleKind::ClusterRole);
        let subject: Subject = serde_json::from_value(serde_json::json!({
            "kind": "ServiceAccount", "name": "ci", "namespace": "team-a"
        }))
        .unwrap();
        assert_eq!(subject.kind, SubjectKind::ServiceAccount);
        assert!(serde_json::from_value::<Subject>(serde_json::json!({"kind": "Robot"})).is_err());
    }
}
