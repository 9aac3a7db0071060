//! The HTTP API against a real server over each store backend: CRUD, races, watch
//! semantics, status/spec separation, finalizers, patches, custom kinds, namespaces,
//! discovery, and bad input that must leave the store unchanged.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::{Config, catalog::CacheConfig};
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use reqwest::Method;
use serde_json::{Value, json};

const JOBS: &str = "/apis/loom.dev/v1/namespaces/default/jobs";
const TASKS: &str = "/apis/loom.dev/v1/namespaces/default/tasks";

fn job(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "spec": {"replicas": replicas, "template": {"spec": {"image": "busybox", "command": ["true"]}}}
    })
}

fn task(name: &str) -> Value {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Task",
        "metadata": {"name": name},
        "spec": {"image": "busybox", "command": ["true"]}
    })
}

fn rv(object: &Value) -> i64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn test_config() -> Config {
    Config {
        cache: CacheConfig {
            capacity: 64,
            bookmark_interval: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

mod cases {
    use super::*;

    pub async fn crud(server: TestServer) {
        let c = JsonClient::new(&server);
        let (code, created) = c.post(JOBS, &job("a", 2)).await;
        assert_eq!(code, 201, "{created}");
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(
            created["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty())
        );
        assert!(created["metadata"]["creationTimestamp"].is_string());
        let (code, got) = c.get(&format!("{JOBS}/a")).await;
        assert_eq!(code, 200);
        assert_eq!(got, created);
        let (code, again) = c.post(JOBS, &job("a", 2)).await;
        assert_eq!(
            (code, again["reason"].as_str()),
            (409, Some("AlreadyExists")),
            "{again}"
        );

        let (code, generated) = c
            .post(JOBS, &json!({"apiVersion": "loom.dev/v1", "kind": "Job", "metadata": {"generateName": "batch-"}, "spec": {"template": {"spec": {"image": "x"}}}}))
            .await;
        assert_eq!(code, 201, "{generated}");
        let name = generated["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("batch-") && name.len() == "batch-".len() + 5,
            "{name}"
        );

        let (code, list) = c.get(JOBS).await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "JobList");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert!(rv(&json!({"metadata": list["metadata"]})) >= rv(&generated));

        let mut changed = got.clone();
        changed["spec"]["replicas"] = json!(5);
        let (code, updated) = c.put(&format!("{JOBS}/a"), &changed).await;
        assert_eq!(code, 200, "{updated}");
        assert_eq!(updated["spec"]["replicas"], 5);
        assert_eq!(updated["metadata"]["generation"], 2);
        // The same resourceVersion again is stale now.
        let (code, stale) = c.put(&format!("{JOBS}/a"), &changed).await;
        assert_eq!(
            (code, stale["reason"].as_str()),
            (409, Some("Conflict")),
            "{stale}"
        );

        let (code, _) = c.delete(&format!("{JOBS}/a")).await;
        assert_eq!(code, 200);
        let (code, gone) = c.get(&format!("{JOBS}/a")).await;
        assert_eq!(code, 404);
        assert_eq!(gone["reason"], "NotFound");
        assert_eq!(gone["message"], "jobs.loom.dev \"a\" not found");
    }

    /// 16 clients read-modify-write one object: every successful update is kept.
    pub async fn conflicting_updates_lose_nothing(server: TestServer) {
        let c = JsonClient::new(&server);
        let mut object = job("counter", 1);
        object["metadata"]["annotations"] = json!({"count": "0"});
        assert_eq!(c.post(JOBS, &object).await.0, 201);
        let mut handles = Vec::new();
        for _ in 0..16 {
            let c = c.clone();
            handles.push(tokio::spawn(async move {
                let mut wins = 0;
                let mut conflicts = 0;
                while wins < 5 {
                    let (_, mut current) = c.get(&format!("{JOBS}/counter")).await;
                    let n: u64 = current["metadata"]["annotations"]["count"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    current["metadata"]["annotations"]["count"] = json!((n + 1).to_string());
                    match c.put(&format!("{JOBS}/counter"), &current).await {
                        (200, _) => wins += 1,
                        (409, body) => {
                            assert_eq!(body["reason"], "Conflict");
                            conflicts += 1;
                        }
                        (code, body) => panic!("unexpected {code}: {body}"),
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for handle in handles {
            conflicts += handle.await.unwrap();
        }
        let (_, last) = c.get(&format!("{JOBS}/counter")).await;
        assert_eq!(last["metadata"]["annotations"]["count"], "80");
        assert!(
            conflicts > 0,
            "16 racing clients should have met a conflict"
        );
    }

    /// A watch resumed from the last resourceVersion it saw gets exactly what it missed.
    pub async fn watch_resumes_after_disconnect(server: TestServer) {
        let c = JsonClient::new(&server);
        let (_, list) = c.get(TASKS).await;
        let start = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut watch = c
            .watch(&format!("{TASKS}?watch=true&resourceVersion={start}"))
            .await;
        c.post(TASKS, &task("t1")).await;
        let first = watch.next_change().await;
        assert_eq!(
            (
                first["type"].as_str(),
                first["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("t1"))
        );
        let seen = first["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        drop(watch);
        // Missed while disconnected:
        c.post(TASKS, &task("t2")).await;
        let (_, t1) = c.get(&format!("{TASKS}/t1")).await;
        let mut t1 = t1;
        t1["metadata"]["labels"] = json!({"x": "y"});
        c.put(&format!("{TASKS}/t1"), &t1).await;
        c.delete(&format!("{TASKS}/t2")).await;
        let mut resumed = c
            .watch(&format!("{TASKS}?watch=true&resourceVersion={seen}"))
            .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let e = resumed.next_change().await;
            got.push((
                e["type"].as_str().unwrap().to_owned(),
                e["object"]["metadata"]["name"].as_str().unwrap().to_owned(),
            ));
        }
        assert_eq!(
            got,
            [
                ("ADDED".into(), "t2".into()),
                ("MODIFIED".into(), "t1".into()),
                ("DELETED".into(), "t2".into())
            ]
        );
        // Nothing more, then the next live change.
        c.post(TASKS, &task("t3")).await;
        let e = resumed.next_change().await;
        assert_eq!(e["object"]["metadata"]["name"], "t3");
    }

    /// Without a resourceVersion a watch starts with the current objects as ADDED;
    /// a filtered watch sees objects enter and leave its view.
    pub async fn watch_initial_state_and_selectors(server: TestServer) {
        let c = JsonClient::new(&server);
        c.post(TASKS, &task("a")).await;
        let mut all = c.watch(&format!("{TASKS}?watch=true")).await;
        let first = all.next_change().await;
        assert_eq!(
            (
                first["type"].as_str(),
                first["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("a"))
        );
        let mut labelled = c
            .watch(&format!("{TASKS}?watch=true&labelSelector=tier%3Dweb"))
            .await;
        let (_, mut a) = c.get(&format!("{TASKS}/a")).await;
        a["metadata"]["labels"] = json!({"tier": "web"});
        let (_, a) = c.put(&format!("{TASKS}/a"), &a).await;
        let mut a = a;
        a["metadata"]["labels"] = json!({"tier": "db"});
        c.put(&format!("{TASKS}/a"), &a).await;
        let entered = labelled.next_change().await;
        let left = labelled.next_change().await;
        assert_eq!(entered["type"], "ADDED");
        assert_eq!(left["type"], "DELETED");
        assert_eq!(all.next_change().await["type"], "MODIFIED");
    }

    /// A watch from a revision older than the cache's ring gets 410 Expired,
    /// as from Kubernetes' watch cache.
    pub async fn watch_from_too_old_is_gone(server: TestServer) {
        let c = JsonClient::new(&server);
        let (_, first) = c.post(TASKS, &task("old")).await;
        let mut last = first.clone();
        for i in 0..80 {
            last = c.post(TASKS, &task(&format!("n{i}"))).await.1;
        }
        // Let the watch cache catch up first (a list no older than the last write
        // waits for it), so its ring has moved past the first write.
        let (code, _) = c
            .get(&format!(
                "{TASKS}?resourceVersion={}&resourceVersionMatch=NotOlderThan",
                rv(&last)
            ))
            .await;
        assert_eq!(code, 200);
        let mut watch = c
            .watch(&format!(
                "{TASKS}?watch=true&resourceVersion={}",
                rv(&first)
            ))
            .await;
        let event = watch.next().await.unwrap();
        assert_eq!(event["type"], "ERROR", "{event}");
        assert_eq!(event["object"]["code"], 410);
        assert_eq!(event["object"]["reason"], "Expired");
        // Kubernetes' cacher: `too old resource version: <asked> (<oldest>)`.
        let message = event["object"]["message"].as_str().unwrap();
        let asked = format!("too old resource version: {} (", rv(&first));
        assert!(message.starts_with(&asked), "{event}");
    }

    pub async fn bookmarks(server: TestServer) {
        let c = JsonClient::new(&server);
        let (_, created) = c.post(TASKS, &task("b")).await;
        let mut watch = c
            .watch(&format!(
                "{TASKS}?watch=true&allowWatchBookmarks=true&resourceVersion={}",
                rv(&created)
            ))
            .await;
        let event = watch.next().await.unwrap();
        assert_eq!(event["type"], "BOOKMARK");
        assert_eq!(event["object"]["kind"], "Task");
        assert!(rv(&event["object"]) >= rv(&created));
        // Without asking, no bookmarks: the stream just ends at timeoutSeconds.
        let mut quiet = c
            .watch(&format!(
                "{TASKS}?watch=true&timeoutSeconds=1&resourceVersion={}",
                rv(&created)
            ))
            .await;
        assert!(quiet.next().await.is_none());
    }

    /// `tasks/{name}/binding` sets `spec.nodeName` and `Scheduled=True` in one write,
    /// once, and only on the version and uid it names.
    pub async fn binding(server: TestServer) {
        let c = JsonClient::new(&server);
        let (code, created) = c.post(TASKS, &task("b")).await;
        assert_eq!(code, 201, "{created}");
        let binding = |node: &str, object: &Value| {
            json!({
                "apiVersion": "loom.dev/v1", "kind": "Binding",
                "metadata": {
                    "name": "b",
                    "uid": object["metadata"]["uid"],
                    "resourceVersion": object["metadata"]["resourceVersion"],
                },
                "target": {"kind": "Node", "name": node},
            })
        };
        let path = format!("{TASKS}/b/binding");

        let mut stranger = binding("n1", &created);
        stranger["metadata"]["uid"] = json!("not-the-uid");
        let (code, refused) = c.post(&path, &stranger).await;
        assert_eq!(
            (code, refused["reason"].as_str()),
            (409, Some("Conflict")),
            "{refused}"
        );
        let (code, invalid) = c
            .post(
                &path,
                &json!({"kind": "Binding", "target": {"kind": "Pod"}}),
            )
            .await;
        assert_eq!(code, 422, "{invalid}");
        let message = invalid["message"].as_str().unwrap();
        assert!(message.contains("target.name: Required value"), "{message}");
        assert!(
            message.contains("target.kind: Unsupported value"),
            "{message}"
        );
        let (code, bad_node) = c
            .post(&path, &json!({"target": {"name": "Not_A_Node"}}))
            .await;
        assert_eq!(code, 422, "{bad_node}");
        assert!(
            bad_node["message"]
                .as_str()
                .unwrap()
                .contains("target.name: Invalid value"),
            "{bad_node}"
        );
        let (code, _) = c.get(&path).await;
        assert_eq!(code, 405);
        let (code, missing) = c
            .post(
                &format!("{TASKS}/nope/binding"),
                &json!({"target": {"name": "n1"}}),
            )
            .await;
        assert_eq!(
            (code, missing["reason"].as_str()),
            (404, Some("NotFound")),
            "{missing}"
        );
        let (_, unchanged) = c.get(&format!("{TASKS}/b")).await;
        assert_eq!(unchanged, created, "refused bindings write nothing");

        let (code, done) = c
            .post(
                &format!("{path}?fieldManager=loom-scheduler"),
                &binding("n1", &created),
            )
            .await;
        assert_eq!(code, 201, "{done}");
        assert_eq!(
            (done["kind"].as_str(), done["status"].as_str()),
            (Some("Status"), Some("Success"))
        );
        let (_, bound) = c.get(&format!("{TASKS}/b")).await;
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(
            bound["metadata"]["generation"], 2,
            "binding changes the spec"
        );
        assert_eq!(
            bound["metadata"]["managedFields"], created["metadata"]["managedFields"],
            "binding leaves managedFields as they are"
        );
        let scheduled: Vec<&Value> = bound["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "Scheduled")
            .collect();
        assert_eq!(scheduled.len(), 1, "{bound}");
        assert_eq!(scheduled[0]["status"], "True");
        assert_eq!(scheduled[0]["reason"], "Scheduled");
        assert!(scheduled[0]["lastTransitionTime"].is_string());
        assert_eq!(bound["status"]["phase"], created["status"]["phase"]);

        // Once bound, no binding moves it: not with the old version, not with the new.
        let (code, stale) = c.post(&path, &binding("n2", &created)).await;
        assert_eq!(
            (code, stale["reason"].as_str()),
            (409, Some("Conflict")),
            "{stale}"
        );
        let (code, again) = c.post(&path, &binding("n2", &bound)).await;
        assert_eq!(code, 409, "{again}");
        assert!(
            again["message"]
                .as_str()
                .unwrap()
                .contains("already bound to node \"n1\""),
            "{again}"
        );
        let (_, still) = c.get(&format!("{TASKS}/b")).await;
        assert_eq!(still, bound);
    }

    /// Writes start from the watch cache's copy: a patch that would leave that copy
    /// as it is must still reach an object changed since.
    pub async fn writes_after_other_writes(server: TestServer) {
        let c = JsonClient::new(&server);
        let (_, created) = c.post(JOBS, &job("w", 1)).await;
        for round in 0..20 {
            let odd = round % 2 == 1;
            let (code, a) = c
                .patch(
                    &format!("{JOBS}/w"),
                    "application/merge-patch+json",
                    &format!(r#"{{"spec":{{"replicas":{}}}}}"#, if odd { 3 } else { 4 }),
                )
                .await;
            assert_eq!(code, 200, "{a}");
            let (code, b) = c
                .patch(
                    &format!("{JOBS}/w"),
                    "application/merge-patch+json",
                    r#"{"spec":{"replicas":5}}"#,
                )
                .await;
            assert_eq!(code, 200, "{b}");
            assert_eq!(b["spec"]["replicas"], 5, "round {round}: {b}");
            let (_, read) = c.get(&format!("{JOBS}/w")).await;
            assert_eq!(read["spec"]["replicas"], 5, "round {round}: {read}");
            assert_eq!(read, b, "round {round}: the answer is what is stored");
        }
        assert!(rv(&created) > 0);
    }

    pub async fn status_and_spec_are_separate(server: TestServer) {
        let c = JsonClient::new(&server);
        let mut object = job("s", 1);
        object["status"] = json!({"phase": "Running"});
        let (_, created) = c.post(JOBS, &object).await;
        assert_eq!(
            created["status"],
            json!({"phase": "Pending"}),
            "a create's status is the kind's initial one, not the one sent: {created}"
        );

        let mut status_write = created.clone();
        status_write["status"] = json!({"phase": "Running", "running": 1});
        status_write["spec"]["replicas"] = json!(9);
        let (code, after_status) = c.put(&format!("{JOBS}/s/status"), &status_write).await;
        assert_eq!(code, 200, "{after_status}");
        assert_eq!(after_status["status"]["phase"], "Running");
        assert_eq!(
            after_status["spec"]["replicas"], 1,
            "a status write never changes spec"
        );
        assert_eq!(
            after_status["metadata"]["generation"], 1,
            "status writes keep the generation"
        );

        let mut main_write = after_status.clone();
        main_write["status"] = json!({"phase": "Failed"});
        main_write["spec"]["replicas"] = json!(3);
        let (code, after_main) = c.put(&format!("{JOBS}/s"), &main_write).await;
        assert_eq!(code, 200);
        assert_eq!(
            after_main["status"]["phase"], "Running",
            "the main path never changes status"
        );
        assert_eq!(after_main["spec"]["replicas"], 3);
        assert_eq!(after_main["metadata"]["generation"], 2);

        let (code, patched) = c
            .patch(
                &format!("{JOBS}/s/status"),
                "application/merge-patch+json",
                r#"{"status":{"phase":"Completed"},"spec":{"replicas":7}}"#,
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(patched["status"]["phase"], "Completed");
        assert_eq!(patched["spec"]["replicas"], 3);
        // Labels alone do not bump the generation.
        let (_, labelled) = c
            .patch(
                &format!("{JOBS}/s"),
                "application/merge-patch+json",
                r#"{"metadata":{"labels":{"x":"1"}}}"#,
            )
            .await;
        assert_eq!(labelled["metadata"]["generation"], 2);
    }

    pub async fn finalizers_hold_deletion(server: TestServer) {
        let c = JsonClient::new(&server);
        let mut object = job("f", 1);
        object["metadata"]["finalizers"] = json!(["example.com/cleanup"]);
        c.post(JOBS, &object).await;
        let (code, marked) = c.delete(&format!("{JOBS}/f")).await;
        assert_eq!(code, 200);
        assert!(
            marked["metadata"]["deletionTimestamp"].is_string(),
            "{marked}"
        );
        let (code, still) = c.get(&format!("{JOBS}/f")).await;
        assert_eq!(code, 200);
        assert!(still["metadata"]["deletionTimestamp"].is_string());
        // No new finalizers once deleting.
        let (code, refused) = c
            .patch(
                &format!("{JOBS}/f"),
                "application/merge-patch+json",
                r#"{"metadata":{"finalizers":["example.com/cleanup","other/x"]}}"#,
            )
            .await;
        assert_eq!(code, 422, "{refused}");
        let (code, _) = c
            .patch(
                &format!("{JOBS}/f"),
                "application/merge-patch+json",
                r#"{"metadata":{"finalizers":null}}"#,
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(
            c.get(&format!("{JOBS}/f")).await.0,
            404,
            "the last finalizer's removal deletes it"
        );

        // Foreground deletion adds its finalizer.
        c.post(JOBS, &job("fg", 1)).await;
        let (code, fg) = c
            .send(
                Method::DELETE,
                &format!("{JOBS}/fg"),
                "application/json",
                Some(br#"{"propagationPolicy":"Foreground"}"#.to_vec()),
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    }

    pub async fn patches(server: TestServer) {
        let c = JsonClient::new(&server);
        c.post(JOBS, &job("p", 1)).await;
        let (code, merged) = c
            .patch(
                &format!("{JOBS}/p"),
                "application/merge-patch+json",
                r#"{"spec":{"replicas":4}}"#,
            )
            .await;
        assert_eq!((code, merged["spec"]["replicas"].as_i64()), (200, Some(4)));
        let (code, patched) = c
            .patch(
                &format!("{JOBS}/p"),
                "application/json-patch+json",
                r#"[{"op":"replace","path":"/spec/replicas","value":6}]"#,
            )
            .await;
        assert_eq!((code, patched["spec"]["replicas"].as_i64()), (200, Some(6)));
        let (code, failed) = c
            .patch(
                &format!("{JOBS}/p"),
                "application/json-patch+json",
                r#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
            )
            .await;
        assert_eq!(code, 422, "{failed}");
        let (code, invalid) = c
            .patch(
                &format!("{JOBS}/p"),
                "application/merge-patch+json",
                r#"{"spec":{"replicas":-3}}"#,
            )
            .await;
        assert_eq!((code, invalid["reason"].as_str()), (422, Some("Invalid")));
        let (code, _) = c.patch(&format!("{JOBS}/p"), "text/plain", "x").await;
        assert_eq!(code, 415);

        // Server-side apply: create, then a conflict with another manager.
        let applied = r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"sa"},"spec":{"replicas":2,"template":{"spec":{"image":"x"}}}}"#;
        let (code, created) = c
            .patch(
                &format!("{JOBS}/sa?fieldManager=alice"),
                "application/apply-patch+yaml",
                applied,
            )
            .await;
        assert_eq!(code, 201, "{created}");
        let theirs = applied.replace("\"replicas\":2", "\"replicas\":3");
        let (code, conflict) = c
            .patch(
                &format!("{JOBS}/sa?fieldManager=bob"),
                "application/apply-patch+yaml",
                &theirs,
            )
            .await;
        assert_eq!(code, 409, "{conflict}");
        assert_eq!(
            conflict["details"]["causes"][0]["reason"],
            "FieldManagerConflict"
        );
        assert_eq!(conflict["details"]["causes"][0]["field"], ".spec.replicas");
        let (code, forced) = c
            .patch(
                &format!("{JOBS}/sa?fieldManager=bob&force=true"),
                "application/apply-patch+yaml",
                &theirs,
            )
            .await;
        assert_eq!((code, forced["spec"]["replicas"].as_i64()), (200, Some(3)));
        // YAML works too.
        let yaml = "apiVersion: loom.dev/v1\nkind: Job\nmetadata:\n  name: sa\nspec:\n  replicas: 3\n  template:\n    spec:\n      image: x\n";
        let (code, _) = c
            .patch(
                &format!("{JOBS}/sa?fieldManager=bob"),
                "application/apply-patch+yaml",
                yaml,
            )
            .await;
        assert_eq!(code, 200);
        // Applying the same configuration again writes nothing.
        let (_, first) = c
            .patch(
                &format!("{JOBS}/sa?fieldManager=bob"),
                "application/apply-patch+yaml",
                yaml,
            )
            .await;
        let (_, again) = c
            .patch(
                &format!("{JOBS}/sa?fieldManager=bob"),
                "application/apply-patch+yaml",
                yaml,
            )
            .await;
        assert_eq!(rv(&first), rv(&again), "an identical apply is not a write");
    }

    pub async fn custom_kinds(server: TestServer) {
        let c = JsonClient::new(&server);
        let definition = json!({
            "apiVersion": "loom.dev/v1", "kind": "ResourceDefinition",
            "metadata": {"name": "pipelines.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"kind": "Pipeline", "plural": "pipelines", "singular": "pipeline", "shortNames": ["pl"]},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"stages": {"type": "integer", "minimum": 1}}, "required": ["stages"]},
                        "status": {"type": "object", "properties": {"done": {"type": "integer"}}}
                    }}}}]
            }
        });
        let (code, body) = c
            .post("/apis/loom.dev/v1/resourcedefinitions", &definition)
            .await;
        assert_eq!(code, 201, "{body}");
        let pipelines = "/apis/example.com/v1/namespaces/default/pipelines";
        let pipeline = json!({"apiVersion": "example.com/v1", "kind": "Pipeline", "metadata": {"name": "p1"}, "spec": {"stages": 3}});
        // Served at once.
        let (code, created) = c.post(pipelines, &pipeline).await;
        assert_eq!(code, 201, "{created}");
        let (code, bad) = c
            .post(pipelines, &json!({"apiVersion": "example.com/v1", "kind": "Pipeline", "metadata": {"name": "p2"}, "spec": {"stages": 0, "extra": true}}))
            .await;
        assert_eq!(code, 422, "{bad}");
        let fields: BTreeSet<&str> = bad["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains("spec.stages") && fields.contains("spec.extra"),
            "{bad}"
        );
        let (code, list) = c.get(pipelines).await;
        assert_eq!((code, list["kind"].as_str()), (200, Some("PipelineList")));
        let mut watch = c.watch(&format!("{pipelines}?watch=true")).await;
        assert_eq!(
            watch.next_change().await["object"]["metadata"]["name"],
            "p1"
        );
        let (code, status) = c
            .patch(
                &format!("{pipelines}/p1/status"),
                "application/merge-patch+json",
                r#"{"status":{"done":2},"spec":{"stages":9}}"#,
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(
            (
                status["status"]["done"].as_i64(),
                status["spec"]["stages"].as_i64()
            ),
            (Some(2), Some(3))
        );
        let (code, discovery) = c.get("/apis/example.com/v1").await;
        assert_eq!(code, 200);
        assert_eq!(discovery["resources"][0]["name"], "pipelines");
        // Deleting the definition stops serving the kind.
        assert_eq!(
            c.delete("/apis/loom.dev/v1/resourcedefinitions/pipelines.example.com")
                .await
                .0,
            200
        );
        assert_eq!(c.get(pipelines).await.0, 404);
        // A schema that does not compile is refused.
        let mut broken = definition.clone();
        broken["metadata"]["name"] = json!("broken.example.org");
        broken["spec"]["group"] = json!("example.org");
        broken["spec"]["names"]["plural"] = json!("broken");
        broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({"type": 7});
        let (code, body) = c
            .post("/apis/loom.dev/v1/resourcedefinitions", &broken)
            .await;
        assert_eq!(code, 422, "{body}");
    }

    pub async fn namespaces_must_exist(server: TestServer) {
        let c = JsonClient::new(&server);
        let (code, body) = c
            .post("/apis/loom.dev/v1/namespaces/team-a/jobs", &job("x", 1))
            .await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["message"], "namespaces.loom.dev \"team-a\" not found");
        let (code, _) = c.post("/apis/loom.dev/v1/namespaces", &json!({"apiVersion": "loom.dev/v1", "kind": "Namespace", "metadata": {"name": "team-a"}})).await;
        assert_eq!(code, 201);
        assert_eq!(
            c.post("/apis/loom.dev/v1/namespaces/team-a/jobs", &job("x", 1))
                .await
                .0,
            201
        );
        // All namespaces at once, and a namespace's delete takes its objects.
        let (_, all) = c.get("/apis/loom.dev/v1/jobs").await;
        assert_eq!(all["items"].as_array().unwrap().len(), 1);
        assert_eq!(c.delete("/apis/loom.dev/v1/namespaces/team-a").await.0, 200);
        let (_, all) = c.get("/apis/loom.dev/v1/jobs").await;
        assert!(all["items"].as_array().unwrap().is_empty());
        assert_eq!(
            c.delete("/apis/loom.dev/v1/namespaces/default").await.0,
            403
        );
    }

    pub async fn selectors_and_pagination(server: TestServer) {
        let c = JsonClient::new(&server);
        for i in 0..12 {
            let mut t = task(&format!("t{i:02}"));
            t["metadata"]["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
            if i < 3 {
                t["spec"]["nodeName"] = json!("n1");
            }
            assert_eq!(c.post(TASKS, &t).await.0, 201);
        }
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let (_, even) = c.get(&format!("{TASKS}?labelSelector=parity%3Deven")).await;
        assert_eq!(names(&even).len(), 6);
        let (_, set) = c
            .get(&format!("{TASKS}?labelSelector=parity%20in%20(odd)"))
            .await;
        assert_eq!(names(&set).len(), 6);
        let (_, on_node) = c
            .get(&format!("{TASKS}?fieldSelector=spec.nodeName%3Dn1"))
            .await;
        assert_eq!(names(&on_node), ["t00", "t01", "t02"]);
        // From the watch cache, no older than the list above (resourceVersion=0 alone
        // may be any recent state, so it could race the cache).
        let seen = on_node["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, cached) = c
            .get(&format!(
                "{TASKS}?fieldSelector=spec.nodeName%3Dn1&resourceVersion={seen}&resourceVersionMatch=NotOlderThan"
            ))
            .await;
        assert_eq!(names(&cached), ["t00", "t01", "t02"]);
        let (code, bad) = c
            .get(&format!("{TASKS}?fieldSelector=spec.image%3Dx"))
            .await;
        assert_eq!(code, 400, "{bad}");
        let (code, _) = c.get(&format!("{TASKS}?labelSelector=a%20in%20(")).await;
        assert_eq!(code, 400);
        // Pages of 5 of the even tasks, while a write goes on between pages.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let path = format!("{TASKS}?labelSelector=parity%3Deven&limit=5&continue={token}");
            let (code, page) = c.get(&path).await;
            assert_eq!(code, 200, "{page}");
            seen.extend(names(&page));
            c.post(TASKS, &task(&format!("late-{}", seen.len()))).await;
            match page["metadata"]["continue"].as_str() {
                Some(next) => token = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen, ["t00", "t02", "t04", "t06", "t08", "t10"]);
    }

    /// Every bad request gets a 4xx Status and leaves the store as it was.
    pub async fn bad_input_changes_nothing(server: TestServer) {
        let c = JsonClient::new(&server);
        c.post(JOBS, &job("exists", 1)).await;
        let before = server.store.current_revision().await.unwrap();
        let big = format!(
            r#"{{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{{"name":"big","annotations":{{"a":"{}"}}}}}}"#,
            "x".repeat(3 * 1024 * 1024 + 10)
        );
        let deep = format!(
            r#"{{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{{"name":"deep"}},"spec":{{"template":{{"metadata":{{"annotations":{}}}}}}}}}"#,
            "[".repeat(100) + &"]".repeat(100)
        );
        let cases: Vec<(&str, Method, String, &str, String, u16)> = vec![
            ("malformed JSON", Method::POST, JOBS.into(), "application/json", "{\"apiVersion\":".into(), 400),
            ("malformed YAML", Method::POST, JOBS.into(), "application/yaml", "kind: Job\nmetadata: [x\n".into(), 400),
            ("not an object", Method::POST, JOBS.into(), "application/json", "[1,2]".into(), 400),
            ("wrong apiVersion", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v9","kind":"Job","metadata":{"name":"x"}}"#.into(), 400),
            ("wrong kind", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Task","metadata":{"name":"x"}}"#.into(), 400),
            ("other namespace", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"x","namespace":"other"}}"#.into(), 400),
            ("invalid name", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"Not_Valid"},"spec":{"template":{"spec":{"image":"x"}}}}"#.into(), 422),
            ("no name", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{},"spec":{"template":{"spec":{"image":"x"}}}}"#.into(), 422),
            ("unknown field", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"x"},"spec":{"replicaz":1,"template":{"spec":{"image":"x"}}}}"#.into(), 422),
            ("wrong type", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"x"},"spec":{"replicas":"three","template":{"spec":{"image":"x"}}}}"#.into(), 422),
            ("bad quantity", Method::POST, TASKS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Task","metadata":{"name":"x"},"spec":{"image":"x","resources":{"cpu":"lots"}}}"#.into(), 422),
            ("negative replicas", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"x"},"spec":{"replicas":-1,"template":{"spec":{"image":"x"}}}}"#.into(), 422),
            ("self dependency", Method::POST, JOBS.into(), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"x"},"spec":{"dependsOn":["x"],"template":{"spec":{"image":"x"}}}}"#.into(), 422),
            ("oversized body", Method::POST, JOBS.into(), "application/json", big, 413),
            ("too deep", Method::POST, JOBS.into(), "application/json", deep, 400),
            ("unsupported media type", Method::POST, JOBS.into(), "text/plain", "hello".into(), 415),
            ("bad fieldValidation", Method::POST, format!("{JOBS}?fieldValidation=Maybe"), "application/json", job("x", 1).to_string(), 400),
            ("name mismatch", Method::PUT, format!("{JOBS}/exists"), "application/json", job("other", 1).to_string(), 400),
            ("bad resourceVersion", Method::PUT, format!("{JOBS}/exists"), "application/json", r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"exists","resourceVersion":"abc"},"spec":{"template":{"spec":{"image":"x"}}}}"#.into(), 400),
            ("bad propagation", Method::DELETE, format!("{JOBS}/exists?propagationPolicy=Sometimes"), "application/json", String::new(), 400),
            ("unknown kind", Method::POST, "/apis/loom.dev/v1/namespaces/default/widgets".into(), "application/json", "{}".into(), 404),
        ];
        for (what, method, path, content_type, body, expected) in cases {
            let body = if body.is_empty() {
                None
            } else {
                Some(body.into_bytes())
            };
            let (code, status) = c.send(method, &path, content_type, body).await;
            assert_eq!(code, expected, "{what}: {status}");
            assert_eq!(
                status["kind"], "Status",
                "{what}: the error must be a Status: {status}"
            );
            assert_eq!(status["code"], expected, "{what}");
            assert!(
                status["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}"
            );
            if expected == 422 {
                assert!(
                    !status["details"]["causes"].as_array().unwrap().is_empty(),
                    "{what}: causes name the fields"
                );
            }
        }
        assert_eq!(
            server.store.current_revision().await.unwrap(),
            before,
            "bad input must not write"
        );
        // fieldValidation=Ignore drops unknown fields; Warn drops them with a warning.
        let lenient = r#"{"apiVersion":"loom.dev/v1","kind":"Job","metadata":{"name":"lenient"},"spec":{"replicaz":1,"template":{"spec":{"image":"x"}}}}"#;
        let response = server
            .http()
            .post(format!("{}{JOBS}?fieldValidation=Warn", server.url))
            .header("Content-Type", "application/json")
            .body(lenient)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let warning = response
            .headers()
            .get("warning")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(warning.contains("spec.replicaz"), "{warning}");
        let created: Value = response.json().await.unwrap();
        assert!(created["spec"].get("replicaz").is_none());
    }

    pub async fn discovery(server: TestServer) {
        let c = JsonClient::new(&server);
        let (code, version) = c.get("/version").await;
        assert_eq!((code, version["major"].as_str()), (200, Some("1")));
        let (_, groups) = c.get("/apis").await;
        assert_eq!(groups["groups"][0]["name"], "loom.dev");
        let response = server.http()
            .get(format!("{}/apis", server.url))
            .header("Accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let aggregated: Value = response.json().await.unwrap();
        let resources = aggregated["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap();
        assert!(
            resources
                .iter()
                .all(|r| r["responseKind"]["kind"].is_string())
        );
        let (_, list) = c.get("/apis/loom.dev/v1").await;
        let tasks = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "tasks")
            .unwrap();
        assert_eq!(tasks["shortNames"], json!(["t"]));
        assert_eq!(tasks["namespaced"], true);
        for (plural, short) in [("jobs", "job"), ("services", "svc"), ("nodes", "no")] {
            let r = list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == plural)
                .unwrap();
            assert!(
                r["shortNames"].as_array().unwrap().contains(&json!(short)),
                "{plural}"
            );
        }
        let (_, root) = c.get("/openapi/v3").await;
        let url = root["paths"]["apis/loom.dev/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .to_owned();
        let (code, doc) = c.get(&url).await;
        assert_eq!(code, 200);
        assert!(doc["components"]["schemas"]["dev.loom.v1.Task"].is_object());
        for path in ["/healthz", "/livez", "/readyz"] {
            assert_eq!(c.send(Method::GET, path, "", None).await.0, 200, "{path}");
        }
        c.post(TASKS, &task("m")).await;
        // The watch cache learns of the task through its store watch: poll, do not race.
        let deadline = Instant::now() + Duration::from_secs(10);
        let metrics = loop {
            let metrics = server
                .http()
                .get(format!("{}/metrics", server.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metrics.contains("loom_apiserver_watch_cache_objects{resource=\"tasks.loom.dev\"} 1")
                || Instant::now() > deadline
            {
                break metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            metrics.contains("loom_apiserver_requests_total{"),
            "{metrics}"
        );
        assert!(
            metrics.contains("loom_apiserver_watch_cache_objects{resource=\"tasks.loom.dev\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("loom_apiserver_store_duration_seconds_bucket"),
            "{metrics}"
        );
        // Tables for kubectl.
        let table: Value = server
            .http()
            .get(format!("{}{TASKS}", server.url))
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(table["kind"], "Table");
        let headers: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(headers, ["Name", "Phase", "Node", "Exit", "Reason", "Age"]);
        assert_eq!(table["rows"][0]["object"]["kind"], "Task");
    }
}

macro_rules! api_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;
            api_suite!(@case $backend, crud);
            api_suite!(@case $backend, conflicting_updates_lose_nothing);
            api_suite!(@case $backend, watch_resumes_after_disconnect);
            api_suite!(@case $backend, watch_initial_state_and_selectors);
            api_suite!(@case $backend, watch_from_too_old_is_gone);
            api_suite!(@case $backend, bookmarks);
            api_suite!(@case $backend, status_and_spec_are_separate);
            api_suite!(@case $backend, binding);
            api_suite!(@case $backend, writes_after_other_writes);
            api_suite!(@case $backend, finalizers_hold_deletion);
            api_suite!(@case $backend, patches);
            api_suite!(@case $backend, custom_kinds);
            api_suite!(@case $backend, namespaces_must_exist);
            api_suite!(@case $backend, selectors_and_pagination);
            api_suite!(@case $backend, bad_input_changes_nothing);
            api_suite!(@case $backend, discovery);
        }
    };
    (@case $backend:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let server = TestServer::$backend(test_config()).await.unwrap();
            cases::$case(server).await;
        }
    };
}

api_suite!(embedded);
api_suite!(etcd);

/// A list at a compacted revision, or a continue token from before a
/// compaction, is 410 Gone; a second API server over the same etcd sees the first one's writes.
mod store_level {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn compacted_revisions_are_gone() {
        let server = TestServer::embedded(test_config()).await.unwrap();
        let c = JsonClient::new(&server);
        let (_, first) = c.post(TASKS, &task("a")).await;
        for i in 0..5 {
            c.post(TASKS, &task(&format!("b{i}"))).await;
        }
        let (_, page) = c.get(&format!("{TASKS}?limit=2")).await;
        let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
        c.post(TASKS, &task("after-the-page")).await;
        let head = server.store.current_revision().await.unwrap();
        server.store.compact(head).await.unwrap();
        let (code, body) = c
            .get(&format!(
                "{TASKS}?resourceVersion={}&resourceVersionMatch=Exact",
                rv(&first)
            ))
            .await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (410, Some("Expired")),
            "{body}"
        );
        assert_eq!(
            body["message"], "The resourceVersion for the provided list is too old.",
            "{body}"
        );
        let (code, body) = c.get(&format!("{TASKS}?limit=2&continue={token}")).await;
        assert_eq!(code, 410, "{body}");
        assert_eq!(body["reason"], "Expired", "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_api_servers_share_one_etcd() {
        let first = TestServer::etcd(test_config()).await.unwrap();
        let second = TestServer::over(first.store.clone(), test_config())
            .await
            .unwrap();
        let a = JsonClient::new(&first);
        let b = JsonClient::new(&second);
        let (_, list) = b.get(TASKS).await;
        let mut watch = b
            .watch(&format!(
                "{TASKS}?watch=true&resourceVersion={}",
                list["metadata"]["resourceVersion"].as_str().unwrap()
            ))
            .await;
        assert_eq!(a.post(TASKS, &task("shared")).await.0, 201);
        let event = watch.next_change().await;
        assert_eq!(event["object"]["metadata"]["name"], "shared");
        let (code, got) = b.get(&format!("{TASKS}/shared")).await;
        assert_eq!(code, 200, "{got}");
        let _ = Arc::clone(&first.store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_watch_from_the_latest_list_waits_for_no_one() {
        let server = TestServer::embedded(test_config()).await.unwrap();
        let c = JsonClient::new(&server);
        // A write to another resource moves the store's revision past the tasks cache.
        c.post(JOBS, &job("elsewhere", 1)).await;
        let (_, list) = c.get(TASKS).await;
        let started = Instant::now();
        let mut watch = c
            .watch(&format!(
                "{TASKS}?watch=true&resourceVersion={}",
                list["metadata"]["resourceVersion"].as_str().unwrap()
            ))
            .await;
        c.post(TASKS, &task("next")).await;
        assert_eq!(
            watch.next_change().await["object"]["metadata"]["name"],
            "next"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
