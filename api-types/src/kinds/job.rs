//! The Job kind: N tasks that run to completion, with per-index overrides and dependencies; and the `indexes` syntax.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::task::{EnvVar, TaskSpec, TaskTemplate};
use crate::meta::{Condition, ObjectMeta, is_default};
use crate::resource::{impl_resource, impl_spec_kind};

/// A Job: a Borg job of `replicas` tasks that run to completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Job {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Job`.
    pub kind: String,
    /// Name, namespace, labels…
    pub metadata: ObjectMeta,
    /// What to run.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: JobSpec,
    /// Progress, written by the Job controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

impl_resource!(
    Job,
    kind: "Job",
    plural: "jobs",
    singular: "job",
    short_names: ["job"],
    namespaced: true,
    has_status: true,
);
impl_spec_kind!(Job, JobSpec);

impl Job {
    /// The phase, `Pending` when there is no status yet.
    pub fn phase(&self) -> JobPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }
}

/// A partial Task spec applied to some task indexes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct TaskOverride {
    /// Which tasks: `"0,3-5"`.
    pub indexes: String,
    /// The fields to change; see [`TaskSpec::overlay`].
    pub spec: TaskSpec,
}

/// A host file or directory mounted read-only into every task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct JobInput {
    /// The absolute host path.
    pub source: String,
    /// The absolute path inside each task.
    pub target: String,
}

/// What a Job runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct JobSpec {
    /// Who the job is for.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// The number of tasks (1 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// At most this many tasks run at once (all by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// The tasks' priority unless the template sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The tasks' labels, annotations and spec.
    pub template: TaskTemplate,
    /// Per-index changes to the template's spec.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<TaskOverride>,
    /// Host files and directories mounted read-only into every task.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<JobInput>,
    /// A host directory; task `i` writes to `outputDir/i`, seen at `/output`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output_dir: String,
    /// Deprecated and ignored: the node chooses where logs are kept. Still
    /// accepted so old manifests apply; the API server answers a write that sets
    /// it with a `Warning`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_dir: String,
    /// Added to every task's environment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Per-task time limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit_seconds: Option<i64>,
    /// How many times a failed task is replaced (0 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    /// Jobs in the same namespace that must complete first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// A user's request to stop the job; its record stays.
    #[serde(skip_serializing_if = "is_default")]
    pub killed: bool,
    /// Seconds after the job finishes (Completed, Failed or Killed) before it is
    /// deleted with its tasks; kept until deleted by hand when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

impl JobSpec {
    /// The number of tasks, 1 by default.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }

    /// How many tasks may run at once: `parallelism`, or all of them.
    pub fn parallelism(&self) -> i32 {
        self.parallelism.unwrap_or_else(|| self.replicas())
    }

    /// How many times a failed task is replaced, 0 by default.
    pub fn max_retries(&self) -> i32 {
        self.max_retries.unwrap_or(0)
    }

    /// The template's spec with every override whose indexes contain `index` laid over it,
    /// in order. Overrides whose indexes do not parse are skipped (validation rejects them).
    pub fn task_spec_for(&self, index: i32) -> TaskSpec {
        let mut spec = self.template.spec.clone();
        for o in &self.overrides {
            if let Ok(indexes) = Indexes::parse(&o.indexes, None)
                && indexes.contains(index)
            {
                spec.overlay(&o.spec);
            }
        }
        spec
    }
}

/// Where a job is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum JobPhase {
    /// Accepted, no task started.
    #[default]
    Pending,
    /// Waiting for the jobs it depends on.
    Waiting,
    /// Tasks are running.
    Running,
    /// Every task completed.
    Completed,
    /// A task failed beyond its retries, or a dependency failed (`DependencyFailed`).
    Failed,
    /// A user killed it.
    Killed,
}

