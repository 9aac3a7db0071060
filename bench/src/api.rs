//! `loom-bench api|watch|memory`: a real `loom apiserver` process driven over HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use loom_testing::{EtcdServer, free_port};
use serde_json::{Value, json};

use crate::Backend;
use crate::access::{self, Access};
use crate::measure::{header, measure_paced, report};
use crate::store::{raw_creates, raw_puts};

const TASKS: &str = "/apis/loom.dev/v1/namespaces/default/tasks";

/// `loom-bench api`.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Which backends to measure.
    #[arg(long, value_enum, default_value = "all")]
    backend: Backend,
    /// Tasks to create.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// `loom-bench watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Concurrent watchers.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Tasks created while they watch.
    #[arg(long, default_value_t = 10_000)]
    creates: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Creates per second (0: as fast as the writers go).
    #[arg(long, default_value_t = 200)]
    rate: u64,
}

/// `loom-bench memory`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Tasks to store.
    #[arg(long, default_value_t = 100_000)]
    objects: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// A `loom apiserver` child process, killed on drop: secured (HTTPS, every
/// request authenticated and authorized by RBAC) when its `loom` can be,
/// plain HTTP as before for a `loom` from before that.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    /// How to reach it, and as whom.
    pub access: Access,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn start(store: Option<&str>) -> anyhow::Result<Self> {
        let loom = loom_binary()?;
        let dir = tempfile::Builder::new().prefix("loom-bench-").tempdir()?;
        let port = free_port()?;
        let store = match store {
            Some(store) => store.to_owned(),
            None => format!("sqlite:{}", dir.path().join("loom.db").display()),
        };
        let secure = access::is_secure(&loom);
        let scheme = if secure { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let pki = if secure {
            Some(access::Pki::make(&loom, dir.path(), &url)?)
        } else {
            None
        };
        let log = std::fs::File::create(dir.path().join("apiserver.log"))?;
        let mut args: Vec<String> = vec![
            "apiserver".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--store".into(),
            store,
        ];
        if let Some(pki) = &pki {
            args.extend(pki.server_args());
        }
        let child = Command::new(&loom)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", loom.display()))?;
        let server = ServerProcess {
            child,
            url: url.clone(),
            access: Access::new(url, pki, loom),
            _dir: dir,
        };
        // /readyz is open to anyone, as in Kubernetes.
        let client = server.access.http()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", server.url)).send().await
                && response.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the API server did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.access.bind_bench_user().await?;
        Ok(server)
    }

    /// The process's resident memory.
    pub fn rss_bytes(&self) -> u64 {
        crate::measure::rss_of(&self.child.id().to_string())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `loom` binary built beside this one, or `$LOOM_BENCH_LOOM` (another
/// build's, which is run as it can be: see [`access::is_secure`]).
pub fn loom_binary() -> anyhow::Result<PathBuf> {
    if let Some(loom) = std::env::var_os("LOOM_BENCH_LOOM") {
        let loom = PathBuf::from(loom);
        if !loom.is_file() {
            bail!("LOOM_BENCH_LOOM={}: no such file", loom.display());
        }
        return Ok(loom);
    }
    let me = std::env::current_exe()?;
    let loom = me.with_file_name("loom");
    if !loom.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p loom-bench -p loom-bin -p loom-nodelet",
            loom.display()
        );
    }
    Ok(loom)
}

/// A task of about the size real ones have.
fn task(i: usize) -> Vec<u8> {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Task",
        "metadata": {"name": format!("bench-{i}"), "labels": {"app": "bench", "job": "bench"}},
        "spec": {
            "image": "busybox", "command": ["sh", "-c"], "args": [format!("echo task {i} && sleep 1")],
            "env": [{"name": "LOOM_TASK_INDEX", "value": i.to_string()}, {"name": "MODE", "value": "bench"}],
            "resources": {"cpu": "100m", "memory": "64Mi"},
            "restartPolicy": "Never"
        }
    })
    .to_string()
    .into_bytes()
}

