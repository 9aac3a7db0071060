//! The versioned key-value store every object lives in: one interface, two backends.
//!
//! Every write gets a revision from one cluster-wide sequence that only grows; an
//! object's `resourceVersion` is the revision of its last write. Conditional writes
//! compare against that revision, lists can be read at a past revision, and a watch
//! replays every change after a revision, in order, with no gap and no duplicate,
//! until history older than the last compaction is gone.

pub mod compactor;
pub mod embedded;
pub mod etcd;
pub mod snapshot;

use std::pin::Pin;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

pub use compactor::{COMPACT_REV_KEY, CompactionRound, Compactor};
pub use embedded::{EmbeddedOptions, EmbeddedStore, Health};
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use snapshot::{Snapshot, SnapshotKind};

/// A position in the store's history: the number of the write that made it.
pub type Revision = i64;

/// The largest value the store accepts, as etcd's default request limit.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// The result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("key {key:?} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key written.
        key: String,
    },
    /// A conditional write found the key at another revision.
    #[error("key {key:?} was modified: expected revision {expected}, found {}", current.mod_revision)]
    Conflict {
        /// The key written.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key as it is now, so the caller can retry without another read.
        current: Box<KeyValue>,
    },
    /// The revision asked for is older than the oldest one kept.
    #[error(
        "revision {requested} has been compacted; the oldest revision available is {compacted}"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The store's compaction revision.
        compacted: Revision,
    },
    /// The revision asked for has not happened yet.
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// A value larger than [`MAX_VALUE_BYTES`].
    #[error("value for key {key:?} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key written.
        key: String,
        /// The size of the value.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A continue token that is malformed or belongs to another list.
    #[error("invalid continue token: {0}")]
    InvalidContinue(String),
    /// The backend failed (I/O, a closed store, an answer it cannot give).
    #[error("store backend failed: {0}")]
    Backend(String),
    /// The backend did not answer: unreachable, or out of time. A write may
    /// or may not have happened.
    #[error("the store did not answer: {0}")]
    Unavailable(String),
}

/// One key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `loom.dev/tasks/default/web-0`.
    pub key: String,
    /// The stored bytes.
    pub value: Bytes,
    /// The revision that created the key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of the key's last write: the object's resourceVersion.
    pub mod_revision: Revision,
}

/// A change to one key, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created.
    Created(KeyValue),
    /// The key was overwritten; `prev` is the value before.
    Updated {
        /// The key after the write.
        kv: KeyValue,
        /// The key before the write.
        prev: KeyValue,
    },
    /// The key was deleted at `revision`; `prev` is its last value.
    Deleted {
        /// The revision of the delete.
        revision: Revision,
        /// The key's last value before the delete.
        prev: KeyValue,
    },
    /// Nothing under the watched prefix changed up to `revision`: every event up to
    /// it has been delivered. Sent while the prefix is quiet and the store is not.
    Progress {
        /// The store's revision the watch has caught up with.
        revision: Revision,
    },
}

impl Event {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Created(kv) | Event::Updated { kv, .. } => kv.mod_revision,
            Event::Deleted { revision, .. } | Event::Progress { revision } => *revision,
        }
    }

    /// The key the event is about (empty for progress).
    pub fn key(&self) -> &str {
        match self {
            Event::Created(kv) | Event::Updated { kv, .. } => &kv.key,
            Event::Deleted { prev, .. } => &prev.key,
            Event::Progress { .. } => "",
        }
    }
}

/// The outcome of a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// The revision of the delete.
    pub revision: Revision,
    /// The key's last value.
    pub prev: KeyValue,
}

/// How to read a list.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Read the state as of this revision; `None` reads the latest.
    pub revision: Option<Revision>,
    /// Return at most this many keys and a continue token if more remain.
    pub limit: Option<usize>,
    /// Continue a list where an earlier page ended (the earlier page's token).
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// The keys, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at; every page of one list has the same.
    pub revision: Revision,
    /// Present when more keys remain: pass it back to read the next page.
    pub continue_token: Option<String>,
}

