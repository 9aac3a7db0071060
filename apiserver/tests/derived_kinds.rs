//! Kinds made with `#[derive(Resource)]`, served from their generated
//! ResourceDefinition: real objects are accepted (`None` options included) and
//! mistakes refused, through the HTTP API.
#![allow(clippy::unwrap_used)]

use api_types::Resource as _;
use loom_derive::Resource;
use loom_testing::TestServer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What to back up and when.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[resource(
    group = "example.com",
    version = "v1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// A cron schedule.
    pub schedule: String,
    /// How many backups to keep.
    pub keep_last: Option<u32>,
}

/// What the backup controller saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last backup finished.
    pub last_success: Option<String>,
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let response = server
        .http()
        .post(format!("{}{path}", server.url))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_kind_is_served_from_its_generated_definition() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let definition = serde_json::to_value(Backup::resource_definition()).unwrap();
    let (code, body) = post(
        &server,
        "/apis/loom.dev/v1/resourcedefinitions",
        &definition,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let backups = format!(
        "/apis/{}/{}/namespaces/default/{}",
        Backup::GROUP,
        Backup::VERSION,
        Backup::PLURAL
    );
    // Options left as `None` serialize as null: the schema says nullable.
    let backup = Backup::new(
        "nightly",
        BackupSpec {
            schedule: "0 2 * * *".into(),
            keep_last: None,
        },
    );
    let value = serde_json::to_value(&backup).unwrap();
    assert_eq!(value["spec"]["keepLast"], Value::Null);
    let (code, body) = post(&server, &backups, &value).await;
    assert_eq!(code, 201, "{body}");
    let mut wrong = value.clone();
    wrong["metadata"]["name"] = json!("wrong");
    wrong["spec"]["keepLast"] = json!(-1);
    wrong["spec"]["schedule"] = json!(3);
    wrong["spec"]["bogus"] = json!(true);
    let (code, body) = post(&server, &backups, &wrong).await;
    assert_eq!(code, 422, "{body}");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    for field in ["spec.keepLast", "spec.schedule", "spec.bogus"] {
        assert!(fields.contains(&field), "{field} in {body}");
    }
}
