//! Loom end to end: a real cluster of separate processes (etcd, two API servers,
//! the controllers, the scheduler, three nodelets in their own network
//! namespaces) driven through loomctl only, with real containers.
//!
//! One cluster serves every scenario, in order, because starting one is the
//! expensive part.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::time::{Duration, Instant};

use api_types::well_known::{
    LABEL_JOB, LABEL_JOB_INDEX, LABEL_SERVICE, REASON_NODE_LOST, REASON_SHIM_LOST,
};
use serde_json::Value;
use support::{Cluster, wait_for};

#[test]
fn cluster_runs_jobs_and_services_and_survives_failures() {
    if let Some(reason) = support::unsupported() {
        eprintln!("skipping the e2e suite: {reason}");
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let footprint = cluster.footprint();
    eprintln!("cluster up in {:?}", started.elapsed());

    let step = Instant::now();
    pipeline_and_failed_dependency(&cluster);
    eprintln!("pipeline and failed dependency: {:?}", step.elapsed());

    let step = Instant::now();
    service_rollout(&cluster);
    eprintln!("service rollout: {:?}", step.elapsed());

    let step = Instant::now();
    tasks_reach_each_other_across_nodes(&cluster);
    eprintln!("task network: {:?}", step.elapsed());

    let step = Instant::now();
    service_address_and_name_reach_ready_replicas(&cluster);
    eprintln!("service routing: {:?}", step.elapsed());

    let step = Instant::now();
    job_survives_control_plane_kills(&mut cluster);
    eprintln!("job through control-plane kills: {:?}", step.elapsed());

    let step = Instant::now();
    node_crash_and_restart(&mut cluster);
    eprintln!("node crash and restart: {:?}", step.elapsed());

    let step = Instant::now();
    let (cut, lost) = cut_node_loses_and_replaces_tasks(&mut cluster);
    eprintln!("cut node: {:?}", step.elapsed());

    let step = Instant::now();
    restored_link_rejoins_without_duplicates(&mut cluster, cut, &lost);
    eprintln!("restored link: {:?}", step.elapsed());

    let step = Instant::now();
    drop(cluster);
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left behind after teardown: {left:#?}");
    eprintln!(
        "teardown: {:?}; whole suite {:?}",
        step.elapsed(),
        started.elapsed()
    );
}

/// A DAG of three jobs with per-task overrides writes every output file; a job
/// whose dependency fails never runs.
fn pipeline_and_failed_dependency(cluster: &Cluster) {
    let out = |job: &str| cluster.output_dir(job).display().to_string();
    cluster.apply(
        "pipeline",
        &format!(
            r#"
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: prep}}
spec:
  replicas: 1
  outputDir: {prep}
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "echo prepared > $LOOM_OUTPUT_DIR/data.txt; echo prep done"]
      resources: {{cpu: 100m, memory: 32Mi}}
---
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: train}}
spec:
  replicas: 4
  parallelism: 2
  dependsOn: [prep]
  outputDir: {train}
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "echo shard {{{{index}}}} of {{{{replicas}}}} $0 > $LOOM_OUTPUT_DIR/shard.txt"]
      args: ["cold"]
      resources: {{cpu: 100m, memory: 32Mi}}
  overrides:
    - indexes: "0"
      spec: {{args: ["warm"]}}
    - indexes: "2-3"
      spec: {{args: ["late"]}}
---
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: report}}
spec:
  replicas: 1
  dependsOn: [train]
  outputDir: {report}
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "echo report > $LOOM_OUTPUT_DIR/report.txt"]
      resources: {{cpu: 100m, memory: 32Mi}}
---
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: doomed}}
spec:
  replicas: 1
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "exit 3"]
      resources: {{cpu: 100m, memory: 32Mi}}
---
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: after-doomed}}
spec:
  replicas: 1
  dependsOn: [doomed]
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "echo must not run"]
      resources: {{cpu: 100m, memory: 32Mi}}
