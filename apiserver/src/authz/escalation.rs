//! RBAC's escalation prevention, an admission step as Kubernetes' RBAC
//! storage does it: a Role or ClusterRole may only be written by someone who
//! holds every permission it grants (or may `escalate` it), and a binding
//! only by someone who holds every permission of the role it grants (or may
//! `bind` it). So a user who may edit roles still cannot give itself, or
//! anyone, more than it has.

use std::sync::Arc;

use api_types::{
    ClusterRole, ClusterRoleBinding, GroupResource, RBAC_GROUP, Resource, Role, RoleBinding,
    RoleKind, RoleRef,
};
use async_trait::async_trait;

use super::authorizer::{Authorization, Authorizer, request_user};
use super::rbac::{Attributes, PolicyRule, RuleSource, UserInfo, uncovered};
use crate::admission::{AdmissionStep, Operation, Phase, Review};
use crate::error::{ApiError, ApiResult};

/// The escalation check.
#[derive(Debug)]
pub struct Escalation {
    authorizer: Arc<Authorizer>,
}

impl Escalation {
    /// The check, against the rules `authorizer` holds.
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Escalation { authorizer }
    }

    fn may(
        &self,
        user: &UserInfo,
        verb: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        self.authorizer
            .authorize(&Attributes {
                user: user.clone(),
                verb: verb.to_owned(),
                resource_request: true,
                api_group: RBAC_GROUP.to_owned(),
                resource: resource.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                ..Attributes::default()
            })
            .is_allowed()
    }

    fn check_grant(
        &self,
        user: &UserInfo,
        namespace: &str,
        wanted: &[PolicyRule],
        refuse: impl Fn(String) -> ApiError,
    ) -> ApiResult<()> {
        let held = self.authorizer.rules_for(user, namespace);
        let missing = uncovered(&held, wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = missing.iter().map(describe).collect();
        Err(refuse(format!(
            "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            listed.join("\n")
        )))
    }
}

/// A rule as Kubernetes' `PolicyRule.CompactString` writes it.
fn describe(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    let list = |name: &str, values: &[String]| {
        format!(
            "{name}:[{}]",
            values
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if !rule.api_groups.is_empty() {
        parts.push(list("APIGroups", &rule.api_groups));
    }
    if !rule.resources.is_empty() {
        parts.push(list("Resources", &rule.resources));
    }
    if !rule.resource_names.is_empty() {
        parts.push(list("ResourceNames", &rule.resource_names));
    }
    if !rule.non_resource_urls.is_empty() {
        parts.push(list("NonResourceURLs", &rule.non_resource_urls));
    }
    parts.push(list("Verbs", &rule.verbs));
    format!("{{{}}}", parts.join(", "))
}

#[async_trait]
impl AdmissionStep for Escalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    fn phase(&self) -> Phase {
        Phase::Validating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        if self.authorizer.mode() != Authorization::Rbac || review.operation == Operation::Delete {
            return Ok(());
        }
        let resource = review.resource;
        let is_role = resource.is::<Role>() || resource.is::<ClusterRole>();
        let is_binding = resource.is::<RoleBinding>() || resource.is::<ClusterRoleBinding>();
        if !is_role && !is_binding {
            return Ok(());
        }
        // The server's own writes (the bootstrap roles) have no request user.
        let Some(user) = request_user() else {
            return Ok(());
        };
        let namespace = review.namespace;
        let group_resource = GroupResource::new(RBAC_GROUP, resource.info.plural.clone());
        let name = review.name.to_owned();
        let refuse = |why: String| {
            ApiError::from(api_types::Status::forbidden(&group_resource, &name, &why))
        };
        if is_role {
            if self.may(
                &user,
                "escalate",
                &resource.info.plural,
                namespace,
                review.name,
            ) {
                return Ok(());
            }
            let rules: Vec<PolicyRule> = review
                .object
                .get("rules")
                .cloned()
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            return self.check_grant(&user, namespace, &rules, refuse);
        }
        let Some(role_ref) = review
            .object
            .get("roleRef")
            .cloned()
            .and_then(|r| serde_json::from_value::<RoleRef>(r).ok())
        else {
            return Ok(());
        };
        let role_plural = match role_ref.kind {
            RoleKind::Role => Role::PLURAL,
            RoleKind::ClusterRole => ClusterRole::PLURAL,
        };
        if self.may(&user, "bind", role_plural, namespace, &role_ref.name) {
            return Ok(());
        }
        let index = self.authorizer.index();
        let rules = match role_ref.kind {
            RoleKind::Role => index.role(namespace, &role_ref.name),
            RoleKind::ClusterRole => index.cluster_role(&role_ref.name),
        };
        let Some(rules) = rules else {
            return Err(refuse(format!(
                "user {:?} may not bind {} {:?}: it does not exist, and binding it needs the bind verb on it",
                user.name,
                role_ref.kind.as_str(),
                role_ref.name
            )));
        };
        self.check_grant(&user, namespace, rules, refuse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_described_as_kubernetes_does() {
        let rule = PolicyRule::resources(&["get"], &["loom.dev"], &["nodes"]).named(&["a"]);
        assert_eq!(
            describe(&rule),
            r#"{APIGroups:["loom.dev"], Resources:["nodes"], ResourceNames:["a"], Verbs:["get"]}"#
        );
        assert_eq!(
            describe(&PolicyRule::urls(&["*"], &["*"])),
            r#"{NonResourceURLs:["*"], Verbs:["*"]}"#
        );
    }
}
