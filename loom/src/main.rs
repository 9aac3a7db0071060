//! The all-in-one `loom` binary.
//!
//! `loom up` opens the embedded store in its data directory and keeps it open
//! (compacting history) until Ctrl-C or SIGTERM; the API server, controllers,
//! scheduler and nodelet join it as they are built.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use apiserver::store::{EmbeddedOptions, EmbeddedStore};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "loom",
    version,
    about = "Loom: a declarative control plane for containers and batch jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single-node Loom on the embedded store.
    Up(UpArgs),
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Where Loom keeps its state.
    #[arg(long, env = "LOOM_DATA_DIR", default_value = "/var/lib/loom")]
    data_dir: PathBuf,
    /// Report the store's health and exit instead of running.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loom: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loom: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("loom.db");
    let store = EmbeddedStore::open(EmbeddedOptions::new(&path))
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    let health = store.health().await.context("cannot read the store")?;
    println!(
        "store {}: healthy, revision {}, {} keys, {} rows of history (compacted to {}), {} KiB on disk",
        path.display(),
        health.revision,
        health.keys,
        health.history_rows,
        health.compacted,
        (health.file_bytes + health.wal_bytes) / 1024
    );
    if !args.check {
        tracing::info!(data_dir = %args.data_dir.display(), "loom is up; Ctrl-C stops it");
        shutdown_signal().await?;
        tracing::info!("shutting down");
    }
    store.close().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
