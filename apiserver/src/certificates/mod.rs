//! TLS bootstrapping of nodes (Kubernetes' CSR approver and signer, in the
//! API server): the REST storage of CertificateSigningRequest and
//! BootstrapToken, and the admission step that stamps each request with its
//! requester, approves a node's own client certificate request at once, and
//! signs approved requests with the cluster CA.
//!
//! Who is approved at creation: a bootstrap token (`system:bootstrappers`)
//! asking for `CN=system:node:NAME, O=system:nodes`, and a node
//! `system:node:NAME` asking for its own name again (renewal); for client
//! authentication only, from the kubelet-client signer. Anything else such
//! a requester asks for a client certificate is refused (403).
//!
//! A node's serving certificate (its endpoint's HTTPS, the kubelet-serving
//! signer) is approved at creation only when node `NAME` itself asks for
//! `CN=system:node:NAME, O=system:nodes`, server auth, and the one subject
//! alternative name `DNS:NAME`: the name the API server checks when it calls
//! the node. A node's request naming another node, an IP address (nothing
//! proves an address is the node's: it reports its own), or anything else is
//! stored denied, with a condition that says why, and never signed; a
//! bootstrap token may not ask for one at all (403).
//!
//! Anyone else's request waits for an administrator to approve it (a status
//! write with an `Approved` condition), and is signed then. Signing happens
//! in the write that approves, so a request is never stored approved but
//! unsigned while this server signs.
//!
//! The cluster CA's certificate is served to anyone at
//! [`CLUSTER_CA_PATH`]: a joining node knows nothing yet, and checks what it
//! fetched against the hash it was given before trusting it.

use std::sync::Arc;
use std::time::Duration;

use api_types::certificates::{
    BOOTSTRAPPERS_GROUP, CLIENT_SIGNER, CLUSTER_CA_PATH, KUBELET_CLIENT_SIGNER,
    KUBELET_SERVING_SIGNER, NODE_CLIENT_USAGES, NODE_SERVING_USAGES,
};
use api_types::{BootstrapToken, CertificateSigningRequest, FieldError, Status};
use async_trait::async_trait;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::admission::{AdmissionStep, Operation, Phase, Review};
use crate::authz::authorizer::request_user;
use crate::authz::node::{NODE_USER_PREFIX, NODES_GROUP, node_of};
use crate::authz::rbac::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::registry::{Column, Rest, Typed};

/// How long a node's certificate lasts unless its request asks for less.
pub const DEFAULT_DURATION: Duration = pki::NODE_CERT_VALIDITY;

/// The cluster CA this server signs approved requests with
/// (`--cluster-signing-cert-file`, `--cluster-signing-key-file`).
#[derive(Clone)]
pub struct Signing {
    /// The CA.
    pub ca: Arc<pki::Ca>,
    /// The longest certificate it signs (`--cluster-signing-duration`).
    pub duration: Duration,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("ca", &self.ca.cert_hash())
            .field("duration", &self.duration)
            .finish()
    }
}

impl Signing {
    /// Signing with `ca`, for the default 30 days.
    pub fn new(ca: pki::Ca) -> Self {
        Signing {
            ca: Arc::new(ca),
            duration: DEFAULT_DURATION,
        }
    }
}

fn cell(path: &'static str) -> fn(&Value) -> Value {
    match path {
        "signer" => |o| json!(crate::registry::field(o, "spec.signerName")),
        "requestor" => |o| json!(crate::registry::field(o, "spec.username")),
        _ => |o| {
            let csr: Option<CertificateSigningRequest> = serde_json::from_value(o.clone()).ok();
            let Some(csr) = csr else {
                return json!("");
            };
            let mut words: Vec<&str> = ["Approved", "Denied", "Failed"]
                .into_iter()
                .filter(|c| csr.has_condition(c))
                .collect();
            if words.is_empty() {
                words.push("Pending");
            }
            if csr.certificate().is_some() {
                words.push("Issued");
            }
            json!(words.join(","))
        },
    }
}

