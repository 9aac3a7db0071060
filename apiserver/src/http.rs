//! The HTTP surface: paths parsed the Kubernetes way, content negotiation (JSON,
//! YAML, Tables), watch streams, and every error as a `Status`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::options::{
    DeleteOptions, INITIAL_EVENTS_END, ListOptions, WatchOptions, validate_list_send_initial_events,
};
use api_types::{FieldSelector, FieldValidation, Namespace, Selector};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::catalog::{Catalog, ServedResource};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::generic::{
    GenericStore, ListPage, ListQuery, Part, PatchKind, WriteOptions, watch_error_status,
    watch_from,
};
use crate::limits::{Limits, Permit, Requester};
use crate::metrics::{Metrics, ResourceLabels, resource_label};
use crate::registry::Column;
use crate::registry::SubresourceRequest;
use crate::watch_cache::{CachedObject, EventType, Filter, InitialEvents, WatchItem};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Objects a list response writes at a time.
const LIST_BATCH: usize = 512;
/// At most this many queued watch events are written as one chunk.
const WATCH_BATCH: usize = 256;

/// What every request handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Who each request is, established by the layer in front of the router.
    pub authenticator: Arc<crate::authn::Authenticator>,
    /// What each request may do, decided by the layer behind authentication.
    pub authorizer: Arc<crate::authz::Authorizer>,
    /// The verbs.
    pub api: Arc<GenericStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Watch slots and places in flight, per user and in all.
    pub limits: Arc<Limits>,
    /// A watch without `timeoutSeconds` ends after between this and twice this.
    pub min_watch_timeout: Duration,
    /// Time a client has to send a request's whole body.
    pub body_read_timeout: Duration,
}

/// Who made a request, as an authenticator established it.
///
/// The authenticating layer in front of [`router`] (before the admission
/// chain and every handler) inserts it as a request extension; a request
/// without one is [`User::anonymous`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// The user's name (`alice`, `system:node:a`,
    /// `system:serviceaccount:NAMESPACE:NAME`).
    pub name: String,
    /// A unique id for the user when the authenticator knows one (a service
    /// account's uid), else empty.
    pub uid: String,
    /// Its groups, `system:authenticated` included for every authenticated user.
    pub groups: Vec<String>,
    /// What else the authenticator knows (Kubernetes' `extra`).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl User {
    /// The user of a request no authenticator vouched for.
    pub fn anonymous() -> Self {
        User {
            name: "system:anonymous".to_owned(),
            groups: vec!["system:unauthenticated".to_owned()],
            ..User::default()
        }
    }
}

/// The address a request came from, set on each request by the listener.
pub use loom_listener::Peer;

/// How long a watch without `timeoutSeconds` lasts: `min` stretched by
/// `spread` in [0, 1], so between `min` and twice `min` (Kubernetes'
/// `minRequestTimeout * (1 + rand)`).
pub fn default_watch_timeout(min: Duration, spread: f64) -> Duration {
    min.mul_f64(1.0 + spread.clamp(0.0, 1.0))
}

/// A uniformly random number in [0, 1).
fn random_fraction() -> f64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    // A v4 uuid's bytes 6 and 8 carry its version and variant; the rest are random.
    let word = [
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[10], bytes[11],
    ];
    // 53 random bits fill an f64's mantissa exactly.
    (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64
}

