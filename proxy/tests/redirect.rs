//! The proxy with the kernel: nftables redirects connections to a service
//! range of the test's own to the proxy, which reads each one's original
//! destination and joins it to that Service's endpoint. Root only; the
//! rules are a table of the test's own, removed even on failure.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use proxy::dataplane::OriginalDestination;
use proxy::{Backends, Metrics, Proxy, Table};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Rules(String);

impl Drop for Rules {
    fn drop(&mut self) {
        let _ = proxy::redirect::remove(&self.0);
    }
}

fn table_exists(table: &str) -> bool {
    std::process::Command::new(loom_testing::netns::nft())
        .args(["list", "table", "ip", table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn named_server(name: &'static str) -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
            });
        }
    });
    addr
}

async fn ask(addr: SocketAddrV4) -> std::io::Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    Ok(out)
}

#[tokio::test]
async fn connections_to_a_virtual_address_reach_its_service() {
    if unsafe { libc::geteuid() } != 0 || !loom_testing::netns::nft_works() {
        eprintln!("skipped: needs root and nftables");
        return;
    }
    let x = loom_testing::netns::free_net(30..40)
        .unwrap()
        .expect("a free 10.X.0.0/16");
    let cidr: ipnet::Ipv4Net = format!("10.{x}.0.0/24").parse().unwrap();
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, x, 0, 10), 80);
    let other = SocketAddrV4::new(Ipv4Addr::new(10, x, 0, 11), 80);
    let table_name = format!("loom_proxy_t{}", std::process::id());
    let _rules = Rules(table_name.clone());

    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    proxy::redirect::install(&table_name, cidr, port, &[]).unwrap();
    assert!(table_exists(&table_name));

    let backend = named_server("web").await;
    let table = Table::from([(
        vip,
        Arc::new(Backends::new("default/web", "", vec![backend], None)),
    )]);
    let (_tx, rx) = watch::channel(Arc::new(table));
    let metrics = Metrics::default();
    let proxy = Arc::new(Proxy::new(
        rx,
        Arc::new(OriginalDestination),
        None,
        metrics.clone(),
    ));
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(proxy.serve(listener, shutdown.clone(), Duration::from_secs(1)));

    for _ in 0..3 {
        assert_eq!(ask(vip).await.unwrap(), "web");
    }
    // Redirected too, but no Service is there: closed at once.
    assert_eq!(ask(other).await.unwrap_or_default(), "");
    let text = metrics.encode();
    assert!(
        text.contains("loom_proxy_connections_total{service=\"default/web\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("loom_proxy_unrouted_connections_total 1"),
        "{text}"
    );

    shutdown.cancel();
    served.await.unwrap();
    proxy::redirect::remove(&table_name).unwrap();
    assert!(!table_exists(&table_name));
}
