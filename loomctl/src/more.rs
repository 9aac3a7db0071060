//! The smaller verbs: describe, wait, kill, cordon, uncordon, diff.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use api_types::ResourceInfo;
use client::wait::{self, Condition as _, await_condition, conditions};
use client::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::Context;
use crate::apply::FIELD_MANAGER;
use crate::kinds::{Kinds, display_name};
use crate::manifest;

/// `KIND NAME` or `KIND/NAME`.
pub(crate) fn target<'a>(
    kinds: &'a Kinds,
    args: &[String],
) -> anyhow::Result<(&'a ResourceInfo, String)> {
    match args {
        [one] if one.contains('/') => {
            let (kind, name) = one.split_once('/').unwrap_or_default();
            Ok((kinds.by_name(kind)?, name.to_owned()))
        }
        [kind, name] => Ok((kinds.by_name(kind)?, name.clone())),
        _ => bail!("name one object: KIND NAME or KIND/NAME"),
    }
}

fn api(ctx: &Context, info: &ResourceInfo) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, info)
}

/// `loomctl describe KIND NAME`: the object without its bookkeeping, then its recent events.
pub(crate) async fn describe(ctx: &Context, args: &[String]) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let (info, name) = target(&kinds, args)?;
    let object = api(ctx, info).get(&name).await?;
    let meta = &object.metadata;
    println!("Name:        {}", meta.name);
    if !meta.namespace.is_empty() {
        println!("Namespace:   {}", meta.namespace);
    }
    println!("Kind:        {}", display_name(info));
    let labels: Vec<String> = meta
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "Labels:      {}",
        if labels.is_empty() {
            "<none>".to_owned()
        } else {
            labels.join(",")
        }
    );
    if let Some(created) = &meta.creation_timestamp {
        println!("Created:     {created}");
    }
    if let Some(deleting) = &meta.deletion_timestamp {
        println!(
            "Deleting:    since {deleting} (finalizers: {})",
            meta.finalizers.join(", ")
        );
    }
    for (section, value) in &object.data {
        if section == "status" {
            continue;
        }
        println!("{}:", capitalize(section));
        print!("{}", indent(&serde_saphyr::to_string(value)?));
    }
    if let Some(status) = object.data.get("status") {
        let mut status = status.clone();
        let conditions = status.as_object_mut().and_then(|s| s.remove("conditions"));
        println!("Status:");
        print!("{}", indent(&serde_saphyr::to_string(&status)?));
        if let Some(Value::Array(conditions)) = conditions {
            println!("Conditions:");
            for c in conditions {
                println!(
                    "  {:<12} {:<6} {:<24} {}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    let events: Api<api_types::Event> = Api::namespaced(
        ctx.client.clone(),
        if meta.namespace.is_empty() {
            "default"
        } else {
            &meta.namespace
        },
    );
    let selector = format!(
        "involvedObject.name={},involvedObject.kind={}",
        meta.name, info.kind
    );
    let mut found = events
        .list(&ListParams::default().fields(&selector))
        .await?
        .items;
    found.sort_by_key(|e| e.last_timestamp);
    println!("Events:");
    if found.is_empty() {
        println!("  <none>");
    }
    for event in found.iter().rev().take(10).rev() {
        println!(
            "  {:<8} {:<20} x{:<4} {}",
            event
                .type_
                .map_or("Normal".to_owned(), |t| format!("{t:?}")),
            event.reason,
            event.count.unwrap_or(1),
            event.message
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Whether an object (or its absence) meets what `wait` waits for.
type Check = Box<dyn Fn(Option<&DynamicObject>) -> bool>;

/// `loomctl wait KIND NAME --for=phase=X|condition=Y[=STATUS]|delete --timeout`.
pub(crate) async fn wait(
    ctx: &Context,
    args: &[String],
    condition: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let (info, name) = target(&kinds, args)?;
    let api = api(ctx, info);
    let test: Check = match condition.split_once('=') {
        Some(("phase", phase)) => {
            let met = conditions::has_phase(phase);
            Box::new(move |o| met.matches_object(o))
        }
        Some(("condition", rest)) => {
            let (kind, status) = rest.split_once('=').unwrap_or((rest, "True"));
            let met = conditions::has_condition(kind, status);
            Box::new(move |o| met.matches_object(o))
        }
        None if condition == "delete" => {
            let met = conditions::is_absent();
            Box::new(move |o| met.matches_object(o))
        }
        _ => bail!("--for takes phase=PHASE, condition=TYPE[=STATUS] or delete, not {condition:?}"),
    };
    let deadline = Instant::now() + timeout;
    let waiting = await_condition(api, &name, test, timeout);
    let mut waiting = std::pin::pin!(waiting);
    // On a terminal, a countdown while the watch waits (the first once a quick
    // answer would have come).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let tick = Duration::from_millis(250);
    let mut countdown = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut shown = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut waiting => break outcome,
            _ = countdown.tick(), if tty => {
                eprint!(
                    "\rwaiting for {}/{name} ({condition}) {:>4.0}s",
                    display_name(info),
                    deadline.saturating_duration_since(Instant::now()).as_secs_f64()
                );
                shown = true;
            }
        }
    };
    if shown {
        eprintln!();
    }
    match outcome {
        Ok(_) => {
            println!("{}/{name} condition met", display_name(info));
            Ok(ExitCode::SUCCESS)
        }
        Err(wait::Error::TimedOut { .. }) => {
            eprintln!(
                "error: timed out after {timeout:?} waiting for {}/{name} to reach {condition}",
                display_name(info)
            );
            Ok(ExitCode::FAILURE)
        }
        Err(wait::Error::Watch { source, .. }) => Err(source.into()),
    }
}

/// `loomctl kill job/NAME`: asks the Job controller to stop the job, keeping its record.
pub(crate) async fn kill(ctx: &Context, args: &[String]) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let (info, name) = target(&kinds, args)?;
    if info.kind != "Job" {
        bail!("kill stops jobs; {} is a {}", name, info.kind);
    }
    let patch = Patch::Merge(json!({"spec": {"killed": true}}));
    api(ctx, info)
        .patch(&name, &PatchParams::default(), &patch)
        .await?;
    println!("{}/{name} killed", display_name(info));
    Ok(ExitCode::SUCCESS)
}

/// `loomctl cordon|uncordon NODE`.
pub(crate) async fn cordon(
    ctx: &Context,
    node: &str,
    unschedulable: bool,
) -> anyhow::Result<ExitCode> {
    let nodes: Api<api_types::Node> = Api::all(ctx.client.clone());
    let patch = Patch::Merge(json!({"spec": {"unschedulable": unschedulable}}));
    nodes.patch(node, &PatchParams::default(), &patch).await?;
    println!(
        "node.loom.dev/{node} {}",
        if unschedulable {
            "cordoned"
        } else {
            "uncordoned"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `loomctl diff -f`: what apply would change, as a unified-style line diff.
pub(crate) async fn diff(
    ctx: &Context,
    files: &[std::path::PathBuf],
    recursive: bool,
) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let mut changed = false;
    for doc in manifest::read(files, recursive)? {
        let target = doc.target(&kinds, ctx).map_err(anyhow::Error::msg)?;
        let (info, name, api) = (&target.info, target.name.as_str(), &target.api);
        let before = api.get_opt(name).await?;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            dry_run: true,
            ..Default::default()
        };
        let after = api
            .patch(name, &params, &Patch::Apply(&doc.value))
            .await
            .with_context(|| format!("{}: the server refused it", doc.origin))?;
        let show = |o: Option<&DynamicObject>| -> anyhow::Result<Vec<String>> {
            let Some(o) = o else { return Ok(Vec::new()) };
            let mut value = serde_json::to_value(o)?;
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                for noise in [
                    "managedFields",
                    "resourceVersion",
                    "generation",
                    "uid",
                    "creationTimestamp",
                ] {
                    meta.remove(noise);
                }
            }
            Ok(serde_saphyr::to_string(&value)?
                .lines()
                .map(str::to_owned)
                .collect())
        };
        let (old, new) = (show(before.as_ref())?, show(Some(&after))?);
        if old == new {
            continue;
        }
        changed = true;
        println!("--- {}/{name} (live)", display_name(info));
        println!("+++ {}/{name} (after apply)", display_name(info));
        for line in line_diff(&old, &new) {
            println!("{line}");
        }
    }
    // As diff(1) and kubectl: 1 when there are differences.
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A minimal line diff (longest common subsequence).
fn line_diff(old: &[String], new: &[String]) -> Vec<String> {
    let (n, m) = (old.len(), new.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out.push(format!(" {}", old[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] > lcs[i + 1][j]) {
            out.push(format!("+{}", new[j]));
            j += 1;
        } else {
            out.push(format!("-{}", old[i]));
            i += 1;
        }
    }
    out
}

/// `loomctl explain KIND[.field.path]`: the field's type and description, and its fields,
/// from the server's OpenAPI v3 document.
pub(crate) async fn explain(ctx: &Context, target: &str) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let (kind, path) = target.split_once('.').map_or((target, ""), |(k, p)| (k, p));
    // `jobs.loom.dev` names a kind with its group, not a field.
    let (info, path) = match kinds.by_name(kind) {
        Ok(_) if !path.is_empty() && kinds.by_name(target).is_ok() => (kinds.by_name(target)?, ""),
        Ok(info) => (info, path),
        Err(error) => return Err(error),
    };
    let root: Value = ctx
        .client
        .request(client::client::Method::GET, "/openapi/v3", None)
        .await?;
    let url = root["paths"][format!("apis/{}/{}", info.group, info.version)]["serverRelativeURL"]
        .as_str()
        .context("the server's OpenAPI document does not list this group")?
        .to_owned();
    let document: Value = ctx
        .client
        .request(client::client::Method::GET, &url, None)
        .await?;
    let key = api_types::schema::openapi_schema_key(&info.group, &info.version, &info.kind);
    let mut schema = &document["components"]["schemas"][&key];
    let mut shown = info.kind.clone();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let next = child(schema, part).with_context(|| format!("{shown} has no field {part:?}"))?;
        schema = next;
        shown = format!("{shown}.{part}");
    }
    println!("KIND:     {}", info.kind);
    println!("VERSION:  {}", info.api_version());
    if !path.is_empty() {
        println!("FIELD:    {path} <{}>", type_of(schema));
    }
    println!();
    println!("DESCRIPTION:");
    println!(
        "    {}",
        schema["description"]
            .as_str()
            .unwrap_or("<empty>")
            .replace('\n', "\n    ")
    );
    let fields = item_schema(schema)["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if !fields.is_empty() {
        println!();
        println!("FIELDS:");
        for (name, field) in fields {
            println!("  {name}\t<{}>", type_of(&field));
            if let Some(description) = field["description"].as_str() {
                let first = description.lines().next().unwrap_or("");
                println!("    {first}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The schema of a list's items, or the schema itself.
fn item_schema(schema: &Value) -> &Value {
    if schema["type"] == "array" {
        &schema["items"]
    } else {
        schema
    }
}

fn child<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    let schema = item_schema(schema);
    schema["properties"].get(name).or_else(|| {
        schema["anyOf"]
            .as_array()?
            .iter()
            .find_map(|s| s["properties"].get(name))
    })
}

fn type_of(schema: &Value) -> String {
    if schema.get("x-kubernetes-int-or-string").is_some() {
        return "int-or-string".to_owned();
    }
    // `Option<T>` is a union of T and null: show T.
    for union in ["anyOf", "oneOf"] {
        if let Some(branch) = schema[union]
            .as_array()
            .and_then(|b| b.iter().find(|s| s["type"] != "null"))
        {
            return type_of(branch);
        }
    }
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&schema["items"])),
        Some("object") if schema["additionalProperties"].is_object() => {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        Some(t) => t.to_owned(),
        None if schema.get("x-kubernetes-int-or-string").is_some() => "int-or-string".to_owned(),
        None => "Object".to_owned(),
    }
}

/// `loomctl rollout status service/NAME`: waits until every replica runs the
/// current template, printing each new stage of the rollout.
pub(crate) async fn rollout_status(
    ctx: &Context,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let kinds = Kinds::discover(&ctx.client).await?;
    let (info, name) = target(&kinds, args)?;
    if info.kind != "Service" {
        bail!("rollout status follows services; {name} is a {}", info.kind);
    }
    let last = std::cell::RefCell::new(String::new());
    let rolled_out = |service: Option<&DynamicObject>| {
        let Some(service) = service else {
            return false;
        };
        let (done, line) = rollout_stage(service);
        if !done && *last.borrow() != line {
            println!("{line}");
            *last.borrow_mut() = line;
        }
        done
    };
    match await_condition(api(ctx, info), &name, rolled_out, timeout).await {
        Ok(_) => {
            println!("service {name:?} successfully rolled out");
            Ok(ExitCode::SUCCESS)
        }
        Err(wait::Error::TimedOut { .. }) => {
            eprintln!(
                "error: timed out after {timeout:?} waiting for service {name:?} to roll out"
            );
            Ok(ExitCode::FAILURE)
        }
        Err(wait::Error::Watch { source, .. }) => Err(source.into()),
    }
}

/// Whether a service has rolled out, and the line that says how far it got.
fn rollout_stage(service: &DynamicObject) -> (bool, String) {
    let spec = service.data.get("spec").cloned().unwrap_or_default();
    let status = service.data.get("status").cloned().unwrap_or_default();
    let wanted = spec["replicas"].as_i64().unwrap_or(1);
    let updated = status["updatedReplicas"].as_i64().unwrap_or(0);
    let ready = status["readyReplicas"].as_i64().unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    if observed >= service.metadata.generation && updated >= wanted && ready >= wanted {
        return (true, String::new());
    }
    let line = if observed < service.metadata.generation {
        "Waiting for the service controller to see the new template...".to_owned()
    } else {
        format!(
            "Waiting for rollout to finish: {updated} of {wanted} updated replicas, {ready} ready..."
        )
    };
    (false, line)
}

/// `loomctl logs TASK [-f] [--tail N]`: the task's output, through the API
/// server from the node that runs it.
pub(crate) async fn logs(
    ctx: &Context,
    task: &str,
    follow: bool,
    tail: Option<u64>,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    use std::io::Write;
    let name = task
        .strip_prefix("task/")
        .or_else(|| task.strip_prefix("tasks/"))
        .unwrap_or(task);
    let api: Api<api_types::Task> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let stream = api.logs(name, follow, tail).await?;
    let mut stream = std::pin::pin!(stream);
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