/// The router of the whole API, behind the authentication layer.
pub fn router(state: AppState) -> Router {
    use crate::authn::{self, review};
    let authenticator = state.authenticator.clone();
    let authorizer = state.authorizer.clone();
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(healthy))
        .route("/livez", get(healthy))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api", get(api))
        .route("/api/{*rest}", any(core_request))
        .route(
            "/apis/authentication.k8s.io",
            get(|| async { json_response(StatusCode::OK, &review::group_document()) }),
        )
        .route(
            "/apis/authentication.k8s.io/v1",
            get(|| async { json_response(StatusCode::OK, &review::resource_list()) }),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            axum::routing::post(review::token_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            axum::routing::post(review::self_subject_review),
        )
        .route("/openapi/v3/api/v1", get(openapi_core_document))
        .route("/apis", get(apis))
        .route("/apis/", get(apis))
        .route("/apis/{*rest}", any(resource_request))
        .route("/openapi/v3", get(openapi_root))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi_document))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            let _ = method;
            ApiError::no_route(uri.path())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Authorization runs after authentication (layers added later run
        // first) and before any handler reads a body.
        .layer(axum::middleware::from_fn_with_state(
            authorizer,
            crate::authz::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            authenticator.clone(),
            authn::authenticate,
        ))
        .layer(Extension(authenticator))
        .with_state(state)
}

async fn openapi_core_document(State(state): State<AppState>) -> Response {
    match discovery::openapi_document(&state.api.catalog, "", "v1") {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => ApiError::no_route("/openapi/v3/api/v1").into_response(),
    }
}

/// An object of `res` as its path's version shows it: a kind stored at
/// another apiVersion (Namespace under `/api/v1`) carries the path's.
fn present(res: &ServedResource, mut object: Value) -> Value {
    if res.presents_other_version()
        && let Some(map) = object.as_object_mut()
    {
        map.insert("apiVersion".to_owned(), json!(res.info.api_version()));
    }
    if let Some(hook) = conversion(res) {
        hook.to_served(&mut object, &res.info.api_version());
    }
    object
}

/// The kind's conversion hook; `None` (every kind today) is the identity.
fn conversion(res: &ServedResource) -> Option<Arc<dyn crate::registry::conversion::Conversion>> {
    crate::registry::conversion::hook(&res.storage_group, &res.info.kind)
}

/// Whether responses differ from the stored bytes: another `apiVersion`, or
/// a conversion hook.
fn presents_other_form(res: &ServedResource) -> bool {
    res.presents_other_version() || conversion(res).is_some()
}

/// A create or update body as its kind stores it (its conversion hook's
/// `to_stored`), before validation and storage.
fn to_stored(res: &ServedResource, mut object: Value) -> ApiResult<Value> {
    if let Some(hook) = conversion(res) {
        hook.to_stored(
            &mut object,
            &res.info.api_version(),
            &res.stored_api_version,
        )
        .map_err(ApiError::bad_request)?;
    }
    Ok(object)
}

/// [`present`] on an object's stored bytes: stored objects' keys are sorted,
/// so `apiVersion` comes first and is swapped without parsing the object.
fn present_bytes(res: &ServedResource, bytes: Bytes) -> Bytes {
    let hooked = conversion(res).is_some();
    if !hooked && !res.presents_other_version() {
        return bytes;
    }
    let stored = format!("{{\"apiVersion\":{}", json!(res.stored_api_version));
    if !hooked && let Some(rest) = bytes.strip_prefix(stored.as_bytes()) {
        let served = format!("{{\"apiVersion\":{}", json!(res.info.api_version()));
        let mut out = Vec::with_capacity(served.len() + rest.len());
        out.extend_from_slice(served.as_bytes());
        out.extend_from_slice(rest);
        return Bytes::from(out);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => Bytes::from(serde_json::to_vec(&present(res, value)).unwrap_or_default()),
        Err(_) => bytes,
    }
}

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    bytes_response(code, "application/json", body.into())
}

