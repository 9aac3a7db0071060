//! The Service reconciler: `replicas` running tasks of the current template, rolled
//! over to a new template within `maxSurge` and `maxUnavailable`.
//!
//! Each task carries the hash of the template it was made from
//! (`loom.dev/template-hash`); tasks of another hash are old. A rollout adds new
//! tasks while the total stays within `replicas + maxSurge`, and removes old ones
//! only while at least `replicas - maxUnavailable` tasks stay ready (an old task
//! that is not ready counts for nothing and goes first). A task is ready when it
//! runs and its `Ready` condition, if any, is True. Tasks are removed by deleting
//! them (the nodelet stops a deleted task). A task of the new template that
//! failed, or restarted `rollout_failure_restarts` times without becoming ready,
//! fails the rollout: the `Progressing` condition goes False with reason
//! `RolloutFailed` and no further new task is made until the template changes.
//! Finished tasks are deleted, except the failed ones of the current template,
//! which stay as the record of why the rollout failed. A task that ended with
//! its node (phase `Lost`, or `Failed` with reason `ShimLost` or `NodeLost`)
//! says nothing about the template: it is deleted and replaced, and never
//! fails a rollout.

use std::sync::Arc;

use api_types::event::EventType;
use api_types::kinds::task::TASK_CONDITION_READY;
use api_types::meta::{find_condition, set_condition};
use api_types::well_known::{
    LABEL_SERVICE, LABEL_TEMPLATE_HASH, REASON_NODE_LOST, REASON_SHIM_LOST,
};
use api_types::{
    Condition, ConditionStatus, ObjectMeta, OwnerReference, RestartPolicy, Service, ServiceStatus,
    Task, TaskPhase, TaskTemplate,
};
use chrono::Utc;
use client::{Action, Api, DeleteParams, ObjectKey, PostParams};
use tracing::info;

use crate::{Context, Error, Result, at_least, key_of, observe, publish, summarize};

/// The Events' component.
pub const COMPONENT: &str = "service-controller";
/// The condition saying whether enough tasks are ready.
pub const CONDITION_AVAILABLE: &str = "Available";
/// The condition saying how the rollout goes.
pub const CONDITION_PROGRESSING: &str = "Progressing";

/// A stable hash of a template (FNV-1a over its JSON), as 10 hex digits.
pub fn template_hash(template: &TaskTemplate) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

/// A new task of the service's current template.
pub fn build_task(service: &Service, hash: &str) -> Task {
    let mut spec = service.spec.template.spec.clone();
    spec.restart_policy = Some(RestartPolicy::Always);
    let mut labels = service.spec.template.metadata.labels.clone();
    if service.metadata.name.len() <= 63 {
        labels.insert(LABEL_SERVICE.to_owned(), service.metadata.name.clone());
    }
    labels.insert(LABEL_TEMPLATE_HASH.to_owned(), hash.to_owned());
    Task {
        metadata: ObjectMeta {
            generate_name: format!("{}-{hash}-", service.metadata.name),
            namespace: service.metadata.namespace.clone(),
            labels,
            annotations: service.spec.template.metadata.annotations.clone(),
            owner_references: vec![OwnerReference::to(service, true)],
            ..ObjectMeta::default()
        },
        spec,
        ..Task::default()
    }
}

/// Whether a task runs and is ready.
pub fn is_ready(task: &Task) -> bool {
    task.phase() == TaskPhase::Running
        && task
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, TASK_CONDITION_READY))
            .is_none_or(Condition::is_true)
}

/// Whether a task ended because its node crashed or went away rather than by
/// anything of its template: `Failed` with reason `ShimLost` (what a nodelet
/// before the crash fix wrote, and what a data dir from then still holds) or
/// `NodeLost`. Such a task is replaced like a `Lost` one; it never fails a
/// rollout.
pub fn lost_with_its_node(task: &Task) -> bool {
    let reason = task.status.as_ref().map_or("", |s| s.reason.as_str());
    task.phase() == TaskPhase::Failed && [REASON_SHIM_LOST, REASON_NODE_LOST].contains(&reason)
}

fn hash_of(task: &Task) -> &str {
    task.metadata
        .labels
        .get(LABEL_TEMPLATE_HASH)
        .map_or("", String::as_str)
}

/// What the reconcile should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// How many new tasks to create.
    pub create: usize,
    /// Tasks to delete: removed replicas and finished tasks.
    pub delete: Vec<Arc<Task>>,
    /// The status once that is done.
    pub status: ServiceStatus,
    /// Why the rollout failed, if it did.
    pub failure: Option<String>,
}

