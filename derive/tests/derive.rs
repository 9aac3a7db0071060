//! `#[derive(Resource)]` on real spec structs: the JSON shape, the `Resource` facts and the ResourceDefinition.

#![allow(clippy::unwrap_used)]

use api_types::{Resource, ResourceInfo, ResourceScope, Validate};
use loom_derive::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What to back up and when.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[resource(
    group = "example.com",
    version = "v1",
    kind = "Backup",
    plural = "backups",
    namespaced,
    status = "BackupStatus",
    shortname = "bk"
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// A cron schedule.
    pub schedule: String,
    /// Where to write the backup.
    pub target: String,
    /// How many backups to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
}

/// What the backup controller saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last backup finished.
    pub last_success: Option<String>,
}

/// A storage pool: cluster-scoped, no status, names all defaulted, two short names.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[resource(
    group = "storage.example.com",
    version = "v1beta1",
    kind = "StoragePool",
    shortname = "sp",
    shortname = "pool"
)]
pub struct StoragePoolSpec {
    /// Capacity in bytes.
    pub bytes: u64,
    /// The disks it spans.
    pub disks: Vec<Disk>,
}

/// A disk, nested to check the schema is inlined.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Disk {
    /// The device path.
    pub path: String,
}

fn spec() -> BackupSpec {
    BackupSpec {
        schedule: "0 3 * * *".into(),
        target: "s3://backups".into(),
        keep_last: None,
    }
}

#[test]
fn round_trips_through_json() {
    let text = r#"{"apiVersion":"example.com/v1","kind":"Backup","metadata":{"name":"b"},"spec":{"schedule":"0 3 * * *","target":"s3://backups"}}"#;
    let backup: Backup = serde_json::from_str(text).unwrap();
    assert_eq!(backup, Backup::new("b", spec()));
    assert_eq!(serde_json::to_string(&backup).unwrap(), text);

    let mut with_status = backup.clone();
    with_status.spec.keep_last = Some(7);
    with_status.status = Some(BackupStatus {
        last_success: Some("2024-01-01T03:00:00Z".into()),
    });
    let value = serde_json::to_value(&with_status).unwrap();
    assert_eq!(value["spec"]["keepLast"], 7);
    assert_eq!(
        value["status"],
        json!({"lastSuccess": "2024-01-01T03:00:00Z"})
    );
    assert_eq!(
        serde_json::from_value::<Backup>(value).unwrap(),
        with_status
    );
}

