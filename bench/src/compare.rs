//! `loom-bench compare`: this build against an earlier one in the same run.
//! Each round runs a benchmark once with each build's `loom-bench` (so each uses
//! its own `loom` and `loom-shim`), the order alternating between rounds, and
//! the result is the median of each side and their ratio: what a change costs,
//! with the machine's drift shared by both sides.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// `loom-bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The directory holding the earlier build's `loom-bench`, `loom` and `loom-shim`.
    #[arg(long)]
    baseline: PathBuf,
    /// Run this `loom-bench` for both sides, the baseline's `loom` given it by
    /// `LOOM_BENCH_LOOM` (secured or not, each `loom` is run as it can be), so
    /// the clients are the same code; the default runs the baseline's own
    /// `loom-bench`. Not for `schedule`, whose scheduler is `loom-bench`'s.
    #[arg(long)]
    same_bench: bool,
    /// Rounds (each runs every benchmark once with each build).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Creates a round of the API benchmark.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent clients of the API benchmark.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Watchers a round of the watch benchmark.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Tasks created a round of the watch benchmark.
    #[arg(long, default_value_t = 2_000)]
    watch_creates: usize,
    /// Creates per second of the watch benchmark.
    #[arg(long, default_value_t = 200)]
    watch_rate: u64,
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
    /// The ratio each figure is held to (after as good as before = 1).
    #[arg(long, default_value_t = 0.95)]
    goal: f64,
    /// Only these benchmarks: `api` (create throughput and watch fan-out),
    /// `watch` (fan-out alone), `schedule`, `nodelet` (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// The watch benchmark's line of delivery lags.
const LAG_LINE: &str = "delivery lag (create acknowledged -> event read):";

/// One figure read from a benchmark's output.
struct Reading {
    name: String,
    /// The output line starting with this, and the whitespace-separated column
    /// after it.
    line: String,
    column: usize,
    /// Higher is better (a rate) or lower is better (a latency).
    higher_is_better: bool,
    unit: &'static str,
}

impl Reading {
    fn new(name: impl Into<String>, line: impl Into<String>, column: usize) -> Self {
        Reading {
            name: name.into(),
            line: line.into(),
            column,
            higher_is_better: true,
            unit: "",
        }
    }

    fn rate(self) -> Self {
        Reading { unit: "/s", ..self }
    }

    fn ms(self) -> Self {
        Reading {
            unit: " ms",
            higher_is_better: false,
            ..self
        }
    }
}

/// One benchmark run: its arguments and the figures read from its output.
struct Figure {
    /// The `--only` names selecting it.
    keys: &'static [&'static str],
    args: Vec<String>,
    readings: Vec<Reading>,
}

fn read_figure(output: &str, reading: &Reading) -> anyhow::Result<f64> {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(&reading.line))
        .with_context(|| format!("no line {:?} in:\n{output}", reading.line))?;
    let rest = line.trim_start()[reading.line.len()..].trim();
    let value = rest
        .split_whitespace()
        .nth(reading.column)
        .with_context(|| format!("no column {} in {line:?}", reading.column))?;
    value
        .trim_end_matches([',', 'x'])
        .parse()
        .with_context(|| format!("{value:?} in {line:?} is not a number"))
}

/// One build: the `loom-bench` to run, and the `loom` it is to use if not
/// its own.
struct Side {
    bench: PathBuf,
    loom: Option<PathBuf>,
}

fn run_once(side: &Side, figure: &Figure) -> anyhow::Result<Vec<f64>> {
    let mut command = Command::new(&side.bench);
    command.args(&figure.args);
    if let Some(loom) = &side.loom {
        command.env("LOOM_BENCH_LOOM", loom);
    }
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", side.bench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} {} failed:\n{stdout}",
            side.bench.display(),
            figure.args.join(" ")
        );
    }
    figure
        .readings
        .iter()
        .map(|r| read_figure(&stdout, r))
        .collect()
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

/// The benchmarks and what is read from each.
fn figures(args: &CompareArgs) -> Vec<Figure> {
    let conc = args.concurrency;
    let mut figures = vec![
        Figure {
            keys: &["api"],
            args: vec![
                "api".into(),
                "--backend".into(),
                "embedded".into(),
                "--creates".into(),
                args.creates.to_string(),
                "--concurrency".into(),
                conc.to_string(),
            ],
            readings: vec![
                Reading::new(
                    format!("API creates/s (embedded, {conc} clients)"),
                    "HTTP create (embedded)",
                    2,
                )
                .rate(),
                Reading::new(
                    format!("API create p50 ({conc} clients)"),
                    "HTTP create (embedded)",
                    3,
                )
                .ms(),
                Reading::new(
                    format!("API create p99 ({conc} clients)"),
                    "HTTP create (embedded)",
                    4,
                )
                .ms(),
            ],
        },
        Figure {
            // The API's figure is create throughput and watch fan-out.
            keys: &["api", "watch"],
            args: vec![
                "watch".into(),
                "--watchers".into(),
                args.watchers.to_string(),
                "--creates".into(),
                args.watch_creates.to_string(),
                "--rate".into(),
                args.watch_rate.to_string(),
            ],
            readings: vec![
                // `watchers: 1000 of 1000 received all 2000 events, ...`
                Reading::new(
                    format!("watchers of {} given every event", args.watchers),
                    "watchers:",
                    0,
                ),
                // `delivery lag (...): p50 16.4 ms, p99 54.9 ms, max 149.9 ms`
                Reading::new(
                    format!("watch lag p50 ({} watchers)", args.watchers),
                    LAG_LINE,
                    1,
                )
                .ms(),
                Reading::new(
                    format!("watch lag p99 ({} watchers)", args.watchers),
                    LAG_LINE,
                    4,
                )
                .ms(),
                Reading::new("create p99 while watched", "HTTP create (watched)", 4).ms(),
            ],
        },
        Figure {
            keys: &["schedule"],
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
            readings: vec![
                Reading::new(
                    "scheduler tasks bound/s (embedded)",
                    format!("{} tasks bound in", args.schedule_tasks),
                    2,
                )
                .rate(),
            ],
        },
    ];
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        figures.push(Figure {
            keys: &["nodelet"],
            args: vec!["nodelet".into(), "--tasks".into(), args.tasks.to_string()],
            readings: vec![
                Reading::new(
                    "task bound -> running p50 (container)",
                    "bound -> process running",
                    0,
                )
                .ms(),
            ],
        });
    } else {
        eprintln!("not root: the nodelet figure is left out");
    }
    figures
        .retain(|f| args.only.is_empty() || args.only.iter().any(|o| f.keys.contains(&o.as_str())));
    figures
}

