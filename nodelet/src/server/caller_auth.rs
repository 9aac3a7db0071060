//! Who may call the nodelet's own server, decided as the kubelet decides: the
//! API server's client certificate at once; any other caller authenticated (a
//! client certificate of the cluster CA names its user and groups, a bearer
//! token is asked about with a TokenReview) and authorized with a
//! SubjectAccessReview of what it asks (a task's log is `get tasks/log` of
//! that task, as through the API; `/metrics` is the path). Answers are cached
//! briefly and boundedly, tokens by their hash only; a review that cannot be
//! made refuses (503), never allows.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api_types::authorization::{
    AUTHORIZATION_API_VERSION, AccessReview, NonResourceAttributes, ResourceAttributes,
    SubjectAccessReviewSpec,
};
use api_types::service_account::AUTHENTICATION_API_VERSION;
use api_types::{GroupResource, Status};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use client::Client;
use client::client::Body;
use loom_listener::auth::bearer_token;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

/// Every authenticated user's group (the API server adds it too).
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Where TokenReviews are posted.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Where SubjectAccessReviews are posted.
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// How long answers are kept, and how many.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A token the API server named a user for (the kubelet's
    /// `authentication.webhook.cacheTTL`, 2 min).
    pub authenticated_ttl: Duration,
    /// A token the API server did not accept (30 s).
    pub unauthenticated_ttl: Duration,
    /// An allowed request (the kubelet's `cacheAuthorizedTTL`, 5 min).
    pub allowed_ttl: Duration,
    /// A denied request (the kubelet's `cacheUnauthorizedTTL`, 30 s).
    pub denied_ttl: Duration,
    /// Answers kept per cache (tokens, decisions); beyond, the expired go
    /// first, then those nearest their end.
    pub max_entries: usize,
    /// How long a review may take before the request is refused with 503.
    pub review_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            authenticated_ttl: Duration::from_secs(120),
            unauthenticated_ttl: Duration::from_secs(30),
            allowed_ttl: Duration::from_secs(300),
            denied_ttl: Duration::from_secs(30),
            max_entries: 4096,
            review_timeout: Duration::from_secs(10),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The user's name.
    pub name: String,
    /// Its uid (tokens may name one).
    pub uid: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its authenticator's extra facts.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks, in an access review's terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A request about an object (a task's log).
    Resource {
        /// `get`, `create`, ...
        verb: String,
        /// The API group.
        group: String,
        /// The resource's plural.
        resource: String,
        /// The subresource.
        subresource: String,
        /// The namespace.
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// A request to a path that is no object's (`/metrics`).
    Path {
        /// The HTTP method in lower case.
        verb: String,
        /// The path.
        path: String,
    },
}

/// The verb of a request about an object, as Kubernetes names it.
fn resource_verb(method: &Method) -> String {
    match *method {
        Method::GET | Method::HEAD => "get".to_owned(),
        Method::POST => "create".to_owned(),
        Method::PUT => "update".to_owned(),
        Method::PATCH => "patch".to_owned(),
        Method::DELETE => "delete".to_owned(),
        ref other => other.as_str().to_ascii_lowercase(),
    }
}

/// What a request to the nodelet's server asks: `/logs/NS/NAME` is the log
/// of task NAME in NS (`tasks/log` of `loom.dev`, the subresource the API
/// serves it as), any other path itself. A task's log path with a
/// percent-escape is refused: the router would decode it, so the review
/// would be about another name than the one served.
pub fn access_of(method: &Method, path: &str) -> Result<Access, String> {
    if let Some(rest) = path.strip_prefix("/logs/")
        && let Some((namespace, name)) = rest.split_once('/')
        && !namespace.is_empty()
        && !name.is_empty()
        && !name.contains('/')
    {
        if namespace.contains('%') || name.contains('%') {
            return Err(format!(
                "the path {path:?} escapes characters no namespace or task name has"
            ));
        }
        return Ok(Access::Resource {
            verb: resource_verb(method),
            group: api_types::GROUP.to_owned(),
            resource: "tasks".to_owned(),
            subresource: "log".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    let verb = match *method {
        Method::HEAD => "get".to_owned(),
        ref other => other.as_str().to_ascii_lowercase(),
    };
    Ok(Access::Path {
        verb,
        path: path.to_owned(),
    })
}

impl Access {
    /// The review's question about `caller`.
    fn review(&self, caller: &Caller) -> AccessReview {
        let mut spec = SubjectAccessReviewSpec {
            user: caller.name.clone(),
            groups: caller.groups.clone(),
            uid: caller.uid.clone(),
            extra: caller.extra.clone(),
            ..SubjectAccessReviewSpec::default()
        };
        match self {
            Access::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                spec.resource_attributes = Some(ResourceAttributes {
                    namespace: namespace.clone(),
                    verb: verb.clone(),
                    group: group.clone(),
                    version: "v1".to_owned(),
                    resource: resource.clone(),
                    subresource: subresource.clone(),
                    name: name.clone(),
                });
            }
            Access::Path { verb, path } => {
                spec.non_resource_attributes = Some(NonResourceAttributes {
                    path: path.clone(),
                    verb: verb.clone(),
                });
            }
        }
        AccessReview {
            api_version: AUTHORIZATION_API_VERSION.to_owned(),
            kind: "SubjectAccessReview".to_owned(),
            spec,
            ..AccessReview::default()
        }
    }

    /// Kubernetes' message for a denied request.
    fn forbidden_message(&self, user: &str) -> String {
        match self {
            Access::Path { verb, path } => format!("User {user:?} cannot {verb} path {path:?}"),
            Access::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                ..
            } => format!(
                "User {user:?} cannot {verb} resource \"{resource}/{subresource}\" in API group {group:?} in the namespace {namespace:?}"
            ),
        }
    }
}

/// Why a caller is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credential, or one that names no one.
    Unauthenticated(String),
    /// 403: the API server does not allow it.
    Forbidden {
        /// The caller's user.
        user: String,
        /// What it asked.
        access: Access,
        /// The authorizer's reason, if any.
        reason: String,
    },
    /// 400: a request no review can describe.
    BadRequest(String),
    /// 503: the API server could not be asked.
    Unavailable(String),
}

impl Refusal {
    /// The Kubernetes Status of the refusal.
    pub fn status(&self) -> Status {
        match self {
            Refusal::Unauthenticated(why) => Status::unauthorized(&format!("Unauthorized: {why}")),
            Refusal::Forbidden {
                user,
                access,
                reason,
            } => {
                let mut message = access.forbidden_message(user);
                if !reason.is_empty() {
                    message = format!("{message}: {reason}");
                }
                match access {
                    Access::Resource {
                        group,
                        resource,
                        name,
                        ..
                    } => Status::forbidden(
                        &GroupResource::new(group.clone(), resource.clone()),
                        name,
                        &message,
                    ),
                    Access::Path { .. } => {
                        Status::forbidden(&GroupResource::default(), "", &message)
                    }
                }
            }
            Refusal::BadRequest(why) => Status::bad_request(why.clone()),
            Refusal::Unavailable(why) => {
                let mut status = Status::internal_error(why);
                status.code = 503;
                "ServiceUnavailable".clone_into(&mut status.reason);
                status.message =
                    format!("the node cannot ask the API server about its caller now: {why}");
                status.details = None;
                status
            }
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = u16::try_from(status.code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&status).unwrap_or_default();
        (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// A map whose entries expire, holding at most `max` of them.
#[derive(Debug)]
struct Expiring<K, V> {
    entries: HashMap<K, (V, Instant)>,
    max: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> Expiring<K, V> {
    fn new(max: usize) -> Self {
        Expiring {
            entries: HashMap::new(),
            max,
        }
    }

    /// The value of `key` if it has not expired at `now`.
    fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((value, until)) if *until > now => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl` from `now`, making room if full: the expired
    /// entries go first, then the one nearest its end.
    fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if self.max == 0 || ttl.is_zero() {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max {
            self.entries.retain(|_, (_, until)| *until > now);
            while self.entries.len() >= self.max {
                let Some(first) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(key, _)| key.clone())
                else {
                    break;
                };
                self.entries.remove(&first);
            }
        }
        self.entries.insert(key, (value, now + ttl));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// What the API server made of a token.
type TokenAnswer = Result<Caller, String>;
/// A token's cache key: its SHA-256, so the token itself is kept nowhere.
type TokenKey = [u8; 32];

fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// The caller a verified client certificate names: CN the user, O the
/// groups (as the API server reads it).
fn certificate_caller(der: &[u8]) -> Result<Caller, String> {
    let info = pki::CertInfo::from_der(der)
        .map_err(|_| "the client certificate cannot be read".to_owned())?;
    caller_of(info)
}

fn caller_of(info: pki::CertInfo) -> Result<Caller, String> {
    if !info.client_auth {
        return Err("the certificate is not one for TLS clients".to_owned());
    }
    if info.common_name.is_empty() {
        return Err("the client certificate has no common name (CN) to name a user".to_owned());
    }
    let mut groups = info.organizations;
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    Ok(Caller {
        name: info.common_name,
        uid: String::new(),
        groups,
        extra: BTreeMap::new(),
    })
}

/// The caller a TokenReview's status names, or why it names none.
fn reviewed_caller(review: &Value) -> Result<TokenAnswer, String> {
    let status = review
        .get("status")
        .ok_or("the TokenReview came back without a status")?;
    if status.get("authenticated").and_then(Value::as_bool) != Some(true) {
        let why = status
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .unwrap_or("the token is not valid");
        return Ok(Err(why.to_owned()));
    }
    let user = status.get("user").cloned().unwrap_or_else(|| json!({}));
    let name = user
        .get("username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        return Err("the TokenReview authenticated no user name".to_owned());
    }
    let strings = |value: Option<&Value>| -> Vec<String> {
        value
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let extra = user
        .get("extra")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(key, values)| (key.clone(), strings(Some(values))))
                .collect()
        })
        .unwrap_or_default();
    Ok(Ok(Caller {
        name: name.to_owned(),
        uid: user
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        groups: strings(user.get("groups")),
        extra,
    }))
}

/// An authenticated caller, and whether it is one let in without review.
struct Authenticated {
    caller: Caller,
    trusted: bool,
}

/// The caller check of the nodelet's server.
pub struct CallerAuth {
    client: Client,
    trusted: Vec<String>,
    settings: Settings,
    tokens: Mutex<Expiring<TokenKey, TokenAnswer>>,
    decisions: Mutex<Expiring<(Caller, Access), (bool, String)>>,
}

impl std::fmt::Debug for CallerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerAuth")
            .field("trusted", &self.trusted)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CallerAuth {
    /// A check that asks the API server through `client` (the node's), and
    /// lets the users of `trusted` client certificates in without asking
    /// (the API server's own, which authorized the request it proxies).
    pub fn new(client: Client, trusted: Vec<String>, settings: Settings) -> Self {
        let max = settings.max_entries;
        CallerAuth {
            client,
            trusted,
            settings,
            tokens: Mutex::new(Expiring::new(max)),
            decisions: Mutex::new(Expiring::new(max)),
        }
    }

    /// Whether a request (its method, path, headers and verified client
    /// certificate chain) may be served.
    pub async fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&loom_listener::tls::PeerCertificates>,
    ) -> Result<(), Refusal> {
        let Authenticated { caller, trusted } = self.authenticate(headers, peer).await?;
        if trusted {
            return Ok(());
        }
        let access = access_of(method, path).map_err(Refusal::BadRequest)?;
        self.authorize(caller, access).await
    }

    async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&loom_listener::tls::PeerCertificates>,
    ) -> Result<Authenticated, Refusal> {
        // A certificate first, as the API server and the kubelet do: the TLS
        // layer verified its chain to the cluster CA.
        if let Some(leaf) = peer.and_then(|p| p.0.first()) {
            let caller = certificate_caller(leaf.as_ref()).map_err(Refusal::Unauthenticated)?;
            let trusted = self.trusted.contains(&caller.name);
            return Ok(Authenticated { caller, trusted });
        }
        let token = bearer_token(headers)
            .map_err(|why| Refusal::Unauthenticated(why.to_owned()))?
            .ok_or_else(|| {
                Refusal::Unauthenticated(
                    "a client certificate of the cluster's CA or a bearer token is required"
                        .to_owned(),
                )
            })?;
        let key = token_key(token);
        let cached = self.lock_tokens().get(&key, Instant::now());
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.token_review(token).await?;
                let ttl = match answer {
                    Ok(_) => self.settings.authenticated_ttl,
                    Err(_) => self.settings.unauthenticated_ttl,
                };
                self.lock_tokens()
                    .insert(key, answer.clone(), ttl, Instant::now());
                answer
            }
        };
        let caller = answer.map_err(Refusal::Unauthenticated)?;
        Ok(Authenticated {
            caller,
            trusted: false,
        })
    }

    async fn authorize(&self, caller: Caller, access: Access) -> Result<(), Refusal> {
        let key = (caller, access);
        let cached = self.lock_decisions().get(&key, Instant::now());
        let (allowed, reason) = match cached {
            Some(decision) => decision,
            None => {
                let decision = self.access_review(&key.0, &key.1).await?;
                let ttl = if decision.0 {
                    self.settings.allowed_ttl
                } else {
                    self.settings.denied_ttl
                };
                self.lock_decisions()
                    .insert(key.clone(), decision.clone(), ttl, Instant::now());
                decision
            }
        };
        let (caller, access) = key;
        if allowed {
            return Ok(());
        }
        debug!(user = %caller.name, ?access, %reason, "a caller of the node's endpoint is refused");
        Err(Refusal::Forbidden {
            user: caller.name,
            access,
            reason,
        })
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, Expiring<TokenKey, TokenAnswer>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_decisions(
        &self,
    ) -> std::sync::MutexGuard<'_, Expiring<(Caller, Access), (bool, String)>> {
        self.decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Posts `review` to `path` as the node, within the review timeout.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        review: &impl serde::Serialize,
    ) -> Result<T, Refusal> {
        let bytes = serde_json::to_vec(review)
            .map_err(|e| Refusal::Unavailable(format!("cannot encode the review: {e}")))?;
        let body = Body {
            content_type: "application/json",
            bytes: bytes.into(),
        };
        let request = self
            .client
            .request::<T>(client::client::Method::POST, path, Some(body));
        match tokio::time::timeout(self.settings.review_timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                warn!(%error, path, "cannot review a caller of the node's endpoint");
                Err(Refusal::Unavailable(error.to_string()))
            }
            Err(_) => {
                warn!(path, timeout = ?self.settings.review_timeout, "a review of a caller of the node's endpoint timed out");
                Err(Refusal::Unavailable(format!(
                    "the review took longer than {:?}",
                    self.settings.review_timeout
                )))
            }
        }
    }

    async fn token_review(&self, token: &str) -> Result<TokenAnswer, Refusal> {
        let review = json!({
            "apiVersion": AUTHENTICATION_API_VERSION,
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let answer: Value = self.post(TOKEN_REVIEWS, &review).await?;
        reviewed_caller(&answer).map_err(Refusal::Unavailable)
    }

    async fn access_review(
        &self,
        caller: &Caller,
        access: &Access,
    ) -> Result<(bool, String), Refusal> {
        let answer: AccessReview = self.post(ACCESS_REVIEWS, &access.review(caller)).await?;
        let status = answer.status.ok_or_else(|| {
            Refusal::Unavailable("the SubjectAccessReview came back without a status".to_owned())
        })?;
        let mut reason = status.reason;
        if !status.evaluation_error.is_empty() && reason.is_empty() {
            reason = status.evaluation_error;
        }
        Ok((status.allowed && !status.denied, reason))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_task_log_is_its_tasks_log_subresource_and_other_paths_are_paths() {
        assert_eq!(
            access_of(&Method::GET, "/logs/team-a/web").unwrap(),
            Access::Resource {
                verb: "get".into(),
                group: "loom.dev".into(),
                resource: "tasks".into(),
                subresource: "log".into(),
                namespace: "team-a".into(),
                name: "web".into(),
            }
        );
        let Access::Resource { verb, .. } = access_of(&Method::POST, "/logs/a/b").unwrap() else {
            panic!("a log path is a resource");
        };
        assert_eq!(verb, "create");
        assert_eq!(
            access_of(&Method::GET, "/metrics").unwrap(),
            Access::Path {
                verb: "get".into(),
                path: "/metrics".into()
            }
        );
        // Not the log route: only as the path it is.
        for path in ["/logs/a", "/logs//b", "/logs/a/", "/logs/a/b/c"] {
            assert!(
                matches!(access_of(&Method::GET, path).unwrap(), Access::Path { .. }),
                "{path}"
            );
        }
        // The router would serve another name than the one reviewed.
        assert!(access_of(&Method::GET, "/logs/default/%77eb").is_err());
        assert!(access_of(&Method::GET, "/logs/de%66ault/web").is_err());
    }

    #[test]
    fn reviews_ask_what_the_api_asks_for_a_log() {
        let caller = Caller {
            name: "alice".into(),
            uid: "u1".into(),
            groups: vec!["team".into(), AUTHENTICATED_GROUP.into()],
            extra: BTreeMap::new(),
        };
        let review = access_of(&Method::GET, "/logs/a/web")
            .unwrap()
            .review(&caller);
        let value = serde_json::to_value(&review).unwrap();
        assert_eq!(value["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(value["kind"], "SubjectAccessReview");
        assert_eq!(value["spec"]["user"], "alice");
        assert_eq!(value["spec"]["uid"], "u1");
        assert_eq!(value["spec"]["groups"][0], "team");
        let attributes = &value["spec"]["resourceAttributes"];
        assert_eq!(attributes["verb"], "get");
        assert_eq!(attributes["group"], "loom.dev");
        assert_eq!(attributes["resource"], "tasks");
        assert_eq!(attributes["subresource"], "log");
        assert_eq!(attributes["namespace"], "a");
        assert_eq!(attributes["name"], "web");
        let metrics =
            serde_json::to_value(access_of(&Method::GET, "/metrics").unwrap().review(&caller))
                .unwrap();
        assert_eq!(
            metrics["spec"]["nonResourceAttributes"],
            json!({"path": "/metrics", "verb": "get"})
        );
        assert!(metrics["spec"].get("resourceAttributes").is_none());
    }

    #[test]
    fn refusals_are_statuses_naming_the_reason() {
        let forbidden = Refusal::Forbidden {
            user: "bob".into(),
            access: access_of(&Method::GET, "/logs/a/web").unwrap(),
            reason: String::new(),
        }
        .status();
        assert_eq!(forbidden.code, 403);
        assert_eq!(forbidden.reason, "Forbidden");
        assert_eq!(
            forbidden.message,
            "tasks.loom.dev \"web\" is forbidden: User \"bob\" cannot get resource \"tasks/log\" in API group \"loom.dev\" in the namespace \"a\""
        );
        let path = Refusal::Forbidden {
            user: "bob".into(),
            access: access_of(&Method::GET, "/metrics").unwrap(),
            reason: "no rule".into(),
        }
        .status();
        assert_eq!(
            path.message,
            "forbidden: User \"bob\" cannot get path \"/metrics\": no rule"
        );
        let unauthenticated = Refusal::Unauthenticated("the token is not valid".into()).status();
        assert_eq!(
            (unauthenticated.code, unauthenticated.reason.as_str()),
            (401, "Unauthorized")
        );
        let unavailable = Refusal::Unavailable("connection refused".into()).status();
        assert_eq!(unavailable.code, 503);
        assert_eq!(unavailable.reason, "ServiceUnavailable");
        assert!(unavailable.message.contains("connection refused"));
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(header::AUTHORIZATION, v.parse().unwrap());
            }
            map
        };
        assert_eq!(bearer_token(&headers(&[])), Ok(None));
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok(Some("abc")));
        for bad in [
            &["Basic abc"][..],
            &["Bearer"],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            assert!(bearer_token(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let ca = pki::Ca::generate("test-ca").unwrap();
        let alice = ca
            .issue(&pki::Profile::client("alice", Some("team")))
            .unwrap();
        let caller = caller_of(pki::CertInfo::from_pem(&alice.cert_pem).unwrap()).unwrap();
        assert_eq!(caller.name, "alice");
        assert_eq!(caller.groups, vec!["team", AUTHENTICATED_GROUP]);
        let serving = ca
            .issue(&pki::Profile::server("node", &["127.0.0.1".to_owned()]))
            .unwrap();
        assert!(caller_of(pki::CertInfo::from_pem(&serving.cert_pem).unwrap()).is_err());
        assert!(certificate_caller(b"not a certificate").is_err());
    }

    #[test]
    fn token_reviews_are_read_and_refusals_kept() {
        let allowed = json!({"status": {"authenticated": true, "user": {
            "username": "system:serviceaccount:a:robot", "uid": "u",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["p"]}}}});
        let caller = reviewed_caller(&allowed).unwrap().unwrap();
        assert_eq!(caller.name, "system:serviceaccount:a:robot");
        assert_eq!(caller.uid, "u");
        assert_eq!(caller.groups.len(), 2);
        assert_eq!(caller.extra["authentication.kubernetes.io/pod-name"], ["p"]);
        let refused = json!({"status": {"authenticated": false, "error": "token expired"}});
        assert_eq!(
            reviewed_caller(&refused).unwrap(),
            Err("token expired".to_owned())
        );
        let silent = json!({"status": {"authenticated": false, "user": {}}});
        assert!(reviewed_caller(&silent).unwrap().is_err());
        // An answer that is no answer is a failure (503), not a refusal.
        assert!(reviewed_caller(&json!({})).is_err());
        assert!(reviewed_caller(&json!({"status": {"authenticated": true, "user": {}}})).is_err());
    }

    #[test]
    fn answers_expire_by_their_own_ttl() {
        let mut cache: Expiring<&str, bool> = Expiring::new(10);
        let start = Instant::now();
        cache.insert("allowed", true, Duration::from_secs(300), start);
        cache.insert("denied", false, Duration::from_secs(30), start);
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(cache.get(&"allowed", at(29)), Some(true));
        assert_eq!(cache.get(&"denied", at(29)), Some(false));
        assert_eq!(cache.get(&"denied", at(30)), None);
        assert_eq!(cache.get(&"allowed", at(299)), Some(true));
        assert_eq!(cache.get(&"allowed", at(300)), None);
        assert_eq!(cache.len(), 0, "expired entries are dropped when read");
        // A new answer replaces the old one and its expiry.
        cache.insert("allowed", true, Duration::from_secs(300), start);
        cache.insert("allowed", false, Duration::from_secs(30), at(100));
        assert_eq!(cache.get(&"allowed", at(129)), Some(false));
        assert_eq!(cache.get(&"allowed", at(131)), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache: Expiring<u32, u32> = Expiring::new(3);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        cache.insert(1, 1, Duration::from_secs(10), start);
        cache.insert(2, 2, Duration::from_secs(100), start);
        cache.insert(3, 3, Duration::from_secs(50), start);
        // Full and none expired: the one nearest its end goes.
        cache.insert(4, 4, Duration::from_secs(100), start);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&1, start), None);
        assert_eq!(cache.get(&3, start), Some(3));
        // Full with expired entries: they go first, all of them.
        cache.insert(5, 5, Duration::from_secs(100), at(60));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&3, start), None);
        assert_eq!(cache.get(&2, at(60)), Some(2));
        // Replacing a key does not evict another.
        cache.insert(2, 20, Duration::from_secs(100), at(60));
        assert_eq!(cache.len(), 3);
        for key in [2, 4, 5] {
            assert!(cache.get(&key, at(61)).is_some(), "{key}");
        }
        // Nothing is kept without room or time.
        let mut none: Expiring<u32, u32> = Expiring::new(0);
        none.insert(1, 1, Duration::from_secs(10), start);
        assert_eq!(none.len(), 0);
        cache.insert(9, 9, Duration::ZERO, at(61));
        assert_eq!(cache.get(&9, at(61)), None);
    }

    #[tokio::test]
    async fn tokens_are_kept_by_their_hash_only() {
        let auth = CallerAuth::new(
            Client::for_server("https://127.0.0.1:9").unwrap(),
            Vec::new(),
            Settings::default(),
        );
        let token = "a-secret-token-value";
        auth.lock_tokens().insert(
            token_key(token),
            Err("the token is not valid".to_owned()),
            Duration::from_secs(30),
            Instant::now(),
        );
        let held = format!("{:?}{auth:?}", auth.lock_tokens().entries);
        assert!(!held.contains(token), "{held}");
        // A cached answer is used without asking the (unreachable) API server.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let refusal = auth
            .check(&Method::GET, "/logs/a/b", &headers, None)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Unauthenticated("the token is not valid".into())
        );
    }
}