impl JobPhase {
    /// Whether the phase never changes again (`Completed`, `Failed`, `Killed`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobPhase::Completed | JobPhase::Failed | JobPhase::Killed
        )
    }

    /// The phase's name as written in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Waiting => "Waiting",
            JobPhase::Running => "Running",
            JobPhase::Completed => "Completed",
            JobPhase::Failed => "Failed",
            JobPhase::Killed => "Killed",
        }
    }
}

impl fmt::Display for JobPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Job's progress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct JobStatus {
    /// Where the job is in its life.
    pub phase: JobPhase,
    /// When its first task started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When it reached a terminal phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    /// The first non-zero exit code of a failed task, else 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it is in its phase, in CamelCase (`DependencyFailed`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Tasks pending.
    #[serde(skip_serializing_if = "is_default")]
    pub pending: i32,
    /// Tasks running.
    #[serde(skip_serializing_if = "is_default")]
    pub running: i32,
    /// Tasks completed.
    #[serde(skip_serializing_if = "is_default")]
    pub completed: i32,
    /// Tasks failed.
    #[serde(skip_serializing_if = "is_default")]
    pub failed: i32,
    /// Tasks killed.
    #[serde(skip_serializing_if = "is_default")]
    pub killed: i32,
    /// Tasks lost with their node.
    #[serde(skip_serializing_if = "is_default")]
    pub lost: i32,
    /// Conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status reflects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---- the indexes syntax ----

/// Why an `indexes` string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexesError {
    /// Nothing was given.
    #[error("must list at least one index, e.g. \"0,3-5\"")]
    Empty,
    /// A part is neither a number nor a range.
    #[error("{0:?} is not an index: expected a non-negative integer or a range such as \"3-5\"")]
    NotAnIndex(String),
    /// A range ends before it starts.
    #[error("range \"{start}-{end}\" is reversed: its start must not be greater than its end")]
    Reversed {
        /// The range's start.
        start: u32,
        /// The range's end.
        end: u32,
    },
    /// An index is not below the job's replicas.
    #[error("index {index} is out of range: the job has {replicas} replicas, so indexes run from 0 to {}", replicas.saturating_sub(1))]
    OutOfRange {
        /// The offending index.
        index: u32,
        /// The job's replicas.
        replicas: u32,
    },
}

/// A set of task indexes, held as sorted, disjoint, inclusive ranges (so `0-4000000000`
/// costs nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Indexes {
    ranges: Vec<(u32, u32)>,
}

impl Indexes {
    /// Parses `"0,3-5"`: comma-separated indexes and inclusive ranges, whitespace allowed.
    /// With `replicas`, every index must be below it.
    pub fn parse(input: &str, replicas: Option<i32>) -> Result<Indexes, IndexesError> {
        if input.trim().is_empty() {
            return Err(IndexesError::Empty);
        }
        let limit = replicas.map(|r| u32::try_from(r).unwrap_or(0));
        let number = |s: &str, part: &str| -> Result<u32, IndexesError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(IndexesError::NotAnIndex(part.trim().to_string()));
            }
            s.parse::<u32>()
                .map_err(|_| IndexesError::NotAnIndex(part.trim().to_string()))
        };
        let mut ranges = Vec::new();
        for part in input.split(',') {
            let (start, end) = match part.split_once('-') {
                Some((a, b)) => (number(a, part)?, number(b, part)?),
                None => {
                    let n = number(part, part)?;
                    (n, n)
                }
            };
            if start > end {
                return Err(IndexesError::Reversed { start, end });
            }
            if let Some(replicas) = limit
                && end >= replicas
            {
                return Err(IndexesError::OutOfRange {
                    index: if start >= replicas { start } else { end },
                    replicas,
                });
            }
            ranges.push((start, end));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Ok(Indexes { ranges: merged })
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: i32) -> bool {
        let Ok(index) = u32::try_from(index) else {
            return false;
        };
        self.ranges.iter().any(|&(s, e)| s <= index && index <= e)
    }

    /// How many indexes the set holds.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| u64::from(e - s) + 1).sum()
    }

    /// Whether the set is empty (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The indexes in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(|&(s, e)| s..=e)
    }

    /// The indexes as a set (beware of huge ranges).
    pub fn to_set(&self) -> BTreeSet<u32> {
        self.iter().collect()
    }
}

