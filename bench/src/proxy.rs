//! `loom-bench proxy`: a request's latency through a Service's virtual
//! address beside straight to one of its endpoints, in the same run, at a
//! fixed offered rate (half the direct path's maximum); and the proxy's CPU
//! per request. The real path: nftables (a table and a service range of the
//! benchmark's own) redirects the connections made on this host to `loom
//! proxy`'s data plane, which runs in a child process (`loom-bench
//! proxy-server`) so that its CPU is its own; the load and the Service's two
//! HTTP endpoints run in this one.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::proxy::dataplane::OriginalDestination;
use ::proxy::{Backends, Metrics, Proxy, Table};
use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::job::Children;

/// The p99 the proxy may add (issue 19).
const GOAL_P99_ADDED_MS: f64 = 1.0;

/// Each request and answer: a small HTTP/1.1 GET and a fixed 200.
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";
const REQUEST_KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
const ANSWER_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
const ANSWER_KEEP_ALIVE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// How long a client waits to connect, send or read before the request
/// counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `loom-bench proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Seconds of each fixed-rate phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds; each runs one direct and one proxied phase, the order
    /// alternating between rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How the clients connect: `new-connection` (one a request, as short-lived
    /// clients do: the proxy's accept and connect on every request),
    /// `keep-alive` (requests over held connections: the proxy's copying only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "new-connection,keep-alive"
    )]
    modes: Vec<Mode>,
    /// Concurrent clients, back to back, finding the direct path's maximum.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds finding the direct path's maximum.
    #[arg(long, default_value_t = 3)]
    max_seconds: u64,
    /// The offered rate as a fraction of the direct path's maximum.
    #[arg(long, default_value_t = 0.5)]
    load: f64,
    /// Senders of the fixed-rate load (each holds one connection in
    /// keep-alive mode); enough that a slow request delays no other.
    #[arg(long, default_value_t = 64)]
    senders: usize,
}

/// `loom-bench proxy-server` (run as a child of `proxy`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The Service's virtual address and port.
    #[arg(long)]
    vip: SocketAddrV4,
    /// Its endpoints.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<SocketAddrV4>,
}

/// How the clients use connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A new connection for every request.
    NewConnection,
    /// Requests over connections held open.
    KeepAlive,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::NewConnection => "a new connection a request",
            Mode::KeepAlive => "requests over kept-alive connections",
        }
    }
}

/// The proxy's data plane alone: routes `vip` to `endpoints` from a listener
/// on 127.0.0.1 whose port it prints, until its standard input closes (its
/// parent ended, however it ended).
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let table = Table::from([(
        args.vip,
        Arc::new(Backends::new("bench/web", "", args.endpoints, None)),
    )]);
    let (_table, receiver) = tokio::sync::watch::channel(Arc::new(table));
    let proxy = Arc::new(Proxy::new(
        receiver,
        Arc::new(OriginalDestination),
        None,
        Metrics::default(),
    ));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot bind the proxy's listener")?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?.port())?;
    stdout.flush()?;
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(proxy.serve(listener, shutdown.clone(), Duration::from_secs(1)));
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await? > 0 {}
    shutdown.cancel();
    served.await?;
    Ok(())
}

/// The nftables table, removed when dropped.
struct Redirect(String);

impl Drop for Redirect {
    fn drop(&mut self) {
        if let Err(error) = ::proxy::redirect::remove(&self.0) {
            eprintln!(
                "loom-bench: cannot remove nftables table {}: {error}",
                self.0
            );
        }
    }
}

/// The prefix of the benchmark's nftables tables; the pid follows.
const TABLE_PREFIX: &str = "loom_proxy_bench";

/// Removes tables left by earlier runs killed before they could (their pid is
/// gone).
fn remove_stale_tables() {
    let Ok(output) = Command::new(loom_testing::netns::nft())
        .args(["list", "tables", "ip"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.trim().strip_prefix("table ip ") else {
            continue;
        };
        let Some(pid) = name.strip_prefix(TABLE_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ::proxy::redirect::remove(name);
        }
    }
}

/// The Service's endpoints: HTTP servers on 127.0.0.1 answering every
/// request with a fixed 200, on a runtime of their own.
struct Endpoints {
    runtime: tokio::runtime::Runtime,
    addresses: Vec<SocketAddrV4>,
}

impl Endpoints {
    fn start(count: usize) -> anyhow::Result<Endpoints> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("endpoint")
            .enable_all()
            .build()?;
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let listener =
                runtime.block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
            let SocketAddr::V4(address) = listener.local_addr()? else {
                bail!("an endpoint bound to a non-IPv4 address");
            };
            addresses.push(address);
            runtime.spawn(accept(listener));
        }
        Ok(Endpoints { runtime, addresses })
    }
}

