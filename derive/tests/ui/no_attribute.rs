use loom_derive::Resource;

#[derive(Resource)]
pub struct BackupSpec {
    pub schedule: String,
}

fn main() {}
