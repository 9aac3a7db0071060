//! A kind's conversion hook on a real server: a toy conversion registered for
//! a custom kind is called on writes (the store holds the stored form) and on
//! every read (get, list, watch show the served form).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use apiserver::registry::conversion::{self, Conversion};
use apiserver::store::ListOptions;
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use serde_json::{Value, json};

/// Stores `spec.color`, serves `spec.colour`.
#[derive(Default)]
struct Spelling {
    reads: AtomicUsize,
    writes: AtomicUsize,
}

fn rename(object: &mut Value, from: &str, to: &str) {
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(value) = spec.remove(from)
    {
        spec.insert(to.to_owned(), value);
    }
}

impl Conversion for Spelling {
    fn to_served(&self, object: &mut Value, served: &str) {
        assert_eq!(served, "paint.example.com/v1");
        self.reads.fetch_add(1, Ordering::Relaxed);
        rename(object, "color", "colour");
    }

    fn to_stored(&self, object: &mut Value, served: &str, stored: &str) -> Result<(), String> {
        assert_eq!(
            (served, stored),
            ("paint.example.com/v1", "paint.example.com/v1")
        );
        self.writes.fetch_add(1, Ordering::Relaxed);
        if object["spec"]["color"].is_string() {
            return Err("spec.color is the stored spelling: send spec.colour".to_owned());
        }
        rename(object, "colour", "color");
        Ok(())
    }
}

async fn stored_spec(server: &TestServer, name: &str) -> Value {
    let page = server.store.list("", ListOptions::default()).await.unwrap();
    let kv = page
        .items
        .iter()
        .find(|kv| {
            kv.key.contains("/default/")
                && kv.key.ends_with(&format!("/{name}"))
                && kv.key.contains("paint")
        })
        .unwrap_or_else(|| panic!("{name} is not in the store"));
    let object: Value = serde_json::from_slice(&kv.value).unwrap();
    object["spec"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinds_conversion_runs_on_every_write_and_read() {
    let hook = Arc::new(Spelling::default());
    conversion::register("paint.example.com", "Paint", hook.clone());
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let c = JsonClient::new(&server);
    let definition = json!({
        "apiVersion": "loom.dev/v1", "kind": "ResourceDefinition",
        "metadata": {"name": "paints.paint.example.com"},
        "spec": {
            "group": "paint.example.com",
            "names": {"kind": "Paint", "plural": "paints", "singular": "paint"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "color": {"type": "string"}, "colour": {"type": "string"}
                    }}
                }}}}]
        }
    });
    let (code, body) = c
        .post("/apis/loom.dev/v1/resourcedefinitions", &definition)
        .await;
    assert_eq!(code, 201, "{body}");
    let paints = "/apis/paint.example.com/v1/namespaces/default/paints";
    let paint = json!({"apiVersion": "paint.example.com/v1", "kind": "Paint",
        "metadata": {"name": "p1"}, "spec": {"colour": "red"}});
    let mut created = None;
    for _ in 0..100 {
        let (code, body) = c.post(paints, &paint).await;
        if code != 404 {
            assert_eq!(code, 201, "{body}");
            created = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let created = created.expect("the custom kind is served");
    assert_eq!(created["spec"], json!({"colour": "red"}), "{created}");
    assert_eq!(stored_spec(&server, "p1").await, json!({"color": "red"}));

    let (code, got) = c.get(&format!("{paints}/p1")).await;
    assert_eq!(
        (code, &got["spec"]),
        (200, &json!({"colour": "red"})),
        "{got}"
    );
    let (code, list) = c.get(paints).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["items"][0]["spec"], json!({"colour": "red"}), "{list}");
    let mut watch = c.watch(&format!("{paints}?watch=true")).await;
    let event = watch.next_change().await;
    assert_eq!(event["object"]["spec"], json!({"colour": "red"}), "{event}");

    let mut update = got.clone();
    update["spec"] = json!({"colour": "blue"});
    let (code, updated) = c.put(&format!("{paints}/p1"), &update).await;
    assert_eq!(
        (code, &updated["spec"]),
        (200, &json!({"colour": "blue"})),
        "{updated}"
    );
    assert_eq!(stored_spec(&server, "p1").await, json!({"color": "blue"}));
    let event = watch.next_change().await;
    assert_eq!(event["type"], "MODIFIED", "{event}");
    assert_eq!(
        event["object"]["spec"],
        json!({"colour": "blue"}),
        "{event}"
    );

    // A body the hook cannot convert is refused, naming why, and nothing changes.
    let mut wrong = updated.clone();
    wrong["spec"] = json!({"color": "green"});
    let (code, refused) = c.put(&format!("{paints}/p1"), &wrong).await;
    assert_eq!(
        (code, refused["reason"].as_str()),
        (400, Some("BadRequest")),
        "{refused}"
    );
    assert!(
        refused["message"].as_str().unwrap().contains("spec.colour"),
        "{refused}"
    );
    assert_eq!(stored_spec(&server, "p1").await, json!({"color": "blue"}));

    assert!(hook.writes.load(Ordering::Relaxed) >= 3);
    assert!(hook.reads.load(Ordering::Relaxed) >= 5);
}
