//! `loomctl config`: the kubeconfig in `$LOOMCONFIG`, `$KUBECONFIG` or
//! `~/.loom/config`, shown and changed as `kubectl config` does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use client::kubeconfig::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

/// `loomctl config` subcommands.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Print the config file, certificate data, keys and tokens hidden.
    View {
        /// Show certificate data, keys and tokens.
        #[arg(long)]
        raw: bool,
        /// Only what the current context uses.
        #[arg(long)]
        minify: bool,
    },
    /// Print the current context's name.
    CurrentContext,
    /// Use another context.
    UseContext {
        /// The context.
        name: String,
    },
    /// Create or change a context.
    SetContext {
        /// The context (with --current: the current one).
        name: Option<String>,
        /// Change the current context.
        #[arg(long)]
        current: bool,
        /// Its cluster (see set-cluster).
        #[arg(long)]
        cluster: Option<String>,
        /// Its user (see set-credentials).
        #[arg(long)]
        user: Option<String>,
        /// Its default namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Also point the context's cluster (made, named after the context,
        /// if it has none) at this API server.
        #[arg(long)]
        server: Option<String>,
    },
    /// Create or change a cluster: its API server and the CA it is trusted by.
    SetCluster {
        /// The cluster.
        name: String,
        /// The API server's URL.
        #[arg(long)]
        server: Option<String>,
        /// A PEM file of the cluster's CA.
        #[arg(long)]
        certificate_authority: Option<PathBuf>,
        /// Copy the CA into the config instead of naming its file.
        #[arg(long)]
        embed_certs: bool,
        /// The name the server's certificate carries, if not the URL's host.
        #[arg(long)]
        tls_server_name: Option<String>,
    },
    /// Create or change a user's credentials.
    SetCredentials {
        /// The user.
        name: String,
        /// A PEM client certificate file.
        #[arg(long)]
        client_certificate: Option<PathBuf>,
        /// The PEM private key file of the client certificate.
        #[arg(long)]
        client_key: Option<PathBuf>,
        /// A bearer token.
        #[arg(long)]
        token: Option<String>,
        /// Copy the certificate and key into the config instead of naming their files.
        #[arg(long)]
        embed_certs: bool,
    },
    /// List the contexts.
    GetContexts {
        /// Only this context.
        name: Option<String>,
        /// `name`: only the names.
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Delete a context (its cluster and user stay).
    DeleteContext {
        /// The context.
        name: String,
    },
}

/// The file `loomctl config` works on: `--kubeconfig`, else `$LOOMCONFIG`,
/// else the first of `$KUBECONFIG`, else `~/.loom/config`.
pub(crate) fn path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(path) => Ok(path.to_owned()),
        None => client::config::Environment::current()
            .kubeconfig_path()
            .context("HOME is not set: set LOOMCONFIG or KUBECONFIG to a config file"),
    }
}

/// The file to show: a missing one is empty, as for kubectl.
fn read(path: &Path) -> anyhow::Result<Kubeconfig> {
    if !path.exists() {
        return Ok(Kubeconfig::default());
    }
    Ok(Kubeconfig::read(path)?)
}

/// A file's PEM text, checked to be PEM.
fn pem(path: &Path, flag: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--{flag}: cannot read {}", path.display()))?;
    if !text.contains("-----BEGIN ") {
        bail!("--{flag}: {} is not PEM", path.display());
    }
    Ok(text)
}

fn absolute(path: &Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?
        .to_string_lossy()
        .into_owned())
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// Only the current context, its cluster and its user.
fn minify(file: &Kubeconfig, path: &Path) -> anyhow::Result<Kubeconfig> {
    let Some(context) = file.context(None).cloned() else {
        bail!("{}: current-context is not set", path.display());
    };
    Ok(Kubeconfig {
        clusters: file
            .clusters
            .iter()
            .filter(|c| c.name == context.context.cluster)
            .cloned()
            .collect(),
        users: file
            .users
            .iter()
            .filter(|u| u.name == context.context.user)
            .cloned()
            .collect(),
        current_context: context.name.clone(),
        contexts: vec![context],
        ..file.clone()
    })
}

