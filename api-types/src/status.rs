//! `Status`, the Kubernetes error (and success) body, with a constructor per error the API returns.
//!
//! The messages match Kubernetes' `apimachinery/pkg/api/errors`, so kubectl and client
//! libraries show and classify them as they would Kubernetes' own.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ListMeta;
use crate::resource::{GroupKind, GroupResource};
use crate::validation::FieldError;

/// Well-known `reason` values of a [`Status`].
pub mod reason {
    /// The object does not exist (404).
    pub const NOT_FOUND: &str = "NotFound";
    /// The object already exists (409).
    pub const ALREADY_EXISTS: &str = "AlreadyExists";
    /// A precondition such as the resourceVersion did not hold (409).
    pub const CONFLICT: &str = "Conflict";
    /// The object failed validation (422).
    pub const INVALID: &str = "Invalid";
    /// The request was malformed (400).
    pub const BAD_REQUEST: &str = "BadRequest";
    /// The requested revision is no longer available (410).
    pub const GONE: &str = "Gone";
    /// The requested revision has been compacted away (410), as Kubernetes says for watches.
    pub const EXPIRED: &str = "Expired";
    /// The request body is too large (413).
    pub const REQUEST_ENTITY_TOO_LARGE: &str = "RequestEntityTooLarge";
    /// The client must slow down (429).
    pub const TOO_MANY_REQUESTS: &str = "TooManyRequests";
    /// The caller may not do this (403).
    pub const FORBIDDEN: &str = "Forbidden";
    /// The caller is not authenticated (401).
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The server failed (500).
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// The verb is not supported on this resource (405).
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    /// The request body's content type is not accepted (415).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UnsupportedMediaType";
    /// The request or the server timed out (504).
    pub const TIMEOUT: &str = "Timeout";
}

/// `Success` or `Failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum StatusOutcome {
    /// The operation succeeded.
    Success,
    /// The operation failed; `reason` and `code` say how.
    #[default]
    Failure,
}

/// One problem with a field, in `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct StatusCause {
    /// A machine-readable reason, e.g. `FieldValueInvalid`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What is wrong.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The field's path, e.g. `spec.replicas`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// Which object a [`Status`] is about, and field-level causes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct StatusDetails {
    /// The object's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The object's API group.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The object's kind (or, for NotFound and friends, its plural resource, as Kubernetes does).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The object's uid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The field-level problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// How long a client should wait before retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<i32>,
}

/// The body of every error response, and of some successes (Kubernetes `metav1.Status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Status {
    /// Always `v1`.
    pub api_version: String,
    /// Always `Status`.
    pub kind: String,
    /// Unused list metadata, present for wire compatibility.
    #[serde(skip_serializing_if = "crate::meta::is_default")]
    pub metadata: ListMeta,
    /// `Success` or `Failure`.
    pub status: StatusOutcome,
    /// What happened, for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What happened, for programs: one of [`reason`].
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Which object, and field-level causes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    pub code: i32,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            api_version: "v1".to_string(),
            kind: "Status".to_string(),
            metadata: ListMeta::default(),
            status: StatusOutcome::Failure,
            message: String::new(),
            reason: String::new(),
            details: None,
            code: 500,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{} ({})", self.reason, self.code)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for Status {}

fn failure(code: i32, reason: &str, message: String, details: Option<StatusDetails>) -> Status {
    Status {
        status: StatusOutcome::Failure,
        message,
        reason: reason.to_string(),
        details,
        code,
        ..Status::default()
    }
}

fn resource_details(resource: &GroupResource, name: &str) -> Option<StatusDetails> {
    Some(StatusDetails {
        name: name.to_string(),
        group: resource.group.clone(),
        kind: resource.resource.clone(),
        ..StatusDetails::default()
    })
}

