//! Node lifecycle: a node whose heartbeat Lease is not renewed goes NotReady and is
//! tainted `loom.dev/unreachable:NoExecute`; after a further grace its unfinished
//! tasks are marked Lost (their Jobs and Services replace them); a node that renews
//! its Lease again is Ready and untainted again. The tasks of a deleted node are
//! Lost at once.
//!
//! The heartbeat is any write to the Lease named after the node in
//! `loom-node-lease` (the nodelet renews `spec.renewTime`), timed by this
//! controller's clock from when it saw the write; a node without a Lease is given
//! the grace period from when the controller first saw it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_types::event::EventType;
use api_types::kinds::node::NODE_CONDITION_READY;
use api_types::meta::set_condition;
use api_types::well_known::{REASON_NODE_LOST, TAINT_UNREACHABLE};
use api_types::{Condition, ConditionStatus, Node, Taint, TaintEffect, Task, TaskPhase};
use chrono::Utc;
use client::{Action, Api, ObjectKey, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{BY_NODE, Context, Error, Result, key_of, observe, publish, summarize};

/// The Events' component.
pub const COMPONENT: &str = "node-lifecycle-controller";
/// The Ready condition's reason while the Lease is expired.
pub const REASON_LEASE_EXPIRED: &str = "NodeLeaseExpired";
/// The Ready condition's reason once the Lease is renewed again.
pub const REASON_LEASE_RENEWED: &str = "NodeLeaseRenewed";

/// How a node is doing, by the age of its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Renewed within the grace period; look again after this long.
    Alive(Duration),
    /// Not renewed for the grace period; its tasks are lost after this long.
    Unreachable(Duration),
    /// Not renewed for the grace period and the further one.
    Lost,
}

/// When this controller last saw each node's Lease change, by its own clock (as
/// Kubernetes' node lifecycle controller does): clocks of nodes may be skewed, and
/// a controller that just started gives every node a full grace period.
#[derive(Debug, Default)]
pub struct Heartbeats {
    seen: Mutex<HashMap<String, (String, Instant)>>,
}

impl Heartbeats {
    /// How long ago `node`'s lease last changed to `marker` (its resourceVersion, or
    /// "" without a lease); a first sighting or a change counts as a heartbeat now.
    pub fn age(&self, node: &str, marker: &str, now: Instant) -> Duration {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(node) {
            Some((last, at)) if last == marker => now.saturating_duration_since(*at),
            _ => {
                seen.insert(node.to_owned(), (marker.to_owned(), now));
                Duration::ZERO
            }
        }
    }
}

/// Judges a heartbeat of age `age`.
pub fn health(age: Duration, grace: Duration, lost_grace: Duration) -> Health {
    if age < grace {
        Health::Alive(grace - age)
    } else if age < grace + lost_grace {
        Health::Unreachable(grace + lost_grace - age)
    } else {
        Health::Lost
    }
}

fn unreachable_taint() -> Taint {
    Taint {
        key: TAINT_UNREACHABLE.to_owned(),
        value: String::new(),
        effect: Some(TaintEffect::NoExecute),
    }
}

fn has_taint(node: &Node) -> bool {
    node.spec.taints.iter().any(|t| t.key == TAINT_UNREACHABLE)
}

/// Whether a task stays on an unreachable node: it tolerates the taint for ever.
fn stays(task: &Task) -> bool {
    let taint = unreachable_taint();
    task.spec
        .tolerations
        .iter()
        .any(|t| t.tolerates(&taint) && t.toleration_seconds.is_none())
}

