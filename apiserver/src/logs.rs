//! Task logs: the API server proxies `GET …/tasks/NAME/log` to the nodelet that
//! runs the task, at `{node.status.nodeletEndpoint}/logs/{namespace}/{task}`
//! with the same `follow` and `tailLines` parameters, streaming the answer back.
//!
//! A Node object is only what its nodelet reports, so the call goes only to
//! an endpoint that follows the rule of
//! [`api_types::validation::parse_nodelet_endpoint`] (checked again here, for
//! objects stored before the rule), never through a proxy, never after a
//! redirect, and never waits forever: connecting and the answer's headers have
//! deadlines, a whole log must keep coming and is bounded in size, and a
//! followed log lasts as long as the client stays.
//!
//! Over HTTPS the nodelet must prove it is the node the task is bound to: the
//! connection goes to the endpoint's address, but the certificate is checked
//! against the node's name (the TLS server name is `NAME`, which the
//! certificate must hold as `DNS:NAME`, chained to the cluster CA), and its
//! subject must be `system:node:NAME`. A node that reports another node's
//! address, or shows another node's certificate, is not believed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use api_types::{Node, Status};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{Stream, StreamExt};

use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::generic::GenericStore;

/// How long connecting to a nodelet may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a nodelet may take to answer with its headers.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole (not followed) log may pause between two chunks.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of a whole (not followed) log: the nodelet's own bound with
/// its default cap (the log and its rotated part, 10 MiB each).
pub const MAX_LOG_BYTES: u64 = 20 << 20;
/// The most bytes of a nodelet's error answer that are read.
const MAX_ERROR_BYTES: u64 = 64 << 10;

fn unavailable(message: String) -> ApiError {
    let mut status = Status::internal_error(&message);
    status.code = 503;
    status.reason = "ServiceUnavailable".to_owned();
    status.message = message;
    ApiError::from(status)
}

/// How the API server calls nodelets that serve TLS: the cluster CA their
/// serving certificates chain to, and the API server's own client certificate
/// (user `system:loom-apiserver`), the one caller nodelets let in.
#[derive(Clone)]
pub struct NodeletClientTls {
    /// PEM CA certificate(s).
    pub ca_pem: String,
    /// PEM client certificate.
    pub cert_pem: String,
    /// Its PEM private key.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeletClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeletClientTls").finish_non_exhaustive()
    }
}

/// How the API server calls nodelets: one client for plain-HTTP endpoints,
/// and for HTTPS ones a client made per call that reaches the endpoint's
/// address but checks the certificate against the node's name.
#[derive(Clone, Debug)]
pub struct NodeletClient {
    plain: reqwest::Client,
    tls: Option<NodeletClientTls>,
}

/// A client builder: no redirects, no proxy, a connect timeout, and `tls`
/// (a rustls client configuration of [`loom_listener::tls::client_config`]:
/// reqwest is built without a process-wide TLS provider).
fn builder(tls: impl std::any::Any) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// The client for nodelets: no redirects, no proxy, a connect timeout; over
/// TLS it trusts only `tls`'s CA and presents its certificate (without
/// `tls`, it trusts no server: only plain-HTTP nodelets are reached).
pub fn nodelet_client(tls: Option<&NodeletClientTls>) -> Result<NodeletClient, String> {
    // reqwest is built without a process-wide TLS provider, so it is given one.
    let config = loom_listener::tls::client_config(None, None)
        .map_err(|e| format!("the nodelet client: {e}"))?;
    if let Some(tls) = tls {
        // Checked now, so a bad file stops the server at start, not a call.
        loom_listener::tls::client_config(Some(&tls.ca_pem), Some((&tls.cert_pem, &tls.key_pem)))
            .map_err(|e| format!("the nodelet client: {e}"))?;
    }
    Ok(NodeletClient {
        plain: builder(config).build().map_err(|e| e.to_string())?,
        tls: tls.cloned(),
    })
}

/// Resolves the one name a call to a node may go to, the node's, to the
/// address its endpoint names, and nothing else (not even through DNS).
#[derive(Debug)]
struct OnlyNode {
    node: String,
    address: SocketAddr,
}

