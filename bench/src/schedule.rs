//! `loom-bench schedule`: the scheduler over simulated nodes, end to end through a real
//! `loom apiserver` process (tasks bound per second), and alone in memory (decisions
//! per second of the cache, filter and scorers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use api_types::{Node, Task};
use client::{Api, Client, ListParams, PostParams};
use futures::StreamExt;
use loom_testing::EtcdServer;
use scheduler::algorithm::{Algorithm, Sampling};
use scheduler::cache::Cache;
use scheduler::resources::TaskInfo;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Backend;
use crate::access::{Access, Component};
use crate::api::ServerProcess;
use crate::measure::measure;

/// `loom-bench schedule`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Which backends to measure end to end (`all`: embedded, then etcd).
    #[arg(long, value_enum, default_value = "embedded")]
    backend: Backend,
    /// Simulated nodes (Node objects only; no nodelets).
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    /// Tasks to schedule.
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    /// Binds in flight while decisions go on.
    #[arg(long, default_value_t = 64)]
    binds_in_flight: usize,
    /// Concurrent clients creating the nodes and tasks.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Only the exclusive run (one leader-elected scheduler binding alone, as
    /// `loom scheduler` runs by default), not also the run claiming nodes (as
    /// `loom scheduler --claim-nodes` does so that several may race).
    #[arg(long)]
    exclusive_only: bool,
    /// Only the in-memory decisions.
    #[arg(long)]
    decisions_only: bool,
}

const CPU_PER_NODE: &str = "4";
const MEMORY_PER_NODE: &str = "16Gi";
const TASKS_PER_JOB: usize = 100;

fn node(i: usize) -> Node {
    let zone = i % 3;
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Node",
        "metadata": {"name": format!("node-{i}"), "labels": {"zone": format!("zone-{zone}")}},
        "status": {
            "capacity": {"cpu": CPU_PER_NODE, "memory": MEMORY_PER_NODE, "tasks": "110"},
            "allocatable": {"cpu": CPU_PER_NODE, "memory": MEMORY_PER_NODE, "tasks": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap_or_default()
}

/// Tasks of one size in jobs of 100: 100m and 256Mi each, a quarter of the cluster
/// for the default sizes.
fn task(i: usize) -> Task {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Task",
        "metadata": {
            "name": format!("bench-{i}"), "namespace": "default",
            "labels": {api_types::well_known::LABEL_JOB: format!("job-{}", i / TASKS_PER_JOB)}
        },
        "spec": {
            "image": "busybox", "command": ["sleep", "3600"],
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "priority": (i % 3) as i32
        }
    }))
    .unwrap_or_default()
}

pub async fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    decisions(&args);
    if args.decisions_only {
        return Ok(());
    }
    let modes: &[bool] = if args.exclusive_only {
        &[false]
    } else {
        &[false, true]
    };
    if matches!(args.backend, Backend::Embedded | Backend::All) {
        for &claims in modes {
            let server = ServerProcess::start(None).await?;
            end_to_end(&args, &server.access, "embedded", claims).await?;
        }
    }
    if matches!(args.backend, Backend::Etcd | Backend::All) {
        for &claims in modes {
            let etcd = EtcdServer::start().await?;
            let store = format!("etcd://{}", etcd.endpoint().trim_start_matches("http://"));
            let server = ServerProcess::start(Some(&store)).await?;
            end_to_end(&args, &server.access, "etcd", claims).await?;
        }
    }
    Ok(())
}

