//! `loomctl config`: the contexts in `~/.loom/config` (or `$LOOMCONFIG`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use client::config::{ConfigFile, Context, default_path};

/// `loomctl config` subcommands.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Print the config file.
    View,
    /// Print the current context's name.
    CurrentContext,
    /// Use another context.
    UseContext {
        /// The context.
        name: String,
    },
    /// Create or change a context.
    SetContext {
        /// The context.
        name: String,
        /// Its API server.
        #[arg(long)]
        server: Option<String>,
        /// Its default namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
}

fn path() -> anyhow::Result<PathBuf> {
    match std::env::var_os("LOOMCONFIG") {
        Some(path) => Ok(PathBuf::from(path)),
        None => default_path().context("HOME is not set: set LOOMCONFIG to a config file"),
    }
}

fn load(path: &PathBuf) -> anyhow::Result<ConfigFile> {
    if !path.exists() {
        return Ok(ConfigFile::default());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a loom config", path.display()))
}

fn save(path: &PathBuf, file: &ConfigFile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, serde_saphyr::to_string(file)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let path = path()?;
    let mut file = load(&path)?;
    match &args.command {
        ConfigCommand::View => print!("{}", serde_saphyr::to_string(&file)?),
        ConfigCommand::CurrentContext => match file.current() {
            Some(context) => println!("{}", context.name),
            None => bail!("no current context in {}", path.display()),
        },
        ConfigCommand::UseContext { name } => {
            if !file.contexts.iter().any(|c| &c.name == name) {
                bail!("no context named {name:?} in {}", path.display());
            }
            file.current_context = name.clone();
            save(&path, &file)?;
            println!("Switched to context {name:?}.");
        }
        ConfigCommand::SetContext {
            name,
            server,
            namespace,
        } => {
            let position = file.contexts.iter().position(|c| &c.name == name);
            let context = match position {
                Some(i) => &mut file.contexts[i],
                None => {
                    file.contexts.push(Context {
                        name: name.clone(),
                        server: client::config::DEFAULT_SERVER.to_owned(),
                        namespace: String::new(),
                    });
                    let last = file.contexts.len() - 1;
                    &mut file.contexts[last]
                }
            };
            if let Some(server) = server {
                context.server = server.clone();
            }
            if let Some(namespace) = namespace {
                context.namespace = namespace.clone();
            }
            if file.current_context.is_empty() {
                file.current_context = name.clone();
            }
            save(&path, &file)?;
            println!("Context {name:?} set.");
        }
    }
    Ok(ExitCode::SUCCESS)
}
