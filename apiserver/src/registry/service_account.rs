//! ServiceAccounts: identities for processes in the cluster, served under core
//! `v1` and `loom.dev/v1` and stored once; their `token` subresource
//! (TokenRequest) mints a signed token; every namespace has a `default` one.

use std::sync::Arc;
use std::time::Duration;

use api_types::service_account::{AUTHENTICATION_API_VERSION, DEFAULT_SERVICE_ACCOUNT};
use api_types::{FieldError, GroupKind, Namespace, ServiceAccount, Status, TokenRequest};
use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use super::{Column, Rest, Subresource, SubresourceRequest, Typed};
use crate::authn::TokenIssuer;
use crate::authn::service_account::{
    DEFAULT_EXPIRATION_SECONDS, MAX_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS,
};
use crate::error::{ApiError, ApiResult};
use crate::generic::{GenericStore, WriteOptions};
use crate::object;
use crate::watch_cache::{CachedObject, EventType, Filter, WatchCache, WatchItem};

/// The ServiceAccount REST storage.
pub fn rest() -> Rest {
    Rest::new(strategy()).subresource(Token)
}

/// The ServiceAccount strategy.
pub fn strategy() -> Typed<ServiceAccount> {
    Typed::new(vec![Column {
        name: "Secrets",
        kind: "integer",
        description: "Secrets the account names",
        priority: 0,
        cell: |o| {
            json!(
                o.get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            )
        },
    }])
}

/// `serviceaccounts/NAME/token`: a TokenRequest answered with a signed token.
#[derive(Debug)]
struct Token;

fn invalid(name: &str, error: FieldError) -> ApiError {
    ApiError::from(Status::invalid(
        &GroupKind::new("authentication.k8s.io", "TokenRequest"),
        name,
        &[error],
    ))
}

#[async_trait]
impl Subresource for Token {
    fn name(&self) -> &'static str {
        "token"
    }

    fn kind(&self) -> Option<&'static str> {
        Some("TokenRequest")
    }

    fn verbs(&self) -> &'static [&'static str] {
        &["create"]
    }

    async fn serve(&self, request: SubresourceRequest<'_>) -> ApiResult<Response> {
        let res = request.resource;
        if request.method != Method::POST {
            return Err(ApiError::from(Status::method_not_allowed(
                &api_types::GroupResource::new(&res.info.group, "serviceaccounts/token"),
                &request.method.as_str().to_lowercase(),
            )));
        }
        let Some(TokenIssuer(issuer)) = request.extensions.get::<TokenIssuer>().cloned() else {
            let mut error = ApiError::from(Status::not_found(
                &api_types::GroupResource::new(&res.info.group, "serviceaccounts/token"),
                request.name,
            ));
            error.0.message = "this API server mints no service-account tokens: start it with --service-account-key-file and --service-account-signing-key-file".to_owned();
            return Err(error);
        };
        let value = crate::http::parse_body(request.headers, &request.body)?;
        let token_request: TokenRequest = serde_json::from_value(value)
            .map_err(|e| ApiError::bad_request(format!("the body is not a TokenRequest: {e}")))?;
        for (field, got, expected) in [
            (
                "apiVersion",
                &token_request.api_version,
                AUTHENTICATION_API_VERSION,
            ),
            ("kind", &token_request.kind, "TokenRequest"),
        ] {
            if !got.is_empty() && got != expected {
                return Err(ApiError::bad_request(format!(
                    "{field} {got:?} is not {expected:?}"
                )));
            }
        }
        let seconds = token_request
            .spec
            .expiration_seconds
            .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
        if seconds < MIN_EXPIRATION_SECONDS {
            return Err(invalid(
                request.name,
                FieldError::invalid(
                    "spec.expirationSeconds",
                    seconds,
                    "may not specify a duration less than 10 minutes",
                ),
            ));
        }
        let seconds = seconds.min(MAX_EXPIRATION_SECONDS);
        if let Some(bound) = &token_request.spec.bound_object_ref
            && (bound.kind.is_empty() || bound.name.is_empty())
        {
            return Err(invalid(
                request.name,
                FieldError::required("spec.boundObjectRef", "needs kind and name"),
            ));
        }
        let account = request
            .store
            .get(res, request.namespace, request.name)
            .await?;
        if object::meta_str(&account, "deletionTimestamp").is_some() {
            return Err(ApiError::from(Status::forbidden(
                &res.group_resource(),
                request.name,
                "the service account is being deleted",
            )));
        }
        let uid = object::meta_str(&account, "uid").unwrap_or_default();
        let now = Utc::now();
        let claims = issuer.claims(
            request.namespace,
            request.name,
            uid,
            &token_request.spec.audiences,
            seconds,
            token_request.spec.bound_object_ref.as_ref(),
            now,
        );
        let token = issuer.sign(&claims).map_err(ApiError::internal)?;
        let expires = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or(now);
        let mut spec = token_request.spec.clone();
        spec.audiences = claims.aud.clone();
        spec.expiration_seconds = Some(seconds);
        let answer = json!({
            "kind": "TokenRequest",
            "apiVersion": AUTHENTICATION_API_VERSION,
            "metadata": {
                "name": request.name,
                "namespace": request.namespace,
                "creationTimestamp": now.to_rfc3339_opts(SecondsFormat::Secs, true),
            },
            "spec": spec,
            "status": {
                "token": token,
                "expirationTimestamp": expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            },
        });
        Ok(crate::http::json_response(StatusCode::CREATED, &answer))
    }
}