/// The decoded PEM request of a CSR object, or the problem with it.
fn request_pem(object: &Value) -> Result<String, String> {
    let encoded = object
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| "must be a base64-encoded PEM certificate request".to_owned())?;
    String::from_utf8(bytes).map_err(|_| "must be a base64-encoded PEM certificate request".into())
}

/// The request's subject, or the problem with it.
fn request_info(object: &Value) -> Result<pki::RequestInfo, String> {
    pki::RequestInfo::from_pem(&request_pem(object)?)
}

fn validate_request(object: &Value) -> Vec<FieldError> {
    match request_info(object) {
        Ok(_) => Vec::new(),
        // The value is a certificate request; the message says what is wrong.
        Err(why) => vec![FieldError::invalid("spec.request", "<request>", why)],
    }
}

/// CertificateSigningRequest's REST storage.
pub fn rest() -> Rest {
    Rest::new(
        Typed::<CertificateSigningRequest>::new(vec![
            Column {
                name: "SignerName",
                kind: "string",
                description: "The signer asked for",
                priority: 0,
                cell: cell("signer"),
            },
            Column {
                name: "Requestor",
                kind: "string",
                description: "Who asked",
                priority: 0,
                cell: cell("requestor"),
            },
            Column {
                name: "Condition",
                kind: "string",
                description: "Approved, Denied, Failed, Pending; Issued once signed",
                priority: 0,
                cell: cell("condition"),
            },
        ])
        .validate_admitted(validate_request),
    )
    .subresource(Approval)
}

/// `certificatesigningrequests/{name}/approval`: what `kubectl certificate
/// approve` and `deny` write — the request's conditions, nothing else (the
/// write that approves also signs, by the admission step).
#[derive(Clone, Copy, Debug)]
struct Approval;

#[async_trait]
impl crate::registry::Subresource for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }

    fn verbs(&self) -> &'static [&'static str] {
        &["get", "update"]
    }

    async fn serve(
        &self,
        request: crate::registry::SubresourceRequest<'_>,
    ) -> ApiResult<axum::response::Response> {
        use axum::http::Method;
        let res = request.resource;
        let stored = request.store.get(res, "", request.name).await?;
        if request.method == Method::GET {
            return Ok(crate::http::json_response(StatusCode::OK, &stored));
        }
        if request.method != Method::PUT {
            return Err(ApiError::from(Status::method_not_allowed(
                &api_types::GroupResource::new(
                    &res.info.group,
                    "certificatesigningrequests/approval",
                ),
                request.method.as_str(),
            )));
        }
        let options = crate::http::write_options(request.query, request.headers, "")?;
        let body = crate::http::parse_body(request.headers, &request.body)?;
        let mut object = stored;
        let conditions = body
            .pointer("/status/conditions")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if let Some(map) = object.as_object_mut() {
            let status = map.entry("status").or_insert_with(|| json!({}));
            if let Some(status) = status.as_object_mut() {
                status.insert("conditions".to_owned(), conditions);
            }
        }
        if let Some(version) = crate::object::meta_str(&body, "resourceVersion") {
            crate::object::set_meta(&mut object, "resourceVersion", json!(version));
        }
        let written = request
            .store
            .update(
                res,
                "",
                request.name,
                object,
                crate::generic::Part::Status,
                &options,
            )
            .await?;
        Ok(crate::http::json_response(StatusCode::OK, &written.object))
    }
}

/// BootstrapToken's REST storage.
pub fn bootstrap_tokens() -> Rest {
    Rest::new(Typed::<BootstrapToken>::new(vec![
        Column {
            name: "Expiration",
            kind: "string",
            description: "When the token stops being accepted",
            priority: 0,
            cell: |o| json!(crate::registry::field(o, "spec.expiration")),
        },
        Column {
            name: "Description",
            kind: "string",
            description: "What it is for",
            priority: 0,
            cell: |o| json!(crate::registry::field(o, "spec.description")),
        },
    ]))
}