"#,
            prep = out("prep"),
            train = out("train"),
            report = out("report"),
        ),
    );
    cluster.loomctl_ok(&[
        "wait",
        "job/report",
        "--for=phase=Completed",
        "--timeout",
        "90",
    ]);
    cluster.loomctl_ok(&[
        "wait",
        "job/after-doomed",
        "--for=phase=Failed",
        "--timeout",
        "60",
    ]);

    let read = |path: &str| {
        let path = cluster.output_dir("").join(path);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    assert_eq!(read("prep/0/data.txt"), "prepared\n");
    assert_eq!(read("train/0/shard.txt"), "shard 0 of 4 warm\n");
    assert_eq!(read("train/1/shard.txt"), "shard 1 of 4 cold\n");
    assert_eq!(read("train/2/shard.txt"), "shard 2 of 4 late\n");
    assert_eq!(read("train/3/shard.txt"), "shard 3 of 4 late\n");
    assert_eq!(read("report/0/report.txt"), "report\n");

    // The log, proxied by an API server from the node that ran the task.
    let prep_task = tasks_of_job(cluster, "prep")
        .first()
        .and_then(|t| t["metadata"]["name"].as_str().map(str::to_owned))
        .expect("a prep task");
    let log = cluster.loomctl_ok(&["logs", &prep_task]);
    assert!(log.contains("prep done"), "log of {prep_task}: {log:?}");

    let jobs = cluster.list("jobs");
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no job {name}"))
            .clone()
    };
    assert_eq!(job("doomed")["status"]["phase"], "Failed");
    let after = job("after-doomed");
    assert_eq!(after["status"]["phase"], "Failed", "{after:#}");
    assert_eq!(after["status"]["reason"], "DependencyFailed", "{after:#}");
    assert!(
        tasks_of_job(cluster, "after-doomed").is_empty(),
        "a job whose dependency failed made tasks"
    );
}

fn service_manifest(version: &str) -> String {
    format!(
        r#"
apiVersion: loom.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  replicas: 3
  strategy: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
      env: [{{name: VERSION, value: "{version}"}}]
      resources: {{cpu: 100m, memory: 32Mi}}
      restartPolicy: Always
      terminationGracePeriodSeconds: 3
"#
    )
}

/// The Service's tasks that are not finished.
fn live_web_tasks(cluster: &Cluster) -> Vec<Value> {
    cluster
        .list("tasks")
        .into_iter()
        .filter(|t| t["metadata"]["labels"][LABEL_SERVICE] == "web")
        .filter(|t| !is_terminal(t))
        .collect()
}

fn version_of(task: &Value) -> Option<&str> {
    task["spec"]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "VERSION")?["value"]
        .as_str()
}

/// A rollout from v1 to v2 with maxUnavailable 0 completes and leaves only v2 tasks.
fn service_rollout(cluster: &Cluster) {
    cluster.apply("web-v1", &service_manifest("v1"));
    cluster.loomctl_ok(&["rollout", "status", "service/web", "--timeout", "60"]);
    cluster.apply("web-v2", &service_manifest("v2"));
    cluster.loomctl_ok(&["rollout", "status", "service/web", "--timeout", "90"]);
    // The old tasks may still be stopping when the rollout is reported done.
    let tasks = wait_for(
        "only the three v2 tasks of web",
        Duration::from_secs(30),
        || {
            let tasks = live_web_tasks(cluster);
            if tasks.len() == 3
                && tasks
                    .iter()
                    .all(|t| version_of(t) == Some("v2") && t["status"]["phase"] == "Running")
            {
                Ok(tasks)
            } else {
                Err(summary(&tasks))
            }
        },
    );
    assert_eq!(tasks.len(), 3);
}

/// Every node got a task subnet from the cluster's range; a task on each
/// node serves HTTP at its address, and a task on the first node reaches all
/// three (two through the other nodes' routes), as does the test from the
/// root namespace, the hosts' router.
fn tasks_reach_each_other_across_nodes(cluster: &Cluster) {
    let range: ipnet::Ipv4Net = cluster.cluster_cidr.parse().unwrap();
    let mut subnets = Vec::new();
    for node in cluster.list("nodes") {
        let subnet: ipnet::Ipv4Net = node["spec"]["taskCIDR"].as_str().unwrap().parse().unwrap();
        assert!(range.contains(&subnet), "{subnet} outside {range}");
        subnets.push(subnet);
    }
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), cluster.nodes.len(), "{subnets:?}");

    let mut yaml = String::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: loom.dev/v1