/// Reconciles one node against its Lease.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wait_ready().await;
    let lease = ctx.leases.get(&ObjectKey::new(
        &ctx.config.node_lease_namespace,
        &node.metadata.name,
    ));
    let marker = lease
        .as_ref()
        .map(|l| l.metadata.resource_version.clone())
        .unwrap_or_default();
    let age = ctx
        .heartbeats
        .age(&node.metadata.name, &marker, Instant::now());
    let verdict = health(age, ctx.config.node_grace, ctx.config.lost_grace);
    let recorder = ctx.recorder(COMPONENT);
    let since = lease
        .as_ref()
        .and_then(|l| l.spec.renew_time.or(l.spec.acquire_time))
        .map_or_else(
            || "never renewed".to_owned(),
            |t| format!("last renewed at {}", t.to_rfc3339()),
        );
    match verdict {
        Health::Alive(next) => {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| api_types::meta::find_condition(&s.conditions, NODE_CONDITION_READY));
            let ours = ready.is_some_and(|c| !c.is_true() && c.reason == REASON_LEASE_EXPIRED);
            if has_taint(&node) || ours {
                write_node(
                    &ctx,
                    &node,
                    false,
                    ours.then(|| {
                        Condition::new(
                            NODE_CONDITION_READY,
                            ConditionStatus::True,
                            REASON_LEASE_RENEWED,
                            "the nodelet renews its lease again",
                        )
                    }),
                )
                .await?;
                info!(node = %node.metadata.name, "node is back");
                publish(
                    &recorder,
                    node.as_ref(),
                    EventType::Normal,
                    "NodeReady",
                    "the nodelet renews its lease again",
                )
                .await;
            }
            Ok(Action::requeue(next + Duration::from_millis(50)))
        }
        Health::Unreachable(_) | Health::Lost => {
            let message = format!(
                "the node's lease was not renewed for {}s ({since})",
                age.as_secs()
            );
            let ready = node
                .status
                .as_ref()
                .and_then(|s| api_types::meta::find_condition(&s.conditions, NODE_CONDITION_READY));
            let marked = ready.is_some_and(|c| !c.is_true() && c.reason == REASON_LEASE_EXPIRED);
            if !has_taint(&node) || !marked {
                write_node(
                    &ctx,
                    &node,
                    true,
                    (!marked).then(|| {
                        Condition::new(
                            NODE_CONDITION_READY,
                            ConditionStatus::False,
                            REASON_LEASE_EXPIRED,
                            message.clone(),
                        )
                    }),
                )
                .await?;
                warn!(node = %node.metadata.name, %since, "node not ready: lease expired");
                publish(
                    &recorder,
                    node.as_ref(),
                    EventType::Warning,
                    "NodeNotReady",
                    &message,
                )
                .await;
            }
            let Health::Unreachable(left) = verdict else {
                lose_tasks(&ctx, &node, &since).await?;
                // Tasks bound just before it went quiet may still appear.
                return Ok(Action::requeue(Duration::from_secs(5)));
            };
            Ok(Action::requeue(left + Duration::from_millis(50)))
        }
    }
}

/// Marks a task Lost (unless it already finished).
async fn mark_lost(ctx: &Context, task: &Task, message: &str) -> Result<()> {
    let api: Api<Task> = Api::namespaced(ctx.client.clone(), &task.metadata.namespace);
    let patch = json!({"status": {
        "phase": TaskPhase::Lost,
        "reason": REASON_NODE_LOST,
        "message": message,
        "finishTime": Utc::now(),
    }});
    match api
        .patch_status(
            &task.metadata.name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.is_not_found() || error.code() == Some(422) => Ok(()),
        Err(error) => Err(Error::api("mark lost", key_of(task))(error)),
    }
}

/// Reconciles one task against its node: a task bound to a node that no longer
/// exists (deleted while the task ran) is Lost, so its owner replaces it.
pub async fn reconcile_task(task: Arc<Task>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wait_ready().await;
    let node = &task.spec.node_name;
    if node.is_empty() || task.is_terminal() || task.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx.nodes.get(&ObjectKey::new("", node)).is_some() {
        return Ok(Action::await_change());
    }
    // The node's watch may lag the task's: ask the API before acting.
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let exists = nodes
        .get_opt(node)
        .await
        .map_err(Error::api("get node", node.clone()))?
        .is_some();
    if !exists {
        warn!(task = %key_of(task.as_ref()), %node, "the task's node is gone");
        mark_lost(&ctx, &task, &format!("node {node} was deleted")).await?;
        observe(&ctx.tasks, &ObjectKey::of(task.as_ref()), |t| {
            t.is_none_or(Task::is_terminal)
        })
        .await;
    }
    Ok(Action::await_change())
}

/// Marks every unfinished task on the node Lost.
async fn lose_tasks(ctx: &Context, node: &Node, since: &str) -> Result<()> {
    let tasks: Vec<Arc<Task>> = ctx
        .tasks
        .by_index(BY_NODE, &node.metadata.name)
        .into_iter()
        .filter(|t| !t.is_terminal() && !stays(t))
        .collect();
    if tasks.is_empty() {
        return Ok(());
    }
    let message = format!(
        "node {} stopped renewing its lease ({since})",
        node.metadata.name
    );
    for task in &tasks {
        mark_lost(ctx, task, &message).await?;
    }
    for task in &tasks {
        observe(&ctx.tasks, &ObjectKey::of(task.as_ref()), |t| {
            t.is_none_or(Task::is_terminal)
        })
        .await;
    }
    let recorder = ctx.recorder(COMPONENT);
    let names: Vec<&str> = tasks.iter().map(|t| t.metadata.name.as_str()).collect();
    publish(
        &recorder,
        node,
        EventType::Warning,
        "TasksLost",
        &format!("marked {} lost: {}", names.len(), summarize(&names)),
    )
    .await;
    Ok(())
}