/// Whether `csr` (with subject `info`) asks for exactly a node's client
/// certificate from the kubelet-client signer: the node's name, or why not.
pub fn node_client_request<'a>(
    csr: &CertificateSigningRequest,
    info: &'a pki::RequestInfo,
) -> Result<&'a str, String> {
    if csr.spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Err(format!("the signer must be {KUBELET_CLIENT_SIGNER}"));
    }
    let node = info
        .common_name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            format!(
                "the subject's CN must be system:node:NAME, not {:?}",
                info.common_name
            )
        })?;
    if info.organizations != [NODES_GROUP] {
        return Err(format!(
            "the subject's O must be {NODES_GROUP} alone, not {:?}",
            info.organizations
        ));
    }
    if info.alt_names != 0 {
        return Err("a client certificate has no subject alternative names".to_owned());
    }
    if !csr.spec.usages.iter().any(|u| u == "client auth")
        || csr
            .spec
            .usages
            .iter()
            .any(|u| !NODE_CLIENT_USAGES.contains(&u.as_str()))
    {
        return Err(format!(
            "the usages must be client auth, with digital signature and key encipherment allowed; not {:?}",
            csr.spec.usages
        ));
    }
    Ok(node)
}

/// Whether `csr` (with subject `info`) has the form of a node's serving
/// certificate request from the kubelet-serving signer: `CN=system:node:NAME`,
/// `O=system:nodes`, server auth with digital signature and key encipherment
/// allowed, and only DNS names and IP addresses as alternative names. The
/// node's name, or why not.
pub fn node_serving_request<'a>(
    csr: &CertificateSigningRequest,
    info: &'a pki::RequestInfo,
) -> Result<&'a str, String> {
    if csr.spec.signer_name != KUBELET_SERVING_SIGNER {
        return Err(format!("the signer must be {KUBELET_SERVING_SIGNER}"));
    }
    let node = info
        .common_name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            format!(
                "the subject's CN must be system:node:NAME, not {:?}",
                info.common_name
            )
        })?;
    if info.organizations != [NODES_GROUP] {
        return Err(format!(
            "the subject's O must be {NODES_GROUP} alone, not {:?}",
            info.organizations
        ));
    }
    if info.alt_names != info.dns_names.len() + info.ip_addresses.len() {
        return Err(
            "a serving certificate's alternative names may only be DNS names and IP addresses"
                .to_owned(),
        );
    }
    if info.alt_names == 0 {
        return Err("a serving certificate names at least the node (DNS:NAME)".to_owned());
    }
    if !csr.spec.usages.iter().any(|u| u == "server auth")
        || csr
            .spec
            .usages
            .iter()
            .any(|u| !NODE_SERVING_USAGES.contains(&u.as_str()))
    {
        return Err(format!(
            "the usages must be server auth, with digital signature and key encipherment allowed; not {:?}",
            csr.spec.usages
        ));
    }
    Ok(node)
}

/// Why node `node`'s own request for a serving certificate is not approved
/// at once, if it is not: it must be of the form
/// [`node_serving_request`] checks, for `node` itself, naming nothing but
/// `DNS:NODE`. IP addresses are not approved: a node reports its own
/// addresses, so nothing here proves one is its own, and a certificate for
/// another node's address would pass for that node with any client that
/// checks addresses. The API server checks the name instead.
pub fn node_serving_refusal(
    node: &str,
    csr: &CertificateSigningRequest,
    info: &pki::RequestInfo,
) -> Option<String> {
    let asked = match node_serving_request(csr, info) {
        Ok(asked) => asked,
        Err(why) => return Some(why),
    };
    if asked != node {
        return Some(format!(
            "node {node:?} may only ask for its own serving certificate, not node {asked:?}'s"
        ));
    }
    if let Some(other) = info.dns_names.iter().find(|d| d.as_str() != node) {
        return Some(format!(
            "node {node:?} may only name itself (DNS:{node}), not {other:?}"
        ));
    }
    if !info.dns_names.iter().any(|d| d == node) {
        return Some(format!("the request must name the node: DNS:{node}"));
    }
    if !info.ip_addresses.is_empty() {
        let ips: Vec<String> = info.ip_addresses.iter().map(ToString::to_string).collect();
        return Some(format!(
            "IP addresses ({}) are not approved automatically: nothing proves they are node {node:?}'s \
             (the API server checks DNS:{node}); an administrator may issue such a certificate",
            ips.join(", ")
        ));
    }
    None
}

