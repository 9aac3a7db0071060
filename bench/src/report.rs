//! `loom-bench report`: runs every benchmark (each as its own child process, so
//! none disturbs another's memory figures), prints and keeps each one's table,
//! and writes them as JSON and Markdown (`docs/perf.json`, `docs/perf.md`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::json;

/// `loom-bench report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Where the Markdown and JSON go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Only these benchmarks (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Each benchmark: its subcommand and arguments, and the goal it is held to.
const BENCHMARKS: &[(&str, &[&str], &str)] = &[
    (
        "store",
        &["store"],
        "etcd backend >= 0.9x raw etcd puts at 64 writers",
    ),
    ("api", &["api"], "API over etcd >= 0.6x raw etcd puts"),
    (
        "watch",
        &["watch", "--rate", "200"],
        "1,000 watchers get every event; p99 lag small",
    ),
    (
        "memory",
        &["memory"],
        "100,000 tasks listed in bounded memory",
    ),
    (
        "reflector",
        &["reflector"],
        "a cached object costs a few KB",
    ),
    (
        "controller",
        &["controller"],
        "reconciles are never the bottleneck",
    ),
    (
        "schedule",
        &["schedule", "--backend", "all"],
        ">= 2,000 tasks bound/s end to end on the embedded store (5,000 nodes, 50,000 tasks); also with etcd",
    ),
    (
        "nodelet",
        &["nodelet"],
        "bound -> running p50 <= 4x bare libcontainer; p50 <= 50 ms, p99 <= 200 ms",
    ),
    (
        "job",
        &["job", "--driver", "raw"],
        "a 10,000-task job of host processes (raw driver) on 4 nodelets completes in <= 60 s",
    ),
    (
        "job-exec",
        &["job", "--driver", "exec"],
        "the same job with the confined exec driver: measured, no goal yet",
    ),
];

/// Runs the benchmarks and writes the report.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let bench = std::env::current_exe()?;
    let mut results = Vec::new();
    let mut markdown = String::from(
        "# Loom performance report\n\nRegenerate with `cargo build --release -p loom-bench -p loom-bin -p loom-nodelet && \
         /var/tmp/loom-target/release/loom-bench report` (as root, with etcd installed). \
         Each figure is printed beside the baseline measured in the same run and its goal. \
         Machine: 2 cores; figures vary by about 20 % between runs.\n\n",
    );
    for (name, bench_args, goal) in BENCHMARKS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name}: loom-bench {}", bench_args.join(" "));
        let started = Instant::now();
        let output = Command::new(&bench)
            .args(*bench_args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run loom-bench {name}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{stdout}");
        let ok = output.status.success();
        results.push(json!({
            "name": name,
            "command": format!("loom-bench {}", bench_args.join(" ")),
            "goal": goal,
            "ok": ok,
            "seconds": seconds,
            "output": stdout,
        }));
        markdown.push_str(&format!(
            "## {name}\n\n`loom-bench {}` ({seconds:.0} s{})\n\nGoal: {goal}\n\n```\n{}\n```\n\n",
            bench_args.join(" "),
            if ok { "" } else { ", FAILED" },
            stdout.trim_end()
        ));
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("perf.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    std::fs::write(args.out.join("perf.md"), markdown)?;
    eprintln!(
        "wrote {} and {}",
        args.out.join("perf.md").display(),
        args.out.join("perf.json").display()
    );
    Ok(())
}
