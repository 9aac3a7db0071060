//! The queue of pending tasks: highest priority first, then oldest; a task that fits
//! nowhere backs off exponentially and then waits for the cluster to change (a node
//! added or changed, resources freed) before it is tried again.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api_types::Task;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::resources::TaskInfo;

/// The first backoff of a task that fits nowhere.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often tasks waiting for a change are tried anyway.
pub const RETRY_WAITING: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the heap.
    Active,
    /// Being decided on.
    Popped,
    /// Fits nowhere; not before `until`.
    BackingOff { until: Instant, generation: u64 },
    /// Backed off; waits for the cluster to change since `generation`.
    Waiting { generation: u64 },
}

#[derive(Debug)]
struct Queued {
    info: TaskInfo,
    state: State,
    attempts: u32,
    /// Identifies its live heap entry.
    seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    created: Reverse<Option<DateTime<Utc>>>,
    seq: Reverse<u64>,
    key: String,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.priority, &self.created, self.seq).cmp(&(other.priority, &other.created, other.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pending tasks by priority and age, with backoff.
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Entry>,
    tasks: HashMap<String, Queued>,
    backing_off: BTreeMap<(Instant, u64), String>,
    waiting: HashMap<String, u64>,
    seq: u64,
    last_retry: Option<Instant>,
}

/// The backoff after `attempts` failed tries.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Self {
        Queue::default()
    }

    /// Tasks queued in any state.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is queued.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Whether `key` is queued.
    pub fn contains(&self, key: &str) -> bool {
        self.tasks.contains_key(key)
    }

    fn push(&mut self, key: &str) {
        let Some(q) = self.tasks.get_mut(key) else {
            return;
        };
        self.seq += 1;
        q.seq = self.seq;
        q.state = State::Active;
        self.heap.push(Entry {
            priority: q.info.priority,
            created: Reverse(q.info.task.metadata.creation_timestamp),
            seq: Reverse(self.seq),
            key: key.to_owned(),
        });
    }

    /// Adds a pending task, or takes its newer version. A task whose spec changed
    /// while it waited is tried again at once.
    pub fn upsert(&mut self, task: Arc<Task>) {
        let info = TaskInfo::new(task);
        let key = info.key.clone();
        match self.tasks.get_mut(&key) {
            Some(q) => {
                let changed = q.info.task.spec != info.task.spec;
                q.info = info;
                if changed && matches!(q.state, State::BackingOff { .. } | State::Waiting { .. }) {
                    self.waiting.remove(&key);
                    self.push(&key);
                }
            }
            None => {
                self.tasks.insert(
                    key.clone(),
                    Queued {
                        info,
                        state: State::Active,
                        attempts: 0,
                        seq: 0,
                    },
                );
                self.push(&key);
            }
        }
    }

    /// Forgets a task (bound, deleted, no longer pending).
    pub fn remove(&mut self, key: &str) {
        if self.tasks.remove(key).is_some() {
            self.waiting.remove(key);
        }
    }

    /// Forgets every task whose key `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.tasks.retain(|k, _| keep(k));
        self.waiting.retain(|k, _| keep(k));
    }

    /// The next task to decide on, if one is active.
    pub fn pop(&mut self) -> Option<TaskInfo> {
        while let Some(entry) = self.heap.pop() {
            let Some(q) = self.tasks.get_mut(&entry.key) else {
                continue;
            };
            if q.state != State::Active || q.seq != entry.seq.0 {
                continue;
            }
            q.state = State::Popped;
            return Some(q.info.clone());
        }
        None
    }

    /// Tries `key` again now (its bind lost a race, or the cluster changed for it).
    pub fn activate(&mut self, key: &str) {
        if self.tasks.contains_key(key) {
            self.waiting.remove(key);
            self.push(key);
        }
    }

    /// `key` fits nowhere at cluster `generation`: back off, then wait for a change.
    pub fn unschedulable(&mut self, key: &str, now: Instant, generation: u64) {
        let Some(q) = self.tasks.get_mut(key) else {
            return;
        };
        q.attempts += 1;
        let until = now + backoff(q.attempts);
        q.state = State::BackingOff { until, generation };
        self.seq += 1;
        self.backing_off.insert((until, self.seq), key.to_owned());
    }

    /// `key` waits for the cluster to change since `generation`, without backoff
    /// (its preemption victims are on their way out).
    pub fn wait_for_change(&mut self, key: &str, generation: u64) {
        if let Some(q) = self.tasks.get_mut(key) {
            q.state = State::Waiting { generation };
            self.waiting.insert(key.to_owned(), generation);
        }
    }

    /// Moves tasks whose backoff ended and whose cluster changed since (or that
    /// waited [`RETRY_WAITING`]) back to the active heap.
    pub fn flush(&mut self, now: Instant, generation: u64) {
        while let Some((&(until, seq), _)) = self.backing_off.first_key_value() {
            if until > now {
                break;
            }
            let Some(key) = self.backing_off.remove(&(until, seq)) else {
                break;
            };
            let Some(q) = self.tasks.get_mut(&key) else {
                continue;
            };
            let State::BackingOff {
                until: current,
                generation: since,
            } = q.state
            else {
                continue;
            };
            if current != until {
                continue;
            }
            if generation != since {
                self.push(&key);
            } else {
                q.state = State::Waiting { generation: since };
                self.waiting.insert(key, since);
            }
        }
        let retry_all = self
            .last_retry
            .is_none_or(|last| now.duration_since(last) >= RETRY_WAITING);
        if retry_all {
            self.last_retry = Some(now);
        }
        if self.waiting.is_empty() {
            return;
        }
        let ready: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, since)| retry_all || **since != generation)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            self.waiting.remove(&key);
            self.push(&key);
        }
    }

    /// When the next backoff ends.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backing_off.keys().next().map(|(until, _)| *until)
    }

    /// Tasks active now.
    pub fn active(&self) -> usize {
        self.tasks
            .values()
            .filter(|q| q.state == State::Active)
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::tests::task;

    fn at(name: &str, priority: i32, second: i64) -> Arc<Task> {
        let mut t = task(name, "1", "1Gi");
        t.spec.priority = Some(priority);
        t.metadata.creation_timestamp = DateTime::from_timestamp(second, 0);
        Arc::new(t)
    }

    #[test]
    fn pops_by_priority_then_age() {
        let mut q = Queue::new();
        q.upsert(at("young-low", 0, 20));
        q.upsert(at("old-low", 0, 10));
        q.upsert(at("high", 5, 30));
        q.upsert(at("old-low", 0, 10));
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|t| t.key).collect();
        assert_eq!(
            order,
            ["default/high", "default/old-low", "default/young-low"]
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }

    #[test]
    fn an_unschedulable_task_waits_for_backoff_and_a_change() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.flush(t0, 0);
        q.upsert(at("a", 0, 1));
        let a = q.pop().unwrap();
        q.unschedulable(&a.key, t0, 7);
        assert!(q.pop().is_none());
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        // A change during the backoff: tried once the backoff ends.
        q.flush(t0 + Duration::from_millis(500), 8);
        assert!(q.pop().is_none(), "still backing off");
        q.flush(t0 + Duration::from_secs(1), 8);
        let a = q.pop().unwrap();
        // Fits nowhere again: 2 s of backoff, then it waits for a change.
        q.unschedulable(&a.key, t0 + Duration::from_secs(1), 8);
        q.flush(t0 + Duration::from_secs(3), 8);
        assert!(q.pop().is_none(), "nothing changed");
        q.flush(t0 + Duration::from_secs(4), 9);
        assert_eq!(q.pop().unwrap().key, "default/a");
        // Unchanged for long enough, it is tried anyway.
        q.unschedulable("default/a", t0 + Duration::from_secs(4), 9);
        q.flush(t0 + Duration::from_secs(30), 9);
        assert!(q.pop().is_none());
        q.flush(t0 + RETRY_WAITING + Duration::from_secs(1), 9);
        assert_eq!(q.pop().unwrap().key, "default/a");
    }

    #[test]
    fn a_changed_spec_or_an_activation_retries_at_once() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.flush(t0, 0);
        q.upsert(at("a", 0, 1));
        q.pop().unwrap();
        q.unschedulable("default/a", t0, 0);
        // A new version with the same spec (our own status write) changes nothing.
        q.upsert(at("a", 0, 1));
        assert!(q.pop().is_none());
        q.upsert(at("a", 3, 1));
        assert_eq!(q.pop().unwrap().priority, 3);
        q.wait_for_change("default/a", 4);
        q.flush(t0, 4);
        assert!(q.pop().is_none());
        q.activate("default/a");
        assert_eq!(q.pop().unwrap().key, "default/a");
        q.remove("default/a");
        q.activate("default/a");
        assert!(q.pop().is_none());
        assert!(q.is_empty());
    }
}
