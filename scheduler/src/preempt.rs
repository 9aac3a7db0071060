//! Priority preemption: for a task that fits nowhere, the node where evicting the
//! fewest, lowest-priority tasks (all of lower priority than the task) makes room.

use crate::cache::Cache;
use crate::filter::admits;
use crate::resources::{NodeInfo, Placed, TaskInfo};

/// Where to make room, and whom to evict.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The node.
    pub node: String,
    /// The tasks to evict, lowest priority first.
    pub victims: Vec<TaskInfo>,
}

/// Whether `task` fits on `node` once `evicted` are gone.
fn fits_without(node: &NodeInfo, task: &TaskInfo, evicted: &[&Placed]) -> bool {
    let mut free = node.allocatable.clone();
    free.subtract(&node.requested);
    for victim in evicted {
        free.add(&victim.info.demand);
    }
    let want = &task.demand;
    if want.cpu_milli > free.cpu_milli || want.memory > free.memory || want.disk > free.disk {
        return false;
    }
    for (name, amount) in &want.extended {
        if *amount > free.extended.get(name).copied().unwrap_or(0) {
            return false;
        }
    }
    task.ports().iter().all(|port| {
        let holders = node.ports.get(port).copied().unwrap_or(0);
        let freed = evicted
            .iter()
            .filter(|v| v.info.ports().contains(port))
            .count();
        holders as usize <= freed
    })
}

/// The victims on one node, or none if evicting every lower-priority task is not enough.
fn victims_on<'a>(node: &'a NodeInfo, task: &TaskInfo) -> Option<Vec<&'a Placed>> {
    admits(node, &task.task).ok()?;
    // Only tasks seen bound, and only of lower priority.
    let mut candidates: Vec<&Placed> = node
        .tasks
        .values()
        .filter(|p| !p.assumed && p.info.priority < task.priority)
        .collect();
    if !fits_without(node, task, &candidates) {
        return None;
    }
    // Spare as many as possible: the highest priority first, then the smallest (so
    // that fewer, larger tasks go).
    candidates.sort_by(|a, b| {
        b.info.priority.cmp(&a.info.priority).then_with(|| {
            let size = |p: &Placed| (p.info.demand.cpu_milli, p.info.demand.memory);
            size(a).cmp(&size(b))
        })
    });
    let mut victims = candidates;
    let mut i = 0;
    while i < victims.len() {
        let spared = victims.remove(i);
        if !fits_without(node, task, &victims) {
            victims.insert(i, spared);
            i += 1;
        }
    }
    victims.sort_by_key(|p| p.info.priority);
    Some(victims)
}

