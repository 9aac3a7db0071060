//! `GET /snapshot`: a consistent copy of the whole store, streamed to a
//! cluster administrator while the server keeps serving (`loom snapshot save`).
//!
//! The store takes the copy its own way (SQLite's online backup for the
//! embedded store, etcd's maintenance snapshot for etcd), so every key keeps
//! its revision and a store restored from it serves the same resourceVersions.
//! The path is a non-resource URL: only a user granted `get` on it (in the
//! bootstrap roles, `cluster-admin` alone, through `nonResourceURLs: ["*"]`)
//! may read it, and the default audit policy logs every request for it. A
//! snapshot holds every Secret and token of the cluster: keep it as safely.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api_types::Status;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};
use tokio::io::AsyncReadExt as _;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::http::{AppState, User};
use crate::store::Store;

/// Where the snapshot is served.
pub const SNAPSHOT_PATH: &str = "/snapshot";
/// The response header naming the backend (`embedded` or `etcd`).
pub const KIND_HEADER: &str = "loom-snapshot-kind";
/// The response header giving the store revision the snapshot holds.
pub const REVISION_HEADER: &str = "loom-snapshot-revision";

/// Bytes read from the copy at a time.
const CHUNK_BYTES: usize = 256 * 1024;

/// What the route shares: the store, and whether a snapshot is being taken
/// (one at a time per server: each is a copy of the whole store on disk).
#[derive(Clone, Debug)]
struct Snapshots {
    store: Arc<dyn Store>,
    taking: Arc<AtomicBool>,
}

/// Holds `taking` until the copy has been streamed (or the client left).
#[derive(Debug)]
struct Taking(Arc<AtomicBool>);

impl Taking {
    fn start(taking: &Arc<AtomicBool>) -> Option<Taking> {
        taking
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Taking(taking.clone()))
    }
}

impl Drop for Taking {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The snapshot route, behind the same authentication and authorization
/// layers as the rest of the API (merged into its router by `server::run`).
pub fn router(state: &AppState) -> Router {
    Router::new()
        .route(SNAPSHOT_PATH, get(serve).fallback(other_method))
        .layer(axum::middleware::from_fn_with_state(
            state.authorizer.clone(),
            crate::authz::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.authenticator.clone(),
            crate::authn::authenticate,
        ))
        .layer(Extension(state.authenticator.clone()))
        .with_state(Snapshots {
            store: state.api.store.clone(),
            taking: Arc::new(AtomicBool::new(false)),
        })
}

/// 405 for any method but GET (after authorization: a user who may not read
/// the snapshot learns nothing more).
async fn other_method(method: axum::http::Method) -> Response {
    let mut status = Status::bad_request(format!(
        "{method} is not supported on {SNAPSHOT_PATH}: GET it"
    ));
    status.code = 405;
    status.reason = api_types::status::reason::METHOD_NOT_ALLOWED.to_owned();
    ApiError::from(status).into_response()
}

async fn serve(State(snapshots): State<Snapshots>, user: Option<Extension<User>>) -> Response {
    let user = user.map(|Extension(user)| user.name).unwrap_or_default();
    let Some(taking) = Taking::start(&snapshots.taking) else {
        return ApiError::from(Status::too_many_requests(
            "a snapshot is being taken already: try again when it is done",
            10,
        ))
        .into_response();
    };
    let snapshot = match snapshots.store.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            warn!(%error, %user, "snapshot failed");
            return ApiError::from(Status::internal_error(&format!(
                "cannot take a snapshot: {error}"
            )))
            .into_response();
        }
    };
    info!(
        %user,
        kind = %snapshot.kind,
        revision = snapshot.revision,
        bytes = snapshot.size,
        "snapshot taken; streaming it"
    );
    let file = tokio::fs::File::from_std(snapshot.file);
    let chunks = futures::stream::unfold(Some((file, taking)), |state| async move {
        let (mut file, taking) = state?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(Bytes::from(buffer)), Some((file, taking))))
            }
            // The client sees a cut body (shorter than Content-Length) and
            // the copy's own checks fail: never a silently short snapshot.
            Err(error) => Some((Err(error), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(snapshot.size));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(KIND_HEADER, HeaderValue::from_static(snapshot.kind.name()));
    headers.insert(REVISION_HEADER, HeaderValue::from(snapshot.revision));
    response
}
