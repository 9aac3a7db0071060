//! TTL after finished: a Job with `ttlSecondsAfterFinished` is deleted that long
//! after it reached a terminal phase; its tasks follow through the garbage collector.

use std::sync::Arc;
use std::time::Duration;

use api_types::Job;
use chrono::Utc;
use client::api::Preconditions;
use client::{Action, Api, DeleteParams};
use tracing::info;

use crate::{Context, Error, Result, key_of};

/// When a finished job is due for deletion, if it is.
pub fn due(job: &Job) -> Option<chrono::DateTime<Utc>> {
    let ttl = job.spec.ttl_seconds_after_finished?;
    if !job.phase().is_terminal() {
        return None;
    }
    let status = job.status.as_ref()?;
    let finished = status.end_time.or(job.metadata.creation_timestamp)?;
    finished.checked_add_signed(chrono::Duration::try_seconds(ttl.max(0))?)
}

/// Deletes a finished job once its TTL has passed, or comes back when it will have.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(due) = due(&job) else {
        return Ok(Action::await_change());
    };
    let now = Utc::now();
    if now < due {
        let wait = (due - now).to_std().unwrap_or(Duration::ZERO);
        return Ok(Action::requeue(wait + Duration::from_millis(10)));
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.metadata.namespace);
    let params = DeleteParams {
        propagation_policy: Some("Background".to_owned()),
        preconditions: Some(Preconditions {
            uid: Some(job.metadata.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&job.metadata.name, &params).await {
        Ok(_) => {
            info!(job = %key_of(job.as_ref()), "finished job deleted after its TTL");
            Ok(Action::await_change())
        }
        Err(error) if error.is_not_found() || error.is_conflict() => Ok(Action::await_change()),
        Err(error) => Err(Error::api("delete finished job", key_of(job.as_ref()))(
            error,
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_finished_jobs_with_a_ttl_are_due() {
        let mut job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"ttlSecondsAfterFinished": 30, "template": {"spec": {"image": "x"}}},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        assert_eq!(due(&job), None);
        let end = Utc::now();
        let status = job.status.as_mut().unwrap();
        status.phase = api_types::JobPhase::Completed;
        status.end_time = Some(end);
        assert_eq!(due(&job), Some(end + chrono::Duration::seconds(30)));
        job.spec.ttl_seconds_after_finished = None;
        assert_eq!(due(&job), None);
    }
}
