use loom_derive::Resource;

// Every problem is reported at once.
#[derive(Resource)]
#[resource(
    group = "example",
    version = "V1",
    kind = "Backup",
    namespaced = true,
    shortname = "bk",
    shortname = "bk",
    status = "not a type"
)]
pub struct BackupSpec {
    pub schedule: String,
}

#[derive(Resource)]
#[resource(group = "loom.dev", version = "v1", kind = "Restore", kind = "Restore")]
pub struct RestoreSpec {
    pub from: String,
}

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Snapshot")]
pub struct Snapshot {
    pub of: String,
}

fn main() {}