fn bytes_response(code: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut response = (code, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "32",
            "gitVersion": format!("v1.32.0-loom.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

async fn healthy() -> &'static str {
    "ok"
}

/// How long `/readyz` waits for the store.
const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn ready(State(state): State<AppState>) -> Response {
    // The store answers (Kubernetes' `[+]etcd` check): an API server cut
    // from its store is taken out of rotation, not left answering 500s.
    match tokio::time::timeout(READY_STORE_TIMEOUT, state.api.store.current_revision()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store does not answer: {error}"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the store did not answer within {} s",
                    READY_STORE_TIMEOUT.as_secs()
                ),
            )
                .into_response();
        }
    }
    let unready: Vec<String> = state
        .api
        .catalog
        .resources()
        .iter()
        .filter(|r| !r.cache.is_ready())
        .map(|r| r.group_resource().to_string())
        .collect();
    if unready.is_empty() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("watch caches not ready: {}", unready.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render(&state.api.catalog).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Whether a discovery request asks for the aggregated form (kubectl and
/// kube-rs list it first in `Accept`, the legacy form after it).
fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=APIGroupDiscoveryList"))
}

fn aggregated_response(doc: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(doc).unwrap_or_default();
    bytes_response(
        StatusCode::OK,
        discovery::AGGREGATED_CONTENT_TYPE,
        body.into(),
    )
}

async fn api(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_response(&discovery::core_aggregated(&state.api.catalog));
    }
    json_response(
        StatusCode::OK,
        &discovery::core_versions(&state.api.catalog),
    )
}

async fn apis(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_response(&discovery::aggregated(&state.api.catalog));
    }
    json_response(StatusCode::OK, &discovery::group_list(&state.api.catalog))
}

async fn openapi_root(State(state): State<AppState>) -> Response {
    json_response(StatusCode::OK, &discovery::openapi_root(&state.api.catalog))
}

async fn openapi_document(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match discovery::openapi_document(&state.api.catalog, &group, &version) {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => ApiError::no_route(&format!("/openapi/v3/apis/{group}/{version}")).into_response(),
    }
}

/// A resource request, parsed from its path.
#[derive(Debug)]
struct Target {
    resource: Arc<ServedResource>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Parses `/apis/{group}/{version}/[namespaces/{ns}/]{plural}[/{name}[/{sub}]]`
/// the way Kubernetes does (`namespaces/{name}/status` is the namespace's status).
fn parse_target(catalog: &Catalog, parts: &[&str]) -> Result<Target, String> {
    let (group, version, mut rest) = match parts {
        [group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return Err("no resource in the path".to_owned()),
    };
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_owned());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err("too many path segments".to_owned()),
    };
    let resource = catalog.lookup(group, version, plural).ok_or_else(|| {
        format!("the server could not find the requested resource {plural}.{group}/{version}")
    })?;
    if resource.is::<Namespace>() {
        // `namespaces/{name}` names the namespace itself.
        namespace = None;
    }
    if namespace.is_some() && !resource.info.namespaced {
        return Err(format!(
            "{} is cluster-scoped and has no namespaced path",
            resource.group_resource()
        ));
    }
    if namespace.is_none() && resource.info.namespaced && name.is_some() {
        return Err(format!(
            "{} is namespaced: name it under /namespaces/{{namespace}}/",
            resource.group_resource()
        ));
    }
    Ok(Target {
        resource,
        namespace,
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

fn query_flag(query: &HashMap<String, String>, key: &str) -> bool {
    matches!(query.get(key).map(String::as_str), Some("true" | "1"))
}

pub(crate) fn write_options(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    default_manager: &str,
) -> ApiResult<WriteOptions> {
    let field_validation = match query.get("fieldValidation") {
        None => FieldValidation::Strict,
        Some(v) => FieldValidation::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "fieldValidation {v:?} is not supported: use Strict, Warn or Ignore"
            ))
        })?,
    };
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun {other:?} is not supported: use All"
            )));
        }
    };
    let field_manager = match query.get("fieldManager") {
        Some(m) if m.len() > 128 => {
            return Err(ApiError::bad_request(
                "fieldManager may not be longer than 128 characters",
            ));
        }
        Some(m) if !m.is_empty() => m.clone(),
        _ => {
            let agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|a| a.split('/').next())
                .filter(|a| !a.is_empty());
            agent.unwrap_or(default_manager).to_owned()
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_manager,
        field_validation,
        force: query_flag(query, "force"),
        applied: false,
    })
}

