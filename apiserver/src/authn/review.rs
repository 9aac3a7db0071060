//! `authentication.k8s.io/v1`: TokenReview (another component asks who a
//! token is) and SelfSubjectReview (who am I: `kubectl auth whoami`), and
//! the group's discovery documents.

use std::sync::Arc;

use api_types::service_account::{AUTHENTICATION_API_VERSION, AUTHENTICATION_GROUP};
use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{Authenticator, Outcome};
use crate::error::ApiError;
use crate::http::User;

/// The resources of `authentication.k8s.io/v1`: (plural, kind).
pub const RESOURCES: [(&str, &str); 2] = [
    ("selfsubjectreviews", "SelfSubjectReview"),
    ("tokenreviews", "TokenReview"),
];

/// `userInfo` as Kubernetes writes it.
pub fn user_info(user: &User) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    info
}

fn body_json(headers: &HeaderMap, body: &Bytes, kind: &str) -> Result<Value, ApiError> {
    let value = crate::http::parse_body(headers, body)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!("a {kind} must be an object")));
    }
    for (field, expected) in [("apiVersion", AUTHENTICATION_API_VERSION), ("kind", kind)] {
        match value.get(field).and_then(Value::as_str) {
            None | Some("") => {}
            Some(v) if v == expected => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {v:?} is not {expected:?}"
                )));
            }
        }
    }
    Ok(value)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: who `spec.token` is,
/// for `spec.audiences` (none: this API server's).
pub async fn token_review(
    Extension(authenticator): Extension<Arc<Authenticator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match body_json(&headers, &body, "TokenReview") {
        Ok(review) => review,
        Err(error) => return error.into_response(),
    };
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let Some(token) = spec
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        let mut status = api_types::Status::invalid(
            &api_types::GroupKind::new(AUTHENTICATION_GROUP, "TokenReview"),
            "",
            &[api_types::FieldError::required("spec.token", "")],
        );
        status.message =
            "TokenReview.authentication.k8s.io is invalid: spec.token: Required value".to_owned();
        return ApiError::from(status).into_response();
    };
    let audiences: Option<Vec<String>> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty());
    let outcome = authenticator.token_user(token, audiences.as_deref()).await;
    let mut status = match &outcome {
        Outcome::User(user) => json!({"authenticated": true, "user": user_info(user)}),
        Outcome::Refused(why) => json!({"authenticated": false, "user": {}, "error": why}),
        Outcome::None => json!({"authenticated": false, "user": {}}),
    };
    if let (Outcome::User(_), Some(audiences)) = (&outcome, &audiences) {
        status["audiences"] = json!(audiences);
    } else if let (Outcome::User(_), Some(accounts)) =
        (&outcome, &authenticator.config().service_accounts)
    {
        status["audiences"] = json!(accounts.audiences);
    }
    // The token is not echoed back.
    let mut spec = spec;
    if let Some(map) = spec.as_object_mut() {
        map.remove("token");
    }
    let answer = json!({
        "kind": "TokenReview",
        "apiVersion": AUTHENTICATION_API_VERSION,
        "metadata": {"creationTimestamp": now()},
        "spec": spec,
        "status": status,
    });
    crate::http::json_response(StatusCode::CREATED, &answer)
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: the caller's
/// own user, as `kubectl auth whoami` prints it.
pub async fn self_subject_review(
    user: Option<Extension<User>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !body.is_empty()
        && let Err(error) = body_json(&headers, &body, "SelfSubjectReview")
    {
        return error.into_response();
    }
    let user = user.map_or_else(User::anonymous, |Extension(user)| user);
    let answer = json!({
        "kind": "SelfSubjectReview",
        "apiVersion": AUTHENTICATION_API_VERSION,
        "metadata": {"creationTimestamp": now()},
        "status": {"userInfo": user_info(&user)},
    });
    crate::http::json_response(StatusCode::CREATED, &answer)
}

/// `GET /apis/authentication.k8s.io`.
pub fn group_document() -> Value {
    let version = json!({"groupVersion": AUTHENTICATION_API_VERSION, "version": "v1"});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": AUTHENTICATION_GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// The group's entry of `/apis` (legacy).
pub fn group_entry() -> Value {
    let mut group = group_document();
    if let Some(map) = group.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    group
}

/// `GET /apis/authentication.k8s.io/v1`.
pub fn resource_list() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, kind)| {
            json!({"name": plural, "singularName": "", "namespaced": false, "kind": kind, "verbs": ["create"]})
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": AUTHENTICATION_API_VERSION,
        "resources": resources,
    })
}

/// The group's item of the aggregated `/apis`.
pub fn aggregated_entry() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, kind)| {
            json!({
                "resource": plural,
                "responseKind": {"group": AUTHENTICATION_GROUP, "version": "v1", "kind": kind},
                "scope": "Cluster",
                "singularResource": plural.trim_end_matches('s'),
                "verbs": ["create"],
            })
        })
        .collect();
    json!({
        "metadata": {"name": AUTHENTICATION_GROUP},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}
