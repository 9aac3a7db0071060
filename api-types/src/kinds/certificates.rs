//! TLS bootstrapping, as Kubernetes': the CertificateSigningRequest kind
//! (`certificates.k8s.io/v1`) through which a node asks the cluster CA for its
//! client certificate, and the BootstrapToken kind (`loom.dev/v1`) holding
//! the short-lived tokens a new node authenticates with to ask (Kubernetes
//! keeps them as Secrets of type `bootstrap.kubernetes.io/token`; Loom has
//! no Secret kind, and stores only a hash of the token's secret).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::resource::{Resource, impl_resource};
use crate::validation::{FieldError, Validate, validate_object_meta_for};

/// `certificates.k8s.io`.
pub const CERTIFICATES_GROUP: &str = "certificates.k8s.io";
/// The signer of nodes' client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of nodes' serving certificates (their endpoint's HTTPS).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The signer of other client certificates (approved by an administrator).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The group every bootstrap token authenticates in.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// The user-name prefix of a node: `system:node:NAME`.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group of every node.
pub const NODES_GROUP: &str = "system:nodes";
/// The user-name prefix of a bootstrap token: `system:bootstrap:<id>`.
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
/// The path, served to anyone, of the cluster CA's certificate (PEM): what a
/// joining node fetches and checks against the hash it was given before it
/// trusts anything the server says (kubeadm's `cluster-info`).
pub const CLUSTER_CA_PATH: &str = "/.well-known/loom/cluster-ca.crt";
/// The key usages a node's client certificate may ask for.
pub const NODE_CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
/// The key usages a node's serving certificate may ask for.
pub const NODE_SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
/// Every key usage Kubernetes names.
pub const KEY_USAGES: [&str; 23] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];
/// The shortest certificate a request may ask for (Kubernetes' 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i32 = 600;

/// A request for a certificate signed by the cluster CA. Cluster-scoped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct CertificateSigningRequest {
    /// `certificates.k8s.io/v1`.
    pub api_version: String,
    /// `CertificateSigningRequest`.
    pub kind: String,
    /// Its name (`generateName` is usual).
    pub metadata: ObjectMeta,
    /// What is asked, and (set by the server) who asked.
    pub spec: CertificateSigningRequestSpec,
    /// Approval and the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CertificateSigningRequestStatus>,
}

impl_resource!(
    CertificateSigningRequest,
    group: CERTIFICATES_GROUP,
    version: "v1",
    kind: "CertificateSigningRequest",
    plural: "certificatesigningrequests",
    singular: "certificatesigningrequest",
    short_names: ["csr"],
    namespaced: false,
    has_status: true,
);

impl Default for CertificateSigningRequest {
    fn default() -> Self {
        CertificateSigningRequest {
            api_version: CertificateSigningRequest::api_version(),
            kind: CertificateSigningRequest::KIND.to_owned(),
            metadata: ObjectMeta::default(),
            spec: CertificateSigningRequestSpec::default(),
            status: None,
        }
    }
}

/// What a certificate request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct CertificateSigningRequestSpec {
    /// The PKCS#10 request, PEM, base64-encoded (Kubernetes' `[]byte`).
    pub request: String,
    /// Who is to sign it (`kubernetes.io/kube-apiserver-client-kubelet` for
    /// a node's client certificate).
    pub signer_name: String,
    /// How long the certificate should last (at least 600; the signer may
    /// give less).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i32>,
    /// Key usages asked for (`digital signature`, `client auth`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    /// Who created the request: set by the server, never by the client.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// The requester's uid, set by the server.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The requester's groups, set by the server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The requester's extra attributes, set by the server.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A request's approval and certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct CertificateSigningRequestStatus {
    /// `Approved`, `Denied`, `Failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CertificateSigningRequestCondition>,
    /// The signed certificate, PEM, base64-encoded.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub certificate: String,
}

/// One condition of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct CertificateSigningRequestCondition {
    /// `Approved`, `Denied` or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` (or `False`, `Unknown`).
    pub status: String,
    /// A CamelCase reason (`AutoApproved`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Words for a person.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it was last written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<DateTime<Utc>>,
    /// When its status last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
}

impl CertificateSigningRequest {
    /// Whether a condition of `type_` is `True`.
    pub fn has_condition(&self, type_: &str) -> bool {
        self.status.as_ref().is_some_and(|status| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        })
    }

    /// Approved, and neither denied nor failed.
    pub fn is_approved(&self) -> bool {
        self.has_condition("Approved")
            && !self.has_condition("Denied")
            && !self.has_condition("Failed")
    }

    /// The base64 certificate, once signed.
    pub fn certificate(&self) -> Option<&str> {
        self.status
            .as_ref()
            .map(|s| s.certificate.as_str())
            .filter(|c| !c.is_empty())
    }
}

