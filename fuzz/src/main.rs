//! loom-fuzz: replays a target's corpus, then mutates it for a while, saving
//! every failing input (`crash-HASH`) where `--save-crashes` says.
//!
//! `loom-fuzz --target image_layer --duration 3600 --save-crashes fuzz/corpus/image_layer`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "loom-fuzz", about = "Fuzz one of Loom's decoders")]
struct Cli {
    /// The target (`--list` names them); every target, one after the other, if absent.
    #[arg(long)]
    target: Option<String>,
    /// Seconds to mutate each target after replaying its corpus.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Where failing inputs are saved (the target's corpus directory keeps
    /// them as regression cases).
    #[arg(long)]
    save_crashes: Option<PathBuf>,
    /// Replays (and mutates) this directory instead of `fuzz/corpus/TARGET`.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// The random seed (default: the clock, printed).
    #[arg(long, env = "LOOM_FUZZ_SEED")]
    seed: Option<u64>,
    /// Lists the targets.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for target in loom_fuzz::all() {
            println!("{:16} {}", target.name, target.about);
        }
        return ExitCode::SUCCESS;
    }
    let targets = match &cli.target {
        Some(name) => match loom_fuzz::find(name) {
            Some(target) => vec![target],
            None => {
                eprintln!("no target {name:?}: see --list");
                return ExitCode::from(2);
            }
        },
        None => loom_fuzz::all(),
    };
    if !cli.duration.is_finite() || cli.duration < 0.0 {
        eprintln!("--duration must be a number of seconds");
        return ExitCode::from(2);
    }
    let seed = cli.seed.unwrap_or_else(loom_fuzz::seed_from_env);
    let mut failed = false;
    for target in targets {
        let options = loom_fuzz::RunOptions {
            duration: Duration::from_secs_f64(cli.duration),
            seed,
            save_crashes: cli.save_crashes.clone(),
            corpus: cli.corpus.clone(),
        };
        match loom_fuzz::run(&target, &options) {
            Ok(outcome) => {
                println!(
                    "{}: seed {seed}, {} corpus files, {} executions in {:.1} s ({:.0}/s), {} failures",
                    target.name,
                    outcome.replayed,
                    outcome.executions,
                    outcome.elapsed.as_secs_f64(),
                    outcome.rate(),
                    outcome.failures.len()
                );
                for failure in &outcome.failures {
                    println!("  {failure}");
                }
                failed |= !outcome.failures.is_empty();
            }
            Err(e) => {
                eprintln!("{}: cannot read its corpus: {e}", target.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
