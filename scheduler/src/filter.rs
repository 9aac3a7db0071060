//! Filter: the nodes a task may run on, and in words why the others are not.

use std::collections::BTreeMap;
use std::fmt;

use api_types::node::{LABEL_ALLOW_HOST_PATHS, LABEL_ALLOW_RAW_EXEC};
use api_types::{Driver, TaintEffect, Task};

use crate::resources::{NodeInfo, TaskInfo};

/// Why a node cannot take a task.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    /// The node is not Ready.
    NotReady,
    /// The node is cordoned.
    Unschedulable,
    /// Not enough of a resource is free.
    Insufficient(String),
    /// A host port the task needs is taken.
    PortTaken(i32),
    /// A constraint on node labels is not met.
    Constraint(String),
    /// A NoSchedule or NoExecute taint the task does not tolerate.
    Taint(String),
    /// The task needs a permission the node's operator has not given it
    /// (the `raw` driver, host-path mounts).
    NotAllowed(&'static str),
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NotReady => f.write_str("not ready"),
            Unfit::Unschedulable => f.write_str("unschedulable"),
            Unfit::Insufficient(r) => write!(f, "insufficient {r}"),
            Unfit::PortTaken(p) => write!(f, "port {p} in use"),
            Unfit::Constraint(c) => write!(f, "constraint {c} not met"),
            Unfit::Taint(t) => write!(f, "taint {t} not tolerated"),
            Unfit::NotAllowed(what) => write!(f, "{what} not allowed"),
        }
    }
}

/// Whether `node` may run `task`; the first reason it may not.
pub fn fits(node: &NodeInfo, task: &TaskInfo) -> Result<(), Unfit> {
    admits(node, &task.task)?;
    fits_resources(node, task)
}

/// The rules no preemption can change: readiness, cordons, taints and constraints.
pub fn admits(node: &NodeInfo, task: &Task) -> Result<(), Unfit> {
    if !node.ready {
        return Err(Unfit::NotReady);
    }
    if node.node.spec.unschedulable {
        return Err(Unfit::Unschedulable);
    }
    for taint in &node.node.spec.taints {
        let blocking = matches!(
            taint.effect,
            Some(TaintEffect::NoSchedule | TaintEffect::NoExecute)
        );
        if blocking && !task.spec.tolerations.iter().any(|t| t.tolerates(taint)) {
            let effect = taint.effect.map_or("", |e| e.as_str());
            let value = if taint.value.is_empty() {
                String::new()
            } else {
                format!("={}", taint.value)
            };
            return Err(Unfit::Taint(format!("{}{value}:{effect}", taint.key)));
        }
    }
    for constraint in &task.spec.constraints {
        if !constraint.matches(&node.node.metadata.labels) {
            return Err(Unfit::Constraint(constraint.to_string()));
        }
    }
    permits(node, task)
}

/// The permissions of the node's operator the task needs: the node advertises
/// each with a label set to `true` (the nodelet checks them again itself).
fn permits(node: &NodeInfo, task: &Task) -> Result<(), Unfit> {
    let granted = |label: &str| {
        node.node
            .metadata
            .labels
            .get(label)
            .is_some_and(|v| v == "true")
    };
    if task.spec.driver() == Driver::Raw && !granted(LABEL_ALLOW_RAW_EXEC) {
        return Err(Unfit::NotAllowed("raw exec"));
    }
    if !task.spec.mounts.is_empty() && !granted(LABEL_ALLOW_HOST_PATHS) {
        return Err(Unfit::NotAllowed("host paths"));
    }
    Ok(())
}

/// Whether the node's free resources and ports take the task.
pub fn fits_resources(node: &NodeInfo, task: &TaskInfo) -> Result<(), Unfit> {
    let want = &task.demand;
    let free = |alloc: i128, used: i128| alloc - used;
    if want.cpu_milli > free(node.allocatable.cpu_milli, node.requested.cpu_milli) {
        return Err(Unfit::Insufficient("cpu".into()));
    }
    if want.memory > free(node.allocatable.memory, node.requested.memory) {
        return Err(Unfit::Insufficient("memory".into()));
    }
    if want.disk > free(node.allocatable.disk, node.requested.disk) {
        return Err(Unfit::Insufficient("disk".into()));
    }
    for (name, amount) in &want.extended {
        let alloc = node.allocatable.extended.get(name).copied().unwrap_or(0);
        let used = node.requested.extended.get(name).copied().unwrap_or(0);
        if *amount > free(alloc, used) {
            return Err(Unfit::Insufficient(name.clone()));
        }
    }
    for port in task.ports() {
        if node.ports.contains_key(port) {
            return Err(Unfit::PortTaken(*port));
        }
    }
    Ok(())
}

