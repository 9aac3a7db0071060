//! The bootstrap token cleaner against the real API server, the controllers
//! running as their own user (so their RBAC role is exercised too).
#![allow(clippy::unwrap_used)]

use api_types::{BootstrapToken, BootstrapTokenSpec, ObjectMeta};
use client::{Api, PostParams};
use loom_testing::cluster::{Cluster, eventually, test_config};

fn token(id: &str, expiration: Option<chrono::DateTime<chrono::Utc>>) -> BootstrapToken {
    BootstrapToken {
        metadata: ObjectMeta::named(id),
        spec: BootstrapTokenSpec {
            secret_hash: format!("sha256:{}", "ab".repeat(32)),
            expiration,
            description: String::new(),
        },
        ..BootstrapToken::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_bootstrap_tokens_are_deleted_and_others_kept() {
    let cluster = Cluster::start(&[], test_config()).await;
    let tokens: Api<BootstrapToken> = Api::all(cluster.client.clone());
    let now = chrono::Utc::now();
    for token in [
        token("abc123", Some(now + chrono::Duration::seconds(2))),
        token("def456", Some(now + chrono::Duration::hours(1))),
        token("ghi789", None),
    ] {
        tokens.create(&PostParams::default(), &token).await.unwrap();
    }
    eventually("the expired token deleted", || async {
        tokens
            .get_opt("abc123")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        chrono::Utc::now() >= now + chrono::Duration::seconds(2),
        "deleted only once expired"
    );
    for kept in ["def456", "ghi789"] {
        assert!(tokens.get_opt(kept).await.unwrap().is_some(), "{kept} kept");
    }
    cluster.shutdown().await;
}
