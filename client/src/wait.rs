//! Waiting for one object to reach a condition, driven by a watch (as kube-runtime's
//! `wait::await_condition`): never a sleep-and-poll loop.
//!
//! ```no_run
//! # async fn example(client: client::Client) -> Result<(), client::wait::Error> {
//! use std::time::Duration;
//! use api_types::Job;
//! use client::Api;
//! use client::wait::{await_condition, conditions};
//!
//! let jobs: Api<Job> = Api::namespaced(client, "default");
//! let job = await_condition(jobs, "train", conditions::has_phase("Completed"), Duration::from_secs(60)).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures::StreamExt;
use tracing::debug;

use crate::api::{Api, Object};
use crate::watcher::{self, Event, watcher};

/// What can go wrong while waiting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The condition was not met in time.
    #[error("timed out after {timeout:?} waiting for {resource} {name:?}")]
    TimedOut {
        /// The kind's plural (`jobs`).
        resource: String,
        /// The object's name.
        name: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The API refused the list or watch for a reason that retrying does not
    /// cure (an unknown kind, a forbidden request, a bad selector).
    #[error("cannot watch {resource} {name:?}: {source}")]
    Watch {
        /// The kind's plural.
        resource: String,
        /// The object's name.
        name: String,
        /// What the API answered.
        #[source]
        source: crate::Error,
    },
}

/// A test of an object, or of its absence (`None`), that a wait waits for.
///
/// Any `Fn(Option<&K>) -> bool` is one; [`conditions`] has the common ones.
pub trait Condition<K> {
    /// Whether `object` (`None`: there is no such object) meets the condition.
    fn matches_object(&self, object: Option<&K>) -> bool;

    /// Met when this one is not.
    fn not(self) -> conditions::Not<Self>
    where
        Self: Sized,
    {
        conditions::Not(self)
    }

    /// Met when both are.
    fn and<Other: Condition<K>>(self, other: Other) -> conditions::And<Self, Other>
    where
        Self: Sized,
    {
        conditions::And(self, other)
    }

    /// Met when either is.
    fn or<Other: Condition<K>>(self, other: Other) -> conditions::Or<Self, Other>
    where
        Self: Sized,
    {
        conditions::Or(self, other)
    }
}

impl<K, F: Fn(Option<&K>) -> bool> Condition<K> for F {
    fn matches_object(&self, object: Option<&K>) -> bool {
        self(object)
    }
}

/// The longest single watch request a wait makes (the watcher's default).
const MAX_WATCH_SECONDS: u32 = 290;

/// Waits until the object `name` meets `condition`, for at most `timeout`, and
/// returns it as it was then (`None` if the condition was met by its absence).
///
/// Driven by the one [`watcher`]: it lists the object (a field selector on its
/// name) and checks the condition on what it got, then watches from the list's
/// resourceVersion and checks every change; a watch that ends is resumed, one too
/// old for the server's history (410 Gone) is relisted. Transient errors (the
/// server restarting, 5xx, 429) are retried with backoff until the timeout; any
/// other error ends the wait at once.
pub async fn await_condition<K: Object>(
    api: Api<K>,
    name: &str,
    condition: impl Condition<K>,
    timeout: Duration,
) -> Result<Option<K>, Error> {
    let resource = api.resource().plural.clone();
    let config = watcher::Config {
        // A watch no longer than the wait, so the watcher notices soon that
        // nobody waits any more.
        timeout_seconds: watch_seconds(timeout),
        ..watcher::Config::default()
    }
    .fields(&format!("metadata.name={name}"));
    let wait = async {
        let mut events = std::pin::pin!(watcher(api, config));
        // The object as the (re)list in progress has it.
        let mut listed: Option<K> = None;
        while let Some(event) = events.next().await {
            let seen = match event {
                Ok(Event::Init) => {
                    listed = None;
                    continue;
                }
                Ok(Event::InitApply(object)) => {
                    if object.meta().name == name {
                        listed = Some(object);
                    }
                    continue;
                }
                Ok(Event::InitDone) => listed.take(),
                Ok(Event::Apply(object)) if object.meta().name == name => Some(object),
                Ok(Event::Delete(object)) if object.meta().name == name => None,
                Ok(Event::Apply(_) | Event::Delete(_)) => continue,
                Err(error) if error.is_transient() || error.is_gone() => {
                    debug!(%error, %resource, %name, "watch failed; the watcher retries");
                    continue;
                }
                Err(source) => {
                    return Err(Error::Watch {
                        resource: resource.clone(),
                        name: name.to_owned(),
                        source,
                    });
                }
            };
            if condition.matches_object(seen.as_ref()) {
                return Ok(seen);
            }
        }
        // The watcher never ends by itself; wait out the timeout if it did.
        std::future::pending().await
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result,
        Err(_) => Err(Error::TimedOut {
            resource,
            name: name.to_owned(),
            timeout,
        }),
    }
}

/// The length of each watch request of a wait of `timeout`: whole seconds, at
/// least one, at most [`MAX_WATCH_SECONDS`].
fn watch_seconds(timeout: Duration) -> u32 {
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    u32::try_from(seconds)
        .unwrap_or(MAX_WATCH_SECONDS)
        .clamp(1, MAX_WATCH_SECONDS)
}

/// Common conditions.
pub mod conditions {
    use api_types::{Job, Task};
    use serde_json::Value;

    use super::Condition;
    use crate::api::Object;

    /// Met once the object is gone, or replaced by another of the same name
    /// (another uid): the object with `uid` was deleted.
    pub fn is_deleted<K: Object>(uid: &str) -> impl Condition<K> + use<K> {
        let uid = uid.to_owned();
        move |object: Option<&K>| object.is_none_or(|o| o.meta().uid != uid)
    }