pub async fn create_tasks(
    access: &Access,
    count: usize,
    concurrency: usize,
    acked: Option<Arc<Vec<AtomicU64>>>,
    epoch: Instant,
) -> anyhow::Result<crate::measure::Measurement> {
    create_tasks_at(access, count, concurrency, 0, acked, epoch).await
}

/// Creates `count` tasks, at most `rate` a second (0: no limit).
async fn create_tasks_at(
    access: &Access,
    count: usize,
    concurrency: usize,
    rate: u64,
    acked: Option<Arc<Vec<AtomicU64>>>,
    epoch: Instant,
) -> anyhow::Result<crate::measure::Measurement> {
    let client = access
        .http_builder()?
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let endpoint = format!("{}{TASKS}", access.url);
    measure_paced(count, concurrency, rate, move |i| {
        let client = client.clone();
        let endpoint = endpoint.clone();
        let acked = acked.clone();
        async move {
            let response = client
                .post(&endpoint)
                .header("Content-Type", "application/json")
                .body(task(i))
                .send()
                .await?;
            if response.status().as_u16() != 201 {
                bail!(
                    "create {i} answered {}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
            }
            if let Some(acked) = acked {
                acked[i].store(epoch.elapsed().as_micros() as u64, Ordering::Release);
            }
            Ok(())
        }
    })
    .await
}

/// `loom-bench api`: creates over HTTP at the given concurrency.
pub async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    println!("{}", access::describe(&loom_binary()?));
    header("creates");
    if matches!(args.backend, Backend::Embedded | Backend::All) {
        let server = ServerProcess::start(None).await?;
        let m = create_tasks(
            &server.access,
            args.creates,
            args.concurrency,
            None,
            Instant::now(),
        )
        .await?;
        report("HTTP create (embedded)", args.concurrency, &m, None);
    }
    if matches!(args.backend, Backend::Etcd | Backend::All) {
        let etcd = EtcdServer::start().await?;
        let raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
        let value = bytes::Bytes::from(task(0));
        let before = raw_puts(
            &raw,
            "/bench-raw-a/",
            args.creates,
            args.concurrency,
            &value,
        )
        .await?;
        report("etcd-client put (raw)", args.concurrency, &before, None);
        let store = format!("etcd://{}", etcd.endpoint().trim_start_matches("http://"));
        let server = ServerProcess::start(Some(&store)).await?;
        let m = create_tasks(
            &server.access,
            args.creates,
            args.concurrency,
            None,
            Instant::now(),
        )
        .await?;
        drop(server);
        let after = raw_puts(
            &raw,
            "/bench-raw-b/",
            args.creates,
            args.concurrency,
            &value,
        )
        .await?;
        report("etcd-client put (raw)", args.concurrency, &after, None);
        let txn = raw_creates(&raw, "/bench-txn/", args.creates, args.concurrency, &value).await?;
        report("etcd-client txn (raw)", args.concurrency, &txn, None);
        let baseline = if before.per_second() >= after.per_second() {
            before
        } else {
            after
        };
        report("HTTP create (etcd)", args.concurrency, &m, Some(&baseline));
        println!(
            "{:<22} {:>5} {:>8} {:>10} {:>8} {:>8}  {:.2}x raw txn",
            "",
            args.concurrency,
            "",
            "",
            "",
            "",
            m.per_second() / txn.per_second()
        );
    }
    Ok(())
}

