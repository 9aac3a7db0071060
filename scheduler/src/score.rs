//! Scoring: pluggable, weighted scorers, each giving a node 0–100 for a task.
//!
//! E-PVM (Amir et al. 2000, used in Borg) prices a node as Σ_r a^(u_r), u_r the
//! fraction of resource r in use; a task goes where its added cost is smallest,
//! which spreads load convexly. Least-allocated and balanced allocation are the
//! Kubernetes scorers; spreading keeps a job's or service's tasks apart.

use api_types::well_known::{LABEL_JOB, LABEL_SERVICE};

use crate::resources::{NodeInfo, Resources, TaskInfo, label_hash};

/// A scorer readied for one task: scores nodes for it.
pub type Prepared<'a> = Box<dyn Fn(&NodeInfo) -> f64 + 'a>;

/// Gives a node a score from 0 (worst) to 100 (best) for a task.
pub trait Scorer: Send + Sync {
    /// The scorer's name (for logs and metrics).
    fn name(&self) -> &'static str;
    /// The node's score for the task.
    fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64;
    /// The same scores for one task over many nodes, with what depends only on
    /// the task worked out once.
    fn prepare<'a>(&'a self, task: &'a TaskInfo) -> Prepared<'a> {
        Box::new(move |node| self.score(node, task))
    }
}

/// `v` as a float; through i64 when it fits (the i128 conversion is a slow
/// library call, and quantities here always fit).
fn to_f64(v: i128) -> f64 {
    match i64::try_from(v) {
        Ok(v) => v as f64,
        Err(_) => v as f64,
    }
}

/// Fractions of CPU and memory in use after placing `want`.
fn fractions(node: &NodeInfo, want: &Resources) -> [(f64, f64); 2] {
    let frac = |used: i128, alloc: i128| {
        if alloc <= 0 {
            1.0
        } else {
            (to_f64(used) / to_f64(alloc)).clamp(0.0, 1.0)
        }
    };
    let a = &node.allocatable;
    let r = &node.requested;
    [
        (
            frac(r.cpu_milli, a.cpu_milli),
            frac(r.cpu_milli + want.cpu_milli, a.cpu_milli),
        ),
        (
            frac(r.memory, a.memory),
            frac(r.memory + want.memory, a.memory),
        ),
    ]
}

/// E-PVM: the smaller the marginal cost Σ a^(u+Δ) − a^u, the higher the score.
#[derive(Clone, Debug)]
pub struct Epvm {
    /// The base: the number of nodes in Borg's formulation (at least 2).
    pub base: f64,
}

impl Scorer for Epvm {
    fn name(&self) -> &'static str {
        "epvm"
    }

    fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64 {
        let a = self.base.max(2.0);
        let ln_a = a.ln();
        let parts = fractions(node, &task.demand);
        let marginal: f64 = parts
            .iter()
            .map(|(before, after)| (after * ln_a).exp() - (before * ln_a).exp())
            .sum();
        let worst = parts.len() as f64 * (a - 1.0);
        100.0 * (1.0 - marginal / worst).clamp(0.0, 1.0)
    }
}

/// The more free CPU and memory left after placing, the better.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastAllocated;

impl Scorer for LeastAllocated {
    fn name(&self) -> &'static str {
        "least-allocated"
    }

    fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64 {
        let parts = fractions(node, &task.demand);
        100.0 * parts.iter().map(|(_, after)| 1.0 - after).sum::<f64>() / parts.len() as f64
    }
}

/// The closer CPU and memory use stay to each other, the better (fewer stranded resources).
#[derive(Clone, Copy, Debug, Default)]
pub struct BalancedAllocation;

impl Scorer for BalancedAllocation {
    fn name(&self) -> &'static str {
        "balanced-allocation"
    }

    fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64 {
        let [(_, cpu), (_, memory)] = fractions(node, &task.demand);
        100.0 * (1.0 - (cpu - memory).abs())
    }
}

/// The fewer tasks of the same job or service already on the node, the better.
#[derive(Clone, Debug)]
pub struct Spread {
    /// The label naming a task's owner (`loom.dev/job`, `loom.dev/service`).
    pub labels: Vec<String>,
}

impl Scorer for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64 {
        self.prepare(task)(node)
    }

    fn prepare<'a>(&'a self, task: &'a TaskInfo) -> Prepared<'a> {
        let owners: Vec<u64> = self
            .labels
            .iter()
            .filter_map(|label| {
                let value = task.task.metadata.labels.get(label)?;
                Some(label_hash(label, value))
            })
            .collect();
        Box::new(move |node| {
            let same: usize = owners.iter().map(|&owner| node.tasks_with(owner)).sum();
            100.0 / (1.0 + same as f64)
        })
    }
}

/// Scorers and their weights.
pub struct Weighted {
    scorers: Vec<(f64, Box<dyn Scorer>)>,
}

impl std::fmt::Debug for Weighted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(f64, &str)> = self.scorers.iter().map(|(w, s)| (*w, s.name())).collect();
        f.debug_struct("Weighted").field("scorers", &names).finish()
    }
}

