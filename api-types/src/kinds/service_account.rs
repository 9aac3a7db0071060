//! The ServiceAccount kind (core `v1`, as Kubernetes'): an identity for
//! processes that run in the cluster, and the TokenRequest that mints a token
//! for it (`serviceaccounts/NAME/token`, `authentication.k8s.io/v1`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, ObjectReference};
use crate::resource::{Resource, impl_resource};
use crate::validation::{FieldError, Validate, validate_object_meta_for};

/// The group of TokenRequest, TokenReview and SelfSubjectReview.
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
/// `authentication.k8s.io/v1`.
pub const AUTHENTICATION_API_VERSION: &str = "authentication.k8s.io/v1";
/// The user-name prefix of every service account: `system:serviceaccount:NS:NAME`.
pub const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";
/// The group of every service account.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// The account every namespace has, and a task runs as unless it names another.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A ServiceAccount. Namespaced; served under core `v1` (`/api/v1`) and
/// `loom.dev/v1`, stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct ServiceAccount {
    /// `v1`.
    pub api_version: String,
    /// `ServiceAccount`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// Secrets the account may use (kept for Kubernetes compatibility; Loom
    /// mints tokens on request and stores none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<ObjectReference>>,
    /// Whether tasks running as this account get its token mounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

impl_resource!(
    ServiceAccount,
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    short_names: ["sa"],
    namespaced: true,
    has_status: false,
);

impl Default for ServiceAccount {
    fn default() -> Self {
        ServiceAccount {
            api_version: ServiceAccount::api_version(),
            kind: ServiceAccount::KIND.to_owned(),
            metadata: ObjectMeta::default(),
            secrets: None,
            automount_service_account_token: None,
        }
    }
}

impl ServiceAccount {
    /// The account `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        let mut account = ServiceAccount::default();
        account.metadata.name = name.to_owned();
        account.metadata.namespace = namespace.to_owned();
        account
    }

    /// The user name the account authenticates as.
    pub fn user_name(namespace: &str, name: &str) -> String {
        format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}")
    }

    /// The namespace and name of a service account's user name.
    pub fn parse_user_name(user: &str) -> Option<(&str, &str)> {
        let rest = user.strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }
}

impl Validate for ServiceAccount {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let expected = ServiceAccount::api_version();
        if self.api_version != expected {
            errs.push(FieldError::not_supported(
                "apiVersion",
                &self.api_version,
                &[expected.as_str()],
            ));
        }
        if self.kind != ServiceAccount::KIND {
            errs.push(FieldError::not_supported(
                "kind",
                &self.kind,
                &[ServiceAccount::KIND],
            ));
        }
        errs.extend(validate_object_meta_for::<ServiceAccount>(&self.metadata));
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(crate::validation::validate_object_meta_update(
            &self.metadata,
            &old.metadata,
        ));
        errs
    }
}

/// A request for a service account's token (`authentication.k8s.io/v1`
/// TokenRequest), posted to `serviceaccounts/NAME/token`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenRequest {
    /// `authentication.k8s.io/v1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// `TokenRequest`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The account's name and namespace, as answered.
    pub metadata: ObjectMeta,
    /// What the token is for.
    pub spec: TokenRequestSpec,
    /// The token, in the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenRequestStatus>,
}

/// What a requested token is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenRequestSpec {
    /// Who may accept the token (its `aud`); empty: the API server's own.
    pub audiences: Vec<String>,
    /// How long the token lasts (the server bounds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
    /// An object the token is bound to (recorded in its claims).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_object_ref: Option<BoundObjectReference>,
}

/// The object a token is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BoundObjectReference {
    /// Its kind.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Its apiVersion.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Its name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its uid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The minted token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestStatus {
    /// The signed token.
    pub token: String,
    /// When it stops being accepted.
    pub expiration_timestamp: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_is_core_v1_and_its_user_name_round_trips() {
        assert_eq!(ServiceAccount::api_version(), "v1");
        let account = ServiceAccount::new("ns", "builder");
        assert!(account.validate().is_empty(), "{:?}", account.validate());
        let user = ServiceAccount::user_name("ns", "builder");
        assert_eq!(user, "system:serviceaccount:ns:builder");
        assert_eq!(
            ServiceAccount::parse_user_name(&user),
            Some(("ns", "builder"))
        );
        assert_eq!(
            ServiceAccount::parse_user_name("system:serviceaccount:ns"),
            None
        );
        assert_eq!(ServiceAccount::parse_user_name("alice"), None);
    }

    #[test]
    fn a_wrong_api_version_or_name_is_invalid() {
        let mut account = ServiceAccount::new("ns", "Not_A_Name");
        account.api_version = "loom.dev/v1".to_owned();
        let fields: Vec<String> = account.validate().into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"apiVersion".to_owned()), "{fields:?}");
        assert!(fields.contains(&"metadata.name".to_owned()), "{fields:?}");
    }
}
