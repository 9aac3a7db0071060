//! The audit log: one `audit.k8s.io/v1` Event a line for every request the
//! [`policy`] asks for, at stage `ResponseComplete`, written off the request
//! path by the [`writer`].
//!
//! The layer is the outermost of the router's, so it sees every answer,
//! 401s and 429s included. It learns who asked from the [`User`] the
//! authentication layer sets on the response, and the authorization decision
//! from the [`Authorized`] the authorizer sets there; without them (a
//! request refused before either ran) the user is anonymous and the
//! attributes are derived from the request line.
//!
//! `sourceIPs` is the connection's peer address only: `X-Forwarded-For` is
//! whatever a client chose to write, and Loom's API server has no trusted
//! proxy in front of it.
//!
//! Secrets are never logged, whatever the policy says: credentials travel in
//! headers, which are never logged (and the request's bearer token is
//! scrubbed from any line that would quote it); requests whose bodies carry
//! tokens or secrets — secrets, token reviews, TokenRequests
//! (`serviceaccounts/token`), bootstrap tokens — are logged at Metadata at
//! most.

pub mod policy;
pub mod writer;

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::Serialize;
use serde_json::Value;

use crate::authz::Authorized;
use crate::authz::rbac::{Attributes, Decision};
use crate::http::{Peer, User};
use crate::metrics::Metrics;
pub use policy::{Level, Policy, PolicyError, Stage};
pub use writer::LogFile;

/// A request or response body larger than this is not logged (an
/// annotation says so).
pub const MAX_LOGGED_BODY_BYTES: usize = 64 * 1024;

/// The response header carrying the request's audit ID.
pub const AUDIT_ID_HEADER: &str = "audit-id";

/// The annotation saying a body was too large to be logged.
pub const ANNOTATION_BODY_OMITTED: &str = "audit.loom.dev/omitted";

/// Where the log goes and what is logged.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file, its rotation.
    pub log: LogFile,
    /// The policy.
    pub policy: Policy,
}

impl Config {
    /// What `loom up` logs: [`policy::DEFAULT_POLICY`] (writes at Metadata,
    /// no reads) to `path`, rotated at 100 MB keeping 10 files.
    pub fn for_up(path: std::path::PathBuf) -> Config {
        Config {
            log: LogFile {
                path,
                max_size_bytes: 100 * 1024 * 1024,
                max_backups: 10,
            },
            policy: Policy::default_for_up(),
        }
    }
}

/// What the audit layer shares between requests.
#[derive(Clone, Debug)]
pub struct Auditor {
    policy: Arc<Policy>,
    sender: writer::Sender,
    /// Whether any rule logs bodies (else request bodies are never copied).
    bodies: bool,
}

impl Auditor {
    /// Opens the log and starts its writer; lines are counted in `metrics`.
    pub fn start(config: &Config, metrics: &Metrics) -> std::io::Result<Auditor> {
        let (sender, _thread) = writer::start(
            &config.log,
            metrics.audit_events.clone(),
            metrics.audit_events_dropped.clone(),
        )?;
        Ok(Auditor {
            bodies: config.policy.max_level() >= Level::Request,
            policy: Arc::new(config.policy.clone()),
            sender,
        })
    }
}

/// Whether a request's bodies may carry a credential or a secret, so it is
/// logged at Metadata at most.
pub fn carries_secrets(request: &Attributes) -> bool {
    request.resource_request
        && (request.resource == "secrets"
            || request.resource.contains("token")
            || request.subresource.contains("token"))
}

