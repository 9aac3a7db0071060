//! Node IPAM: gives every Node without `spec.taskCIDR` the lowest free subnet of
//! the cluster CIDR (`loom controllers --cluster-cidr`, subnets of
//! `--node-cidr-mask-size`), as Kubernetes' nodeipam range allocator does for
//! `spec.podCIDR`. The first step of task networking: nothing uses the subnets yet.
//!
//! Free means held by no Node. The allocator is seeded from the node cache when the
//! controller starts, and remembers each subnet it hands out from then on, so a
//! cache that has not yet seen a write never gets one subnet handed out twice; a
//! deleted node's subnet is free again. Each assignment is one write conditioned on
//! the node's resourceVersion (retried on conflict); `taskCIDR` is immutable once
//! set, so a node's subnet never moves. A node whose own `taskCIDR` (set by hand)
//! lies outside the cluster CIDR or overlaps another node's is left as it is, with
//! a Warning Event; when the range is full a node gets a `CIDRNotAvailable`
//! Warning Event and is retried.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use api_types::Node;
use api_types::event::EventType;
use api_types::validation::{CidrError, TASK_CIDR_PREFIX, parse_task_cidr};
use client::{Action, Api, ObjectKey, Patch, PatchParams};
use ipnet::Ipv4Net;
use serde_json::json;
use tracing::{info, warn};

use crate::{Context, Error, Result, at_least, observe, publish};

/// The Events' component.
pub const COMPONENT: &str = "node-ipam-controller";
/// Event reason: no subnet of the cluster CIDR is free.
pub const REASON_CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
/// Event reason: a node's own `taskCIDR` is not inside the cluster CIDR.
pub const REASON_CIDR_OUTSIDE_RANGE: &str = "CIDROutsideClusterRange";
/// Event reason: a node's own `taskCIDR` overlaps another node's.
pub const REASON_CIDR_OVERLAP: &str = "CIDROverlap";
/// Event reason: a node's `taskCIDR` is not a valid one (written before validation).
pub const REASON_CIDR_INVALID: &str = "CIDRInvalid";
/// How long a node waits before it asks again for a subnet of a full range (a
/// deleted node's subnet wakes the waiting ones at once).
pub const EXHAUSTED_RETRY: Duration = Duration::from_secs(30);
/// How many conflicting writes in a row an assignment takes before it backs off.
const WRITE_ATTEMPTS: usize = 5;

/// The cluster CIDR and the size of each node's subnet in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    range: Ipv4Net,
    node_prefix: u8,
}

/// Why a cluster CIDR and node mask size do not make a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterCidrError {
    /// The cluster CIDR is not a canonical IPv4 CIDR between /8 and /30.
    #[error("the cluster CIDR {value:?} {rule}")]
    Cidr {
        /// As given.
        value: String,
        /// What is wrong with it.
        rule: CidrError,
    },
    /// The node mask size is not between the cluster CIDR's prefix length and 30.
    #[error(
        "the node CIDR mask size /{node_prefix} must be between the cluster CIDR's own /{cluster_prefix} and /30"
    )]
    NodePrefix {
        /// The node mask size given.
        node_prefix: u8,
        /// The cluster CIDR's prefix length.
        cluster_prefix: u8,
    },
}

impl ClusterCidr {
    /// `cidr` (canonical IPv4, `/8` to `/30`) cut into subnets of `/node_prefix`.
    pub fn new(cidr: &str, node_prefix: u8) -> Result<Self, ClusterCidrError> {
        let range = parse_task_cidr(cidr).map_err(|rule| ClusterCidrError::Cidr {
            value: cidr.to_owned(),
            rule,
        })?;
        if node_prefix < range.prefix_len() || !TASK_CIDR_PREFIX.contains(&node_prefix) {
            return Err(ClusterCidrError::NodePrefix {
                node_prefix,
                cluster_prefix: range.prefix_len(),
            });
        }
        Ok(ClusterCidr { range, node_prefix })
    }