/// What a requester's new request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Approved at once, with this message.
    Approved(&'static str),
    /// Stored denied, never signed, with this message.
    Denied(String),
    /// Refused: not stored (403), with this message.
    Refused(String),
    /// Left for an administrator to decide.
    Pending,
}

/// What `user`'s new request `csr` (with subject `info`) gets.
pub fn approval(
    user: &UserInfo,
    csr: &CertificateSigningRequest,
    info: &pki::RequestInfo,
) -> Decision {
    let bootstrapper = user.groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP);
    if bootstrapper {
        return match node_client_request(csr, info) {
            Ok(_) => Decision::Approved(
                "Auto approving a node's client certificate requested with a bootstrap token.",
            ),
            Err(why) => Decision::Refused(format!(
                "a bootstrap token may only ask for a node's client certificate: {why}"
            )),
        };
    }
    let Some(node) = node_of(user) else {
        return Decision::Pending;
    };
    if csr.spec.signer_name == KUBELET_SERVING_SIGNER {
        return match node_serving_refusal(node, csr, info) {
            None => Decision::Approved("Auto approving a node's own serving certificate."),
            Some(why) => Decision::Denied(why),
        };
    }
    match node_client_request(csr, info) {
        Err(why) => Decision::Refused(format!(
            "a node may only ask for its own client or serving certificate: {why}"
        )),
        Ok(asked) if asked != node => Decision::Refused(format!(
            "node {node:?} may only ask for its own client certificate, not node {asked:?}'s"
        )),
        Ok(_) => {
            Decision::Approved("Auto approving the renewal of a node's own client certificate.")
        }
    }
}

/// Signs an approved request: the PEM certificate, or why it is not signed.
pub fn sign(
    signing: &Signing,
    csr: &CertificateSigningRequest,
    pem: &str,
    info: &pki::RequestInfo,
) -> Result<String, String> {
    let mut names = Vec::new();
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => {
            node_client_request(csr, info)?;
        }
        KUBELET_SERVING_SIGNER => {
            let node = node_serving_request(csr, info)?;
            // The API server calls a node by its name: a certificate of
            // one node naming another would pass for that one.
            if let Some(other) = info.dns_names.iter().find(|d| d.as_str() != node) {
                return Err(format!(
                    "the serving certificate of node {node:?} may name no other host, not {other:?}"
                ));
            }
            names.extend(info.dns_names.iter().cloned());
            names.extend(info.ip_addresses.iter().map(ToString::to_string));
        }
        CLIENT_SIGNER => {
            if info.common_name.is_empty() {
                return Err("the subject has no CN to name a user".to_owned());
            }
            if csr.spec.usages.iter().any(|u| u == "server auth") {
                return Err("a client certificate cannot be for server auth".to_owned());
            }
        }
        other => return Err(format!("this API server does not sign for {other:?}")),
    }
    if info.organizations.len() > 1 {
        return Err("the subject may name at most one O (group)".to_owned());
    }
    let mut validity = signing.duration;
    if let Some(seconds) = csr.spec.expiration_seconds {
        validity = validity.min(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
    }
    let profile = if csr.spec.signer_name == KUBELET_SERVING_SIGNER {
        let mut profile = pki::Profile::server(&info.common_name, &names);
        profile.organization = info.organizations.first().cloned();
        profile
    } else {
        pki::Profile::client(
            &info.common_name,
            info.organizations.first().map(String::as_str),
        )
    }
    .valid_for(validity);
    signing
        .ca
        .sign_request(pem, &profile)
        .map_err(|e| e.to_string())
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    })
}

