//! The audit policy: an `audit.k8s.io/v1` Policy whose rules, in order, set
//! the level at which each request is logged (the first rule that matches
//! wins; none matching is `None`), read and checked the way Kubernetes'
//! `--audit-policy-file` is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::rbac::Attributes;

/// The `kind` of an audit policy file (a file format, not an API object).
const POLICY_FILE_KIND: &str = "Policy";

/// How much of a request is logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Nothing.
    #[default]
    None,
    /// Who did what to which object, and the answer's code: no bodies.
    Metadata,
    /// Metadata and the request's body.
    Request,
    /// Metadata and both bodies.
    RequestResponse,
}

/// A stage of a request at which Kubernetes may log it. Loom logs every
/// request once, at `ResponseComplete`; the others are accepted in
/// `omitStages` so Kubernetes policies load unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The request was received.
    RequestReceived,
    /// The response's headers were sent (long-running requests).
    ResponseStarted,
    /// The response was sent.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

/// Resources of an API group (`group: ""` is the core group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupResources {
    /// The API group.
    #[serde(default)]
    pub group: String,
    /// Resources (`tasks`, `tasks/status`, `tasks/*`, `*/status`, `*`); empty: all of the group's.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Object names; empty: every name.
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// One rule: which requests, and at what level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// The level of the requests it matches.
    pub level: Level,
    /// User names; empty: every user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups, any of which the user must be in; empty: every user.
    #[serde(default)]
    pub user_groups: Vec<String>,
    /// Verbs; empty: every verb.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resources; with `namespaces`, only resource requests match.
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    /// Namespaces (`""`: cluster-scoped objects).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Non-resource paths (`/healthz`, a trailing `*` for a prefix).
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    /// Stages not logged for the requests it matches.
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    /// Accepted for compatibility: Loom's audit objects are logged as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_managed_fields: Option<bool>,
}

/// An audit policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The rules, in order.
    pub rules: Vec<PolicyRule>,
    /// Stages not logged for any request.
    pub omit_stages: Vec<Stage>,
}

/// The policy `loom up` uses: every write and every snapshot at Metadata,
/// reads and the health, discovery and metrics endpoints not at all.
pub const DEFAULT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Snapshots: a copy of the whole store, Secrets included.
  - level: Metadata
    nonResourceURLs: ["/snapshot"]
  # Reads: neither the many watches and lists of the components, nor probes.
  - level: None
    verbs: ["get", "list", "watch", "head"]
  # Every write: who changed what, and the answer.
  - level: Metadata
"#;

/// A policy file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit policy {}: {}{message}", path.display(), rule.map(|i| format!("rules[{i}]: ")).unwrap_or_default())]
pub struct PolicyError {
    /// The file.
    pub path: PathBuf,
    /// The index of the rule at fault, if one is.
    pub rule: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The top level of a policy document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<Value>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    #[allow(dead_code)]
    omit_managed_fields: Option<bool>,
}

