//! `loom-bench`: Loom's benchmarks, each reported beside the raw baseline measured in the same run.

mod access;
mod api;
mod compare;
mod job;
mod measure;
mod nodelet;
mod proxy;
mod report;
mod runtime;
mod schedule;
mod soak;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "loom-bench", about = "Loom's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates per second and latency of the store backends, beside raw etcd puts.
    Store(store::StoreArgs),
    /// Creates over HTTP through a real API server, beside raw etcd puts.
    Api(api::ApiArgs),
    /// Watch fan-out: many watchers while tasks are created; lag and server memory.
    Watch(api::WatchArgs),
    /// The API server's memory with many stored tasks, listed once.
    Memory(api::MemoryArgs),
    /// The client's reflector: memory and CPU per cached object and per event.
    Reflector(runtime::RuntimeArgs),
    /// The client's controller runtime: reconciles per second of a no-op controller.
    Controller(runtime::RuntimeArgs),
    /// The scheduler: tasks bound per second through a real API server over simulated
    /// nodes, and decisions per second in memory.
    Schedule(schedule::ScheduleArgs),
    /// The nodelet: task bound -> process running and -> Completed, beside bare
    /// libcontainer create -> exit.
    Nodelet(nodelet::NodeletArgs),
    /// Service routing: p99 through a Service's virtual address (nftables and
    /// the proxy) beside straight to an endpoint at a fixed rate, and the
    /// proxy's CPU per request (root).
    Proxy(proxy::ProxyArgs),
    /// Runs every benchmark and writes docs/perf.md and docs/perf.json.
    Report(report::ReportArgs),
    /// One Job of many exec tasks through every part, submit -> Completed.
    Job(job::JobArgs),
    /// A cluster of real processes under a workload while faults are
    /// injected; the recorded history checked, docs/reliability.md written.
    Soak(soak::SoakArgs),
    /// This build against an earlier one: API creates/s and task start latency,
    /// medians of interleaved rounds in one run.
    Compare(compare::CompareArgs),
    /// Bare libcontainer create -> exit (run as a child of `nodelet`).
    #[command(hide = true)]
    BareContainer(nodelet::BareArgs),
    /// The proxy's data plane alone (run as a child of `proxy`, so its CPU is its own).
    #[command(hide = true)]
    ProxyServer(proxy::ServerArgs),
    /// Labels every bench task once (run as a child of `reflector`, so its CPU is not counted).
    #[command(hide = true)]
    TouchTasks(runtime::TouchArgs),
}

/// Which store backend to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The embedded SQLite store.
    Embedded,
    /// etcd.
    Etcd,
    /// Both.
    All,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // The report runs each benchmark as a child process.
    if let Command::Report(args) = cli.command {
        return match report::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("loom-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Compare(args) = cli.command {
        return match compare::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("loom-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The load runs on threads of its own and the endpoints on a runtime of
    // their own: no runtime around them.
    if let Command::Proxy(args) = cli.command {
        return match proxy::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("loom-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // libcontainer forks and changes the working directory: no runtime, no threads.
    if let Command::BareContainer(args) = cli.command {
        return match nodelet::bare_container(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("loom-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loom-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Store(args) => store::run(args).await,
            Command::Api(args) => api::run_api(args).await,
            Command::Watch(args) => api::run_watch(args).await,
            Command::Memory(args) => api::run_memory(args).await,
            Command::Reflector(args) => runtime::run_reflector(args).await,
            Command::Controller(args) => runtime::run_controller(args).await,
            Command::Schedule(args) => schedule::run(args).await,
            Command::TouchTasks(args) => runtime::touch_tasks(args).await,
            Command::Nodelet(args) => nodelet::run(args).await,
            Command::Job(args) => job::run(args).await,
            Command::Soak(args) => soak::run(args).await,
            Command::ProxyServer(args) => proxy::serve(args).await,
            Command::BareContainer(_)
            | Command::Report(_)
            | Command::Compare(_)
            | Command::Proxy(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loom-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