/// What a list of `resource` in `namespace` asks for, from its query
/// parameters, as a list request decodes them (for loom-fuzz).
#[doc(hidden)]
pub fn decode_list_query(
    resource: Arc<ServedResource>,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> ApiResult<ListQuery> {
    let target = Target {
        resource,
        namespace,
        name: None,
        subresource: None,
    };
    list_query(&target, query)
}

fn list_query(target: &Target, query: &HashMap<String, String>) -> ApiResult<ListQuery> {
    let options = ListOptions::from_query(|key| query.get(key).map(String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let labels = match &options.label_selector {
        Some(s) => Some(
            Selector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?,
        ),
        None => None,
    };
    let fields = match &options.field_selector {
        Some(s) => {
            let allowed = target.resource.selectable_fields();
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            Some(
                FieldSelector::parse_allowed(s, &allowed)
                    .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?,
            )
        }
        None => None,
    };
    Ok(ListQuery {
        filter: Filter {
            namespace: target.namespace.clone(),
            labels,
            fields,
        },
        resource_version: options.resource_version,
        resource_version_match: options.resource_version_match,
        limit: options.limit.map(|l| l as usize),
        continue_token: options.continue_token,
    })
}

pub(crate) fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

/// Parses a request body as JSON or YAML (by content type).
#[doc(hidden)] // pub for loom-fuzz
pub fn parse_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if body.is_empty() {
        return Err(ApiError::bad_request("the request has no body"));
    }
    let value = if content_type.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        api_types::decode::yaml_str_to_value(text)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))?
    } else if content_type.contains("json") {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    } else if content_type.starts_with(crate::protobuf::CONTENT_TYPE) {
        // kubectl's typed clients send core kinds so.
        crate::protobuf::decode(body).map_err(ApiError::bad_request)?
    } else {
        return Err(ApiError::from(api_types::Status::unsupported_media_type(
            &["application/json", "application/yaml"],
        )));
    };
    Ok(value)
}

fn verb_of(method: &Method, target: &Target, query: &HashMap<String, String>) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if query_flag(query, "watch") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    }
}

/// A request under `/api/` (the core group, `v1`): as a named group's, with
/// the empty group.
#[allow(clippy::too_many_arguments)]
async fn core_request(
    state: State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    user: Option<Extension<User>>,
    extensions: axum::http::Extensions,
    body: Body,
) -> Response {
    resource_request(
        state,
        method,
        Path(format!("{CORE_MARK}/{rest}")),
        query,
        headers,
        peer,
        user,
        extensions,
        body,
    )
    .await
}

/// Stands for the empty group in the path given to [`resource_request`] (a
/// group name never has a space).
const CORE_MARK: &str = " core";

