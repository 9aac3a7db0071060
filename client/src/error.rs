//! What a client call can fail with.

use api_types::Status;

/// The result type of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error `Status`.
    #[error("{}", .0.message)]
    Api(Box<Status>),
    /// The request did not get an answer (connection, timeout, body).
    #[error("request to the API failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The answer was not what the API sends.
    #[error("cannot decode the API's answer: {0}")]
    Decode(String),
    /// The client's configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// The API's Status, if the API answered.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Api(status) => Some(status),
            _ => None,
        }
    }

    /// The HTTP code of an API error.
    pub fn code(&self) -> Option<i32> {
        self.status().map(|s| s.code)
    }

    /// 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// 409 Conflict (a stale resourceVersion, or AlreadyExists).
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    /// 410 Gone: the resourceVersion is too old; relist.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }

    /// Worth retrying: the request may not have been served.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
            Error::Http(error) => error.is_connect() || error.is_timeout() || error.is_request(),
            Error::Decode(_) | Error::Config(_) => false,
        }
    }
}
