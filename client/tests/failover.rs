//! A client given several API servers uses the one it can reach.
#![allow(clippy::unwrap_used)]

use api_types::Namespace;
use client::{Api, Client, ListParams};
use futures::StreamExt as _;
use loom_testing::{TestServer, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_over_to_the_next() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let dead = format!("https://127.0.0.1:{}", free_port().unwrap());
    let with_servers = |servers: String| {
        let mut config = server.client_config();
        config.server = servers;
        Client::new(config).unwrap()
    };
    let client = with_servers(format!("{dead}, {}/", server.url));
    assert_eq!(client.server(), dead);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let list = namespaces.list(&ListParams::default()).await.unwrap();
    assert!(list.items.iter().any(|n| n.metadata.name == "default"));
    assert_eq!(client.server(), server.url.trim_end_matches('/'));
    // Streams fail over too.
    let client = with_servers(format!("{dead},{}", server.url));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut stream = Box::pin(
        namespaces
            .watch(
                &client::api::WatchParams {
                    timeout_seconds: Some(1),
                    ..Default::default()
                },
                "0",
            )
            .await
            .unwrap(),
    );
    assert!(stream.next().await.is_some());
    // A single unreachable server is an error, not a hang.
    let client = with_servers(dead.clone());
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(namespaces.list(&ListParams::default()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_serve_fails_over_to_the_next() {
    // The first server's store is gone: it answers, but 504 (its store does
    // not answer), as Kubernetes does.
    let etcd = loom_testing::EtcdServer::start().await.unwrap();
    let store = etcd.store("/failover/").await.unwrap();
    let stranded = TestServer::over(std::sync::Arc::new(store), apiserver::Config::default())
        .await
        .unwrap();
    let healthy = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    drop(etcd);
    let mut config = healthy.client_config();
    config.server = format!("{},{}", stranded.url, healthy.url);
    let client = Client::new(config).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // Through the stranded server alone: a 504 naming the store.
    let only = {
        let mut config = healthy.client_config();
        config.server = stranded.url.clone();
        config.retries = 0;
        Api::<Namespace>::all(Client::new(config).unwrap())
    };
    let error = only.get("default").await.unwrap_err();
    assert_eq!(error.code(), Some(504), "{error}");
    assert!(error.to_string().contains("store"), "{error}");
    // The client given both is answered by the healthy one, and stays there.
    let list = namespaces.list(&ListParams::default()).await.unwrap();
    assert!(list.items.iter().any(|n| n.metadata.name == "default"));
    assert_eq!(client.server(), healthy.url.trim_end_matches('/'));
}
