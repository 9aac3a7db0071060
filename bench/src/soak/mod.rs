//! `loom-bench soak`: a cluster of real processes under a steady workload
//! while faults are injected on a schedule, its recorded history checked
//! afterwards, and a report written (docs/reliability.md).
//!
//! Faults, in turn: SIGKILL and restart of an API server, of etcd, of a
//! scheduler, of a controller-manager, of a nodelet alone; the crash of a
//! whole node (its nodelet, shims and tasks killed at once) and its
//! restart on the same state; a node cut off (nftables dropping every
//! packet in and out of its network-namespace host, longer than the
//! controllers' grace, so its tasks are marked Lost and replaced) and
//! healed; an API server cut from etcd and every link to etcd slowed (by
//! the fault proxies on those links); a node's clock stepped five minutes
//! forward or back (libfaketime preloaded into its nodelet, shims and raw
//! tasks) and back again; the first node's state dir (a small tmpfs of its
//! own) filled up and freed again.

pub mod check;
mod cluster;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use loom_testing::proxy::Fault as LinkFault;
use tokio_util::sync::CancellationToken;

use cluster::{Cluster, Shape};
use workload::Recorder;

/// `loom-bench soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the workload and the faults run (`90s`, `3m`, `1h`).
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    duration: Duration,
    /// The store: etcd (several API servers) or the embedded store (one).
    #[arg(long, default_value = "etcd", value_parser = ["etcd", "embedded"])]
    backend: String,
    /// API servers (etcd only; the embedded store serves exactly one).
    #[arg(long, default_value_t = 2)]
    apiservers: usize,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Register clients (plus one job submitter each half).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Time between two faults (default: enough for each kind twice, 10 s to 60 s).
    #[arg(long, value_parser = parse_duration)]
    fault_every: Option<Duration>,
    /// Write the report here (markdown) as well as to stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the cluster's directory (logs, data) afterwards.
    #[arg(long)]
    keep: bool,
}

/// `90s`, `3m`, `1h`, `1h30m` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        number.clear();
        total += match c {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (s, m or h)")),
        };
    }
    if !number.is_empty() {
        return Err(format!("{text:?}: a unit (s, m or h) must follow {number}"));
    }
    if total == 0 {
        return Err(format!("{text:?}: must be more than 0 s"));
    }
    Ok(Duration::from_secs(total))
}

/// A fault the schedule injects.
#[derive(Clone, Debug)]
enum Fault {
    KillApiServer(usize),
    KillEtcd,
    KillScheduler(usize),
    KillControllers(usize),
    KillNodelet(String),
    CrashNode(String),
    PartitionNode(String),
    CutApiServerFromEtcd(usize),
    SlowEtcd,
    /// A node's clock stepped by this many seconds, then back.
    StepClock(String, i64),
    /// A node's state dir filled up, then freed.
    DiskFull(String),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::KillApiServer(_) => "kill -9 an API server",
            Fault::KillEtcd => "kill -9 etcd",
            Fault::KillScheduler(_) => "kill -9 a scheduler",
            Fault::KillControllers(_) => "kill -9 a controller-manager",
            Fault::KillNodelet(_) => "kill -9 a nodelet",
            Fault::CrashNode(_) => "crash a whole node",
            Fault::PartitionNode(_) => "partition a node (nftables in its namespace)",
            Fault::CutApiServerFromEtcd(_) => "cut an API server from etcd",
            Fault::SlowEtcd => "slow every link to etcd (200 ms a chunk)",
            Fault::StepClock(..) => "step a node's clock by 5 min (forward or back)",
            Fault::DiskFull(_) => "fill a nodelet's state dir",
        }
    }
}

