//! The Service reconciler: `replicas` running tasks of the current template, rolled over within `maxSurge`/`maxUnavailable`.

use std::sync::Arc;

use api_types::Service;
use client::Action;

use crate::{Context, Result};

/// Reconciles one Service.
pub async fn reconcile(_service: Arc<Service>, _ctx: Arc<Context>) -> Result<Action> {
    Ok(Action::await_change())
}