// Each argument is an axum extractor.
#[allow(clippy::too_many_arguments)]
async fn resource_request(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    user: Option<Extension<User>>,
    extensions: axum::http::Extensions,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (root, rest) = match rest.strip_prefix(CORE_MARK) {
        Some(core) => ("/api", core.to_owned()),
        None => ("/apis", rest),
    };
    let mut parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if root == "/api" {
        parts.insert(0, "");
    }
    match parts.as_slice() {
        [group] if method == Method::GET => {
            return match discovery::group(&state.api.catalog, group) {
                Some(doc) => json_response(StatusCode::OK, &doc),
                None => ApiError::no_route(&format!("/apis/{group}")).into_response(),
            };
        }
        [group, version] if method == Method::GET => {
            return match discovery::resource_list(&state.api.catalog, group, version) {
                Some(doc) => json_response(StatusCode::OK, &doc),
                None => ApiError::no_route(&format!("/apis/{group}/{version}")).into_response(),
            };
        }
        _ => {}
    }
    let target = match parse_target(&state.api.catalog, &parts) {
        Ok(target) => target,
        Err(why) => {
            let mut error = ApiError::no_route(&format!("{root}/{}", rest.trim_start_matches('/')));
            error.0.message = why;
            return error.into_response();
        }
    };
    let verb = verb_of(&method, &target, &query);
    let resource_label =
        resource_label(&target.resource.info.plural, target.subresource.as_deref());
    let peer = peer.map(|Extension(Peer(address))| address.ip());
    let user = user.map(|Extension(user)| user);
    let requester = Requester::of(user.as_ref(), peer);
    let user = user.unwrap_or_else(User::anonymous);
    // Watches and followed logs hold a watch slot, or nothing, instead.
    let long_running = verb == "watch" || query_flag(&query, "follow");
    let mutating = matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    );
    // Every log line of the request, down to the admission steps and the
    // store, says who asked for what.
    let span = tracing::info_span!(
        "request",
        user = %user.name,
        verb,
        resource = %resource_label,
        namespace = target.namespace.as_deref().unwrap_or(""),
        name = target.name.as_deref().unwrap_or(""),
    );
    let response = async {
        match read_body(body, state.body_read_timeout).await {
            Err(error) => error.into_response(),
            Ok(body) => {
                // Counted once the body is in: a client sending its body slowly
                // holds its connection, not a place in flight.
                let _in_flight = if long_running {
                    None
                } else {
                    match state.limits.request(&requester, mutating) {
                        Ok(permit) => Some(permit),
                        Err(refusal) => return ApiError::from(refusal).into_response(),
                    }
                };
                match serve(
                    &state,
                    &method,
                    &target,
                    &query,
                    &headers,
                    &extensions,
                    &requester,
                    body,
                )
                .await
                {
                    Ok(response) => response,
                    Err(error) => error.into_response(),
                }
            }
        }
    }
    .instrument(span)
    .await;
    state.metrics.request(
        verb,
        &resource_label,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Reads a request body of at most `MAX_BODY_BYTES`, all of it within `timeout`
/// (a client trickling its body a byte at a time would otherwise hold the
/// request, and its connection, forever).
async fn read_body(body: Body, timeout: Duration) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::from(api_types::Status::request_entity_too_large(&format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        )))
    };
    // Read up to the limit even when Content-Length already says too much: a
    // refusal sent while the client is still writing its body would reach it as
    // a reset connection rather than a 413.
    let read = async {
        let mut stream = body.into_data_stream();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut length = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| {
                ApiError::bad_request(format!("cannot read the request body: {error}"))
            })?;
            length += chunk.len();
            if length > MAX_BODY_BYTES {
                return Err(too_large());
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) => {
            let mut status = api_types::Status::timeout(format!(
                "the request body was not received within {} s",
                timeout.as_secs_f64()
            ));
            status.code = 408;
            Err(ApiError::from(status))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &AppState,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    requester: &Requester,
    body: Bytes,
) -> ApiResult<Response> {
    let api = &state.api;
    let res = &*target.resource;
    let namespace = target.namespace.as_deref().unwrap_or("");
    if let (Some(sub), Some(name)) = (target.subresource.as_deref(), target.name.as_deref())
        && let Some(subresource) = res.subresource(sub)
    {
        return subresource
            .serve(SubresourceRequest {
                store: api,
                resource: res,
                method,
                namespace,
                name,
                query,
                headers,
                body,
                extensions,
            })
            .await;
    }
    let part = match target.subresource.as_deref() {
        None => Part::Main,
        Some("status") if res.info.has_status => Part::Status,
        Some(sub) => {
            return Err(ApiError::no_route(&format!("{}/{sub}", res.info.plural)));
        }
    };
    match (method.as_str(), target.name.as_deref()) {
        ("GET", None) => {
            let list = list_query(target, query)?;
            if query_flag(query, "watch") {
                return watch(state, target, query, headers, requester, list).await;
            }
            let errors = validate_list_send_initial_events(
                query.get("sendInitialEvents").map(String::as_str),
            );
            if !errors.is_empty() {
                return Err(list_options_invalid(&errors));
            }
            let page = api.list(res, list).await?;
            Ok(list_response(res, page, wants_table(headers)))
        }
        ("GET", Some(name)) => {
            let object = present(res, api.get(res, namespace, name).await?);
            if wants_table(headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &table(res, &[object], None, None),
                ));
            }
            Ok(json_response(StatusCode::OK, &object))
        }
        ("POST", None) => {
            if res.info.namespaced && target.namespace.is_none() {
                return Err(ApiError::bad_request(format!(
                    "{} is namespaced: create it under /namespaces/{{namespace}}/",
                    res.group_resource()
                )));
            }
            let options = write_options(query, headers, "loom")?;
            let object = to_stored(res, parse_body(headers, &body)?)?;
            let written = api
                .create(res, target.namespace.as_deref(), object, &options)
                .await?;
            Ok(written_response(
                StatusCode::CREATED,
                present(res, written.object),
                &written.warnings,
            ))
        }
        ("PUT", Some(name)) => {
            let options = write_options(query, headers, "loom")?;
            let object = to_stored(res, parse_body(headers, &body)?)?;
            let written = api
                .update(res, namespace, name, object, part, &options)
                .await?;
            Ok(written_response(
                StatusCode::OK,
                present(res, written.object),
                &written.warnings,
            ))
        }
        ("PATCH", Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = if content_type.starts_with("application/merge-patch+json") {
                PatchKind::Merge
            } else if content_type.starts_with("application/json-patch+json") {
                PatchKind::Json
            } else if content_type.starts_with("application/apply-patch+yaml") {
                PatchKind::Apply
            } else {
                return Err(ApiError::from(api_types::Status::unsupported_media_type(
                    &[
                        "application/merge-patch+json",
                        "application/json-patch+json",
                        "application/apply-patch+yaml",
                    ],
                )));
            };
            let manager = if kind == PatchKind::Apply { "" } else { "loom" };
            let options = write_options(query, headers, manager)?;
            let options = if kind == PatchKind::Apply {
                WriteOptions {
                    field_manager: query.get("fieldManager").cloned().unwrap_or_default(),
                    ..options
                }
            } else {
                options
            };
            let written = api
                .patch(res, namespace, name, kind, &body, part, &options)
                .await?;
            let code = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(written_response(
                code,
                present(res, written.object),
                &written.warnings,
            ))
        }
        ("DELETE", name) => {
            let mut options: DeleteOptions = if body.is_empty() {
                DeleteOptions::default()
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("the body is not valid DeleteOptions: {e}"))
                })?
            };
            if let Some(policy) = query.get("propagationPolicy") {
                options.propagation_policy = Some(policy.clone());
            }
            if query.get("dryRun").map(String::as_str) == Some("All") {
                options.dry_run = vec!["All".to_owned()];
            }
            match name {
                Some(name) => {
                    let object = api.delete(res, namespace, name, &options).await?;
                    Ok(json_response(StatusCode::OK, &present(res, object)))
                }
                None => {
                    let list = list_query(target, query)?;
                    let deleted = api.delete_collection(res, list, &options).await?;
                    Ok(items_response(res, &json!({}), deleted))
                }
            }
        }
        (other, _) => Err(ApiError::from(api_types::Status::method_not_allowed(
            &res.group_resource(),
            &other.to_lowercase(),
        ))),
    }
}