async fn accept(listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = answer(stream).await;
                });
            }
            // Out of descriptors, say: back off rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers each request on `stream` with the fixed 200, closing after one
/// that asks to.
async fn answer(mut stream: tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let end = loop {
            if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let close = memchr::memmem::find(&buf[..end], b"Connection: close").is_some();
        buf.drain(..end);
        if close {
            stream.write_all(ANSWER_CLOSE).await?;
            return stream.shutdown().await;
        }
        stream.write_all(ANSWER_KEEP_ALIVE).await?;
    }
}

/// One client: a blocking socket, new for every request or held.
struct Client {
    mode: Mode,
    target: SocketAddrV4,
    held: Option<TcpStream>,
}

impl Client {
    fn new(mode: Mode, target: SocketAddrV4) -> Client {
        Client {
            mode,
            target,
            held: None,
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.target.into(), IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// One request, its whole answer read and checked.
    fn request(&mut self) -> io::Result<()> {
        match self.mode {
            Mode::NewConnection => {
                let mut stream = self.connect()?;
                stream.write_all(REQUEST_CLOSE)?;
                let mut got = Vec::with_capacity(ANSWER_CLOSE.len());
                stream.read_to_end(&mut got)?;
                check(&got, ANSWER_CLOSE)
            }
            Mode::KeepAlive => {
                let mut stream = match self.held.take() {
                    Some(stream) => stream,
                    None => self.connect()?,
                };
                stream.write_all(REQUEST_KEEP_ALIVE)?;
                let mut got = [0u8; ANSWER_KEEP_ALIVE.len()];
                stream.read_exact(&mut got)?;
                check(&got, ANSWER_KEEP_ALIVE)?;
                // Kept only after a whole answer: a failed one is dropped.
                self.held = Some(stream);
                Ok(())
            }
        }
    }
}

fn check(got: &[u8], want: &[u8]) -> io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(got)
        )))
    }
}

/// Wakes a sleeping sender within microseconds of its due time instead of
/// the default 50 µs of slack.
fn tight_timer() {
    // SAFETY: PR_SET_TIMERSLACK only sets the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// The direct path's maximum: `clients` back to back for `duration`.
fn closed_loop(
    mode: Mode,
    target: SocketAddrV4,
    clients: usize,
    duration: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let (done, failed) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(move || {
                    let mut client = Client::new(mode, target);
                    let (mut done, mut failed) = (0u64, 0u64);
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        match client.request() {
                            Ok(()) => done += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (done, failed)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((0, 0)))
            .fold((0, 0), |(d, f), (d1, f1)| (d + d1, f + f1))
    });
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} requests to {target} failed finding the maximum",
            done + failed
        );
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Which way one phase's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Service,
}

/// One fixed-rate phase.
struct Phase {
    /// Microseconds from each request's scheduled send to its whole answer.
    latency: Histogram<u64>,
    requests: u64,
    failed: u64,
    elapsed: Duration,
    /// CPU used meanwhile: by the proxy's process, by this one (the load and
    /// the endpoints), by the whole host.
    proxy_cpu: Duration,
    bench_cpu: Duration,
    host_cpu: Duration,
}