kind: Task
metadata: {{name: net-{n}}}
spec:
  nodeName: {node}
  image: busybox
  command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
  resources: {{cpu: 50m, memory: 16Mi}}
  terminationGracePeriodSeconds: 1
"#,
            node = node.name
        ));
    }
    cluster.apply("net-servers", &yaml);
    let ips: Vec<String> = wait_for(
        "the servers running with addresses",
        Duration::from_secs(60),
        || {
            let mut ips = Vec::new();
            for n in 0..cluster.nodes.len() {
                let task: Value = serde_json::from_str(&cluster.loomctl_ok(&[
                    "get",
                    "task",
                    &format!("net-{n}"),
                    "-o",
                    "json",
                ]))
                .map_err(|e| e.to_string())?;
                let ip = task["status"]["taskIP"].as_str().unwrap_or_default();
                if task["status"]["phase"] != "Running" || ip.is_empty() {
                    return Err(format!("net-{n}: {}", task["status"]));
                }
                ips.push(ip.to_owned());
            }
            Ok(ips)
        },
    );
    for (n, ip) in ips.iter().enumerate() {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let node = &cluster.nodes[n].name;
        let own = cluster
            .list("nodes")
            .into_iter()
            .find(|x| x["metadata"]["name"] == node.as_str())
            .unwrap();
        let subnet: ipnet::Ipv4Net = own["spec"]["taskCIDR"].as_str().unwrap().parse().unwrap();
        assert!(
            subnet.contains(&ip),
            "net-{n} at {ip}, outside {node}'s {subnet}"
        );
        // From the root namespace, through the route to the node's subnet.
        let body = wait_for(
            &format!("net-{n} from the root namespace"),
            Duration::from_secs(30),
            || match support::http_get(std::net::SocketAddr::from((ip, 8080)), "/") {
                Some((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            },
        );
        assert!(body.contains(&format!("net-{n}")), "{body}");
    }

    let client = format!(
        r#"apiVersion: loom.dev/v1
kind: Task
metadata: {{name: net-client}}
spec:
  nodeName: {node}
  image: busybox
  command: ["sh", "-c", "for ip in $IPS; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $ip 8080 || echo FAILED $ip; done"]
  env: [{{name: IPS, value: "{ips}"}}]
  restartPolicy: Never
"#,
        node = cluster.nodes[0].name,
        ips = ips.join(" "),
    );
    cluster.apply("net-client", &client);
    wait_task(
        cluster,
        "net-client",
        "the client done",
        Duration::from_secs(60),
        is_terminal,
    );
    let log = cluster.loomctl_ok(&["logs", "net-client"]);
    for n in 0..cluster.nodes.len() {
        assert!(
            log.contains(&format!("net-{n}")),
            "net-{n} not reached: {log}"
        );
    }
    assert!(!log.contains("FAILED"), "{log}");
    let mut names = vec!["net-client".to_owned()];
    names.extend((0..cluster.nodes.len()).map(|n| format!("net-{n}")));
    let mut args = vec!["delete", "task"];
    args.extend(names.iter().map(String::as_str));
    cluster.loomctl_ok(&args);
}

/// A Service of three replicas gets a virtual address and Endpoints listing
/// its ready replicas (each Ready only once its readiness probe passes); a
/// task reaches the replicas through the address (spread over them by the
/// proxy of its node) and by the name `echo.default.svc`, resolved by its
/// node's resolver.
fn echo_manifest(version: &str) -> String {
    // On SIGTERM a replica serves on for a second (its endpoint is already
    // gone from every proxy by then), then stops: no request is cut.
    format!(
        r#"
apiVersion: loom.dev/v1
kind: Service
metadata: {{name: echo}}
spec:
  replicas: 3
  strategy: {{maxSurge: 1, maxUnavailable: 0}}
  ports: [{{name: http, port: 80, targetPort: http}}]
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www & pid=$!; trap 'sleep 1; kill $pid; exit 0' TERM; wait $pid"]
      env: [{{name: VERSION, value: "{version}"}}]
      ports: [{{name: http, containerPort: 8080}}]
      readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
      resources: {{cpu: 50m, memory: 16Mi}}
      restartPolicy: Always
      terminationGracePeriodSeconds: 5
"#
    )
}

fn service_address_and_name_reach_ready_replicas(cluster: &Cluster) {
    cluster.apply("echo", &echo_manifest("v1"));
    cluster.loomctl_ok(&["rollout", "status", "service/echo", "--timeout", "60"]);
    let service: Value =
        serde_json::from_str(&cluster.loomctl_ok(&["get", "service", "echo", "-o", "json"]))
            .unwrap();
    let vip: std::net::Ipv4Addr = service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("no clusterIP ({e}): {service}"));
    let range: ipnet::Ipv4Net = support::SERVICE_CIDR.parse().unwrap();
    assert!(range.contains(&vip), "{vip} outside {range}");
    wait_for("3 ready endpoints of echo", Duration::from_secs(30), || {
        let endpoints: Value =
            serde_json::from_str(&cluster.loomctl_ok(&["get", "endpoints", "echo", "-o", "json"]))
                .map_err(|e| e.to_string())?;
        let ready = endpoints["subsets"]
            .as_array()
            .map(|subsets| {
                subsets
                    .iter()
                    .map(|s| s["addresses"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
            })
            .unwrap_or(0);
        if ready == 3 {
            Ok(())
        } else {
            Err(endpoints.to_string())
        }
    });
    let client = format!(
        r#"apiVersion: loom.dev/v1
kind: Task
metadata: {{name: echo-client}}
spec:
  nodeName: {node}
  image: busybox
  command: ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9; do printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 {vip} 80 | tail -n 1 || echo FAILED; done; nslookup echo.default.svc; printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 echo 80 | tail -n 1 | sed 's/^/by-name: /' || echo FAILED by name"]
  restartPolicy: Never
"#,
        node = cluster.nodes[2].name,
    );
    cluster.apply("echo-client", &client);
    wait_task(
        cluster,
        "echo-client",
        "the echo client done",
        Duration::from_secs(60),
        is_terminal,
    );
    let log = cluster.loomctl_ok(&["logs", "echo-client"]);
    assert!(!log.contains("FAILED"), "{log}");
    let replicas: std::collections::BTreeSet<&str> =
        log.lines().filter(|l| l.starts_with("echo-")).collect();
    assert!(
        replicas.len() >= 2,
        "9 connections through {vip} reached {replicas:?}: not spread over the replicas\n{log}"
    );
    assert!(
        log.contains(&vip.to_string()),
        "nslookup did not answer {vip}: {log}"
    );
    assert!(log.contains("by-name: echo-"), "not reached by name: {log}");
    cluster.loomctl_ok(&["delete", "task", "echo-client"]);

    // A rollout under a request loop through the address loses no request:
    // new replicas take traffic once Ready, old ones leave the endpoints
    // before they stop.
    let requests = 80;
    let looper = format!(
        r#"apiVersion: loom.dev/v1
kind: Task
metadata: {{name: echo-loop}}
spec:
  nodeName: {node}
  image: busybox
  command: ["sh", "-c", "i=0; while [ $i -lt {requests} ]; do if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 {vip} 80 | grep -q '^echo-'; then echo OK; else echo FAILED $i; fi; i=$((i+1)); sleep 0.1; done"]
  restartPolicy: Never
"#,
        node = cluster.nodes[0].name,
    );
    cluster.apply("echo-loop", &looper);
    wait_task(
        cluster,
        "echo-loop",
        "the request loop running",
        Duration::from_secs(30),
        |t| t["status"]["phase"] == "Running",
    );
    cluster.apply("echo-v2", &echo_manifest("v2"));
    cluster.loomctl_ok(&["rollout", "status", "service/echo", "--timeout", "90"]);
    wait_task(
        cluster,
        "echo-loop",
        "the request loop done",
        Duration::from_secs(60),
        is_terminal,
    );
    let log = cluster.loomctl_ok(&["logs", "echo-loop"]);
    let ok = log.lines().filter(|l| *l == "OK").count();
    assert_eq!(ok, requests, "requests lost during the rollout:\n{log}");
    cluster.loomctl_ok(&["delete", "task", "echo-loop"]);
    cluster.loomctl_ok(&["delete", "service", "echo"]);
}

/// Kills an API server, the scheduler and the controller-manager with SIGKILL in the
/// middle of a job; every client fails over to the other API server, and with the
/// scheduler and the controllers restarted the job still completes, and no index
/// ever ran twice at once.
fn job_survives_control_plane_kills(cluster: &mut Cluster) {
    let out = cluster.output_dir("chaos");
    cluster.apply(
        "chaos",
        &format!(
            r#"
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: chaos}}
spec:
  replicas: 12
  parallelism: 4
  outputDir: {out}
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "echo start $(cut -d' ' -f1 /proc/uptime) >> $LOOM_OUTPUT_DIR/runs; sleep 1; echo end $(cut -d' ' -f1 /proc/uptime) >> $LOOM_OUTPUT_DIR/runs"]
      resources: {{cpu: 100m, memory: 32Mi}}
"#,
            out = out.display()
        ),
    );
    wait_for("two chaos tasks completed", Duration::from_secs(60), || {
        let done = tasks_of_job(cluster, "chaos")
            .iter()
            .filter(|t| t["status"]["phase"] == "Completed")
            .count();
        if done >= 2 {
            Ok(())
        } else {
            Err(format!("{done} completed"))
        }
    });
    cluster.kill_apiserver(0);
    cluster.kill_scheduler();
    cluster.kill_controllers();
    cluster.start_scheduler();
    cluster.start_controllers();
    cluster.loomctl_ok(&[
        "wait",
        "job/chaos",
        "--for=phase=Completed",
        "--timeout",
        "120",
    ]);
    cluster.assert_running();
    cluster.restart_apiserver(0);

    let mut completed: Vec<String> = tasks_of_job(cluster, "chaos")
        .iter()
        .filter(|t| t["status"]["phase"] == "Completed")
        .filter_map(|t| t["metadata"]["labels"][LABEL_JOB_INDEX].as_str())
        .map(str::to_owned)
        .collect();
    completed.sort_by_key(|i| i.parse::<u32>().unwrap());
    let want: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    assert_eq!(completed, want, "one Completed task an index");

    for index in 0..12 {
        let path = out.join(index.to_string()).join("runs");
        let runs = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut events: Vec<(f64, bool)> = runs
            .lines()
            .map(|line| {
                let (what, at) = line.split_once(' ').unwrap();
                (at.parse::<f64>().unwrap(), what == "start")
            })
            .collect();
        // An end and a start in the same clock tick are one run after the other.
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut running = 0;
        for (_, start) in &events {
            running += if *start { 1 } else { -1 };
            assert!(running <= 1, "index {index} ran twice at once:\n{runs}");
        }
        assert!(
            events.iter().any(|(_, start)| !start),
            "index {index} never finished a run:\n{runs}"
        );
    }
}