impl Weighted {
    /// Loom's default mix for a cluster of `nodes` nodes.
    pub fn default_for(nodes: usize) -> Self {
        Weighted::new(vec![
            (
                2.0,
                Box::new(Epvm {
                    base: nodes.max(2) as f64,
                }),
            ),
            (1.0, Box::new(BalancedAllocation)),
            (
                1.0,
                Box::new(Spread {
                    labels: vec![LABEL_JOB.into(), LABEL_SERVICE.into()],
                }),
            ),
        ])
    }

    /// A mix of scorers.
    pub fn new(scorers: Vec<(f64, Box<dyn Scorer>)>) -> Self {
        Weighted { scorers }
    }

    /// The weighted mean score, 0–100.
    pub fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64 {
        self.prepare(task)(node)
    }

    /// The weighted mean score for one task over many nodes, each scorer readied
    /// for the task once; 0 everywhere when no scorer has weight.
    pub fn prepare<'a>(&'a self, task: &'a TaskInfo) -> Prepared<'a> {
        let total: f64 = self.scorers.iter().map(|(w, _)| w).sum();
        if total <= 0.0 {
            return Box::new(|_| 0.0);
        }
        let scorers: Vec<(f64, Prepared<'a>)> = self
            .scorers
            .iter()
            .map(|(w, s)| (*w, s.prepare(task)))
            .collect();
        Box::new(move |node| scorers.iter().map(|(w, s)| w * s(node)).sum::<f64>() / total)
    }

    /// The best node for `task` among `candidates` (ties go to the first).
    pub fn best<'a>(&self, candidates: &[&'a NodeInfo], task: &TaskInfo) -> Option<&'a NodeInfo> {
        self.best_of(candidates.iter().copied().enumerate(), task)
            .and_then(|i| candidates.get(i).copied())
    }

    /// The id of the best of `candidates`, given as (id, node) (ties go to the first).
    pub fn best_of<'a>(
        &self,
        candidates: impl IntoIterator<Item = (usize, &'a NodeInfo)>,
        task: &TaskInfo,
    ) -> Option<usize> {
        let score_of = self.prepare(task);
        let mut best: Option<(usize, f64)> = None;
        for (id, node) in candidates {
            let score = score_of(node);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((id, score));
            }
        }
        best.map(|(id, _)| id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::{node, task as plain_task};
    use api_types::Task;
    use std::sync::Arc;

    fn task(name: &str, cpu: &str, memory: &str) -> TaskInfo {
        TaskInfo::new(Arc::new(plain_task(name, cpu, memory)))
    }

    fn weigh(task: Task) -> TaskInfo {
        TaskInfo::new(Arc::new(task))
    }

    #[test]
    fn epvm_prefers_the_emptier_node_and_is_convex() {
        let empty = NodeInfo::new(node("empty", "4", "8Gi"));
        let mut busy = NodeInfo::new(node("busy", "4", "8Gi"));
        busy.add_task(&plain_task("x", "3", "6Gi"));
        let t = task("t", "500m", "1Gi");
        let epvm = Epvm { base: 10.0 };
        assert!(epvm.score(&empty, &t) > epvm.score(&busy, &t));
        let scorer = Weighted::new(vec![(1.0, Box::new(epvm))]);
        assert_eq!(
            scorer
                .best(&[&busy, &empty], &t)
                .unwrap()
                .node
                .metadata
                .name,
            "empty"
        );
    }

    #[test]
    fn placing_many_tasks_by_epvm_spreads_them_evenly() {
        let mut nodes: Vec<NodeInfo> = (0..4)
            .map(|i| NodeInfo::new(node(&format!("n{i}"), "4", "8Gi")))
            .collect();
        let scorer = Weighted::default_for(4);
        for i in 0..16 {
            let t = task(&format!("t{i}"), "250m", "512Mi");
            let refs: Vec<&NodeInfo> = nodes.iter().collect();
            let name = scorer.best(&refs, &t).unwrap().node.metadata.name.clone();
            nodes
                .iter_mut()
                .find(|n| n.node.metadata.name == name)
                .unwrap()
                .add_task(&t.task);
        }
        let counts: Vec<usize> = nodes.iter().map(|n| n.tasks.len()).collect();
        assert_eq!(counts, [4, 4, 4, 4]);
    }

    #[test]
    fn balanced_and_spread_scores() {
        let info = NodeInfo::new(node("n", "4", "4Gi"));
        assert!((BalancedAllocation.score(&info, &task("even", "1", "1Gi")) - 100.0).abs() < 1e-9);
        assert!(BalancedAllocation.score(&info, &task("lopsided", "4", "1Mi")) < 10.0);
        let mut info = info;
        let mut sibling = plain_task("s", "1m", "1Mi");
        sibling
            .metadata
            .labels
            .insert(LABEL_JOB.into(), "train".into());
        info.add_task(&sibling);
        let spread = Spread {
            labels: vec![LABEL_JOB.into()],
        };
        let mut next = plain_task("next", "1m", "1Mi");
        next.metadata
            .labels
            .insert(LABEL_JOB.into(), "train".into());
        assert!((spread.score(&info, &weigh(next)) - 50.0).abs() < 1e-9);
        assert!((spread.score(&info, &task("other", "1m", "1Mi")) - 100.0).abs() < 1e-9);
        assert!(LeastAllocated.score(&info, &task("small", "1m", "1Mi")) > 99.0);
    }
}
