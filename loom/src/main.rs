//! The all-in-one `loom` binary.
//!
//! `loom up` serves the API over the embedded store in its data directory until
//! Ctrl-C or SIGTERM; the controllers, scheduler and nodelet join it as they are
//! built. `loom apiserver` runs the API server alone, over SQLite or etcd.

use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use apiserver::StoreUrl;
use apiserver::store::{EmbeddedOptions, EmbeddedStore, Store};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// The API server allocates a small JSON tree per request; glibc's malloc took a
// fifth of its CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the API server.
    Apiserver(ApiserverArgs),
}

#[derive(Debug, clap::Args)]
struct ApiserverArgs {
    /// Address to serve the API on.
    #[arg(long, env = "LOOM_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// The store: sqlite:PATH or etcd://HOST:PORT[,HOST:PORT].
    #[arg(
        long,
        env = "LOOM_STORE",
        default_value = "sqlite:/var/lib/loom/loom.db"
    )]
    store: StoreUrl,
    /// Key prefix in etcd.
    #[arg(long, env = "LOOM_STORE_PREFIX", default_value = "/loom/")]
    store_prefix: String,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Where Loom keeps its state.
    #[arg(long, env = "LOOM_DATA_DIR", default_value = "/var/lib/loom")]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, env = "LOOM_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            Command::Apiserver(args) => apiserver_command(args).await,
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
    if args.check {
        store.close().await;
        return Ok(());
    }
    let store: Arc<dyn Store> = Arc::new(store);
    serve(store, args.listen).await
}

async fn apiserver_command(args: ApiserverArgs) -> anyhow::Result<()> {
    let store = apiserver::open_store(&args.store, &args.store_prefix)
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot open the store")?;
    serve(store, args.listen).await
}

/// Serves the API until Ctrl-C or SIGTERM.
async fn serve(store: Arc<dyn Store>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("Loom API server at http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(apiserver::run(
        store,
        listener,
        apiserver::Config::default(),
        shutdown.clone(),
    ));
    shutdown_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    server
        .await
        .context("the API server panicked")?
        .context("the API server failed")?;
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
