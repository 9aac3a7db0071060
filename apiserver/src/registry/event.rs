//! Events: what happened to an object, for `describe` and `events`.

use api_types::Event;

use super::{Column, Typed, field};

/// The Event strategy.
pub fn strategy() -> Typed<Event> {
    Typed::new(vec![
        Column {
            name: "Type",
            kind: "string",
            description: "Normal or Warning",
            priority: 0,
            cell: |o| field(o, "type"),
        },
        Column {
            name: "Reason",
            kind: "string",
            description: "Why it happened, in one word",
            priority: 0,
            cell: |o| field(o, "reason"),
        },
        Column {
            name: "Object",
            kind: "string",
            description: "The object it happened to",
            priority: 0,
            cell: |o| {
                serde_json::json!(format!(
                    "{}/{}",
                    field(o, "involvedObject.kind")
                        .as_str()
                        .unwrap_or("")
                        .to_lowercase(),
                    field(o, "involvedObject.name").as_str().unwrap_or("")
                ))
            },
        },
        Column {
            name: "Message",
            kind: "string",
            description: "What happened",
            priority: 0,
            cell: |o| field(o, "message"),
        },
    ])
    .selectable(&[
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.uid",
        "reason",
        "type",
    ])
}

/// Kubernetes' default `--event-ttl`.
pub const DEFAULT_EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The most Events one pass deletes before it yields (the next pass goes on).
const EXPIRE_BATCH: usize = 10_000;

/// When an Event was last seen: `lastTimestamp`, else `firstTimestamp`, else
/// its creation.
fn last_seen(event: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    [
        "/lastTimestamp",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|pointer| {
        event
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    })
}

/// Deletes every Event last seen more than `ttl` before `now`, each only if
/// it was not written since it was read (an Event seen again stays). Returns
/// how many were deleted.
pub async fn expire_once(
    api: &crate::generic::GenericStore,
    ttl: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::error::ApiResult<usize> {
    use api_types::Resource as _;
    let store = api.store.as_ref();
    let res = api.catalog.builtin_resource::<Event>();
    let prefix = format!("{}/{}/", res.storage_group, Event::PLURAL);
    let cutoff = now - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut deleted = 0;
    let mut continue_token = None;
    loop {
        let page = store
            .list(
                &prefix,
                crate::store::ListOptions {
                    limit: Some(1_000),
                    continue_token: continue_token.take(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| crate::error::ApiError::from_store(e, &res.group_resource(), ""))?;
        for kv in page.items {
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
                continue;
            };
            if last_seen(&event).is_none_or(|seen| seen >= cutoff) {
                continue;
            }
            // Written since: its new time decides next pass.
            match store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => deleted += 1,
                Err(
                    crate::store::Error::Conflict { .. } | crate::store::Error::NotFound { .. },
                ) => {}
                Err(e) => {
                    return Err(crate::error::ApiError::from_store(
                        e,
                        &res.group_resource(),
                        "",
                    ));
                }
            }
            if deleted >= EXPIRE_BATCH {
                return Ok(deleted);
            }
        }
        match page.continue_token {
            Some(token) => continue_token = Some(token),
            None => return Ok(deleted),
        }
    }
}

/// Deletes expired Events (see [`expire_once`]) every quarter of `ttl` (at
/// most every minute) until `cancel`; every API server of a cluster does, each
/// delete conditional on what it read. Events are the one kind every task
/// start and end adds to: without this the store and every API server's
/// caches grow for ever.
pub fn keep_expiring(
    api: std::sync::Arc<crate::generic::GenericStore>,
    ttl: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    use tracing::Instrument as _;
    let every = (ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match expire_once(&api, ttl, chrono::Utc::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "expired events deleted"),
                    Err(error) => {
                        tracing::warn!(%error, "cannot delete expired events; trying again later")
                    }
                }
            }
        }
        .instrument(tracing::info_span!("event-ttl")),
    );
}