pub(crate) fn run(args: &ConfigArgs, path: &Path) -> anyhow::Result<ExitCode> {
    let shown = path.display();
    match &args.command {
        ConfigCommand::View { raw, minify: min } => {
            let mut file = read(path)?;
            if *min {
                file = minify(&file, path)?;
            }
            if !*raw {
                file = file.redacted();
            }
            print!("{}", file.to_yaml()?);
        }
        ConfigCommand::CurrentContext => {
            let file = read(path)?;
            if file.current_context.is_empty() {
                bail!("current-context is not set in {shown}");
            }
            println!("{}", file.current_context);
        }
        ConfigCommand::GetContexts { name, output } => {
            let file = read(path)?;
            let contexts: Vec<&NamedContext> = file
                .contexts
                .iter()
                .filter(|c| name.as_ref().is_none_or(|n| &c.name == n))
                .collect();
            if let Some(name) = name
                && contexts.is_empty()
            {
                bail!("context {name:?} not found in {shown}");
            }
            match output.as_deref() {
                Some("name") => {
                    for context in contexts {
                        println!("{}", context.name);
                    }
                }
                Some(other) => bail!("--output {other:?}: only `name` is supported"),
                None => {
                    let mut rows = vec![[
                        "CURRENT".to_owned(),
                        "NAME".to_owned(),
                        "CLUSTER".to_owned(),
                        "AUTHINFO".to_owned(),
                        "NAMESPACE".to_owned(),
                    ]];
                    for c in contexts {
                        rows.push([
                            if c.name == file.current_context {
                                "*"
                            } else {
                                ""
                            }
                            .to_owned(),
                            c.name.clone(),
                            c.context.cluster.clone(),
                            c.context.user.clone(),
                            c.context.namespace.clone(),
                        ]);
                    }
                    print_table(&rows);
                }
            }
        }
        command => {
            let mut file = Kubeconfig::read_for_update(path)?;
            let message = change(&mut file, command, path)?;
            file.write(path)?;
            println!("{message}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[[String; 5]]) {
    let mut widths = [0; 5];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Applies a changing subcommand; returns what to print.
fn change(file: &mut Kubeconfig, command: &ConfigCommand, path: &Path) -> anyhow::Result<String> {
    let shown = path.display();
    match command {
        ConfigCommand::UseContext { name } => {
            if !file.contexts.iter().any(|c| &c.name == name) {
                bail!("no context exists with the name: {name:?} in {shown}");
            }
            file.current_context = name.clone();
            Ok(format!("Switched to context {name:?}."))
        }
        ConfigCommand::DeleteContext { name } => {
            let before = file.contexts.len();
            file.contexts.retain(|c| &c.name != name);
            if file.contexts.len() == before {
                bail!("cannot delete context {name:?}: not in {shown}");
            }
            let mut message = format!("deleted context {name} from {shown}");
            if &file.current_context == name {
                message = format!(
                    "warning: this removed your active context, use \"loomctl config use-context\" to select a different one\n{message}"
                );
            }
            Ok(message)
        }
        ConfigCommand::SetContext {
            name,
            current,
            cluster,
            user,
            namespace,
            server,
        } => {
            let name = match (name, current) {
                (Some(name), false) => name.clone(),
                (None, true) if !file.current_context.is_empty() => file.current_context.clone(),
                (None, true) => bail!("--current: current-context is not set in {shown}"),
                (Some(_), true) => bail!("give a context name or --current, not both"),
                (None, false) => bail!("give a context name, or --current"),
            };
            let created = !file.contexts.iter().any(|c| c.name == name);
            if created {
                file.contexts.push(NamedContext {
                    name: name.clone(),
                    ..NamedContext::default()
                });
            }
            let context = file
                .contexts
                .iter_mut()
                .find(|c| c.name == name)
                .context("the context just added")?;
            if let Some(cluster) = cluster {
                context.context.cluster = cluster.clone();
            }
            if let Some(user) = user {
                context.context.user = user.clone();
            }
            if let Some(namespace) = namespace {
                context.context.namespace = namespace.clone();
            }
            if let Some(server) = server {
                if context.context.cluster.is_empty() {
                    context.context.cluster = name.clone();
                }
                let cluster_name = context.context.cluster.clone();
                cluster_entry(file, &cluster_name).cluster.server =
                    server.trim_end_matches('/').to_owned();
            }
            // Loom's nicety over kubectl: a first context is used at once.
            if file.context(None).is_none() || file.current_context.is_empty() {
                file.current_context = name.clone();
            }
            Ok(format!(
                "Context {name:?} {}.",
                if created { "created" } else { "modified" }
            ))
        }
        ConfigCommand::SetCluster {
            name,
            server,
            certificate_authority,
            embed_certs,
            tls_server_name,
        } => {
            let ca = match certificate_authority {
                Some(ca) => Some((pem(ca, "certificate-authority")?, absolute(ca)?)),
                None if *embed_certs => {
                    bail!("--embed-certs needs --certificate-authority")
                }
                None => None,
            };
            let entry = &mut cluster_entry(file, name).cluster;
            if let Some(server) = server {
                entry.server = server.trim_end_matches('/').to_owned();
            }
            if let Some((text, file_path)) = ca {
                if *embed_certs {
                    entry.certificate_authority_data = Some(b64(&text));
                    entry.certificate_authority = None;
                } else {
                    entry.certificate_authority = Some(file_path);
                    entry.certificate_authority_data = None;
                }
            }
            if let Some(tls_server_name) = tls_server_name {
                entry.tls_server_name =
                    Some(tls_server_name.clone()).filter(|name| !name.is_empty());
            }
            Ok(format!("Cluster {name:?} set."))
        }
        ConfigCommand::SetCredentials {
            name,
            client_certificate,
            client_key,
            token,
            embed_certs,
        } => {
            if *embed_certs && client_certificate.is_none() && client_key.is_none() {
                bail!("--embed-certs needs --client-certificate or --client-key");
            }
            let cert = match client_certificate {
                Some(p) => Some((pem(p, "client-certificate")?, absolute(p)?)),
                None => None,
            };
            let key = match client_key {
                Some(p) => Some((pem(p, "client-key")?, absolute(p)?)),
                None => None,
            };
            if file.users.iter().all(|u| &u.name != name) {
                file.users.push(NamedAuthInfo {
                    name: name.clone(),
                    ..NamedAuthInfo::default()
                });
            }
            let user = file
                .users
                .iter_mut()
                .find(|u| &u.name == name)
                .map(|u| &mut u.user)
                .context("the user just added")?;
            if let Some((text, file_path)) = cert {
                if *embed_certs {
                    user.client_certificate_data = Some(b64(&text));
                    user.client_certificate = None;
                } else {
                    user.client_certificate = Some(file_path);
                    user.client_certificate_data = None;
                }
            }
            if let Some((text, file_path)) = key {
                if *embed_certs {
                    user.client_key_data = Some(b64(&text));
                    user.client_key = None;
                } else {
                    user.client_key = Some(file_path);
                    user.client_key_data = None;
                }
            }
            if let Some(token) = token {
                user.token = Some(token.clone()).filter(|t| !t.is_empty());
            }
            Ok(format!("User {name:?} set."))
        }
        ConfigCommand::View { .. }
        | ConfigCommand::CurrentContext
        | ConfigCommand::GetContexts { .. } => bail!("not a changing command"),
    }
}

/// The cluster `name`, added empty if missing.
fn cluster_entry<'a>(file: &'a mut Kubeconfig, name: &str) -> &'a mut NamedCluster {
    let index = match file.clusters.iter().position(|c| c.name == name) {
        Some(index) => index,
        None => {
            file.clusters.push(NamedCluster {
                name: name.to_owned(),
                ..NamedCluster::default()
            });
            file.clusters.len() - 1
        }
    };
    &mut file.clusters[index]
}
