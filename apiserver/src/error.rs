//! The API's one error type: a Kubernetes `Status` body with its HTTP code, mapped in one place.

use api_types::{GroupResource, Status};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store;

/// An error answer: the `Status` the client receives (its message, when shown).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.message)]
pub struct ApiError(pub Box<Status>);

/// The result type of API operations.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError(Box::new(Status::bad_request(message)))
    }

    /// 500 Internal Error.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError(Box::new(Status::internal_error(&message.to_string())))
    }

    /// 404 for a path that names no resource.
    pub fn no_route(path: &str) -> Self {
        let mut status = Status::not_found(&GroupResource::new("", ""), "");
        status.message = format!("the server could not find the requested resource ({path})");
        status.details = None;
        ApiError(Box::new(status))
    }

    /// Maps a store error on the object `name` of `resource`.
    pub fn from_store(error: store::Error, resource: &GroupResource, name: &str) -> Self {
        let status = match error {
            store::Error::NotFound { .. } => Status::not_found(resource, name),
            store::Error::AlreadyExists { .. } => Status::already_exists(resource, name),
            store::Error::Conflict { .. } => Status::conflict_modified(resource, name),
            // Only a list reads at a revision from the store (watches start in the
            // watch cache): Kubernetes' etcd3 store says it this way.
            store::Error::Compacted { .. } => {
                Status::expired("The resourceVersion for the provided list is too old.")
            }
            store::Error::FutureRevision { requested, current } => {
                let mut status = Status::timeout(format!(
                    "Too large resource version: {requested}, current: {current}"
                ));
                status.code = 504;
                status
            }
            store::Error::ValueTooLarge { size, limit, .. } => Status::request_entity_too_large(
                &format!("the object is {size} bytes once stored, over the limit of {limit} bytes"),
            ),
            store::Error::InvalidContinue(why) => {
                Status::bad_request(format!("invalid continue token: {why}"))
            }
            store::Error::Backend(why) => Status::internal_error(&format!("storage: {why}")),
            // Kubernetes' answer to an unreachable store: a server timeout
            // with a hint to retry (the request may or may not have been
            // applied, so clients repeat only what is safe to repeat).
            store::Error::Unavailable(why) => {
                let mut status = Status::timeout(format!(
                    "the request could not be completed at this time, please try again: the store did not answer ({why})"
                ));
                status.reason = "ServerTimeout".to_owned();
                status.details = Some(api_types::StatusDetails {
                    name: name.to_owned(),
                    group: resource.group.clone(),
                    kind: resource.resource.clone(),
                    retry_after_seconds: Some(2),
                    ..api_types::StatusDetails::default()
                });
                status
            }
        };
        ApiError(Box::new(status))
    }

    /// The HTTP code.
    pub fn code(&self) -> u16 {
        u16::try_from(self.0.code).unwrap_or(500)
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        ApiError(Box::new(status))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let retry_after = self
            .0
            .details
            .as_ref()
            .and_then(|d| d.retry_after_seconds)
            .filter(|seconds| *seconds > 0);
        let mut response = (code, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // As Kubernetes, a Status that says when to retry says it in the header too.
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