/// The schedule: every kind in turn, the targets rotating.
fn schedule(shape: &Shape, nodes: &[String], count: usize) -> Vec<Fault> {
    let mut kinds: Vec<Box<dyn Fn(usize) -> Fault + '_>> = vec![
        Box::new(|i| Fault::KillApiServer(i % shape.apiservers)),
        Box::new(|i| Fault::KillScheduler(i % 2)),
        Box::new(|i| Fault::KillNodelet(nodes[i % nodes.len()].clone())),
        Box::new(|i| Fault::KillControllers(i % 2)),
        Box::new(|i| Fault::CrashNode(nodes[(i + 1) % nodes.len()].clone())),
        Box::new(|i| Fault::PartitionNode(nodes[(i + 2) % nodes.len()].clone())),
    ];
    if shape.etcd {
        kinds.push(Box::new(|_| Fault::KillEtcd));
        kinds.push(Box::new(|i| {
            Fault::CutApiServerFromEtcd(i % shape.apiservers)
        }));
        kinds.push(Box::new(|_| Fault::SlowEtcd));
    }
    // The first node's state dir is the small one.
    kinds.push(Box::new(|_| Fault::DiskFull(nodes[0].clone())));
    if shape.clock {
        // Back first: a lease renewed "in the past" and certificates "not
        // yet valid" are the harsher half.
        kinds.push(Box::new(|i| {
            Fault::StepClock(
                nodes[(i + 1) % nodes.len()].clone(),
                if i % 2 == 0 { -CLOCK_STEP } else { CLOCK_STEP },
            )
        }));
    }
    (0..count)
        .map(|n| kinds[n % kinds.len()](n / kinds.len()))
        .collect()
}

/// How far a node's clock is stepped (seconds).
const CLOCK_STEP: i64 = 300;

/// One fault as it happened.
#[derive(Debug)]
struct Injected {
    kind: &'static str,
    target: String,
    from: f64,
    to: f64,
}

/// Runs the soak.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak runs nodelets: run it as root");
    }
    if !loom_testing::netns::nft_works() {
        bail!(
            "the soak partitions nodes with nftables: nft is missing or this kernel has no nf_tables (scripts/deps installs nftables)"
        );
    }
    let loom = crate::api::loom_binary()?;
    // Named with the pid, as the nodes' namespaces and cgroups: a later
    // soak finds what a killed one left.
    let dir = tempfile::Builder::new()
        .prefix(&format!("loom-soak-{}-", std::process::id()))
        .tempdir()?;
    let etcd = args.backend == "etcd";
    let shape = Shape {
        etcd,
        apiservers: if etcd { args.apiservers.max(1) } else { 1 },
        nodes: args.nodes.max(2),
        // Past the nodelet's renewal interval (10 s): a grace shorter than
        // it called every node NotReady between two renewals.
        node_grace: Duration::from_secs(15),
        lost_grace: Duration::from_secs(4),
        clock: std::path::Path::new(cluster::LIBFAKETIME).exists(),
    };
    if !shape.clock {
        eprintln!(
            "soak: {} is missing (Debian's faketime; scripts/deps installs it): no clock steps",
            cluster::LIBFAKETIME
        );
    }
    let fault_every = args.fault_every.unwrap_or_else(|| {
        (args.duration / 18).clamp(Duration::from_secs(10), Duration::from_secs(60))
    });
    eprintln!(
        "soak: {} on {} with {} API server(s), {} nodes, a fault every {:?}; in {}",
        humanize(args.duration),
        args.backend,
        shape.apiservers,
        shape.nodes,
        fault_every,
        dir.path().display()
    );
    let started = Instant::now();
    let mut cluster = Cluster::start(&loom, dir.path(), &shape).await?;
    // Ctrl-C or SIGTERM stops the soak with its cleanup (the cluster's
    // processes, the nodes' runs and cgroups go with `cluster`).
    let result = tokio::select! {
        result = soak(&args, &shape, fault_every, &mut cluster) => result,
        _ = interrupted() => Err(anyhow::anyhow!("the soak was interrupted")),
    };
    if args.keep || result.is_err() {
        let kept = dir.keep();
        eprintln!("soak: the cluster's directory is kept: {}", kept.display());
    }
    let (report, anomalies) = result?;
    let report = format!(
        "{report}\nThe whole run, start-up and checks included, took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, &report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if anomalies > 0 {
        bail!("the soak found {anomalies} anomalies");
    }
    Ok(())
}

