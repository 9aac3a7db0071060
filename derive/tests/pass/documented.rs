//! A user crate that denies missing docs and warnings: the generated items are documented
//! and clean, also for a spec without docs, a private spec and a status named by its path.
#![deny(missing_docs, warnings)]

use api_types::Resource;
use loom_derive::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Status types in their own module.
pub mod status {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// How full the pool is.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct PoolStatus {
        /// Bytes used.
        pub used: u64,
    }
}

#[allow(missing_docs)]
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[resource(group = "storage.example.com", version = "v1", kind = "Pool", singular = "storagepool")]
#[resource(status = "status::PoolStatus")]
pub struct PoolSpec {
    pub bytes: u64,
}

#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[resource(group = "example.com", version = "v1", kind = "Secret", namespaced)]
struct SecretSpec {
    data: String,
}

fn main() {
    let pool = Pool::new("p", PoolSpec { bytes: 1 });
    assert_eq!(Pool::SINGULAR, "storagepool");
    assert!(pool.status.is_none());
    assert_eq!(
        Pool::resource_definition().spec.names.singular,
        "storagepool"
    );
    let secret = Secret::new("s", SecretSpec { data: "x".into() });
    assert_eq!(secret.spec.data, "x");
}
