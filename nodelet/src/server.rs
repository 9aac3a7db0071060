//! The nodelet's HTTP endpoint: task logs (what the apiserver proxies for
//! `GET /api/v1/namespaces/NS/tasks/NAME/log`), health and metrics, and over
//! TLS the check of who calls it.

use std::sync::Arc;
use std::time::Duration;

use api_types::Task;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use client::reflector::{ObjectKey, Store};
use serde::Deserialize;

use crate::logfile;
use crate::tasks::Ctx;

pub mod caller_auth;

pub use caller_auth::CallerAuth;

/// What the endpoint needs.
#[derive(Clone)]
#[allow(missing_debug_implementations)]
pub struct ServerState {
    /// The actors' shared context.
    pub ctx: Arc<Ctx>,
    /// The tasks of this node.
    pub tasks: Store<Task>,
}

/// The query of a log request.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    /// Keep the stream open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
    /// Only the last lines.
    pub tail_lines: Option<usize>,
}

/// The router.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/logs/{namespace}/{name}", get(logs))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Who may call an endpoint served over TLS without a review: users named
/// by client certificates of the cluster CA (the TLS layer verified the
/// chain). Any other caller is asked about (see [`caller_auth`]).
#[derive(Clone, Debug)]
pub struct Callers {
    /// The users let in at once (the API server's, `system:loom-apiserver`,
    /// which authorized the request it proxies).
    pub users: Vec<String>,
}

/// The API server's user when it calls nodelets (its client certificate's CN).
pub const API_SERVER_USER: &str = "system:loom-apiserver";

/// [`router`] behind the caller check, whatever the path but `/healthz`:
/// `callers` at once, anyone else authenticated and authorized by the API
/// server through the node's client, with the default cache settings.
pub fn secure_router(state: ServerState, callers: Callers) -> Router {
    let auth = CallerAuth::new(
        state.ctx.client.clone(),
        callers.users,
        caller_auth::Settings::default(),
    );
    secure_router_with(state, Arc::new(auth))
}

/// [`router`] behind `auth`: no credential, or one naming no one, is a 401;
/// a caller the API server does not allow a 403; a review that cannot be
/// made a 503.
pub fn secure_router_with(state: ServerState, auth: Arc<CallerAuth>) -> Router {
    router(state).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let auth = auth.clone();
            async move {
                if request.uri().path() == "/healthz" {
                    return next.run(request).await;
                }
                let peer = request
                    .extensions()
                    .get::<loom_listener::tls::PeerCertificates>();
                let checked = auth
                    .check(
                        request.method(),
                        request.uri().path(),
                        request.headers(),
                        peer,
                    )
                    .await;
                match checked {
                    Ok(()) => next.run(request).await,
                    Err(refusal) => refusal.into_response(),
                }
            }
        },
    ))
}

async fn metrics(State(state): State<ServerState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ctx.metrics.encode(),
    )
        .into_response()
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn logs(
    State(state): State<ServerState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let Some(task) = state.tasks.get(&ObjectKey::new(&namespace, &name)) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "task {namespace}/{name} is not on node {}",
                state.ctx.config.name
            ),
        );
    };
    // The node chose the path (tasks name only a file in their own log
    // directory) and reads only regular files, never through a link, at most a
    // whole log's worth: the current file and its rotated part.
    let path = state.ctx.log_path(&task);
    let max = state.ctx.config.log_max_bytes.saturating_mul(2);
    let head = match query.tail_lines {
        Some(lines) => match logfile::read_all(&path, max) {
            Ok(all) => logfile::tail(&all, lines).to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return cannot_read(e),
        },
        None if !query.follow => {
            return match logfile::stream(&path, max) {
                Ok(stream) => Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|_| {
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot stream".into())
                    }),
                Err(e) => cannot_read(e),
            };
        }
        None => match logfile::read_all(&path, max) {
            Ok(all) => all,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return cannot_read(e),
        },
    };
    if !query.follow {
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], head).into_response();
    }
    // Follow from the end of the current file.
    let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut follower = logfile::Follower::new(&path, offset);
    let tasks = state.tasks.clone();
    let key = ObjectKey::new(&namespace, &name);
    let uid = task.metadata.uid.clone();
    let stream = async_stream_follow(head, move || {
        let chunk = follower.poll().unwrap_or_default();
        // The stream ends once the task is over (or gone) and nothing is left.
        let over = match tasks.get(&key) {
            Some(t) => {
                t.metadata.uid != uid || t.status.as_ref().is_some_and(|s| s.phase.is_terminal())
            }
            None => true,
        };
        (chunk, over)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot stream".into()))
}

fn cannot_read(error: std::io::Error) -> Response {
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot read the log: {error}"),
    )
}

/// A stream of the head, then of what `poll` returns every 100 ms until it
/// reports the end with nothing new.
fn async_stream_follow<F>(
    head: Vec<u8>,
    mut poll: F,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: FnMut() -> (Vec<u8>, bool) + Send + 'static,
{
    let first = futures::stream::once(async move { Ok(Bytes::from(head)) });
    let rest = futures::stream::unfold(false, move |done| {
        let (chunk, over) = if done { (Vec::new(), true) } else { poll() };
        async move {
            if done {
                return None;
            }
            if chunk.is_empty() {
                if over {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some((Ok(Bytes::new()), false));
            }
            // After the last data of a finished task, one more poll ends it.
            Some((Ok(Bytes::from(chunk)), false))
        }
    });
    futures::StreamExt::chain(first, rest)
}
