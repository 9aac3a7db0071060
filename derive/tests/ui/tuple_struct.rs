use loom_derive::Resource;

#[derive(Resource)]
#[resource(group = "example.com", version = "v1", kind = "Backup")]
pub struct BackupSpec(String);

fn main() {}
