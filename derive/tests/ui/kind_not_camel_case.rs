use loom_derive::Resource;

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "backup-job")]
pub struct BackupJobSpec {
    pub schedule: String,
}

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Backup_Job")]
pub struct OtherSpec {
    pub schedule: String,
}

fn main() {}
