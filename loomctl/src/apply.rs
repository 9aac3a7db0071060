//! `loomctl apply`: server-side apply of every manifest, reporting each object
//! created, configured or unchanged; `--prune` deletes labelled objects no longer
//! in the manifests.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::bail;
use client::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};

use crate::kinds::{Kinds, display_name};
use crate::{Context, manifest};

/// The field manager loomctl applies as.
pub(crate) const FIELD_MANAGER: &str = "loomctl";

/// `loomctl apply` options.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Manifest files or directories (`-` for stdin); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<std::path::PathBuf>,
    /// Read directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Check everything on the server, change nothing: `server`.
    #[arg(long, value_parser = ["server"])]
    dry_run: Option<String>,
    /// Take over fields other managers own.
    #[arg(long)]
    force_conflicts: bool,
    /// Delete objects matching `-l` that are not in the manifests.
    #[arg(long, requires = "selector")]
    prune: bool,
    /// The label selector `--prune` uses.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
}

/// Reports one API error on one document, a line per field.
pub(crate) fn report(origin: &str, error: &client::Error) {
    match error
        .status()
        .and_then(|s| s.details.as_ref())
        .map(|d| &d.causes)
    {
        Some(causes) if !causes.is_empty() => {
            for cause in causes {
                let message = cause
                    .message
                    .strip_prefix("Invalid value: ")
                    .map_or(cause.message.as_str(), |m| m);
                eprintln!(
                    "error: {origin}: {}: {message}",
                    cause.field.trim_start_matches('.')
                );
            }
        }
        _ => eprintln!("error: {origin}: {error}"),
    }
}

pub(crate) async fn run(ctx: &Context, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let documents = manifest::read(&args.files, args.recursive)?;
    let kinds = Kinds::discover(&ctx.client).await?;
    let dry_run = args.dry_run.is_some();
    let suffix = if dry_run { " (server dry run)" } else { "" };
    let mut failed = false;
    let mut applied: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut kinds_applied = Vec::new();
    for doc in &documents {
        let target = match doc.target(&kinds, ctx) {
            Ok(target) => target,
            Err(why) => {
                eprintln!("error: {why}");
                failed = true;
                continue;
            }
        };
        let (info, namespace, name, api) = (
            &target.info,
            &target.namespace,
            target.name.as_str(),
            &target.api,
        );
        let before = match api.get_opt(name).await {
            Ok(before) => before,
            Err(error) => {
                report(&doc.origin, &error);
                failed = true;
                continue;
            }
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            force: args.force_conflicts,
            dry_run,
        };
        match api.patch(name, &params, &Patch::Apply(&doc.value)).await {
            Ok(after) => {
                let what = match &before {
                    None => "created",
                    Some(b) if b.metadata.resource_version == after.metadata.resource_version => {
                        "unchanged"
                    }
                    Some(_) => "configured",
                };
                println!("{}/{name} {what}{suffix}", display_name(info));
                let ns = if info.namespaced {
                    namespace.clone()
                } else {
                    String::new()
                };
                applied.insert((info.plural.clone(), ns, name.to_owned()));
                if !kinds_applied.iter().any(|k: &api_types::ResourceInfo| {
                    k.plural == info.plural && k.group == info.group
                }) {
                    kinds_applied.push(info.clone());
                }
            }
            Err(error) => {
                report(&doc.origin, &error);
                failed = true;
            }
        }
    }
    if args.prune && !failed {
        let Some(selector) = &args.selector else {
            bail!("--prune needs -l SELECTOR");
        };
        for info in &kinds_applied {
            let api: Api<DynamicObject> = if info.namespaced {
                Api::namespaced_with(ctx.client.clone(), &ctx.namespace, info)
            } else {
                Api::all_with(ctx.client.clone(), info)
            };
            let (objects, _) = api
                .list_all(&ListParams::default().labels(selector))
                .await?;
            for object in objects {
                let ns = if info.namespaced {
                    object.metadata.namespace.clone()
                } else {
                    String::new()
                };
                let key = (info.plural.clone(), ns, object.metadata.name.clone());
                if applied.contains(&key) {
                    continue;
                }
                if !dry_run {
                    api.delete(&object.metadata.name, &DeleteParams::default())
                        .await?;
                }
                println!(
                    "{}/{} pruned{suffix}",
                    display_name(info),
                    object.metadata.name
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
