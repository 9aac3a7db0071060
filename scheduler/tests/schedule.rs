//! The scheduler against a real API server: pending tasks are bound to nodes
//! that fit, and a task that fits nowhere says why.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use api_types::well_known::REASON_PREEMPTED;
use api_types::{Node, Task};
use client::{Api, ListParams, PostParams};
use loom_testing::TestServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn node(name: &str, cpu: &str, memory: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Node", "metadata": {"name": name},
        "status": {"allocatable": {"cpu": cpu, "memory": memory},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn task(name: &str, cpu: &str, priority: i32) -> Task {
    serde_json::from_value(json!({
        "apiVersion": "loom.dev/v1", "kind": "Task", "metadata": {"name": name},
        "spec": {"image": "busybox", "priority": priority, "resources": {"cpu": cpu, "memory": "256Mi"}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_are_bound_and_the_unfit_told_why() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node("big", "2", "4Gi"))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("small", "1", "1Gi"))
        .await
        .unwrap();
    let mut cordoned = node("cordoned", "8", "16Gi");
    cordoned.spec.unschedulable = true;
    nodes
        .create(&PostParams::default(), &cordoned)
        .await
        .unwrap();
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        tasks
            .create(&PostParams::default(), &task(&format!("t{i}"), "500m", i))
            .await
            .unwrap();
    }
    tasks
        .create(&PostParams::default(), &task("huge", "4", 0))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(scheduler::run(client.clone(), stop.clone()));

    let deadline = Instant::now() + Duration::from_secs(20);
    let placed = loop {
        let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
        let bound: Vec<&Task> = all
            .iter()
            .filter(|t| !t.spec.node_name.is_empty())
            .collect();
        let huge = all.iter().find(|t| t.metadata.name == "huge").unwrap();
        let told = huge
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Scheduled"))
            .map(|c| c.message.clone());
        let t0_told = all
            .iter()
            .find(|t| t.metadata.name == "t0")
            .and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Scheduled"));
        if let (5, Some(told), true) = (bound.len(), told, t0_told) {
            assert_eq!(
                told, "0/3 nodes: 2 insufficient cpu, 1 unschedulable",
                "the unfit task says why"
            );
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not scheduled in time: {} bound",
            bound.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Never more than a node holds: big takes 4 × 500m, small 2 × 500m.
    let on = |name: &str| placed.iter().filter(|t| t.spec.node_name == name).count();
    assert!(
        on("big") <= 4 && on("small") <= 2,
        "big {} small {}",
        on("big"),
        on("small")
    );
    assert_eq!(on("cordoned"), 0);
    let bound = placed.iter().find(|t| t.metadata.name == "t0").unwrap();
    let condition = bound
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap();
    assert_eq!(condition.reason, "Scheduled");
    stop.cancel();
    scheduler.await.unwrap();
}

/// Polls `check` every 25 ms until it returns `Some`, failing after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Millicores and tasks with each host port bound to each node; fails on over-commit.
fn assert_not_overcommitted(nodes: &[(&str, i128)], tasks: &[Task]) {
    for (name, cpu) in nodes {
        let on: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.spec.node_name == *name && !t.is_terminal())
            .collect();
        let used: i128 = on
            .iter()
            .map(|t| t.spec.resources.cpu.as_ref().unwrap().milli_value())
            .sum();
        assert!(
            used <= *cpu,
            "node {name} over-committed: {used}m of {cpu}m"
        );
        let mut ports: Vec<i32> = on
            .iter()
            .flat_map(|t| t.spec.resources.ports.clone())
            .collect();
        let all = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), all, "node {name} has a host port twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_racing_never_overcommit_and_bind_every_schedulable_task() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let sizes = [("n1", 2000), ("n2", 2000), ("n3", 3000), ("n4", 1000)];
    for (name, cpu) in sizes {
        nodes
            .create(
                &PostParams::default(),
                &node(name, &format!("{cpu}m"), "64Gi"),
            )
            .await
            .unwrap();
    }
    // Both schedulers start before the tasks exist, so they race for every one.
    let stop = CancellationToken::new();
    let a = tokio::spawn(scheduler::run(client.clone(), stop.clone()));
    let b = tokio::spawn(scheduler::run(client.clone(), stop.clone()));
    // 8 cores of room: 12 tasks of 500m and 4 of 500m wanting host port 8080 (one a
    // node) fit exactly; 4 more of 500m do not.
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    // One priority: no preemption here.
    for i in 0..20 {
        let mut t = task(&format!("t{i}"), "500m", 0);
        if i % 5 == 0 {
            t.spec.resources.ports = vec![8080];
        }
        tasks.create(&PostParams::default(), &t).await.unwrap();
    }
    let all = eventually(30, "16 tasks bound, 4 told why not", || {
        let tasks = tasks.clone();
        async move {
            let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
            // Checked on every observation, not only at the end.
            assert_not_overcommitted(&sizes, &all);
            let bound = all.iter().filter(|t| !t.spec.node_name.is_empty()).count();
            let told = all
                .iter()
                .filter(|t| t.spec.node_name.is_empty())
                .filter(|t| {
                    t.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Scheduled" && c.reason == "Unschedulable")
                    })
                })
                .count();
            (bound == 16 && told == 4).then_some(all)
        }
    })
    .await;
    // The ports went one a node.
    let with_port: Vec<&str> = all
        .iter()
        .filter(|t| !t.spec.resources.ports.is_empty())
        .map(|t| t.spec.node_name.as_str())
        .collect();
    assert_eq!(with_port.len(), 4);
    // Nothing more binds later either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
    assert_not_overcommitted(&sizes, &all);
    assert_eq!(
        all.iter().filter(|t| !t.spec.node_name.is_empty()).count(),
        16
    );
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_binds_when_a_node_joins_or_a_task_ends() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    nodes
        .create(&PostParams::default(), &node("small", "1", "4Gi"))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(scheduler::run(client.clone(), stop.clone()));
    tasks
        .create(&PostParams::default(), &task("first", "1", 0))
        .await
        .unwrap();
    tasks
        .create(&PostParams::default(), &task("second", "1", 0))
        .await
        .unwrap();
    tasks
        .create(&PostParams::default(), &task("big", "4", 0))
        .await
        .unwrap();
    let node_of = |name: &'static str| {
        let tasks = tasks.clone();
        move || {
            let tasks = tasks.clone();
            async move {
                let t = tasks.get(name).await.unwrap();
                (!t.spec.node_name.is_empty()).then_some(t.spec.node_name)
            }
        }
    };
    let unschedulable = |name: &'static str| {
        let tasks = tasks.clone();
        move || {
            let tasks = tasks.clone();
            async move {
                let t = tasks.get(name).await.unwrap();
                t.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Unschedulable"))
                    .then_some(())
            }
        }
    };
    let first = eventually(20, "a first task bound", || {
        let tasks = tasks.clone();
        async move {
            let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
            all.into_iter()
                .find(|t| !t.spec.node_name.is_empty())
                .map(|t| t.metadata.name)
        }
    })
    .await;
    let other: &'static str = if first == "first" { "second" } else { "first" };
    eventually(20, "the other told to wait", unschedulable(other)).await;
    eventually(20, "big told to wait", unschedulable("big")).await;
    // A node joins: big fits there.
    nodes
        .create(&PostParams::default(), &node("large", "8", "16Gi"))
        .await
        .unwrap();
    assert_eq!(eventually(20, "big bound", node_of("big")).await, "large");
    // Whichever of first and second waits now binds when the bound one ends.
    let on_large = tasks.get(other).await.unwrap().spec.node_name;
    if on_large.is_empty() {
        let patch = client::Patch::Merge(json!({"status": {"phase": "Completed"}}));
        tasks
            .patch_status(&first, &client::PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    eventually(20, "the other bound", node_of(other)).await;
    stop.cancel();
    scheduler.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_task_preempts_the_cheapest_victims() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        nodes
            .create(&PostParams::default(), &node(name, "2", "8Gi"))
            .await
            .unwrap();
    }
    // a holds two priority-1 tasks, b one priority-5 task; both are full.
    let mut placed = Vec::new();
    for (name, on, cpu, priority) in [
        ("low1", "a", "1", 1),
        ("low2", "a", "1", 1),
        ("mid", "b", "2", 5),
    ] {
        let mut t = task(name, cpu, priority);
        t.spec.node_name = on.into();
        placed.push(tasks.create(&PostParams::default(), &t).await.unwrap());
    }
    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(scheduler::run(client.clone(), stop.clone()));
    tasks
        .create(&PostParams::default(), &task("urgent", "1", 10))
        .await
        .unwrap();
    let node = eventually(30, "urgent bound", || {
        let tasks = tasks.clone();
        async move {
            let t = tasks.get("urgent").await.unwrap();
            (!t.spec.node_name.is_empty()).then_some(t.spec.node_name)
        }
    })
    .await;
    assert_eq!(
        node, "a",
        "one priority-1 victim is cheaper than a priority-5 one"
    );
    let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
    let killed: Vec<&Task> = all
        .iter()
        .filter(|t| t.phase() == api_types::TaskPhase::Killed)
        .collect();
    assert_eq!(killed.len(), 1, "the fewest victims");
    let victim = killed[0];
    assert!(victim.metadata.name.starts_with("low"));
    let status = victim.status.as_ref().unwrap();
    assert_eq!(status.reason, REASON_PREEMPTED);
    assert!(
        status.message.contains("default/urgent"),
        "{}",
        status.message
    );
    let mid = all.iter().find(|t| t.metadata.name == "mid").unwrap();
    assert!(!mid.is_terminal());
    // The victim was terminal before the preemptor was bound there.
    let urgent = all.iter().find(|t| t.metadata.name == "urgent").unwrap();
    let vrv: u64 = victim.metadata.resource_version.parse().unwrap();
    let urv: u64 = urgent.metadata.resource_version.parse().unwrap();
    assert!(
        vrv < urv,
        "victim killed at {vrv}, preemptor bound by {urv}"
    );
    assert_not_overcommitted(&[("a", 2000), ("b", 2000)], &all);
    // The victim has an Event saying why.
    let events: Api<api_types::Event> = Api::namespaced(client.clone(), "default");
    let reason = eventually(10, "the Preempted event", || {
        let events = events.clone();
        let name = victim.metadata.name.clone();
        async move {
            let (all, _) = events.list_all(&ListParams::default()).await.unwrap();
            all.into_iter()
                .find(|e| e.involved_object.name == name && e.reason == REASON_PREEMPTED)
                .map(|e| e.message)
        }
    })
    .await;
    assert!(reason.contains("default/urgent"));
    stop.cancel();
    scheduler.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_racing_over_mixed_sizes_leave_only_tasks_that_fit_nowhere() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let sizes: Vec<(String, i128)> = (0..6)
        .map(|i| (format!("n{i}"), 1000 + 500 * i128::from(i % 3)))
        .collect();
    for (name, cpu) in &sizes {
        nodes
            .create(
                &PostParams::default(),
                &node(name, &format!("{cpu}m"), "64Gi"),
            )
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let a = tokio::spawn(scheduler::run(client.clone(), stop.clone()));
    let b = tokio::spawn(scheduler::run(client.clone(), stop.clone()));
    // 60 tasks of 100m to 700m: nearly three times what the nodes hold.
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    // Created all at once, so that the schedulers race for them.
    let creates: Vec<_> = (0..60)
        .map(|i| {
            let tasks = tasks.clone();
            let cpu = 100 + 100 * (i * 5 % 7);
            tokio::spawn(async move {
                tasks
                    .create(
                        &PostParams::default(),
                        &task(&format!("t{i}"), &format!("{cpu}m"), 0),
                    )
                    .await
                    .unwrap();
            })
        })
        .collect();
    for create in creates {
        create.await.unwrap();
    }
    let named: Vec<(&str, i128)> = sizes.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    // Eventually every task left waiting fits on no node, given where the others
    // went (room held by a lost race is given back); never is a node over-committed.
    let all = eventually(60, "only tasks that fit nowhere left waiting", || {
        let tasks = tasks.clone();
        let named = named.clone();
        async move {
            let (all, _) = tasks.list_all(&ListParams::default()).await.unwrap();
            assert_not_overcommitted(&named, &all);
            let free: Vec<i128> = named
                .iter()
                .map(|(name, cpu)| {
                    let used: i128 = all
                        .iter()
                        .filter(|t| t.spec.node_name == *name)
                        .map(|t| t.spec.resources.cpu.as_ref().unwrap().milli_value())
                        .sum();
                    cpu - used
                })
                .collect();
            let waiting_fit_nowhere = all.iter().filter(|t| t.spec.node_name.is_empty()).all(|t| {
                let want = t.spec.resources.cpu.as_ref().unwrap().milli_value();
                free.iter().all(|room| *room < want)
                    && t.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Unschedulable"))
            });
            waiting_fit_nowhere.then_some(all)
        }
    })
    .await;
    assert!(all.iter().any(|t| t.spec.node_name.is_empty()));
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();
}