/// Creates the `default` account of a namespace if it has none.
pub async fn ensure_default(api: &GenericStore, namespace: &str) -> ApiResult<()> {
    let accounts = api.catalog.builtin_resource::<ServiceAccount>();
    if accounts
        .cache
        .get(&accounts.key(namespace, DEFAULT_SERVICE_ACCOUNT))
        .is_some()
    {
        return Ok(());
    }
    let object = serde_json::to_value(ServiceAccount::new(namespace, DEFAULT_SERVICE_ACCOUNT))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let options = WriteOptions {
        field_manager: "loom-apiserver".to_owned(),
        ..Default::default()
    };
    match api
        .create(&accounts, Some(namespace), object, &options)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.code() == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates the default accounts of the namespaces every cluster has, before
/// the API is served (so that a client never sees them appear later).
pub async fn ensure_built_in_defaults(api: &GenericStore) {
    for namespace in super::namespace::BUILT_IN {
        for attempt in 0..50 {
            match ensure_default(api, namespace).await {
                Ok(()) => break,
                Err(error) => {
                    if attempt % 10 == 0 {
                        warn!(%namespace, error = %error.0.message, "cannot create the default service account yet");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Keeps a `default` account in every namespace that is not being deleted
/// (Kubernetes' service-account controller): made with each namespace, those
/// of other API servers' making included, and again when deleted, until
/// `cancel`.
pub fn keep_default_accounts(api: Arc<GenericStore>, cancel: CancellationToken) {
    let namespaces = api.catalog.builtin_resource::<Namespace>().cache.clone();
    let accounts = api
        .catalog
        .builtin_resource::<ServiceAccount>()
        .cache
        .clone();
    let (on_namespace, on_account) = (api.clone(), api);
    follow(
        namespaces,
        cancel.clone(),
        "default-service-accounts",
        move |kind, namespace, cancel| {
            let api = on_namespace.clone();
            async move {
                if kind != EventType::Deleted {
                    keep_default(&api, &namespace.name, &cancel).await;
                }
            }
        },
    );
    follow(
        accounts,
        cancel,
        "deleted-default-service-accounts",
        move |kind, account, cancel| {
            let api = on_account.clone();
            async move {
                if kind != EventType::Deleted || account.name != DEFAULT_SERVICE_ACCOUNT {
                    return;
                }
                // A namespace's accounts go when it does; give its removal
                // time to finish so that its default is not made again.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                keep_default(&api, &account.namespace, &cancel).await;
            }
        },
    );
}

/// Makes the default account of `namespace` if the namespace exists and is
/// not being deleted, retrying a while on errors.
async fn keep_default(api: &GenericStore, namespace: &str, cancel: &CancellationToken) {
    let namespaces = api.catalog.builtin_resource::<Namespace>();
    for attempt in 0..20 {
        let Some(found) = namespaces.cache.get(&namespaces.key("", namespace)) else {
            return;
        };
        if object::meta_str(&found.value(), "deletionTimestamp").is_some() {
            return;
        }
        match ensure_default(api, namespace).await {
            Ok(()) => return,
            // Deleted meanwhile, or going away: nothing to keep.
            Err(error) if matches!(error.code(), 403 | 404) => return,
            Err(error) => {
                if attempt % 5 == 0 {
                    warn!(%namespace, error = %error.0.message, "cannot create the default service account yet");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Runs `handle` on every event of `cache`, in order, from its current
/// objects on, rewatching when the watch ends, until `cancel`.
fn follow<F, Fut>(cache: Arc<WatchCache>, cancel: CancellationToken, name: &'static str, handle: F)
where
    F: Fn(EventType, Arc<CachedObject>, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let span = tracing::info_span!("follow", task = name);
    tokio::spawn(
        async move {
            loop {
                let mut watch = match cache.watch(None, Filter::default()).await {
                    Ok(watch) => watch,
                    Err(_) if cancel.is_cancelled() => return,
                    Err(error) => {
                        warn!(%error, "cannot watch");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let mut items: std::collections::VecDeque<WatchItem> =
                    watch.initial.drain(..).collect();
                loop {
                    let item = match items.pop_front() {
                        Some(item) => item,
                        None => tokio::select! {
                            _ = cancel.cancelled() => return,
                            item = watch.live.recv() => match item {
                                Some(item) => item,
                                None => break,
                            },
                        },
                    };
                    if let WatchItem::Event(kind, object) = item {
                        handle(kind, object, cancel.clone()).await;
                    }
                }
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::registry::Strategy;

    #[test]
    fn an_account_is_admitted_with_core_v1_and_refused_with_another_version() {
        let strategy = strategy();
        let admitted = strategy
            .admit(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "ns"}, "automountServiceAccountToken": false}),
                None,
            )
            .unwrap();
        assert_eq!(admitted["automountServiceAccountToken"], false);
        let refused = strategy
            .admit(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "Bad_Name", "namespace": "ns"}}),
                None,
            )
            .unwrap_err();
        assert_eq!(refused[0].field, "metadata.name");
    }
}
