//! Task logs: the API server proxies `GET …/tasks/NAME/log` to the nodelet that
//! runs the task, at `{node.status.nodeletEndpoint}/logs/{namespace}/{task}`
//! with the same `follow` and `tailLines` parameters, streaming the answer back.

use std::collections::HashMap;

use api_types::{Node, Status};
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt;

use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::handlers::Api;

fn unavailable(message: String) -> ApiError {
    let mut status = Status::internal_error(&message);
    status.code = 503;
    status.reason = "ServiceUnavailable".to_owned();
    status.message = message;
    ApiError::from(status)
}

/// Streams a task's log from its node.
pub async fn task_log(
    api: &Api,
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
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned();
    if endpoint.is_empty() {
        return Err(unavailable(format!(
            "node {node_name:?} does not serve logs (its nodelet reported no endpoint)"
        )));
    }
    let mut url = format!("{endpoint}/logs/{namespace}/{name}");
    let mut params = Vec::new();
    if matches!(query.get("follow").map(String::as_str), Some("true" | "1")) {
        params.push("follow=true".to_owned());
    }
    if let Some(tail) = query.get("tailLines").filter(|t| !t.is_empty()) {
        let tail: u64 = tail
            .parse()
            .map_err(|_| ApiError::bad_request(format!("tailLines {tail:?} is not a number")))?;
        params.push(format!("tailLines={tail}"));
    }
    if !params.is_empty() {
        url = format!("{url}?{}", params.join("&"));
    }
    let response = reqwest::get(&url)
        .await
        .map_err(|e| unavailable(format!("cannot reach the nodelet of {node_name:?}: {e}")))?;
    if !response.status().is_success() {
        let code = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let mut status = Status::internal_error(&text);
        status.code = i32::from(code);
        status.message = format!(
            "the nodelet of {node_name:?} answered {code}: {}",
            text.trim()
        );
        return Err(ApiError::from(status));
    }
    let body = Body::from_stream(response.bytes_stream().map_err(std::io::Error::other));
    let mut out = Response::new(body);
    *out.status_mut() = StatusCode::OK;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(out)
}
