//! Authentication: who made each request, from its client certificate, a
//! static bearer token, a bootstrap token or a service-account token, as
//! Kubernetes' authenticators establish it. One layer in front of the router sets the
//! [`User`] on the request (and on the response, for the audit log); a request
//! with a bad credential, or none where anonymous requests are off, ends
//! there with a 401 Status.

pub mod bootstrap;
pub mod review;
pub mod service_account;
pub mod static_tokens;

use std::sync::Arc;

use api_types::{ServiceAccount, Status};
use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{debug, info, warn};

pub use service_account::ServiceAccountTokens;
pub use static_tokens::StaticTokens;

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::http::User;
use crate::metrics::Metrics;
use crate::store::Store;

/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// Paths a request without a credential may always reach (Kubernetes grants
/// them to anonymous users by its default `system:public-info-viewer` role).
pub const PUBLIC_PATHS: [&str; 4] = ["/healthz", "/livez", "/readyz", "/version"];

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub struct Authentication {
    /// Requests without any credential are served as [`User::anonymous`]
    /// (Kubernetes' `--anonymous-auth`). Off, they get 401, except the
    /// [`PUBLIC_PATHS`]. A bad credential is a 401 either way.
    pub anonymous: bool,
    /// Client certificates the TLS layer verified against the client CA name
    /// the user (CN) and its groups (O).
    pub x509: bool,
    /// Bearer tokens of a static token file (`--token-auth-file`).
    pub tokens: Option<Arc<StaticTokens>>,
    /// Service-account tokens: verified with the public keys, minted by
    /// TokenRequest with the signing key.
    pub service_accounts: Option<Arc<ServiceAccountTokens>>,
}

impl Default for Authentication {
    fn default() -> Self {
        Authentication {
            anonymous: false,
            x509: true,
            tokens: None,
            service_accounts: None,
        }
    }
}

impl Authentication {
    /// Nothing lets a request without a credential through.
    pub fn secure() -> Self {
        Authentication {
            anonymous: false,
            ..Authentication::default()
        }
    }
}

/// Adds `system:authenticated` to an authenticated user's groups, once.
pub(crate) fn add_authenticated(groups: &mut Vec<String>) {
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.to_owned());
    }
}

/// What the authenticators made of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A credential named this user.
    User(User),
    /// The request carries no credential.
    None,
    /// The request carries a credential that names no one: the reason.
    Refused(String),
}

/// The authenticators of one API server, with what they look accounts up in.
pub struct Authenticator {
    config: Authentication,
    catalog: Arc<Catalog>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Users of client certificates already read, by certificate (DER).
    certificates: Remembered<Vec<u8>, User>,
    /// Claims of service-account tokens whose signature, issuer and audience
    /// (this server's) were already checked, by token; expiry and the account
    /// are checked on every use.
    verified: Remembered<String, service_account::Claims>,
}

/// How many certificates and tokens each cache keeps; a full cache starts over.
const REMEMBERED: usize = 4_096;

/// A small map of results that are costly to compute again (a certificate
/// parsed, a signature checked), keyed by the whole credential.
struct Remembered<K, V> {
    entries: std::sync::Mutex<std::collections::HashMap<K, V>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Remembered<K, V> {
    fn new() -> Self {
        Remembered {
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).cloned()
    }

    fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= REMEMBERED {
            entries.clear();
        }
        entries.insert(key, value);
    }

    fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The token minter, in every request's extensions when this server has one
/// (read by the TokenRequest subresource).
#[derive(Clone, Debug)]
pub struct TokenIssuer(pub Arc<ServiceAccountTokens>);

impl Authenticator {
    /// Authenticators as `config` says, over the service accounts of `catalog`.
    pub fn new(
        config: Authentication,
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Authenticator {
            config,
            catalog,
            store,
            metrics,
            certificates: Remembered::new(),
            verified: Remembered::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Authentication {
        &self.config
    }

    /// Who a request is: its client certificate first, then its bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap, extensions: &Extensions) -> Outcome {
        if self.config.x509
            && let Some(peer) = extensions.get::<loom_listener::tls::PeerCertificates>()
            && let Some(leaf) = peer.0.first()
        {
            if let Some(user) = self.certificates.get(leaf.as_ref()) {
                return Outcome::User(user);
            }
            return match certificate_user(leaf) {
                Ok(user) => {
                    self.certificates.insert(leaf.to_vec(), user.clone());
                    Outcome::User(user)
                }
                Err(why) => Outcome::Refused(why),
            };
        }
        match bearer_token(headers) {
            Ok(None) => Outcome::None,
            Err(why) => Outcome::Refused(why.to_owned()),
            Ok(Some(token)) => self.token_user(token, None).await,
        }
    }

    /// Who a bearer token is: a static token, or a service account's that is
    /// for one of `audiences` (`None`: this API server's own).
    pub async fn token_user(&self, token: &str, audiences: Option<&[String]>) -> Outcome {
        if let Some(tokens) = &self.config.tokens
            && let Some(user) = tokens.user(token)
        {
            return Outcome::User(user.clone());
        }
        // `<id>.<secret>`: a bootstrap token or nothing.
        if bootstrap::is_bootstrap_token(token) {
            return match bootstrap::authenticate(&self.catalog, &*self.store, token).await {
                Ok(user) => Outcome::User(user),
                Err(why) => Outcome::Refused(why),
            };
        }
        // A JWT has three dot-separated parts; anything else is no such token.
        if let Some(accounts) = &self.config.service_accounts
            && token.split('.').count() == 3
        {
            // Only this server's own audiences are remembered: a review for
            // others checks the token afresh.
            let remembered = match audiences {
                None => self
                    .verified
                    .get(token)
                    .filter(|claims| service_account::in_time(claims, chrono::Utc::now())),
                Some(_) => None,
            };
            let claims = match remembered {
                Some(claims) => claims,
                None => {
                    match accounts.verify_signature(token, audiences.unwrap_or(&accounts.audiences))
                    {
                        Ok(claims) => {
                            if audiences.is_none() {
                                self.verified.insert(token.to_owned(), claims.clone());
                            }
                            claims
                        }
                        Err(why) => {
                            self.verified.remove(token);
                            return Outcome::Refused(why.0);
                        }
                    }
                }
            };
            return match self.account_uid(&claims).await {
                Ok(()) => Outcome::User(service_account::user(&claims)),
                Err(why) => Outcome::Refused(why),
            };
        }
        Outcome::Refused("the bearer token is not one this server knows".to_owned())
    }

    /// Checks the token's account still exists, with the uid the token names
    /// (deleting an account, or making a new one of the same name, revokes
    /// its tokens): from the watch cache, or the store while the cache has not
    /// seen it.
    async fn account_uid(&self, claims: &service_account::Claims) -> Result<(), String> {
        let k = &claims.kubernetes;
        let accounts = self.catalog.builtin_resource::<ServiceAccount>();
        let key = accounts.key(&k.namespace, &k.serviceaccount.name);
        let account = match accounts.cache.get(&key) {
            Some(cached) => Some(cached.value()),
            None => match self.store.get(&key).await {
                Ok(found) => found.and_then(|kv| serde_json::from_slice(&kv.value).ok()),
                Err(error) => {
                    warn!(%error, "cannot read a service account to authenticate its token");
                    return Err("the token's service account cannot be read now".to_owned());
                }
            },
        };
        let revoked = || {
            format!(
                "the token's service account {}/{} no longer exists",
                k.namespace, k.serviceaccount.name
            )
        };
        let Some(account) = account else {
            return Err(revoked());
        };
        let uid = crate::object::meta_str(&account, "uid").unwrap_or_default();
        if uid != k.serviceaccount.uid
            || crate::object::meta_str(&account, "deletionTimestamp").is_some()
        {
            return Err(revoked());
        }
        Ok(())
    }
}

/// The user a verified client certificate names: CN the name, O the groups.
pub fn certificate_user(der: &[u8]) -> Result<User, String> {
    let info = pki::CertInfo::from_der(der)
        .map_err(|_| "the client certificate cannot be read".to_owned())?;
    if info.common_name.is_empty() {
        return Err("the client certificate has no common name (CN) to name a user".to_owned());
    }
    let mut groups = info.organizations;
    add_authenticated(&mut groups);
    Ok(User {
        name: info.common_name,
        uid: String::new(),
        groups,
        extra: Default::default(),
    })
}

pub use loom_listener::auth::bearer_token;

/// Whether a path is served to requests without a credential.
fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.iter().any(|public| {
        path == *public
            || path
                .strip_prefix(public)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The 401 every refused request gets.
pub fn unauthorized(why: &str) -> Response {
    ApiError::from(Status::unauthorized(&format!("Unauthorized: {why}"))).into_response()
}

/// The authentication layer: sets the request's [`User`] (and, for the
/// audit log, the response's), or answers 401.
pub async fn authenticate(
    State(authenticator): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let outcome = authenticator
        .authenticate(request.headers(), request.extensions())
        .await;
    let user = match outcome {
        Outcome::User(user) => user,
        Outcome::None if authenticator.config.anonymous || is_public(request.uri().path()) => {
            User::anonymous()
        }
        Outcome::None => {
            authenticator
                .metrics
                .authentication_failure("no_credential");
            debug!(path = %request.uri().path(), "a request without a credential");
            return unauthorized(
                "the request has no credential (a client certificate or a bearer token)",
            );
        }
        Outcome::Refused(why) => {
            authenticator
                .metrics
                .authentication_failure("invalid_credential");
            // The reason, never the credential; at info, so that a flood of
            // bad tokens does not flood the log at warn (the metric counts them).
            info!(path = %request.uri().path(), reason = %why, "authentication failed");
            return unauthorized(&why);
        }
    };
    // Only a server with the signing key mints tokens; one without answers
    // TokenRequest with a 404 that says which flag it lacks.
    if let Some(accounts) = &authenticator.config.service_accounts
        && accounts.can_sign()
    {
        request
            .extensions_mut()
            .insert(TokenIssuer(accounts.clone()));
    }
    request.extensions_mut().insert(user.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(user);
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                axum::http::header::AUTHORIZATION,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn bearer_tokens_are_read_and_other_authorization_headers_refused() {
        assert_eq!(bearer_token(&headers(&[])), Ok(None));
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok(Some("abc")));
        for bad in [
            "Basic YWxpY2U6cHc=",
            "Bearer",
            "Bearer ",
            "abc",
            "Bearer a b",
        ] {
            assert!(bearer_token(&headers(&[bad])).is_err(), "{bad:?}");
        }
        assert!(bearer_token(&headers(&["Bearer a", "Bearer b"])).is_err());
    }

    #[test]
    fn only_the_health_and_version_paths_are_public() {
        for path in ["/healthz", "/livez", "/readyz", "/version", "/readyz/ping"] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/",
            "/api",
            "/metrics",
            "/healthzz",
            "/versions",
            "/apis/loom.dev/v1/tasks",
        ] {
            assert!(!is_public(path), "{path}");
        }
    }

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let ca = pki::Ca::generate("test").unwrap();
        let alice = ca
            .issue(&pki::Profile::client("alice", Some("dev")))
            .unwrap();
        let der = rustls_pem_der(&alice.cert_pem);
        let user = certificate_user(&der).unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert!(certificate_user(b"junk").is_err());
    }

    fn rustls_pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    }
}
