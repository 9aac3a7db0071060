//! `loom-bench nodelet`: task bound → process running and → Completed written,
//! through a real `loom apiserver` and a real `loom nodelet` (containers through
//! the shim and libcontainer), beside bare libcontainer create → exit of the same
//! busybox `true` measured in the same run (`loom-bench bare-container`, a child
//! process calling libcontainer directly).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use api_types::{Task, TaskPhase};
use chrono::Utc;
use client::reflector::{Change, ObjectKey};
use client::{Api, Informer, PostParams, watcher};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::access::Component;
use crate::api::{ServerProcess, loom_binary};
use crate::job::Children;

/// `loom-bench nodelet`.
#[derive(Debug, clap::Args)]
pub struct NodeletArgs {
    /// Tasks to run (one after another, so each latency is its own).
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// The driver: container or exec.
    #[arg(long, default_value = "container")]
    driver: String,
}

/// `loom-bench bare-container` (run as a child of `nodelet`).
#[derive(Debug, clap::Args)]
pub struct BareArgs {
    /// A directory to work in.
    #[arg(long)]
    dir: PathBuf,
    /// The unpacked busybox root.
    #[arg(long)]
    rootfs: PathBuf,
    /// Containers to create, one after another.
    #[arg(long)]
    count: usize,
}

/// Bare libcontainer: create, start, wait, delete `count` containers running
/// `true` from `rootfs`, printing each create → exit time in microseconds.
/// Single-threaded, before any runtime exists (libcontainer changes the working
/// directory).
pub fn bare_container(args: BareArgs) -> anyhow::Result<()> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    use oci_spec::runtime::Spec;

    let bundle = args.dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let mut spec = serde_json::to_value(Spec::default())?;
    spec["root"] = json!({"path": args.rootfs, "readonly": true});
    spec["process"]["args"] = json!(["true"]);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    spec["linux"]["cgroupsPath"] = json!("/loom-bench/bare");
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let root = args.dir.join("state");
    let mut micros = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let started = Instant::now();
        let mut container = ContainerBuilder::new(format!("bare-{i}"), SyscallType::Linux)
            .with_root_path(&root)?
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .context("libcontainer build")?;
        container.start().context("libcontainer start")?;
        let pid = container.pid().context("no pid")?.as_raw();
        let mut status = 0;
        // SAFETY: waitpid on the container's init, our child.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
        }
        micros.push(started.elapsed().as_micros() as u64);
        container.delete(true).context("libcontainer delete")?;
    }
    println!("{}", serde_json::to_string(&micros)?);
    Ok(())
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new(3).context("histogram")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs the benchmark.
pub async fn run(args: NodeletArgs) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the nodelet benchmark runs containers: run it as root");
    }
    let loom = loom_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("loom-bench-nodelet-")
        .tempdir()?;
    let state = dir.path().join("node");
    let layout = dir.path().join("busybox");
    nodelet::image::busybox_layout(&layout, Path::new("/bin/busybox"), "latest")?;
    let images = nodelet::image::ImageStore::new(&state.join("images"));
    images.import(&layout, Some("busybox"))?;
    let rootfs = images.resolve("busybox")?.rootfs;

    // The baseline: bare libcontainer, in a child process.
    let bench = std::env::current_exe()?;
    let output = Command::new(&bench)
        .args(["bare-container", "--count", &args.tasks.to_string()])
        .arg("--dir")
        .arg(dir.path().join("bare"))
        .arg("--rootfs")
        .arg(&rootfs)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the bare libcontainer baseline")?;
    if !output.status.success() {
        bail!("the bare libcontainer baseline failed");
    }
    let bare_micros: Vec<u64> = serde_json::from_slice(&output.stdout)?;
    let mut bare = histogram()?;
    for m in bare_micros {
        bare.record(m)?;
    }
    nodelet::cgroup::remove_tree("/loom-bench");

    let server = ServerProcess::start(None).await?;
    let name = "bench-node";
    let log = std::fs::File::create(dir.path().join("nodelet.log"))?;
    let child = Command::new(&loom)
        .arg("nodelet")
        .args(
            server
                .access
                .component_args(&Component::Node(name.to_owned()))?,
        )
        .args(["--name", name, "--cgroup-parent", "loom-bench"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--stop-tasks-on-exit")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the nodelet")?;
    let nodelet = Children(vec![child]);
    // Nodes are the administrator's to read; tasks the bench user's.
    let nodes: Api<api_types::Node> = Api::all(server.access.admin()?);
    let client = server.access.client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.get_opt(name).await?.is_some_and(|n| n.is_ready()) {
        if Instant::now() > deadline {
            bail!("the nodelet did not register within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    let informer = Informer::start(tasks.clone(), watcher::Config::default());
    let mut changes = informer.subscribe();
    informer.store().wait_ready().await;
    let mut running = histogram()?;
    let mut completed = histogram()?;
    let began = Instant::now();
    for i in 0..args.tasks {
        let task_name = format!("t-{i}");
        let task: Task = serde_json::from_value(json!({
            "apiVersion": "loom.dev/v1", "kind": "Task",
            "metadata": {"name": task_name},
            "spec": {"image": "busybox", "driver": args.driver, "command": ["true"], "nodeName": name}
        }))?;
        let bound = Utc::now();
        let bound_at = Instant::now();
        tasks.create(&PostParams::default(), &task).await?;
        let key = ObjectKey::new("default", &task_name);
        let done = loop {
            if let Some(task) = informer.store().get(&key)
                && task.status.as_ref().is_some_and(|s| s.phase.is_terminal())
            {
                break task;
            }
            match tokio::time::timeout(Duration::from_secs(30), changes.recv()).await {
                Ok(Ok(Change::Applied(_) | Change::Deleted(_))) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(e)) => bail!("the watch ended: {e}"),
                Err(_) => bail!("task {task_name} did not finish within 30 s"),
            }
        };
        let elapsed = bound_at.elapsed();
        let status = done.status.clone().unwrap_or_default();
        if status.phase != TaskPhase::Completed {
            bail!(
                "task {task_name} ended {} ({}): {}",
                status.phase,
                status.reason,
                status.message
            );
        }
        let start = status.start_time.context("no start time")?;
        let to_running = (start - bound).to_std().unwrap_or_default();
        running.record(to_running.as_micros() as u64)?;
        completed.record(elapsed.as_micros() as u64)?;
    }
    let total = began.elapsed();
    informer.stop();
    drop(nodelet);
    nodelet::cgroup::remove_tree("/loom-bench");

    println!(
        "nodelet ({} driver): {} tasks one after another in {:.1} s",
        args.driver,
        args.tasks,
        total.as_secs_f64()
    );
    println!(
        "{:<38} {:>9} {:>9} {:>12}",
        "", "p50 ms", "p99 ms", "p50 vs bare"
    );
    let row = |label: &str, h: &Histogram<u64>| {
        println!(
            "{label:<38} {:>9.2} {:>9.2} {:>11.2}x",
            ms(h, 0.5),
            ms(h, 0.99),
            ms(h, 0.5) / ms(&bare, 0.5)
        );
    };
    row("bare libcontainer create -> exit", &bare);
    row("bound -> process running", &running);
    row("bound -> Completed status seen", &completed);
    println!("goal: bound -> running p50 <= 4x bare create -> exit");
    Ok(())
}
