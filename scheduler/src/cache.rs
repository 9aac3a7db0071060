//! The scheduler's cache: every node and what is placed on it, kept up to date from
//! watch events one change at a time, and from the scheduler's own binds (assumed at
//! once, confirmed when the watch shows the task bound, dropped if the bind fails or
//! the watch never shows it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api_types::{Node, Task, TaskPhase};
use tokio::time::Instant;

use crate::claims::{self, Claim};
use crate::resources::{NodeInfo, Placed, TaskInfo, key_of};

/// How long a bound task stays assumed if the watch does not show it bound.
pub const ASSUME_TTL: Duration = Duration::from_secs(30);

/// Whether a task still waits for a node.
pub fn pending(task: &Task) -> bool {
    task.spec.node_name.is_empty()
        && task.metadata.deletion_timestamp.is_none()
        && task.phase() == TaskPhase::Pending
}

/// Whether a task holds resources on its node.
pub fn holds_resources(task: &Task) -> bool {
    !task.spec.node_name.is_empty() && !task.is_terminal()
}

#[derive(Clone, Debug)]
struct Assumption {
    node: String,
    /// When it lapses; none while this scheduler's bind is in flight.
    expires: Option<Instant>,
    /// For another scheduler's claim: the task claimed.
    claim_of: Option<String>,
}

/// A claim's entry: per claimer and node, since one scheduler may claim a task on
/// one node, lose the bind to a stale version, and claim it on another.
fn claim_key(task: &str, by: &str, node: &str) -> String {
    format!("{task}#{by}@{node}")
}

/// Nodes and their reservations, changed incrementally.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// The node each placed task is on.
    placed: HashMap<String, String>,
    /// Tasks placed on nodes not (or no longer) known, by node.
    homeless: HashMap<String, BTreeMap<String, Placed>>,
    assumed: HashMap<String, Assumption>,
    /// Other schedulers' claims by task: their entries in `assumed`. A claim is kept
    /// apart from the task's own placement: until the watch shows where the task
    /// went, both may hold.
    claims_of: HashMap<String, Vec<String>>,
    generation: u64,
    identity: String,
}

impl Cache {
    /// An empty cache for the scheduler named `identity` (its own claims are not
    /// read back from nodes).
    pub fn new(identity: &str) -> Self {
        Cache {
            identity: identity.to_owned(),
            ..Default::default()
        }
    }

