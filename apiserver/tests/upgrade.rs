//! Upgrades: a data dir written by an earlier build opens in this one, with
//! every object at its resourceVersion. `testing/fixtures/data-dir-format-1`
//! was made by the build that introduced format 1 (the ignored test below
//! writes it again); it stays committed as it is, so every later build is
//! tested against it (and each new format gets a fixture of its own).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apiserver::store::embedded::{self, FORMAT_VERSION};
use apiserver::store::{EmbeddedOptions, EmbeddedStore, Store as _};
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use serde_json::{Value, json};

const TASKS: &str = "/apis/loom.dev/v1/namespaces/default/tasks";
const NAMESPACES: &str = "/api/v1/namespaces";

fn fixture(format: i64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testing/fixtures")
        .join(format!("data-dir-format-{format}"))
}

fn rv(object: &Value) -> i64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn task(name: &str) -> Value {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Task",
        "metadata": {"name": name, "labels": {"app": "fixture"}},
        "spec": {"image": "busybox", "command": ["true"]}
    })
}

#[tokio::test]
async fn a_format_1_data_dir_opens_with_its_objects_at_their_resource_versions() {
    let fixture = fixture(1);
    let expected: BTreeMap<String, i64> =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    // Never opened in place: opening writes (WAL mode, a migration).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loom.db");
    std::fs::copy(fixture.join("loom.db"), &path).unwrap();
    let info = embedded::inspect(&path).unwrap();
    assert_eq!(info.format, 1);
    let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
    let head = store.current_revision().await.unwrap();
    assert_eq!(head, info.revision);
    let server = TestServer::over(Arc::new(store), apiserver::Config::default())
        .await
        .unwrap();
    let client = JsonClient::new(&server);
    for (path, resource_version) in &expected {
        let (code, object) = client.get(path).await;
        assert_eq!(code, 200, "{path}: {object}");
        assert_eq!(rv(&object), *resource_version, "{path}");
    }
    let (_, gone) = client.get(&format!("{TASKS}/deleted")).await;
    assert_eq!(gone["code"], 404, "{gone}");
    let (_, t1) = client.get(&format!("{TASKS}/t1")).await;
    assert_eq!(t1["metadata"]["labels"]["tier"], "updated");
    assert_eq!(t1["apiVersion"], "loom.dev/v1");
    // The store records the object at the apiVersion it was written as (a
    // later version of a kind converts from it).
    let stored = server
        .store
        .get("loom.dev/tasks/default/t1")
        .await
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(stored["apiVersion"], "loom.dev/v1");
    // And it is written on, in this build's format.
    let (code, created) = client.post(TASKS, &task("after-upgrade")).await;
    assert_eq!(code, 201, "{created}");
    assert!(rv(&created) > head);
    // Beside the running server (WAL lets another reader in).
    let format: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(format, FORMAT_VERSION);
}

/// Writes `testing/fixtures/data-dir-format-1` again. Run it only when a new
/// format is introduced (with that format's number), never to refresh an old one:
/// `cargo test -p loom-apiserver --test upgrade -- --ignored write_the_fixture`.
#[tokio::test]
#[ignore = "writes the committed fixture"]
async fn write_the_fixture() {
    let out = fixture(FORMAT_VERSION);
    std::fs::create_dir_all(&out).unwrap();
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = JsonClient::new(&server);
    let mut expected = BTreeMap::new();
    let (code, ns) = client
        .post(
            NAMESPACES,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fixture"}}),
        )
        .await;
    assert_eq!(code, 201, "{ns}");
    expected.insert(format!("{NAMESPACES}/fixture"), rv(&ns));
    for name in ["t1", "t2", "deleted"] {
        let (code, created) = client.post(TASKS, &task(name)).await;
        assert_eq!(code, 201, "{created}");
        expected.insert(format!("{TASKS}/{name}"), rv(&created));
    }
    let (code, mut t1) = client.get(&format!("{TASKS}/t1")).await;
    assert_eq!(code, 200);
    t1["metadata"]["labels"]["tier"] = json!("updated");
    let (code, t1) = client.put(&format!("{TASKS}/t1"), &t1).await;
    assert_eq!(code, 200, "{t1}");
    expected.insert(format!("{TASKS}/t1"), rv(&t1));
    let (code, _) = client.delete(&format!("{TASKS}/deleted")).await;
    assert_eq!(code, 200);
    expected.remove(&format!("{TASKS}/deleted"));
    // The store's own online backup: one self-contained file.
    let mut snapshot = server.store.snapshot().await.unwrap();
    let mut file = std::fs::File::create(out.join("loom.db")).unwrap();
    std::io::copy(&mut snapshot.file, &mut file).unwrap();
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
}
