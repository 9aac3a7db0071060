//! watch: every change after a revision, from the resource's watch cache (the
//! HTTP layer streams it and bounds how many are open).

use api_types::Status;

use super::GenericStore;
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::store::Revision;
use crate::watch_cache::{Filter, Watch, WatchError};

/// Where a watch starts: after `resourceVersion`, or (none, `""` or `"0"`)
/// with the current objects as ADDED.
pub fn watch_from(resource_version: Option<&str>) -> ApiResult<Option<Revision>> {
    match resource_version {
        None | Some("") | Some("0") => Ok(None),
        Some(rv) => rv.parse::<Revision>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion {rv:?} is not a valid resource version"
            ))
        }),
    }
}

/// The Status a watch that cannot start ends with (sent as an ERROR event, as
/// Kubernetes does, in a 200 stream).
pub fn watch_error_status(error: &WatchError) -> Status {
    match error {
        WatchError::Gone { requested, oldest } => {
            Status::too_old_resource_version(*requested, *oldest)
        }
        WatchError::TooLarge { .. } => {
            let mut status = Status::timeout(error.to_string());
            status.code = 504;
            status
        }
        WatchError::Stopped => Status::internal_error(&error.to_string()),
    }
}

impl GenericStore {
    /// Starts a watch of `res` from `from` (see [`watch_from`]) for the objects
    /// `filter` selects.
    pub async fn watch(
        &self,
        res: &ServedResource,
        from: Option<Revision>,
        filter: Filter,
    ) -> Result<Watch, WatchError> {
        res.cache.watch(from, filter).await
    }
}
