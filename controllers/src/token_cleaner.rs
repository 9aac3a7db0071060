//! The bootstrap token cleaner, as Kubernetes' `tokencleaner`: a
//! BootstrapToken is deleted once its expiration has passed. The
//! authenticator already refuses an expired token; deleting it keeps the
//! store free of dead credentials and `loom token list` honest.

use std::sync::Arc;
use std::time::Duration;

use api_types::BootstrapToken;
use chrono::{DateTime, Utc};
use client::api::Preconditions;
use client::{Action, Api, DeleteParams};
use tracing::info;

use crate::{Context, Error, Result};

/// When `token` is due for deletion, if ever.
pub fn due(token: &BootstrapToken) -> Option<DateTime<Utc>> {
    token.spec.expiration
}

/// Deletes an expired bootstrap token, or comes back when it will have expired.
pub async fn reconcile(token: Arc<BootstrapToken>, ctx: Arc<Context>) -> Result<Action> {
    if token.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(due) = due(&token) else {
        return Ok(Action::await_change());
    };
    let now = Utc::now();
    if now < due {
        let wait = (due - now).to_std().unwrap_or(Duration::ZERO);
        return Ok(Action::requeue(wait + Duration::from_millis(10)));
    }
    let api: Api<BootstrapToken> = Api::all(ctx.client.clone());
    let params = DeleteParams {
        // Only the token seen expired: one re-created under its id since is
        // left alone.
        preconditions: Some(Preconditions {
            uid: Some(token.metadata.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&token.metadata.name, &params).await {
        Ok(_) => {
            info!(token = %token.metadata.name, expired = %due.to_rfc3339(), "expired bootstrap token deleted");
            Ok(Action::await_change())
        }
        Err(error) if error.is_not_found() || error.is_conflict() => Ok(Action::await_change()),
        Err(error) => Err(Error::api(
            "delete expired bootstrap token",
            token.metadata.name.clone(),
        )(error)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_with_an_expiration_are_due() {
        let mut token = BootstrapToken::default();
        assert_eq!(due(&token), None);
        let at = Utc::now();
        token.spec.expiration = Some(at);
        assert_eq!(due(&token), Some(at));
    }
}
