//! The soak's history checker: what the clients recorded (every operation
//! with its invocation and response time, every watch event) against what
//! must hold whatever faults were injected.
//!
//! Registers (objects written and read by many clients):
//! - a write acknowledged is never lost: the object's final resourceVersion
//!   is at least that of every acknowledged write;
//! - resourceVersions follow real time: an operation that began after
//!   another completed never sees an older resourceVersion of that object
//!   (no stale read after an acknowledged write, no write ordered before
//!   one already acknowledged);
//! - every value read was written by someone (acknowledged, or whose answer
//!   was lost), never invented;
//! - every watcher's stream is in order and gap-free per object: its
//!   resourceVersions of one object strictly increase, and every
//!   acknowledged write of the object that falls within a span the watcher
//!   covered (from the list or revision it started at to the last revision
//!   it saw, each relist starting a new span) is among its events.
//!
//! Jobs: each finishes Completed with exactly its replicas completed; no
//! task ran twice (its run log shows one start per task name, the tasks
//! restart never) — a replacement of a failed or lost task is a new task, a
//! retry, and counts as such.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// When, in seconds since the soak began.
pub type Time = f64;

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Answered with this resourceVersion (and, for a read, this value).
    Ok { rv: u64, value: String },
    /// Refused: nothing was written (a 4xx).
    Failed,
    /// No answer (a timeout, a dropped connection, a 5xx): it may or may
    /// not have happened.
    Unknown,
}

/// One operation on a register.
#[derive(Clone, Debug)]
pub struct RegisterOp {
    /// The object.
    pub key: String,
    /// A write of this value, or a read.
    pub write: Option<String>,
    /// When it was sent.
    pub invoked: Time,
    /// When its answer (or failure) came.
    pub completed: Time,
    /// How it ended.
    pub outcome: Outcome,
}

/// One event a watcher saw, or a (re)start of its stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// The watcher (re)started from a list or revision: a new span begins
    /// after `rv`, with these objects' resourceVersions as of it.
    Start {
        rv: u64,
        objects: Vec<(String, u64)>,
    },
    /// An event of `key` at `rv`.
    Event { key: String, rv: u64 },
    /// The stream has seen everything up to `rv`.
    Bookmark { rv: u64 },
}

/// What one job did, as seen once it finished.
#[derive(Clone, Debug, Default)]
pub struct JobRecord {
    /// Its name.
    pub name: String,
    /// Its final phase.
    pub phase: String,
    /// Tasks it asked for.
    pub replicas: i32,
    /// Tasks it counted completed.
    pub completed: i32,
    /// Its tasks: name -> (index, phase, restarts).
    pub tasks: BTreeMap<String, (i32, String, i32)>,
    /// Its tasks stopped for their time limit (each takes a second, far
    /// below it: none may be).
    pub time_limited: Vec<String>,
}