/// A node that crashes — its nodelet, shims and containers killed at once, as
/// in a power loss — and comes back on the same state dir: the Service returns
/// to 3 of 3 by itself (its tasks there restart in place), the Job's task that
/// was lost there is retried without using a retry (`maxRetries: 0`) and the
/// job completes with exactly one completed run an index, nothing ran twice
/// for one index unless retried, and the dead runs' mounts, cgroups and
/// container state are gone.
fn node_crash_and_restart(cluster: &mut Cluster) {
    let out = cluster.output_dir("crashjob");
    cluster.apply(
        "crashjob",
        &format!(
            r#"
apiVersion: loom.dev/v1
kind: Job
metadata: {{name: crashjob}}
spec:
  replicas: 3
  parallelism: 3
  maxRetries: 0
  outputDir: {out}
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "echo start >> $LOOM_OUTPUT_DIR/runs; sleep 15; echo end >> $LOOM_OUTPUT_DIR/runs"]
      resources: {{cpu: 100m, memory: 32Mi}}
"#,
            out = out.display()
        ),
    );
    let jobs = wait_for("3 crashjob tasks Running", Duration::from_secs(60), || {
        let tasks = tasks_of_job(cluster, "crashjob");
        if tasks.len() == 3 && tasks.iter().all(|t| t["status"]["phase"] == "Running") {
            Ok(tasks)
        } else {
            Err(summary(&tasks))
        }
    });
    let web = live_web_tasks(cluster);
    let node_of = |t: &Value| t["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
    let name_of = |t: &Value| t["metadata"]["name"].as_str().unwrap_or("").to_owned();
    // The node with the most of both, so both kinds of owner lose a task.
    let n = (0..cluster.nodes.len())
        .max_by_key(|&n| {
            let name = &cluster.nodes[n].name;
            let j = jobs.iter().filter(|t| node_of(t) == *name).count();
            let w = web.iter().filter(|t| node_of(t) == *name).count();
            (j.min(1) + w.min(1), j + w)
        })
        .unwrap();
    let node = cluster.nodes[n].name.clone();
    let crashed_jobs: Vec<String> = jobs
        .iter()
        .filter(|t| node_of(t) == node)
        .map(name_of)
        .collect();
    let crashed_web: Vec<String> = web
        .iter()
        .filter(|t| node_of(t) == node)
        .map(name_of)
        .collect();
    assert!(
        !crashed_jobs.is_empty() || !crashed_web.is_empty(),
        "no task on {node}"
    );

    let crash = Instant::now();
    cluster.crash_node(n);
    let left = cluster.dead_run_leftovers(n);
    assert!(
        !left.is_empty(),
        "the crash of {node} left nothing to clean up"
    );
    cluster.restart_nodelet(n);

    wait_for(
        &format!("web back to 3 of 3 after {node} crashed"),
        Duration::from_secs(90),
        || {
            let tasks = live_web_tasks(cluster);
            let runs = |t: &Value| {
                t["status"]["phase"] == "Running"
                    && t["status"]["reason"].as_str().unwrap_or("").is_empty()
            };
            let running = tasks.iter().filter(|t| runs(t)).count();
            // Each of its tasks on the crashed node runs again (a later run
            // reported: restartCount 1 or more, no BackOff), or was replaced.
            let stale: Vec<&String> = crashed_web
                .iter()
                .filter(|name| {
                    tasks.iter().any(|t| {
                        name_of(t) == **name
                            && !(runs(t) && t["status"]["restartCount"].as_i64() >= Some(1))
                    })
                })
                .collect();
            if tasks.len() == 3 && running == 3 && stale.is_empty() {
                Ok(())
            } else {
                Err(format!("not back yet: {stale:?}; {}", summary(&tasks)))
            }
        },
    );
    cluster.loomctl_ok(&["rollout", "status", "service/web", "--timeout", "60"]);
    let back = crash.elapsed();
    // Its tasks there ran again in place, unless the node was gone long enough
    // for them to be marked Lost and replaced.
    let all = cluster.list("tasks");
    for name in &crashed_web {
        let task = all.iter().find(|t| name_of(t) == *name);
        let in_place = task.is_some_and(|t| {
            t["status"]["phase"] == "Running" && t["status"]["restartCount"].as_i64() >= Some(1)
        });
        eprintln!(
            "web task {name} on {node}: {}",
            if in_place {
                "restarted in place"
            } else {
                "replaced"
            }
        );
    }
    wait_for(
        &format!("no leftovers of {node}'s dead runs"),
        Duration::from_secs(30),
        || {
            let left = cluster.dead_run_leftovers(n);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );

    cluster.loomctl_ok(&[
        "wait",
        "job/crashjob",
        "--for=phase=Completed",
        "--timeout",
        "120",
    ]);
    let tasks = tasks_of_job(cluster, "crashjob");
    for name in &crashed_jobs {
        let task = tasks.iter().find(|t| name_of(t) == *name).unwrap();
        assert_eq!(task["status"]["phase"], "Lost", "{task:#}");
        assert_eq!(task["status"]["reason"], REASON_SHIM_LOST, "{task:#}");
    }
    for index in 0..3 {
        let index = index.to_string();
        let of_index: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["metadata"]["labels"][LABEL_JOB_INDEX] == index.as_str())
            .collect();
        let completed = of_index
            .iter()
            .filter(|t| t["status"]["phase"] == "Completed")
            .count();
        assert_eq!(completed, 1, "index {index}: {}", summary(&tasks));
        let path = out.join(&index).join("runs");
        let runs = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let starts = runs.lines().filter(|l| *l == "start").count();
        let ends = runs.lines().filter(|l| *l == "end").count();
        assert_eq!(
            (starts, ends),
            (of_index.len(), 1),
            "index {index} ran once a task, finished once:
{runs}
{}",
            summary(&tasks)
        );
    }
    eprintln!(
        "{node} crashed with {crashed_jobs:?} of crashjob and {crashed_web:?} of web; web 3/3 again {back:?} after"
    );
}