/// Go's `%q` for the strings that appear in messages.
fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// Kubernetes' `utilerrors.NewAggregate(...).Error()`: one message alone, several in brackets.
fn aggregate(messages: &[String]) -> String {
    let mut seen: Vec<&String> = Vec::new();
    for m in messages {
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    match seen.as_slice() {
        [] => String::new(),
        [one] => (*one).clone(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl Status {
    /// A success (200), as returned by some deletes.
    pub fn success() -> Status {
        Status {
            status: StatusOutcome::Success,
            code: 200,
            ..Status::default()
        }
    }

    /// 404: `jobs.loom.dev "x" not found`.
    pub fn not_found(resource: &GroupResource, name: &str) -> Status {
        failure(
            404,
            reason::NOT_FOUND,
            format!("{resource} {} not found", quote(name)),
            resource_details(resource, name),
        )
    }

    /// 409: `jobs.loom.dev "x" already exists`.
    pub fn already_exists(resource: &GroupResource, name: &str) -> Status {
        failure(
            409,
            reason::ALREADY_EXISTS,
            format!("{resource} {} already exists", quote(name)),
            resource_details(resource, name),
        )
    }

    /// 409: `Operation cannot be fulfilled on jobs.loom.dev "x": <why>`.
    pub fn conflict(resource: &GroupResource, name: &str, why: &str) -> Status {
        failure(
            409,
            reason::CONFLICT,
            format!(
                "Operation cannot be fulfilled on {resource} {}: {why}",
                quote(name)
            ),
            resource_details(resource, name),
        )
    }

    /// 409 for a stale `resourceVersion` precondition, with Kubernetes' wording.
    pub fn conflict_modified(resource: &GroupResource, name: &str) -> Status {
        Status::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422: `Job.loom.dev "x" is invalid: spec.replicas: Invalid value: -1: must be greater
    /// than or equal to 0`, with one cause per field error.
    pub fn invalid(kind: &GroupKind, name: &str, errors: &[FieldError]) -> Status {
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let causes = errors
            .iter()
            .map(|e| StatusCause {
                reason: e.kind.cause_reason().to_string(),
                message: e.body(),
                field: e.field.clone(),
            })
            .collect();
        failure(
            422,
            reason::INVALID,
            format!(
                "{kind} {} is invalid: {}",
                quote(name),
                aggregate(&messages)
            ),
            Some(StatusDetails {
                name: name.to_string(),
                group: kind.group.clone(),
                kind: kind.kind.clone(),
                causes,
                ..StatusDetails::default()
            }),
        )
    }

    /// 400 with the given message.
    pub fn bad_request(message: impl Into<String>) -> Status {
        failure(400, reason::BAD_REQUEST, message.into(), None)
    }

    /// 410 Gone with the given message.
    pub fn gone(message: impl Into<String>) -> Status {
        failure(410, reason::GONE, message.into(), None)
    }

    /// 410 Expired with the given message (Kubernetes' `NewResourceExpired`).
    pub fn expired(message: impl Into<String>) -> Status {
        failure(410, reason::EXPIRED, message.into(), None)
    }

    /// 410 `Expired` for a watch from a revision the watch cache no longer
    /// holds: `too old resource version: 5 (120)`, as Kubernetes' cacher says it.
    pub fn too_old_resource_version(requested: i64, oldest: i64) -> Status {
        Status::expired(format!("too old resource version: {requested} ({oldest})"))
    }

    /// 413: `Request entity too large: <message>`.
    pub fn request_entity_too_large(message: &str) -> Status {
        failure(
            413,
            reason::REQUEST_ENTITY_TOO_LARGE,
            format!("Request entity too large: {message}"),
            None,
        )
    }

    /// 429 with the given message and a retry hint.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: i32) -> Status {
        failure(
            429,
            reason::TOO_MANY_REQUESTS,
            message.into(),
            Some(StatusDetails {
                retry_after_seconds: Some(retry_after_seconds),
                ..StatusDetails::default()
            }),
        )
    }

    /// 403: `jobs.loom.dev "x" is forbidden: <why>` (without a name: `jobs.loom.dev is
    /// forbidden: <why>`; without a resource: `forbidden: <why>`).
    pub fn forbidden(resource: &GroupResource, name: &str, why: &str) -> Status {
        let message = if resource.resource.is_empty() && resource.group.is_empty() {
            format!("forbidden: {why}")
        } else if name.is_empty() {
            format!("{resource} is forbidden: {why}")
        } else {
            format!("{resource} {} is forbidden: {why}", quote(name))
        };
        failure(
            403,
            reason::FORBIDDEN,
            message,
            resource_details(resource, name),
        )
    }

    /// 401 with the given message (`not authorized` when empty).
    pub fn unauthorized(message: &str) -> Status {
        let message = if message.is_empty() {
            "not authorized".to_string()
        } else {
            message.to_string()
        };
        failure(401, reason::UNAUTHORIZED, message, None)
    }

    /// 500: `Internal error occurred: <error>`.
    pub fn internal_error(error: &str) -> Status {
        failure(
            500,
            reason::INTERNAL_ERROR,
            format!("Internal error occurred: {error}"),
            Some(StatusDetails {
                causes: vec![StatusCause {
                    message: error.to_string(),
                    ..StatusCause::default()
                }],
                ..StatusDetails::default()
            }),
        )
    }

    /// 405: `<verb> is not supported on resources of kind "jobs.loom.dev"`.
    pub fn method_not_allowed(resource: &GroupResource, verb: &str) -> Status {
        failure(
            405,
            reason::METHOD_NOT_ALLOWED,
            format!(
                "{verb} is not supported on resources of kind {}",
                quote(&resource.to_string())
            ),
            Some(StatusDetails {
                group: resource.group.clone(),
                kind: resource.resource.clone(),
                ..StatusDetails::default()
            }),
        )
    }

    /// 415: `the body of the request was in an unknown format - accepted media types include:
    /// application/json, …`.
    pub fn unsupported_media_type(accepted: &[&str]) -> Status {
        failure(
            415,
            reason::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
            None,
        )
    }

    /// 504 with the given message.
    pub fn timeout(message: impl Into<String>) -> Status {
        failure(504, reason::TIMEOUT, message.into(), None)
    }

    /// Whether the reason is `NotFound`.
    pub fn is_not_found(&self) -> bool {
        self.reason == reason::NOT_FOUND
    }

    /// Whether the reason is `AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        self.reason == reason::ALREADY_EXISTS
    }

    /// Whether the reason is `Conflict`.
    pub fn is_conflict(&self) -> bool {
        self.reason == reason::CONFLICT
    }

    /// Whether the requested revision is gone (code 410), so a watcher must relist.
    pub fn is_gone(&self) -> bool {
        self.code == 410
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jobs() -> GroupResource {
        GroupResource::new("loom.dev", "jobs")
    }

    #[test]
    fn not_found_matches_kubernetes() {
        let s = Status::not_found(&jobs(), "x");
        assert_eq!(s.message, r#"jobs.loom.dev "x" not found"#);
        assert_eq!(s.code, 404);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Status",
                "status": "Failure",
                "message": "jobs.loom.dev \"x\" not found",
                "reason": "NotFound",
                "details": {"name": "x", "group": "loom.dev", "kind": "jobs"},
                "code": 404
            })
        );
    }

    #[test]
    fn invalid_lists_causes() {
        let one = FieldError::invalid("spec.replicas", -1, "must be greater than or equal to 0");
        let s = Status::invalid(
            &GroupKind::new("loom.dev", "Job"),
            "x",
            std::slice::from_ref(&one),
        );
        assert_eq!(
            s.message,
            r#"Job.loom.dev "x" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"#
        );
        assert_eq!(s.code, 422);
        let details = s.details.unwrap();
        assert_eq!(details.kind, "Job");
        assert_eq!(
            details.causes,
            vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: -1: must be greater than or equal to 0".into(),
                field: "spec.replicas".into(),
            }]
        );
        let two = FieldError::required("spec.image", "");
        let s = Status::invalid(&GroupKind::new("loom.dev", "Task"), "t", &[one, two]);
        assert_eq!(
            s.message,
            r#"Task.loom.dev "t" is invalid: [spec.replicas: Invalid value: -1: must be greater than or equal to 0, spec.image: Required value]"#
        );
    }

    #[test]
    fn other_constructors() {
        let cases = [
            (
                Status::already_exists(&jobs(), "x"),
                409,
                "AlreadyExists",
                r#"jobs.loom.dev "x" already exists"#,
            ),
            (
                Status::conflict_modified(&jobs(), "x"),
                409,
                "Conflict",
                r#"Operation cannot be fulfilled on jobs.loom.dev "x": the object has been modified; please apply your changes to the latest version and try again"#,
            ),
            (Status::bad_request("bad"), 400, "BadRequest", "bad"),
            (
                Status::too_old_resource_version(5, 10),
                410,
                "Expired",
                "too old resource version: 5 (10)",
            ),
            (Status::expired("old"), 410, "Expired", "old"),
            (
                Status::request_entity_too_large("limit is 3145728"),
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            ),
            (
                Status::too_many_requests("slow down", 1),
                429,
                "TooManyRequests",
                "slow down",
            ),
            (
                Status::forbidden(&jobs(), "x", "no"),
                403,
                "Forbidden",
                r#"jobs.loom.dev "x" is forbidden: no"#,
            ),
            (
                Status::forbidden(&jobs(), "", "no"),
                403,
                "Forbidden",
                "jobs.loom.dev is forbidden: no",
            ),
            (
                Status::forbidden(&GroupResource::default(), "", "no"),
                403,
                "Forbidden",
                "forbidden: no",
            ),
            (
                Status::unauthorized(""),
                401,
                "Unauthorized",
                "not authorized",
            ),
            (
                Status::internal_error("boom"),
                500,
                "InternalError",
                "Internal error occurred: boom",
            ),
            (
                Status::method_not_allowed(&jobs(), "deletecollection"),
                405,
                "MethodNotAllowed",
                r#"deletecollection is not supported on resources of kind "jobs.loom.dev""#,
            ),
            (
                Status::unsupported_media_type(&["application/json", "application/yaml"]),
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
            ),
        ];
        for (status, code, reason, message) in cases {
            assert_eq!(status.code, code, "{message}");
            assert_eq!(status.reason, reason);
            assert_eq!(status.message, message);
            assert_eq!(status.to_string(), message);
            let back: Status =
                serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
            assert_eq!(back, status);
        }
        assert_eq!(
            Status::too_many_requests("x", 3)
                .details
                .unwrap()
                .retry_after_seconds,
            Some(3)
        );
        assert!(Status::too_old_resource_version(1, 2).is_gone());
        assert!(Status::not_found(&jobs(), "a").is_not_found());
    }
}
