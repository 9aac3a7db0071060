use loom_derive::Resource;

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Backup")]
pub enum BackupSpec {
    Daily,
    Weekly,
}

fn main() {}