fn push_condition(object: &mut Value, condition: Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let status = map.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    if let Some(status) = status.as_object_mut() {
        let conditions = status.entry("conditions").or_insert_with(|| json!([]));
        if let Some(list) = conditions.as_array_mut() {
            list.push(condition);
        } else {
            *conditions = json!([condition]);
        }
    }
}

/// The admission step of CertificateSigningRequests.
#[derive(Debug)]
pub struct CertificateAdmission {
    signing: Option<Signing>,
}

impl CertificateAdmission {
    /// The step, signing with `signing` when given.
    pub fn new(signing: Option<Signing>) -> Arc<Self> {
        Arc::new(CertificateAdmission { signing })
    }
}

#[async_trait]
impl AdmissionStep for CertificateAdmission {
    fn name(&self) -> &'static str {
        "CertificateSigning"
    }

    fn phase(&self) -> Phase {
        Phase::Mutating
    }

    async fn admit(&self, review: &mut Review<'_>) -> ApiResult<()> {
        if !review.resource.is::<CertificateSigningRequest>()
            || review.operation == Operation::Delete
        {
            return Ok(());
        }
        let user = request_user();
        if review.operation == Operation::Create
            && let Some(user) = &user
            && let Some(spec) = review.object.get_mut("spec").and_then(Value::as_object_mut)
        {
            // Who asked is the server's to say.
            spec.insert("username".to_owned(), json!(user.name));
            spec.insert("groups".to_owned(), json!(user.groups));
            spec.remove("uid");
            spec.remove("extra");
        }
        // A request that does not decode is the kind's validation's to refuse.
        let Ok(csr) = serde_json::from_value::<CertificateSigningRequest>(review.object.clone())
        else {
            return Ok(());
        };
        let Ok(pem) = request_pem(&review.object) else {
            return Ok(());
        };
        let Ok(info) = pki::RequestInfo::from_pem(&pem) else {
            return Ok(());
        };
        if review.operation == Operation::Create
            && let Some(user) = &user
        {
            match approval(user, &csr, &info) {
                Decision::Approved(message) => {
                    push_condition(
                        &mut review.object,
                        condition("Approved", "AutoApproved", message),
                    );
                }
                Decision::Denied(why) => {
                    info!(csr = review.name, user = %user.name, reason = %why, "denied a node's certificate signing request");
                    push_condition(&mut review.object, condition("Denied", "AutoDenied", &why));
                }
                Decision::Pending => {}
                Decision::Refused(why) => {
                    return Err(ApiError::from(Status::forbidden(
                        &review.resource.group_resource(),
                        review.name,
                        &format!(
                            "user {:?} cannot create this certificate signing request: {why}",
                            user.name
                        ),
                    )));
                }
            }
        }
        let Ok(csr) = serde_json::from_value::<CertificateSigningRequest>(review.object.clone())
        else {
            return Ok(());
        };
        if !csr.is_approved() || csr.certificate().is_some() || review.dry_run {
            return Ok(());
        }
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        match sign(signing, &csr, &pem, &info) {
            Ok(certificate) => {
                info!(csr = review.name, subject = %info.common_name, "signed a certificate signing request");
                if let Some(status) = review
                    .object
                    .get_mut("status")
                    .and_then(Value::as_object_mut)
                {
                    status.insert("certificate".to_owned(), json!(BASE64.encode(certificate)));
                }
            }
            Err(why) => {
                warn!(csr = review.name, reason = %why, "cannot sign a certificate signing request");
                push_condition(
                    &mut review.object,
                    condition("Failed", "SignerValidationFailure", &why),
                );
            }
        }
        Ok(())
    }
}

/// `router` with the cluster CA's certificate served to anyone at
/// [`CLUSTER_CA_PATH`] (added after the authentication and authorization
/// layers, so neither applies: a joining node has no credential yet).
pub fn serve_cluster_ca(router: Router, ca_pem: Option<String>) -> Router {
    let Some(pem) = ca_pem else {
        return router;
    };
    router.route(
        CLUSTER_CA_PATH,
        axum::routing::get(move || {
            let pem = pem.clone();
            async move {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-pem-file")],
                    pem,
                )
                    .into_response()
            }
        }),
    )
}
