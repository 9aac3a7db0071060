//! `loom-bench compare`: this build against an earlier one in the same run.
//! Each round runs a benchmark once with each build's `loom-bench` (so each uses
//! its own `loom` and `loom-shim`), the order alternating between rounds, and
//! the result is the median of each side and their ratio: what a change costs,
//! with the machine's drift shared by both sides.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// `loom-bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The directory holding the earlier build's `loom-bench`, `loom` and `loom-shim`.
    #[arg(long)]
    baseline: PathBuf,
    /// Rounds (each runs every benchmark once with each build).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Creates a round of the API benchmark.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Tasks a round of the nodelet benchmark (root).
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Simulated nodes a round of the scheduler benchmark.
    #[arg(long, default_value_t = 1_000)]
    schedule_nodes: usize,
    /// Tasks a round of the scheduler benchmark binds.
    #[arg(long, default_value_t = 10_000)]
    schedule_tasks: usize,
    /// Seconds of rest before each run. On a machine whose CPU slows under
    /// sustained load (a VM's credits, heat), every run then starts alike.
    #[arg(long, default_value_t = 0)]
    rest_seconds: u64,
    /// Only these figures: `api`, `schedule`, `nodelet` (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One measured figure: how to run it and how to read it from the output.
struct Figure {
    key: &'static str,
    name: &'static str,
    args: Vec<String>,
    /// The output line starting with this, and the whitespace-separated column.
    line: String,
    column: usize,
    /// Higher is better (a rate) or lower is better (a latency).
    higher_is_better: bool,
    unit: &'static str,
}

fn read_figure(output: &str, figure: &Figure) -> anyhow::Result<f64> {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(&figure.line))
        .with_context(|| format!("no line {:?} in:\n{output}", figure.line))?;
    let rest = line.trim_start()[figure.line.len()..].trim();
    let value = rest
        .split_whitespace()
        .nth(figure.column)
        .with_context(|| format!("no column {} in {line:?}", figure.column))?;
    value
        .trim_end_matches('x')
        .parse()
        .with_context(|| format!("{value:?} in {line:?} is not a number"))
}

fn run_once(bench: &Path, figure: &Figure) -> anyhow::Result<f64> {
    let output = Command::new(bench)
        .args(&figure.args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} {} failed:\n{stdout}",
            bench.display(),
            figure.args.join(" ")
        );
    }
    read_figure(&stdout, figure)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Runs the comparison and prints its table.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let current = std::env::current_exe()?;
    let baseline = args.baseline.join("loom-bench");
    anyhow::ensure!(
        baseline.is_file(),
        "--baseline {}: no loom-bench there",
        args.baseline.display()
    );
    let mut figures = vec![Figure {
        key: "api",
        name: "API creates/s (embedded, 64 clients)",
        args: vec![
            "api".into(),
            "--backend".into(),
            "embedded".into(),
            "--creates".into(),
            args.creates.to_string(),
        ],
        line: "HTTP create (embedded)".into(),
        column: 2,
        higher_is_better: true,
        unit: "/s",
    }];
    figures.push(Figure {
        key: "schedule",
        name: "scheduler tasks bound/s (embedded)",
        args: vec![
            "schedule".into(),
            "--backend".into(),
            "embedded".into(),
            "--exclusive-only".into(),
            "--nodes".into(),
            args.schedule_nodes.to_string(),
            "--tasks".into(),
            args.schedule_tasks.to_string(),
        ],
        // `10000 tasks bound in 4.87 s: 2053 tasks/s end to end (...)`
        line: format!("{} tasks bound in", args.schedule_tasks),
        column: 2,
        higher_is_better: true,
        unit: "/s",
    });
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        figures.push(Figure {
            key: "nodelet",
            name: "task bound -> running p50 (container)",
            args: vec!["nodelet".into(), "--tasks".into(), args.tasks.to_string()],
            line: "bound -> process running".into(),
            column: 0,
            higher_is_better: false,
            unit: " ms",
        });
    } else {
        eprintln!("not root: the nodelet figure is left out");
    }
    figures.retain(|f| args.only.is_empty() || args.only.iter().any(|o| o == f.key));
    println!(
        "{:<40} {:>12} {:>12} {:>8}   (medians of {} interleaved rounds)",
        "figure", "before", "after", "ratio", args.rounds
    );
    for figure in &figures {
        let mut before = Vec::new();
        let mut after = Vec::new();
        for round in 0..args.rounds {
            let order: [(&Path, bool); 2] = if round % 2 == 0 {
                [(&baseline, true), (&current, false)]
            } else {
                [(&current, false), (&baseline, true)]
            };
            for (bench, is_baseline) in order {
                std::thread::sleep(std::time::Duration::from_secs(args.rest_seconds));
                let value = run_once(bench, figure)?;
                eprintln!(
                    "{} round {round}: {} {value}",
                    figure.name,
                    if is_baseline { "before" } else { "after" }
                );
                if is_baseline {
                    before.push(value);
                } else {
                    after.push(value);
                }
            }
        }
        let (b, a) = (median(&mut before), median(&mut after));
        // The ratio is "after as good as before": above 1 is better.
        let ratio = if figure.higher_is_better {
            a / b
        } else {
            b / a
        };
        println!(
            "{:<40} {:>10.1}{:<2} {:>10.1}{:<2} {:>7.3}x",
            figure.name, b, figure.unit, a, figure.unit, ratio
        );
    }
    println!("ratio: after as good as before = 1.00x; goal >= 0.95x");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn figures_are_read_from_the_benchmarks_tables() {
        let api = "backend                 conc  creates    per sec   p50 ms   p99 ms\n\
                   HTTP create (embedded)    64     5000       9346     5.36    33.22\n";
        let figure = Figure {
            key: "api",
            name: "api",
            args: Vec::new(),
            line: "HTTP create (embedded)".into(),
            column: 2,
            higher_is_better: true,
            unit: "/s",
        };
        assert_eq!(read_figure(api, &figure).unwrap(), 9346.0);
        let schedule = "end to end (embedded, exclusive, no claims, 64 binds in flight): ...\n  \
                        10000 tasks bound in 4.87 s: 2053 tasks/s end to end (first bind after 1.51 s)\n";
        let figure = Figure {
            line: "10000 tasks bound in".into(),
            ..figure
        };
        assert_eq!(read_figure(schedule, &figure).unwrap(), 2053.0);
        let nodelet = "                                          p50 ms    p99 ms  p50 vs bare\n\
                       bound -> process running                   29.12     52.00        1.54x\n";
        let figure = Figure {
            line: "bound -> process running".into(),
            column: 0,
            ..figure
        };
        assert_eq!(read_figure(nodelet, &figure).unwrap(), 29.12);
        assert!(read_figure("nothing", &figure).is_err());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
