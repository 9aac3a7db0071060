use loom_derive::Resource;

#[derive(Resource)]
#[resource(group = "example.com", plural = "backups")]
pub struct BackupSpec {
    pub schedule: String,
}

fn main() {}
