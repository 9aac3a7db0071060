//! `loomctl delete`: by kind and names, by label, or everything in manifests.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use client::wait::{self, await_condition, conditions};
use client::{Api, DeleteParams, DynamicObject, ListParams};

use crate::kinds::{Kinds, display_name};
use crate::{Context, manifest};

/// `loomctl delete` options.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The kind, then names: `delete job a b`.
    args: Vec<String>,
    /// Delete the objects in these manifests.
    #[arg(short = 'f', long = "filename")]
    files: Vec<std::path::PathBuf>,
    /// Read directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Delete every object of the kind whose labels match.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Wait until the objects are gone.
    #[arg(long)]
    wait: bool,
    /// `Background` (default), `Foreground` or `Orphan`.
    #[arg(long)]
    cascade: Option<String>,
}

pub(crate) async fn run(ctx: &Context, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let mut targets: Vec<(Api<DynamicObject>, String)> = Vec::new();
    let mut failed = false;
    if !args.files.is_empty() {
        for doc in manifest::read(&args.files, args.recursive)? {
            match doc.target(&kinds, ctx) {
                Ok(target) => targets.push((target.api, target.name)),
                Err(why) => {
                    eprintln!("error: {why}");
                    failed = true;
                }
            }
        }
    } else {
        let Some((kind, names)) = args.args.split_first() else {
            bail!("say what to delete: loomctl delete KIND NAME…, -l SELECTOR, or -f FILE");
        };
        let info = kinds.by_name(kind)?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ctx.namespace, info);
        if let Some(selector) = &args.selector {
            let (objects, _) = api
                .list_all(&ListParams::default().labels(selector))
                .await?;
            targets.extend(objects.into_iter().map(|o| (api.clone(), o.metadata.name)));
        } else if names.is_empty() {
            bail!("name the {} to delete, or select them with -l", info.plural);
        }
        targets.extend(names.iter().map(|n| (api.clone(), n.clone())));
    }
    let params = DeleteParams {
        propagation_policy: args.cascade.clone(),
        ..Default::default()
    };
    let mut deleted = Vec::new();
    for (api, name) in targets {
        match api.delete(&name, &params).await {
            Ok(_) => {
                println!("{} {name:?} deleted", display_name(api.resource()));
                deleted.push((api, name));
            }
            Err(error) => {
                eprintln!("error: {error}");
                failed = true;
            }
        }
    }
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(120);
        for (api, name) in deleted {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprint!(
                    "\rwaiting for {} {name:?} to go",
                    display_name(api.resource())
                );
            }
            let what = display_name(api.resource());
            let left = deadline.saturating_duration_since(Instant::now());
            match await_condition(api, &name, conditions::is_absent(), left).await {
                Ok(_) => {}
                Err(wait::Error::TimedOut { .. }) => {
                    bail!("{what} {name:?} is still there after 120 s (finalizers?)");
                }
                Err(wait::Error::Watch { source, .. }) => return Err(source.into()),
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
