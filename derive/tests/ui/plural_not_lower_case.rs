use loom_derive::Resource;

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Backup", plural = "Backups")]
pub struct BackupSpec {
    pub schedule: String,
}

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Restore", plural = "re_stores", shortname = "RS")]
pub struct RestoreSpec {
    pub from: String,
}

fn main() {}
