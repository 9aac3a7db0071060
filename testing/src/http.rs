//! A plain JSON client of the HTTP API, for tests that check status codes and
//! bodies exactly as the server sends them (the typed client would hide both).
//! Its methods panic when the server cannot be reached: they are test steps.

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::TestServer;

/// Requests to one API server, answered as (status code, JSON body); a body that
/// is not JSON comes back as `{"raw": "…"}`.
#[derive(Clone, Debug)]
pub struct JsonClient {
    /// The HTTP client (for requests the helpers do not cover).
    pub http: reqwest::Client,
    /// `https://HOST:PORT` of the server.
    pub base: String,
}

impl JsonClient {
    /// A client of `server`.
    pub fn new(server: &TestServer) -> Self {
        JsonClient {
            http: server.http(),
            base: server.url.clone(),
        }
    }

    /// A client of `server` whose connections come from `local` (any 127.x
    /// address is this host), to act as another source address.
    pub fn from_address(server: &TestServer, local: IpAddr) -> Self {
        JsonClient {
            http: server
                .http_builder()
                .local_address(local)
                .build()
                .expect("an HTTP client"),
            base: server.url.clone(),
        }
    }

    /// Sends `body` (if any) as `content_type`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.header("Content-Type", content_type).body(body);
        }
        let response = request.send().await.expect("the API server answers");
        let code = response.status().as_u16();
        let bytes = response.bytes().await.expect("the API server's body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
        (code, value)
    }

    /// GET.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, "", None).await
    }

    /// POST of a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string().into_bytes();
        self.send(Method::POST, path, "application/json", Some(body))
            .await
    }

    /// PUT of a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string().into_bytes();
        self.send(Method::PUT, path, "application/json", Some(body))
            .await
    }

    /// PATCH with `content_type` (merge, JSON Patch, apply).
    pub async fn patch(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let body = body.as_bytes().to_vec();
        self.send(Method::PATCH, path, content_type, Some(body))
            .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(Method::DELETE, path, "", None).await
    }

    /// Opens a watch (`path` with `watch=true`), which must answer 200.
    pub async fn watch(&self, path: &str) -> WatchReader {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the API server answers");
        assert_eq!(response.status().as_u16(), 200);
        WatchReader {
            stream: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A watch response, read one event line at a time.
pub struct WatchReader {
    stream: ByteStream,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for WatchReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchReader")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl WatchReader {
    /// The next event line, within 10 s; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                return Some(serde_json::from_slice(&line).expect("a watch event is JSON"));
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(chunk)) => self
                    .buffer
                    .extend_from_slice(&chunk.expect("the watch stream's next chunk")),
                Ok(None) => return None,
                Err(_) => panic!("no watch event within 10 s"),
            }
        }
    }

    /// The next event that is not a bookmark.
    pub async fn next_change(&mut self) -> Value {
        loop {
            let event = self.next().await.expect("the watch ended");
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }
}
