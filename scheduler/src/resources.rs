//! What a node offers and what its tasks already hold, in exact integer units.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use api_types::{Node, Quantity, Task};

/// Amounts of every resource: CPU in millicores, memory and disk in bytes,
/// extended resources in their own units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU, in millicores.
    pub cpu_milli: i128,
    /// Memory, in bytes.
    pub memory: i128,
    /// Disk, in bytes.
    pub disk: i128,
    /// Extended resources by name.
    pub extended: BTreeMap<String, i128>,
}

impl Resources {
    /// What a task asks for (requests = limits).
    pub fn of_task(task: &Task) -> Self {
        let r = &task.spec.resources;
        Resources {
            cpu_milli: r.cpu.as_ref().map_or(0, Quantity::milli_value),
            memory: r.memory.as_ref().map_or(0, Quantity::value),
            disk: r.disk.as_ref().map_or(0, Quantity::value),
            extended: r
                .extended
                .iter()
                .map(|(k, q)| (k.clone(), q.value()))
                .collect(),
        }
    }

    /// What a node offers to tasks (`status.allocatable`, else `status.capacity`).
    pub fn allocatable(node: &Node) -> Self {
        let Some(status) = &node.status else {
            return Resources::default();
        };
        let map = if status.allocatable.is_empty() {
            &status.capacity
        } else {
            &status.allocatable
        };
        let get = |k: &str, f: fn(&Quantity) -> i128| map.get(k).map_or(0, f);
        Resources {
            cpu_milli: get("cpu", Quantity::milli_value),
            memory: get("memory", Quantity::value),
            disk: get("disk", Quantity::value),
            extended: map
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "cpu" | "memory" | "disk" | "tasks"))
                .map(|(k, q)| (k.clone(), q.value()))
                .collect(),
        }
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli += other.cpu_milli;
        self.memory += other.memory;
        self.disk += other.disk;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() += v;
        }
    }

    /// Takes `other` away.
    pub fn subtract(&mut self, other: &Resources) {
        self.cpu_milli -= other.cpu_milli;
        self.memory -= other.memory;
        self.disk -= other.disk;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() -= v;
        }
    }
}

/// A task as the scheduler weighs it: what it asks for, computed once.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// The task as last seen.
    pub task: Arc<Task>,
    /// `namespace/name`.
    pub key: String,
    /// What it reserves.
    pub demand: Resources,
    /// Its priority (0 by default).
    pub priority: i32,
    /// The host ports it needs free: `resources.ports` and `ports[].hostPort`, each once.
    pub ports: Vec<i32>,
}

impl TaskInfo {
    /// Weighs a task.
    pub fn new(task: Arc<Task>) -> Self {
        TaskInfo {
            key: key_of(&task),
            demand: Resources::of_task(&task),
            priority: task.spec.priority(),
            ports: task.spec.host_ports(),
            task,
        }
    }

    /// Host ports the task needs.
    pub fn ports(&self) -> &[i32] {
        &self.ports
    }
}

/// `namespace/name` of a task.
pub fn key_of(task: &Task) -> String {
    format!("{}/{}", task.metadata.namespace, task.metadata.name)
}

/// A task placed on a node: bound (seen so through the watch) or assumed (bound by this
/// scheduler, or claimed by another, and not yet seen bound).
#[derive(Clone, Debug)]
pub struct Placed {
    /// The task.
    pub info: TaskInfo,
    /// Whether the placement is only assumed.
    pub assumed: bool,
}

/// One node as the scheduler sees it: what it offers and what is already placed.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub node: Arc<Node>,
    /// The node's resourceVersion as a number (0 when unknown).
    pub revision: u64,
    /// Whether it is Ready.
    pub ready: bool,
    /// What it offers.
    pub allocatable: Resources,
    /// What the tasks placed on it hold.
    pub requested: Resources,
    /// Host ports those tasks hold, with how many hold each.
    pub ports: BTreeMap<i32, u32>,
    /// Its tasks by `namespace/name`.
    pub tasks: BTreeMap<String, Placed>,
    /// How many of its tasks carry each label=value, by [`label_hash`].
    labels: HashMap<u64, u32>,
}

