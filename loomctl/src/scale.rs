//! `loomctl scale`: sets the replicas of an object with a `scale`
//! subresource (a Service) through that subresource, as `kubectl scale` does.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use api_types::Scale;
use client::Api;
use client::DynamicObject;
use client::client::{Body, Method};
use serde_json::json;

use crate::Context;
use crate::kinds::{Kinds, display_name};
use crate::more::target;

/// `loomctl scale service/NAME --replicas N`.
#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// KIND/NAME or KIND NAME (service/web).
    #[arg(required = true)]
    args: Vec<String>,
    /// The replicas wanted.
    #[arg(long, allow_negative_numbers = true)]
    replicas: i64,
    /// Scale only if the object has this many replicas now (a precondition).
    #[arg(long)]
    current_replicas: Option<i64>,
    /// Scale only if the object is at this resourceVersion (a precondition).
    #[arg(long)]
    resource_version: Option<String>,
}

/// Scales: one merge patch of the scale subresource; with a precondition,
/// reads the Scale, checks it, and writes it back at the resourceVersion
/// read, so a change in between is a conflict rather than overwritten.
pub(crate) async fn scale(ctx: &Context, args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let (info, name) = target(&kinds, &args.args)?;
    let shown = format!("{}/{name}", display_name(info));
    if !kinds.has_subresource(info, "scale") {
        bail!(
            "{} cannot be scaled: the server serves no {}/scale",
            display_name(info),
            info.plural
        );
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, info);
    let path = format!("{}/scale", api.item(&name));
    let preconditions = args.current_replicas.is_some() || args.resource_version.is_some();
    let (content_type, body) = if preconditions {
        let mut current: Scale = ctx
            .client
            .request(Method::GET, &path, None)
            .await
            .with_context(|| format!("cannot read the scale of {shown}"))?;
        if let Some(wanted) = args.current_replicas
            && i64::from(current.spec.replicas) != wanted
        {
            bail!(
                "cannot scale {shown}: expected {wanted} replicas, it has {}",
                current.spec.replicas
            );
        }
        if let Some(wanted) = &args.resource_version
            && &current.metadata.resource_version != wanted
        {
            bail!(
                "cannot scale {shown}: expected resource version {wanted}, it is at {}",
                current.metadata.resource_version
            );
        }
        current.spec.replicas = i32::try_from(args.replicas).with_context(|| {
            format!(
                "--replicas {} is not a replica count (0 to 100000)",
                args.replicas
            )
        })?;
        ("application/json", serde_json::to_vec(&current)?)
    } else {
        (
            "application/merge-patch+json",
            serde_json::to_vec(&json!({"spec": {"replicas": args.replicas}}))?,
        )
    };
    let method = if preconditions {
        Method::PUT
    } else {
        Method::PATCH
    };
    let _: Scale = ctx
        .client
        .request(
            method,
            &path,
            Some(Body {
                content_type,
                bytes: body.into(),
            }),
        )
        .await
        .with_context(|| format!("cannot scale {shown}"))?;
    println!("{shown} scaled");
    Ok(ExitCode::SUCCESS)
}
