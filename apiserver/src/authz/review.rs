//! `authorization.k8s.io/v1`: the access reviews (may this user do this?),
//! answered by the authorizer itself and never stored —
//! SelfSubjectAccessReview (`kubectl auth can-i`), SubjectAccessReview and
//! LocalSubjectAccessReview (a component asking about another user), and
//! SelfSubjectRulesReview (`kubectl auth can-i --list`) — and the group's
//! discovery documents.
//!
//! They are answered by the authorization layer, after the request to create
//! the review was itself authorized, so they need no route.

use std::time::Duration;

use api_types::authorization::{
    AUTHORIZATION_API_VERSION, AUTHORIZATION_GROUP, AccessReview, NonResourceRule, ResourceRule,
    SelfSubjectRulesReview, SubjectAccessReviewStatus, SubjectRulesReviewStatus,
};
use api_types::{FieldError, GroupKind, Status};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::authorizer::Authorizer;
use super::rbac::{Attributes, Decision, UserInfo};
use crate::error::ApiError;
use crate::http::json_response;

/// The largest review body accepted.
const MAX_REVIEW_BYTES: usize = 256 * 1024;
/// Time a client has to send a review's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The resources of `authorization.k8s.io/v1`: (plural, kind, namespaced).
pub const RESOURCES: [(&str, &str, bool); 4] = [
    (
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview", false),
    ("subjectaccessreviews", "SubjectAccessReview", false),
];

/// Answers a request to `authorization.k8s.io` (already authorized), or
/// hands the request back for the router.
pub async fn intercept(
    authorizer: &Authorizer,
    attributes: &Attributes,
    request: Request,
) -> Result<Response, Request> {
    if !attributes.path.starts_with("/apis/authorization.k8s.io") {
        return Err(request);
    }
    if !attributes.resource_request {
        let answer = match attributes.path.trim_end_matches('/') {
            "/apis/authorization.k8s.io" => group_document(),
            "/apis/authorization.k8s.io/v1" => resource_list(),
            _ => return Err(request),
        };
        if request.method() != Method::GET {
            return Err(request);
        }
        return Ok(json_response(StatusCode::OK, &answer));
    }
    let Some((_, kind, namespaced)) = RESOURCES
        .iter()
        .find(|(plural, _, _)| *plural == attributes.resource)
    else {
        return Ok(ApiError::no_route(&attributes.path).into_response());
    };
    if request.method() != Method::POST
        || !attributes.name.is_empty()
        || *namespaced == attributes.namespace.is_empty()
    {
        return Ok(ApiError::from(Status::method_not_allowed(
            &api_types::GroupResource::new(AUTHORIZATION_GROUP, attributes.resource.clone()),
            &attributes.verb,
        ))
        .into_response());
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_REVIEW_BYTES));
    let body = match read.await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Ok(ApiError::from(Status::request_entity_too_large(&format!(
                "a review may not be larger than {MAX_REVIEW_BYTES} bytes"
            )))
            .into_response());
        }
        Err(_) => {
            return Ok(
                ApiError::from(Status::timeout("the review's body did not arrive in time"))
                    .into_response(),
            );
        }
    };
    let value = match crate::http::parse_body(&parts.headers, &body) {
        Ok(value) => value,
        Err(error) => return Ok(error.into_response()),
    };
    Ok(
        match answer(
            authorizer,
            &attributes.user,
            kind,
            &attributes.namespace,
            value,
        ) {
            Ok(answer) => json_response(StatusCode::CREATED, &answer),
            Err(error) => error.into_response(),
        },
    )
}