/// A fast hash of one label and value (FNV-1a), for counting a job's tasks on a node.
pub fn label_hash(label: &str, value: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in label.bytes().chain([0]).chain(value.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl NodeInfo {
    /// A node with nothing placed on it.
    pub fn new(node: impl Into<Arc<Node>>) -> Self {
        let node = node.into();
        NodeInfo {
            revision: node.metadata.resource_version.parse().unwrap_or(0),
            ready: node.is_ready(),
            allocatable: Resources::allocatable(&node),
            node,
            requested: Resources::default(),
            ports: BTreeMap::new(),
            tasks: BTreeMap::new(),
            labels: HashMap::new(),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.node.metadata.name
    }

    /// Replaces the node object, keeping what is placed on it.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.revision = node.metadata.resource_version.parse().unwrap_or(0);
        self.ready = node.is_ready();
        self.allocatable = Resources::allocatable(&node);
        self.node = node;
    }

    /// Places a task (again: a task placed twice counts once).
    pub fn add(&mut self, placed: Placed) {
        self.remove(&placed.info.key);
        self.requested.add(&placed.info.demand);
        for port in placed.info.ports() {
            *self.ports.entry(*port).or_default() += 1;
        }
        for (label, value) in &placed.info.task.metadata.labels {
            *self.labels.entry(label_hash(label, value)).or_default() += 1;
        }
        self.tasks.insert(placed.info.key.clone(), placed);
    }

    /// Removes a task placed earlier (its resources and ports come back).
    pub fn remove(&mut self, key: &str) -> Option<Placed> {
        let old = self.tasks.remove(key)?;
        self.requested.subtract(&old.info.demand);
        for port in old.info.ports() {
            if let Some(count) = self.ports.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    self.ports.remove(port);
                }
            }
        }
        for (label, value) in &old.info.task.metadata.labels {
            let hash = label_hash(label, value);
            if let Some(count) = self.labels.get_mut(&hash) {
                *count -= 1;
                if *count == 0 {
                    self.labels.remove(&hash);
                }
            }
        }
        Some(old)
    }

    /// Places a bound task.
    pub fn add_task(&mut self, task: &Task) {
        self.add(Placed {
            info: TaskInfo::new(Arc::new(task.clone())),
            assumed: false,
        });
    }

    /// Removes a task placed earlier.
    pub fn remove_task(&mut self, task: &Task) {
        self.remove(&key_of(task));
    }

    /// Tasks on the node whose `label` is `value` (a job's or service's tasks).
    pub fn tasks_of(&self, label: &str, value: &str) -> usize {
        self.tasks_with(label_hash(label, value))
    }

    /// Tasks on the node with the label whose [`label_hash`] is `hash`.
    pub fn tasks_with(&self, hash: u64) -> usize {
        self.labels.get(&hash).map_or(0, |n| *n as usize)
    }

    /// Whether what is placed exceeds what the node offers (or two tasks share a port).
    pub fn overcommitted(&self) -> bool {
        let a = &self.allocatable;
        let r = &self.requested;
        r.cpu_milli > a.cpu_milli
            || r.memory > a.memory
            || r.disk > a.disk
            || r.extended
                .iter()
                .any(|(k, v)| *v > a.extended.get(k).copied().unwrap_or(0))
            || self.ports.values().any(|n| *n > 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use api_types::well_known::LABEL_JOB;
    use api_types::{NodeStatus, TaskSpec};

    pub(crate) fn node(name: &str, cpu: &str, memory: &str) -> Node {
        let mut node = Node::default();
        node.metadata.name = name.into();
        let mut status = NodeStatus::default();
        status
            .allocatable
            .insert("cpu".into(), Quantity::parse(cpu).unwrap());
        status
            .allocatable
            .insert("memory".into(), Quantity::parse(memory).unwrap());
        status.conditions.push(api_types::Condition {
            type_: "Ready".into(),
            status: api_types::ConditionStatus::True,
            ..Default::default()
        });
        node.status = Some(status);
        node
    }

    pub(crate) fn task(name: &str, cpu: &str, memory: &str) -> Task {
        let mut task = Task::new(name, TaskSpec::default());
        task.metadata.namespace = "default".into();
        task.spec.resources.cpu = Some(Quantity::parse(cpu).unwrap());
        task.spec.resources.memory = Some(Quantity::parse(memory).unwrap());
        task
    }

    #[test]
    fn placing_and_removing_tasks_is_exact() {
        let mut info = NodeInfo::new(node("n", "2", "4Gi"));
        assert_eq!(info.allocatable.cpu_milli, 2000);
        assert_eq!(info.allocatable.memory, 4 << 30);
        let mut a = task("a", "500m", "1Gi");
        a.spec.resources.ports = vec![80];
        a.metadata.labels.insert(LABEL_JOB.into(), "j".into());
        info.add_task(&a);
        info.add_task(&a);
        assert_eq!(info.tasks_of(LABEL_JOB, "j"), 1);
        assert_eq!(info.tasks_of(LABEL_JOB, "k"), 0);
        assert_eq!(
            info.requested.cpu_milli, 500,
            "a task placed twice counts once"
        );
        assert!(info.ports.contains_key(&80));
        info.remove_task(&a);
        assert_eq!(info.tasks_of(LABEL_JOB, "j"), 0);
        assert_eq!(info.requested, Resources::default());
        assert!(info.ports.is_empty());
    }
}