/// Plans one step of a service's life from its tasks.
pub fn plan(service: &Service, tasks: &[Arc<Task>], failure_restarts: i32) -> Plan {
    let hash = template_hash(&service.spec.template);
    let desired = service.spec.replicas().max(0);
    let strategy = service.spec.strategy();
    let surge = strategy
        .max_surge()
        .resolve(desired, true)
        .unwrap_or(1)
        .max(0);
    let mut unavailable = strategy
        .max_unavailable()
        .resolve(desired, false)
        .unwrap_or(0)
        .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let min_available = (desired - unavailable).max(0);
    let mut plan = Plan::default();

    let failure = tasks.iter().filter(|t| hash_of(t) == hash).find_map(|t| {
        let status = t.status.as_ref()?;
        if status.phase == TaskPhase::Failed && !lost_with_its_node(t) {
            let why = if status.reason.is_empty() {
                "failed".to_owned()
            } else {
                format!("failed ({})", status.reason)
            };
            Some(format!(
                "task {} of the new template {why}",
                t.metadata.name
            ))
        } else if !t.is_terminal() && !is_ready(t) && status.restart_count >= failure_restarts {
            Some(format!(
                "task {} of the new template restarted {} times without becoming ready",
                t.metadata.name, status.restart_count
            ))
        } else {
            None
        }
    });
    for task in tasks.iter().filter(|t| t.is_terminal()) {
        let keep =
            task.phase() == TaskPhase::Failed && hash_of(task) == hash && !lost_with_its_node(task);
        if !keep {
            plan.delete.push(task.clone());
        }
    }
    let active: Vec<&Arc<Task>> = tasks.iter().filter(|t| !t.is_terminal()).collect();
    let (mut new, mut old): (Vec<&Arc<Task>>, Vec<&Arc<Task>>) =
        active.into_iter().partition(|t| hash_of(t) == hash);
    // Unready first, then the youngest: the cheapest to lose.
    let order = |a: &&Arc<Task>, b: &&Arc<Task>| {
        is_ready(a).cmp(&is_ready(b)).then(
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp),
        )
    };
    new.sort_by(order);
    old.sort_by(order);
    let count = |v: &[&Arc<Task>]| i32::try_from(v.len()).unwrap_or(i32::MAX);
    let ready_count = |v: &[&Arc<Task>]| {
        i32::try_from(v.iter().filter(|t| is_ready(t)).count()).unwrap_or(i32::MAX)
    };

    // Too many of the current template: the extra go (scale down).
    let excess = (count(&new) - desired).max(0);
    let mut removed_new = 0;
    for task in new.iter().take(usize::try_from(excess).unwrap_or(0)) {
        plan.delete.push((*task).clone());
        removed_new += 1;
    }
    let new_left: Vec<&Arc<Task>> = new.iter().skip(removed_new).copied().collect();

    // Old tasks go while enough stay ready.
    let mut ready_total = ready_count(&new_left) + ready_count(&old);
    let mut old_left = Vec::new();
    for task in old {
        if !is_ready(task) {
            plan.delete.push(task.clone());
        } else if ready_total > min_available {
            plan.delete.push(task.clone());
            ready_total -= 1;
        } else {
            old_left.push(task);
        }
    }

    // New tasks come while the total stays within replicas + maxSurge.
    let total = count(&new_left) + count(&old_left);
    let room = desired + surge - total;
    let wanted = desired - count(&new_left);
    if failure.is_none() {
        plan.create = usize::try_from(wanted.min(room).max(0)).unwrap_or(0);
    }
    let created = i32::try_from(plan.create).unwrap_or(0);

    let old_status = service.status.clone().unwrap_or_default();
    let mut status = ServiceStatus {
        replicas: total + created,
        updated_replicas: count(&new_left) + created,
        ready_replicas: ready_total,
        available_replicas: ready_total,
        observed_generation: Some(service.metadata.generation),
        conditions: old_status.conditions.clone(),
    };
    let now = Utc::now();
    let available = if ready_total >= min_available {
        Condition::new(
            CONDITION_AVAILABLE,
            ConditionStatus::True,
            "MinimumReplicasAvailable",
            format!("{ready_total} of {desired} tasks ready"),
        )
    } else {
        Condition::new(
            CONDITION_AVAILABLE,
            ConditionStatus::False,
            "MinimumReplicasUnavailable",
            format!("{ready_total} of {desired} tasks ready; at least {min_available} wanted"),
        )
    };
    set_condition(&mut status.conditions, available, now);
    let progressing = if let Some(why) = &failure {
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::False,
            "RolloutFailed",
            why.clone(),
        )
    } else if old_left.is_empty()
        && ready_count(&new_left) == desired
        && count(&new_left) == desired
        && created == 0
    {
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::True,
            "RolloutComplete",
            format!("{desired} of {desired} tasks run the current template"),
        )
    } else {
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::True,
            "RollingOut",
            format!(
                "{} of {desired} tasks run the current template",
                count(&new_left) + created
            ),
        )
    };
    set_condition(&mut status.conditions, progressing, now);
    plan.status = status;
    plan.failure = failure;
    plan
}