impl Phase {
    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// `rate` requests a second to `target` for `duration`, each sent at its
/// time on a fixed timetable whether or not earlier ones have been answered,
/// and timed from that time: a request waiting behind slow ones is counted
/// as slow (no coordinated omission).
fn open_loop(
    mode: Mode,
    target: SocketAddrV4,
    rate: f64,
    duration: Duration,
    senders: usize,
    proxy_pid: u32,
    stop: &AtomicBool,
) -> anyhow::Result<Phase> {
    let count = (rate * duration.as_secs_f64()) as usize;
    let next = AtomicUsize::new(0);
    let (proxy_before, bench_before, host_before) =
        (process_cpu(proxy_pid)?, own_cpu(), host_cpu()?);
    let start = Instant::now() + Duration::from_millis(5);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..senders)
            .map(|_| {
                let next = &next;
                scope.spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
                    tight_timer();
                    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let mut failed = 0;
                    let mut client = Client::new(mode, target);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count || stop.load(Ordering::Relaxed) {
                            return Ok((latency, failed));
                        }
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        match client.request() {
                            Ok(()) => latency.saturating_record(due.elapsed().as_micros() as u64),
                            Err(_) => failed += 1,
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender panicked")))
            })
            .collect::<Vec<_>>()
    });
    let elapsed = start.elapsed();
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    let (proxy_after, bench_after, host_after) = (process_cpu(proxy_pid)?, own_cpu(), host_cpu()?);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for result in results {
        let (h, f) = result?;
        latency.add(h)?;
        failed += f;
    }
    Ok(Phase {
        requests: latency.len(),
        latency,
        failed,
        elapsed,
        proxy_cpu: proxy_after.saturating_sub(proxy_before),
        bench_cpu: bench_after.saturating_sub(bench_before),
        host_cpu: host_after.saturating_sub(host_before),
    })
}

/// Clock ticks a second, for `/proc`'s times.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn ticks(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / ticks_per_second() as f64)
}

/// Process `pid`'s CPU time (user + system), from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat: has the proxy exited?"))?;
    // The fields after the command (which may hold spaces) in parentheses;
    // utime and stime are the 14th and 15th of the line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat", n + 3))
    };
    Ok(ticks(field(11)? + field(12)?))
}

/// This process's CPU time (user + system).
fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The host's busy CPU time (user, nice, system, irq, softirq), from
/// `/proc/stat`: catches the kernel's work not charged to any process.
fn host_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum();
    Ok(ticks(busy))
}

/// Runs the benchmark.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 || !loom_testing::netns::nft_works() {
        println!(
            "proxy: skipped: needs root and nftables (it redirects a service range of its own on this host)"
        );
        return Ok(());
    }
    if args.rounds == 0 || args.seconds == 0 || args.clients == 0 || args.senders == 0 {
        bail!("--rounds, --seconds, --clients and --senders must be at least 1");
    }
    if !(args.load > 0.0 && args.load <= 1.0) {
        bail!("--load {}: must be a fraction in (0, 1]", args.load);
    }
    remove_stale_tables();
    let x = loom_testing::netns::free_net(20..30)?
        .context("no free 10.X.0.0/16 (X in 20..30) for the service range")?;
    let service_cidr: ipnet::Ipv4Net = format!("10.{x}.0.0/24").parse()?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, x, 0, 10), 80);

    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = Endpoints::start(2)?;
    // Ctrl-C stops the load, so that the table and the child are removed.
    endpoints.runtime.spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });

    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("proxy-server")
        .arg("--vip")
        .arg(vip.to_string());
    for endpoint in &endpoints.addresses {
        command.arg("--endpoint").arg(endpoint.to_string());
    }
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start loom-bench proxy-server")?;
    let stdout = child.stdout.take();
    let proxy_pid = child.id();
    let _proxy = Children(vec![child]);
    let mut line = String::new();
    if let Some(stdout) = stdout {
        BufReader::new(stdout).read_line(&mut line)?;
    }
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("the proxy printed {line:?}, not its port"))?;

    let table = format!("{TABLE_PREFIX}{}", std::process::id());
    let _redirect = Redirect(table.clone());
    ::proxy::redirect::install(&table, service_cidr, port, &[])
        .with_context(|| format!("cannot install the redirect (table {table})"))?;
    // The way through works before anything is timed.
    Client::new(Mode::NewConnection, vip)
        .request()
        .with_context(|| format!("a request to the service address {vip} failed"))?;

    println!(
        "proxy: service {vip} (range {service_cidr}, nftables table {table}) -> proxy (pid {proxy_pid}, 127.0.0.1:{port}) -> 2 endpoints {}; direct = straight to {}",
        endpoints
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        endpoints.addresses[0],
    );
    let mut missed = false;
    for mode in &args.modes {
        missed |= !measure_mode(&args, *mode, vip, endpoints.addresses[0], proxy_pid, &stop)?;
    }
    if missed {
        println!("goal missed in at least one mode (see above)");
    }
    Ok(())
}