/// A user's explanation of why no node fits: `0/12 nodes: 8 insufficient memory, 4 taint gpu=true:NoSchedule not tolerated`.
pub fn explain(total: usize, reasons: &[Unfit]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for reason in reasons {
        *counts.entry(reason.to_string()).or_default() += 1;
    }
    let mut parts: Vec<(usize, String)> = counts.into_iter().map(|(r, n)| (n, r)).collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let parts: Vec<String> = parts.into_iter().map(|(n, r)| format!("{n} {r}")).collect();
    if parts.is_empty() {
        format!("0/{total} nodes are available")
    } else {
        format!("0/{total} nodes: {}", parts.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::{node, task};
    use std::sync::Arc;

    fn ti(task: &Task) -> TaskInfo {
        TaskInfo::new(Arc::new(task.clone()))
    }
    use api_types::{Selector, Taint, Toleration};

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let mut info = NodeInfo::new(node("n", "1", "1Gi"));
        assert_eq!(fits(&info, &ti(&task("a", "500m", "512Mi"))), Ok(()));
        assert_eq!(
            fits(&info, &ti(&task("big", "2", "1Mi"))),
            Err(Unfit::Insufficient("cpu".into()))
        );
        assert_eq!(
            fits(&info, &ti(&task("fat", "1m", "2Gi"))),
            Err(Unfit::Insufficient("memory".into()))
        );
        let mut placed = task("p", "100m", "1Mi");
        placed.spec.resources.ports = vec![8080];
        info.add_task(&placed);
        let mut wants_port = task("q", "100m", "1Mi");
        wants_port.spec.resources.ports = vec![8080];
        assert_eq!(fits(&info, &ti(&wants_port)), Err(Unfit::PortTaken(8080)));
        // Exactly full still fits; one milli more does not.
        assert_eq!(fits(&info, &ti(&task("rest", "900m", "1Mi"))), Ok(()));
        assert_eq!(
            fits(&info, &ti(&task("over", "901m", "1Mi"))),
            Err(Unfit::Insufficient("cpu".into()))
        );

        let mut constrained = task("c", "1m", "1Mi");
        constrained.spec.constraints = Selector::parse("disk in (ssd)")
            .unwrap()
            .requirements()
            .to_vec();
        assert!(matches!(
            fits(&info, &ti(&constrained)),
            Err(Unfit::Constraint(_))
        ));
        Arc::make_mut(&mut info.node)
            .metadata
            .labels
            .insert("disk".into(), "ssd".into());
        assert_eq!(fits(&info, &ti(&constrained)), Ok(()));

        Arc::make_mut(&mut info.node).spec.taints.push(Taint {
            key: "gpu".into(),
            value: "true".into(),
            effect: Some(TaintEffect::NoSchedule),
        });
        let plain = task("t", "1m", "1Mi");
        assert_eq!(
            fits(&info, &ti(&plain)),
            Err(Unfit::Taint("gpu=true:NoSchedule".into()))
        );
        let mut tolerant = plain.clone();
        tolerant.spec.tolerations.push(Toleration {
            key: "gpu".into(),
            operator: None,
            value: "true".into(),
            effect: Some(TaintEffect::NoSchedule),
            toleration_seconds: None,
        });
        assert_eq!(fits(&info, &ti(&tolerant)), Ok(()));

        Arc::make_mut(&mut info.node).spec.unschedulable = true;
        assert_eq!(fits(&info, &ti(&tolerant)), Err(Unfit::Unschedulable));
    }

    #[test]
    fn a_host_port_conflicts_with_host_ports_and_resources_ports() {
        fn with_host_port(name: &str, container_port: i32, host_port: i32) -> Task {
            let mut t = task(name, "1m", "1Mi");
            t.spec.ports.push(api_types::ContainerPort {
                name: "http".into(),
                container_port,
                host_port: Some(host_port),
                protocol: None,
            });
            t
        }
        let mut info = NodeInfo::new(node("n", "1", "1Gi"));
        info.add_task(&with_host_port("a", 80, 8080));
        // Another task's hostPort, whatever its container port.
        assert_eq!(
            fits(&info, &ti(&with_host_port("b", 9000, 8080))),
            Err(Unfit::PortTaken(8080))
        );
        // A resources.ports entry against a hostPort.
        let mut old_style = task("c", "1m", "1Mi");
        old_style.spec.resources.ports = vec![8080];
        assert_eq!(fits(&info, &ti(&old_style)), Err(Unfit::PortTaken(8080)));
        // A container port alone reserves nothing on the node.
        let mut container_only = task("d", "1m", "1Mi");
        container_only.spec.ports.push(api_types::ContainerPort {
            container_port: 8080,
            ..Default::default()
        });
        assert_eq!(fits(&info, &ti(&container_only)), Ok(()));
        assert_eq!(fits(&info, &ti(&with_host_port("e", 80, 8081))), Ok(()));

        // A hostPort against a resources.ports entry, and the port comes back on removal.
        let mut info = NodeInfo::new(node("n", "1", "1Gi"));
        info.add_task(&old_style);
        assert_eq!(
            fits(&info, &ti(&with_host_port("f", 80, 8080))),
            Err(Unfit::PortTaken(8080))
        );
        info.remove_task(&old_style);
        assert_eq!(fits(&info, &ti(&with_host_port("f", 80, 8080))), Ok(()));

        // A task naming the same port both ways holds it once.
        let mut both = with_host_port("g", 80, 8080);
        both.spec.resources.ports = vec![8080];
        assert_eq!(ti(&both).ports(), &[8080]);
        let mut info = NodeInfo::new(node("n", "1", "1Gi"));
        info.add_task(&both);
        assert!(!info.overcommitted());
        info.remove_task(&both);
        assert!(info.ports.is_empty());
    }

    #[test]
    fn raw_exec_and_host_paths_go_only_where_the_operator_allows_them() {
        let mut info = NodeInfo::new(node("n", "1", "1Gi"));
        let mut raw = task("raw", "1m", "1Mi");
        raw.spec.driver = Some(Driver::Raw);
        raw.spec.command = vec!["true".into()];
        let mut mounting = task("mounting", "1m", "1Mi");
        mounting.spec.mounts.push(api_types::Mount {
            source: "/data/in".into(),
            target: "/in".into(),
            read_only: Some(true),
        });
        let mut exec = task("exec", "1m", "1Mi");
        exec.spec.driver = Some(Driver::Exec);
        assert_eq!(fits(&info, &ti(&raw)), Err(Unfit::NotAllowed("raw exec")));
        assert_eq!(
            fits(&info, &ti(&mounting)),
            Err(Unfit::NotAllowed("host paths"))
        );
        // The confined exec driver needs no permission.
        assert_eq!(fits(&info, &ti(&exec)), Ok(()));
        // Only the value `true` grants.
        let labels = &mut Arc::make_mut(&mut info.node).metadata.labels;
        labels.insert(LABEL_ALLOW_RAW_EXEC.into(), "false".into());
        labels.insert(LABEL_ALLOW_HOST_PATHS.into(), "yes".into());
        assert!(fits(&info, &ti(&raw)).is_err());
        assert!(fits(&info, &ti(&mounting)).is_err());
        let labels = &mut Arc::make_mut(&mut info.node).metadata.labels;
        labels.insert(LABEL_ALLOW_RAW_EXEC.into(), "true".into());
        labels.insert(LABEL_ALLOW_HOST_PATHS.into(), "true".into());
        assert_eq!(fits(&info, &ti(&raw)), Ok(()));
        assert_eq!(fits(&info, &ti(&mounting)), Ok(()));
        assert_eq!(
            explain(
                2,
                &[Unfit::NotAllowed("raw exec"), Unfit::NotAllowed("raw exec")]
            ),
            "0/2 nodes: 2 raw exec not allowed"
        );
    }

    #[test]
    fn explanations_count_reasons() {
        let reasons = [
            Unfit::Insufficient("memory".into()),
            Unfit::Taint("gpu=true:NoSchedule".into()),
            Unfit::Insufficient("memory".into()),
        ];
        assert_eq!(
            explain(3, &reasons),
            "0/3 nodes: 2 insufficient memory, 1 taint gpu=true:NoSchedule not tolerated"
        );
        assert_eq!(explain(0, &[]), "0/0 nodes are available");
    }
}