    /// Every node, in a stable order (new nodes go last; a removed node's slot is
    /// taken by the last one).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).and_then(|i| self.nodes.get(*i))
    }

    /// Counts changes that may let a waiting task fit: a node added or changed, a
    /// task gone from a node, an assumption dropped.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `key` is placed only by assumption (this scheduler's bind in flight or
    /// not yet seen).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains_key(key)
    }

    /// The node `key` is placed on.
    pub fn placement(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(String::as_str)
    }

    /// Tasks placed, bound or assumed.
    pub fn placed_count(&self) -> usize {
        self.placed.len()
    }

    /// Adds or updates a node; an older version than the one held is ignored.
    pub fn upsert_node(&mut self, node: Arc<Node>, now: Instant) {
        let name = node.metadata.name.clone();
        let foreign = claims::read(&node)
            .into_iter()
            .filter(|c| c.by != self.identity)
            .collect::<Vec<_>>();
        match self.index.get(&name).copied() {
            Some(i) => {
                let info = &mut self.nodes[i];
                let revision: u64 = node.metadata.resource_version.parse().unwrap_or(0);
                if revision != 0 && revision < info.revision {
                    return;
                }
                let old = &info.node;
                let grew = old.spec != node.spec
                    || old.metadata.labels != node.metadata.labels
                    || old.status.as_ref().map(|s| (&s.allocatable, &s.capacity))
                        != node.status.as_ref().map(|s| (&s.allocatable, &s.capacity))
                    || info.ready != node.is_ready();
                info.set_node(node);
                if grew {
                    self.generation += 1;
                }
            }
            None => {
                let mut info = NodeInfo::new(node);
                for (_, placed) in self.homeless.remove(&name).unwrap_or_default() {
                    info.add(placed);
                }
                self.index.insert(name.clone(), self.nodes.len());
                self.nodes.push(info);
                self.generation += 1;
            }
        }
        // Claims gone from the node were withdrawn (their binds failed) or aged out.
        let current: std::collections::HashSet<String> = foreign
            .iter()
            .map(|c| claim_key(&c.task, &c.by, &name))
            .collect();
        let withdrawn: Vec<String> = self
            .node(&name)
            .map(|info| {
                info.tasks
                    .iter()
                    .filter(|(k, p)| p.assumed && k.contains('#') && !current.contains(*k))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for key in withdrawn {
            self.forget_claim(&key);
        }
        for claim in foreign {
            self.assume_claim(&name, claim, now);
        }
    }

    /// Drops one claim entry.
    fn forget_claim(&mut self, key: &str) {
        let task = self.assumed.get(key).and_then(|a| a.claim_of.clone());
        if self.forget_one(key)
            && let Some(task) = task
            && let Some(entries) = self.claims_of.get_mut(&task)
        {
            entries.retain(|e| e != key);
            if entries.is_empty() {
                self.claims_of.remove(&task);
            }
        }
    }

    /// Removes a node; its tasks wait in case it comes back.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name().to_owned(), i);
        }
        if !info.tasks.is_empty() {
            self.homeless.insert(name.to_owned(), info.tasks);
        }
    }

    fn place(&mut self, node: &str, placed: Placed) {
        let key = placed.info.key.clone();
        if let Some(old) = self.placed.get(&key)
            && old != node
        {
            let old = old.clone();
            self.unplace(&key, &old);
            self.generation += 1;
        }
        match self.index.get(node) {
            Some(i) => self.nodes[*i].add(placed),
            None => {
                self.homeless
                    .entry(node.to_owned())
                    .or_default()
                    .insert(key.clone(), placed);
            }
        }
        self.placed.insert(key, node.to_owned());
    }

    fn unplace(&mut self, key: &str, node: &str) -> Option<Placed> {
        self.placed.remove(key);
        match self.index.get(node) {
            Some(i) => self.nodes[*i].remove(key),
            None => {
                let tasks = self.homeless.get_mut(node)?;
                let placed = tasks.remove(key);
                if tasks.is_empty() {
                    self.homeless.remove(node);
                }
                placed
            }
        }
    }

    /// Takes a task's new version from the watch. Returns whether it freed resources.
    pub fn upsert_task(&mut self, task: Arc<Task>) -> bool {
        let key = key_of(&task);
        if holds_resources(&task) {
            self.assumed.remove(&key);
            self.drop_claims(&key);
            let node = task.spec.node_name.clone();
            self.place(
                &node,
                Placed {
                    info: TaskInfo::new(task),
                    assumed: false,
                },
            );
            return false;
        }
        // Still unbound: an assumption stays (the bind is in flight or not yet seen),
        // and so do other schedulers' claims.
        if task.is_terminal() {
            return self.forget_all(&key);
        }
        false
    }

    /// The watch says the task is gone. Returns whether it freed resources.
    pub fn remove_task(&mut self, task: &Task) -> bool {
        self.forget_all(&key_of(task))
    }

    /// Drops this scheduler's assumption for the task (its bind failed). A placement
    /// the watch has confirmed meanwhile stays, and so do other schedulers' claims.
    /// Returns whether it freed resources.
    pub fn forget(&mut self, key: &str) -> bool {
        if self.assumed.get(key).is_none_or(|a| a.claim_of.is_some()) {
            return false;
        }
        self.forget_one(key)
    }

    /// Drops the task's placement and every claim on it.
    fn forget_all(&mut self, key: &str) -> bool {
        let claims = self.drop_claims(key);
        self.forget_one(key) || claims
    }

    fn drop_claims(&mut self, key: &str) -> bool {
        let mut freed = false;
        for entry in self.claims_of.remove(key).unwrap_or_default() {
            freed |= self.forget_one(&entry);
        }
        freed
    }

    fn forget_one(&mut self, key: &str) -> bool {
        self.assumed.remove(key);
        let Some(node) = self.placed.get(key).cloned() else {
            return false;
        };
        self.unplace(key, &node);
        self.generation += 1;
        true
    }

    /// Places `task` on `node` before the bind is written.
    pub fn assume(&mut self, task: TaskInfo, node: &str) {
        self.assumed.insert(
            task.key.clone(),
            Assumption {
                node: node.to_owned(),
                expires: None,
                claim_of: None,
            },
        );
        self.place(
            node,
            Placed {
                info: task,
                assumed: true,
            },
        );
    }

    /// The bind of an assumed task was written: keep it until the watch shows it, at
    /// most [`ASSUME_TTL`].
    pub fn bound(&mut self, key: &str, now: Instant) {
        if let Some(a) = self.assumed.get_mut(key) {
            a.expires = Some(now + ASSUME_TTL);
        }
    }

    /// The node an assumed task is on.
    pub fn assumed_on(&self, key: &str) -> Option<&str> {
        self.assumed.get(key).map(|a| a.node.as_str())
    }

    fn assume_claim(&mut self, node: &str, claim: Claim, now: Instant) {
        // Seen bound: the claim has served.
        if self.placed.contains_key(&claim.task) && !self.assumed.contains_key(&claim.task) {
            return;
        }
        let mut info = claim.task_info();
        info.key = claim_key(&claim.task, &claim.by, node);
        if self.placed.contains_key(&info.key) {
            return;
        }
        self.claims_of
            .entry(claim.task.clone())
            .or_default()
            .push(info.key.clone());
        self.assumed.insert(
            info.key.clone(),
            Assumption {
                node: node.to_owned(),
                expires: Some(now + ASSUME_TTL),
                claim_of: Some(claim.task),
            },
        );
        self.place(
            node,
            Placed {
                info,
                assumed: true,
            },
        );
    }

    /// Forgets tasks seen bound whose keys `keep` refuses (gone while the watch was behind).
    pub fn retain_tasks(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .placed
            .keys()
            .filter(|k| !self.assumed.contains_key(*k) && !keep(k))
            .cloned()
            .collect();
        for key in gone {
            self.forget_all(&key);
        }
    }

    /// Drops assumptions that lapsed. Returns their tasks.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let lapsed: Vec<(String, Option<String>)> = self
            .assumed
            .iter()
            .filter(|(_, a)| a.expires.is_some_and(|e| e <= now))
            .map(|(k, a)| (k.clone(), a.claim_of.clone()))
            .collect();
        let mut tasks = Vec::with_capacity(lapsed.len());
        for (key, claim_of) in lapsed {
            match claim_of {
                Some(task) => {
                    self.forget_claim(&key);
                    tasks.push(task);
                }
                None => {
                    self.forget_one(&key);
                    tasks.push(key);
                }
            }
        }
        tasks
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::{node, task};

    fn bound(name: &str, node: &str) -> Arc<Task> {
        let mut t = task(name, "500m", "1Gi");
        t.spec.node_name = node.into();
        Arc::new(t)
    }

    #[test]
    fn follows_watch_events_one_at_a_time() {
        let now = Instant::now();
        let mut cache = Cache::new("me");
        cache.upsert_node(Arc::new(node("n1", "2", "4Gi")), now);
        let g = cache.generation();
        // A task bound to a node not yet seen waits for it.
        assert!(!cache.upsert_task(bound("a", "n2")));
        cache.upsert_node(Arc::new(node("n2", "2", "4Gi")), now);
        assert!(cache.generation() > g, "a new node is a change");
        assert_eq!(cache.node("n2").unwrap().requested.cpu_milli, 500);
        cache.upsert_task(bound("b", "n1"));
        cache.upsert_task(bound("b", "n1"));
        assert_eq!(cache.node("n1").unwrap().requested.cpu_milli, 500);
        // Finishing frees.
        let mut done = (*bound("b", "n1")).clone();
        done.status = Some(api_types::TaskStatus {
            phase: TaskPhase::Completed,
            ..Default::default()
        });
        assert!(cache.upsert_task(Arc::new(done)));
        assert_eq!(cache.node("n1").unwrap().requested.cpu_milli, 0);
        // Removing a node keeps its tasks for when it returns.
        cache.remove_node("n1");
        assert!(cache.node("n1").is_none());
        assert_eq!(cache.node("n2").unwrap().name(), "n2");
        cache.upsert_task(bound("c", "n1"));
        cache.upsert_node(Arc::new(node("n1", "2", "4Gi")), now);
        assert_eq!(cache.node("n1").unwrap().tasks.len(), 1);
        assert!(cache.remove_task(&bound("c", "n1")));
        assert_eq!(cache.node("n1").unwrap().tasks.len(), 0);
    }

    #[test]
    fn an_older_node_version_is_ignored() {
        let now = Instant::now();
        let mut cache = Cache::new("me");
        let mut newer = node("n", "4", "4Gi");
        newer.metadata.resource_version = "10".into();
        cache.upsert_node(Arc::new(newer), now);
        let mut older = node("n", "1", "4Gi");
        older.metadata.resource_version = "9".into();
        cache.upsert_node(Arc::new(older), now);
        assert_eq!(cache.node("n").unwrap().allocatable.cpu_milli, 4000);
    }

    #[test]
    fn assumed_binds_hold_until_confirmed_expired_or_forgotten() {
        let start = Instant::now();
        let mut cache = Cache::new("me");
        cache.upsert_node(Arc::new(node("n", "2", "4Gi")), start);
        let pending = Arc::new(task("a", "1", "1Gi"));
        cache.assume(TaskInfo::new(pending.clone()), "n");
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 1000);
        // The watch still shows the task unbound: the assumption stays.
        assert!(!cache.upsert_task(pending.clone()));
        assert!(cache.is_assumed("default/a"));
        // Never expires while the bind is in flight.
        assert_eq!(cache.expire(start + ASSUME_TTL * 10).len(), 0);
        cache.bound("default/a", start);
        // Confirmed by the watch: no longer assumed, still placed.
        cache.upsert_task(bound("a", "n"));
        assert!(!cache.is_assumed("default/a"));
        assert_eq!(cache.expire(start + ASSUME_TTL * 10).len(), 0);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 500);

        // A bind the watch never shows lapses.
        cache.assume(TaskInfo::new(Arc::new(task("b", "1", "1Gi"))), "n");
        cache.bound("default/b", start);
        assert_eq!(cache.expire(start + ASSUME_TTL / 2).len(), 0);
        assert_eq!(cache.expire(start + ASSUME_TTL).len(), 1);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 500);

        // A failed bind rolls back at once.
        cache.assume(TaskInfo::new(Arc::new(task("c", "1", "1Gi"))), "n");
        let g = cache.generation();
        assert!(cache.forget("default/c"));
        assert!(cache.generation() > g);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 500);

        // Another scheduler won the race: the task shows up bound elsewhere.
        cache.upsert_node(Arc::new(node("m", "2", "4Gi")), start);
        cache.assume(TaskInfo::new(Arc::new(task("d", "1", "1Gi"))), "n");
        cache.upsert_task(bound("d", "m"));
        assert_eq!(cache.placement("default/d"), Some("m"));
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 500);
        // Our failed bind rolls back without touching the placement the watch confirmed.
        assert!(!cache.forget("default/d"));
        assert_eq!(cache.placement("default/d"), Some("m"));
    }

    #[test]
    fn other_schedulers_claims_count_until_seen_bound() {
        let now = Instant::now();
        let mut cache = Cache::new("me");
        let mut n = node("n", "2", "4Gi");
        let other = Claim::of(&TaskInfo::new(Arc::new(task("x", "1", "1Gi"))), "other", 0);
        let mine = Claim::of(&TaskInfo::new(Arc::new(task("y", "1", "1Gi"))), "me", 0);
        claims::write(&mut n.metadata.annotations, &[other, mine]);
        cache.upsert_node(Arc::new(n), now);
        let info = cache.node("n").unwrap();
        assert_eq!(info.requested.cpu_milli, 1000, "only the other's claim");
        cache.upsert_task(bound("x", "n"));
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 500);
        // Read again (another write to the node): the claim has served.
        let n = cache.node("n").unwrap().node.clone();
        cache.upsert_node(n, now);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 500);

        // A claim for a task this scheduler is itself binding elsewhere: both hold
        // until the watch shows who won.
        cache.upsert_node(Arc::new(node("m", "2", "4Gi")), now);
        let z = TaskInfo::new(Arc::new(task("z", "1", "1Gi")));
        cache.assume(z.clone(), "m");
        let mut n = (*cache.node("n").unwrap().node).clone();
        claims::write(&mut n.metadata.annotations, &[Claim::of(&z, "other", 0)]);
        cache.upsert_node(Arc::new(n), now);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 1500);
        assert_eq!(cache.node("m").unwrap().requested.cpu_milli, 1000);
        let mut won = (*bound("z", "n")).clone();
        won.spec.resources = z.task.spec.resources.clone();
        cache.upsert_task(Arc::new(won));
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 1500);
        assert_eq!(cache.node("m").unwrap().requested.cpu_milli, 0);
        // Unconfirmed claims lapse.
        let mut n = (*cache.node("n").unwrap().node).clone();
        claims::write(
            &mut n.metadata.annotations,
            &[Claim::of(
                &TaskInfo::new(Arc::new(task("w", "1", "1Gi"))),
                "other",
                0,
            )],
        );
        cache.upsert_node(Arc::new(n), now);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 2500);
        assert_eq!(cache.expire(now + ASSUME_TTL), vec!["default/w".to_owned()]);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 1500);
        // A claim withdrawn from the node is dropped at once.
        let mut n = (*cache.node("n").unwrap().node).clone();
        let v = Claim::of(&TaskInfo::new(Arc::new(task("v", "1", "1Gi"))), "other", 0);
        claims::write(&mut n.metadata.annotations, std::slice::from_ref(&v));
        cache.upsert_node(Arc::new(n.clone()), now);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 2500);
        let g = cache.generation();
        claims::write(&mut n.metadata.annotations, &[]);
        cache.upsert_node(Arc::new(n), now);
        assert_eq!(cache.node("n").unwrap().requested.cpu_milli, 1500);
        assert!(cache.generation() > g);
    }
}
