//! A task runs as its service account: the token the node requested for it,
//! the cluster's CA and its namespace are mounted where Kubernetes clients
//! look, `KUBERNETES_SERVICE_HOST`/`_PORT` name the API server, and the API
//! server knows the task by that identity. Needs root; skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use api_types::Task;
use loom_testing::nodelet::{Harness, is_root, phase};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

fn log_of(h: &Harness, task: &Task) -> String {
    let path = h
        .state
        .join("tasks")
        .join(&task.metadata.uid)
        .join("logs")
        .join("log");
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_talks_to_the_api_as_its_service_account() {
    if !is_root() {
        eprintln!("skipped: the nodelet's tasks need root");
        return;
    }
    let h = Harness::new("sa").await;
    let created = h
        .server
        .http()
        .post(format!(
            "{}/api/v1/namespaces/default/serviceaccounts",
            h.server.url
        ))
        .json(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let nodelet = h.start(h.config(), None);
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let script = format!(
        "echo ns=$(cat {dir}/namespace)\n\
         echo server=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\n\
         echo uid=$(id -u)\n\
         curl -sS --max-time 10 --cacert {dir}/ca.crt -H \"Authorization: Bearer $(cat {dir}/token)\" \
           -H 'Content-Type: application/json' -d '{review}' \
           https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews\n\
         echo\n\
         touch {dir}/token 2>/dev/null && echo writable || echo read-only\n"
    );
    h.create(json!({"metadata": {"name": "robot-task"}, "spec": {
        "driver": "exec",
        "serviceAccountName": "robot",
        "command": ["/bin/sh", "-c", script],
    }}))
    .await;
    h.create(json!({"metadata": {"name": "no-token"}, "spec": {
        "driver": "exec",
        "automountServiceAccountToken": false,
        "command": ["/bin/sh", "-c", format!("test -e {dir} && echo mounted || echo absent; echo host=$KUBERNETES_SERVICE_HOST")],
    }}))
    .await;
    h.create(json!({"metadata": {"name": "ghost"}, "spec": {
        "driver": "exec",
        "serviceAccountName": "ghost",
        "command": ["/bin/true"],
    }}))
    .await;

    let task = h
        .wait_for("robot-task", LONG, |t| phase(t) == "Completed")
        .await;
    let log = log_of(&h, &task);
    let server = h.server.address();
    assert!(log.contains("ns=default\n"), "{log}");
    assert!(log.contains(&format!("server={server}\n")), "{log}");
    assert!(log.contains("uid=65534\n"), "unprivileged: {log}");
    assert!(
        log.contains("\"username\":\"system:serviceaccount:default:robot\""),
        "the API server knows the task as its account: {log}"
    );
    assert!(log.contains("read-only\n"), "{log}");

    let task = h
        .wait_for("no-token", LONG, |t| phase(t) == "Completed")
        .await;
    let log = log_of(&h, &task);
    assert!(log.contains("absent\n"), "{log}");
    assert!(log.contains("host=\n"), "{log}");

    let ghost = h.wait_for("ghost", LONG, |t| phase(t) == "Failed").await;
    let status = ghost.status.unwrap();
    assert_eq!(status.reason, "ServiceAccountNotFound", "{status:?}");
    assert!(status.message.contains("default/ghost"), "{status:?}");
    nodelet.stop().await;
}