/// Finds `bench-N` in a watch event line without parsing it.
fn bench_index(finder: &memchr::memmem::Finder<'_>, line: &[u8]) -> Option<usize> {
    let at = finder.find(line)? + finder.needle().len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// `loom-bench watch`: every watcher must see every create; lag and memory reported.
pub async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    println!("{}", access::describe(&loom_binary()?));
    let server = ServerProcess::start(None).await?;
    let client = server.access.http()?;
    let list: Value = client
        .get(format!("{}{TASKS}", server.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let epoch = Instant::now();
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.creates).map(|_| AtomicU64::new(0)).collect());
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..args.watchers).map(|_| AtomicUsize::new(0)).collect());
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        let url = format!("{}{TASKS}?watch=true&resourceVersion={rv}", server.url);
        let acked = acked.clone();
        let counts = counts.clone();
        let expected = args.creates;
        // One connection per watcher, as separate clients would have.
        let client = server
            .access
            .http_builder()?
            .pool_max_idle_per_host(0)
            .build()?;
        let response = client.get(&url).send().await?;
        if !response.status().is_success() {
            bail!("watch {w} answered {}", response.status());
        }
        watchers.push(tokio::spawn(async move {
            let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut stream = response.bytes_stream();
            let mut buffer = bytes::BytesMut::new();
            let finder = memchr::memmem::Finder::new(b"\"name\":\"bench-");
            let mut cut_off = false;
            while counts[w].load(Ordering::Relaxed) < expected {
                let Some(chunk) = stream.next().await else {
                    cut_off = true;
                    break;
                };
                buffer.extend_from_slice(&chunk?);
                let now = epoch.elapsed().as_micros() as u64;
                let mut start = 0;
                while let Some(end) = memchr::memchr(b'\n', &buffer[start..]) {
                    let line = &buffer[start..start + end];
                    start += end + 1;
                    if let Some(i) = bench_index(&finder, line)
                        && i < acked.len()
                    {
                        let at = acked[i].load(Ordering::Acquire);
                        // An event read before the create's answer arrived has no lag.
                        lag.saturating_record(if at == 0 {
                            1
                        } else {
                            now.saturating_sub(at).max(1)
                        });
                        counts[w].fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = buffer.split_to(start);
            }
            anyhow::Ok((lag, cut_off))
        }));
    }
    let rss_before = server.rss_bytes();
    let m = create_tasks_at(
        &server.access,
        args.creates,
        args.concurrency,
        args.rate,
        Some(acked.clone()),
        epoch,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while counts
        .iter()
        .any(|c| c.load(Ordering::Relaxed) < args.creates)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = epoch.elapsed();
    let rss_after = server.rss_bytes();
    let complete = counts
        .iter()
        .filter(|c| c.load(Ordering::Relaxed) >= args.creates)
        .count();
    let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut cut_off = 0;
    for watcher in watchers {
        if watcher.is_finished() {
            let (watcher_lag, was_cut_off) = watcher.await??;
            lag.add(watcher_lag)?;
            cut_off += usize::from(was_cut_off);
        } else {
            watcher.abort();
        }
    }
    header("creates");
    report("HTTP create (watched)", args.concurrency, &m, None);
    println!(
        "watchers: {} of {} received all {} events, {} cut off by the server ({} events delivered in {:.1} s)",
        complete,
        args.watchers,
        args.creates,
        cut_off,
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<usize>(),
        delivered.as_secs_f64()
    );
    println!(
        "delivery lag (create acknowledged -> event read): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        lag.max() as f64 / 1000.0
    );
    println!(
        "apiserver RSS: {} MiB with watchers connected, {} MiB after, growth {} MiB",
        rss_before / (1 << 20),
        rss_after / (1 << 20),
        rss_after.saturating_sub(rss_before) / (1 << 20)
    );
    Ok(())
}

/// `loom-bench memory`: RSS with many tasks stored, after one full list.
pub async fn run_memory(args: MemoryArgs) -> anyhow::Result<()> {
    let server = ServerProcess::start(None).await?;
    let idle = server.rss_bytes();
    let m = create_tasks(
        &server.access,
        args.objects,
        args.concurrency,
        None,
        Instant::now(),
    )
    .await?;
    header("creates");
    report("HTTP create (embedded)", args.concurrency, &m, None);
    let stored = server.rss_bytes();
    let started = Instant::now();
    let list: Value = server
        .access
        .http()?
        .get(format!("{}{TASKS}", server.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let listed = list["items"].as_array().map_or(0, Vec::len);
    let list_time = started.elapsed();
    let rss = server.rss_bytes();
    println!(
        "listed {listed} tasks in {:.2} s; apiserver RSS {} MiB idle, {} MiB with {} tasks stored, {} MiB after listing them once",
        list_time.as_secs_f64(),
        idle / (1 << 20),
        stored / (1 << 20),
        args.objects,
        rss / (1 << 20)
    );
    if listed != args.objects {
        bail!("the list returned {listed} tasks, not {}", args.objects);
    }
    Ok(())
}