/// Checks registers: the ops, each watcher's stream, and the final state
/// (key -> resourceVersion and value). Returns the anomalies found.
pub fn registers(
    ops: &[RegisterOp],
    watchers: &[Vec<Seen>],
    last: &BTreeMap<String, (u64, String)>,
) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&RegisterOp>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in &by_key {
        // Values written (acknowledged or maybe) by anyone.
        let written: BTreeSet<&str> = ops
            .iter()
            .filter(|op| !matches!(op.outcome, Outcome::Failed))
            .filter_map(|op| op.write.as_deref())
            .collect();
        let mut answered: Vec<(&RegisterOp, u64)> = ops
            .iter()
            .filter_map(|op| match &op.outcome {
                Outcome::Ok { rv, .. } => Some((*op, *rv)),
                _ => None,
            })
            .collect();
        answered.sort_by(|a, b| a.0.completed.total_cmp(&b.0.completed));
        // Real-time order: the greatest rv acknowledged before each op began.
        let mut acked_before = 0u64;
        let mut pending: Vec<(Time, u64)> = answered
            .iter()
            .map(|(op, rv)| (op.completed, *rv))
            .collect();
        pending.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut by_invocation: Vec<(&RegisterOp, u64)> = answered.clone();
        by_invocation.sort_by(|a, b| a.0.invoked.total_cmp(&b.0.invoked));
        let mut next = 0;
        for (op, rv) in &by_invocation {
            while next < pending.len() && pending[next].0 < op.invoked {
                acked_before = acked_before.max(pending[next].1);
                next += 1;
            }
            let stale = if op.write.is_some() {
                *rv <= acked_before
            } else {
                *rv < acked_before
            };
            if stale {
                anomalies.push(format!(
                    "{key}: a {} begun at {:.3} s was answered with resourceVersion {rv}, older than {acked_before} acknowledged before it began",
                    if op.write.is_some() { "write" } else { "read" },
                    op.invoked
                ));
            }
            if op.write.is_none()
                && let Outcome::Ok { value, .. } = &op.outcome
                && !value.is_empty()
                && !written.contains(value.as_str())
            {
                anomalies.push(format!(
                    "{key}: a read at {:.3} s returned {value:?}, which no client wrote",
                    op.invoked
                ));
            }
        }
        let max_acked = answered
            .iter()
            .filter(|(op, _)| op.write.is_some())
            .map(|(_, rv)| *rv)
            .max()
            .unwrap_or(0);
        match last.get(*key) {
            None if max_acked > 0 => anomalies.push(format!(
                "{key}: gone at the end, though writes up to resourceVersion {max_acked} were acknowledged"
            )),
            Some((rv, _)) if *rv < max_acked => anomalies.push(format!(
                "{key}: an acknowledged write was lost: the final resourceVersion is {rv}, a write was acknowledged at {max_acked}"
            )),
            Some((_, value)) if !value.is_empty() && !written.contains(value.as_str()) => {
                anomalies.push(format!(
                    "{key}: ends holding {value:?}, which no client wrote"
                ))
            }
            _ => {}
        }
    }

    // Watch streams.
    let acked_writes: HashMap<&str, Vec<u64>> = by_key
        .iter()
        .map(|(key, ops)| {
            let mut rvs: Vec<u64> = ops
                .iter()
                .filter(|op| op.write.is_some())
                .filter_map(|op| match op.outcome {
                    Outcome::Ok { rv, .. } => Some(rv),
                    _ => None,
                })
                .collect();
            rvs.sort_unstable();
            (*key, rvs)
        })
        .collect();
    for (w, stream) in watchers.iter().enumerate() {
        let mut span_start = 0u64;
        let mut span_end = 0u64;
        let mut seen: HashMap<String, BTreeSet<u64>> = HashMap::new();
        let mut latest: HashMap<String, u64> = HashMap::new();
        let mut spans: Vec<(u64, u64, HashMap<String, BTreeSet<u64>>)> = Vec::new();
        let mut started = false;
        for item in stream {
            match item {
                Seen::Start { rv, objects } => {
                    if started {
                        spans.push((span_start, span_end, std::mem::take(&mut seen)));
                    }
                    started = true;
                    span_start = *rv;
                    span_end = *rv;
                    latest = objects.iter().cloned().collect();
                }
                Seen::Event { key, rv } => {
                    if let Some(previous) = latest.get(key)
                        && rv <= previous
                    {
                        anomalies.push(format!(
                            "watcher {w}: {key} at resourceVersion {rv} after {previous} (out of order)"
                        ));
                    }
                    if *rv < span_end {
                        anomalies.push(format!(
                            "watcher {w}: an event at resourceVersion {rv} after one at {span_end} (the stream went back)"
                        ));
                    }
                    latest.insert(key.clone(), *rv);
                    seen.entry(key.clone()).or_default().insert(*rv);
                    span_end = span_end.max(*rv);
                }
                Seen::Bookmark { rv } => span_end = span_end.max(*rv),
            }
        }
        if started {
            spans.push((span_start, span_end, seen));
        }
        for (start, end, seen) in &spans {
            for (key, rvs) in &acked_writes {
                for rv in rvs.iter().filter(|rv| **rv > *start && **rv <= *end) {
                    if !seen.get(*key).is_some_and(|s| s.contains(rv)) {
                        anomalies.push(format!(
                            "watcher {w}: missed {key}'s acknowledged write at resourceVersion {rv} (its stream covered {start}..={end})"
                        ));
                    }
                }
            }
        }
    }
    anomalies
}

