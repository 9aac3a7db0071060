//! Periodic compaction of etcd's history, shared by every API server on one etcd.
//!
//! As Kubernetes' (`k8s.io/apiserver/pkg/storage/etcd3/compact.go`): every API server
//! runs a compactor, and they agree through one key, [`COMPACT_REV_KEY`], whose
//! etcd `version` counts compaction rounds. Each interval a compactor writes the key
//! in a transaction conditioned on the version it saw last time; the one that wins
//! compacts, the others learn the new version and try again an interval later.
//! So several API servers compact once per interval together, and if the winner
//! dies another takes over within two intervals; no leader election is needed.
//!
//! A round compacts to the revision its compactor saw one interval earlier, and
//! keeps at least `history` revisions besides: a watcher or a paginated list less
//! than one interval (and less than `history` revisions) behind never meets a
//! compacted revision.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp, TxnOpResponse};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::etcd::{compact_to, etcd};
use super::{Error, Result, Revision};

/// The key the compactors of one etcd cluster coordinate on: its version is the
/// number of compaction rounds, its value the revision the last round compacted
/// up to. Compaction drops the history of the whole etcd, not one prefix, so the
/// key lies outside every prefix, where Kubernetes keeps its own (an API server
/// of either sharing the etcd takes part in the same schedule).
pub const COMPACT_REV_KEY: &str = "compact_rev_key";

/// What one compaction round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionRound {
    /// Another compactor claimed this round; this one follows its count.
    Lost,
    /// This compactor claimed the round and compacted history before `compacted`,
    /// or, with `None`, found nothing old enough yet (the first round only
    /// records the revision the next one compacts to).
    Claimed {
        /// The revision compacted to.
        compacted: Option<Revision>,
    },
}

/// One API server's share of etcd compaction.
pub struct Compactor {
    kv: KvClient,
    history: i64,
    /// The key's version when this compactor last looked: the round it is at.
    seen_version: i64,
    /// etcd's revision when this compactor last looked, one interval ago.
    seen_revision: Revision,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor")
            .field("history", &self.history)
            .field("seen_version", &self.seen_version)
            .field("seen_revision", &self.seen_revision)
            .finish_non_exhaustive()
    }
}

/// Where a claimed round compacts to: the revision seen one interval earlier,
/// but never into the last `history` revisions. `None` when nothing is old enough.
fn target(seen: Revision, current: Revision, history: i64) -> Option<Revision> {
    let target = seen.min(current - history.max(0));
    (target > 0).then_some(target)
}

impl Compactor {
    /// A compactor that keeps at least `history` revisions (and one interval).
    pub(super) fn new(kv: KvClient, history: i64) -> Self {
        Compactor {
            kv,
            history,
            seen_version: 0,
            seen_revision: 0,
        }
    }

    /// Tries to claim the next round and, if claimed, compacts.
    pub async fn round(&mut self) -> Result<CompactionRound> {
        let txn = Txn::new()
            .when([Compare::version(
                COMPACT_REV_KEY,
                CompareOp::Equal,
                self.seen_version,
            )])
            .and_then([TxnOp::put(
                COMPACT_REV_KEY,
                self.seen_revision.to_string(),
                None,
            )])
            .or_else([TxnOp::get(COMPACT_REV_KEY, None)]);
        let response = self.kv.txn(txn).await.map_err(etcd)?;
        let current = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))?;
        if !response.succeeded() {
            // Someone else claimed the round (or the key was deleted: version 0).
            let mut version = 0;
            for op in response.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    version = get.kvs().first().map_or(0, |kv| kv.version());
                }
            }
            self.seen_version = version;
            self.seen_revision = current;
            return Ok(CompactionRound::Lost);
        }
        self.seen_version += 1;
        let seen = std::mem::replace(&mut self.seen_revision, current);
        let Some(revision) = target(seen, current, self.history) else {
            return Ok(CompactionRound::Claimed { compacted: None });
        };
        // A failed compaction loses this round; the next one compacts further.
        compact_to(&mut self.kv, revision).await?;
        Ok(CompactionRound::Claimed {
            compacted: Some(revision),
        })
    }

    /// Runs a round every `interval` until `stop` is cancelled.
    pub async fn run(mut self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let round = tokio::select! {
                _ = stop.cancelled() => return,
                round = self.round() => round,
            };
            match round {
                Ok(CompactionRound::Claimed {
                    compacted: Some(revision),
                }) => debug!(revision, "compacted etcd history"),
                Ok(_) => {}
                Err(error) => warn!(%error, "etcd compaction failed; trying again next interval"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn a_round_keeps_one_interval_and_the_history_window() {
        // The first round has seen nothing yet: nothing to compact.
        assert_eq!(target(0, 500, 100), None);
        // Quiet etcd: the revision seen an interval ago bounds the compaction.
        assert_eq!(target(20_000, 20_010, 5), Some(20_000));
        // Busy etcd: the window keeps the last `history` revisions.
        assert_eq!(target(20_000, 25_000, 10_000), Some(15_000));
        // Fewer revisions than the window: nothing.
        assert_eq!(target(900, 1_000, 10_000), None);
        // No window: exactly one interval.
        assert_eq!(target(900, 1_000, 0), Some(900));
        assert_eq!(target(900, 1_000, -3), Some(900));
    }
}