/// Finds the direct maximum, runs the interleaved rounds and prints one
/// mode's table; whether the goal is met.
fn measure_mode(
    args: &ProxyArgs,
    mode: Mode,
    vip: SocketAddrV4,
    direct: SocketAddrV4,
    proxy_pid: u32,
    stop: &AtomicBool,
) -> anyhow::Result<bool> {
    let max = closed_loop(
        mode,
        direct,
        args.clients,
        Duration::from_secs(args.max_seconds),
        stop,
    )?;
    let rate = (max * args.load).max(1.0);
    let duration = Duration::from_secs(args.seconds);
    println!();
    println!(
        "{}: direct maximum {max:.0}/s ({} clients back to back, {} s); offered {rate:.0}/s ({:.0} % of it) for {} s a phase, {} rounds, {} senders",
        mode.describe(),
        args.clients,
        args.max_seconds,
        args.load * 100.0,
        args.seconds,
        args.rounds,
        args.senders,
    );
    let mut direct_phases = Vec::new();
    let mut service_phases = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Path::Direct, Path::Service]
        } else {
            [Path::Service, Path::Direct]
        };
        for path in order {
            let target = if path == Path::Direct { direct } else { vip };
            let phase = open_loop(mode, target, rate, duration, args.senders, proxy_pid, stop)?;
            if path == Path::Direct {
                direct_phases.push(phase);
            } else {
                service_phases.push(phase);
            }
        }
        let (d, s) = (&direct_phases[round], &service_phases[round]);
        println!(
            "  round {}: p99 direct {:.3} ms, service {:.3} ms, added {:.3} ms",
            round + 1,
            d.ms(0.99),
            s.ms(0.99),
            s.ms(0.99) - d.ms(0.99)
        );
    }
    let direct_all = merge(&direct_phases)?;
    let service_all = merge(&service_phases)?;
    println!(
        "  {:<30} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "", "requests", "failed", "per sec", "p50 ms", "p99 ms", "p999 ms", "max ms"
    );
    for (label, all) in [
        ("direct to one endpoint", &direct_all),
        ("through the service address", &service_all),
    ] {
        println!(
            "  {label:<30} {:>9} {:>7} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            all.requests,
            all.failed,
            all.requests as f64 / all.elapsed.as_secs_f64(),
            all.ms(0.5),
            all.ms(0.99),
            all.ms(0.999),
            all.latency.max() as f64 / 1000.0,
        );
    }
    let mut added: Vec<f64> = direct_phases
        .iter()
        .zip(&service_phases)
        .map(|(d, s)| s.ms(0.99) - d.ms(0.99))
        .collect();
    added.sort_by(f64::total_cmp);
    let median = added[added.len() / 2];
    let overall = service_all.ms(0.99) - direct_all.ms(0.99);
    let met = overall <= GOAL_P99_ADDED_MS && service_all.failed == 0;
    println!(
        "  p99 added by the service address: {overall:.3} ms (all rounds' requests; median of rounds {median:.3} ms); goal <= {GOAL_P99_ADDED_MS} ms: {}",
        if met { "met" } else { "MISSED" }
    );
    let per_request = |cpu: Duration, phase: &Phase| {
        cpu.as_secs_f64() * 1e6 / (phase.requests + phase.failed).max(1) as f64
    };
    println!(
        "  {:<30} {:>9} {:>9} {:>9}",
        "CPU a request (µs)", "direct", "service", "added"
    );
    for (label, direct_cpu, service_cpu) in [
        ("proxy process", direct_all.proxy_cpu, service_all.proxy_cpu),
        (
            "load + endpoints process",
            direct_all.bench_cpu,
            service_all.bench_cpu,
        ),
        (
            "whole host (/proc/stat)",
            direct_all.host_cpu,
            service_all.host_cpu,
        ),
    ] {
        let d = per_request(direct_cpu, &direct_all);
        let s = per_request(service_cpu, &service_all);
        println!("  {label:<30} {d:>9.1} {s:>9.1} {:>9.1}", s - d);
    }
    Ok(met)
}

/// All rounds' phases of one path as one.
fn merge(phases: &[Phase]) -> anyhow::Result<Phase> {
    let mut all = Phase {
        latency: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
        requests: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        proxy_cpu: Duration::ZERO,
        bench_cpu: Duration::ZERO,
        host_cpu: Duration::ZERO,
    };
    for phase in phases {
        all.latency.add(&phase.latency)?;
        all.requests += phase.requests;
        all.failed += phase.failed;
        all.elapsed += phase.elapsed;
        all.proxy_cpu += phase.proxy_cpu;
        all.bench_cpu += phase.bench_cpu;
        all.host_cpu += phase.host_cpu;
    }
    Ok(all)
}
