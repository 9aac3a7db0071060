//! `/readyz` follows the store: an API server cut from etcd says so (503,
//! naming the store), as Kubernetes' `etcd` readiness check does, so a load
//! balancer takes it out of rotation instead of sending clients to 500s.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use apiserver::Config;
use loom_testing::{EtcdServer, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_store_is_down() {
    let etcd = EtcdServer::start().await.unwrap();
    let store = etcd.store("/ready/").await.unwrap();
    let server = TestServer::over(std::sync::Arc::new(store), Config::default())
        .await
        .unwrap();
    let http = server.http_anonymous();
    let url = format!("https://{}/readyz", server.address());
    let ready = http.get(&url).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);

    drop(etcd);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http.get(&url).send().await.unwrap();
        let status = answer.status();
        let body = answer.text().await.unwrap();
        if status == 503 {
            assert!(body.contains("store"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // /livez is the process's, not the store's.
    let live = http
        .get(format!("https://{}/livez", server.address()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}
