//! `loomctl get`: tables (the server's columns), YAML, JSON, names, JSONPath, and
//! `-w` to keep printing changes.

use std::process::ExitCode;

use anyhow::bail;
use api_types::ResourceInfo;
use client::{Api, DynamicObject, ListParams};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::Context;
use crate::kinds::{Kinds, display_name};

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// `loomctl get` options.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The kind (`tasks`, `t`, `jobs.loom.dev`), then names.
    #[arg(required = true)]
    args: Vec<String>,
    /// yaml, json, wide, name, or jsonpath=TEMPLATE.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Only objects whose labels match.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Only objects whose fields match.
    #[arg(long)]
    field_selector: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// After listing, print changes as they come.
    #[arg(short = 'w', long)]
    watch: bool,
}

impl GetArgs {
    /// `get events`, as the `events` verb shows them.
    pub(crate) fn events() -> Self {
        GetArgs {
            args: vec!["events".to_owned()],
            output: None,
            selector: None,
            field_selector: None,
            all_namespaces: false,
            watch: false,
        }
    }
}

enum Format {
    Table { wide: bool },
    Yaml,
    Json,
    Name,
    JsonPath(String),
}

fn format(output: Option<&str>) -> anyhow::Result<Format> {
    Ok(match output {
        None => Format::Table { wide: false },
        Some("wide") => Format::Table { wide: true },
        Some("yaml") => Format::Yaml,
        Some("json") => Format::Json,
        Some("name") => Format::Name,
        Some(other) => match other.strip_prefix("jsonpath=") {
            Some(template) => Format::JsonPath(template.to_owned()),
            None => bail!(
                "unknown output format {other:?}: use yaml, json, wide, name or jsonpath=TEMPLATE"
            ),
        },
    })
}

pub(crate) async fn run(ctx: &Context, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let format = format(args.output.as_deref())?;
    let kinds = Kinds::discover(&ctx.client).await?;
    let (kind, names) = args
        .args
        .split_first()
        .map_or(("", &[][..]), |(k, n)| (k.as_str(), n));
    let info = kinds.by_name(kind)?.clone();
    let api: Api<DynamicObject> = if args.all_namespaces || !info.namespaced {
        Api::all_with(ctx.client.clone(), &info)
    } else {
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &info)
    };
    let mut query = Vec::new();
    if let Some(s) = &args.selector {
        query.push(format!("labelSelector={}", client::api::encode(s)));
    }
    if let Some(s) = &args.field_selector {
        query.push(format!("fieldSelector={}", client::api::encode(s)));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let show_namespace = args.all_namespaces && info.namespaced;
    let mut failed = false;
    match &format {
        Format::Table { wide } => {
            let tables = if names.is_empty() {
                vec![
                    ctx.client
                        .get_as::<Value>(&format!("{}{query}", api.collection()), TABLE)
                        .await?,
                ]
            } else {
                let mut tables = Vec::new();
                for name in names {
                    match ctx.client.get_as::<Value>(&api.item(name), TABLE).await {
                        Ok(table) => tables.push(table),
                        Err(error) => {
                            eprintln!("Error from server ({}): {error}", reason(&error));
                            failed = true;
                        }
                    }
                }
                tables
            };
            let rows: Vec<Vec<String>> = tables
                .iter()
                .flat_map(|t| rows(t, *wide, show_namespace))
                .collect();
            if let Some(first) = tables.first() {
                if rows.is_empty() && names.is_empty() && !args.watch {
                    match (info.namespaced, args.all_namespaces) {
                        (true, false) => {
                            eprintln!("No resources found in {} namespace.", ctx.namespace)
                        }
                        _ => eprintln!("No resources found"),
                    }
                } else {
                    print_table(&header(first, *wide, show_namespace), &rows);
                }
            }
        }
        _ => {
            let mut objects = Vec::new();
            if names.is_empty() {
                let params = ListParams {
                    label_selector: args.selector.clone(),
                    field_selector: args.field_selector.clone(),
                    ..Default::default()
                };
                let (items, _) = api.list_all(&params).await?;
                objects.extend(items);
            } else {
                for name in names {
                    match api.get(name).await {
                        Ok(object) => objects.push(object),
                        Err(error) => {
                            eprintln!("Error from server ({}): {error}", reason(&error));
                            failed = true;
                        }
                    }
                }
            }
            let single = names.len() == 1 && objects.len() == 1;
            print_objects(&info, objects, &format, single)?;
        }
    }
    if args.watch {
        watch(ctx, &api, &info, &query, args, show_namespace).await?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn reason(error: &client::Error) -> String {
    error
        .status()
        .map_or_else(|| "Unknown".to_owned(), |s| s.reason.clone())
}

fn visible(table: &Value, wide: bool) -> Vec<usize> {
    table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect()
}

fn header(table: &Value, wide: bool, namespace: bool) -> Vec<String> {
    let columns = table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut header: Vec<String> = visible(table, wide)
        .into_iter()
        .map(|i| columns[i]["name"].as_str().unwrap_or("").to_uppercase())
        .collect();
    if namespace {
        header.insert(0, "NAMESPACE".to_owned());
    }
    header
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "<none>".to_owned(),
        Value::String(s) => s.clone(),
        Value::Null => "<none>".to_owned(),
        other => other.to_string(),
    }
}

fn rows(table: &Value, wide: bool, namespace: bool) -> Vec<Vec<String>> {
    let columns = visible(table, wide);
    table["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let cells = row["cells"].as_array().cloned().unwrap_or_default();
            let mut out: Vec<String> = columns
                .iter()
                .map(|i| cells.get(*i).map_or_else(String::new, cell))
                .collect();
            if namespace {
                out.insert(
                    0,
                    row["object"]["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
            out
        })
        .collect()
}

/// Prints aligned columns, as kubectl does.
pub(crate) fn print_table(header: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header);
    for row in rows {
        line(row);
    }
}

fn print_objects(
    info: &ResourceInfo,
    objects: Vec<DynamicObject>,
    format: &Format,
    single: bool,
) -> anyhow::Result<()> {
    let mut values: Vec<Value> = objects
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    // Field ownership is noise for people; the API keeps it.
    for value in &mut values {
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    let document = if single {
        values[0].clone()
    } else {
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": values})
    };
    match format {
        Format::Yaml => print!("{}", serde_saphyr::to_string(&document)?),
        Format::Json => println!("{}", serde_json::to_string_pretty(&document)?),
        Format::Name => {
            for object in &objects {
                println!("{}/{}", display_name(info), object.metadata.name);
            }
        }
        Format::JsonPath(template) => println!("{}", jsonpath(template, &document)),
        Format::Table { .. } => {}
    }
    Ok(())
}

/// A small JSONPath: `{.a.b}` and `{.items[*].metadata.name}` with text around.
fn jsonpath(template: &str, document: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open].replace("\\n", "\n"));
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let path = &rest[open + 1..open + close];
        let values = select(document, path.trim_start_matches('.'));
        let text: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&text.join(" "));
        rest = &rest[open + close + 1..];
    }
    out.push_str(&rest.replace("\\n", "\n"));
    out
}

