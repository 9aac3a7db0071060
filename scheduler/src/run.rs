//! The scheduling loop: watch nodes and tasks, place each pending task on the best
//! node that fits (highest priority first, then oldest), bind it with a write
//! conditioned on its resourceVersion, and say why when nothing fits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api_types::event::EventType;
use api_types::{Condition, ConditionStatus, Node, ObjectReference, Task, TaskPhase};
use chrono::Utc;
use client::{Api, Client, Informer, Patch, PatchParams, PostParams, Recorder, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::filter::{explain, fits};
use crate::resources::NodeInfo;
use crate::score::Weighted;

/// Whether a task still waits for a node.
fn pending(task: &Task) -> bool {
    task.spec.node_name.is_empty()
        && task.metadata.deletion_timestamp.is_none()
        && task
            .status
            .as_ref()
            .is_none_or(|s| s.phase == TaskPhase::Pending)
}

/// Whether a task holds resources on its node.
fn holds_resources(task: &Task) -> bool {
    !task.spec.node_name.is_empty() && !task.status.as_ref().is_some_and(|s| s.phase.is_terminal())
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let nodes = Informer::start(Api::<Node>::all(client.clone()), watcher::Config::default());
    let tasks = Informer::start(Api::<Task>::all(client.clone()), watcher::Config::default());
    let mut node_changes = nodes.subscribe();
    let mut task_changes = tasks.subscribe();
    nodes.store().wait_ready().await;
    tasks.store().wait_ready().await;
    let recorder = Recorder::new(client.clone(), "loom-scheduler", "scheduler");
    let mut unschedulable: BTreeMap<String, String> = BTreeMap::new();
    info!("scheduler running");
    loop {
        schedule_pass(&client, &recorder, &nodes, &tasks, &mut unschedulable).await;
        // Wait for something to change (or retry soon: binds may have lost races).
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = node_changes.recv() => {}
            _ = task_changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    nodes.stop();
    tasks.stop();
}

async fn schedule_pass(
    client: &Client,
    recorder: &Recorder,
    nodes: &Informer<Node>,
    tasks: &Informer<Task>,
    unschedulable: &mut BTreeMap<String, String>,
) {
    let mut infos: Vec<NodeInfo> = nodes
        .store()
        .list()
        .iter()
        .map(|n| NodeInfo::new((**n).clone()))
        .collect();
    let all_tasks = tasks.store().list();
    for task in all_tasks.iter().filter(|t| holds_resources(t)) {
        if let Some(info) = infos
            .iter_mut()
            .find(|n| n.node.metadata.name == task.spec.node_name)
        {
            info.add_task(task);
        }
    }
    let mut queue: Vec<Arc<Task>> = all_tasks.into_iter().filter(|t| pending(t)).collect();
    queue.sort_by(|a, b| {
        b.spec
            .priority
            .unwrap_or(0)
            .cmp(&a.spec.priority.unwrap_or(0))
            .then(
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp),
            )
    });
    let scorer = Weighted::default_for(infos.len());
    for task in queue {
        let key = format!("{}/{}", task.metadata.namespace, task.metadata.name);
        let mut reasons = Vec::new();
        let candidates: Vec<&NodeInfo> = infos
            .iter()
            .filter(|n| match fits(n, &task) {
                Ok(()) => true,
                Err(reason) => {
                    reasons.push(reason);
                    false
                }
            })
            .collect();
        let Some(best) = scorer.best(&candidates, &task) else {
            let message = explain(infos.len(), &reasons);
            if unschedulable.get(&key) != Some(&message) {
                set_scheduled(
                    client,
                    &task,
                    ConditionStatus::False,
                    "Unschedulable",
                    &message,
                )
                .await;
                unschedulable.insert(key, message);
            }
            continue;
        };
        let node_name = best.node.metadata.name.clone();
        match bind(client, &task, &node_name).await {
            Ok(()) => {
                unschedulable.remove(&key);
                // Assume the placement until the watch confirms it.
                let mut placed = (*task).clone();
                placed.spec.node_name = node_name.clone();
                if let Some(info) = infos.iter_mut().find(|n| n.node.metadata.name == node_name) {
                    info.add_task(&placed);
                }
                set_scheduled(
                    client,
                    &task,
                    ConditionStatus::True,
                    "Scheduled",
                    &format!("bound to {node_name}"),
                )
                .await;
                let reference = ObjectReference::to(&*task);
                if let Err(error) = recorder
                    .publish(
                        &reference,
                        EventType::Normal,
                        "Scheduled",
                        &format!("Assigned {key} to {node_name}"),
                    )
                    .await
                {
                    debug!(%error, "cannot record the Scheduled event");
                }
            }
            // Someone changed the task first: the next pass sees the new version.
            Err(error) if error.is_conflict() || error.is_not_found() => {}
            Err(error) => warn!(%error, task = %key, "bind failed"),
        }
    }
}

/// Binds a task: sets `spec.nodeName`, only if the task is still the version we saw.
async fn bind(client: &Client, task: &Task, node: &str) -> client::Result<()> {
    let api: Api<Task> = Api::namespaced(client.clone(), &task.metadata.namespace);
    let mut bound = task.clone();
    bound.spec.node_name = node.to_owned();
    bound.metadata.managed_fields.clear();
    api.replace(
        &task.metadata.name,
        &PostParams {
            field_manager: Some("loom-scheduler".into()),
            ..Default::default()
        },
        &bound,
    )
    .await
    .map(|_| ())
}

async fn set_scheduled(
    client: &Client,
    task: &Task,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    let api: Api<Task> = Api::namespaced(client.clone(), &task.metadata.namespace);
    let mut conditions = task
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    api_types::meta::set_condition(
        &mut conditions,
        Condition {
            type_: "Scheduled".into(),
            status,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        },
        Utc::now(),
    );
    let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
    if let Err(error) = api
        .patch_status(&task.metadata.name, &PatchParams::default(), &patch)
        .await
    {
        debug!(%error, "cannot set the Scheduled condition");
    }
}