fn invalid(kind: &str, errors: &[FieldError]) -> ApiError {
    ApiError::from(Status::invalid(
        &GroupKind::new(AUTHORIZATION_GROUP, kind),
        "",
        errors,
    ))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The reviews this module answers, told apart once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReviewKind {
    /// SelfSubjectRulesReview: the asker's rules in a namespace.
    SelfSubjectRules,
    /// LocalSubjectAccessReview: a SubjectAccessReview bound to its namespace.
    LocalSubjectAccess,
    /// SelfSubjectAccessReview or SubjectAccessReview.
    Access,
}

impl ReviewKind {
    fn of(kind: &str) -> Self {
        match kind {
            "SelfSubjectRulesReview" => ReviewKind::SelfSubjectRules,
            "LocalSubjectAccessReview" => ReviewKind::LocalSubjectAccess,
            _ => ReviewKind::Access,
        }
    }
}

/// Answers one review posted by `asker` (to `namespace`, for a local review).
pub fn answer(
    authorizer: &Authorizer,
    asker: &UserInfo,
    kind: &str,
    namespace: &str,
    body: Value,
) -> Result<Value, ApiError> {
    for (field, expected) in [("apiVersion", AUTHORIZATION_API_VERSION), ("kind", kind)] {
        match body.get(field).and_then(Value::as_str) {
            None | Some("") => {}
            Some(v) if v == expected => {}
            Some(v) => {
                return Err(invalid(
                    kind,
                    &[FieldError::not_supported(field, v, &[expected])],
                ));
            }
        }
    }
    let review_kind = ReviewKind::of(kind);
    if review_kind == ReviewKind::SelfSubjectRules {
        let mut review: SelfSubjectRulesReview = serde_json::from_value(body)
            .map_err(|e| ApiError::bad_request(format!("not a {kind}: {e}")))?;
        review.status = Some(rules_review(authorizer, asker, &review.spec.namespace));
        review.api_version = AUTHORIZATION_API_VERSION.to_owned();
        review.kind = kind.to_owned();
        let mut value = serde_json::to_value(&review).map_err(ApiError::internal)?;
        value["metadata"]["creationTimestamp"] = json!(now());
        return Ok(value);
    }
    let mut review: AccessReview = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("not a {kind}: {e}")))?;
    let spec = &review.spec;
    let mut errors = Vec::new();
    match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (None, None) => errors.push(FieldError::required(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        (Some(_), Some(_)) => errors.push(FieldError::invalid(
            "spec.nonResourceAttributes",
            "",
            "cannot be specified in combination with resourceAttributes",
        )),
        _ => {}
    }
    let user = if kind.starts_with("Self") {
        if !spec.user.is_empty() || !spec.groups.is_empty() {
            errors.push(FieldError::forbidden(
                "spec.user",
                "a self review is about the asker: user and groups may not be set",
            ));
        }
        asker.clone()
    } else {
        if spec.user.is_empty() && spec.groups.is_empty() {
            errors.push(FieldError::invalid(
                "spec.user",
                "",
                "at least one of user or group must be specified",
            ));
        }
        UserInfo {
            name: spec.user.clone(),
            groups: spec.groups.clone(),
        }
    };
    if review_kind == ReviewKind::LocalSubjectAccess {
        let asked = spec
            .resource_attributes
            .as_ref()
            .map(|r| r.namespace.as_str())
            .unwrap_or_default();
        if asked != namespace {
            errors.push(FieldError::invalid(
                "spec.resourceAttributes.namespace",
                asked,
                "must match metadata.namespace",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(invalid(kind, &errors));
    }
    let attributes = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(r), _) => Attributes {
            user,
            verb: r.verb.clone(),
            resource_request: true,
            api_group: r.group.clone(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            ..Attributes::default()
        },
        (None, Some(n)) => Attributes {
            user,
            verb: n.verb.clone(),
            path: n.path.clone(),
            ..Attributes::default()
        },
        (None, None) => return Err(invalid(kind, &[])),
    };
    review.status = Some(match authorizer.authorize(&attributes) {
        Decision::Allowed { reason } => SubjectAccessReviewStatus {
            allowed: true,
            reason,
            ..SubjectAccessReviewStatus::default()
        },
        Decision::Denied { reason } => SubjectAccessReviewStatus {
            allowed: false,
            reason,
            ..SubjectAccessReviewStatus::default()
        },
    });
    review.api_version = AUTHORIZATION_API_VERSION.to_owned();
    review.kind = kind.to_owned();
    let mut value = serde_json::to_value(&review).map_err(ApiError::internal)?;
    value["metadata"]["creationTimestamp"] = json!(now());
    Ok(value)
}

/// Every rule `user` holds in `namespace`, as `kubectl auth can-i --list`
/// prints them.
fn rules_review(
    authorizer: &Authorizer,
    user: &UserInfo,
    namespace: &str,
) -> SubjectRulesReviewStatus {
    let mut status = SubjectRulesReviewStatus::default();
    if authorizer.mode() == super::authorizer::Authorization::AlwaysAllow {
        status.resource_rules.push(ResourceRule {
            verbs: vec!["*".into()],
            api_groups: vec!["*".into()],
            resources: vec!["*".into()],
            ..ResourceRule::default()
        });
        status.non_resource_rules.push(NonResourceRule {
            verbs: vec!["*".into()],
            non_resource_urls: vec!["*".into()],
        });
        return status;
    }
    for rule in authorizer.rules_for(user, namespace) {
        if rule.non_resource_urls.is_empty() {
            status.resource_rules.push(ResourceRule {
                verbs: rule.verbs,
                api_groups: rule.api_groups,
                resources: rule.resources,
                resource_names: rule.resource_names,
            });
        } else {
            status.non_resource_rules.push(NonResourceRule {
                verbs: rule.verbs,
                non_resource_urls: rule.non_resource_urls,
            });
        }
    }
    status
}

/// `GET /apis/authorization.k8s.io`.
pub fn group_document() -> Value {
    let mut group = group_entry();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    group
}

/// The group's entry of `/apis` (legacy).
pub fn group_entry() -> Value {
    let version = json!({"groupVersion": AUTHORIZATION_API_VERSION, "version": "v1"});
    json!({
        "name": AUTHORIZATION_GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// `GET /apis/authorization.k8s.io/v1`.
pub fn resource_list() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["create"]})
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": AUTHORIZATION_API_VERSION,
        "resources": resources,
    })
}

/// The group's item of the aggregated `/apis`.
pub fn aggregated_entry() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({
                "resource": plural,
                "responseKind": {"group": AUTHORIZATION_GROUP, "version": "v1", "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": plural.trim_end_matches('s'),
                "verbs": ["create"],
            })
        })
        .collect();
    json!({
        "metadata": {"name": AUTHORIZATION_GROUP},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}