/// Decisions per second of the cache, filter and scorers alone, and how evenly they
/// spread the load, with the bounded sample and with every node scored.
fn decisions(args: &ScheduleArgs) {
    println!(
        "in-memory decisions: {} nodes of {CPU_PER_NODE} CPU / {MEMORY_PER_NODE}, {} tasks of 100m / 256Mi",
        args.nodes, args.tasks
    );
    let tasks: Vec<TaskInfo> = (0..args.tasks)
        .map(|i| TaskInfo::new(Arc::new(task(i))))
        .collect();
    for (name, sampling) in [
        ("sampled (max(100, 10%))", Sampling::default()),
        (
            "every node",
            Sampling {
                min_feasible: usize::MAX,
                percentage: 100,
            },
        ),
    ] {
        let mut cache = Cache::new("bench");
        let now = tokio::time::Instant::now();
        for i in 0..args.nodes {
            cache.upsert_node(Arc::new(node(i)), now);
        }
        let mut algorithm = Algorithm::new(sampling);
        let started = Instant::now();
        let mut unplaced = 0;
        for t in &tasks {
            match algorithm.decide(&cache, t) {
                Ok(i) => {
                    let node = cache.nodes()[i].name().to_owned();
                    cache.assume(t.clone(), &node);
                }
                Err(_) => unplaced += 1,
            }
        }
        let elapsed = started.elapsed();
        let used: Vec<f64> = cache
            .nodes()
            .iter()
            .map(|n| n.requested.cpu_milli as f64 / n.allocatable.cpu_milli.max(1) as f64)
            .collect();
        let mean = used.iter().sum::<f64>() / used.len().max(1) as f64;
        let max = used.iter().copied().fold(0.0, f64::max);
        let sd = (used.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / used.len().max(1) as f64)
            .sqrt();
        println!(
            "  {name:<24} {:>9.0} decisions/s ({:.1} µs each); CPU use per node mean {:.1}%, max {:.1}%, sd {:.2} points; {unplaced} unplaced",
            args.tasks as f64 / elapsed.as_secs_f64(),
            elapsed.as_micros() as f64 / args.tasks.max(1) as f64,
            mean * 100.0,
            max * 100.0,
            sd * 100.0,
        );
    }
}

/// Registers the nodes, creates the tasks, then runs the scheduler and times the binds.
async fn end_to_end(
    args: &ScheduleArgs,
    access: &Access,
    backend: &str,
    claims: bool,
) -> anyhow::Result<()> {
    // The simulated nodes are the administrator's to make; tasks the bench
    // user's; the scheduler binds with its own credential.
    let client = access.client()?;
    let nodes: Api<Node> = Api::all(access.admin()?);
    let api = nodes.clone();
    let registered = measure(args.nodes, args.concurrency, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &node(i)).await?;
            Ok(())
        }
    })
    .await?;
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    let api = tasks.clone();
    let created = measure(args.tasks, args.concurrency, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &task(i)).await?;
            Ok(())
        }
    })
    .await?;
    let mode = if claims {
        "claiming nodes"
    } else {
        "exclusive, no claims"
    };
    println!(
        "end to end ({backend}, {mode}, {} binds in flight): {} nodes registered at {:.0}/s, {} tasks created at {:.0}/s",
        args.binds_in_flight,
        args.nodes,
        registered.per_second(),
        args.tasks,
        created.per_second()
    );
    // Count binds from a watch of its own, as any client would see them.
    let rv = tasks
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version;
    let bound = Arc::new(AtomicUsize::new(0));
    let watch = tokio::spawn(count_binds(
        access.http()?,
        access.url.clone(),
        rv,
        args.tasks,
        bound.clone(),
    ));
    let config = scheduler::Config {
        binds_in_flight: args.binds_in_flight,
        claim_nodes: claims,
        ..Default::default()
    };
    let server_pid = server_pid(&access.url);
    let cpu_before = (cpu_of("self"), server_pid.as_deref().map(cpu_of));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let scheduler = tokio::spawn(scheduler::run_with(
        access.client_as(&Component::Scheduler)?,
        config,
        stop.clone(),
    ));
    let deadline = started + Duration::from_secs(600);
    let mut first_bind = None;
    let mut last_report = started;
    while bound.load(Ordering::Relaxed) < args.tasks {
        if first_bind.is_none() && bound.load(Ordering::Relaxed) > 0 {
            first_bind = Some(started.elapsed());
        }
        if watch.is_finished() {
            bail!("the watch counting binds ended early");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} tasks bound in 600 s",
                bound.load(Ordering::Relaxed),
                args.tasks
            );
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  … {} bound after {:.0} s",
                bound.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu_after = (cpu_of("self"), server_pid.as_deref().map(cpu_of));
    let first_bind = first_bind.unwrap_or(elapsed);
    stop.cancel();
    scheduler.await.context("the scheduler panicked")?;
    watch.abort();
    println!(
        "  {} tasks bound in {:.2} s: {:.0} tasks/s end to end (first bind after {:.2} s of start-up; {:.0} tasks/s after it)",
        args.tasks,
        elapsed.as_secs_f64(),
        args.tasks as f64 / elapsed.as_secs_f64(),
        first_bind.as_secs_f64(),
        args.tasks as f64 / (elapsed - first_bind).as_secs_f64().max(1e-9),
    );
    let per_task = |cpu: Duration| cpu.as_micros() as f64 / args.tasks.max(1) as f64;
    let scheduler_cpu = cpu_after.0.saturating_sub(cpu_before.0);
    let server_cpu = match (cpu_before.1, cpu_after.1) {
        (Some(before), Some(after)) => format!(
            "{:.1} s CPU ({:.0} µs a task)",
            after.saturating_sub(before).as_secs_f64(),
            per_task(after.saturating_sub(before))
        ),
        _ => "unknown CPU".to_owned(),
    };
    println!(
        "  meanwhile the scheduler (with the watch counting binds) used {:.1} s CPU ({:.0} µs a task), the API server {server_cpu}",
        scheduler_cpu.as_secs_f64(),
        per_task(scheduler_cpu),
    );
    check_placements(&client, args).await
}

