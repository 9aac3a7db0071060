//! loomctl, the command-line interface to a Loom cluster: `apply`, `get`,
//! `delete`, `config`, `version`, `completion`.
//!
//! Exit codes: 0 success; 1 the command failed (an API error, a bad manifest,
//! an unreachable server); 2 the command line itself is wrong.

mod apply;
mod config_cmd;
mod delete;
mod get;
mod kinds;
mod manifest;

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
    }
}

fn reqwest_get() -> client::client::Method {
    client::client::Method::GET
}
