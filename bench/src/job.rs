//! `loom-bench job`: one Job of many exec-driver `true` tasks through the whole
//! system — a real `loom apiserver`, `loom controllers`, `loom scheduler` and
//! several `loom nodelet` processes — from submit to the Job's Completed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use api_types::{Job, Node};
use client::{Api, PostParams};
use serde_json::json;

use crate::access::Component;
use crate::api::{ServerProcess, loom_binary};

/// `loom-bench job`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// Tasks in the job.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Nodelets.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Tasks each node runs at once.
    #[arg(long, default_value_t = 110)]
    max_tasks: u32,
    /// The tasks' driver: `exec` (confined: its own namespaces over the host's
    /// root, an unprivileged uid) or `raw` (an unconfined host process; the
    /// nodelets then run with --allow-raw-exec).
    #[arg(long, default_value = "exec", value_parser = ["exec", "raw"])]
    driver: String,
}

/// Child processes stopped when dropped: SIGTERM (a nodelet then stops its
/// tasks), SIGKILL after 30 s.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &self.0 {
            // SAFETY: kill(2) of our own children.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for child in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(loom: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    Command::new(loom)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start loom {}", args.join(" ")))
}

/// Runs the benchmark.
pub async fn run(args: JobArgs) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the job benchmark runs nodelets: run it as root");
    }
    let loom = loom_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("loom-bench-job-")
        .tempdir()?;
    let server = ServerProcess::start(None).await?;
    let mut children = Children(Vec::new());
    for (part, component) in [
        ("controllers", Component::Controllers),
        ("scheduler", Component::Scheduler),
    ] {
        let mut args = vec![part.to_owned()];
        args.extend(server.access.component_args(&component)?);
        children.0.push(spawn(
            &loom,
            &args,
            &dir.path().join(format!("{part}.log")),
        )?);
    }
    for i in 0..args.nodes {
        let name = format!("bench-{i}");
        let state = dir.path().join(&name);
        let mut nodelet_args: Vec<String> = vec!["nodelet".into()];
        nodelet_args.extend(
            server
                .access
                .component_args(&Component::Node(name.clone()))?,
        );
        nodelet_args.extend([
            "--name".into(),
            name.clone(),
            "--state-dir".into(),
            state.display().to_string(),
            "--cgroup-parent".into(),
            format!("loom-bench-job/{name}"),
            "--max-tasks".into(),
            args.max_tasks.to_string(),
            "--stop-tasks-on-exit".into(),
        ]);
        if args.driver == "raw" {
            nodelet_args.push("--allow-raw-exec".into());
        }
        children.0.push(spawn(
            &loom,
            &nodelet_args,
            &dir.path().join(format!("{name}.log")),
        )?);
    }
    // Nodes are the administrator's to read; the job is the bench user's.
    let nodes: Api<Node> = Api::all(server.access.admin()?);
    let client = server.access.client()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|n| n.is_ready())
            .count();
        if ready == args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {ready} of {} nodelets registered within 60 s",
                args.nodes
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": args.tasks,
            "parallelism": args.tasks,
            // The memory each `true` asks for: the nodes' capacity, not the
            // cluster's default task memory, keeps them from running at once.
            "template": {"spec": {"driver": args.driver, "command": ["true"],
                                  "resources": {"memory": "64Mi"}}}
        }
    }))?;
    let submitted = Instant::now();
    jobs.create(&PostParams::default(), &job).await?;
    let mut last_report = Instant::now();
    let done = loop {
        let job = jobs.get("bench").await?;
        let status = job.status.clone().unwrap_or_default();
        let phase = serde_json::to_value(&status)?["phase"].clone();
        if phase == "Completed" || phase == "Failed" || phase == "Killed" {
            break (job, phase);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:>5.0} s: {}",
                submitted.elapsed().as_secs_f64(),
                serde_json::to_string(&status)?
            );
            last_report = Instant::now();
        }
        if submitted.elapsed() > Duration::from_secs(1800) {
            bail!("the job did not finish within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = submitted.elapsed();
    let (job, phase) = done;
    if phase != "Completed" {
        bail!(
            "the job ended {phase}: {}",
            serde_json::to_string(&job.status)?
        );
    }
    println!(
        "job of {} {} tasks (`true`) on {} nodelets: submit -> Completed in {:.1} s ({:.0} tasks/s); goal <= 60 s",
        args.tasks,
        args.driver,
        args.nodes,
        elapsed.as_secs_f64(),
        args.tasks as f64 / elapsed.as_secs_f64()
    );
    drop(children);
    nodelet::cgroup::remove_tree("/loom-bench-job");
    Ok(())
}
