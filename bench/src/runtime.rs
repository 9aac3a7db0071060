//! `loom-bench reflector|controller`: the client library's cache and controller runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api_types::Task;
use client::controller::{self, Action, Controller};
use client::{Api, Client, Informer, Patch, PatchParams, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::{ServerProcess, create_tasks};

/// `loom-bench reflector` and `loom-bench controller`.
#[derive(Debug, clap::Args)]
pub struct RuntimeArgs {
    /// Tasks in the cluster.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
}

/// `loom-bench touch-tasks`.
#[derive(Debug, clap::Args)]
pub struct TouchArgs {
    /// The API server of a build without authentication.
    #[arg(long)]
    url: Option<String>,
    /// A kubeconfig naming the API server and the bench user.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Tasks `bench-0`… to label.
    #[arg(long)]
    objects: usize,
}

/// Labels every bench task once.
pub async fn touch_tasks(args: TouchArgs) -> anyhow::Result<()> {
    let config = crate::access::touch_config(args.kubeconfig.as_deref(), args.url.as_deref())?;
    update_all(Client::new(config)?, args.objects).await
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// This process's resident memory.
fn rss() -> u64 {
    crate::measure::rss_of("self")
}

/// Memory and CPU of a reflector holding `objects` tasks, and of following as many updates.
pub async fn run_reflector(args: RuntimeArgs) -> anyhow::Result<()> {
    let server = ServerProcess::start(None).await?;
    create_tasks(&server.access, args.objects, 64, None, Instant::now()).await?;
    let api: Api<Task> = Api::namespaced(server.access.client()?, "default");
    let (rss_before, cpu_before, started) = (rss(), cpu_time(), Instant::now());
    let informer = Informer::start(api.clone(), watcher::Config::default());
    let store = informer.store();
    store.wait_ready().await;
    let (sync_time, sync_cpu, rss_after) = (started.elapsed(), cpu_time() - cpu_before, rss());
    // Follow one update of every object.
    let cpu_before = cpu_time();
    let mut changes = informer.subscribe();
    // The updates come from another process, so only the reflector's CPU counts.
    let mut updater = tokio::process::Command::new(std::env::current_exe()?)
        .arg("touch-tasks")
        .args(server.access.touch_args())
        .args(["--objects", &args.objects.to_string()])
        .spawn()?;
    let mut seen = 0;
    while seen < args.objects {
        if changes.recv().await.is_ok() {
            seen += 1;
        }
    }
    let status = updater.wait().await?;
    anyhow::ensure!(status.success(), "the updater failed: {status}");
    let follow_cpu = cpu_time() - cpu_before;
    println!(
        "reflector over {} tasks: first list in {:.2} s using {:.2} s CPU; RSS +{} MiB ({} bytes an object); following {} updates used {:.2} s CPU ({:.0} µs an event)",
        store.len(),
        sync_time.as_secs_f64(),
        sync_cpu.as_secs_f64(),
        rss_after.saturating_sub(rss_before) / (1 << 20),
        rss_after.saturating_sub(rss_before) / args.objects.max(1) as u64,
        args.objects,
        follow_cpu.as_secs_f64(),
        follow_cpu.as_micros() as f64 / args.objects.max(1) as f64,
    );
    informer.stop();
    Ok(())
}

async fn update_all(client: Client, objects: usize) -> anyhow::Result<()> {
    let api: Api<Task> = Api::namespaced(client, "default");
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let api = api.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= objects {
                    return anyhow::Ok(());
                }
                let patch = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
                api.patch(&format!("bench-{i}"), &PatchParams::default(), &patch)
                    .await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// Reconciles per second of a no-op controller over `objects` tasks.
pub async fn run_controller(args: RuntimeArgs) -> anyhow::Result<()> {
    let server = ServerProcess::start(None).await?;
    create_tasks(&server.access, args.objects, 64, None, Instant::now()).await?;
    let api: Api<Task> = Api::namespaced(server.access.client()?, "default");
    let informer = Informer::start(api, watcher::Config::default());
    informer.store().wait_ready().await;
    let reconciled = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let cpu_before = cpu_time();
    let run = tokio::spawn(
        Controller::new(&informer, controller::Config::default()).run(
            |_task: Arc<Task>, count: Arc<AtomicUsize>| async move {
                count.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            |_, _, _| Action::await_change(),
            reconciled.clone(),
            stop.clone(),
        ),
    );
    while reconciled.load(Ordering::Relaxed) < args.objects {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    stop.cancel();
    run.await?;
    informer.stop();
    println!(
        "no-op controller over {} tasks: all reconciled in {:.3} s ({:.0} reconciles/s, {:.1} µs CPU each)",
        args.objects,
        elapsed.as_secs_f64(),
        args.objects as f64 / elapsed.as_secs_f64(),
        cpu.as_micros() as f64 / args.objects as f64
    );
    Ok(())
}