/// The cheapest plan: the lowest highest victim priority, then the fewest victims,
/// then the lowest sum of victim priorities; none if no node can make room.
pub fn plan(cache: &Cache, task: &TaskInfo) -> Option<Plan> {
    /// Highest victim priority, victims, sum of victim priorities.
    type Cost = (i32, usize, i64);
    let mut best: Option<(Cost, &NodeInfo, Vec<&Placed>)> = None;
    for node in cache.nodes() {
        let Some(victims) = victims_on(node, task) else {
            continue;
        };
        if victims.is_empty() {
            continue;
        }
        let cost = (
            victims
                .iter()
                .map(|v| v.info.priority)
                .max()
                .unwrap_or(i32::MIN),
            victims.len(),
            victims.iter().map(|v| i64::from(v.info.priority)).sum(),
        );
        if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
            best = Some((cost, node, victims));
        }
    }
    best.map(|(_, node, victims)| Plan {
        node: node.name().to_owned(),
        victims: victims.into_iter().map(|v| v.info.clone()).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::{node, task};
    use std::sync::Arc;
    use tokio::time::Instant;

    struct Case {
        name: &'static str,
        /// Nodes: name, cpu.
        nodes: Vec<(&'static str, &'static str)>,
        /// Placed tasks: name, node, cpu, priority.
        placed: Vec<(&'static str, &'static str, &'static str, i32)>,
        /// The preemptor's cpu and priority.
        preemptor: (&'static str, i32),
        /// The chosen node and victims, or none.
        want: Option<(&'static str, Vec<&'static str>)>,
    }

    #[test]
    fn preemption_chooses_the_cheapest_victims() {
        let cases = vec![
            Case {
                name: "never equal or higher priority",
                nodes: vec![("a", "2")],
                placed: vec![("x", "a", "1", 5), ("y", "a", "1", 7)],
                preemptor: ("1", 5),
                want: None,
            },
            Case {
                name: "the lower-priority node",
                nodes: vec![("a", "2"), ("b", "2")],
                placed: vec![("x", "a", "2", 3), ("y", "b", "2", 1)],
                preemptor: ("1", 5),
                want: Some(("b", vec!["y"])),
            },
            Case {
                name: "one big victim rather than two small ones",
                nodes: vec![("a", "2"), ("b", "2")],
                placed: vec![
                    ("s1", "a", "1", 1),
                    ("s2", "a", "1", 1),
                    ("big", "b", "2", 1),
                ],
                preemptor: ("2", 5),
                want: Some(("b", vec!["big"])),
            },
            Case {
                name: "only as many as needed, the lowest first",
                nodes: vec![("a", "4")],
                placed: vec![
                    ("p1", "a", "1", 1),
                    ("p2", "a", "1", 2),
                    ("p3", "a", "1", 3),
                    ("p4", "a", "1", 4),
                ],
                preemptor: ("2", 9),
                want: Some(("a", vec!["p1", "p2"])),
            },
            Case {
                name: "lower max priority beats fewer victims",
                nodes: vec![("a", "2"), ("b", "2")],
                placed: vec![
                    ("low1", "a", "1", 1),
                    ("low2", "a", "1", 1),
                    ("mid", "b", "2", 4),
                ],
                preemptor: ("2", 5),
                want: Some(("a", vec!["low1", "low2"])),
            },
            Case {
                name: "not enough to evict anywhere",
                nodes: vec![("a", "2")],
                placed: vec![("x", "a", "1", 1)],
                preemptor: ("3", 5),
                want: None,
            },
        ];
        let now = Instant::now();
        for case in cases {
            let mut cache = Cache::new("me");
            for (name, cpu) in &case.nodes {
                cache.upsert_node(Arc::new(node(name, cpu, "64Gi")), now);
            }
            for (name, on, cpu, priority) in &case.placed {
                let mut t = task(name, cpu, "1Mi");
                t.spec.node_name = (*on).into();
                t.spec.priority = Some(*priority);
                cache.upsert_task(Arc::new(t));
            }
            let mut p = task("preemptor", case.preemptor.0, "1Mi");
            p.spec.priority = Some(case.preemptor.1);
            let got = plan(&cache, &TaskInfo::new(Arc::new(p))).map(|plan| {
                (
                    plan.node,
                    plan.victims
                        .iter()
                        .map(|v| v.task.metadata.name.clone())
                        .collect::<Vec<_>>(),
                )
            });
            let want = case.want.map(|(n, v)| {
                (
                    n.to_owned(),
                    v.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, want, "{}", case.name);
        }
    }

    #[test]
    fn a_port_is_freed_by_evicting_its_holder() {
        let now = Instant::now();
        let mut cache = Cache::new("me");
        cache.upsert_node(Arc::new(node("a", "8", "8Gi")), now);
        let mut holder = task("holder", "100m", "1Mi");
        holder.spec.node_name = "a".into();
        holder.spec.resources.ports = vec![443];
        cache.upsert_task(Arc::new(holder));
        let mut other = task("other", "100m", "1Mi");
        other.spec.node_name = "a".into();
        cache.upsert_task(Arc::new(other));
        let mut p = task("p", "100m", "1Mi");
        p.spec.priority = Some(1);
        p.spec.resources.ports = vec![443];
        let plan = plan(&cache, &TaskInfo::new(Arc::new(p))).unwrap();
        assert_eq!(plan.victims.len(), 1);
        assert_eq!(plan.victims[0].key, "default/holder");
    }

    #[test]
    fn a_host_port_is_freed_by_evicting_its_holder() {
        let now = Instant::now();
        let mut cache = Cache::new("me");
        cache.upsert_node(Arc::new(node("a", "8", "8Gi")), now);
        let mut holder = task("holder", "100m", "1Mi");
        holder.spec.node_name = "a".into();
        holder.spec.ports.push(api_types::ContainerPort {
            container_port: 80,
            host_port: Some(443),
            ..Default::default()
        });
        cache.upsert_task(Arc::new(holder));
        let mut other = task("other", "100m", "1Mi");
        other.spec.node_name = "a".into();
        cache.upsert_task(Arc::new(other));
        let mut p = task("p", "100m", "1Mi");
        p.spec.priority = Some(1);
        p.spec.resources.ports = vec![443];
        let plan = plan(&cache, &TaskInfo::new(Arc::new(p))).unwrap();
        assert_eq!(plan.victims.len(), 1);
        assert_eq!(plan.victims[0].key, "default/holder");
    }
}