impl reqwest::dns::Resolve for OnlyNode {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let answer: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
            if name.as_str() == self.node {
                Ok(Box::new(std::iter::once(self.address)))
            } else {
                Err(format!("{:?} is not the node being called", name.as_str()).into())
            };
        Box::pin(std::future::ready(answer))
    }
}

impl NodeletClient {
    /// The client and base URL that reach node `node`'s nodelet at `address`:
    /// over HTTPS (`https`), a client whose one host name is the node's, so
    /// the certificate is checked against `DNS:NODE`; else the plain one.
    pub fn to_node(
        &self,
        node: &str,
        address: SocketAddr,
        https: bool,
    ) -> Result<(reqwest::Client, reqwest::Url), String> {
        if !https {
            let url =
                reqwest::Url::parse(&format!("http://{address}/")).map_err(|e| e.to_string())?;
            return Ok((self.plain.clone(), url));
        }
        let Some(tls) = &self.tls else {
            return Err(
                "this API server has no credential for nodelets serving HTTPS \
                 (--nodelet-client-certificate)"
                    .to_owned(),
            );
        };
        let url = reqwest::Url::parse(&format!("https://{node}:{}/", address.port()))
            .map_err(|e| format!("the node's name is not a host name: {e}"))?;
        // A name a URL reads as an address (`10.0.0.1`, `a.1`) would be
        // called as that address, and checked against it.
        if url.domain() != Some(node) {
            return Err(format!(
                "the node's name {node:?} is read as an address, not a host name its certificate can be checked against"
            ));
        }
        let config = loom_listener::tls::client_config(
            Some(&tls.ca_pem),
            Some((&tls.cert_pem, &tls.key_pem)),
        )
        .map_err(|e| format!("the nodelet client: {e}"))?;
        let client = builder(config)
            .dns_resolver(OnlyNode {
                node: node.to_owned(),
                address,
            })
            .tls_info(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok((client, url))
    }
}

/// Whether the certificate `response` came with is node `node`'s own: its
/// subject `system:node:NODE` (its name, `DNS:NODE`, was checked in the
/// handshake), or why not.
pub fn check_node_certificate(response: &reqwest::Response, node: &str) -> Result<(), String> {
    let der = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(reqwest::tls::TlsInfo::peer_certificate)
        .ok_or_else(|| "the nodelet showed no certificate".to_owned())?;
    let info = pki::CertInfo::from_der(der)?;
    let wanted = format!("{}{node}", crate::authz::node::NODE_USER_PREFIX);
    if info.common_name != wanted {
        return Err(format!(
            "its certificate is {:?}'s, not {wanted:?}'s",
            info.common_name
        ));
    }
    Ok(())
}

/// An error and its causes, `: `-separated (reqwest's own message hides why a
/// call failed, such as a certificate refused).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// Streams a task's log from its node.
pub async fn task_log(
    api: &GenericStore,
    tasks: &ServedResource,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let task = api.get(tasks, namespace, name).await?;
    let node_name = task
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "task {name:?} has no log yet: it is not bound to a node"
        )));
    }
    let nodes = api.catalog.builtin_resource::<Node>();
    let node = api.get(&nodes, "", node_name).await.map_err(|_| {
        unavailable(format!(
            "task {name:?} is bound to node {node_name:?}, which does not exist"
        ))
    })?;
    let endpoint = node
        .pointer("/status/nodeletEndpoint")
        .and_then(|e| e.as_str())
        .unwrap_or("");
    if endpoint.is_empty() {
        return Err(unavailable(format!(
            "node {node_name:?} does not serve logs (its nodelet reported no endpoint)"
        )));
    }
    let address = api_types::validation::parse_nodelet_endpoint(endpoint).map_err(|rule| {
        unavailable(format!(
            "node {node_name:?} does not serve logs: its status.nodeletEndpoint {endpoint:?} {rule}"
        ))
    })?;
    let follow = matches!(query.get("follow").map(String::as_str), Some("true" | "1"));
    let tail =
        match query.get("tailLines").filter(|t| !t.is_empty()) {
            Some(tail) => Some(tail.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("tailLines {tail:?} is not a number"))
            })?),
            None => None,
        };
    // Built from the parsed address and the stored names (DNS labels and
    // subdomains), so nothing in the Node or the request can add a path.
    let https = endpoint.starts_with("https://");
    let (client, mut url) = api
        .nodelet_client
        .to_node(node_name, address, https)
        .map_err(|why| unavailable(format!("cannot call the nodelet of {node_name:?}: {why}")))?;
    url.path_segments_mut()
        .map_err(|()| unavailable(format!("node {node_name:?}: not a base URL")))?
        .clear()
        .extend(["logs", namespace, name]);
    if follow {
        url.query_pairs_mut().append_pair("follow", "true");
    }
    if let Some(tail) = tail {
        url.query_pairs_mut()
            .append_pair("tailLines", &tail.to_string());
    }
    let cannot_reach = |why: String| {
        unavailable(format!(
            "cannot reach the nodelet of {node_name:?} at {address}: {why}"
        ))
    };
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, client.get(url).send())
        .await
        .map_err(|_| cannot_reach(format!("no answer within {} s", RESPONSE_TIMEOUT.as_secs())))?
        .map_err(|e| cannot_reach(with_causes(&e)))?;
    if https {
        check_node_certificate(&response, node_name).map_err(cannot_reach)?;
    }
    if !response.status().is_success() {
        // Redirects end here too: they are never followed.
        let code = response.status().as_u16();
        let bytes = read_capped(response.bytes_stream(), MAX_ERROR_BYTES).await;
        let text = String::from_utf8_lossy(&bytes);
        let mut status = Status::internal_error(&text);
        status.code = if (400..600).contains(&code) {
            i32::from(code)
        } else {
            502
        };
        status.message = format!(
            "the nodelet of {node_name:?} answered {code}: {}",
            text.trim()
        );
        return Err(ApiError::from(status));
    }
    let body = response.bytes_stream();
    let body = if follow {
        // No deadline: a followed log lasts while the client listens; when it
        // leaves, the body is dropped and with it the call to the nodelet.
        Body::from_stream(body.map(|chunk| chunk.map_err(std::io::Error::other)))
    } else {
        Body::from_stream(bounded(body, IDLE_TIMEOUT, MAX_LOG_BYTES))
    };
    let mut out = Response::new(body);
    *out.status_mut() = StatusCode::OK;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(out)
}