/// Runs the comparison and prints its table.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let current = Side {
        bench: std::env::current_exe()?,
        loom: None,
    };
    let baseline_bench = args.baseline.join("loom-bench");
    let baseline_loom = args.baseline.join("loom");
    let baseline = if args.same_bench {
        anyhow::ensure!(
            baseline_loom.is_file(),
            "--baseline {}: no loom there",
            args.baseline.display()
        );
        Side {
            bench: current.bench.clone(),
            loom: Some(baseline_loom.clone()),
        }
    } else {
        anyhow::ensure!(
            baseline_bench.is_file(),
            "--baseline {}: no loom-bench there (with only a loom, use --same-bench)",
            args.baseline.display()
        );
        Side {
            bench: baseline_bench,
            loom: None,
        }
    };
    let figures = figures(&args);
    if args.same_bench && figures.iter().any(|f| f.keys.contains(&"schedule")) {
        bail!(
            "--same-bench would measure this build's scheduler on both sides: leave out schedule (--only api,watch,nodelet)"
        );
    }
    let this_loom = crate::api::loom_binary()?;
    println!("before: {}", crate::access::describe(&baseline_loom));
    println!("after:  {}", crate::access::describe(&this_loom));
    println!(
        "{:<40} {:>12} {:>12} {:>8}   (medians of {} interleaved rounds)",
        "figure", "before", "after", "ratio", args.rounds
    );
    for figure in &figures {
        let mut before = vec![Vec::new(); figure.readings.len()];
        let mut after = vec![Vec::new(); figure.readings.len()];
        for round in 0..args.rounds {
            let order: [(&Side, bool); 2] = if round % 2 == 0 {
                [(&baseline, true), (&current, false)]
            } else {
                [(&current, false), (&baseline, true)]
            };
            for (side, is_baseline) in order {
                std::thread::sleep(std::time::Duration::from_secs(args.rest_seconds));
                let values = run_once(side, figure)?;
                eprintln!(
                    "{} round {round}: {} {values:?}",
                    figure.args[0],
                    if is_baseline { "before" } else { "after" }
                );
                let into = if is_baseline { &mut before } else { &mut after };
                for (i, value) in values.into_iter().enumerate() {
                    into[i].push(value);
                }
            }
        }
        for (i, reading) in figure.readings.iter().enumerate() {
            let (b, a) = (median(&mut before[i]), median(&mut after[i]));
            // The ratio is "after as good as before": above 1 is better.
            let ratio = if reading.higher_is_better {
                a / b
            } else {
                b / a
            };
            println!(
                "{:<40} {:>10.1}{:<3} {:>10.1}{:<3} {:>7.3}x",
                reading.name, b, reading.unit, a, reading.unit, ratio
            );
        }
    }
    println!(
        "ratio: after as good as before = 1.00x; goal >= {:.2}x",
        args.goal
    );
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
        let figure = Reading::new("api", "HTTP create (embedded)", 2).rate();
        assert_eq!(read_figure(api, &figure).unwrap(), 9346.0);
        let p99 = Reading::new("p99", "HTTP create (embedded)", 4).ms();
        assert_eq!(read_figure(api, &p99).unwrap(), 33.22);
        let schedule = "end to end (embedded, exclusive, no claims, 64 binds in flight): ...\n  \
                        10000 tasks bound in 4.87 s: 2053 tasks/s end to end (first bind after 1.51 s)\n";
        let figure = Reading::new("schedule", "10000 tasks bound in", 2);
        assert_eq!(read_figure(schedule, &figure).unwrap(), 2053.0);
        let nodelet = "                                          p50 ms    p99 ms  p50 vs bare\n\
                       bound -> process running                   29.12     52.00        1.54x\n";
        let figure = Reading::new("nodelet", "bound -> process running", 0).ms();
        assert_eq!(read_figure(nodelet, &figure).unwrap(), 29.12);
        assert!(read_figure("nothing", &figure).is_err());
        let watch = "watchers: 1000 of 1000 received all 2000 events, 0 cut off by the server (2000000 events delivered in 10.2 s)\n\
                     delivery lag (create acknowledged -> event read): p50 16.4 ms, p99 54.9 ms, max 149.9 ms\n";
        assert_eq!(
            read_figure(watch, &Reading::new("w", "watchers:", 0)).unwrap(),
            1000.0
        );
        let lag = |column| read_figure(watch, &Reading::new("lag", LAG_LINE, column)).unwrap();
        assert_eq!((lag(1), lag(4)), (16.4, 54.9));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