/// Checks finished jobs against the run log (lines `TASK INDEX start|done`).
pub fn jobs(records: &[JobRecord], run_log: &str) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut starts: HashMap<&str, u32> = HashMap::new();
    let mut dones: HashMap<&str, u32> = HashMap::new();
    for line in run_log.lines() {
        let mut parts = line.split_whitespace();
        let (Some(task), Some(_index), Some(what)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        match what {
            "start" => *starts.entry(task).or_default() += 1,
            "done" => *dones.entry(task).or_default() += 1,
            _ => {}
        }
    }
    for job in records {
        for task in &job.time_limited {
            anomalies.push(format!(
                "job {}: task {task} was stopped for its time limit, though it takes a second",
                job.name
            ));
        }
        if job.phase != "Completed" {
            anomalies.push(format!(
                "job {}: ended {} ({} of {} completed)",
                job.name, job.phase, job.completed, job.replicas
            ));
            continue;
        }
        if job.completed != job.replicas {
            anomalies.push(format!(
                "job {}: Completed with {} completed of {}",
                job.name, job.completed, job.replicas
            ));
        }
        let mut completed_by_index: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        for (task, (index, phase, restarts)) in &job.tasks {
            let ran = starts.get(task.as_str()).copied().unwrap_or(0);
            if ran > 1 + (*restarts).max(0) as u32 {
                anomalies.push(format!(
                    "job {}: task {task} (index {index}) ran {ran} times, restarted {restarts} times",
                    job.name
                ));
            }
            if phase == "Completed" {
                completed_by_index.entry(*index).or_default().push(task);
                if dones.get(task.as_str()).copied().unwrap_or(0) == 0 {
                    anomalies.push(format!(
                        "job {}: task {task} (index {index}) is Completed but never finished its run",
                        job.name
                    ));
                }
            }
        }
        for index in 0..job.replicas {
            match completed_by_index.get(&index).map(Vec::len).unwrap_or(0) {
                1 => {}
                n => anomalies.push(format!(
                    "job {}: index {index} has {n} completed tasks (exactly 1 expected)",
                    job.name
                )),
            }
        }
    }
    anomalies
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(
        key: &str,
        value: &str,
        invoked: Time,
        completed: Time,
        rv: Option<u64>,
    ) -> RegisterOp {
        RegisterOp {
            key: key.into(),
            write: Some(value.into()),
            invoked,
            completed,
            outcome: match rv {
                Some(rv) => Outcome::Ok {
                    rv,
                    value: value.into(),
                },
                None => Outcome::Unknown,
            },
        }
    }

    fn read(key: &str, value: &str, invoked: Time, completed: Time, rv: u64) -> RegisterOp {
        RegisterOp {
            key: key.into(),
            write: None,
            invoked,
            completed,
            outcome: Outcome::Ok {
                rv,
                value: value.into(),
            },
        }
    }

    fn last(entries: &[(&str, u64, &str)]) -> BTreeMap<String, (u64, String)> {
        entries
            .iter()
            .map(|(k, rv, v)| (k.to_string(), (*rv, v.to_string())))
            .collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            write("a", "w1", 0.0, 0.1, Some(10)),
            read("a", "w1", 0.2, 0.3, 10),
            write("a", "w2", 0.25, 0.4, Some(12)),
            write("a", "w3", 0.5, 0.6, None),
        ];
        let watcher = vec![
            Seen::Start {
                rv: 5,
                objects: vec![],
            },
            Seen::Event {
                key: "a".into(),
                rv: 10,
            },
            Seen::Event {
                key: "a".into(),
                rv: 12,
            },
            Seen::Bookmark { rv: 20 },
        ];
        let anomalies = registers(&ops, &[watcher], &last(&[("a", 14, "w3")]));
        assert!(anomalies.is_empty(), "{anomalies:?}");
    }

    #[test]
    fn lost_writes_stale_reads_phantoms_and_gaps_are_found() {
        let ops = vec![
            write("a", "w1", 0.0, 0.1, Some(10)),
            write("a", "w2", 0.2, 0.3, Some(12)),
            // Begun after 12 was acknowledged, answered 10: stale.
            read("a", "w1", 0.4, 0.5, 10),
            read("a", "ghost", 0.6, 0.7, 12),
        ];
        let watcher = vec![
            Seen::Start {
                rv: 5,
                objects: vec![],
            },
            Seen::Event {
                key: "a".into(),
                rv: 12,
            },
        ];
        let anomalies = registers(&ops, &[watcher], &last(&[("a", 10, "w1")]));
        let all = anomalies.join("\n");
        assert!(all.contains("older than 12"), "{all}");
        assert!(all.contains("no client wrote"), "{all}");
        assert!(all.contains("write was lost"), "{all}");
        assert!(
            all.contains("missed a's acknowledged write at resourceVersion 10"),
            "{all}"
        );
    }

    #[test]
    fn a_relist_starts_a_new_span_and_out_of_order_events_are_found() {
        let ops = vec![
            write("a", "w1", 0.0, 0.1, Some(10)),
            write("a", "w2", 0.2, 0.3, Some(12)),
            write("a", "w3", 0.4, 0.5, Some(14)),
        ];
        // Saw 10, relisted at 13 (12 compacted away, allowed), saw 14.
        let fine = vec![
            Seen::Start {
                rv: 5,
                objects: vec![],
            },
            Seen::Event {
                key: "a".into(),
                rv: 10,
            },
            Seen::Start {
                rv: 13,
                objects: vec![("a".into(), 12)],
            },
            Seen::Event {
                key: "a".into(),
                rv: 14,
            },
        ];
        let backwards = vec![
            Seen::Start {
                rv: 5,
                objects: vec![],
            },
            Seen::Event {
                key: "a".into(),
                rv: 12,
            },
            Seen::Event {
                key: "a".into(),
                rv: 10,
            },
            Seen::Event {
                key: "a".into(),
                rv: 14,
            },
        ];
        let state = last(&[("a", 14, "w3")]);
        assert!(registers(&ops, &[fine], &state).is_empty());
        let all = registers(&ops, &[backwards], &state).join("\n");
        assert!(all.contains("out of order"), "{all}");
    }

    #[test]
    fn jobs_run_once_per_task_and_complete_every_index() {
        let mut job = JobRecord {
            name: "j".into(),
            phase: "Completed".into(),
            replicas: 2,
            completed: 2,
            ..JobRecord::default()
        };
        job.tasks.insert("j-0".into(), (0, "Completed".into(), 0));
        job.tasks.insert("j-1".into(), (1, "Lost".into(), 0));
        job.tasks
            .insert("j-1-r1".into(), (1, "Completed".into(), 0));
        let log = "j-0 0 start\nj-0 0 done\nj-1 1 start\nj-1-r1 1 start\nj-1-r1 1 done\n";
        assert!(jobs(std::slice::from_ref(&job), log).is_empty());

        let twice = format!("{log}j-0 0 start\n");
        let all = jobs(std::slice::from_ref(&job), &twice).join("\n");
        assert!(all.contains("ran 2 times"), "{all}");

        job.tasks
            .insert("j-1-r2".into(), (1, "Completed".into(), 0));
        let all = jobs(
            std::slice::from_ref(&job),
            &format!("{log}j-1-r2 1 start\nj-1-r2 1 done\n"),
        )
        .join("\n");
        assert!(all.contains("index 1 has 2 completed"), "{all}");

        job.phase = "Failed".into();
        assert!(jobs(&[job], log)[0].contains("ended Failed"));
    }
}
