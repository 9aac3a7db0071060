//! deletecollection: every object a list selects, deleted one at a time
//! through delete, a page at a time.

use api_types::options::DeleteOptions;
use bytes::Bytes;

use super::GenericStore;
use super::get_list::{ListQuery, ListSource, list_source};
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, ContinueToken, ListOptions};
use crate::watch_cache::CachedObject;

/// Objects a deletecollection reads and deletes at a time.
const DELETE_PAGE: usize = 500;

impl GenericStore {
    /// Deletes every object a list query selects, a page at a time (never the
    /// whole collection in memory at once), and returns the deleted objects as JSON.
    pub async fn delete_collection(
        &self,
        res: &ServedResource,
        query: ListQuery,
        options: &DeleteOptions,
    ) -> ApiResult<Vec<Bytes>> {
        let query = ListQuery {
            limit: None,
            continue_token: None,
            ..query
        };
        let mut deleted = Vec::new();
        match list_source(&query)? {
            ListSource::Cache(wanted) => {
                self.cache_at(res, wanted).await?;
                // Pages by key: objects that stay (held by finalizers) are not seen twice.
                let mut after: Option<String> = None;
                loop {
                    let page = res
                        .cache
                        .list_page(&query.filter, after.as_deref(), DELETE_PAGE);
                    let Some(last) = page.last() else { break };
                    after = Some(last.key.clone());
                    for object in &page {
                        self.delete_member(
                            res,
                            &object.namespace,
                            &object.name,
                            options,
                            &mut deleted,
                        )
                        .await?;
                    }
                }
            }
            ListSource::Store(exact) => {
                let prefix = res.prefix(query.filter.namespace.as_deref());
                let selectable = res.selectable_fields();
                let mut revision = exact;
                let mut after: Option<String> = None;
                loop {
                    let continue_token = match (&after, revision) {
                        (Some(key), Some(revision)) => Some(
                            ContinueToken {
                                revision,
                                last_key: key.clone(),
                            }
                            .encode(),
                        ),
                        _ => None,
                    };
                    let options_page = ListOptions {
                        revision: if continue_token.is_some() {
                            None
                        } else {
                            revision
                        },
                        limit: Some(DELETE_PAGE),
                        continue_token,
                    };
                    let page = match self.store.list(&prefix, options_page).await {
                        Ok(page) => page,
                        Err(store::Error::Compacted { .. }) if after.is_some() => {
                            // The snapshot the pages read went while deleting: go on
                            // from the same key at the latest revision.
                            let latest =
                                self.store.current_revision().await.map_err(|e| {
                                    ApiError::from_store(e, &res.group_resource(), "")
                                })?;
                            revision = Some(latest);
                            continue;
                        }
                        Err(e) => return Err(ApiError::from_store(e, &res.group_resource(), "")),
                    };
                    revision = Some(page.revision);
                    let Some(last) = page.items.last() else { break };
                    after = Some(last.key.clone());
                    for kv in &page.items {
                        let Some(object) = CachedObject::from_kv(kv, kv.mod_revision, &selectable)
                        else {
                            continue;
                        };
                        if !query.filter.matches(&object) {
                            continue;
                        }
                        self.delete_member(
                            res,
                            &object.namespace,
                            &object.name,
                            options,
                            &mut deleted,
                        )
                        .await?;
                    }
                    if page.continue_token.is_none() {
                        break;
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes one member of a collection being deleted; one already gone is skipped.
    async fn delete_member(
        &self,
        res: &ServedResource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
        deleted: &mut Vec<Bytes>,
    ) -> ApiResult<()> {
        match self.delete(res, namespace, name, options).await {
            Ok(object) => {
                deleted.push(Bytes::from(
                    serde_json::to_vec(&object).map_err(ApiError::internal)?,
                ));
                Ok(())
            }
            Err(error) if error.code() == 404 => Ok(()),
            Err(error) => Err(error),
        }
    }
}
