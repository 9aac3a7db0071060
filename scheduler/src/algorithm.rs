//! One scheduling decision: filter nodes from a rotating start until enough fit (a
//! bounded sample on large clusters, as Kubernetes' `percentageOfNodesToScore`),
//! score those, pick the best; or say why none fits.

use crate::cache::Cache;
use crate::filter::{Unfit, explain, fits};
use crate::resources::{NodeInfo, TaskInfo};
use crate::score::Weighted;

/// How many feasible nodes a decision looks for before scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// Never fewer feasible nodes than this (all of them on small clusters).
    pub min_feasible: usize,
    /// Else this percentage of the cluster's nodes (100: every node).
    pub percentage: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            min_feasible: 100,
            percentage: 10,
        }
    }
}

impl Sampling {
    /// Feasible nodes wanted in a cluster of `nodes`.
    pub fn wanted(&self, nodes: usize) -> usize {
        if nodes <= self.min_feasible {
            return nodes;
        }
        (nodes * self.percentage.min(100) / 100)
            .max(self.min_feasible)
            .min(nodes)
    }
}

/// Filters and scores; remembers where the last search stopped so that searches
/// rotate over the whole cluster.
#[derive(Debug)]
pub struct Algorithm {
    sampling: Sampling,
    scorer: Weighted,
    scorer_nodes: usize,
    start: usize,
    feasible: Vec<usize>,
}

impl Algorithm {
    /// An algorithm with Loom's default scorers.
    pub fn new(sampling: Sampling) -> Self {
        Algorithm {
            sampling,
            scorer: Weighted::default_for(0),
            scorer_nodes: 0,
            start: 0,
            feasible: Vec::new(),
        }
    }

    /// The index in `cache.nodes()` of the best node for `task`, or why none fits.
    pub fn decide(&mut self, cache: &Cache, task: &TaskInfo) -> Result<usize, NoFit> {
        let nodes = cache.nodes();
        let n = nodes.len();
        if n != self.scorer_nodes {
            self.scorer = Weighted::default_for(n);
            self.scorer_nodes = n;
        }
        let wanted = self.sampling.wanted(n);
        self.feasible.clear();
        let mut reasons = Vec::new();
        let start = if n == 0 { 0 } else { self.start % n };
        let mut examined = 0;
        while examined < n && self.feasible.len() < wanted {
            let i = (start + examined) % n;
            examined += 1;
            match fits(&nodes[i], task) {
                Ok(()) => self.feasible.push(i),
                Err(reason) => reasons.push(reason),
            }
        }
        self.start = if n == 0 { 0 } else { (start + examined) % n };
        let candidates = self.feasible.iter().map(|i| (*i, &nodes[*i]));
        self.scorer
            .best_of(candidates, task)
            .ok_or(NoFit { nodes: n, reasons })
    }

    /// Scores one node (for tests and tools).
    pub fn score(&self, node: &NodeInfo, task: &TaskInfo) -> f64 {
        self.scorer.score(node, task)
    }
}

/// No node fits a task: how many nodes there were, and why each one examined
/// was refused. Its message is the user's explanation
/// (`0/12 nodes: 8 insufficient memory, …`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", explain(*nodes, reasons))]
pub struct NoFit {
    /// The nodes in the cache.
    pub nodes: usize,
    /// Why each node examined was refused.
    pub reasons: Vec<Unfit>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::{node, task};
    use api_types::{Selector, Taint, TaintEffect, Toleration};
    use std::sync::Arc;
    use tokio::time::Instant;

    #[test]
    fn the_sample_is_bounded_and_rotates() {
        let s = Sampling::default();
        assert_eq!(s.wanted(50), 50);
        assert_eq!(s.wanted(500), 100);
        assert_eq!(s.wanted(5_000), 500);
        let now = Instant::now();
        let mut cache = Cache::new("me");
        for i in 0..1_000 {
            cache.upsert_node(Arc::new(node(&format!("n{i}"), "4", "8Gi")), now);
        }
        let mut algorithm = Algorithm::new(s);
        let t = TaskInfo::new(Arc::new(task("t", "100m", "100Mi")));
        let first = algorithm.decide(&cache, &t).unwrap();
        let second = algorithm.decide(&cache, &t).unwrap();
        assert!(first < 100, "the first search looks at the first 100 nodes");
        assert!(
            (100..200).contains(&second),
            "the next one starts where it stopped"
        );
    }

