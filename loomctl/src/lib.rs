//! loomctl, the command-line interface to a Loom cluster: `apply`, `diff`,
//! `get`, `describe`, `delete`, `wait`, `kill`, `events`, `cordon`, `uncordon`,
//! `config`, `version`, `completion`.
//!
//! Exit codes: 0 success; 1 the command failed (an API error, a bad manifest,
//! an unreachable server); 2 the command line itself is wrong.

mod apply;
mod config_cmd;
mod delete;
mod duration;
mod get;
mod kinds;
mod manifest;
mod more;
mod nodes;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use client::{Client, Config};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "loomctl",
    version,
    about = "Drive a Loom cluster: apply manifests, see and change objects"
)]
pub struct Cli {
    /// The API server (overrides the config file).
    #[arg(long, global = true, env = "LOOM_SERVER")]
    server: Option<String>,
    /// The namespace (overrides the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update objects from manifests (server-side apply).
    Apply(apply::ApplyArgs),
    /// List or show objects.
    Get(get::GetArgs),
    /// Delete objects.
    Delete(delete::DeleteArgs),
    /// Show an object in detail, with its recent events.
    Describe {
        /// KIND NAME or KIND/NAME.
        #[arg(required = true)]
        args: Vec<String>,
    },
    /// Wait until an object reaches a phase or condition, or is deleted.
    Wait {
        /// KIND NAME or KIND/NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// phase=PHASE, condition=TYPE[=STATUS], or delete.
        #[arg(long = "for")]
        condition: String,
        /// Give up after this long (exit 1): 30s, 2m, 1h, 1m30s; a bare number is seconds.
        #[arg(long, default_value = "30s", value_parser = duration::parse)]
        timeout: std::time::Duration,
    },
    /// Stop a job, keeping its record: `kill job/NAME`.
    Kill {
        /// job/NAME or job NAME.
        #[arg(required = true)]
        args: Vec<String>,
    },
    /// Mark a node unschedulable.
    Cordon {
        /// The node.
        node: String,
    },
    /// Mark a node schedulable again.
    Uncordon {
        /// The node.
        node: String,
    },
    /// Show what apply would change (exit 1 when something would).
    Diff {
        /// Manifest files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<std::path::PathBuf>,
        /// Read directories recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Recent events in the namespace.
    Events,
    /// A task's output: `logs TASK [-f] [--tail N]`.
    Logs {
        /// The task.
        task: String,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// What a kind or field is, from the server's schema: `explain job.spec.dependsOn`.
    Explain {
        /// KIND or KIND.field.path.
        target: String,
    },
    /// Follow a service's rollout: `rollout status service/NAME`.
    Rollout {
        /// `status`.
        #[arg(value_parser = ["status"])]
        action: String,
        /// service/NAME or service NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// Give up after this long (exit 1): 5m, 300s, 1h; a bare number is seconds.
        #[arg(long, default_value = "5m", value_parser = duration::parse)]
        timeout: std::time::Duration,
    },
    /// Machines: state, capacity, usage and tasks. Add one with
    /// `loom nodelet --server URL --name NAME`.
    Nodes,
    /// Add (`key=value:Effect`) or remove (`key-`) taints on a node.
    Taint {
        /// The node.
        node: String,
        /// Taints to add or remove.
        #[arg(required = true)]
        taints: Vec<String>,
    },
    /// Cordon a node and stop its tasks (their jobs and services replace them), waiting until it is empty.
    Drain {
        /// The node.
        node: String,
        /// Give up after this long (exit 1): 5m, 300s, 1h; a bare number is seconds.
        #[arg(long, default_value = "5m", value_parser = duration::parse)]
        timeout: std::time::Duration,
    },
    /// Show or change the config file (~/.loom/config or $LOOMCONFIG).
    Config(config_cmd::ConfigArgs),
    /// The client's and the server's versions.
    Version,
    /// A shell completion script.
    Completion {
        /// bash, zsh or fish.
        shell: clap_complete::Shell,
    },
}

/// What every command needs: a client and the namespace to use.
pub(crate) struct Context {
    pub client: Client,
    pub namespace: String,
}

fn context(cli: &Cli) -> anyhow::Result<Context> {
    let mut config = match &cli.server {
        Some(server) => Config::new(server),
        None => Config::infer().context("cannot read the config")?,
    };
    if let Some(namespace) = &cli.namespace {
        config.namespace = namespace.clone();
    }
    let namespace = config.namespace.clone();
    Ok(Context {
        client: Client::new(config)?,
        namespace,
    })
}

/// Runs a command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "loomctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(args) => config_cmd::run(args),
        Command::Version => {
            println!("Client Version: loomctl {}", env!("CARGO_PKG_VERSION"));
            let ctx = context(&cli)?;
            let version: serde_json::Value = ctx
                .client
                .request(reqwest_get(), "/version", None)
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the API server at {}",
                        ctx.client.config().server
                    )
                })?;
            println!(
                "Server Version: {}",
                version["gitVersion"].as_str().unwrap_or("unknown")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply(args) => apply::run(&context(&cli)?, args).await,
        Command::Get(args) => get::run(&context(&cli)?, args).await,
        Command::Delete(args) => delete::run(&context(&cli)?, args).await,
        Command::Describe { args } => more::describe(&context(&cli)?, args).await,
        Command::Wait {
            args,
            condition,
            timeout,
        } => more::wait(&context(&cli)?, args, condition, *timeout).await,
        Command::Kill { args } => more::kill(&context(&cli)?, args).await,
        Command::Cordon { node } => more::cordon(&context(&cli)?, node, true).await,
        Command::Uncordon { node } => more::cordon(&context(&cli)?, node, false).await,
        Command::Diff { files, recursive } => more::diff(&context(&cli)?, files, *recursive).await,
        Command::Explain { target } => more::explain(&context(&cli)?, target).await,
        Command::Rollout { args, timeout, .. } => {
            more::rollout_status(&context(&cli)?, args, *timeout).await
        }
        Command::Nodes => nodes::nodes(&context(&cli)?).await,
        Command::Taint { node, taints } => nodes::taint(&context(&cli)?, node, taints).await,
        Command::Drain { node, timeout } => nodes::drain(&context(&cli)?, node, *timeout).await,
        Command::Logs { task, follow, tail } => {
            more::logs(&context(&cli)?, task, *follow, *tail).await
        }
        Command::Events => {
            let args = get::GetArgs::events();
            get::run(&context(&cli)?, &args).await
        }
    }
}

fn reqwest_get() -> client::client::Method {
    client::client::Method::GET
}