impl Policy {
    /// Reads and checks the policy file at `path`.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.to_owned(),
            rule: None,
            message: format!("cannot read it: {e}"),
        })?;
        Policy::parse(&text, path)
    }

    /// The default policy of `loom up` ([`DEFAULT_POLICY`]).
    pub fn default_for_up() -> Policy {
        // The constant is tested to parse; an empty policy (nothing logged)
        // would be the wrong answer, but never a panic.
        Policy::parse(DEFAULT_POLICY, Path::new("<default policy>")).unwrap_or_default()
    }

    /// Parses and checks a policy document; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let error = |rule: Option<usize>, message: String| PolicyError {
            path: path.to_owned(),
            rule,
            message,
        };
        let value = api_types::decode::yaml_str_to_value(text)
            .map_err(|e| error(None, format!("not valid YAML: {e}")))?;
        let document: Document =
            serde_json::from_value(value).map_err(|e| error(None, e.to_string()))?;
        if document.kind != POLICY_FILE_KIND {
            return Err(error(
                None,
                format!("kind is {:?}: it must be Policy", document.kind),
            ));
        }
        if document.api_version != "audit.k8s.io/v1" {
            return Err(error(
                None,
                format!(
                    "apiVersion is {:?}: it must be audit.k8s.io/v1",
                    document.api_version
                ),
            ));
        }
        let mut rules = Vec::with_capacity(document.rules.len());
        for (i, rule) in document.rules.into_iter().enumerate() {
            let rule: PolicyRule =
                serde_json::from_value(rule).map_err(|e| error(Some(i), e.to_string()))?;
            check_rule(&rule).map_err(|message| error(Some(i), message))?;
            rules.push(rule);
        }
        Ok(Policy {
            rules,
            omit_stages: document.omit_stages,
        })
    }

    /// The level of a request, and whether its `stage` is to be logged at all.
    pub fn level(&self, request: &Attributes, stage: Stage) -> Level {
        if self.omit_stages.contains(&stage) {
            return Level::None;
        }
        match self.rules.iter().find(|rule| rule.matches(request)) {
            Some(rule) if rule.omit_stages.contains(&stage) => Level::None,
            Some(rule) => rule.level,
            None => Level::None,
        }
    }

    /// The highest level any rule gives (whether bodies may ever be logged).
    pub fn max_level(&self) -> Level {
        self.rules
            .iter()
            .map(|r| r.level)
            .max()
            .unwrap_or(Level::None)
    }
}

/// What Kubernetes' policy validation refuses.
fn check_rule(rule: &PolicyRule) -> Result<(), String> {
    if !rule.non_resource_urls.is_empty()
        && (!rule.resources.is_empty() || !rule.namespaces.is_empty())
    {
        return Err(
            "a rule cannot apply to both resources (resources, namespaces) and nonResourceURLs"
                .to_owned(),
        );
    }
    for (i, url) in rule.non_resource_urls.iter().enumerate() {
        let wildcard_inside = url.trim_end_matches('*').contains('*');
        if url != "*" && (!url.starts_with('/') || wildcard_inside) {
            return Err(format!(
                "nonResourceURLs[{i}] {url:?} must be \"*\" or a path starting with \"/\", with \"*\" only at its end"
            ));
        }
    }
    for (i, group) in rule.resources.iter().enumerate() {
        for (j, resource) in group.resources.iter().enumerate() {
            let valid = match resource.split_once('/') {
                None => resource == "*" || !resource.contains('*'),
                Some((name, sub)) => {
                    !name.is_empty()
                        && !sub.is_empty()
                        && !sub.contains('/')
                        && (name == "*" || !name.contains('*'))
                        && (sub == "*" || !sub.contains('*'))
                        && !(name == "*" && sub == "*")
                }
            };
            if resource.is_empty() || !valid {
                return Err(format!(
                    "resources[{i}].resources[{j}] {resource:?} must be a resource, resource/subresource, resource/*, */subresource or *"
                ));
            }
            if !group.resource_names.is_empty() && resource.contains('*') {
                return Err(format!(
                    "resources[{i}]: resourceNames need resources named without a wildcard, not {resource:?}"
                ));
            }
        }
    }
    Ok(())
}

impl PolicyRule {
    /// Whether the rule applies to a request (Kubernetes' `ruleMatches`).
    pub fn matches(&self, request: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&request.user.name) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !request
                .user
                .groups
                .iter()
                .any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&request.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(request);
        }
        if !self.non_resource_urls.is_empty() {
            return !request.resource_request
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(&request.path, spec));
        }
        true
    }

    fn matches_resource(&self, request: &Attributes) -> bool {
        if !request.resource_request {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&request.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let (resource, sub) = (&request.resource, &request.subresource);
        let combined = if sub.is_empty() {
            resource.clone()
        } else {
            format!("{resource}/{sub}")
        };
        self.resources
            .iter()
            .filter(|g| g.group == request.api_group)
            .any(|g| {
                if g.resources.is_empty() {
                    return true;
                }
                if !g.resource_names.is_empty() && !g.resource_names.contains(&request.name) {
                    return false;
                }
                g.resources.iter().any(|spec| {
                    spec == "*"
                        || *spec == combined
                        || (!sub.is_empty() && spec.strip_prefix("*/") == Some(sub.as_str()))
                        || spec.strip_suffix("/*") == Some(resource.as_str())
                })
            })
    }
}