/// A node whose link is cut has its tasks marked Lost and replaced on the other
/// nodes within 60 s: a Job's task stays on record as Lost, a Service's goes.
/// Returns the node and the uids of the tasks it lost.
fn cut_node_loses_and_replaces_tasks(cluster: &mut Cluster) -> (usize, Vec<String>) {
    cluster.apply(
        "steady",
        r#"
apiVersion: loom.dev/v1
kind: Job
metadata: {name: steady}
spec:
  replicas: 3
  parallelism: 3
  template:
    spec:
      image: busybox
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
      resources: {cpu: 100m, memory: 32Mi}
      terminationGracePeriodSeconds: 3
"#,
    );
    let steady = wait_for("3 steady tasks Running", Duration::from_secs(60), || {
        let tasks = tasks_of_job(cluster, "steady");
        if tasks.len() == 3 && tasks.iter().all(|t| t["status"]["phase"] == "Running") {
            Ok(tasks)
        } else {
            Err(summary(&tasks))
        }
    });
    let web = live_web_tasks(cluster);
    // The node with the most of both, so both kinds of owner lose a task.
    let node_of = |t: &Value| {
        t["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let name_of = |t: &Value| {
        t["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let n = (0..cluster.nodes.len())
        .max_by_key(|&n| {
            let name = &cluster.nodes[n].name;
            let jobs = steady.iter().filter(|t| node_of(t) == *name).count();
            let services = web.iter().filter(|t| node_of(t) == *name).count();
            (jobs.min(1) + services.min(1), jobs + services)
        })
        .unwrap();
    let node = cluster.nodes[n].name.clone();
    let lost_steady: Vec<Value> = steady.into_iter().filter(|t| node_of(t) == node).collect();
    let lost_web: Vec<String> = web
        .iter()
        .filter(|t| node_of(t) == node)
        .map(name_of)
        .collect();
    assert!(
        !lost_steady.is_empty() || !lost_web.is_empty(),
        "no task on {node}"
    );

    let cut = Instant::now();
    cluster.cut_link(n);
    wait_for(
        &format!("the tasks of {node} Lost and replaced on other nodes"),
        Duration::from_secs(60),
        || {
            let all = cluster.list("tasks");
            let mut problems = Vec::new();
            for task in &lost_steady {
                let name = name_of(task);
                let now = all.iter().find(|t| name_of(t) == name);
                if now.is_none_or(|t| t["status"]["phase"] != "Lost") {
                    problems.push(format!("{name} not Lost"));
                }
                let index = &task["metadata"]["labels"][LABEL_JOB_INDEX];
                let replaced = all.iter().any(|t| {
                    t["metadata"]["labels"][LABEL_JOB] == "steady"
                        && t["metadata"]["labels"][LABEL_JOB_INDEX] == *index
                        && t["status"]["phase"] == "Running"
                        && node_of(t) != node
                });
                if !replaced {
                    problems.push(format!("index {index} of steady not running elsewhere"));
                }
            }
            let web: Vec<Value> = all
                .into_iter()
                .filter(|t| t["metadata"]["labels"][LABEL_SERVICE] == "web")
                .collect();
            for name in &lost_web {
                if web.iter().any(|t| name_of(t) == *name && !is_terminal(t)) {
                    problems.push(format!("{name} still live"));
                }
            }
            let running_elsewhere = web
                .iter()
                .filter(|t| t["status"]["phase"] == "Running" && node_of(t) != node)
                .count();
            if running_elsewhere != 3 {
                problems.push(format!("{running_elsewhere} web tasks running elsewhere"));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!("{problems:?}; web: {}", summary(&web)))
            }
        },
    );
    let lost = cluster.list("tasks");
    for task in &lost_steady {
        let name = name_of(task);
        let now = lost.iter().find(|t| name_of(t) == name).unwrap();
        assert_eq!(now["status"]["reason"], REASON_NODE_LOST, "{now:#}");
    }
    eprintln!(
        "{node}'s tasks ({} of steady, {lost_web:?} of web) Lost and replaced {:?} after its link was cut",
        lost_steady.len(),
        cut.elapsed()
    );
    let uid_of = |t: &Value| t["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let mut lost_uids: Vec<String> = lost_steady.iter().map(uid_of).collect();
    lost_uids.extend(
        web.iter()
            .filter(|t| lost_web.contains(&name_of(t)))
            .map(uid_of),
    );
    (n, lost_uids)
}

/// The cut link comes back: the node is Ready again, it stops the runs of
/// the tasks it lost (replaced elsewhere meanwhile: they must not run twice
/// for long), and the job and the service keep exactly their replacements.
fn restored_link_rejoins_without_duplicates(cluster: &mut Cluster, n: usize, lost: &[String]) {
    let node = cluster.nodes[n].name.clone();
    assert!(!lost.is_empty());
    cluster.restore_link(n);
    let back = Instant::now();
    cluster.wait_ready_nodes(cluster.nodes.len(), Duration::from_secs(60));
    wait_for(
        &format!("{node} stopped the runs of the tasks it lost"),
        Duration::from_secs(60),
        || {
            let runs = cluster.runs_on(n);
            let still: Vec<&String> = lost.iter().filter(|uid| runs.contains(*uid)).collect();
            if still.is_empty() {
                Ok(())
            } else {
                Err(format!("still running on {node}: {still:?}"))
            }
        },
    );
    let steady = tasks_of_job(cluster, "steady");
    let running: Vec<&Value> = steady
        .iter()
        .filter(|t| t["status"]["phase"] == "Running")
        .collect();
    assert_eq!(running.len(), 3, "steady: {}", summary(&steady));
    let web: Vec<Value> = live_web_tasks(cluster);
    assert_eq!(web.len(), 3, "web: {}", summary(&web));
    eprintln!(
        "{node} back and its lost runs stopped {:?} after its link was restored",
        back.elapsed()
    );
}

fn tasks_of_job(cluster: &Cluster, job: &str) -> Vec<Value> {
    cluster
        .list("tasks")
        .into_iter()
        .filter(|t| t["metadata"]["labels"][LABEL_JOB] == job)
        .collect()
}

/// Waits until task `name` satisfies `done` (read with loomctl), or panics
/// naming `what` and its last status.
fn wait_task(
    cluster: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, timeout, || {
        let task: Value =
            serde_json::from_str(&cluster.loomctl_ok(&["get", "task", name, "-o", "json"]))
                .map_err(|e| e.to_string())?;
        if done(&task) {
            Ok(task)
        } else {
            Err(task["status"].to_string())
        }
    })
}

fn is_terminal(task: &Value) -> bool {
    matches!(
        task["status"]["phase"].as_str(),
        Some("Completed" | "Failed" | "Killed" | "Lost")
    )
}

/// Each task's name, node, phase and reason, for failure messages.
fn summary(tasks: &[Value]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{} on {} {} {}",
                t["metadata"]["name"].as_str().unwrap_or("?"),
                t["spec"]["nodeName"].as_str().unwrap_or("-"),
                t["status"]["phase"].as_str().unwrap_or("-"),
                t["status"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