    /// The cluster CIDR.
    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// The prefix length of each node's subnet.
    pub fn node_prefix(&self) -> u8 {
        self.node_prefix
    }

    /// How many node subnets the range holds.
    pub fn subnets(&self) -> u64 {
        1u64 << (self.node_prefix - self.range.prefix_len())
    }
}

impl std::fmt::Display for ClusterCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in /{} subnets", self.range, self.node_prefix)
    }
}

/// Why a node cannot hold the subnet it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The subnet is not inside the cluster CIDR.
    Outside,
    /// The subnet overlaps `cidr`, held by `node`.
    Overlaps {
        /// The holder.
        node: String,
        /// What it holds.
        cidr: Ipv4Net,
    },
}

/// A subnet's holder: a node name and its uid (a node deleted and registered
/// again under the same name is another node).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    node: String,
    uid: String,
}

/// A held subnet, in the map keyed by its first address.
#[derive(Debug, Clone)]
struct Held {
    last: u32,
    cidr: Ipv4Net,
    holder: Holder,
}

fn bounds(net: Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// The subnets held in a cluster CIDR: pure bookkeeping, no I/O. Held subnets
/// never overlap; a node holds at most one.
#[derive(Debug)]
pub struct Allocator {
    cluster: ClusterCidr,
    /// By first address.
    held: BTreeMap<u32, Held>,
    /// Node name to (uid, subnet).
    by_node: HashMap<String, (String, Ipv4Net)>,
}

impl Allocator {
    /// Nothing held yet.
    pub fn new(cluster: ClusterCidr) -> Self {
        Allocator {
            cluster,
            held: BTreeMap::new(),
            by_node: HashMap::new(),
        }
    }

    /// What `node` holds, if the holder is the node with `uid`.
    pub fn held_by(&self, node: &str, uid: &str) -> Option<Ipv4Net> {
        self.by_node
            .get(node)
            .filter(|(held_uid, _)| held_uid == uid)
            .map(|(_, cidr)| *cidr)
    }

    /// How many subnets are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The held subnet that overlaps `cidr`, if any. Held subnets are disjoint, so
    /// of those starting at or before `cidr`'s end, only the last can reach it.
    fn overlapping(&self, cidr: Ipv4Net) -> Option<&Held> {
        let (first, last) = bounds(cidr);
        self.held
            .range(..=last)
            .next_back()
            .map(|(_, held)| held)
            .filter(|held| held.last >= first)
    }

    /// Records that the node `node` (`uid`) holds `cidr` (it says so in its
    /// spec), dropping whatever it held before; refused when `cidr` is outside
    /// the cluster CIDR or overlaps another node's subnet.
    pub fn occupy(&mut self, node: &str, uid: &str, cidr: Ipv4Net) -> Result<(), Refusal> {
        if self.held_by(node, uid) == Some(cidr) {
            return Ok(());
        }
        self.release(node);
        if !self.cluster.range.contains(&cidr) {
            return Err(Refusal::Outside);
        }
        if let Some(other) = self.overlapping(cidr) {
            return Err(Refusal::Overlaps {
                node: other.holder.node.clone(),
                cidr: other.cidr,
            });
        }
        self.insert(node, uid, cidr);
        Ok(())
    }

    /// The lowest free subnet of the node size, now held by `node` (`uid`); or
    /// what it already holds; `None` when the range is full.
    pub fn allocate(&mut self, node: &str, uid: &str) -> Option<Ipv4Net> {
        if let Some(cidr) = self.held_by(node, uid) {
            return Some(cidr);
        }
        self.release(node);
        let size = 1u64 << (32 - u32::from(self.cluster.node_prefix));
        let (first, last) = bounds(self.cluster.range);
        let (first, last) = (u64::from(first), u64::from(last));
        // Each step either finds a gap or jumps past one held subnet.
        let mut candidate = first;
        while candidate + size - 1 <= last {
            let end = u32::try_from(candidate + size - 1).ok()?;
            match self.held.range(..=end).next_back() {
                Some((_, held)) if u64::from(held.last) >= candidate => {
                    // The range is aligned to the subnet size: so is the next one.
                    candidate = (u64::from(held.last) + 1).div_ceil(size) * size;
                }
                _ => {
                    let start = u32::try_from(candidate).ok()?;
                    let cidr = Ipv4Net::new(start.into(), self.cluster.node_prefix).ok()?;
                    self.insert(node, uid, cidr);
                    return Some(cidr);
                }
            }
        }
        None
    }

    /// Frees what `node` holds (whatever its uid); returns it.
    pub fn release(&mut self, node: &str) -> Option<Ipv4Net> {
        let (_, cidr) = self.by_node.remove(node)?;
        self.held.remove(&bounds(cidr).0);
        Some(cidr)
    }

    /// Frees what nodes no longer in `exists` (by name and uid) hold.
    pub fn retain(&mut self, exists: impl Fn(&str, &str) -> bool) {
        let gone: Vec<String> = self
            .by_node
            .iter()
            .filter(|(node, (uid, _))| !exists(node, uid))
            .map(|(node, _)| node.clone())
            .collect();
        for node in gone {
            self.release(&node);
        }
    }

    fn insert(&mut self, node: &str, uid: &str, cidr: Ipv4Net) {
        let (first, last) = bounds(cidr);
        self.held.insert(
            first,
            Held {
                last,
                cidr,
                holder: Holder {
                    node: node.to_owned(),
                    uid: uid.to_owned(),
                },
            },
        );
        self.by_node.insert(node.to_owned(), (uid.to_owned(), cidr));
    }
}

/// The allocator and what was already reported, behind one lock.
#[derive(Debug)]
struct State {
    allocator: Allocator,
    seeded: bool,
    /// The last problem reported (as an Event) about each node's own taskCIDR, so
    /// that each of its status writes does not report it again.
    reported: HashMap<String, String>,
}

/// The node IPAM controller's context: the shared caches and its allocator.
#[derive(Debug)]
pub struct Ipam {
    ctx: Arc<Context>,
    cluster: ClusterCidr,
    state: Mutex<State>,
}

/// What a reconcile decided under the lock.
enum Step {
    Done,
    Report {
        reason: &'static str,
        message: String,
    },
    Assign(Ipv4Net),
    Exhausted {
        held: usize,
    },
}

impl Ipam {
    /// An allocator of `cluster` over the controllers' caches.
    pub fn new(ctx: Arc<Context>, cluster: ClusterCidr) -> Self {
        Ipam {
            ctx,
            cluster,
            state: Mutex::new(State {
                allocator: Allocator::new(cluster),
                seeded: false,
                reported: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called for every node change: a deleted node's subnet is free again, and
    /// the nodes waiting for one (the range was full) are looked at now.
    pub fn on_change(&self, node: &Node) -> Vec<ObjectKey> {
        let name = &node.metadata.name;
        if self.ctx.nodes.get(&ObjectKey::new("", name)).is_some() {
            return Vec::new();
        }
        let mut state = self.lock();
        state.reported.remove(name);
        if state.allocator.held_by(name, &node.metadata.uid).is_none() {
            return Vec::new();
        }
        state.allocator.release(name);
        drop(state);
        info!(node = %name, "node deleted: its task subnet is free");
        self.ctx
            .nodes
            .list()
            .iter()
            .filter(|n| n.spec.task_cidr.is_empty())
            .map(|n| ObjectKey::new("", &n.metadata.name))
            .collect()
    }

    /// Brings the allocator in line with the cache: what deleted nodes held is
    /// freed, and every node's own taskCIDR not yet recorded is, oldest node first
    /// (so of two overlapping subnets the older node's wins).
    fn sync(&self, state: &mut State) {
        let nodes = self.ctx.nodes.list();
        let live: HashMap<&str, &str> = nodes
            .iter()
            .map(|n| (n.metadata.name.as_str(), n.metadata.uid.as_str()))
            .collect();
        state
            .allocator
            .retain(|node, uid| live.get(node) == Some(&uid));
        let mut named: Vec<&Arc<Node>> = nodes
            .iter()
            .filter(|n| !n.spec.task_cidr.is_empty())
            .collect();
        named.sort_by(|a, b| {
            (a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(b.metadata.creation_timestamp, &b.metadata.name))
        });
        for node in named {
            if let Ok(cidr) = parse_task_cidr(&node.spec.task_cidr) {
                // A refusal is reported by that node's own reconcile.
                let _ = state
                    .allocator
                    .occupy(&node.metadata.name, &node.metadata.uid, cidr);
            }
        }
        state.seeded = true;
    }

    /// Decides, under the lock, what this node needs.
    fn decide(&self, node: &Node) -> Step {
        let mut state = self.lock();
        let (name, uid) = (node.metadata.name.as_str(), node.metadata.uid.as_str());
        let unset = node.spec.task_cidr.is_empty();
        // Seeded once; and before each new allocation, the subnets of nodes whose
        // own reconcile has not come yet (or of nodes deleted) are taken into account.
        if !state.seeded || (unset && state.allocator.held_by(name, uid).is_none()) {
            self.sync(&mut state);
        }
        if unset {
            // Ours already (this cache has not seen the write yet), or the lowest free.
            return match state.allocator.allocate(name, uid) {
                Some(cidr) => Step::Assign(cidr),
                None => Step::Exhausted {
                    held: state.allocator.len(),
                },
            };
        }
        let problem = match parse_task_cidr(&node.spec.task_cidr) {
            Err(rule) => Some((
                REASON_CIDR_INVALID,
                format!(
                    "spec.taskCIDR {:?} {rule}; no subnet is recorded for this node",
                    node.spec.task_cidr
                ),
            )),
            Ok(cidr) => match state.allocator.occupy(name, uid, cidr) {
                Ok(()) => None,
                Err(Refusal::Outside) => Some((
                    REASON_CIDR_OUTSIDE_RANGE,
                    format!(
                        "spec.taskCIDR {cidr} is not inside the cluster CIDR {}; it is left as it is",
                        self.cluster.range
                    ),
                )),
                Err(Refusal::Overlaps {
                    node: other,
                    cidr: theirs,
                }) => Some((
                    REASON_CIDR_OVERLAP,
                    format!(
                        "spec.taskCIDR {cidr} overlaps {theirs}, node {other}'s; it is left as it is, and not recorded as this node's"
                    ),
                )),
            },
        };
        match problem {
            None => {
                state.reported.remove(name);
                Step::Done
            }
            Some((reason, message)) => {
                if state.reported.get(name) == Some(&message) {
                    return Step::Done;
                }
                state.reported.insert(name.to_owned(), message.clone());
                Step::Report { reason, message }
            }
        }
    }
}

/// Gives a node without a task subnet the lowest free one; checks a node's own.
pub async fn reconcile(node: Arc<Node>, ipam: Arc<Ipam>) -> Result<Action> {
    ipam.ctx.nodes.wait_ready().await;
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let recorder = ipam.ctx.recorder(COMPONENT);
    match ipam.decide(&node) {
        Step::Done => Ok(Action::await_change()),
        Step::Report { reason, message } => {
            warn!(node = %node.metadata.name, reason, %message, "task subnet not recorded");
            publish(
                &recorder,
                node.as_ref(),
                EventType::Warning,
                reason,
                &message,
            )
            .await;
            Ok(Action::await_change())
        }
        Step::Exhausted { held } => {
            let message = format!(
                "no free /{} subnet left in the cluster CIDR {} ({held} of its {} held by nodes); retrying every {}s",
                ipam.cluster.node_prefix,
                ipam.cluster.range,
                ipam.cluster.subnets(),
                EXHAUSTED_RETRY.as_secs()
            );
            warn!(node = %node.metadata.name, %message, "no task subnet for node");
            publish(
                &recorder,
                node.as_ref(),
                EventType::Warning,
                REASON_CIDR_NOT_AVAILABLE,
                &message,
            )
            .await;
            Ok(Action::requeue(EXHAUSTED_RETRY))
        }
        Step::Assign(cidr) => assign(&ipam, &node, cidr).await,
    }
}

/// Writes `cidr` as the node's taskCIDR, conditioned on its resourceVersion; on a
/// conflict reads the node again and retries (or finds it set meanwhile).
async fn assign(ipam: &Ipam, node: &Node, cidr: Ipv4Net) -> Result<Action> {
    let api: Api<Node> = Api::all(ipam.ctx.client.clone());
    let (name, uid) = (&node.metadata.name, &node.metadata.uid);
    let release = || {
        ipam.lock().allocator.release(name);
    };
    let mut version = node.metadata.resource_version.clone();
    for _ in 0..WRITE_ATTEMPTS {
        let patch = json!({"metadata": {"resourceVersion": version},
                           "spec": {"taskCIDR": cidr.to_string()}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(written) => {
                info!(node = %name, %cidr, "task subnet assigned");
                let version = written.metadata.resource_version;
                observe(&ipam.ctx.nodes, &ObjectKey::new("", name), |n| {
                    n.is_none_or(|n| at_least(n, &version))
                })
                .await;
                return Ok(Action::await_change());
            }
            Err(error) if error.is_conflict() => {
                let fresh = api
                    .get_opt(name)
                    .await
                    .map_err(Error::api("get node", name.clone()))?;
                match fresh {
                    Some(fresh) if &fresh.metadata.uid == uid => {
                        if fresh.spec.task_cidr.is_empty() {
                            version = fresh.metadata.resource_version;
                            continue;
                        }
                        // Set meanwhile (by us before this cache saw it, or by hand):
                        // the node's next reconcile records what it says.
                        if fresh.spec.task_cidr != cidr.to_string() {
                            release();
                        }
                        return Ok(Action::await_change());
                    }
                    // Deleted, perhaps registered again: that is another node.
                    _ => {
                        release();
                        return Ok(Action::await_change());
                    }
                }
            }
            Err(error) if error.is_not_found() => {
                release();
                return Ok(Action::await_change());
            }
            Err(error) => {
                // Refused for good (4xx): the subnet is not the node's. Otherwise the
                // write may have happened: keep it held, and write it again next time.
                if error.code().is_some_and(|code| (400..500).contains(&code)) {
                    release();
                }
                return Err(Error::api("assign the task subnet of node", name.clone())(
                    error,
                ));
            }
        }
    }
    // Still conflicting: back off, keeping the subnet for this node meanwhile.
    Err(Error::Conflicts {
        action: "assign the task subnet of node",
        object: name.clone(),
        attempts: WRITE_ATTEMPTS,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn allocator(cidr: &str, prefix: u8) -> Allocator {
        Allocator::new(ClusterCidr::new(cidr, prefix).unwrap())
    }

    #[test]
    fn the_cluster_cidr_and_mask_are_checked() {
        let range = ClusterCidr::new("10.77.0.0/16", 24).unwrap();
        assert_eq!(range.subnets(), 256);
        assert_eq!(range.to_string(), "10.77.0.0/16 in /24 subnets");
        assert_eq!(
            ClusterCidr::new("10.77.0.1/16", 24)
                .unwrap_err()
                .to_string(),
            "the cluster CIDR \"10.77.0.1/16\" must be the network address of its range, with no host bits set: 10.77.0.0/16"
        );
        assert_eq!(
            ClusterCidr::new("fd00::/48", 64).unwrap_err().to_string(),
            "the cluster CIDR \"fd00::/48\" must be an IPv4 CIDR such as 10.77.0.0/24: IPv6 is not supported yet"
        );
        for (cidr, prefix) in [
            ("10.77.0.0/16", 15),
            ("10.77.0.0/16", 31),
            ("10.0.0.0/8", 7),
        ] {
            let error = ClusterCidr::new(cidr, prefix).unwrap_err();
            assert!(
                matches!(error, ClusterCidrError::NodePrefix { .. }),
                "{cidr} /{prefix}: {error}"
            );
        }
        assert_eq!(
            ClusterCidr::new("10.77.0.0/16", 15)
                .unwrap_err()
                .to_string(),
            "the node CIDR mask size /15 must be between the cluster CIDR's own /16 and /30"
        );
        assert!(ClusterCidr::new("0.0.0.0/0", 24).is_err());
        assert_eq!(
            ClusterCidr::new("10.0.0.0/8", 30).unwrap().subnets(),
            1 << 22
        );
    }

    #[test]
    fn the_lowest_free_subnet_is_handed_out_and_a_released_one_again() {
        let mut a = allocator("10.77.0.0/16", 24);
        assert_eq!(a.allocate("n1", "u1"), Some(net("10.77.0.0/24")));
        assert_eq!(a.allocate("n2", "u2"), Some(net("10.77.1.0/24")));
        assert_eq!(a.allocate("n3", "u3"), Some(net("10.77.2.0/24")));
        // Asking again gives what the node holds, not another.
        assert_eq!(a.allocate("n2", "u2"), Some(net("10.77.1.0/24")));
        assert_eq!(a.len(), 3);
        // A deleted node's subnet is the lowest free one again.
        assert_eq!(a.release("n2"), Some(net("10.77.1.0/24")));
        assert_eq!(a.release("n2"), None);
        assert_eq!(a.allocate("n4", "u4"), Some(net("10.77.1.0/24")));
        assert_eq!(a.allocate("n5", "u5"), Some(net("10.77.3.0/24")));
        // The same name with another uid is another node: the old one's subnet goes.
        assert_eq!(a.held_by("n1", "u1"), Some(net("10.77.0.0/24")));
        assert_eq!(a.allocate("n1", "again"), Some(net("10.77.0.0/24")));
        assert_eq!(a.held_by("n1", "u1"), None);
        a.retain(|node, _| node != "n4");
        assert_eq!(a.held_by("n4", "u4"), None);
        assert_eq!(a.allocate("n6", "u6"), Some(net("10.77.1.0/24")));
    }

    #[test]
    fn a_full_range_gives_none_until_a_subnet_is_released() {
        let mut a = allocator("10.77.0.0/23", 24);
        assert!(a.allocate("n1", "u1").is_some());
        assert!(a.allocate("n2", "u2").is_some());
        assert_eq!(a.allocate("n3", "u3"), None);
        assert_eq!(a.allocate("n3", "u3"), None, "still full");
        assert_eq!(a.len(), 2);
        a.release("n1");
        assert_eq!(a.allocate("n3", "u3"), Some(net("10.77.0.0/24")));
        // A range of exactly one subnet.
        let mut one = allocator("10.77.9.0/24", 24);
        assert_eq!(one.allocate("n1", "u1"), Some(net("10.77.9.0/24")));
        assert_eq!(one.allocate("n2", "u2"), None);
    }

    #[test]
    fn slash_30_subnets_and_the_top_of_the_address_space() {
        let mut a = allocator("10.77.0.0/28", 30);
        let got: Vec<_> = (0..5).map(|i| a.allocate(&format!("n{i}"), "u")).collect();
        assert_eq!(
            got,
            vec![
                Some(net("10.77.0.0/30")),
                Some(net("10.77.0.4/30")),
                Some(net("10.77.0.8/30")),
                Some(net("10.77.0.12/30")),
                None
            ]
        );
        // No overflow where the last subnet ends at 255.255.255.255.
        let mut top = allocator("255.255.255.248/29", 30);
        assert_eq!(top.allocate("a", "u"), Some(net("255.255.255.248/30")));
        assert_eq!(top.allocate("b", "u"), Some(net("255.255.255.252/30")));
        assert_eq!(top.allocate("c", "u"), None);
        top.release("b");
        assert_eq!(top.occupy("c", "u", net("255.255.255.252/30")), Ok(()));
    }

    #[test]
    fn subnets_held_by_existing_nodes_are_skipped_whatever_their_size() {
        let mut a = allocator("10.77.0.0/16", 24);
        assert_eq!(a.occupy("old", "u", net("10.77.0.0/24")), Ok(()));
        // Set by hand: a /23 and a /26 inside the range, not on the node size.
        assert_eq!(a.occupy("wide", "u", net("10.77.2.0/23")), Ok(()));
        assert_eq!(a.occupy("narrow", "u", net("10.77.5.64/26")), Ok(()));
        assert_eq!(a.allocate("n1", "u"), Some(net("10.77.1.0/24")));
        assert_eq!(a.allocate("n2", "u"), Some(net("10.77.4.0/24")));
        assert_eq!(
            a.allocate("n3", "u"),
            Some(net("10.77.6.0/24")),
            "5.0/24 holds narrow's /26"
        );
        // Recording what a node holds twice is harmless.
        assert_eq!(a.occupy("old", "u", net("10.77.0.0/24")), Ok(()));
        assert_eq!(a.len(), 6);
    }

    #[test]
    fn overlapping_and_outside_subnets_are_refused() {
        let mut a = allocator("10.77.0.0/16", 24);
        assert_eq!(a.occupy("first", "u1", net("10.77.8.0/24")), Ok(()));
        let overlap = Refusal::Overlaps {
            node: "first".into(),
            cidr: net("10.77.8.0/24"),
        };
        assert_eq!(
            a.occupy("same", "u", net("10.77.8.0/24")),
            Err(overlap.clone())
        );
        assert_eq!(
            a.occupy("inside", "u", net("10.77.8.128/25")),
            Err(overlap.clone())
        );
        assert_eq!(a.occupy("around", "u", net("10.77.0.0/20")), Err(overlap));
        assert_eq!(a.occupy("next", "u", net("10.77.9.0/24")), Ok(()));
        assert_eq!(a.occupy("before", "u", net("10.77.7.0/24")), Ok(()));
        assert_eq!(
            a.occupy("away", "u", net("10.78.0.0/24")),
            Err(Refusal::Outside)
        );
        assert_eq!(
            a.occupy("wider", "u", net("10.76.0.0/15")),
            Err(Refusal::Outside)
        );
        // The refused ones hold nothing, and nothing of theirs is handed out twice.
        assert_eq!(a.held_by("same", "u"), None);
        assert_eq!(a.len(), 3);
        // Once the holder is gone, the overlapping node's subnet is recorded.
        a.release("first");
        assert_eq!(a.occupy("inside", "u", net("10.77.8.128/25")), Ok(()));
        assert_eq!(a.allocate("n", "u"), Some(net("10.77.0.0/24")));
    }

    fn node(name: &str, uid: &str, cidr: &str, created: i64) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid, "resourceVersion": "1",
                         "creationTimestamp": chrono::DateTime::from_timestamp(created, 0)},
            "spec": {"taskCIDR": cidr},
        }))
        .unwrap()
    }

    fn assigned(step: Step) -> Ipv4Net {
        match step {
            Step::Assign(cidr) => cidr,
            _ => panic!("expected an assignment"),
        }
    }

    #[test]
    fn the_cache_seeds_it_and_a_stale_cache_never_gets_a_subnet_twice() {
        use client::watcher::Event;
        let fixture = crate::testing::fixture();
        let ipam = Ipam::new(
            fixture.ctx.clone(),
            ClusterCidr::new("10.77.0.0/22", 24).unwrap(),
        );
        // Registered before the controller started: one with the second subnet,
        // a younger one overlapping it, and one outside the range.
        for n in [
            node("held", "u0", "10.77.1.0/24", 10),
            node("late", "u9", "10.77.1.128/25", 20),
            node("away", "u8", "192.168.0.0/24", 30),
            node("a", "ua", "", 40),
            node("b", "ub", "", 50),
        ] {
            fixture.nodes.apply(&Event::Apply(n));
        }
        let a = fixture.ctx.nodes.get(&ObjectKey::new("", "a")).unwrap();
        let b = fixture.ctx.nodes.get(&ObjectKey::new("", "b")).unwrap();
        assert_eq!(assigned(ipam.decide(&a)), net("10.77.0.0/24"));
        // The cache still shows a without one: b gets the next free, not a's, and
        // a asking again gets the same.
        assert_eq!(assigned(ipam.decide(&b)), net("10.77.2.0/24"));
        assert_eq!(assigned(ipam.decide(&a)), net("10.77.0.0/24"));
        // The older node's subnet wins; the younger overlapping one is reported
        // once, not at each of its status writes.
        let late = fixture.ctx.nodes.get(&ObjectKey::new("", "late")).unwrap();
        match ipam.decide(&late) {
            Step::Report { reason, message } => {
                assert_eq!(reason, REASON_CIDR_OVERLAP);
                assert_eq!(
                    message,
                    "spec.taskCIDR 10.77.1.128/25 overlaps 10.77.1.0/24, node held's; it is left as it is, and not recorded as this node's"
                );
            }
            _ => panic!("expected a report"),
        }
        assert!(matches!(ipam.decide(&late), Step::Done));
        let away = fixture.ctx.nodes.get(&ObjectKey::new("", "away")).unwrap();
        assert!(matches!(
            ipam.decide(&away),
            Step::Report {
                reason: REASON_CIDR_OUTSIDE_RANGE,
                ..
            }
        ));
        // Full: a fourth node waits.
        fixture.nodes.apply(&Event::Apply(node("c", "uc", "", 60)));
        fixture.nodes.apply(&Event::Apply(node("d", "ud", "", 70)));
        let c = fixture.ctx.nodes.get(&ObjectKey::new("", "c")).unwrap();
        let d = fixture.ctx.nodes.get(&ObjectKey::new("", "d")).unwrap();
        assert_eq!(assigned(ipam.decide(&c)), net("10.77.3.0/24"));
        assert!(matches!(ipam.decide(&d), Step::Exhausted { held: 4 }));
        // held is deleted: its subnet is free, the waiting nodes are looked at, and
        // the overlapping node's own subnet can now be recorded.
        let held = fixture.ctx.nodes.get(&ObjectKey::new("", "held")).unwrap();
        fixture.nodes.apply(&Event::Delete((*held).clone()));
        let mut woken = ipam.on_change(&held);
        woken.sort_by(|x, y| x.name.cmp(&y.name));
        let names: Vec<&str> = woken.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b", "c", "d"],
            "the nodes the cache shows without one"
        );
        assert!(matches!(ipam.decide(&late), Step::Done));
        // Its freed /24 is not free: late's /25 is in it.
        assert!(matches!(ipam.decide(&d), Step::Exhausted { held: 4 }));
        let c = fixture.ctx.nodes.get(&ObjectKey::new("", "c")).unwrap();
        fixture.nodes.apply(&Event::Delete((*c).clone()));
        ipam.on_change(&c);
        assert_eq!(assigned(ipam.decide(&d)), net("10.77.3.0/24"));
    }

    #[test]
    fn no_subnet_is_ever_handed_out_twice() {
        // Interleaved allocations, hand-set subnets and releases on a small range:
        // the held subnets never overlap.
        let mut a = allocator("10.77.0.0/22", 26);
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            seed >> 16
        };
        for round in 0..2_000 {
            let node = format!("n{}", next() % 24);
            match next() % 3 {
                0 => {
                    a.allocate(&node, "u");
                }
                1 => {
                    let prefix = 24 + (next() % 5) as u8;
                    let start = 0x0a4d_0000 | (next() % 1024);
                    let cidr = Ipv4Net::new(start.into(), prefix).unwrap().trunc();
                    let _ = a.occupy(&node, "u", cidr);
                }
                _ => {
                    a.release(&node);
                }
            }
            let held: Vec<&Held> = a.held.values().collect();
            for pair in held.windows(2) {
                assert!(
                    pair[0].last < bounds(pair[1].cidr).0,
                    "round {round}: {held:?}"
                );
            }
            assert_eq!(a.by_node.len(), a.held.len(), "round {round}");
        }
    }
}