fn select<'a>(value: &'a Value, path: &str) -> Vec<&'a Value> {
    if path.is_empty() {
        return vec![value];
    }
    let (head, tail) = path.split_once('.').unwrap_or((path, ""));
    let (key, index) = match head.split_once('[') {
        Some((key, index)) => (key, Some(index.trim_end_matches(']'))),
        None => (head, None),
    };
    let Some(child) = (if key.is_empty() {
        Some(value)
    } else {
        value.get(key)
    }) else {
        return Vec::new();
    };
    match index {
        None => select(child, tail),
        Some("*") => child
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| select(c, tail))
            .collect(),
        Some(i) => i
            .parse::<usize>()
            .ok()
            .and_then(|i| child.get(i))
            .map_or_else(Vec::new, |c| select(c, tail)),
    }
}

async fn watch(
    ctx: &Context,
    api: &Api<DynamicObject>,
    info: &ResourceInfo,
    query: &str,
    args: &GetArgs,
    show_namespace: bool,
) -> anyhow::Result<()> {
    // Start from what the listing showed; every change after it prints as a row.
    let list: Value = ctx
        .client
        .get_as(&format!("{}{query}", api.collection()), "application/json")
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let separator = if query.is_empty() { "?" } else { "&" };
    let path = format!(
        "{}{query}{separator}watch=true&resourceVersion={rv}",
        api.collection()
    );
    let wide = matches!(args.output.as_deref(), Some("wide"));
    let lines = client::api::lines(ctx.client.stream_as(&path, TABLE).await?);
    let mut lines = std::pin::pin!(lines);
    while let Some(line) = lines.next().await {
        let event: Value = serde_json::from_slice(&line?)?;
        match event["type"].as_str() {
            Some("ERROR") => bail!(
                "the watch ended: {}",
                event["object"]["message"].as_str().unwrap_or("")
            ),
            Some("BOOKMARK") => {}
            _ => {
                for row in rows(&event["object"], wide, show_namespace) {
                    println!("{}", row.join("   "));
                }
            }
        }
    }
    let _ = info;
    Ok(())
}
