//! `#[derive(Resource)]`: a kind's struct, its `Resource` impl and its ResourceDefinition, from a spec struct.