/// The CPU time (user + system) of process `pid` (or `self`), from `/proc`.
fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz)
}

/// The pid of the `loom apiserver` process listening at `url`.
fn server_pid(url: &str) -> Option<String> {
    let listen = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(" apiserver ") && cmdline.contains(listen)).then_some(pid)
        })
}

/// Follows a watch of the tasks and counts each first seen with a node.
async fn count_binds(
    http: reqwest::Client,
    url: String,
    rv: String,
    total: usize,
    bound: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let response = http
        .get(format!(
            "{url}/apis/loom.dev/v1/namespaces/default/tasks?watch=true&resourceVersion={rv}&timeoutSeconds=3600"
        ))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the watch answered {}", response.status());
    }
    let mut seen = vec![false; total];
    let mut stream = response.bytes_stream();
    let mut buffer = bytes::BytesMut::new();
    let name = memchr::memmem::Finder::new(b"\"name\":\"bench-");
    let node_name = memchr::memmem::Finder::new(b"\"nodeName\":\"");
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?);
        let mut start = 0;
        while let Some(end) = memchr::memchr(b'\n', &buffer[start..]) {
            let line = &buffer[start..start + end];
            start += end + 1;
            if node_name.find(line).is_none() {
                continue;
            }
            let Some(at) = name.find(line).map(|at| at + name.needle().len()) else {
                continue;
            };
            let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
            let index: Option<usize> = std::str::from_utf8(&line[at..at + digits])
                .ok()
                .and_then(|s| s.parse().ok());
            if let Some(i) = index
                && i < total
                && !seen[i]
            {
                seen[i] = true;
                bound.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = buffer.split_to(start);
    }
    Ok(())
}

/// Every task bound, and no node holding more than it offers.
async fn check_placements(client: &Client, args: &ScheduleArgs) -> anyhow::Result<()> {
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    let (all, _) = tasks.list_all(&ListParams::default()).await?;
    let mut per_node: HashMap<String, i128> = HashMap::new();
    for t in &all {
        if t.spec.node_name.is_empty() {
            bail!("{} is not bound", t.metadata.name);
        }
        *per_node.entry(t.spec.node_name.clone()).or_default() +=
            t.spec.resources.cpu.as_ref().map_or(0, |q| q.milli_value());
    }
    let capacity = api_types::Quantity::parse(CPU_PER_NODE)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .milli_value();
    let fullest = per_node.values().copied().max().unwrap_or(0);
    if fullest > capacity {
        bail!("a node holds {fullest}m of {capacity}m");
    }
    println!(
        "  checked: all {} tasks bound, over {} of {} nodes, the fullest at {}m of {}m",
        all.len(),
        per_node.len(),
        args.nodes,
        fullest,
        capacity
    );
    Ok(())
}
