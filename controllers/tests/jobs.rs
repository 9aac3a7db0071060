//! The Job controller against the real API server and scheduler, with a test
//! nodelet playing the tasks.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use api_types::well_known::REASON_TIME_LIMIT_EXCEEDED;
use api_types::{JobPhase, TaskPhase};
use client::{Patch, PatchParams, PostParams};
use loom_testing::cluster::{Cluster, eventually, test_config};
use serde_json::json;

fn job_manifest(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "loom.dev/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn template(command: &[&str]) -> serde_json::Value {
    json!({"spec": {"image": "busybox", "command": command,
                    "resources": {"cpu": "100m", "memory": "32Mi"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_whose_middle_job_fails_never_runs_the_last() {
    let cluster = Cluster::start(&["n1", "n2"], test_config()).await;
    // Created last first: the order of creation must not matter.
    cluster
        .create_job(job_manifest(
            "report",
            json!({"dependsOn": ["train"], "template": template(&["true"])}),
        ))
        .await;
    cluster
        .create_job(job_manifest(
            "train",
            json!({"replicas": 2, "dependsOn": ["prep"], "template": template(&["exit", "3"])}),
        ))
        .await;
    let jobs = cluster.jobs();
    let report = eventually("report waiting for train", || async {
        let job = jobs.get("report").await.unwrap();
        let waiting = job
            .status
            .as_ref()
            .is_some_and(|s| s.reason == "WaitingForDependencies");
        waiting.then_some(job)
    })
    .await;
    let status = report.status.unwrap();
    assert_eq!(
        (status.phase, status.message.as_str()),
        (JobPhase::Waiting, "waiting for train")
    );
    cluster
        .create_job(job_manifest(
            "prep",
            json!({"template": template(&["exit", "0"])}),
        ))
        .await;

    let prep = cluster.job_in("prep", JobPhase::Completed).await;
    let prep_status = prep.status.unwrap();
    assert_eq!((prep_status.completed, prep_status.exit_code), (1, Some(0)));
    assert!(prep_status.start_time.is_some() && prep_status.end_time.is_some());

    let train = cluster.job_in("train", JobPhase::Failed).await;
    let status = train.status.unwrap();
    assert_eq!(status.reason, "TaskFailed");
    assert_eq!(status.exit_code, Some(3));
    assert!(
        status.message.contains("failed with exit code 3"),
        "{}",
        status.message
    );
    // Started only once prep had completed.
    for task in cluster.tasks_of("train").await {
        assert!(
            task.metadata.creation_timestamp.unwrap()
                >= prep_status.end_time.unwrap() - chrono::Duration::seconds(1)
        );
    }

    let report = cluster.job_in("report", JobPhase::Failed).await;
    let status = report.status.unwrap();
    assert_eq!(status.reason, "DependencyFailed");
    assert_eq!(status.message, "dependency train failed");
    assert!(status.end_time.is_some());
    assert!(
        cluster.tasks_of("report").await.is_empty(),
        "the last job never ran"
    );
    // Each transition left an Event a user can search for (published just after it).
    let events: client::Api<api_types::Event> =
        client::Api::namespaced(cluster.client.clone(), "default");
    let has = |all: &[api_types::Event], object: &str, reason: &str, message: Option<&str>| {
        all.iter().any(|e| {
            e.involved_object.name == object
                && e.reason == reason
                && message.is_none_or(|m| e.message == m)
        })
    };
    eventually("the events", || async {
        let (all, _) = events
            .list_all(&client::ListParams::default())
            .await
            .unwrap();
        let found = has(
            &all,
            "report",
            "DependencyFailed",
            Some("dependency train failed"),
        ) && has(
            &all,
            "train",
            "TasksCreated",
            Some("created train-0, train-1"),
        ) && has(&all, "train", "TaskFailed", None)
            && has(&all, "prep", "Completed", None);
        found.then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_placeholders_and_limits_reach_the_tasks() {
    let cluster = Cluster::start(&["n1"], test_config()).await;
    cluster
        .create_job(job_manifest(
            "shards",
            json!({
                "replicas": 4, "priority": 5, "timeLimitSeconds": 120,
                "outputDir": "/var/tmp/out", "logDir": "/var/tmp/logs",
                "inputs": [{"source": "/var/tmp/data", "target": "/data"}],
                "env": [{"name": "SHARD", "value": "{{index}}-of-{{replicas}}"}],
                "template": {"metadata": {"labels": {"team": "ml"}},
                             "spec": {"image": "busybox", "command": ["run", "{{job}}"],
                                      "args": ["--shard={{index}}"]}},
                "overrides": [{"indexes": "0,3", "spec": {"args": ["--leader"], "priority": 9}}],
            }),
        ))
        .await;
    let job = cluster.job_in("shards", JobPhase::Completed).await;
    assert_eq!(job.status.as_ref().unwrap().completed, 4);
    let tasks = cluster.tasks_of("shards").await;
    let names: Vec<&str> = tasks.iter().map(|t| t.metadata.name.as_str()).collect();
    assert_eq!(names, ["shards-0", "shards-1", "shards-2", "shards-3"]);
    for task in &tasks {
        let i = task.spec.index.unwrap();
        let leader = i == 0 || i == 3;
        let want_args = if leader {
            vec!["--leader".to_owned()]
        } else {
            vec![format!("--shard={i}")]
        };
        assert_eq!(task.spec.args, want_args, "{}", task.metadata.name);
        assert_eq!(task.spec.command, ["run", "shards"]);
        assert_eq!(task.spec.priority, Some(if leader { 9 } else { 5 }));
        assert_eq!(task.spec.time_limit_seconds, Some(120));
        // logDir is ignored (the node chooses log locations): no logPath is derived.
        assert_eq!(task.spec.log_path, "");
        let env = |name: &str| {
            task.spec
                .env
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.value.clone())
        };
        assert_eq!(env("SHARD"), Some(format!("{i}-of-4")));
        assert_eq!(env("LOOM_TASK_INDEX"), Some(i.to_string()));
        assert_eq!(env("LOOM_OUTPUT_DIR").as_deref(), Some("/output"));
        let output = task
            .spec
            .mounts
            .iter()
            .find(|m| m.target == "/output")
            .unwrap();
        assert_eq!(output.source, format!("/var/tmp/out/{i}"));
        assert!(!output.is_read_only());
        assert!(
            task.spec
                .mounts
                .iter()
                .any(|m| m.target == "/data" && m.is_read_only())
        );
        assert_eq!(task.metadata.labels["team"], "ml");
        let owner = task.metadata.owner_references.first().unwrap();
        assert_eq!(
            (owner.name.as_str(), owner.controller),
            ("shards", Some(true))
        );
        assert_eq!(owner.uid, job.metadata.uid);
    }

    // A task killed for its time limit fails its job (no retries left).
    cluster
        .create_job(job_manifest(
            "slow",
            json!({"timeLimitSeconds": 1, "template": template(&["overtime"])}),
        ))
        .await;
    let slow = cluster.job_in("slow", JobPhase::Failed).await;
    let status = slow.status.unwrap();
    assert_eq!(status.reason, REASON_TIME_LIMIT_EXCEEDED);
    assert_eq!(status.killed, 1);
    let task = &cluster.tasks_of("slow").await[0];
    assert_eq!(task.spec.time_limit_seconds, Some(1));
    assert_eq!(
        task.status.as_ref().unwrap().reason,
        REASON_TIME_LIMIT_EXCEEDED
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_retried_as_new_tasks_and_the_old_kept() {
    let cluster = Cluster::start(&["n1"], test_config()).await;
    cluster
        .create_job(job_manifest(
            "flaky",
            json!({"replicas": 2, "maxRetries": 1, "template": template(&["flaky"])}),
        ))
        .await;
    let job = cluster.job_in("flaky", JobPhase::Completed).await;
    let status = job.status.unwrap();
    assert_eq!((status.failed, status.completed), (2, 2));
    assert_eq!(status.exit_code, Some(0));
    let tasks = cluster.tasks_of("flaky").await;
    let summary: Vec<(&str, TaskPhase)> = tasks
        .iter()
        .map(|t| (t.metadata.name.as_str(), t.phase()))
        .collect();
    assert_eq!(
        summary,
        [
            ("flaky-0", TaskPhase::Failed),
            ("flaky-0-r1", TaskPhase::Completed),
            ("flaky-1", TaskPhase::Failed),
            ("flaky-1-r1", TaskPhase::Completed),
        ]
    );
    // Without retries the same failure fails the job.
    cluster
        .create_job(job_manifest(
            "brittle",
            json!({"template": template(&["flaky"])}),
        ))
        .await;
    let job = cluster.job_in("brittle", JobPhase::Failed).await;
    assert_eq!(job.status.unwrap().exit_code, Some(1));
    assert_eq!(cluster.tasks_of("brittle").await.len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_job_kills_its_tasks_and_keeps_its_record() {
    let cluster = Cluster::start(&["n1"], test_config()).await;
    cluster
        .create_job(job_manifest(
            "forever",
            json!({"replicas": 3, "parallelism": 2, "template": template(&["sleep"])}),
        ))
        .await;
    let tasks = cluster.tasks();
    eventually("two tasks running", || async {
        let running = cluster
            .tasks_of("forever")
            .await
            .iter()
            .filter(|t| t.phase() == TaskPhase::Running)
            .count();
        (running == 2).then_some(())
    })
    .await;
    assert_eq!(cluster.tasks_of("forever").await.len(), 2, "parallelism 2");
    cluster
        .jobs()
        .patch(
            "forever",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"killed": true}})),
        )
        .await
        .unwrap();
    let job = cluster.job_in("forever", JobPhase::Killed).await;
    let status = job.status.unwrap();
    assert_eq!((status.killed, status.running, status.pending), (2, 0, 0));
    assert!(status.end_time.is_some());
    for task in cluster.tasks_of("forever").await {
        let s = task.status.unwrap();
        assert_eq!(
            (s.phase, s.reason.as_str()),
            (TaskPhase::Killed, "JobKilled")
        );
    }
    // The record stays and nothing new starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.tasks_of("forever").await.len(), 2);
    assert!(tasks.get("forever-2").await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_never_duplicates_a_task() {
    let mut cluster = Cluster::start(&["n1", "n2"], test_config()).await;
    cluster
        .create_job(job_manifest(
            "steady",
            json!({"replicas": 24, "parallelism": 6, "template": template(&["work", "300"])}),
        ))
        .await;
    for round in 0..4 {
        let seen = cluster.tasks_of("steady").await.len();
        eventually(&format!("progress in round {round}"), || async {
            (cluster.tasks_of("steady").await.len() > seen).then_some(())
        })
        .await;
        cluster.kill_manager().await;
        cluster.start_manager(test_config());
    }
    let job = cluster.job_in("steady", JobPhase::Completed).await;
    assert_eq!(job.status.as_ref().unwrap().completed, 24);
    let names: BTreeSet<String> = cluster
        .tasks_of("steady")
        .await
        .into_iter()
        .map(|t| t.metadata.name)
        .collect();
    let want: BTreeSet<String> = (0..24).map(|i| format!("steady-{i}")).collect();
    assert_eq!(names, want, "one task an index, no duplicates");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_missing_and_self_dependencies_are_reported() {
    let cluster = Cluster::start(&["n1"], test_config()).await;
    cluster
        .create_job(job_manifest(
            "x",
            json!({"dependsOn": ["y"], "template": template(&["true"])}),
        ))
        .await;
    cluster
        .create_job(job_manifest(
            "y",
            json!({"dependsOn": ["x"], "template": template(&["true"])}),
        ))
        .await;
    cluster
        .create_job(job_manifest(
            "z",
            json!({"dependsOn": ["nope"], "template": template(&["true"])}),
        ))
        .await;
    let jobs = cluster.jobs();
    for (name, reason, message) in [
        (
            "x",
            "DependencyCycle",
            "dependencies form a cycle: x -> y -> x",
        ),
        (
            "y",
            "DependencyCycle",
            "dependencies form a cycle: y -> x -> y",
        ),
        (
            "z",
            "DependencyNotFound",
            "waiting for missing dependencies: nope",
        ),
    ] {
        let job = eventually(&format!("{name} {reason}"), || async {
            let job = jobs.get(name).await.unwrap();
            (job.status.as_ref().is_some_and(|s| s.reason == reason)).then_some(job)
        })
        .await;
        let status = job.status.unwrap();
        assert_eq!(status.phase, JobPhase::Waiting);
        assert_eq!(status.message, message);
    }
    // The missing dependency appears and completes: z runs.
    cluster
        .create_job(job_manifest(
            "nope",
            json!({"template": template(&["true"])}),
        ))
        .await;
    cluster.job_in("z", JobPhase::Completed).await;
    assert!(cluster.tasks_of("x").await.is_empty());

    let selfish: api_types::Job = serde_json::from_value(job_manifest(
        "selfish",
        json!({"dependsOn": ["selfish"], "template": template(&["true"])}),
    ))
    .unwrap();
    let error = jobs
        .create(&PostParams::default(), &selfish)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(422));
    assert!(
        error.to_string().contains("may not depend on itself"),
        "{error}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_with_a_ttl_go_with_their_tasks() {
    let cluster = Cluster::start(&["n1"], test_config()).await;
    let negative: api_types::Job = serde_json::from_value(job_manifest(
        "negative",
        json!({"ttlSecondsAfterFinished": -1, "template": template(&["true"])}),
    ))
    .unwrap();
    let error = cluster
        .jobs()
        .create(&PostParams::default(), &negative)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(422), "{error}");
    cluster
        .create_job(job_manifest(
            "brief",
            json!({"replicas": 2, "ttlSecondsAfterFinished": 1, "template": template(&["true"])}),
        ))
        .await;
    cluster
        .create_job(job_manifest(
            "kept",
            json!({"template": template(&["true"])}),
        ))
        .await;
    cluster.job_in("brief", JobPhase::Completed).await;
    let jobs = cluster.jobs();
    eventually("the job and its tasks deleted", || async {
        let gone = jobs.get_opt("brief").await.unwrap().is_none()
            && cluster.tasks_of("brief").await.is_empty();
        gone.then_some(())
    })
    .await;
    cluster.job_in("kept", JobPhase::Completed).await;
    assert_eq!(cluster.tasks_of("kept").await.len(), 1);
    cluster.shutdown().await;
}

/// A task whose run its node found dead after a crash (ShimLost, marked Lost
/// by a nodelet since the crash fix, Failed by one before) is run again
/// without using the job's retries: a job with `maxRetries: 0` still
/// completes, each index exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_lost_in_a_node_crash_are_retried_free() {
    use api_types::well_known::REASON_SHIM_LOST;
    let cluster = Cluster::start(&["n1"], test_config()).await;
    cluster
        .create_job(job_manifest(
            "crashy",
            json!({"replicas": 2, "maxRetries": 0, "template": template(&["work", "1500"])}),
        ))
        .await;
    for (index, phase) in [(0, "Failed"), (1, "Lost")] {
        let name = format!("crashy-{index}");
        eventually(&format!("{name} runs"), || async {
            let task = cluster.tasks().get_opt(&name).await.unwrap()?;
            (task.phase() == TaskPhase::Running).then_some(())
        })
        .await;
        cluster
            .tasks()
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"phase": phase, "reason": REASON_SHIM_LOST,
                    "message": "the run's shim died without recording its end"}}),
                ),
            )
            .await
            .unwrap();
    }
    let job = cluster.job_in("crashy", JobPhase::Completed).await;
    let status = job.status.unwrap();
    assert_eq!(status.completed, 2, "{status:?}");
    let tasks = cluster.tasks_of("crashy").await;
    let completed: Vec<_> = tasks
        .iter()
        .filter(|t| t.phase() == TaskPhase::Completed)
        .map(|t| t.metadata.name.clone())
        .collect();
    assert_eq!(completed.len(), 2, "one completion an index: {completed:?}");
    cluster.shutdown().await;
}