    /// A cluster described as (name, cpu, memory, labels, taint), with tasks placed.
    struct Case {
        name: &'static str,
        nodes: Vec<(&'static str, &'static str, &'static str)>,
        placed: Vec<(&'static str, &'static str, &'static str)>,
        setup: fn(&mut api_types::Node),
        task: fn() -> api_types::Task,
        want: Result<&'static str, &'static str>,
    }

    fn no_setup(_: &mut api_types::Node) {}

    #[test]
    fn placements() {
        let cases = vec![
            Case {
                name: "the emptier node wins",
                nodes: vec![("a", "4", "8Gi"), ("b", "4", "8Gi")],
                placed: vec![("a", "3", "6Gi")],
                setup: no_setup,
                task: || task("t", "500m", "1Gi"),
                want: Ok("b"),
            },
            Case {
                name: "resources exhausted everywhere",
                nodes: vec![("a", "1", "8Gi"), ("b", "2", "1Gi")],
                placed: vec![("a", "1", "1Gi")],
                setup: no_setup,
                task: || task("t", "1", "2Gi"),
                want: Err("0/2 nodes: 1 insufficient cpu, 1 insufficient memory"),
            },
            Case {
                name: "the only node with room",
                nodes: vec![("a", "2", "8Gi"), ("b", "2", "8Gi")],
                placed: vec![("a", "1500m", "1Gi")],
                setup: no_setup,
                task: || task("t", "1", "1Gi"),
                want: Ok("b"),
            },
            Case {
                name: "a host port in use",
                nodes: vec![("a", "8", "8Gi"), ("b", "1", "8Gi")],
                placed: vec![("a", "100m", "1Mi")],
                setup: no_setup,
                task: || {
                    let mut t = task("t", "100m", "1Mi");
                    t.spec.resources.ports = vec![8080];
                    t
                },
                want: Ok("b"),
            },
            Case {
                name: "a constraint on labels",
                nodes: vec![("a", "8", "8Gi"), ("ssd", "1", "1Gi")],
                placed: vec![],
                setup: |n| {
                    if n.metadata.name == "ssd" {
                        n.metadata.labels.insert("disk".into(), "ssd".into());
                    }
                },
                task: || {
                    let mut t = task("t", "100m", "1Mi");
                    t.spec.constraints = Selector::parse("disk in (ssd)")
                        .unwrap()
                        .requirements()
                        .to_vec();
                    t
                },
                want: Ok("ssd"),
            },
            Case {
                name: "a taint not tolerated",
                nodes: vec![("gpu", "8", "8Gi"), ("b", "1", "1Gi")],
                placed: vec![],
                setup: |n| {
                    if n.metadata.name == "gpu" {
                        n.spec.taints.push(Taint {
                            key: "gpu".into(),
                            value: "true".into(),
                            effect: Some(TaintEffect::NoSchedule),
                        });
                    }
                },
                task: || task("t", "100m", "1Mi"),
                want: Ok("b"),
            },
            Case {
                name: "a taint tolerated",
                nodes: vec![("gpu", "8", "8Gi"), ("b", "1", "1Gi")],
                placed: vec![],
                setup: |n| {
                    n.spec.taints.push(Taint {
                        key: "gpu".into(),
                        value: "true".into(),
                        effect: Some(TaintEffect::NoExecute),
                    });
                },
                task: || {
                    let mut t = task("t", "100m", "1Mi");
                    t.spec.tolerations.push(Toleration {
                        key: "gpu".into(),
                        operator: Some(api_types::TolerationOperator::Exists),
                        ..Default::default()
                    });
                    t
                },
                want: Ok("gpu"),
            },
            Case {
                name: "every node tainted",
                nodes: vec![("a", "8", "8Gi"), ("b", "8", "8Gi")],
                placed: vec![],
                setup: |n| {
                    n.spec.taints.push(Taint {
                        key: "gpu".into(),
                        value: "true".into(),
                        effect: Some(TaintEffect::NoSchedule),
                    });
                },
                task: || task("t", "100m", "1Mi"),
                want: Err("0/2 nodes: 2 taint gpu=true:NoSchedule not tolerated"),
            },
            Case {
                name: "a job's tasks spread",
                nodes: vec![("a", "8", "16Gi"), ("b", "8", "16Gi")],
                placed: vec![("a", "100m", "100Mi")],
                setup: no_setup,
                task: || {
                    let mut t = task("t", "100m", "100Mi");
                    t.metadata
                        .labels
                        .insert(api_types::well_known::LABEL_JOB.into(), "train".into());
                    t
                },
                want: Ok("b"),
            },
        ];
        let now = Instant::now();
        for case in cases {
            let mut cache = Cache::new("me");
            for (name, cpu, memory) in &case.nodes {
                let mut n = node(name, cpu, memory);
                (case.setup)(&mut n);
                cache.upsert_node(Arc::new(n), now);
            }
            for (i, (on, cpu, memory)) in case.placed.iter().enumerate() {
                let mut t = task(&format!("placed{i}"), cpu, memory);
                t.spec.node_name = (*on).into();
                t.spec.resources.ports = vec![8080];
                t.metadata
                    .labels
                    .insert(api_types::well_known::LABEL_JOB.into(), "train".into());
                cache.upsert_task(Arc::new(t));
            }
            let mut algorithm = Algorithm::new(Sampling::default());
            let t = TaskInfo::new(Arc::new((case.task)()));
            let got = algorithm
                .decide(&cache, &t)
                .map(|i| cache.nodes()[i].name().to_owned())
                .map_err(|no_fit| no_fit.to_string());
            assert_eq!(
                got,
                case.want.map(str::to_owned).map_err(str::to_owned),
                "{}",
                case.name
            );
        }
    }
}
