//! A network-namespace host as the soak uses one: reached from the root
//! namespace across its veth; partitioned, a connection open goes silent both
//! ways and a new one hears nothing, while `lo` inside still works; healed,
//! the connection carries on; removed, nothing is left. Root only.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use loom_testing::netns::{self, NetnsHost};

/// Runs `f` on a thread that has joined `host`'s network namespace: the
/// sockets it makes are the namespace's, wherever they are used later.
fn inside<T: Send + 'static>(host: &NetnsHost, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = host.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace's file");
        // SAFETY: setns(2) on this thread only, with a namespace fd it holds.
        let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread inside the namespace")
}

/// Whether 4 bytes written on `from` reach `to` within `within`.
fn carries(from: &mut TcpStream, to: &mut TcpStream, within: Duration) -> bool {
    if from.write_all(b"ping").is_err() {
        return false;
    }
    to.set_read_timeout(Some(within)).expect("a read timeout");
    let mut buf = [0u8; 4];
    to.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

#[test]
fn a_partition_silences_open_connections_both_ways_and_heals() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !netns::nft_works() {
        eprintln!("skipped: needs root and nft (scripts/deps installs nftables)");
        return;
    }
    let pid = std::process::id();
    let net = netns::free_net(100..150)
        .expect("ip runs")
        .expect("a free 10.X.0.0/16");
    let host = NetnsHost::create(
        &format!("loom-netns-test-{pid}"),
        &format!("lt{pid}h"),
        &format!("lt{pid}n"),
        Ipv4Addr::new(10, net, 0, 1),
        Ipv4Addr::new(10, net, 0, 2),
    )
    .expect("the host");
    let listener = TcpListener::bind((host.host_ip, 0)).expect("a listener on the veth");
    let address = listener.local_addr().expect("its address");

    let mut client = inside(&host, move || {
        TcpStream::connect(address).expect("connected")
    });
    let (mut server, peer) = listener.accept().expect("accepted");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(host.ip),
        "it came from inside"
    );
    let quick = Duration::from_millis(500);
    assert!(carries(&mut client, &mut server, quick), "out");
    assert!(carries(&mut server, &mut client, quick), "in");

    host.partition().expect("partitioned");
    assert!(host.is_partitioned());
    // Made twice, it is one partition.
    host.partition().expect("partitioned again");
    assert!(!carries(&mut client, &mut server, quick), "out, cut");
    assert!(!carries(&mut server, &mut client, quick), "in, cut");
    let (fresh, on_lo) = inside(&host, move || {
        let fresh = TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok();
        let lo = TcpListener::bind("127.0.0.1:0").expect("a listener on lo");
        let on_lo = TcpStream::connect(lo.local_addr().expect("its address")).is_ok();
        (fresh, on_lo)
    });
    assert!(!fresh, "a new connection hears nothing");
    assert!(on_lo, "lo inside still works");
    assert!(
        !netns::partition_in_root_namespace(),
        "the rules are the namespace's"
    );

    host.heal().expect("healed");
    assert!(!host.is_partitioned());
    host.heal().expect("healing twice is no error");
    // What was sent during the cut arrives once TCP retransmits it.
    let mut buf = [0u8; 4];
    server
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let started = Instant::now();
    server
        .read_exact(&mut buf)
        .expect("retransmitted after the heal");
    assert_eq!(&buf, b"ping");
    eprintln!("retransmitted {:?} after the heal", started.elapsed());
    assert!(carries(&mut client, &mut server, quick), "out, healed");

    drop((client, server, listener));
    host.partition().expect("partitioned at the end");
    host.remove();
    assert_eq!(host.leftovers(), Vec::<String>::new());
    assert!(!netns::link_exists(&host.host_veth));
}
