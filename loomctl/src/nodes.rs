//! Machines: `nodes` (capacity, usage, tasks), `taint`, `drain`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use api_types::{Node, Task};
use client::watcher::{self, Event, watcher};
use client::{Api, DeleteParams, ListParams, Patch, PatchParams};
use futures::StreamExt as _;
use serde_json::json;

use crate::Context;
use crate::get::print_table;

/// `loomctl nodes`: every node with its state, capacity, usage and task count.
pub(crate) async fn nodes(ctx: &Context) -> anyhow::Result<ExitCode> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let tasks: Api<Task> = Api::all(ctx.client.clone());
    let (nodes, _) = nodes.list_all(&ListParams::default()).await?;
    let (tasks, _) = tasks.list_all(&ListParams::default()).await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for task in &tasks {
        let finished = task.status.as_ref().is_some_and(|s| s.phase.is_terminal());
        if !task.spec.node_name.is_empty() && !finished {
            *per_node.entry(task.spec.node_name.clone()).or_default() += 1;
        }
    }
    if nodes.is_empty() {
        eprintln!("No nodes: add one with `loom nodelet --server URL --name NAME`.");
        return Ok(ExitCode::SUCCESS);
    }
    let header: Vec<String> = [
        "NAME",
        "STATUS",
        "CPU",
        "MEMORY",
        "CPU USED",
        "MEMORY USED",
        "TASKS",
    ]
    .map(str::to_owned)
    .to_vec();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            let status = node.status.clone().unwrap_or_default();
            let mut state = if node.is_ready() { "Ready" } else { "NotReady" }.to_owned();
            if node.spec.unschedulable {
                state.push_str(",SchedulingDisabled");
            }
            let quantity = |map: &BTreeMap<String, api_types::Quantity>, key: &str| {
                map.get(key)
                    .map_or_else(|| "-".to_owned(), ToString::to_string)
            };
            let usage = status.usage.clone().unwrap_or_default();
            vec![
                node.metadata.name.clone(),
                state,
                quantity(&status.allocatable, "cpu"),
                quantity(&status.allocatable, "memory"),
                usage.cpu.map_or_else(|| "-".to_owned(), |q| q.to_string()),
                usage
                    .memory
                    .map_or_else(|| "-".to_owned(), |q| q.to_string()),
                per_node
                    .get(&node.metadata.name)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    print_table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

/// `loomctl taint NODE key=value:Effect` (or `key-` / `key:Effect-` to remove).
pub(crate) async fn taint(
    ctx: &Context,
    node: &str,
    taints: &[String],
) -> anyhow::Result<ExitCode> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let current = api.get(node).await?;
    let mut list = serde_json::to_value(&current.spec.taints)?;
    let Some(items) = list.as_array_mut() else {
        bail!("node {node} has malformed taints");
    };
    for spec in taints {
        if let Some(key) = spec.strip_suffix('-') {
            let (key, effect) = key
                .split_once(':')
                .map_or((key, None), |(k, e)| (k, Some(e)));
            items.retain(|t| !(t["key"] == key && effect.is_none_or(|e| t["effect"] == e)));
            continue;
        }
        let Some((key_value, effect)) = spec.split_once(':') else {
            bail!(
                "taint {spec:?}: write key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)"
            );
        };
        let (key, value) = key_value.split_once('=').unwrap_or((key_value, ""));
        items.retain(|t| !(t["key"] == key && t["effect"] == effect));
        items.push(json!({"key": key, "value": value, "effect": effect}));
    }
    let patch = Patch::Merge(
        json!({"metadata": {"resourceVersion": current.metadata.resource_version}, "spec": {"taints": list}}),
    );
    api.patch(node, &PatchParams::default(), &patch).await?;
    println!("node.loom.dev/{node} tainted");
    Ok(ExitCode::SUCCESS)
}

/// `loomctl drain NODE`: cordon it, stop its tasks (their jobs and services
/// replace them elsewhere), and wait until none is left, following the node's
/// tasks with a watch.
pub(crate) async fn drain(
    ctx: &Context,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    println!("node.loom.dev/{node} cordoned");
    let tasks: Api<Task> = Api::all(ctx.client.clone());
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    // The node's unfinished tasks, by namespace and name.
    let mut left: BTreeMap<(String, String), Task> = BTreeMap::new();
    let drained = async {
        let mut events = std::pin::pin!(watcher(tasks.clone(), on_node));
        let mut listing: Option<BTreeMap<(String, String), Task>> = None;
        let mut evicted = BTreeSet::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listing = Some(BTreeMap::new()),
                Ok(Event::InitApply(task)) => track(listing.get_or_insert_default(), task),
                Ok(Event::InitDone) => left = listing.take().unwrap_or_default(),
                Ok(Event::Apply(task)) => track(&mut left, task),
                Ok(Event::Delete(task)) => {
                    left.remove(&key(&task));
                }
                Err(error) if error.is_transient() || error.is_gone() => continue,
                Err(error) => return Err(anyhow::Error::from(error)),
            }
            if listing.is_some() {
                continue;
            }
            if left.is_empty() {
                return Ok(());
            }
            evict(&tasks, &left, &mut evicted).await?;
        }
        std::future::pending().await
    };
    match tokio::time::timeout(timeout, drained).await {
        Ok(Ok(())) => {
            println!("node.loom.dev/{node} drained");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            eprintln!(
                "error: {} tasks still on {node} after {timeout:?}",
                left.len()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn key(task: &Task) -> (String, String) {
    (task.metadata.namespace.clone(), task.metadata.name.clone())
}

/// Keeps `task` in `left` while it has not finished.
fn track(left: &mut BTreeMap<(String, String), Task>, task: Task) {
    if task.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
        left.remove(&key(&task));
    } else {
        left.insert(key(&task), task);
    }
}

/// Deletes the tasks of `left` not being deleted yet (once each).
async fn evict(
    tasks: &Api<Task>,
    left: &BTreeMap<(String, String), Task>,
    evicted: &mut BTreeSet<(String, String)>,
) -> anyhow::Result<()> {
    for (key, task) in left {
        if task.metadata.deletion_timestamp.is_some() || evicted.contains(key) {
            continue;
        }
        let api = tasks.in_namespace(&task.metadata.namespace);
        match api
            .delete(&task.metadata.name, &DeleteParams::default())
            .await
        {
            Ok(_) => println!("task.loom.dev/{} evicted", task.metadata.name),
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error.into()),
        }
        evicted.insert(key.clone());
    }
    Ok(())
}