/// The audit layer (use with `axum::middleware::from_fn_with_state`, as the
/// outermost layer).
pub async fn audit(State(auditor): State<Arc<Auditor>>, request: Request, next: Next) -> Response {
    let received = Utc::now();
    let audit_id = uuid::Uuid::new_v4().to_string();
    let method = request.method().as_str().to_owned();
    let uri = request.uri().clone();
    let source = request.extensions().get::<Peer>().map(|Peer(a)| a.ip());
    let user_agent = header_text(request.headers(), header::USER_AGENT);
    let content_type = header_text(request.headers(), header::CONTENT_TYPE);
    let secret = credential(request.headers());
    let user_before = request.extensions().get::<User>().cloned();
    let captured_request = auditor
        .bodies
        .then(|| Arc::new(Mutex::new(Capture::default())));
    let request = match &captured_request {
        Some(capture) => {
            let (parts, body) = request.into_parts();
            Request::from_parts(
                parts,
                Body::new(CaptureBody {
                    inner: body,
                    capture: capture.clone(),
                }),
            )
        }
        None => request,
    };
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&audit_id) {
        response.headers_mut().insert(AUDIT_ID_HEADER, value);
    }
    let user = response
        .extensions()
        .get::<User>()
        .cloned()
        .or(user_before)
        .unwrap_or_else(User::anonymous);
    let authorized = response.extensions().get::<Authorized>().cloned();
    let attributes = match &authorized {
        Some(authorized) => (*authorized.attributes).clone(),
        None => {
            crate::authz::request_attributes(&user, &method, uri.path(), uri.query().unwrap_or(""))
        }
    };
    let mut level = auditor.policy.level(&attributes, Stage::ResponseComplete);
    if carries_secrets(&attributes) {
        level = level.min(Level::Metadata);
    }
    if level == Level::None {
        return response;
    }
    let code = response.status().as_u16();
    let mut annotations = serde_json::Map::new();
    if let Some(authorized) = &authorized {
        let (decision, reason) = match &authorized.decision {
            Decision::Allowed { reason } => ("allow", reason),
            Decision::Denied { reason } => ("forbid", reason),
        };
        annotations.insert("authorization.k8s.io/decision".into(), decision.into());
        annotations.insert("authorization.k8s.io/reason".into(), reason.as_str().into());
    }
    let pending = Pending {
        sender: auditor.sender.clone(),
        secret,
        event: Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level,
            audit_id,
            stage: Stage::ResponseComplete,
            request_uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
            verb: attributes.verb.clone(),
            user: EventUser::from(&user),
            source_ips: source.map(|a| a.to_string()).into_iter().collect(),
            user_agent,
            object_ref: ObjectRef::of(&attributes, uri.path()),
            response_status: ResponseStatus {
                metadata: serde_json::Map::new(),
                code,
                status: None,
                message: None,
                reason: None,
            },
            request_object: None,
            response_object: None,
            request_received_timestamp: timestamp(received),
            stage_timestamp: String::new(),
            annotations,
        },
        request_body: if level >= Level::Request {
            captured_request
        } else {
            None
        },
        request_content_type: Some(content_type),
        response_body: None,
    };
    // The response body is read to the end (or dropped, the client gone)
    // before the event is complete: a watch is logged when it ends.
    let wants_response = level == Level::RequestResponse || code >= 400;
    let (parts, body) = response.into_parts();
    let body = Body::new(AuditedBody {
        inner: body,
        pending: Some(Pending {
            response_body: wants_response.then(Capture::default),
            ..pending
        }),
    });
    Response::from_parts(parts, body)
}

/// The credential of a request's `Authorization` header, to scrub from its line.
fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let secret = value.split_once(' ').map_or(value, |(_, c)| c.trim());
    (secret.len() >= 4).then(|| secret.to_owned())
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// RFC 3339 with microseconds, as Kubernetes' `metav1.MicroTime`.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An `audit.k8s.io/v1` Event.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    kind: &'static str,
    api_version: &'static str,
    level: Level,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: Stage,
    #[serde(rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: EventUser,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef>,
    response_status: ResponseStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    annotations: serde_json::Map<String, Value>,
}

/// Kubernetes' `authentication.k8s.io/v1` UserInfo.
#[derive(Clone, Debug, Serialize)]
struct EventUser {
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl From<&User> for EventUser {
    fn from(user: &User) -> Self {
        EventUser {
            username: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
        }
    }
}

/// The object a resource request is about.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    subresource: String,
}