fn progressing_reason(status: Option<&ServiceStatus>) -> String {
    status
        .and_then(|s| find_condition(&s.conditions, CONDITION_PROGRESSING))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// Reconciles one Service.
pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wait_ready().await;
    if service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = &service.metadata.namespace;
    let tasks = ctx.tasks_controlled_by(namespace, &service.metadata.uid);
    let plan = plan(&service, &tasks, ctx.config.rollout_failure_restarts);
    let api: Api<Task> = Api::namespaced(ctx.client.clone(), namespace);
    let recorder = ctx.recorder(COMPONENT);

    for task in &plan.delete {
        match api
            .delete(&task.metadata.name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(Error::api("delete task", key_of(task.as_ref()))(error)),
        }
    }
    for task in &plan.delete {
        observe(&ctx.tasks, &ObjectKey::of(task.as_ref()), |t| {
            t.is_none_or(|t| {
                t.metadata.uid != task.metadata.uid || t.metadata.deletion_timestamp.is_some()
            })
        })
        .await;
    }
    let hash = template_hash(&service.spec.template);
    let mut created = Vec::new();
    for _ in 0..plan.create {
        match api
            .create(&PostParams::default(), &build_task(&service, &hash))
            .await
        {
            Ok(task) => created.push(task.metadata.name),
            Err(error) => {
                publish(
                    &recorder,
                    service.as_ref(),
                    EventType::Warning,
                    "FailedCreate",
                    &format!("cannot create a task: {error}"),
                )
                .await;
                return Err(Error::api("create task for", key_of(service.as_ref()))(
                    error,
                ));
            }
        }
    }
    for name in &created {
        observe(&ctx.tasks, &ObjectKey::new(namespace, name), |t| {
            t.is_some()
        })
        .await;
    }

    let removed: Vec<&str> = plan
        .delete
        .iter()
        .filter(|t| !t.is_terminal())
        .map(|t| t.metadata.name.as_str())
        .collect();
    if !created.is_empty() {
        publish(
            &recorder,
            service.as_ref(),
            EventType::Normal,
            "TasksCreated",
            &format!("created {}", summarize(&created)),
        )
        .await;
    }
    if !removed.is_empty() {
        publish(
            &recorder,
            service.as_ref(),
            EventType::Normal,
            "TasksRemoved",
            &format!("removed {}", summarize(&removed)),
        )
        .await;
    }

    let before = progressing_reason(service.status.as_ref());
    let after = progressing_reason(Some(&plan.status));
    if service.status.as_ref() != Some(&plan.status) {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
        let mut updated = (*service).clone();
        updated.status = Some(plan.status.clone());
        match services
            .replace_status(&service.metadata.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => {
                let version = written.metadata.resource_version;
                observe(&ctx.services, &ObjectKey::of(service.as_ref()), |s| {
                    s.is_none_or(|s| at_least(s, &version))
                })
                .await;
            }
            Err(error) if error.is_conflict() || error.is_not_found() => {
                return Ok(Action::await_change());
            }
            Err(error) => {
                return Err(Error::api(
                    "write status of service",
                    key_of(service.as_ref()),
                )(error));
            }
        }
        if before != after {
            match (after.as_str(), &plan.failure) {
                ("RolloutFailed", Some(why)) => {
                    info!(service = %key_of(service.as_ref()), %why, "rollout failed");
                    publish(
                        &recorder,
                        service.as_ref(),
                        EventType::Warning,
                        "RolloutFailed",
                        why,
                    )
                    .await;
                }
                ("RolloutComplete", _) => {
                    publish(
                        &recorder,
                        service.as_ref(),
                        EventType::Normal,
                        "RolloutComplete",
                        "every task runs the current template",
                    )
                    .await;
                }
                _ => {}
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::TaskStatus;
    use serde_json::json;

    fn service(image: &str, replicas: i32, surge: i32, unavailable: i32) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "s1", "generation": 2},
            "spec": {"replicas": replicas,
                     "strategy": {"maxSurge": surge, "maxUnavailable": unavailable},
                     "template": {"spec": {"image": image}}},
        }))
        .unwrap()
    }

    fn task(service: &Service, name: &str, phase: TaskPhase) -> Arc<Task> {
        let mut task = build_task(service, &template_hash(&service.spec.template));
        task.metadata.name = name.into();
        task.status = Some(TaskStatus {
            phase,
            ..TaskStatus::default()
        });
        Arc::new(task)
    }

    #[test]
    fn the_hash_follows_the_template_and_tasks_restart_always() {
        let v1 = service("web:1", 3, 1, 0);
        let v2 = service("web:2", 3, 1, 0);
        assert_ne!(
            template_hash(&v1.spec.template),
            template_hash(&v2.spec.template)
        );
        assert_eq!(template_hash(&v1.spec.template).len(), 10);
        let task = build_task(&v1, "h");
        assert_eq!(task.spec.restart_policy, Some(RestartPolicy::Always));
        assert_eq!(task.metadata.labels[LABEL_SERVICE], "web");
        assert_eq!(task.metadata.generate_name, "web-h-");
    }

    #[test]
    fn a_rollout_with_no_unavailability_surges_first() {
        let v1 = service("web:1", 3, 1, 0);
        let old: Vec<_> = (0..3)
            .map(|i| task(&v1, &format!("old{i}"), TaskPhase::Running))
            .collect();
        let v2 = service("web:2", 3, 1, 0);
        let p = plan(&v2, &old, 3);
        assert_eq!(p.create, 1, "one surge task");
        assert!(
            p.delete.is_empty(),
            "no old task goes before a new one is ready"
        );
        // The new one pending: still nothing goes.
        let mut tasks = old.clone();
        tasks.push(task(&v2, "new0", TaskPhase::Pending));
        let p = plan(&v2, &tasks, 3);
        assert_eq!((p.create, p.delete.len()), (0, 0));
        // Ready: one old goes, and another new one comes.
        tasks.pop();
        tasks.push(task(&v2, "new0", TaskPhase::Running));
        let p = plan(&v2, &tasks, 3);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.create, 1);
        assert_eq!(p.status.updated_replicas, 2);
    }

    #[tokio::test]
    async fn a_settled_service_needs_no_request() {
        use client::watcher::Event;
        let fixture = crate::testing::fixture();
        let mut svc = service("web:1", 2, 1, 0);
        let tasks: Vec<_> = (0..2)
            .map(|i| task(&svc, &format!("web-{i}"), TaskPhase::Running))
            .collect();
        svc.status = Some(plan(&svc, &tasks, 3).status);
        for task in &tasks {
            fixture.tasks.apply(&Event::Apply((**task).clone()));
        }
        fixture.services.apply(&Event::Apply(svc.clone()));
        let reconciled = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            reconcile(Arc::new(svc), fixture.ctx.clone()),
        )
        .await
        .expect("no request was tried");
        assert_eq!(reconciled.unwrap(), Action::await_change());
    }

    #[test]
    fn scaling_and_failed_rollouts() {
        let svc = service("web:1", 2, 1, 1);
        let p = plan(&svc, &[], 3);
        assert_eq!(p.create, 2);
        let tasks: Vec<_> = (0..4)
            .map(|i| task(&svc, &format!("t{i}"), TaskPhase::Running))
            .collect();
        let p = plan(&svc, &tasks, 3);
        assert_eq!((p.create, p.delete.len()), (0, 2), "scaled down to 2");
        // A failed task of the template stops the rollout and stays as its record.
        let tasks = vec![
            task(&svc, "ok", TaskPhase::Running),
            task(&svc, "bad", TaskPhase::Failed),
        ];
        let p = plan(&svc, &tasks, 3);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
        let progressing = find_condition(&p.status.conditions, CONDITION_PROGRESSING).unwrap();
        assert_eq!(progressing.reason, "RolloutFailed");
        assert!(progressing.message.contains("bad"));
        // Lost tasks are removed and replaced.
        let tasks = vec![
            task(&svc, "ok", TaskPhase::Running),
            task(&svc, "gone", TaskPhase::Lost),
        ];
        let p = plan(&svc, &tasks, 3);
        assert_eq!((p.create, p.delete.len()), (1, 1));
    }

    #[test]
    fn tasks_failed_with_their_node_are_replaced_and_fail_no_rollout() {
        let svc = service("web:1", 3, 1, 0);
        for reason in [REASON_SHIM_LOST, REASON_NODE_LOST] {
            let mut crashed = (*task(&svc, "crashed", TaskPhase::Failed)).clone();
            if let Some(status) = crashed.status.as_mut() {
                status.reason = reason.into();
            }
            let tasks = vec![
                task(&svc, "a", TaskPhase::Running),
                task(&svc, "b", TaskPhase::Running),
                Arc::new(crashed),
            ];
            let p = plan(&svc, &tasks, 3);
            assert_eq!(p.failure, None, "{reason}");
            assert_eq!(p.create, 1, "{reason}: replaced");
            assert_eq!(
                p.delete
                    .iter()
                    .map(|t| t.metadata.name.as_str())
                    .collect::<Vec<_>>(),
                ["crashed"],
                "{reason}: removed"
            );
            let progressing = find_condition(&p.status.conditions, CONDITION_PROGRESSING).unwrap();
            assert_eq!(progressing.reason, "RollingOut", "{reason}");
        }
    }
}
