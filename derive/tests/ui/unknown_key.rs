use loom_derive::Resource;

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Backup", shortnames = "bk", scope = "Cluster", colour = "blue")]
pub struct BackupSpec {
    pub schedule: String,
}

fn main() {}