    /// Met while there is no object of that name.
    pub fn is_absent<K: Object>() -> impl Condition<K> {
        |object: Option<&K>| object.is_none()
    }

    /// Met once the object's `status.phase` is `phase` (any kind with a phase:
    /// Task, Job, Namespace, a custom kind).
    pub fn has_phase<K: Object>(phase: &str) -> impl Condition<K> + use<K> {
        let phase = phase.to_owned();
        move |object: Option<&K>| {
            status(object).is_some_and(|s| s["phase"].as_str() == Some(phase.as_str()))
        }
    }

    /// Met once the object's `status.conditions` has one of type `type_` whose
    /// status is `status` (`True`, `False`, `Unknown`), as `kubectl wait
    /// --for=condition=TYPE=STATUS`.
    pub fn has_condition<K: Object>(type_: &str, status: &str) -> impl Condition<K> + use<K> {
        let (type_, wanted) = (type_.to_owned(), status.to_owned());
        move |object: Option<&K>| {
            self::status(object)
                .and_then(|s| s["conditions"].as_array().cloned())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["type"].as_str() == Some(type_.as_str())
                            && c["status"].as_str() == Some(wanted.as_str())
                    })
                })
        }
    }

    /// Met once the task has ended (Completed, Failed, Killed or Lost).
    pub fn is_task_terminal() -> impl Condition<Task> {
        |task: Option<&Task>| task.is_some_and(Task::is_terminal)
    }

    /// Met once the job has ended (Completed, Failed or Killed).
    pub fn is_job_terminal() -> impl Condition<Job> {
        |job: Option<&Job>| job.is_some_and(|j| j.phase().is_terminal())
    }

    /// The object's `status`, as JSON.
    fn status<K: Object>(object: Option<&K>) -> Option<Value> {
        let mut value = serde_json::to_value(object?).ok()?;
        Some(value.get_mut("status")?.take())
    }

    /// See [`Condition::not`].
    #[derive(Debug, Clone, Copy)]
    pub struct Not<A>(pub(super) A);

    impl<K, A: Condition<K>> Condition<K> for Not<A> {
        fn matches_object(&self, object: Option<&K>) -> bool {
            !self.0.matches_object(object)
        }
    }

    /// See [`Condition::and`].
    #[derive(Debug, Clone, Copy)]
    pub struct And<A, B>(pub(super) A, pub(super) B);

    impl<K, A: Condition<K>, B: Condition<K>> Condition<K> for And<A, B> {
        fn matches_object(&self, object: Option<&K>) -> bool {
            self.0.matches_object(object) && self.1.matches_object(object)
        }
    }

    /// See [`Condition::or`].
    #[derive(Debug, Clone, Copy)]
    pub struct Or<A, B>(pub(super) A, pub(super) B);

    impl<K, A: Condition<K>, B: Condition<K>> Condition<K> for Or<A, B> {
        fn matches_object(&self, object: Option<&K>) -> bool {
            self.0.matches_object(object) || self.1.matches_object(object)
        }
    }
}

#[cfg(test)]
mod tests {
    use api_types::{Job, Task, TaskPhase, TaskSpec, TaskStatus};

    use super::conditions::*;
    use super::*;

    fn task(phase: TaskPhase) -> Task {
        let mut task = Task::new("t", TaskSpec::default());
        task.metadata.uid = "u1".into();
        task.status = Some(TaskStatus {
            phase,
            ..TaskStatus::default()
        });
        task
    }

    #[test]
    fn conditions_read_phase_conditions_and_absence() {
        let running = task(TaskPhase::Running);
        let done = task(TaskPhase::Completed);
        assert!(has_phase("Running").matches_object(Some(&running)));
        assert!(!has_phase::<Task>("Running").matches_object(None));
        assert!(is_task_terminal().matches_object(Some(&done)));
        assert!(!is_task_terminal().matches_object(Some(&running)));
        assert!(is_absent::<Task>().matches_object(None));
        assert!(!is_absent().matches_object(Some(&running)));
        assert!(is_deleted::<Task>("u1").matches_object(None));
        assert!(!is_deleted("u1").matches_object(Some(&running)));
        let mut recreated = running.clone();
        recreated.metadata.uid = "u2".into();
        assert!(is_deleted("u1").matches_object(Some(&recreated)));

        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"image": "x"}}},
            "status": {"phase": "Failed", "conditions": [{"type": "Failed", "status": "True"}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(has_condition("Failed", "True").matches_object(Some(&job)));
        assert!(!has_condition("Failed", "False").matches_object(Some(&job)));
        assert!(!has_condition("Complete", "True").matches_object(Some(&job)));
        assert!(is_job_terminal().matches_object(Some(&job)));
    }

    #[test]
    fn conditions_combine() {
        let running = task(TaskPhase::Running);
        let either = has_phase("Pending").or(has_phase("Running"));
        assert!(either.matches_object(Some(&running)));
        let both = has_phase("Running").and(is_task_terminal());
        assert!(!both.matches_object(Some(&running)));
        assert!(is_task_terminal().not().matches_object(Some(&running)));
    }

    #[test]
    fn a_watch_lasts_whole_seconds_within_bounds() {
        assert_eq!(watch_seconds(Duration::ZERO), 1);
        assert_eq!(watch_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(watch_seconds(Duration::from_secs(60)), 60);
        assert_eq!(watch_seconds(Duration::from_secs(3600)), MAX_WATCH_SECONDS);
    }
}
