//! What a node offers and what its tasks already hold, in exact integer units.

use std::collections::{BTreeMap, BTreeSet};

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

/// One node as the scheduler sees it: what it offers and what is already placed.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub node: Node,
    /// What it offers.
    pub allocatable: Resources,
    /// What the tasks bound to it hold.
    pub requested: Resources,
    /// Host ports those tasks hold.
    pub ports: BTreeSet<i32>,
    /// Its tasks (namespace/name) and what each holds.
    pub tasks: BTreeMap<String, Task>,
}

impl NodeInfo {
    /// A node with nothing placed on it.
    pub fn new(node: Node) -> Self {
        NodeInfo {
            allocatable: Resources::allocatable(&node),
            node,
            requested: Resources::default(),
            ports: BTreeSet::new(),
            tasks: BTreeMap::new(),
        }
    }

    fn key(task: &Task) -> String {
        format!("{}/{}", task.metadata.namespace, task.metadata.name)
    }

    /// Places a task (again: a task placed twice counts once).
    pub fn add_task(&mut self, task: &Task) {
        self.remove_task(task);
        self.requested.add(&Resources::of_task(task));
        self.ports.extend(task.spec.resources.ports.iter().copied());
        self.tasks.insert(Self::key(task), task.clone());
    }

    /// Removes a task placed earlier (its resources and ports come back).
    pub fn remove_task(&mut self, task: &Task) {
        if let Some(old) = self.tasks.remove(&Self::key(task)) {
            self.requested.subtract(&Resources::of_task(&old));
            for port in &old.spec.resources.ports {
                self.ports.remove(port);
            }
        }
    }

    /// Tasks on the node owned by `owner` (a job or service name label).
    pub fn tasks_of(&self, label: &str, value: &str) -> usize {
        self.tasks
            .values()
            .filter(|t| t.metadata.labels.get(label).is_some_and(|v| v == value))
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
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
        info.add_task(&a);
        info.add_task(&a);
        assert_eq!(
            info.requested.cpu_milli, 500,
            "a task placed twice counts once"
        );
        assert!(info.ports.contains(&80));
        info.remove_task(&a);
        assert_eq!(info.requested, Resources::default());
        assert!(info.ports.is_empty());
    }
}
