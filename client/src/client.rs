//! The HTTP client under every `Api`: requests, Status errors, retries with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
pub use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::config::{Auth, Config};
use crate::error::{Error, Result};

/// How often a token file is re-read: service-account tokens rotate.
const TOKEN_FILE_REFRESH: Duration = Duration::from_secs(60);

/// A connection to an API server; cheap to clone. The config's `server` may list
/// several API servers of one cluster, comma-separated: requests go to one of them
/// and move to the next when it cannot be reached.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// The client of streams: no connection pool.
    streams: reqwest::Client,
    config: Config,
    servers: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    bearer: Option<Arc<Bearer>>,
}

/// The `Authorization: Bearer` header of a config's token, a token file's
/// re-read at most once a minute (and after a 401). Never printed by `Debug`.
struct Bearer {
    auth: Auth,
    cached: std::sync::Mutex<Option<(reqwest::header::HeaderValue, std::time::Instant)>>,
    /// Set by a 401: re-read before the minute is up.
    stale: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer").field("auth", &self.auth).finish()
    }
}

impl Bearer {
    fn new(auth: Auth) -> Result<Self> {
        let bearer = Bearer {
            auth,
            cached: std::sync::Mutex::new(None),
            stale: std::sync::atomic::AtomicBool::new(false),
        };
        bearer.header()?;
        Ok(bearer)
    }

    fn value(token: &str) -> Result<reqwest::header::HeaderValue> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| {
                Error::Config("the bearer token has characters a header cannot carry".to_owned())
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The header to send now.
    fn header(&self) -> Result<reqwest::header::HeaderValue> {
        let path = match &self.auth {
            Auth::Token(token) => return Self::value(token),
            Auth::TokenFile(path) => path,
        };
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((value, read)) = &*cached
            && read.elapsed() < TOKEN_FILE_REFRESH
            && !self.stale.load(Ordering::Relaxed)
        {
            return Ok(value.clone());
        }
        let token = std::fs::read_to_string(path).and_then(|token| match token.trim() {
            "" => Err(std::io::Error::other("the file is empty")),
            _ => Ok(token),
        });
        match (token, &*cached) {
            (Ok(token), _) => {
                let value = Self::value(&token)?;
                *cached = Some((value.clone(), std::time::Instant::now()));
                self.stale.store(false, Ordering::Relaxed);
                Ok(value)
            }
            // Keep the last token until the file is readable again.
            (Err(error), Some((value, _))) => {
                tracing::warn!(%error, file = %path.display(), "cannot re-read the token file; using the last token");
                Ok(value.clone())
            }
            (Err(error), None) => Err(Error::Config(format!(
                "cannot read the token file {}: {error}",
                path.display()
            ))),
        }
    }

    /// After a 401: the token may have rotated; read the file at the next request.
    fn expire(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }
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
        let tls = match &config.tls {
            Some(tls) => tls.rustls_for(config.tls_server_name.as_deref())?,
            None => crate::config::rustls_trusting_nothing()?,
        };
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("loom-client/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(5))
                // A pooled connection idle this long is not trusted again (a
                // partition may have left it open and dead).
                .pool_idle_timeout(Duration::from_secs(30))
                .use_preconfigured_tls(tls.clone())
        };
        let http = builder().build()?;
        // Streams (watches, logs) each get a connection of their own, never
        // pooled: one made again after its connection went silent must not
        // be handed another that went silent with it.
        let streams = builder().pool_max_idle_per_host(0).build()?;
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
        let bearer = match &config.auth {
            Some(auth) => Some(Arc::new(Bearer::new(auth.clone())?)),
            None => None,
        };
        Ok(Client {
            http,
            streams,
            config,
            servers: Arc::new(servers),
            current: Arc::new(AtomicUsize::new(0)),
            bearer,
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
                "API server unreachable or unable to serve; failing over"
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
            let mut request = build(&server);
            if let Some(bearer) = &self.bearer {
                request = request.header(reqwest::header::AUTHORIZATION, bearer.header()?);
            }
            match request.send().await {
                Err(error) if error.is_connect() && tries + 1 < self.servers.len() => {
                    self.fail_over(&server);
                    tries += 1;
                }
                Err(error) => {
                    // Unreachable, or reached but silent: later requests go
                    // to the next server (this one is not repeated here: it
                    // may have been served).
                    if error.is_connect() || error.is_timeout() {
                        self.fail_over(&server);
                    }
                    return Err(error.into());
                }
                Ok(response)
                    if matches!(
                        response.status(),
                        reqwest::StatusCode::SERVICE_UNAVAILABLE
                            | reqwest::StatusCode::GATEWAY_TIMEOUT
                    ) =>
                {
                    // The server answers but cannot serve (its store is
                    // unreachable, it is shutting down): later requests,
                    // and the retries of this one, go to the next.
                    self.fail_over(&server);
                    return Ok(response);
                }
                Ok(response) => {
                    if response.status() == reqwest::StatusCode::UNAUTHORIZED
                        && let Some(bearer) = &self.bearer
                    {
                        bearer.expire();
                    }
                    return Ok(response);
                }
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
        // The body streams for as long as it lasts, but its headers must
        // come within the request timeout: a server reached over a link that
        // went silent would otherwise be waited for without end.
        let response = tokio::time::timeout(
            self.config.timeout,
            self.send_with_failover(|server| {
                self.streams
                    .get(format!("{server}{path}"))
                    .header(reqwest::header::ACCEPT, accept)
            }),
        )
        .await
        .map_err(|_| {
            let server = self.server().to_owned();
            self.fail_over(&server);
            Error::Api(Box::new(api_types::Status::timeout(format!(
                "{server} did not answer {path} within {} s",
                self.config.timeout.as_secs()
            ))))
        })??;
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
