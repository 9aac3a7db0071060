//! The HTTP client under every `Api`: requests, Status errors, retries with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
pub use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::{Error, Result};

/// A connection to an API server; cheap to clone. The config's `server` may list
/// several API servers of one cluster, comma-separated: requests go to one of them
/// and move to the next when it cannot be reached.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    config: Config,
    servers: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
}

/// A request body and its content type.
#[derive(Clone, Debug)]
pub struct Body {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub bytes: Bytes,
}

impl Client {
    /// A client for `config`.
    pub fn new(config: Config) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("loom-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &config.tls {
            builder = builder.use_preconfigured_tls(tls.rustls()?);
        }
        let http = builder.build()?;
        let servers: Vec<String> = config
            .server
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let servers = if servers.is_empty() {
            vec![config.server.clone()]
        } else {
            servers
        };
        Ok(Client {
            http,
            config,
            servers: Arc::new(servers),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The API server requests go to now.
    pub fn server(&self) -> &str {
        let index = self.current.load(Ordering::Relaxed) % self.servers.len();
        &self.servers[index]
    }

    /// After `server` could not be reached: use the next one (once, however many
    /// requests failed on it at the same time).
    fn fail_over(&self, server: &str) {
        if self.servers.len() < 2 {
            return;
        }
        let index = self.current.load(Ordering::Relaxed);
        if self.servers[index % self.servers.len()] == server {
            let _ = self.current.compare_exchange(
                index,
                index.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tracing::warn!(
                unreachable = server,
                next = self.server(),
                "API server unreachable; failing over"
            );
        }
    }

    /// Sends with failover: a request that could not connect is tried on the
    /// other servers (it never reached the first, so it is safe to repeat).
    async fn send_with_failover<F>(&self, build: F) -> Result<reqwest::Response>
    where
        F: Fn(&str) -> reqwest::RequestBuilder,
    {
        let mut tries = 0;
        loop {
            let server = self.server().to_owned();
            match build(&server).send().await {
                Err(error) if error.is_connect() && tries + 1 < self.servers.len() => {
                    self.fail_over(&server);
                    tries += 1;
                }
                Err(error) => {
                    if error.is_connect() {
                        self.fail_over(&server);
                    }
                    return Err(error.into());
                }
                Ok(response) => return Ok(response),
            }
        }
    }

    /// A client for the config `Config::infer` finds.
    pub fn infer() -> Result<Self> {
        Self::new(Config::infer()?)
    }

    /// A client for `server` with the default settings.
    pub fn for_server(server: &str) -> Result<Self> {
        Self::new(Config::new(server))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The default namespace.
    pub fn default_namespace(&self) -> &str {
        &self.config.namespace
    }

    /// Sends a request and decodes a JSON answer; retries transient failures of
    /// requests that may be repeated (reads, and writes the server refused unserved).
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<T> {
        let bytes = self.request_bytes(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    /// As [`Client::request`], the raw answer.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Bytes> {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let result = self.send_once(method.clone(), path, body.clone()).await;
            match result {
                Err(error)
                    if attempt < self.config.retries && retry_allowed(&error, idempotent) =>
                {
                    tracing::debug!(%error, path, attempt, "transient API error; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn send_once(&self, method: Method, path: &str, body: Option<Body>) -> Result<Bytes> {
        let response = self
            .send_with_failover(|server| {
                let mut request = self
                    .http
                    .request(method.clone(), format!("{server}{path}"))
                    .timeout(self.config.timeout);
                if let Some(body) = &body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, body.content_type)
                        .body(body.bytes.clone());
                }
                request
            })
            .await?;
        let code = response.status();
        let bytes = response.bytes().await?;
        if code.is_success() {
            return Ok(bytes);
        }
        Err(status_error(code.as_u16(), &bytes))
    }

    /// A GET with an `Accept` header (e.g. a server-side Table), decoded.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str, accept: &str) -> Result<T> {
        let response = self
            .send_with_failover(|server| {
                self.http
                    .get(format!("{server}{path}"))
                    .header(reqwest::header::ACCEPT, accept)
                    .timeout(self.config.timeout)
            })
            .await?;
        let code = response.status();
        let bytes = response.bytes().await?;
        if !code.is_success() {
            return Err(status_error(code.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    /// Opens a streaming GET (watch, logs): the answer's body as it arrives.
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static + use<>> {
        self.stream_as(path, "application/json").await
    }

    /// As [`Client::stream`], asking for `accept` (e.g. a Table per event).
    pub async fn stream_as(
        &self,
        path: &str,
        accept: &str,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static + use<>> {
        let response = self
            .send_with_failover(|server| {
                self.http
                    .get(format!("{server}{path}"))
                    .header(reqwest::header::ACCEPT, accept)
            })
            .await?;
        let code = response.status();
        if !code.is_success() {
            let bytes = response.bytes().await?;
            return Err(status_error(code.as_u16(), &bytes));
        }
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(Error::from)))
    }
}

/// Whether a failed request may be sent again: connection failures never reached
/// the server; 429 and 503 were refused unserved; other transient failures only
/// for requests that are safe to repeat.
fn retry_allowed(error: &Error, idempotent: bool) -> bool {
    match error {
        Error::Http(e) if e.is_connect() => true,
        Error::Api(status) if matches!(status.code, 429 | 503) => true,
        error => idempotent && error.is_transient(),
    }
}

/// The error for a non-2xx answer: its Status, or one made from the code.
fn status_error(code: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<api_types::Status>(body) {
        Ok(status) if status.kind == "Status" => Error::Api(Box::new(status)),
        _ => {
            let mut status = api_types::Status::internal_error(&String::from_utf8_lossy(body));
            status.code = i32::from(code);
            Error::Api(Box::new(status))
        }
    }
}