/// A body that must keep coming (a chunk at least every `idle`) and stay within
/// `max` bytes; past either, it ends with an error, so the client's read fails
/// rather than showing a log cut short as if it were whole.
fn bounded<S>(
    body: S,
    idle: Duration,
    max: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
{
    futures::stream::unfold(
        (body, 0u64, false),
        move |(mut body, seen, done)| async move {
            if done {
                return None;
            }
            let Ok(next) = tokio::time::timeout(idle, body.next()).await else {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the nodelet sent nothing for {} s", idle.as_secs()),
                );
                return Some((Err(e), (body, seen, true)));
            };
            match next {
                None => None,
                Some(Err(e)) => Some((Err(std::io::Error::other(e)), (body, seen, true))),
                Some(Ok(chunk)) => {
                    let seen = seen.saturating_add(chunk.len() as u64);
                    if seen > max {
                        let e =
                            std::io::Error::other(format!("the log is longer than {max} bytes"));
                        Some((Err(e), (body, seen, true)))
                    } else {
                        Some((Ok(chunk), (body, seen, false)))
                    }
                }
            }
        },
    )
}

/// At most `max` bytes of a body, each chunk within [`IDLE_TIMEOUT`]; what came
/// before an error or a pause.
async fn read_capped<S>(mut body: S, max: u64) -> Vec<u8>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    let mut out = Vec::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
        let room = usize::try_from(max).unwrap_or(usize::MAX) - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= max {
            break;
        }
    }
    out
}
