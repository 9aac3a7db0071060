//! Services' virtual addresses through the public API: two API servers on one
//! store (embedded and etcd) giving addresses concurrently never give one twice,
//! a full range says so naming it, an address asked for is checked and taken
//! once, immutable, and given back when its Service goes; and the repair pass
//! over a real store.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use api_types::ServiceRange;
use apiserver::Config;
use apiserver::registry::service_ips::{KEY_PREFIX, ServiceIps};
use apiserver::store::{EmbeddedOptions, EmbeddedStore, ListOptions, Store};
use loom_testing::http::JsonClient;
use loom_testing::{EtcdServer, TestServer, temp_dir};
use serde_json::{Value, json};

const SERVICES: &str = "/apis/loom.dev/v1/namespaces/default/services";
const ENDPOINTS: &str = "/apis/loom.dev/v1/namespaces/default/endpoints";
/// 30 usable addresses: the API server's and 29 to give.
const RANGE: &str = "10.123.0.0/27";

fn config() -> Config {
    Config {
        service_cidr: ServiceRange::parse(RANGE).unwrap(),
        ..Config::default()
    }
}

fn service(name: &str, cluster_ip: Option<&str>) -> Value {
    let mut svc = json!({
        "apiVersion": "loom.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    });
    if let Some(ip) = cluster_ip {
        svc["spec"]["clusterIP"] = json!(ip);
    }
    svc
}

/// The addresses recorded in the store.
async fn recorded(store: &dyn Store) -> BTreeSet<String> {
    store
        .list(KEY_PREFIX, ListOptions::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key.trim_start_matches(KEY_PREFIX).to_owned())
        .collect()
}

fn field_causes(body: &Value) -> Vec<String> {
    body["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str().map(str::to_owned))
        .collect()
}

mod cases {
    use super::*;

    /// Two servers create more Services than the range holds, all at once.
    pub async fn concurrent_servers_never_give_one_address_twice(a: TestServer, b: TestServer) {
        let clients = [JsonClient::new(&a), JsonClient::new(&b)];
        let mut creates = Vec::new();
        for i in 0..40 {
            let client = clients[i % 2].clone();
            creates.push(tokio::spawn(async move {
                client
                    .post(SERVICES, &service(&format!("s{i}"), None))
                    .await
            }));
        }
        let mut given = BTreeSet::new();
        let mut created = Vec::new();
        let mut full = 0;
        for create in creates {
            let (code, body) = create.await.unwrap();
            match code {
                201 => {
                    let ip = body["spec"]["clusterIP"].as_str().unwrap().to_owned();
                    let parsed: Ipv4Addr = ip.parse().unwrap();
                    let range = ServiceRange::parse(RANGE).unwrap();
                    let offset = range.offset(parsed);
                    assert!(
                        offset.is_some_and(|o| o > 0),
                        "{ip} is a usable address of {RANGE}, not the API server's"
                    );
                    assert!(given.insert(ip.clone()), "{ip} given twice");
                    created.push((body["metadata"]["name"].as_str().unwrap().to_owned(), ip));
                }
                500 => {
                    let message = body["message"].as_str().unwrap();
                    assert!(
                        message.contains(RANGE) && message.contains("is full"),
                        "{message}"
                    );
                    full += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(given.len(), 29, "every address but the API server's given");
        assert_eq!(full, 11);
        assert_eq!(recorded(a.store.as_ref()).await, given);
        // What the servers say they gave is what the Services hold.
        let (code, list) = clients[1].get(SERVICES).await;
        assert_eq!(code, 200);
        let held: BTreeSet<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["spec"]["clusterIP"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(held, given);
        // A deleted Service's address is given back and can be given again.
        let (gone, freed) = created[0].clone();
        let (code, _) = clients[0].delete(&format!("{SERVICES}/{gone}")).await;
        assert_eq!(code, 200);
        assert!(!recorded(a.store.as_ref()).await.contains(&freed));
        let (code, again) = clients[1].post(SERVICES, &service("again", None)).await;
        assert_eq!(code, 201, "{again}");
        assert_eq!(
            again["spec"]["clusterIP"],
            json!(freed),
            "the only free one"
        );
    }

    /// An address asked for: inside the range, not the API server's, free;
    /// kept by updates that leave it out; never changed; given back on delete.
    pub async fn requested_addresses(server: TestServer) {
        let c = JsonClient::new(&server);
        let (code, body) = c.post(SERVICES, &service("web", Some("10.123.0.5"))).await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["spec"]["clusterIP"], "10.123.0.5");

        let (code, body) = c.post(SERVICES, &service("web2", Some("10.123.0.5"))).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(field_causes(&body), ["spec.clusterIP"]);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("already allocated by default/web"),
            "{message}"
        );

        for (ip, words) in [
            ("10.124.0.5", "inside the service range 10.123.0.0/27"),
            ("10.123.0.0", "inside the service range"),
            ("10.123.0.31", "inside the service range"),
            ("10.123.0.1", "kept for the Service default/kubernetes"),
            ("10.123.0.1/32", "IPv4 address"),
            ("banana", "IPv4 address"),
        ] {
            let (code, body) = c.post(SERVICES, &service("bad", Some(ip))).await;
            assert_eq!(code, 422, "{ip}: {body}");
            assert_eq!(field_causes(&body), ["spec.clusterIP"], "{ip}");
            assert!(
                body["message"].as_str().unwrap().contains(words),
                "{ip}: {body}"
            );
        }
        // The API server's own address is the kubernetes Service's.
        let (code, body) = c
            .post(SERVICES, &service("kubernetes", Some("10.123.0.1")))
            .await;
        assert_eq!(code, 201, "{body}");

        // A dry run takes nothing.
        let (code, body) = c
            .post(&format!("{SERVICES}?dryRun=All"), &service("dry", None))
            .await;
        assert_eq!(code, 201, "{body}");
        let before = recorded(server.store.as_ref()).await;
        assert_eq!(
            before,
            BTreeSet::from(["10.123.0.1".to_owned(), "10.123.0.5".to_owned()])
        );

        // Headless: no address, nothing recorded.
        let (code, body) = c.post(SERVICES, &service("headless", Some("None"))).await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["spec"]["clusterIP"], "None");
        assert_eq!(recorded(server.store.as_ref()).await, before);

        // A replacement leaving the address out keeps it; one changing it is refused.
        let (_, current) = c.get(&format!("{SERVICES}/web")).await;
        let mut replacement = current.clone();
        replacement["spec"]
            .as_object_mut()
            .unwrap()
            .remove("clusterIP");
        replacement["spec"]["replicas"] = json!(2);
        let (code, body) = c.put(&format!("{SERVICES}/web"), &replacement).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["spec"]["clusterIP"], "10.123.0.5");
        let mut moved = body.clone();
        moved["spec"]["clusterIP"] = json!("10.123.0.6");
        let (code, body) = c.put(&format!("{SERVICES}/web"), &moved).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(field_causes(&body), ["spec.clusterIP"]);
        assert!(body["message"].as_str().unwrap().contains("immutable"));
        let (code, body) = c
            .patch(
                &format!("{SERVICES}/headless"),
                "application/merge-patch+json",
                r#"{"spec":{"clusterIP":"10.123.0.7"}}"#,
            )
            .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(field_causes(&body), ["spec.clusterIP"]);

        // Deleted: the address is free again, for anyone.
        let (code, _) = c.delete(&format!("{SERVICES}/web")).await;
        assert_eq!(code, 200);
        assert!(!recorded(server.store.as_ref()).await.contains("10.123.0.5"));
        let (code, body) = c.post(SERVICES, &service("web2", Some("10.123.0.5"))).await;
        assert_eq!(code, 201, "{body}");
    }
}

/// A nodePort is used by one Service at most (whatever the protocol), checked
/// on create and on updates that change it; nothing forwards it yet.
#[tokio::test]
async fn a_node_port_is_one_services() {
    let server = TestServer::embedded(config()).await.unwrap();
    let c = JsonClient::new(&server);
    let with_node_port = |name: &str, protocol: &str, node_port: i64| {
        let mut svc = service(name, None);
        svc["spec"]["ports"] = json!([
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "np", "port": 81, "protocol": protocol, "nodePort": node_port},
        ]);
        svc
    };
    let (code, body) = c.post(SERVICES, &with_node_port("a", "TCP", 30080)).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = c.post(SERVICES, &with_node_port("b", "UDP", 30080)).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(field_causes(&body), ["spec.ports[1].nodePort"]);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already allocated: Service default/a uses it"),
        "{body}"
    );
    let (code, body) = c.post(SERVICES, &with_node_port("b", "UDP", 30081)).await;
    assert_eq!(code, 201, "{body}");
    // An update that moves b onto a's port is refused; one that leaves the
    // ports alone is not looked at.
    let (code, body) = c
        .patch(
            &format!("{SERVICES}/b"),
            "application/json-patch+json",
            r#"[{"op": "replace", "path": "/spec/ports/1/nodePort", "value": 30080}]"#,
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(field_causes(&body), ["spec.ports[1].nodePort"]);
    let (code, body) = c
        .patch(
            &format!("{SERVICES}/a"),
            "application/merge-patch+json",
            r#"{"spec": {"replicas": 2}}"#,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // Deleted, its port is free.
    let (code, _) = c.delete(&format!("{SERVICES}/a")).await;
    assert_eq!(code, 200);
    let (code, body) = c.post(SERVICES, &with_node_port("c", "TCP", 30080)).await;
    assert_eq!(code, 201, "{body}");
}

/// Hostile Services through the API: each refused with a 422 naming the
/// field, nothing recorded, no address taken.
#[tokio::test]
async fn hostile_services_are_refused_and_take_nothing() {
    let server = TestServer::embedded(config()).await.unwrap();
    let c = JsonClient::new(&server);
    let many: Vec<Value> = (1..=5_000)
        .map(|i| json!({"name": format!("p{i}"), "port": i}))
        .collect();
    let long_ip = "1".repeat(100_000);
    let cases = [
        ("spec.ports", json!({"ports": many})),
        ("spec.clusterIP", json!({"clusterIP": long_ip})),
        ("spec.clusterIP", json!({"clusterIP": "10.123.0.5\u{0}"})),
        ("spec.clusterIP", json!({"clusterIP": "0x0a.123.0.5"})),
        ("spec.ports[0].port", json!({"ports": [{"port": 70000}]})),
        (
            "spec.ports[0].targetPort",
            json!({"ports": [{"port": 80, "targetPort": "nope"}]}),
        ),
        (
            "spec.ports[0].targetPort",
            json!({"ports": [{"port": 80, "targetPort": -1}]}),
        ),
        (
            "spec.ports[0].nodePort",
            json!({"ports": [{"port": 80, "nodePort": 22}]}),
        ),
        (
            "spec.ports[1].name",
            json!({"ports": [{"name": "a", "port": 80}, {"port": 81}]}),
        ),
    ];
    for (field, spec) in cases {
        let mut svc = service("hostile", None);
        for (key, value) in spec.as_object().unwrap() {
            svc["spec"][key] = value.clone();
        }
        let (code, body) = c.post(SERVICES, &svc).await;
        assert_eq!(code, 422, "{field}: {body}");
        assert!(
            field_causes(&body).iter().any(|f| f == field),
            "{field} not in {:?}",
            field_causes(&body)
        );
        assert!(
            body.to_string().len() < 20_000,
            "{field}: the refusal does not echo the input"
        );
    }
    assert!(recorded(server.store.as_ref()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_concurrent_servers_never_give_one_address_twice() {
    let (_dir, path) = temp_dir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap());
    let a = TestServer::over(store.clone(), config()).await.unwrap();
    let b = TestServer::over(store, config()).await.unwrap();
    cases::concurrent_servers_never_give_one_address_twice(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_concurrent_servers_never_give_one_address_twice() {
    let etcd = EtcdServer::start().await.unwrap();
    // Each server its own etcd client, as two API server processes.
    let a = TestServer::over(Arc::new(etcd.store("/loom/").await.unwrap()), config())
        .await
        .unwrap();
    let b = TestServer::over(Arc::new(etcd.store("/loom/").await.unwrap()), config())
        .await
        .unwrap();
    cases::concurrent_servers_never_give_one_address_twice(a, b).await;
    drop(etcd);
}

#[tokio::test]
async fn embedded_requested_addresses() {
    cases::requested_addresses(TestServer::embedded(config()).await.unwrap()).await;
}

#[tokio::test]
async fn etcd_requested_addresses() {
    cases::requested_addresses(TestServer::etcd(config()).await.unwrap()).await;
}

/// An API server starting over a store runs the repair pass: the address of a
/// Service removed without giving it back (a crash between the two writes) is
/// free again, and a Service's address that was not recorded is.
#[tokio::test]
async fn an_api_server_repairs_the_addresses_when_it_starts() {
    let (_dir, path) = temp_dir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap());
    let first = TestServer::over(store.clone(), config()).await.unwrap();
    let c = JsonClient::new(&first);
    let (code, body) = c.post(SERVICES, &service("kept", Some("10.123.0.7"))).await;
    assert_eq!(code, 201, "{body}");
    drop(first);
    store
        .create(
            &format!("{KEY_PREFIX}10.123.0.9"),
            bytes::Bytes::from(
                json!({"namespace": "default", "name": "gone", "uid": "u",
                       "allocated": "2020-01-01T00:00:00Z"})
                .to_string(),
            ),
        )
        .await
        .unwrap();
    store
        .delete(&format!("{KEY_PREFIX}10.123.0.7"), None)
        .await
        .unwrap();
    let _second = TestServer::over(store.clone(), config()).await.unwrap();
    loom_testing::eventually("the repair pass at start", || async {
        let now = recorded(store.as_ref()).await;
        (now == BTreeSet::from(["10.123.0.7".to_owned()])).then_some(())
    })
    .await;
}

/// Two API servers advertising their addresses: the `kubernetes` Service in
/// `default` at the range's first address, port 443 to theirs, its
/// Endpoints listing both; one stopping leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kubernetes_service_lists_the_api_servers() {
    let (_dir, path) = temp_dir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap());
    let advertising = |ip: &str| Config {
        advertise_address: Some(format!("{ip}:7443").parse().unwrap()),
        ..config()
    };
    let a = TestServer::over(store.clone(), advertising("10.1.0.1"))
        .await
        .unwrap();
    let b = TestServer::over(store.clone(), advertising("10.1.0.2"))
        .await
        .unwrap();
    let c = JsonClient::new(&a);
    let endpoints_ips = |c: JsonClient| async move {
        let (code, body) = c.get(&format!("{ENDPOINTS}/kubernetes")).await;
        if code != 200 {
            return None;
        }
        Some(
            body["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| {
                    let port = s["ports"][0]["port"].as_i64().unwrap_or_default();
                    s["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(move |a| format!("{}:{port}", a["ip"].as_str().unwrap_or_default()))
                })
                .collect::<Vec<_>>(),
        )
    };
    loom_testing::eventually("both API servers in the kubernetes endpoints", || async {
        (endpoints_ips(c.clone()).await? == ["10.1.0.1:7443", "10.1.0.2:7443"]).then_some(())
    })
    .await;
    let (code, svc) = c.get(&format!("{SERVICES}/kubernetes")).await;
    assert_eq!(code, 200, "{svc}");
    assert_eq!(svc["spec"]["clusterIP"], "10.123.0.1");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 7443);
    drop(b);
    loom_testing::eventually("a stopped API server leaves the endpoints", || async {
        (endpoints_ips(c.clone()).await? == ["10.1.0.1:7443"]).then_some(())
    })
    .await;
}

/// The repair pass over a real store: an address recorded for a Service that
/// is gone goes after the grace, not before; one a Service holds without a
/// record is recorded; one held twice is reported.
#[tokio::test]
async fn repair_frees_orphans_records_strays_and_reports_duplicates() {
    let (_dir, path) = temp_dir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(path)).unwrap();
    let ips = ServiceIps::new(ServiceRange::parse(RANGE).unwrap());
    let record = |name: &str, at: &str| {
        bytes::Bytes::from(
            json!({"namespace": "default", "name": name, "uid": name, "allocated": at}).to_string(),
        )
    };
    let old = "2020-01-01T00:00:00Z";
    let now = chrono::Utc::now().to_rfc3339();
    store
        .create(&format!("{KEY_PREFIX}10.123.0.2"), record("gone", old))
        .await
        .unwrap();
    store
        .create(&format!("{KEY_PREFIX}10.123.0.3"), record("new", &now))
        .await
        .unwrap();
    store
        .create(&format!("{KEY_PREFIX}10.123.0.4"), record("held", old))
        .await
        .unwrap();
    let svc = |name: &str, ip: &str| json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": {"clusterIP": ip}});
    let services = vec![
        svc("held", "10.123.0.4"),
        svc("stray", "10.123.0.9"),
        svc("twin-a", "10.123.0.10"),
        svc("twin-b", "10.123.0.10"),
        svc("elsewhere", "10.200.0.1"),
        svc("headless", "None"),
    ];
    let records = ips.records(&store).await.unwrap();
    let report = ips
        .repair(&store, &services, records, Duration::from_secs(600))
        .await;
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(report.released, [ip("10.123.0.2")]);
    assert_eq!(report.recorded, [ip("10.123.0.9"), ip("10.123.0.10")]);
    assert_eq!(
        report.duplicates.get(&ip("10.123.0.10")),
        Some(&vec![
            "default/twin-a".to_owned(),
            "default/twin-b".to_owned()
        ])
    );
    assert_eq!(
        report.outside,
        [("default/elsewhere".to_owned(), ip("10.200.0.1"))]
    );
    assert_eq!(
        recorded(&store).await,
        BTreeSet::from(
            ["10.123.0.3", "10.123.0.4", "10.123.0.9", "10.123.0.10"].map(str::to_owned)
        )
    );
    // Once past the grace, the young orphan goes too; a second pass changes nothing else.
    let records = ips.records(&store).await.unwrap();
    let report = ips.repair(&store, &services, records, Duration::ZERO).await;
    assert_eq!(report.released, [ip("10.123.0.3")]);
    assert!(report.recorded.is_empty());
}