/// A stream of the changes under a prefix, in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// A versioned key-value store.
///
/// Keys are `/`-separated strings; a prefix selects every key that starts with it.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The key's latest value, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, in key order, at one revision.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult>;

    /// Creates the key; fails with [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Overwrites the key if its last write was at `expected`; else
    /// [`Error::Conflict`] with the current value, or [`Error::NotFound`].
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;

    /// Deletes the key, if `expected` is given only when its last write was at it.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted>;

    /// Every change under `prefix` after revision `after`, then every new one.
    ///
    /// After `compact(c)`, `after` must be at least `c`, else the stream's first
    /// item is [`Error::Compacted`]; a stream ends with an error item.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Drops history before `revision`: lists at older revisions and watches from
    /// older revisions fail with [`Error::Compacted`] afterwards.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The revision of the latest write.
    async fn current_revision(&self) -> Result<Revision>;

    /// A consistent copy of the whole store, taken while it keeps serving:
    /// SQLite's online backup of the embedded store, etcd's own snapshot of
    /// etcd. Either keeps every key's revisions, so a store restored from it
    /// serves the same resourceVersions ([`snapshot`]).
    async fn snapshot(&self) -> Result<Snapshot> {
        Err(Error::Backend(
            "this store cannot take snapshots".to_owned(),
        ))
    }
}

/// Refuses values over [`MAX_VALUE_BYTES`].
pub(crate) fn check_value_size(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::ValueTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The first key after every key that starts with `prefix` (an exclusive range end).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key starts with the empty prefix: no end.
    Vec::new()
}

/// Where a paginated list stands: the revision it reads at and the last key returned.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ContinueToken {
    #[serde(rename = "rv")]
    pub revision: Revision,
    #[serde(rename = "start")]
    pub last_key: String,
}

impl ContinueToken {
    pub(crate) fn encode(&self) -> String {
        // Serializing two plain fields cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes a token and checks it belongs to a list of `prefix`.
    pub(crate) fn decode(token: &str, prefix: &str) -> Result<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| Error::InvalidContinue(format!("not base64: {e}")))?;
        let token: ContinueToken = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidContinue(format!("not a continue token: {e}")))?;
        if !token.last_key.starts_with(prefix) || token.revision <= 0 {
            return Err(Error::InvalidContinue(
                "the token belongs to another list".to_owned(),
            ));
        }
        Ok(token)
    }
}

/// Resolves the revision and start key of a list from its options.
pub(crate) struct ListPlan {
    /// The revision to read at; `None` for the latest.
    pub revision: Option<Revision>,
    /// Return keys strictly after this one.
    pub after_key: Option<String>,
    pub limit: Option<usize>,
}

impl ListPlan {
    pub(crate) fn new(prefix: &str, options: ListOptions) -> Result<Self> {
        let limit = options.limit.filter(|l| *l > 0);
        match options.continue_token {
            Some(token) if !token.is_empty() => {
                let token = ContinueToken::decode(&token, prefix)?;
                if let Some(revision) = options.revision.filter(|r| *r > 0)
                    && revision != token.revision
                {
                    return Err(Error::InvalidContinue(format!(
                        "the token reads at revision {}, the request asks for {revision}",
                        token.revision
                    )));
                }
                Ok(ListPlan {
                    revision: Some(token.revision),
                    after_key: Some(token.last_key),
                    limit,
                })
            }
            _ => Ok(ListPlan {
                revision: options.revision.filter(|r| *r > 0),
                after_key: None,
                limit,
            }),
        }
    }

    /// Builds the page from up to `limit + 1` keys read.
    pub(crate) fn page(&self, mut items: Vec<KeyValue>, revision: Revision) -> ListResult {
        let mut continue_token = None;
        if let Some(limit) = self.limit
            && items.len() > limit
        {
            items.truncate(limit);
            if let Some(last) = items.last() {
                continue_token = Some(
                    ContinueToken {
                        revision,
                        last_key: last.key.clone(),
                    }
                    .encode(),
                );
            }
        }
        ListResult {
            items,
            revision,
            continue_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end(""), Vec::<u8>::new());
    }

    #[test]
    fn continue_tokens_round_trip_and_are_checked() {
        let token = ContinueToken {
            revision: 42,
            last_key: "p/x".to_owned(),
        };
        let encoded = token.encode();
        assert!(matches!(ContinueToken::decode(&encoded, "p/"), Ok(t) if t == token));
        assert!(matches!(
            ContinueToken::decode(&encoded, "q/"),
            Err(Error::InvalidContinue(_))
        ));
        assert!(matches!(
            ContinueToken::decode("!!", "p/"),
            Err(Error::InvalidContinue(_))
        ));
    }
}
