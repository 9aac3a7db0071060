//! Node claims: before binding a task, a scheduler records the placement on the node
//! with a write conditioned on the node's resourceVersion. Two schedulers binding to
//! one node at once therefore serialize there: the second write fails, and the
//! loser rereads the node, sees the winner's claim and decides again. Claims are
//! pruned by age; by then every scheduler sees the bound task through its watch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api_types::well_known::ANNOTATION_CLAIMS;
use api_types::{Node, Task, TaskSpec};
use serde::{Deserialize, Serialize};

use crate::resources::{Resources, TaskInfo};

/// How long a claim stays on the node.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// One placement announced on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The task, `namespace/name`.
    #[serde(rename = "t")]
    pub task: String,
    /// The scheduler that claimed.
    pub by: String,
    /// When, in milliseconds since the epoch.
    pub at: i64,
    /// CPU in millicores.
    #[serde(default)]
    pub cpu: i64,
    /// Memory in bytes.
    #[serde(default)]
    pub mem: i64,
    /// Disk in bytes.
    #[serde(default)]
    pub disk: i64,
    /// Host ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
    /// Extended resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ext: BTreeMap<String, i64>,
}

fn narrow(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Claim {
    /// A claim for `task` by scheduler `by` at `at` (ms since the epoch).
    pub fn of(task: &TaskInfo, by: &str, at: i64) -> Self {
        let d = &task.demand;
        Claim {
            task: task.key.clone(),
            by: by.to_owned(),
            at,
            cpu: narrow(d.cpu_milli),
            mem: narrow(d.memory),
            disk: narrow(d.disk),
            ports: task.ports().to_vec(),
            ext: d
                .extended
                .iter()
                .map(|(k, v)| (k.clone(), narrow(*v)))
                .collect(),
        }
    }

    /// What the claimed task holds, as the scheduler weighs tasks.
    pub fn task_info(&self) -> TaskInfo {
        let (namespace, name) = self.task.split_once('/').unwrap_or(("", &self.task));
        let mut task = Task::new(name, TaskSpec::default());
        task.metadata.namespace = namespace.to_owned();
        task.spec.resources.ports = self.ports.clone();
        TaskInfo {
            key: self.task.clone(),
            demand: Resources {
                cpu_milli: self.cpu.into(),
                memory: self.mem.into(),
                disk: self.disk.into(),
                extended: self
                    .ext
                    .iter()
                    .map(|(k, v)| (k.clone(), i128::from(*v)))
                    .collect(),
            },
            // A claimed task is never a preemption victim.
            priority: i32::MAX,
            ports: self.ports.clone(),
            task: Arc::new(task),
        }
    }
}

/// The claims recorded on a node (none if the annotation is missing or unreadable).
pub fn read(node: &Node) -> Vec<Claim> {
    node.metadata
        .annotations
        .get(ANNOTATION_CLAIMS)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// Records `claims` in `annotations`.
pub fn write(annotations: &mut BTreeMap<String, String>, claims: &[Claim]) {
    annotations.insert(
        ANNOTATION_CLAIMS.to_owned(),
        serde_json::to_string(claims).unwrap_or_default(),
    );
}

/// The node's claims younger than [`CLAIM_TTL`] at `now_ms`, plus `claim`.
pub fn with(node: &Node, claim: Claim, now_ms: i64) -> Vec<Claim> {
    let ttl = i64::try_from(CLAIM_TTL.as_millis()).unwrap_or(i64::MAX);
    let mut claims: Vec<Claim> = read(node)
        .into_iter()
        .filter(|c| now_ms.saturating_sub(c.at) < ttl && (c.task != claim.task || c.by != claim.by))
        .collect();
    claims.push(claim);
    claims
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::{node, task};

    #[test]
    fn claims_round_trip_and_age_out() {
        let mut t = task("a", "250m", "1Gi");
        t.spec.resources.ports = vec![80];
        let info = TaskInfo::new(Arc::new(t));
        let claim = Claim::of(&info, "s1", 1_000);
        let back = claim.task_info();
        assert_eq!(back.key, "default/a");
        assert_eq!(back.demand, info.demand);
        assert_eq!(back.ports(), &[80]);
        // A hostPort is claimed like resources.ports.
        let mut h = task("h", "1m", "1Mi");
        h.spec.resources.ports = vec![80];
        h.spec.ports.push(api_types::ContainerPort {
            container_port: 8443,
            host_port: Some(443),
            ..Default::default()
        });
        let claimed = Claim::of(&TaskInfo::new(Arc::new(h)), "s1", 1_000);
        assert_eq!(claimed.ports, [80, 443]);
        assert_eq!(claimed.task_info().ports(), &[80, 443]);

        let mut n = node("n", "1", "1Gi");
        write(&mut n.metadata.annotations, std::slice::from_ref(&claim));
        assert_eq!(read(&n), vec![claim.clone()]);
        let later = Claim::of(
            &TaskInfo::new(Arc::new(task("b", "1m", "1Mi"))),
            "s2",
            20_000,
        );
        let both = with(&n, later.clone(), 20_000);
        assert_eq!(both.len(), 2);
        write(&mut n.metadata.annotations, &both);
        let ttl = CLAIM_TTL.as_millis() as i64;
        let third = Claim::of(&TaskInfo::new(Arc::new(task("c", "1m", "1Mi"))), "s1", 0);
        let pruned = with(&n, third, 1_000 + ttl);
        assert_eq!(
            pruned.iter().map(|c| c.task.as_str()).collect::<Vec<_>>(),
            ["default/b", "default/c"]
        );
    }
}