impl Validate for CertificateSigningRequest {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let expected = CertificateSigningRequest::api_version();
        if self.api_version != expected {
            errs.push(FieldError::not_supported(
                "apiVersion",
                &self.api_version,
                &[expected.as_str()],
            ));
        }
        if self.kind != CertificateSigningRequest::KIND {
            errs.push(FieldError::not_supported(
                "kind",
                &self.kind,
                &[CertificateSigningRequest::KIND],
            ));
        }
        errs.extend(validate_object_meta_for::<CertificateSigningRequest>(
            &self.metadata,
        ));
        let spec = &self.spec;
        if spec.request.is_empty() {
            errs.push(FieldError::required(
                "spec.request",
                "a PEM certificate request, base64-encoded",
            ));
        }
        if spec.signer_name.is_empty() {
            errs.push(FieldError::required(
                "spec.signerName",
                "the signer to sign it",
            ));
        } else if spec.signer_name.split('/').count() != 2
            || spec.signer_name.split('/').any(str::is_empty)
        {
            errs.push(FieldError::invalid(
                "spec.signerName",
                spec.signer_name.as_str(),
                "must be a fully qualified domain and path of the form 'example.com/signer-name'",
            ));
        }
        if let Some(seconds) = spec.expiration_seconds
            && seconds < MIN_EXPIRATION_SECONDS
        {
            errs.push(FieldError::invalid(
                "spec.expirationSeconds",
                i64::from(seconds),
                format!("may not specify a duration less than {MIN_EXPIRATION_SECONDS} seconds"),
            ));
        }
        for (i, usage) in spec.usages.iter().enumerate() {
            if !KEY_USAGES.contains(&usage.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("spec.usages[{i}]"),
                    usage.as_str(),
                    &KEY_USAGES,
                ));
            }
        }
        if let Some(status) = &self.status {
            for (i, condition) in status.conditions.iter().enumerate() {
                if !matches!(condition.type_.as_str(), "Approved" | "Denied" | "Failed") {
                    errs.push(FieldError::not_supported(
                        format!("status.conditions[{i}].type"),
                        condition.type_.as_str(),
                        &["Approved", "Denied", "Failed"],
                    ));
                }
            }
            if self.has_condition("Approved") && self.has_condition("Denied") {
                errs.push(FieldError::invalid(
                    "status.conditions",
                    "",
                    "Approved and Denied conditions are mutually exclusive",
                ));
            }
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(crate::validation::validate_object_meta_update(
            &self.metadata,
            &old.metadata,
        ));
        if self.spec != old.spec {
            errs.push(FieldError::forbidden("spec", "field is immutable"));
        }
        if let (Some(new), Some(old)) = (self.status.as_ref(), old.status.as_ref())
            && !old.certificate.is_empty()
            && new.certificate != old.certificate
        {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
        errs
    }
}

/// A bootstrap token (`loom.dev/v1`, cluster-scoped): its name is the token's
/// id; only the SHA-256 of its secret is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct BootstrapToken {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `BootstrapToken`.
    pub kind: String,
    /// Its name: the token's id (`[a-z0-9]{6}`).
    pub metadata: ObjectMeta,
    /// The secret's hash and when it expires.
    pub spec: BootstrapTokenSpec,
}

impl_resource!(
    BootstrapToken,
    kind: "BootstrapToken",
    plural: "bootstraptokens",
    singular: "bootstraptoken",
    short_names: [],
    namespaced: false,
    has_status: false,
);

impl Default for BootstrapToken {
    fn default() -> Self {
        BootstrapToken {
            api_version: BootstrapToken::api_version(),
            kind: BootstrapToken::KIND.to_owned(),
            metadata: ObjectMeta::default(),
            spec: BootstrapTokenSpec::default(),
        }
    }
}

impl BootstrapToken {
    /// The token `id` whose secret hashes to `secret_hash`, accepted until
    /// `expiration` (`None`: for ever).
    pub fn new(
        id: &str,
        secret_hash: String,
        expiration: Option<std::time::SystemTime>,
        description: &str,
    ) -> Self {
        let mut token = BootstrapToken::default();
        token.metadata.name = id.to_owned();
        token.spec = BootstrapTokenSpec {
            secret_hash,
            expiration: expiration.map(DateTime::<Utc>::from),
            description: description.to_owned(),
        };
        token
    }
}

/// What a bootstrap token is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct BootstrapTokenSpec {
    /// `sha256:` and the hex SHA-256 of the token's secret part.
    pub secret_hash: String,
    /// When it stops being accepted (none: never, as Kubernetes' ttl 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<DateTime<Utc>>,
    /// What it is for, for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A bootstrap token's two parts, `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapTokenValue {
    /// `[a-z0-9]{6}`: the object's name, and the user `system:bootstrap:<id>`.
    pub id: String,
    /// `[a-z0-9]{16}`: never stored.
    pub secret: String,
}

