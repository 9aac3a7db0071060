//! loomctl, the command-line interface to a Loom cluster: `apply`, `diff`,
//! `get`, `describe`, `delete`, `wait`, `kill`, `scale`, `events`, `cordon`, `uncordon`,
//! `config`, `auth`, `version`, `completion`.
//!
//! Exit codes: 0 success; 1 the command failed (an API error, a bad manifest,
//! an unreachable server); 2 the command line itself is wrong.

mod apply;
mod auth_cmd;
mod config_cmd;
mod delete;
mod duration;
mod get;
mod kinds;
mod manifest;
mod more;
mod nodes;
mod scale;

/// The decoders loomctl runs on what a user gives it, for loom-fuzz.
#[doc(hidden)]
pub mod fuzz {
    /// The objects of one manifest file's text, each with where it came from,
    /// as `loomctl apply -f` reads them.
    pub fn manifest(name: &str, text: &str) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let mut documents = Vec::new();
        crate::manifest::parse(name, text, &mut documents)?;
        Ok(documents.into_iter().map(|d| (d.origin, d.value)).collect())
    }

    /// A duration flag (`--timeout 1m30s`).
    pub fn duration(text: &str) -> Result<std::time::Duration, String> {
        crate::duration::parse(text)
    }
}

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
    /// The kubeconfig file (default: $LOOMCONFIG, else the first of
    /// $KUBECONFIG, else ~/.loom/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// A PEM file of the CA the API server's certificate must chain to.
    #[arg(long, global = true)]
    certificate_authority: Option<std::path::PathBuf>,
    /// A PEM client certificate file to authenticate with.
    #[arg(long, global = true, requires = "client_key")]
    client_certificate: Option<std::path::PathBuf>,
    /// The PEM private key file of --client-certificate.
    #[arg(long, global = true, requires = "client_certificate")]
    client_key: Option<std::path::PathBuf>,
    /// A bearer token to authenticate with.
    #[arg(long, global = true)]
    token: Option<String>,
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
    /// Set a service's replicas through its scale subresource:
    /// `scale service/NAME --replicas N`.
    Scale(scale::ScaleArgs),
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
    /// Show or change the kubeconfig ($LOOMCONFIG, else $KUBECONFIG, else ~/.loom/config).
    Config(config_cmd::ConfigArgs),
    /// Who you are to the API server, and what you may do: `auth whoami`, `auth can-i VERB RESOURCE`.
    Auth(auth_cmd::AuthArgs),
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

/// The client config: the kubeconfig's context, then the flags over it.
fn client_config(cli: &Cli) -> anyhow::Result<Config> {
    let explicit = cli.kubeconfig.is_some() || cli.context.is_some();
    let mut config = if explicit {
        let path = config_cmd::path(cli.kubeconfig.as_deref())?;
        Config::from_kubeconfig(&path, cli.context.as_deref()).context("cannot read the config")?
    } else {
        match (Config::infer(), &cli.server) {
            (Ok(config), _) => config,
            // --server says where: an unreadable config only loses its credentials.
            (Err(_), Some(server)) => Config::new(server),
            (Err(error), None) => return Err(error).context("cannot read the config"),
        }
    };
    if let Some(server) = &cli.server {
        config.server = server.trim_end_matches('/').to_owned();
    }
    if let Some(namespace) = &cli.namespace {
        config.namespace = namespace.clone();
    }
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("--{flag}: cannot read {}", path.display()))
    };
    if let Some(ca) = &cli.certificate_authority {
        let identity = config.tls.take().and_then(|tls| tls.identity);
        config.tls = Some(client::TlsConfig {
            ca_pem: read(ca, "certificate-authority")?,
            identity,
        });
    }
    if let (Some(cert), Some(key)) = (&cli.client_certificate, &cli.client_key) {
        let identity = Some((read(cert, "client-certificate")?, read(key, "client-key")?));
        match &mut config.tls {
            Some(tls) => tls.identity = identity,
            None => anyhow::bail!(
                "--client-certificate needs the cluster's CA: --certificate-authority"
            ),
        }
    }
    if let Some(token) = &cli.token {
        config.auth = Some(client::Auth::Token(token.clone()));
    }
    Ok(config)
}

fn context(cli: &Cli) -> anyhow::Result<Context> {
    let config = client_config(cli)?;
    let namespace = config.namespace.clone();
    Ok(Context {
        client: Client::new(config)?,
        namespace,
    })
}

/// Runs a command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = client::config::Environment::current();
    // Nothing says where the API is: the default server was used.
    let unconfigured = cli.server.is_none()
        && cli.kubeconfig.is_none()
        && env.service_host.is_none()
        && env.kubeconfig_path().is_none_or(|path| !path.exists());
    run_command(cli)
        .await
        .map_err(|error| explain(error, unconfigured))
}

/// Says what a 401 means, as kubectl does, wherever in a command it happened;
/// and, when no config was found, where one comes from.
fn explain(error: anyhow::Error, unconfigured: bool) -> anyhow::Error {
    let client_error = |test: fn(&client::Error) -> bool| {
        error
            .chain()
            .any(|cause| cause.downcast_ref::<client::Error>().is_some_and(test))
    };
    if client_error(|e| e.code() == Some(401)) {
        error.context(
            "You must be logged in to the server (Unauthorized): the API server did not \
             accept the credentials of your kubeconfig's user (see `loomctl config view`)",
        )
    } else if unconfigured && client_error(|e| matches!(e, client::Error::Http(_))) {
        error.context(format!(
            "no kubeconfig found ($LOOMCONFIG, $KUBECONFIG, ~/.loom/config), so loomctl tried \
             {}: `loom up` writes ~/.loom/config; for another cluster use `loomctl config \
             set-cluster`, `set-credentials` and `set-context`",
            client::config::DEFAULT_SERVER
        ))
    } else {
        error
    }
}

async fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "loomctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(args) => {
            config_cmd::run(args, &config_cmd::path(cli.kubeconfig.as_deref())?)
        }
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
        Command::Auth(args) => auth_cmd::run(&context(&cli)?, args).await,
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
        Command::Scale(args) => scale::scale(&context(&cli)?, args).await,
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