impl fmt::Display for Indexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(s, e)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if s == e {
                write!(f, "{s}")?;
            } else {
                write!(f, "{s}-{e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_indexes() {
        let set = Indexes::parse("0,3-5", Some(6)).unwrap();
        assert_eq!(set.to_set(), BTreeSet::from([0, 3, 4, 5]));
        assert_eq!(set.len(), 4);
        assert!(set.contains(4));
        assert!(!set.contains(2));
        assert!(!set.contains(-1));
        assert_eq!(set.to_string(), "0,3-5");
        let merged = Indexes::parse(" 5 , 1-3, 2-4 ,0", None).unwrap();
        assert_eq!(merged.to_string(), "0-5");
        let huge = Indexes::parse("0-4000000000", None).unwrap();
        assert_eq!(huge.len(), 4_000_000_001);
    }

    #[test]
    fn index_errors() {
        assert_eq!(Indexes::parse("", None), Err(IndexesError::Empty));
        assert_eq!(
            Indexes::parse("5-3", None),
            Err(IndexesError::Reversed { start: 5, end: 3 })
        );
        assert_eq!(
            Indexes::parse("x", None),
            Err(IndexesError::NotAnIndex("x".into()))
        );
        assert_eq!(
            Indexes::parse("1,,2", None),
            Err(IndexesError::NotAnIndex("".into()))
        );
        assert_eq!(
            Indexes::parse("-1", None),
            Err(IndexesError::NotAnIndex("-1".into()))
        );
        assert_eq!(
            Indexes::parse("1-2-3", None),
            Err(IndexesError::NotAnIndex("1-2-3".into()))
        );
        assert_eq!(
            Indexes::parse("99999999999", None),
            Err(IndexesError::NotAnIndex("99999999999".into()))
        );
        let err = Indexes::parse("0,7", Some(5)).unwrap_err();
        assert_eq!(
            err,
            IndexesError::OutOfRange {
                index: 7,
                replicas: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "index 7 is out of range: the job has 5 replicas, so indexes run from 0 to 4"
        );
        assert_eq!(
            Indexes::parse("3-9", Some(5)),
            Err(IndexesError::OutOfRange {
                index: 9,
                replicas: 5
            })
        );
        assert!(Indexes::parse("0", Some(0)).is_err());
        assert!(
            Indexes::parse("x", None)
                .unwrap_err()
                .to_string()
                .contains("not an index")
        );
    }

    #[test]
    fn task_spec_for_applies_overrides_in_order() {
        let spec = JobSpec {
            replicas: Some(4),
            template: TaskTemplate {
                spec: TaskSpec {
                    image: "img".into(),
                    args: vec!["worker".into()],
                    ..TaskSpec::default()
                },
                ..TaskTemplate::default()
            },
            overrides: vec![
                TaskOverride {
                    indexes: "0".into(),
                    spec: TaskSpec {
                        args: vec!["leader".into()],
                        ..TaskSpec::default()
                    },
                },
                TaskOverride {
                    indexes: "0-1".into(),
                    spec: TaskSpec {
                        priority: Some(9),
                        ..TaskSpec::default()
                    },
                },
            ],
            ..JobSpec::default()
        };
        let t0 = spec.task_spec_for(0);
        assert_eq!((t0.args[0].as_str(), t0.priority), ("leader", Some(9)));
        let t1 = spec.task_spec_for(1);
        assert_eq!((t1.args[0].as_str(), t1.priority), ("worker", Some(9)));
        let t3 = spec.task_spec_for(3);
        assert_eq!((t3.args[0].as_str(), t3.priority), ("worker", None));
        assert_eq!(spec.replicas(), 4);
        assert_eq!(spec.parallelism(), 4);
        assert_eq!(JobSpec::default().replicas(), 1);
        assert!(JobPhase::Killed.is_terminal());
        assert!(!JobPhase::Waiting.is_terminal());
    }
}