impl std::fmt::Debug for BootstrapTokenValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapTokenValue")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn is_token_part(part: &str, len: usize) -> bool {
    part.len() == len
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl BootstrapTokenValue {
    /// Reads `<id>.<secret>`, `None` unless it is exactly
    /// `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub fn parse(token: &str) -> Option<BootstrapTokenValue> {
        let (id, secret) = token.split_once('.')?;
        (is_token_part(id, 6) && is_token_part(secret, 16)).then(|| BootstrapTokenValue {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The user the token authenticates as.
    pub fn user_name(&self) -> String {
        format!("{BOOTSTRAP_USER_PREFIX}{}", self.id)
    }

    /// The whole token.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl Validate for BootstrapToken {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let expected = BootstrapToken::api_version();
        if self.api_version != expected {
            errs.push(FieldError::not_supported(
                "apiVersion",
                &self.api_version,
                &[expected.as_str()],
            ));
        }
        if self.kind != BootstrapToken::KIND {
            errs.push(FieldError::not_supported(
                "kind",
                &self.kind,
                &[BootstrapToken::KIND],
            ));
        }
        errs.extend(validate_object_meta_for::<BootstrapToken>(&self.metadata));
        if !self.metadata.name.is_empty() && !is_token_part(&self.metadata.name, 6) {
            errs.push(FieldError::invalid(
                "metadata.name",
                self.metadata.name.as_str(),
                "a bootstrap token's id is 6 characters of [a-z0-9]",
            ));
        }
        let hash = &self.spec.secret_hash;
        let hex = hash.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The value is a hash, but say nothing of it.
            errs.push(FieldError::invalid(
                "spec.secretHash",
                "",
                "must be \"sha256:\" and 64 hex digits: the SHA-256 of the token's secret",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_are_six_dot_sixteen_lowercase_alphanumerics() {
        let token = BootstrapTokenValue::parse("abcdef.0123456789abcdef");
        let token = token.as_ref().map(|t| (t.id.as_str(), t.secret.as_str()));
        assert_eq!(token, Some(("abcdef", "0123456789abcdef")));
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcdeff",
            "abcdef.0123456789abcde_",
            "abcdef:0123456789abcdef",
            "abcdef.0123456789.abcdef",
        ] {
            assert!(BootstrapTokenValue::parse(bad).is_none(), "{bad:?}");
        }
        let value = BootstrapTokenValue::parse("abcdef.0123456789abcdef");
        assert_eq!(
            value
                .as_ref()
                .map(BootstrapTokenValue::user_name)
                .as_deref(),
            Some("system:bootstrap:abcdef")
        );
        // Debug never shows the secret.
        assert!(!format!("{value:?}").contains("0123456789"));
    }

    #[test]
    fn a_bootstrap_token_needs_a_token_id_name_and_a_sha256() {
        let mut token = BootstrapToken::default();
        token.metadata.name = "abcdef".to_owned();
        token.spec.secret_hash = format!("sha256:{}", "0".repeat(64));
        assert!(token.validate().is_empty(), "{:?}", token.validate());
        token.metadata.name = "abc".to_owned();
        token.spec.secret_hash = "0123456789abcdef".to_owned();
        let fields: Vec<String> = token.validate().into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"metadata.name".to_owned()), "{fields:?}");
        assert!(fields.contains(&"spec.secretHash".to_owned()), "{fields:?}");
    }

    #[test]
    fn a_request_needs_a_request_a_signer_and_known_usages_and_its_spec_never_changes() {
        let mut csr = CertificateSigningRequest::default();
        csr.metadata.name = "node-csr-a".to_owned();
        let fields: Vec<String> = csr.validate().into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"spec.request".to_owned()), "{fields:?}");
        assert!(fields.contains(&"spec.signerName".to_owned()), "{fields:?}");
        csr.spec.request = "UEVN".to_owned();
        csr.spec.signer_name = KUBELET_CLIENT_SIGNER.to_owned();
        csr.spec.usages = vec!["client auth".to_owned()];
        assert!(csr.validate().is_empty(), "{:?}", csr.validate());
        csr.spec.usages.push("flying".to_owned());
        csr.spec.expiration_seconds = Some(60);
        let fields: Vec<String> = csr.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.expirationSeconds", "spec.usages[1]"]);
        let old = csr.clone();
        csr.spec.username = "admin".to_owned();
        let fields: Vec<String> = csr
            .validate_update(&old)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert!(fields.contains(&"spec".to_owned()), "{fields:?}");
    }
}