/// The soak proper: returns the report and how many anomalies it lists.
async fn soak(
    args: &SoakArgs,
    shape: &Shape,
    fault_every: Duration,
    cluster: &mut Cluster,
) -> anyhow::Result<(String, usize)> {
    let admin = cluster.admin()?;
    wait_nodes(&admin, shape.nodes, Duration::from_secs(90)).await?;
    const REGISTERS: usize = 8;
    workload::make_registers(&admin, REGISTERS).await?;
    let run_log = cluster.dir.join("runs.log");
    std::fs::write(&run_log, b"")?;
    // The exec driver runs tasks as an unprivileged user: they append to it.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&run_log, std::fs::Permissions::from_mode(0o666))?;
        std::fs::set_permissions(&cluster.dir, std::fs::Permissions::from_mode(0o755))?;
    }

    let recorder = Recorder::new();
    let stop = CancellationToken::new();
    let drain = CancellationToken::new();
    let mut clients = Vec::new();
    for id in 0..args.clients.max(1) {
        clients.push(tokio::spawn(workload::register_client(
            cluster.admin()?,
            id,
            REGISTERS,
            recorder.clone(),
            stop.clone(),
        )));
    }
    let mut followers = Vec::new();
    for id in 0..(args.clients / 2).max(1) {
        followers.push(tokio::spawn(workload::job_client(
            cluster.admin()?,
            id,
            run_log.display().to_string(),
            recorder.clone(),
            stop.clone(),
            drain.clone(),
        )));
    }
    let watch_stop = CancellationToken::new();
    let mut watchers = Vec::new();
    for (w, client) in [cluster.admin()?, cluster.admin_of(shape.apiservers - 1)?]
        .into_iter()
        .enumerate()
    {
        watchers.push(tokio::spawn(workload::watcher(
            client,
            w,
            recorder.clone(),
            watch_stop.clone(),
        )));
    }
    const SERVICE_REPLICAS: i32 = 3;
    clients.push(tokio::spawn(workload::service_client(
        cluster.admin()?,
        SERVICE_REPLICAS,
        (fault_every * 3).max(Duration::from_secs(30)),
        recorder.clone(),
        stop.clone(),
    )));
    let probe_stop = CancellationToken::new();
    let prober = tokio::spawn(workload::prober(
        cluster.admin()?,
        recorder.clone(),
        probe_stop.clone(),
    ));

    // Faults, on schedule, while sampling memory.
    let nodes: Vec<String> = cluster.nodelets.keys().cloned().collect();
    let count = (args.duration.as_secs_f64() / fault_every.as_secs_f64()).floor() as usize;
    let faults = schedule(shape, &nodes, count.saturating_sub(1));
    let mut injected: Vec<Injected> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    let end = Instant::now() + args.duration;
    let mut next_fault = Instant::now() + fault_every / 2;
    let mut faults = faults.into_iter();
    while Instant::now() < end {
        let t = recorder.now();
        for part in cluster.parts_mut() {
            if let Some(status) = part.exited() {
                unexpected.push(format!(
                    "{} exited by itself ({status}) at {t:.0} s: {}",
                    part.name,
                    part.log_tail()
                ));
                part.start()?;
            }
            part.sample(t);
        }
        if Instant::now() >= next_fault {
            next_fault += fault_every;
            if let Some(fault) = faults.next() {
                let from = recorder.now();
                let target = inject(cluster, &fault, &recorder, &mut unexpected).await?;
                eprintln!("soak: {:>5.0} s: {} ({target})", from, fault.kind());
                injected.push(Injected {
                    kind: fault.kind(),
                    target,
                    from,
                    to: recorder.now(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The drain: no new work, every job followed to its end, the service
    // back to N/N, within a bound.
    stop.cancel();
    for link in cluster
        .etcd_links
        .iter()
        .chain(cluster.node_links.values().flatten())
    {
        link.set(LinkFault::None);
    }
    let drain_bound = Duration::from_secs(180);
    let drained = Instant::now();
    let mut anomalies: Vec<String> = Vec::new();
    for follower in followers {
        let left = drain_bound.saturating_sub(drained.elapsed());
        let mut follower = follower;
        if tokio::time::timeout(left, &mut follower).await.is_err() {
            drain.cancel();
            let _ = follower.await;
        }
    }
    drain.cancel();
    for client in clients {
        let _ = client.await;
    }
    let service_ready = wait_service(
        &admin,
        SERVICE_REPLICAS,
        drain_bound
            .saturating_sub(drained.elapsed())
            .max(Duration::from_secs(30)),
    )
    .await;
    if let Err(why) = &service_ready {
        anomalies.push(format!("the service did not come back: {why}"));
    }
    let drain_seconds = drained.elapsed().as_secs_f64();
    // Every running task's log, from its node's endpoint: the API servers
    // reach each node across its veth.
    let (logs_read, unread) = workload::read_logs(admin.clone(), Duration::from_secs(30)).await;
    anomalies.extend(unread);
    probe_stop.cancel();
    let _ = prober.await;
    // The watchers get a moment to see the last writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch_stop.cancel();
    for watcher in watchers {
        let _ = watcher.await;
    }

    // The final state of the registers.
    let leases: client::Api<api_types::Lease> =
        client::Api::namespaced(admin.clone(), workload::NAMESPACE);
    let mut last = BTreeMap::new();
    for lease in leases.list(&Default::default()).await?.items {
        last.insert(
            lease.metadata.name.clone(),
            (
                lease.metadata.resource_version.parse().unwrap_or(0),
                lease.spec.holder_identity.clone().unwrap_or_default(),
            ),
        );
    }
    let history = std::mem::take(&mut *recorder.history.lock().unwrap_or_else(|e| e.into_inner()));
    anomalies.extend(check::registers(
        &history.registers,
        &history.watchers,
        &last,
    ));
    let run_text = std::fs::read_to_string(&run_log).unwrap_or_default();
    anomalies.extend(check::jobs(&history.jobs, &run_text));
    for name in &history.unfinished {
        anomalies.push(format!(
            "job {name}: not finished {:.0} s after the faults stopped",
            drain_seconds
        ));
    }
    anomalies.extend(unexpected.iter().cloned());

    // Clean up through the API, stop everything, look for leftovers.
    let services: client::Api<api_types::Service> =
        client::Api::namespaced(admin.clone(), workload::NAMESPACE);
    let _ = services.delete("web", &Default::default()).await;
    let tasks: client::Api<api_types::Task> =
        client::Api::namespaced(admin.clone(), workload::NAMESPACE);
    let jobs: client::Api<api_types::Job> =
        client::Api::namespaced(admin.clone(), workload::NAMESPACE);
    if let Ok(left) = jobs.list(&Default::default()).await {
        for job in left.items {
            let _ = jobs.delete(&job.metadata.name, &Default::default()).await;
        }
    }
    let gone = Instant::now() + Duration::from_secs(60);
    loop {
        match tasks.list(&Default::default()).await {
            Ok(list) if list.items.is_empty() => break,
            Ok(list) if Instant::now() > gone => {
                for task in list.items {
                    let status = task.status.clone().unwrap_or_default();
                    anomalies.push(format!(
                        "task {} ({:?} on {:?}, {}) still there 60 s after everything was deleted",
                        task.metadata.name,
                        status.phase,
                        task.spec.node_name,
                        if task.metadata.deletion_timestamp.is_some() {
                            "being deleted"
                        } else {
                            "not being deleted"
                        }
                    ));
                }
                break;
            }
            _ if Instant::now() > gone => break,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    // The nodelets stop the deleted tasks' runs (SIGTERM, SIGKILL after the
    // grace period); a nodelet stopped before that leaves them running, by
    // design, for its next start to finish.
    let stopped = Instant::now() + Duration::from_secs(60);
    while cluster.task_processes() > 0 && Instant::now() < stopped {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let memory = memory_table(cluster, args.duration);
    cluster.stop();
    let leftovers = cluster.leftovers();
    for leftover in &leftovers {
        anomalies.push(format!("left on the host after the run: {leftover}"));
    }
    if let Err(why) = cluster.unmount_small_disk(false) {
        anomalies.push(format!("left on the host after the run: {why}"));
    }

    let report = report(
        args,
        shape,
        fault_every,
        &history,
        &injected,
        &anomalies,
        &memory,
        drain_seconds,
        logs_read,
    );
    Ok((report, anomalies.len()))
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Injects `fault`; returns what it hit. What goes wrong while it is in
/// force and is the fault's to check goes to `anomalies`.
async fn inject(
    cluster: &mut Cluster,
    fault: &Fault,
    recorder: &Recorder,
    anomalies: &mut Vec<String>,
) -> anyhow::Result<String> {
    Ok(match fault {
        Fault::KillApiServer(i) => {
            cluster.apiservers[*i].kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.apiservers[*i].start()?;
            format!("apiserver-{i}")
        }
        Fault::KillEtcd => {
            if let Some(etcd) = &mut cluster.etcd {
                etcd.kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                etcd.start()?;
            }
            "etcd".into()
        }
        Fault::KillScheduler(i) => {
            cluster.schedulers[*i].kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.schedulers[*i].start()?;
            format!("scheduler-{i}")
        }
        Fault::KillControllers(i) => {
            cluster.controllers[*i].kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.controllers[*i].start()?;
            format!("controllers-{i}")
        }
        Fault::KillNodelet(name) => {
            if let Some(part) = cluster.nodelets.get_mut(name) {
                part.kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                part.start()?;
            }
            name.clone()
        }
        Fault::CrashNode(name) => {
            let killed = cluster.crash_node(name);
            tokio::time::sleep(Duration::from_secs(3)).await;
            if let Some(part) = cluster.nodelets.get_mut(name) {
                part.start()?;
            }
            format!("{name}, {killed} processes")
        }
        Fault::PartitionNode(name) => {
            // Past the node grace and the lost grace: its tasks are marked
            // Lost and replaced, and the node must stop them (fencing).
            // Connections open go silent both ways (nothing is reset), as
            // behind a real firewall: watches must find out for themselves.
            let hold = Duration::from_secs(22);
            let admin = cluster.admin()?;
            cluster.partition(name)?;
            let cut = Instant::now() + hold;
            // The cut must be seen: the node NotReady before it heals.
            let nodes: client::Api<api_types::Node> = client::Api::all(admin);
            let mut not_ready = false;
            while Instant::now() < cut {
                let left = cut.saturating_duration_since(Instant::now());
                if !not_ready
                    && let Ok(Ok(node)) =
                        tokio::time::timeout(left.min(Duration::from_secs(2)), nodes.get(name))
                            .await
                {
                    not_ready = !node.is_ready();
                }
                let left = cut.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(500))).await;
            }
            cluster.heal(name)?;
            if !not_ready {
                anomalies.push(format!(
                    "{:.0} s: {name} was partitioned for {} s but never seen NotReady (the cut did not hold?)",
                    recorder.now(),
                    hold.as_secs()
                ));
            }
            format!("{name} for {} s", hold.as_secs())
        }
        Fault::CutApiServerFromEtcd(i) => {
            let hold = Duration::from_secs(6);
            cluster.etcd_links[*i].set(LinkFault::Partition);
            tokio::time::sleep(hold).await;
            cluster.etcd_links[*i].set(LinkFault::None);
            format!("apiserver-{i} for {} s", hold.as_secs())
        }
        Fault::SlowEtcd => {
            let hold = Duration::from_secs(8);
            for link in &cluster.etcd_links {
                link.set(LinkFault::Delay(Duration::from_millis(200)));
            }
            tokio::time::sleep(hold).await;
            for link in &cluster.etcd_links {
                link.set(LinkFault::None);
            }
            format!("for {} s", hold.as_secs())
        }
        Fault::StepClock(name, offset) => {
            // Longer than the node grace and the lost grace together: a
            // control plane reading the node's renewTime against its own
            // clock would call it dead (a step back) or keep a dead one
            // alive (a step forward) within it. The node must stay Ready
            // throughout and after, its tasks untouched.
            let admin = cluster.admin()?;
            let t = recorder.now();
            if let Err(why) = wait_node_ready(&admin, name, Duration::from_secs(30)).await {
                anomalies.push(format!("{t:.0} s: before a clock step: {why}"));
            }
            let hold = Duration::from_secs(12);
            cluster.step_clock(name, *offset)?;
            let seen = follow_node(&admin, name, hold).await;
            cluster.step_clock(name, 0)?;
            let after = follow_node(&admin, name, Duration::from_secs(6)).await;
            let t = recorder.now();
            // The step reached the nodelet: its renewTime moved with it.
            if (seen.skew - *offset as f64).abs() > 30.0 {
                anomalies.push(format!(
                    "{t:.0} s: {name}'s clock was stepped by {offset:+} s but its lease's renewTime was {:+.0} s off (libfaketime not in force?)",
                    seen.skew
                ));
            }
            for (when, seen) in [("while stepped", &seen), ("after the step back", &after)] {
                if seen.not_ready > 0 {
                    anomalies.push(format!(
                        "{t:.0} s: {name} was seen NotReady {} times {when} by {offset:+} s, though it renewed its lease",
                        seen.not_ready
                    ));
                }
            }
            format!("{name} by {offset:+} s for {} s", hold.as_secs())
        }
        Fault::DiskFull(name) => {
            // The nodelet keeps running; what cannot start waits or fails
            // with a reason, what runs is untouched; once freed, every job
            // finishes and the service is back to N/N (the drain's checks).
            let hold = Duration::from_secs(12);
            let filled = cluster.fill_small_disk()?;
            tokio::time::sleep(hold).await;
            cluster.free_small_disk();
            if let Some(part) = cluster.nodelets.get_mut(name)
                && let Some(status) = part.exited()
            {
                anomalies.push(format!(
                    "{:.0} s: {name}'s nodelet exited ({status}) while its disk was full: {}",
                    recorder.now(),
                    part.log_tail()
                ));
                part.start()?;
            }
            format!(
                "{name}, {} MiB written, for {} s",
                filled >> 20,
                hold.as_secs()
            )
        }
    })
}

/// What the soak saw of a node for a while.
#[derive(Debug, Default)]
struct NodeSeen {
    /// Polls that found it not Ready.
    not_ready: usize,
    /// The largest gap seen between its lease's renewTime and the soak's
    /// own clock (seconds, signed).
    skew: f64,
}

/// Polls node `name` and its lease every half second for `within`.
async fn follow_node(client: &client::Client, name: &str, within: Duration) -> NodeSeen {
    let nodes: client::Api<api_types::Node> = client::Api::all(client.clone());
    let leases: client::Api<api_types::Lease> =
        client::Api::namespaced(client.clone(), api_types::well_known::NODE_LEASE_NAMESPACE);
    let mut seen = NodeSeen::default();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Ok(node)) = tokio::time::timeout(Duration::from_secs(2), nodes.get(name)).await
            && !node.is_ready()
        {
            seen.not_ready += 1;
        }
        if let Ok(Ok(lease)) = tokio::time::timeout(Duration::from_secs(2), leases.get(name)).await
            && let Some(renewed) = lease.spec.renew_time
        {
            let skew = (renewed - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
            if skew.abs() > seen.skew.abs() {
                seen.skew = skew;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seen
}

async fn wait_node_ready(
    client: &client::Client,
    name: &str,
    within: Duration,
) -> Result<(), String> {
    let nodes: client::Api<api_types::Node> = client::Api::all(client.clone());
    let deadline = Instant::now() + within;
    loop {
        if let Ok(node) = nodes.get(name).await
            && node.is_ready()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} not Ready within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_nodes(client: &client::Client, count: usize, within: Duration) -> anyhow::Result<()> {
    let nodes: client::Api<api_types::Node> = client::Api::all(client.clone());
    let deadline = Instant::now() + within;
    loop {
        let ready = nodes
            .list(&Default::default())
            .await
            .map(|l| l.items.iter().filter(|n| n.is_ready()).count())
            .unwrap_or(0);
        if ready >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {count} nodes were Ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_service(
    client: &client::Client,
    replicas: i32,
    within: Duration,
) -> Result<(), String> {
    let services: client::Api<api_types::Service> =
        client::Api::namespaced(client.clone(), workload::NAMESPACE);
    let deadline = Instant::now() + within;
    let mut last = String::from("never read");
    loop {
        if let Ok(Ok(service)) =
            tokio::time::timeout(Duration::from_secs(5), services.get("web")).await
        {
            let status = service.status.clone().unwrap_or_default();
            last = format!(
                "{} ready, {} available, {} updated of {replicas}",
                status.ready_replicas, status.available_replicas, status.updated_replicas
            );
            if status.ready_replicas == replicas
                && status.available_replicas == replicas
                && status.updated_replicas == replicas
                && status.replicas == replicas
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{last} {:.0} s after the faults stopped",
                within.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Memory of each part: first and last RSS of its longest-lived process,
/// and the growth from the first fifth after warm-up to the last fifth.
fn memory_table(
    cluster: &mut Cluster,
    duration: Duration,
) -> Vec<(String, u32, f64, f64, Option<f64>)> {
    let warm = duration.as_secs_f64() * 0.2;
    cluster
        .parts_mut()
        .into_iter()
        .map(|part| {
            let series: Vec<(f64, u64)> = part
                .series()
                .iter()
                .copied()
                .filter(|(t, _)| *t >= warm)
                .collect();
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let first = series.first().map_or(0.0, |s| mib(s.1));
            let last = series.last().map_or(0.0, |s| mib(s.1));
            let growth = (series.len() >= 10).then(|| {
                let fifth = series.len() / 5;
                let mean =
                    |s: &[(f64, u64)]| s.iter().map(|x| x.1 as f64).sum::<f64>() / s.len() as f64;
                let early = mean(&series[..fifth]);
                let late = mean(&series[series.len() - fifth..]);
                (late - early) / early * 100.0
            });
            (part.name.clone(), part.starts, first, last, growth)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &SoakArgs,
    shape: &Shape,
    fault_every: Duration,
    history: &workload::History,
    injected: &[Injected],
    anomalies: &[String],
    memory: &[(String, u32, f64, f64, Option<f64>)],
    drain_seconds: f64,
    logs_read: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Reliability: the soak\n");
    let _ = writeln!(
        out,
        "Written by `loom-bench soak --duration {} --backend {}` on {} (as root). {} API server(s) over {}, two schedulers and two controller-managers (leader-elected), {} nodelets; {} register clients, {} job submitters, one service of 3 replicas updated on a timer, two watchers, an availability prober. A fault every {} s. The controllers run with a node grace of {} s and a lost grace of {} s so partitions replace tasks; the API servers keep Events {} s after they were last seen.\n",
        humanize(args.duration),
        args.backend,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        shape.apiservers,
        if shape.etcd {
            "etcd"
        } else {
            "the embedded store"
        },
        shape.nodes,
        args.clients.max(1),
        (args.clients / 2).max(1),
        fault_every.as_secs(),
        shape.node_grace.as_secs(),
        shape.lost_grace.as_secs(),
        cluster::SOAK_EVENT_TTL_SECONDS,
    );
    let _ = writeln!(
        out,
        "## Operations\n\n| operation | answered | refused | unknown |\n|---|---:|---:|---:|"
    );
    for (what, (ok, failed, unknown)) in &history.counts {
        let _ = writeln!(out, "| {what} | {ok} | {failed} | {unknown} |");
    }
    let events: usize = history
        .watchers
        .iter()
        .map(|w| {
            w.iter()
                .filter(|s| matches!(s, check::Seen::Event { .. }))
                .count()
        })
        .sum();
    let relists: usize = history
        .watchers
        .iter()
        .map(|w| {
            w.iter()
                .filter(|s| matches!(s, check::Seen::Start { .. }))
                .count()
        })
        .sum();
    let _ = writeln!(
        out,
        "\nWatch events checked: {events} (over {} watchers, {relists} lists). Jobs finished and checked: {}, {} tasks. Drain after the last fault: {drain_seconds:.0} s. Task logs read from the nodes' endpoints after it: {logs_read}.\n",
        history.watchers.len(),
        history.jobs.len(),
        history.jobs.iter().map(|j| j.tasks.len()).sum::<usize>()
    );
    let _ = writeln!(
        out,
        "## Faults\n\n| fault | injected | longest API unavailability seen by a client |\n|---|---:|---:|"
    );
    let mut kinds: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for fault in injected {
        let entry = kinds.entry(fault.kind).or_default();
        entry.0 += 1;
        entry.1 = entry
            .1
            .max(longest_gap(&history.probes, fault.from, fault.to));
    }
    for (kind, (n, gap)) in &kinds {
        let _ = writeln!(out, "| {kind} | {n} | {:.2} s |", gap);
    }
    let _ = writeln!(out, "\nEach fault in order:\n");
    for fault in injected {
        let _ = writeln!(
            out,
            "- {:.0} s: {} ({})",
            fault.from, fault.kind, fault.target
        );
    }
    let _ = writeln!(out, "\n## Anomalies: {} (goal: 0)\n", anomalies.len());
    for anomaly in anomalies.iter().take(50) {
        let _ = writeln!(out, "- {anomaly}");
    }
    if anomalies.len() > 50 {
        let _ = writeln!(out, "- ... and {} more", anomalies.len() - 50);
    }
    let _ = writeln!(
        out,
        "\n## Memory\n\nRSS of each process after a warm-up of a fifth of the run; growth is the mean of the last fifth of samples against the first (goal over an hour: < 10 %). A part killed by the schedule is measured over its longest-lived process.\n\n| process | starts | RSS first | RSS last | growth |\n|---|---:|---:|---:|---:|"
    );
    for (name, starts, first, last, growth) in memory {
        let growth = growth.map_or("too few samples".to_owned(), |g| format!("{g:+.1} %"));
        let _ = writeln!(
            out,
            "| {name} | {starts} | {first:.1} MiB | {last:.1} MiB | {growth} |"
        );
    }
    let mut missing = String::new();
    if !shape.clock {
        missing.push_str("Clock steps of a node are not in this run's schedule: libfaketime (Debian's faketime, which scripts/deps installs) is missing. ");
    }
    if !shape.etcd {
        missing.push_str("On the embedded store (one API server) there is no etcd to kill, cut or slow: those faults are etcd runs' only. ");
    }
    let _ = writeln!(
        out,
        "\n## How the faults are made\n\nEach nodelet (and so its tasks) runs in a network-namespace host of its own, joined to the host by a veth; it reaches the API servers through fault proxies listening on the host end of its veth, and the API servers reach its endpoint (task logs, read once for every running task after the drain) across the veth. A node's partition is an nftables table inside its namespace dropping every packet in and out but on `lo`: connections open go silent both ways and new ones hear nothing, until the table is deleted. The API servers, schedulers, controller-managers (and etcd) run on the host, on loopback: an API server's cut from etcd and the slowed etcd links are made by the fault proxies on those links (this kernel has no netem).\n\n## Not injected yet\n\n{missing}No partition inside the control plane but the etcd cuts (no API server, scheduler or controller-manager cut from the others), none partial (one way only, or from some API servers only), no packet loss, and no node's link slowed (its proxies can, the schedule does not). A clock step moves the nodelet's CLOCK_REALTIME only (libfaketime, preloaded), not the monotonic clock, and not the real host's; a full disk is the first node's state dir only (a 32 MiB tmpfs), not the host's root or the API servers' stores."
    );
    out
}

/// The longest time between answered probes around [from, to].
fn longest_gap(probes: &[(f64, bool)], from: f64, to: f64) -> f64 {
    let mut last_ok: Option<f64> = None;
    let mut longest: f64 = 0.0;
    for (t, ok) in probes {
        if !ok {
            continue;
        }
        // A gap is the fault's when it began while the fault was in force.
        if let Some(previous) = last_ok
            && previous >= from - 0.5
            && previous <= to
        {
            longest = longest.max(t - previous);
        }
        last_ok = Some(*t);
    }
    longest
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_say_why() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("3x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m").unwrap_err().contains("number"));
        assert!(parse_duration("5m3").unwrap_err().contains("unit"));
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn the_longest_gap_is_measured_around_the_fault() {
        let probes = vec![
            (0.0, true),
            (0.1, true),
            (0.2, false),
            (1.5, true),
            (1.6, true),
            (9.0, true),
        ];
        assert!((longest_gap(&probes, 0.15, 1.0) - 1.4).abs() < 1e-9);
        assert!((longest_gap(&probes, 1.5, 3.0) - 7.4).abs() < 1e-9);
        // A gap that began after the fault ended is not its.
        assert_eq!(longest_gap(&probes, 0.0, 0.05), 0.1);
    }

    #[test]
    fn the_schedule_turns_through_every_kind() {
        let shape = Shape {
            etcd: true,
            apiservers: 2,
            nodes: 3,
            node_grace: Duration::from_secs(1),
            lost_grace: Duration::from_secs(1),
            clock: true,
        };
        let nodes = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let faults = schedule(&shape, &nodes, 22);
        let kinds: std::collections::BTreeSet<&str> = faults.iter().map(Fault::kind).collect();
        assert_eq!(kinds.len(), 11);
        assert!(matches!(faults[11], Fault::KillApiServer(1)));
        // Clock steps go both ways, the disk fills on the small node.
        let steps: Vec<i64> = faults
            .iter()
            .filter_map(|f| match f {
                Fault::StepClock(_, offset) => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![-CLOCK_STEP, CLOCK_STEP]);
        assert!(
            faults
                .iter()
                .any(|f| matches!(f, Fault::DiskFull(n) if n == "a"))
        );
    }

    #[test]
    fn the_embedded_schedule_has_no_etcd_faults() {
        let shape = Shape {
            etcd: false,
            apiservers: 1,
            nodes: 3,
            node_grace: Duration::from_secs(1),
            lost_grace: Duration::from_secs(1),
            clock: true,
        };
        let nodes = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let faults = schedule(&shape, &nodes, 16);
        assert!(faults.iter().all(|f| !matches!(
            f,
            Fault::KillEtcd | Fault::CutApiServerFromEtcd(_) | Fault::SlowEtcd
        )));
        let kinds: std::collections::BTreeSet<&str> = faults.iter().map(Fault::kind).collect();
        assert_eq!(kinds.len(), 8);
    }
}