/// Adds or removes the unreachable taint and sets the Ready condition, each
/// conditioned on the node's resourceVersion.
async fn write_node(
    ctx: &Context,
    node: &Node,
    tainted: bool,
    ready: Option<Condition>,
) -> Result<()> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let name = &node.metadata.name;
    let mut version = node.metadata.resource_version.clone();
    if tainted != has_taint(node) {
        let mut taints: Vec<Taint> = node
            .spec
            .taints
            .iter()
            .filter(|t| t.key != TAINT_UNREACHABLE)
            .cloned()
            .collect();
        if tainted {
            taints.push(unreachable_taint());
        }
        let patch = json!({"metadata": {"resourceVersion": version}, "spec": {"taints": taints}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(written) => version = written.metadata.resource_version,
            // Changed meanwhile: the change brings us back.
            Err(error) if error.is_conflict() || error.is_not_found() => return Ok(()),
            Err(error) => return Err(Error::api("taint node", name.clone())(error)),
        }
    }
    if let Some(condition) = ready {
        let mut conditions = node
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let mut condition = condition;
        // Keep the nodelet's own heartbeat time.
        condition.last_heartbeat_time =
            api_types::meta::find_condition(&conditions, NODE_CONDITION_READY)
                .and_then(|c| c.last_heartbeat_time);
        set_condition(&mut conditions, condition, Utc::now());
        let patch = json!({"metadata": {"resourceVersion": version},
                           "status": {"conditions": conditions}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(written) => version = written.metadata.resource_version,
            Err(error) if error.is_conflict() || error.is_not_found() => return Ok(()),
            Err(error) => {
                return Err(Error::api("set the Ready condition of", name.clone())(
                    error,
                ));
            }
        }
    }
    observe(&ctx.nodes, &ObjectKey::new("", name), |n| {
        n.is_none_or(|n| crate::at_least(n, &version))
    })
    .await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_age_decides() {
        let grace = Duration::from_secs(40);
        let lost = Duration::from_secs(60);
        let secs = Duration::from_secs;
        assert_eq!(health(secs(10), grace, lost), Health::Alive(secs(30)));
        assert_eq!(health(secs(50), grace, lost), Health::Unreachable(secs(50)));
        assert_eq!(health(secs(100), grace, lost), Health::Lost);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_is_a_change_seen_by_the_controller() {
        let beats = Heartbeats::default();
        let start = Instant::now();
        assert_eq!(
            beats.age("n1", "5", start),
            Duration::ZERO,
            "first sighting"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            beats.age("n1", "5", Instant::now()),
            Duration::from_secs(30)
        );
        assert_eq!(
            beats.age("n1", "9", Instant::now()),
            Duration::ZERO,
            "renewed"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(beats.age("n1", "9", Instant::now()), Duration::from_secs(5));
        assert_eq!(beats.age("n2", "", Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewing_node_is_left_alone_and_a_silent_one_is_acted_on() {
        use client::watcher::Event;
        let fixture = crate::testing::fixture();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let mut lease: api_types::Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "namespace": api_types::well_known::NODE_LEASE_NAMESPACE, "resourceVersion": "1"},
            "spec": {"holderIdentity": "n1"},
        }))
        .unwrap();
        fixture.nodes.apply(&Event::Apply(node.clone()));
        fixture.leases.apply(&Event::Apply(lease.clone()));
        let node = Arc::new(node);
        // Renewed every 30 s for two minutes: never a request, always a look soon.
        for version in 2..6 {
            let action = reconcile(node.clone(), fixture.ctx.clone()).await.unwrap();
            assert!(action.requeue_after().unwrap() <= Duration::from_secs(41));
            tokio::time::advance(Duration::from_secs(30)).await;
            lease.metadata.resource_version = version.to_string();
            fixture.leases.apply(&Event::Apply(lease.clone()));
        }
        reconcile(node.clone(), fixture.ctx.clone()).await.unwrap();
        // Silent past the grace: it must write (and this API refuses every request).
        tokio::time::advance(Duration::from_secs(45)).await;
        assert!(reconcile(node, fixture.ctx.clone()).await.is_err());
    }

    #[test]
    fn tasks_tolerating_the_taint_for_ever_stay() {
        let mut task = Task::default();
        assert!(!stays(&task));
        task.spec.tolerations.push(api_types::Toleration {
            key: TAINT_UNREACHABLE.into(),
            operator: Some(api_types::TolerationOperator::Exists),
            ..Default::default()
        });
        assert!(stays(&task));
        task.spec.tolerations[0].toleration_seconds = Some(30);
        assert!(!stays(&task));
    }
}
