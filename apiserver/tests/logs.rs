//! Task logs through the API server, proxied from the task's node.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::extract::{Path, Query};
use futures::StreamExt;
use loom_testing::TestServer;
use serde_json::json;

/// A stand-in for a nodelet's log endpoint.
async fn fake_nodelet() -> String {
    let app = axum::Router::new().route(
        "/logs/{namespace}/{task}",
        axum::routing::get(
            |Path((namespace, task)): Path<(String, String)>,
             Query(query): Query<std::collections::HashMap<String, String>>| async move {
                let mut lines: Vec<String> = (1..=5)
                    .map(|i| format!("{namespace}/{task} line {i}\n"))
                    .collect();
                if let Some(tail) = query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
                    lines = lines.split_off(lines.len().saturating_sub(tail));
                }
                let follow = query.contains_key("follow");
                let stream =
                    futures::stream::iter(lines.into_iter().map(Ok::<_, std::convert::Infallible>))
                        .chain(futures::stream::once(async move {
                            if follow {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                Ok("later\n".to_owned())
                            } else {
                                Ok(String::new())
                            }
                        }));
                axum::body::Body::from_stream(stream)
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_logs_come_from_the_tasks_node() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let nodelet = fake_nodelet().await;
    let http = server.http();
    let post = |path: &str, body: serde_json::Value| {
        let request = http.post(format!("{}{path}", server.url)).json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post("/apis/loom.dev/v1/nodes", json!({"apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"nodeletEndpoint": nodelet}})).await,
        201
    );
    assert_eq!(
        post("/apis/loom.dev/v1/namespaces/default/tasks", json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": "t1"}, "spec": {"image": "busybox", "nodeName": "n1"}})).await,
        201
    );
    assert_eq!(
        post("/apis/loom.dev/v1/namespaces/default/tasks", json!({"apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": "unbound"}, "spec": {"image": "busybox"}})).await,
        201
    );
    let base = format!("{}/apis/loom.dev/v1/namespaces/default/tasks", server.url);
    let all = http.get(format!("{base}/t1/log")).send().await.unwrap();
    assert_eq!(all.status().as_u16(), 200);
    assert_eq!(all.text().await.unwrap().lines().count(), 5);
    let tail = http
        .get(format!("{base}/t1/log?tailLines=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tail, "default/t1 line 4\ndefault/t1 line 5\n");
    let followed = http
        .get(format!("{base}/t1/log?follow=true"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(followed.ends_with("later\n"), "{followed}");
    let unbound = http
        .get(format!("{base}/unbound/log"))
        .send()
        .await
        .unwrap();
    assert_eq!(unbound.status().as_u16(), 400);
    let body: serde_json::Value = unbound.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not bound to a node"),
        "{body}"
    );
    let missing = http.get(format!("{base}/nope/log")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}