impl ObjectRef {
    fn of(request: &Attributes, path: &str) -> Option<ObjectRef> {
        if !request.resource_request {
            return None;
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let api_version = match parts.as_slice() {
            ["api", version, ..] | ["apis", _, version, ..] => (*version).to_owned(),
            _ => String::new(),
        };
        Some(ObjectRef {
            resource: request.resource.clone(),
            namespace: request.namespace.clone(),
            name: request.name.clone(),
            api_group: request.api_group.clone(),
            api_version,
            subresource: request.subresource.clone(),
        })
    }
}

/// The answer, as a `Status` (its message and reason for errors).
#[derive(Clone, Debug, Serialize)]
struct ResponseStatus {
    metadata: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    code: u16,
}

/// The first bytes of a body, up to [`MAX_LOGGED_BODY_BYTES`].
#[derive(Debug, Default)]
struct Capture {
    chunks: Vec<Bytes>,
    length: usize,
    overflowed: bool,
}

impl Capture {
    fn push(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        self.length += data.len();
        if self.length > MAX_LOGGED_BODY_BYTES {
            self.overflowed = true;
            self.chunks.clear();
        } else {
            self.chunks.push(data.clone());
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

fn lock(capture: &Mutex<Capture>) -> MutexGuard<'_, Capture> {
    capture.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request body that keeps a copy of what the handler reads of it.
struct CaptureBody {
    inner: Body,
    capture: Arc<Mutex<Capture>>,
}

impl HttpBody for CaptureBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            lock(&self.capture).push(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An event waiting for its response to be sent.
struct Pending {
    sender: writer::Sender,
    secret: Option<String>,
    event: Event,
    request_body: Option<Arc<Mutex<Capture>>>,
    request_content_type: Option<String>,
    response_body: Option<Capture>,
}

impl Pending {
    /// Completes the event and queues its line.
    fn finish(mut self) {
        let mut event = self.event;
        event.stage_timestamp = timestamp(Utc::now());
        let mut omitted = Vec::new();
        if let Some(capture) = &self.request_body {
            let capture = lock(capture);
            if capture.overflowed {
                omitted.push("requestObject");
            } else if capture.length > 0 {
                event.request_object =
                    parse_object(&capture.bytes(), self.request_content_type.as_deref());
            }
        }
        if let Some(capture) = self.response_body.take() {
            let body = (!capture.overflowed).then(|| capture.bytes());
            let object = body.as_deref().and_then(|b| parse_object(b, None));
            if event.response_status.code >= 400
                && let Some(Value::Object(status)) = &object
                && status.get("kind").and_then(Value::as_str) == Some("Status")
            {
                let text = |key: &str| status.get(key).and_then(Value::as_str).map(str::to_owned);
                event.response_status.status = text("status");
                event.response_status.message = text("message");
                event.response_status.reason = text("reason");
            }
            if event.level == Level::RequestResponse {
                if capture.overflowed {
                    omitted.push("responseObject");
                }
                event.response_object = object;
            }
        }
        if !omitted.is_empty() {
            event.annotations.insert(
                ANNOTATION_BODY_OMITTED.into(),
                format!(
                    "{} larger than {MAX_LOGGED_BODY_BYTES} bytes",
                    omitted.join(", ")
                )
                .into(),
            );
        }
        let Ok(mut line) = serde_json::to_string(&event) else {
            return;
        };
        if let Some(secret) = &self.secret {
            line = scrub(&line, secret);
        }
        line.push('\n');
        self.sender.send(line.into_bytes());
    }
}

/// `line` without any copy of `secret`, as written or as JSON escapes it.
fn scrub(line: &str, secret: &str) -> String {
    let mut line = line.replace(secret, "[redacted]");
    if let Ok(quoted) = serde_json::to_string(secret) {
        let escaped = &quoted[1..quoted.len() - 1];
        if escaped != secret {
            line = line.replace(escaped, "[redacted]");
        }
    }
    line
}

/// A body as a JSON value: JSON, YAML (server-side apply's patches), or
/// the protobuf kubectl sends for a few core kinds.
fn parse_object(body: &[u8], content_type: Option<&str>) -> Option<Value> {
    if let Ok(value) = serde_json::from_slice(body) {
        return Some(value);
    }
    if content_type.is_some_and(|t| t.starts_with(crate::protobuf::CONTENT_TYPE)) {
        return crate::protobuf::decode(body).ok();
    }
    if content_type.is_none_or(|t| t.contains("yaml")) {
        let text = std::str::from_utf8(body).ok()?;
        return api_types::decode::yaml_str_to_value(text).ok();
    }
    None
}

/// A response body that completes its audit event when it ends or is dropped.
struct AuditedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl HttpBody for AuditedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(capture) =
                        self.pending.as_mut().and_then(|p| p.response_body.as_mut())
                {
                    capture.push(data);
                }
            }
            Poll::Ready(_) => {
                if let Some(pending) = self.pending.take() {
                    pending.finish();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_scrubbed_as_written_and_as_escaped() {
        let line = r#"{"a":"tok\"en","b":"xtok"en"}"#;
        assert_eq!(
            scrub(line, "tok\"en"),
            r#"{"a":"[redacted]","b":"x[redacted]"}"#
        );
    }

    #[test]
    fn bodies_of_secrets_and_tokens_are_never_logged() {
        let attributes =
            |path: &str| crate::authz::request_attributes(&User::anonymous(), "POST", path, "");
        for path in [
            "/api/v1/namespaces/a/serviceaccounts/default/token",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "/api/v1/namespaces/kube-system/secrets",
            "/apis/loom.dev/v1/bootstraptokens",
        ] {
            assert!(carries_secrets(&attributes(path)), "{path}");
        }
        for path in [
            "/api/v1/namespaces/a/serviceaccounts",
            "/apis/loom.dev/v1/namespaces/a/tasks",
            "/healthz",
        ] {
            assert!(!carries_secrets(&attributes(path)), "{path}");
        }
    }

    #[test]
    fn loom_up_logs_writes_at_metadata_rotated_at_100_mb() {
        let config = Config::for_up("/var/lib/loom/audit.log".into());
        assert_eq!(config.log.max_size_bytes, 100 * 1024 * 1024);
        assert_eq!(config.log.max_backups, 10);
        assert_eq!(config.policy, Policy::default_for_up());
        assert_eq!(config.policy.max_level(), Level::Metadata);
    }

    #[test]
    fn bodies_are_logged_as_json_whatever_their_encoding() {
        let json = br#"{"kind":"Job"}"#;
        assert_eq!(
            parse_object(json, Some("application/json")),
            Some(serde_json::json!({"kind": "Job"}))
        );
        let yaml = b"kind: Job\nmetadata: {name: x}\n";
        assert_eq!(
            parse_object(yaml, Some("application/apply-patch+yaml")),
            Some(serde_json::json!({"kind": "Job", "metadata": {"name": "x"}}))
        );
        // Not what it says it is: not logged, never an error.
        assert_eq!(
            parse_object(b"\x00\x01", Some(crate::protobuf::CONTENT_TYPE)),
            None
        );
        assert_eq!(parse_object(b"kind: [", Some("application/json")), None);
    }

    #[test]
    fn timestamps_have_microseconds() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T17:56:19.123456789Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        assert_eq!(
            at.map(timestamp).as_deref(),
            Some("2026-12-04T17:56:19.123456Z")
        );
    }
}