#[test]
fn defaults_carry_the_type() {
    let backup = Backup::default();
    assert_eq!(backup.api_version, "example.com/v1");
    assert_eq!(backup.kind, "Backup");
    assert_eq!(backup.status, None);
    // Missing fields take their defaults, as for the built-in kinds.
    let sparse: Backup = serde_json::from_str(r#"{"metadata":{"name":"b"}}"#).unwrap();
    assert_eq!(sparse.api_version, "example.com/v1");
    assert_eq!(sparse.meta().name, "b");

    let mut pool = StoragePool::new("p", StoragePoolSpec::default());
    assert_eq!(pool.api_version, "storage.example.com/v1beta1");
    pool.meta_mut().labels.insert("tier".into(), "fast".into());
    assert_eq!(pool.metadata.labels["tier"], "fast");
}

#[test]
fn resource_facts() {
    assert_eq!(Backup::GROUP, "example.com");
    assert_eq!(Backup::VERSION, "v1");
    assert_eq!(Backup::KIND, "Backup");
    assert_eq!(Backup::PLURAL, "backups");
    assert_eq!(Backup::SINGULAR, "backup");
    assert_eq!(Backup::SHORT_NAMES, ["bk"]);
    assert_eq!((Backup::NAMESPACED, Backup::HAS_STATUS), (true, true));
    assert_eq!(
        Backup::info(),
        ResourceInfo {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Backup".into(),
            plural: "backups".into(),
            singular: "backup".into(),
            short_names: vec!["bk".into()],
            list_kind: "BackupList".into(),
            namespaced: true,
            has_status: true,
        }
    );

    assert_eq!(StoragePool::api_version(), "storage.example.com/v1beta1");
    assert_eq!(StoragePool::PLURAL, "storagepools");
    assert_eq!(StoragePool::SINGULAR, "storagepool");
    assert_eq!(StoragePool::SHORT_NAMES, ["sp", "pool"]);
    assert_eq!(
        (StoragePool::NAMESPACED, StoragePool::HAS_STATUS),
        (false, false)
    );
    assert!(StoragePool::info().is_named("pool"));
}

#[test]
fn no_status_field_without_status() {
    let value = serde_json::to_value(StoragePool::new("p", StoragePoolSpec::default())).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
    // Exhaustive, so it stops compiling if a status field appears.
    let StoragePool {
        api_version: _,
        kind: _,
        metadata: _,
        spec: _,
    } = StoragePool::default();
    let rd = StoragePool::resource_definition();
    assert!(rd.spec.versions[0].subresources.is_none());
    let schema = &rd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema;
    assert!(schema["properties"].get("status").is_none(), "{schema:#}");
}

#[test]
fn resource_definition_is_valid_and_describes_the_spec() {
    let rd = Backup::resource_definition();
    assert_eq!(rd.validate(), vec![]);
    assert_eq!(rd.metadata.name, "backups.example.com");
    assert_eq!(rd.spec.group, "example.com");
    assert_eq!(rd.spec.scope, ResourceScope::Namespaced);
    let names = &rd.spec.names;
    assert_eq!(
        (
            names.kind.as_str(),
            names.plural.as_str(),
            names.singular.as_str()
        ),
        ("Backup", "backups", "backup")
    );
    assert_eq!(names.short_names, ["bk"]);
    assert_eq!(rd.info_for_version("v1"), Some(Backup::info()));
    assert_eq!(rd.storage_version().map(|v| v.name.as_str()), Some("v1"));

    let version = &rd.spec.versions[0];
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
    let schema = &version.schema.as_ref().unwrap().open_api_v3_schema;
    assert_eq!(schema["type"], "object");
    assert!(!schema.to_string().contains("$ref"), "{schema:#}");
    assert!(schema.get("$defs").is_none() && schema.get("definitions").is_none());
    assert!(schema.get("$schema").is_none());
    let properties = schema["properties"].as_object().unwrap();
    let mut top: Vec<&String> = properties.keys().collect();
    top.sort();
    assert_eq!(top, ["spec", "status"], "the server adds the rest");
    let spec = &properties["spec"];
    assert_eq!(spec["type"], "object");
    assert_eq!(spec["description"], "What to back up and when.");
    let mut fields: Vec<&String> = spec["properties"].as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["keepLast", "schedule", "target"]);
    assert_eq!(spec["properties"]["schedule"]["type"], "string");
    assert_eq!(spec["properties"]["keepLast"]["format"], "uint32");
    assert_eq!(
        properties["status"]["properties"]["lastSuccess"]["type"],
        "string"
    );
    assert_eq!(schema["additionalProperties"], false);
    // As stored: a ResourceDefinition manifest round-trips.
    let json = serde_json::to_value(&rd).unwrap();
    assert_eq!(json["apiVersion"], "loom.dev/v1");
    assert_eq!(json["kind"], "ResourceDefinition");
    assert_eq!(
        json["spec"]["versions"][0]["subresources"],
        json!({"status": {}})
    );
    assert_eq!(
        serde_json::from_value::<api_types::ResourceDefinition>(json).unwrap(),
        rd
    );
}

#[test]
fn cluster_scoped_definition_inlines_nested_types() {
    let rd = StoragePool::resource_definition();
    assert_eq!(rd.validate(), vec![]);
    assert_eq!(rd.metadata.name, "storagepools.storage.example.com");
    assert_eq!(rd.spec.scope, ResourceScope::Cluster);
    assert_eq!(rd.spec.names.short_names, ["sp", "pool"]);
    assert_eq!(rd.info_for_version("v1beta1"), Some(StoragePool::info()));
    let schema: &Value = &rd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema;
    assert!(!schema.to_string().contains("$ref"), "{schema:#}");
    let disk = &schema["properties"]["spec"]["properties"]["disks"]["items"];
    assert_eq!(disk["properties"]["path"]["type"], "string", "{schema:#}");
}