pub(crate) fn written_response(code: StatusCode, object: Value, warnings: &[String]) -> Response {
    let mut response = json_response(code, &object);
    for warning in warnings {
        let text = format!("299 - {:?}", warning.replace('"', "'"));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// A list as JSON, assembled from the objects' bytes without parsing them again.
fn list_response(res: &ServedResource, page: ListPage, as_table: bool) -> Response {
    if as_table {
        let objects: Vec<Value> = page
            .items
            .iter()
            .filter_map(|o| serde_json::from_slice(o).ok())
            .map(|o| present(res, o))
            .collect();
        return json_response(
            StatusCode::OK,
            &table(
                res,
                &objects,
                Some(page.revision),
                page.continue_token.as_deref(),
            ),
        );
    }
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        meta["continue"] = json!(token);
    }
    items_response(res, &meta, page.items)
}

/// A list of objects already serialized, written a few hundred at a time.
fn items_response(res: &ServedResource, meta: &Value, items: Vec<Bytes>) -> Response {
    let head = format!(
        "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{},\"items\":[",
        json!(res.info.api_version()),
        json!(res.info.list_kind),
        meta
    );
    // Streamed a few hundred objects at a time: a list of 100,000 objects is not
    // copied into one more buffer of its own size.
    let mut first = true;
    let items: Vec<Bytes> = if presents_other_form(res) {
        items.into_iter().map(|o| present_bytes(res, o)).collect()
    } else {
        items
    };
    let batches = futures::stream::iter(items)
        .chunks(LIST_BATCH)
        .map(move |batch| {
            let mut chunk = Vec::with_capacity(batch.iter().map(|o| o.len() + 1).sum());
            for item in batch {
                if !first {
                    chunk.push(b',');
                }
                first = false;
                chunk.extend_from_slice(&item);
            }
            Ok::<Bytes, Infallible>(Bytes::from(chunk))
        });
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(batches)
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]}"))
        }));
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A server-side Table (`kubectl get` columns) of objects.
fn table(
    res: &ServedResource,
    objects: &[Value],
    revision: Option<i64>,
    continue_token: Option<&str>,
) -> Value {
    let columns: Vec<Column> = res.strategy.columns();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            let mut d = json!({"name": c.name, "type": c.kind, "format": "", "description": c.description, "priority": c.priority});
            if c.name == "Name" {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(o)).collect();
            json!({"cells": cells, "object": o})
        })
        .collect();
    let mut meta = json!({});
    if let Some(revision) = revision {
        meta["resourceVersion"] = json!(revision.to_string());
    }
    if let Some(token) = continue_token {
        meta["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// Decrements the watcher gauge and gives back the watch slot when a watch stream ends.
struct WatcherGuard {
    metrics: Arc<Metrics>,
    labels: ResourceLabels,
    _slot: Permit,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.metrics.watchers.get_or_create(&self.labels).dec();
    }
}

async fn watch(
    state: &AppState,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    requester: &Requester,
    list: ListQuery,
) -> ApiResult<Response> {
    let res = target.resource.clone();
    let options = WatchOptions::from_query(|key| query.get(key).map(String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let errors = options.validate();
    if !errors.is_empty() {
        return Err(list_options_invalid(&errors));
    }
    let mut from = watch_from(list.resource_version.as_deref())?;
    let initial = match options.send_initial_events {
        None => InitialEvents::Unset,
        Some(true) => InitialEvents::Send,
        Some(false) => InitialEvents::Skip,
    };
    // Kubernetes' cacher: with sendInitialEvents and no resourceVersion the
    // watch starts from a state at least as new as the store's latest write
    // (a consistent read); `0` takes whatever the cache holds.
    if options.send_initial_events.is_some()
        && list.resource_version.as_deref().unwrap_or("").is_empty()
    {
        let latest = res
            .cache
            .store_revision()
            .await
            .map_err(|e| ApiError::from_store(e, &res.group_resource(), ""))?;
        from = Some(latest);
    }
    let bookmarks = options.bookmarks;
    let as_table = wants_table(headers);
    let timeout = match options.timeout_seconds {
        Some(seconds) => Duration::from_secs(u64::from(seconds)),
        None => default_watch_timeout(state.min_watch_timeout, random_fraction()),
    };
    // Taken before the watch starts (which may wait for the cache) and held by
    // the stream, so a watch counts until its connection lets go of it.
    let slot = state.limits.watch(requester)?;
    let started = match initial {
        InitialEvents::Unset => state.api.watch(&res, from, list.filter).await,
        _ => res.cache.watch_with(from, initial, list.filter).await,
    };
    let watch = match started {
        Ok(watch) => watch,
        Err(error) => {
            let status = watch_error_status(&error);
            // Kubernetes reports a watch that cannot start as an ERROR event in a 200 stream.
            let line = format!("{}\n", json!({"type": "ERROR", "object": status}));
            return Ok(bytes_response(
                StatusCode::OK,
                "application/json",
                line.into(),
            ));
        }
    };
    let labels = ResourceLabels {
        resource: res.group_resource().to_string(),
    };
    state.metrics.watchers.get_or_create(&labels).inc();
    let guard = WatcherGuard {
        metrics: state.metrics.clone(),
        labels,
        _slot: slot,
    };
    let items = futures::stream::iter(watch.initial)
        .chain(tokio_stream::wrappers::ReceiverStream::new(watch.live));
    let res_for_lines = res.clone();
    // Events already queued go out together: one chunk, one write.
    let lines = items.ready_chunks(WATCH_BATCH).filter_map(move |batch| {
        let _keep = &guard;
        let lines: Vec<Bytes> = batch
            .iter()
            .filter_map(|item| watch_line(&res_for_lines, item, bookmarks, as_table))
            .collect();
        let chunk = match lines.len() {
            0 => None,
            1 => lines.into_iter().next(),
            _ => Some(Bytes::from(lines.concat())),
        };
        async move { chunk.map(Ok::<Bytes, Infallible>) }
    });
    // At the timeout the stream ends: the chunked body is finished properly and
    // the client starts a new watch from its last resourceVersion.
    let body = Body::from_stream(lines.take_until(tokio::time::sleep(timeout)));
    let mut response = Response::new(body);
    let content_type = if as_table {
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

fn watch_line(
    res: &ServedResource,
    item: &WatchItem,
    bookmarks: bool,
    as_table: bool,
) -> Option<Bytes> {
    match item {
        WatchItem::Bookmark(revision) => {
            if !bookmarks {
                return None;
            }
            let object = json!({
                "kind": res.info.kind,
                "apiVersion": res.info.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
            });
            Some(format!("{}\n", json!({"type": "BOOKMARK", "object": object})).into())
        }
        // Asked for with allowWatchBookmarks (validated), so always sent.
        WatchItem::InitialEventsEnd(revision) => {
            let object = json!({
                "kind": res.info.kind,
                "apiVersion": res.info.api_version(),
                "metadata": {
                    "resourceVersion": revision.to_string(),
                    "annotations": {INITIAL_EVENTS_END: "true"},
                },
            });
            Some(format!("{}\n", json!({"type": "BOOKMARK", "object": object})).into())
        }
        WatchItem::Event(kind, object) => Some(event_line(res, *kind, object, as_table)),
    }
}

/// 422 for list or watch options that do not go together, as Kubernetes
/// says it: `ListOptions.meta.k8s.io "" is invalid: ...`.
fn list_options_invalid(errors: &[api_types::FieldError]) -> ApiError {
    let kind = api_types::GroupKind::new("meta.k8s.io", "ListOptions");
    ApiError::from(api_types::Status::invalid(&kind, "", errors))
}

fn event_line(
    res: &ServedResource,
    kind: EventType,
    object: &CachedObject,
    as_table: bool,
) -> Bytes {
    if as_table {
        let value = present(res, object.value());
        let table = table(res, &[value], Some(object.revision), None);
        return format!("{}\n", json!({"type": kind.as_str(), "object": table})).into();
    }
    if presents_other_form(res) {
        let json = present_bytes(res, object.json.clone());
        let mut line = Vec::with_capacity(json.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_str().as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(&json);
        line.extend_from_slice(b"}\n");
        return Bytes::from(line);
    }
    object.event_line(kind)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_default_watch_timeout_is_between_the_minimum_and_twice_it() {
        let min = Duration::from_secs(30 * 60);
        assert_eq!(default_watch_timeout(min, 0.0), min);
        assert_eq!(default_watch_timeout(min, 1.0), 2 * min);
        assert_eq!(default_watch_timeout(min, 7.0), 2 * min);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let timeout = default_watch_timeout(min, random_fraction());
            assert!(timeout >= min && timeout <= 2 * min, "{timeout:?}");
            seen.insert(timeout.as_secs() / 60);
        }
        // Randomised: the watches of one restart do not all end together.
        assert!(seen.len() > 20, "only {} distinct minutes", seen.len());
    }
}
