//! get and list: one object from the store; lists from the watch cache or the
//! store, paged, bounded and filtered.

use bytes::Bytes;
use serde_json::Value;

use api_types::Status;

use super::{GenericStore, parse_revision};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::{self, ContinueToken, ListOptions, Revision};
use crate::watch_cache::{CachedObject, Filter};

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The objects, as JSON with their resourceVersion.
    pub items: Vec<Bytes>,
    /// The list's resourceVersion.
    pub revision: Revision,
    /// The token for the next page.
    pub continue_token: Option<String>,
}

/// What a list asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Namespace, labels and fields.
    pub filter: Filter,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
}

impl GenericStore {
    /// Reads one object.
    pub async fn get(&self, res: &ServedResource, namespace: &str, name: &str) -> ApiResult<Value> {
        let kv = self.load(res, namespace, name).await?;
        object::from_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)
    }

    /// Waits until the watch cache has caught up with `wanted` (a revision the
    /// client has seen), so a list from it is not older than that.
    pub(super) async fn cache_at(&self, res: &ServedResource, wanted: Revision) -> ApiResult<()> {
        if res
            .cache
            .wait_for(wanted, std::time::Duration::from_secs(3))
            .await
        {
            return Ok(());
        }
        Err(ApiError::from_store(
            store::Error::FutureRevision {
                requested: wanted,
                current: res.cache.revision(),
            },
            &res.group_resource(),
            "",
        ))
    }

    fn list_too_large(&self, res: &ServedResource) -> ApiError {
        ApiError::from(Status::request_entity_too_large(&format!(
            "the list of {} has more than {} objects, the most a list without limit may return: list in pages with limit and continue",
            res.group_resource(),
            self.max_list_objects
        )))
    }

    /// Lists objects: from the watch cache when the request allows any recent
    /// state (`resourceVersion=0` or `NotOlderThan`), else from the store, exactly
    /// at the revision asked or the latest. Without `limit`, more than
    /// `max_list_objects` objects is a 413, decided before they are all
    /// gathered; a `limit` above it is lowered to it (the client pages on).
    pub async fn list(&self, res: &ServedResource, query: ListQuery) -> ApiResult<ListPage> {
        let max = self.max_list_objects;
        let exact = match list_source(&query)? {
            ListSource::Cache(wanted) => {
                self.cache_at(res, wanted).await?;
                match res.cache.list_at_most(&query.filter, max) {
                    Some((items, revision)) => {
                        return Ok(ListPage {
                            items: items.iter().map(|o| o.json.clone()).collect(),
                            revision,
                            continue_token: None,
                        });
                    }
                    // Too many for one answer; the client can page, so read the
                    // store a page at a time (at the latest revision, which is
                    // not older than what it asked for).
                    None if query.limit.is_some() => None,
                    None => return Err(self.list_too_large(res)),
                }
            }
            ListSource::Store(exact) => exact,
        };
        let prefix = res.prefix(query.filter.namespace.as_deref());
        let selectable = res.selectable_fields();
        let filtered = query.filter.labels.is_some() || query.filter.fields.is_some();
        let mut items = Vec::new();
        let mut token = query.continue_token.clone();
        let mut revision = exact;
        let wanted = query.limit.filter(|l| *l > 0).map(|l| l.min(max));
        loop {
            let page_size = wanted
                .map(|w| (w - items.len()).clamp(50, 10_000))
                .or(Some(10_000));
            let page = self
                .store
                .list(&prefix, ListOptions { revision, limit: page_size, continue_token: token.take() })
                .await
                .map_err(|e| match e {
                    store::Error::Compacted { requested, compacted } if query.continue_token.is_some() => {
                        ApiError::from(Status::expired(format!(
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results ({requested} < {compacted})"
                        )))
                    }
                    e => ApiError::from_store(e, &res.group_resource(), ""),
                })?;
            revision = Some(page.revision);
            let count = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                // Parse an object only when a selector has to look inside it.
                let json = if filtered {
                    let Some(cached) = CachedObject::from_kv(kv, kv.mod_revision, &selectable)
                    else {
                        continue;
                    };
                    if !query.filter.matches(&cached) {
                        continue;
                    }
                    cached.json
                } else {
                    object::with_resource_version(&kv.value, kv.mod_revision)
                };
                if wanted.is_none() && items.len() == max {
                    return Err(self.list_too_large(res));
                }
                items.push(json);
                if let Some(wanted) = wanted
                    && items.len() >= wanted
                {
                    let more = i + 1 < count || page.continue_token.is_some();
                    let continue_token = more.then(|| {
                        ContinueToken {
                            revision: page.revision,
                            last_key: kv.key.clone(),
                        }
                        .encode()
                    });
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token,
                    });
                }
            }
            match page.continue_token {
                Some(next) => token = Some(next),
                None => {
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token: None,
                    });
                }
            }
        }
    }
}

/// Where a list reads.
pub(super) enum ListSource {
    /// The watch cache, once it has seen this revision.
    Cache(Revision),
    /// The store, at this revision or the latest.
    Store(Option<Revision>),
}

/// Where a list query reads: any recent state (`resourceVersion=0` or
/// `NotOlderThan`) comes from the watch cache; the rest from the store.
pub(super) fn list_source(query: &ListQuery) -> ApiResult<ListSource> {
    let rv = query.resource_version.as_deref().filter(|v| !v.is_empty());
    let from_cache = query.continue_token.is_none()
        && matches!(
            (rv, query.resource_version_match.as_deref()),
            (Some("0"), _) | (Some(_), Some("NotOlderThan"))
        );
    if from_cache {
        return Ok(ListSource::Cache(parse_revision(
            rv.unwrap_or("0"),
            "resourceVersion",
        )?));
    }
    let exact = match (rv, query.resource_version_match.as_deref()) {
        (Some(rv), Some("Exact")) => Some(parse_revision(rv, "resourceVersion")?),
        (Some(rv), None) if query.continue_token.is_none() => {
            Some(parse_revision(rv, "resourceVersion")?)
        }
        (Some(_), Some(other)) if other != "Exact" && other != "NotOlderThan" => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch {other:?} is not supported: use Exact or NotOlderThan"
            )));
        }
        _ => None,
    };
    Ok(ListSource::Store(exact))
}