/// `spec` is a path, `*`, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::authz::rbac::UserInfo;

    fn request(user: &str, groups: &[&str], verb: &str, path: &str) -> Attributes {
        let parsed = crate::authz::request_attributes(
            &crate::http::User {
                name: user.to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ..Default::default()
            },
            verb,
            path,
            "",
        );
        Attributes {
            user: UserInfo {
                name: user.to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            },
            ..parsed
        }
    }

    fn policy(yaml: &str) -> Policy {
        Policy::parse(yaml, Path::new("policy.yaml")).unwrap()
    }

    const TABLE_POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-scheduler"]
    verbs: ["watch"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "serviceaccounts/token"]
  - level: RequestResponse
    userGroups: ["auditors"]
    namespaces: ["prod"]
  - level: Request
    resources:
      - group: loom.dev
        resources: ["jobs/*", "*/status"]
  - level: Request
    resources:
      - group: loom.dev
        resources: ["services"]
        resourceNames: ["web"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"#;

    #[test]
    fn the_first_matching_rule_sets_the_level() {
        let policy = policy(TABLE_POLICY);
        let jobs = "/apis/loom.dev/v1/namespaces/dev/jobs";
        let cases: &[(&str, &[&str], &str, &str, Level)] = &[
            // users and verbs together
            (
                "system:kube-scheduler",
                &[],
                "GET",
                "/apis/loom.dev/v1/tasks?watch=true",
                Level::None,
            ),
            // non-resource prefix and exact path; not other paths
            ("alice", &[], "GET", "/healthz/etcd", Level::None),
            ("alice", &[], "GET", "/version", Level::None),
            // (a non-resource request's verb is its method: "post" is no "create")
            ("alice", &[], "POST", "/versionx", Level::None),
            // the core group's resources and a subresource
            (
                "alice",
                &[],
                "GET",
                "/api/v1/namespaces/a/secrets/s",
                Level::Metadata,
            ),
            (
                "alice",
                &[],
                "POST",
                "/api/v1/namespaces/a/serviceaccounts/x/token",
                Level::Metadata,
            ),
            // userGroups and namespaces
            (
                "carol",
                &["auditors"],
                "GET",
                "/apis/loom.dev/v1/namespaces/prod/jobs/x",
                Level::RequestResponse,
            ),
            (
                "carol",
                &["auditors"],
                "GET",
                "/apis/loom.dev/v1/namespaces/dev/tasks/x",
                Level::None,
            ),
            // resource/* covers the resource and its subresources; */status any status
            ("alice", &[], "POST", jobs, Level::Request),
            (
                "alice",
                &[],
                "PUT",
                "/apis/loom.dev/v1/namespaces/dev/jobs/j/status",
                Level::Request,
            ),
            (
                "alice",
                &[],
                "PUT",
                "/apis/loom.dev/v1/namespaces/dev/tasks/t/status",
                Level::Request,
            ),
            // the group must match
            (
                "alice",
                &[],
                "GET",
                "/apis/other.dev/v1/namespaces/dev/jobs/j",
                Level::None,
            ),
            // resourceNames
            (
                "alice",
                &[],
                "PUT",
                "/apis/loom.dev/v1/namespaces/dev/services/web",
                Level::Request,
            ),
            (
                "alice",
                &[],
                "PUT",
                "/apis/loom.dev/v1/namespaces/dev/services/api",
                Level::Metadata,
            ),
            // the catch-alls
            (
                "alice",
                &[],
                "DELETE",
                "/apis/loom.dev/v1/namespaces/dev/tasks",
                Level::Metadata,
            ),
            (
                "alice",
                &[],
                "GET",
                "/apis/loom.dev/v1/namespaces/dev/tasks",
                Level::None,
            ),
        ];
        for (user, groups, method, uri, want) in cases {
            let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
            let mut attributes = request(user, groups, method, path);
            if query.contains("watch=true") {
                attributes.verb = "watch".to_owned();
            }
            assert_eq!(
                policy.level(&attributes, Stage::ResponseComplete),
                *want,
                "{user} {method} {uri}"
            );
        }
    }

    #[test]
    fn omitted_stages_are_not_logged() {
        let policy = policy(TABLE_POLICY);
        let write = request("alice", &[], "POST", "/apis/loom.dev/v1/namespaces/a/tasks");
        assert_eq!(
            policy.level(&write, Stage::ResponseComplete),
            Level::Metadata
        );
        assert_eq!(policy.level(&write, Stage::RequestReceived), Level::None);
        let per_rule = self::policy(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  omitStages: [ResponseComplete]\n",
        );
        assert_eq!(per_rule.level(&write, Stage::ResponseComplete), Level::None);
        assert_eq!(per_rule.max_level(), Level::Metadata);
    }

    #[test]
    fn no_matching_rule_is_none() {
        let policy = policy("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: []\n");
        let write = request("alice", &[], "POST", "/apis/loom.dev/v1/namespaces/a/tasks");
        assert_eq!(policy.level(&write, Stage::ResponseComplete), Level::None);
    }

    #[test]
    fn the_default_policy_logs_writes_at_metadata_and_no_reads() {
        let policy = Policy::default_for_up();
        assert_eq!(policy.rules.len(), 3);
        let level = |method: &str, path: &str| {
            policy.level(
                &request("alice", &[], method, path),
                Stage::ResponseComplete,
            )
        };
        let tasks = "/apis/loom.dev/v1/namespaces/a/tasks";
        assert_eq!(level("POST", tasks), Level::Metadata);
        assert_eq!(level("DELETE", &format!("{tasks}/t")), Level::Metadata);
        assert_eq!(
            level("PATCH", &format!("{tasks}/t/status")),
            Level::Metadata
        );
        assert_eq!(level("GET", tasks), Level::None);
        assert_eq!(level("GET", &format!("{tasks}/t")), Level::None);
        assert_eq!(level("GET", "/healthz"), Level::None);
        assert_eq!(level("GET", "/metrics"), Level::None);
        assert_eq!(level("GET", "/snapshot"), Level::Metadata);
        assert_eq!(policy.max_level(), Level::Metadata);
    }

    #[test]
    fn bad_policies_are_refused_naming_the_file_and_rule() {
        let head = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n";
        let cases = [
            (
                format!("{head}- level: Verbose\n"),
                "rules[1]: unknown variant `Verbose`",
            ),
            (
                format!("{head}- level: Metadata\n  user: [alice]\n"),
                "rules[1]: unknown field `user`",
            ),
            (
                format!(
                    "{head}- level: Metadata\n  nonResourceURLs: [/healthz]\n  namespaces: [a]\n"
                ),
                "rules[1]: a rule cannot apply to both",
            ),
            (
                format!("{head}- level: Metadata\n  nonResourceURLs: [healthz]\n"),
                "rules[1]: nonResourceURLs[0] \"healthz\"",
            ),
            (
                format!(
                    "{head}- level: Metadata\n  resources: [{{group: '', resources: ['p*ds']}}]\n"
                ),
                "rules[1]: resources[0].resources[0] \"p*ds\"",
            ),
            (
                format!(
                    "{head}- level: Metadata\n  resources: [{{resources: ['*'], resourceNames: [x]}}]\n"
                ),
                "rules[1]: resources[0]: resourceNames",
            ),
            (
                format!("{head}- level: Metadata\n  omitStages: [Later]\n"),
                "rules[1]: unknown variant `Later`",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Rules\n".to_owned(),
                "kind is \"Rules\"",
            ),
            (
                "apiVersion: audit.k8s.io/v2\nkind: Policy\n".to_owned(),
                "apiVersion is \"audit.k8s.io/v2\"",
            ),
            ("rules: [\n".to_owned(), "not valid YAML"),
        ];
        for (text, want) in cases {
            let error = Policy::parse(&text, Path::new("/etc/loom/audit.yaml")).unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with("audit policy /etc/loom/audit.yaml: ")
                    && message.contains(want),
                "{message} (wanted {want:?})"
            );
        }
        let missing = Policy::from_file(Path::new("/nonexistent/audit.yaml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("audit policy /nonexistent/audit.yaml: cannot read it"),
            "{missing}"
        );
    }
}
