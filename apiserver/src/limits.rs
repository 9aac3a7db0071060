//! What one user may hold of the API server at once: open watches, and
//! requests in flight (Kubernetes' `--max-requests-inflight` and
//! `--max-mutating-requests-inflight`), each refused with 429 and
//! `Retry-After` beyond its cap.
//!
//! Caps are kept per authenticated user (issue 17 re-keys issue 10's
//! per-address caps): many users behind one address (a NAT, a node) do not
//! share one budget, and one user cannot dodge its cap from many addresses.
//! A request no authenticator vouched for (a server run without
//! authentication) is counted by its source address instead.
//!
//! As in Kubernetes, members of `system:masters` are exempt from the
//! in-flight caps and from the per-user caps; they still count against the
//! total of open watches, which bounds the server's memory rather than
//! sharing it.
//!
//! Long-running requests (watches, followed logs) are not requests in
//! flight: a watch holds a watch slot for its whole life instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::ApiError;
use crate::http::User;
use crate::metrics::Metrics;

/// The group whose members are exempt from per-user and in-flight caps.
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// A watch refused for being over a cap is told to come back after this long.
pub const WATCH_RETRY_AFTER_SECONDS: i32 = 10;
/// A request refused for too many in flight is told to come back after this
/// long (Kubernetes' max-in-flight filter says 1 s).
pub const INFLIGHT_RETRY_AFTER_SECONDS: i32 = 1;

/// The caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Watches one user may have open.
    pub watches_per_user: usize,
    /// Watches open in all.
    pub watches: usize,
    /// Mutating requests (create, update, patch, delete) one user may have in flight.
    pub mutating_per_user: usize,
    /// Mutating requests in flight in all (`--max-mutating-requests-inflight`).
    pub mutating: usize,
    /// Other (read) requests in flight in all (`--max-requests-inflight`).
    pub read_only: usize,
}

/// Who a request counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requester {
    /// An authenticated (or anonymous) user, by name.
    User {
        /// The user's name.
        name: String,
        /// A member of [`PRIVILEGED_GROUP`].
        privileged: bool,
    },
    /// A request without a user, by its source address.
    Address(IpAddr),
    /// Neither: counted in the totals only.
    Unknown,
}

impl Requester {
    /// The requester of a request by `user` (when an authenticator set one)
    /// from `peer`. Anonymous requests (`system:anonymous`, which the
    /// authentication layer sets on every request without a credential) are
    /// counted by their address, as requests without a user: one name shared
    /// by every anonymous client would let one of them starve the others.
    pub fn of(user: Option<&User>, peer: Option<IpAddr>) -> Self {
        let user = user.filter(|u| u.name != User::anonymous().name);
        match (user, peer) {
            (Some(user), _) => Requester::User {
                name: user.name.clone(),
                privileged: user.groups.iter().any(|g| g == PRIVILEGED_GROUP),
            },
            (None, Some(address)) => Requester::Address(address),
            (None, None) => Requester::Unknown,
        }
    }

    fn privileged(&self) -> bool {
        matches!(
            self,
            Requester::User {
                privileged: true,
                ..
            }
        )
    }

    /// The key of its per-user counts, if it has any.
    fn key(&self) -> Option<Requester> {
        match self {
            Requester::User {
                privileged: true, ..
            }
            | Requester::Unknown => None,
            other => Some(other.clone()),
        }
    }
}

impl std::fmt::Display for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requester::User { name, .. } => write!(f, "user {name:?}"),
            Requester::Address(address) => write!(f, "address {address}"),
            Requester::Unknown => f.write_str("an unknown client"),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server has as many watches open as it allows.
    #[error("too many watches open on this server (the limit is {limit}); retry later")]
    Watches {
        /// The cap.
        limit: usize,
    },
    /// The requester has as many watches open as one may.
    #[error(
        "too many watches open by {requester} (the limit is {limit} per user); close some or retry later"
    )]
    WatchesPerUser {
        /// Who.
        requester: Requester,
        /// The cap per user.
        limit: usize,
    },
    /// The server has as many mutating requests in flight as it allows.
    #[error(
        "too many mutating requests in flight on this server (the limit is {limit}); retry later"
    )]
    Mutating {
        /// The cap.
        limit: usize,
    },
    /// The requester has as many mutating requests in flight as one may.
    #[error(
        "too many mutating requests in flight from {requester} (the limit is {limit} per user); retry later"
    )]
    MutatingPerUser {
        /// Who.
        requester: Requester,
        /// The cap per user.
        limit: usize,
    },
    /// The server has as many read requests in flight as it allows.
    #[error("too many requests in flight on this server (the limit is {limit}); retry later")]
    ReadOnly {
        /// The cap.
        limit: usize,
    },
}

impl Refusal {
    /// The `reason` label of the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Watches { .. } => "watches",
            Refusal::WatchesPerUser { .. } => "watches-per-user",
            Refusal::Mutating { .. } => "mutating-inflight",
            Refusal::MutatingPerUser { .. } => "mutating-inflight-per-user",
            Refusal::ReadOnly { .. } => "readonly-inflight",
        }
    }

    /// Seconds the client is told to wait.
    pub fn retry_after_seconds(&self) -> i32 {
        match self {
            Refusal::Watches { .. } | Refusal::WatchesPerUser { .. } => WATCH_RETRY_AFTER_SECONDS,
            _ => INFLIGHT_RETRY_AFTER_SECONDS,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::from(api_types::Status::too_many_requests(
            refusal.to_string(),
            refusal.retry_after_seconds(),
        ))
    }
}

/// What a permit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Watch,
    Mutating,
    ReadOnly,
}

#[derive(Debug, Default)]
struct Counts {
    total: HashMap<Kind, usize>,
    per_user: HashMap<(Kind, Requester), usize>,
}

/// The counters against the caps.
pub struct Limits {
    caps: Caps,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// A watch slot or a request's place in flight, given back on drop.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    kind: Kind,
    /// Counted in the total.
    total: bool,
    /// Counted for this requester.
    key: Option<Requester>,
}

impl Limits {
    /// Counters against `caps`; refusals are counted in `metrics`.
    pub fn new(caps: Caps, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Limits {
            caps,
            counts: Mutex::new(Counts::default()),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a watch by `who`, held until the watch's stream is dropped.
    pub fn watch(self: &Arc<Self>, who: &Requester) -> Result<Permit, Refusal> {
        let result = self.take(
            Kind::Watch,
            who,
            true,
            (self.caps.watches, |limit| Refusal::Watches { limit }),
            (self.caps.watches_per_user, |requester, limit| {
                Refusal::WatchesPerUser { requester, limit }
            }),
        );
        self.count(result)
    }

    /// A place in flight for a request by `who` that is not long-running,
    /// held until its response is made.
    pub fn request(self: &Arc<Self>, who: &Requester, mutating: bool) -> Result<Permit, Refusal> {
        // As Kubernetes, the privileged group is not counted at all.
        let total = !who.privileged();
        let result = if mutating {
            self.take(
                Kind::Mutating,
                who,
                total,
                (self.caps.mutating, |limit| Refusal::Mutating { limit }),
                (self.caps.mutating_per_user, |requester, limit| {
                    Refusal::MutatingPerUser { requester, limit }
                }),
            )
        } else {
            self.take(
                Kind::ReadOnly,
                who,
                total,
                (self.caps.read_only, |limit| Refusal::ReadOnly { limit }),
                // No cap per user on reads: the total is Kubernetes' only one.
                (usize::MAX, |requester, limit| Refusal::MutatingPerUser {
                    requester,
                    limit,
                }),
            )
        };
        self.count(result)
    }

    fn count(&self, result: Result<Permit, Refusal>) -> Result<Permit, Refusal> {
        if let Err(refusal) = &result {
            self.metrics.rejected(refusal.reason());
        }
        result
    }

    fn take(
        self: &Arc<Self>,
        kind: Kind,
        who: &Requester,
        total: bool,
        (total_cap, over_total): (usize, fn(usize) -> Refusal),
        (user_cap, over_user): (usize, fn(Requester, usize) -> Refusal),
    ) -> Result<Permit, Refusal> {
        let key = who.key().filter(|_| user_cap != usize::MAX);
        let mut counts = self.lock();
        let all = counts.total.get(&kind).copied().unwrap_or(0);
        if total && all >= total_cap {
            return Err(over_total(total_cap));
        }
        if let Some(key) = &key {
            let mine = counts
                .per_user
                .get(&(kind, key.clone()))
                .copied()
                .unwrap_or(0);
            if mine >= user_cap {
                return Err(over_user(key.clone(), user_cap));
            }
            counts.per_user.insert((kind, key.clone()), mine + 1);
        }
        if total {
            counts.total.insert(kind, all + 1);
        }
        Ok(Permit {
            limits: self.clone(),
            kind,
            total,
            key,
        })
    }

    /// Watches open in all, and by `who`.
    pub fn watches(&self, who: &Requester) -> (usize, usize) {
        self.open(Kind::Watch, who)
    }

    /// Mutating requests in flight in all, and from `who`.
    pub fn mutating(&self, who: &Requester) -> (usize, usize) {
        self.open(Kind::Mutating, who)
    }

    fn open(&self, kind: Kind, who: &Requester) -> (usize, usize) {
        let counts = self.lock();
        let mine = who
            .key()
            .and_then(|key| counts.per_user.get(&(kind, key)).copied())
            .unwrap_or(0);
        (counts.total.get(&kind).copied().unwrap_or(0), mine)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        if self.total
            && let Some(all) = counts.total.get_mut(&self.kind)
        {
            *all = all.saturating_sub(1);
        }
        if let Some(key) = self.key.take() {
            let entry = (self.kind, key);
            if let Some(mine) = counts.per_user.get_mut(&entry) {
                *mine = mine.saturating_sub(1);
                if *mine == 0 {
                    counts.per_user.remove(&entry);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn caps() -> Caps {
        Caps {
            watches_per_user: 2,
            watches: 3,
            mutating_per_user: 1,
            mutating: 2,
            read_only: 2,
        }
    }

    fn user(name: &str, groups: &[&str]) -> Requester {
        let user = User {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..User::default()
        };
        Requester::of(Some(&user), Some("10.0.0.9".parse().unwrap()))
    }

    #[test]
    fn watches_are_capped_per_user_and_in_all_and_come_back_on_drop() {
        let limits = Limits::new(caps(), Metrics::new());
        let (alice, bob) = (user("alice", &[]), user("bob", &[]));
        let first = limits.watch(&alice).unwrap();
        let _second = limits.watch(&alice).unwrap();
        let refused = limits.watch(&alice).unwrap_err();
        assert_eq!(refused.reason(), "watches-per-user");
        assert_eq!(refused.retry_after_seconds(), WATCH_RETRY_AFTER_SECONDS);
        let text = refused.to_string();
        assert!(
            text.contains("user \"alice\"") && text.contains("2 per user"),
            "{text}"
        );
        // Bob's own cap is untouched by Alice's.
        let _third = limits.watch(&bob).unwrap();
        let refused = limits.watch(&bob).unwrap_err();
        assert_eq!(refused, Refusal::Watches { limit: 3 });
        assert_eq!(limits.watches(&alice), (3, 2));
        drop(first);
        assert_eq!(limits.watches(&alice), (2, 1));
        let _again = limits.watch(&alice).unwrap();
    }

    #[test]
    fn the_same_user_from_two_addresses_shares_one_cap() {
        let limits = Limits::new(caps(), Metrics::new());
        let alice = User {
            name: "alice".to_owned(),
            ..User::default()
        };
        let here = Requester::of(Some(&alice), Some("10.0.0.1".parse().unwrap()));
        let there = Requester::of(Some(&alice), Some("10.0.0.2".parse().unwrap()));
        let _a = limits.watch(&here).unwrap();
        let _b = limits.watch(&there).unwrap();
        assert!(matches!(
            limits.watch(&here),
            Err(Refusal::WatchesPerUser { .. })
        ));
    }

    #[test]
    fn without_a_user_the_source_address_is_the_key() {
        let limits = Limits::new(caps(), Metrics::new());
        let a = Requester::of(None, Some("10.0.0.1".parse().unwrap()));
        let b = Requester::of(None, Some("10.0.0.2".parse().unwrap()));
        let _one = limits.watch(&a).unwrap();
        let _two = limits.watch(&a).unwrap();
        let text = limits.watch(&a).unwrap_err().to_string();
        assert!(text.contains("address 10.0.0.1"), "{text}");
        let _three = limits.watch(&b).unwrap();
        // Anonymous users too: each address is a client of its own.
        let anonymous = User::anonymous();
        let c = Requester::of(Some(&anonymous), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(c, Requester::Address("10.0.0.3".parse().unwrap()));
        // Without an address either, only the total counts.
        assert_eq!(
            limits.watch(&Requester::Unknown).unwrap_err(),
            Refusal::Watches { limit: 3 }
        );
    }

    #[test]
    fn masters_skip_per_user_caps_but_not_the_total_of_watches() {
        let limits = Limits::new(caps(), Metrics::new());
        let root = user("root", &["system:masters", "system:authenticated"]);
        let held: Vec<Permit> = (0..3).map(|_| limits.watch(&root).unwrap()).collect();
        assert_eq!(
            limits.watch(&root).unwrap_err(),
            Refusal::Watches { limit: 3 }
        );
        drop(held);
        // In-flight caps do not count them at all, as Kubernetes' max-in-flight.
        let held: Vec<Permit> = (0..10)
            .map(|_| limits.request(&root, true).unwrap())
            .collect();
        assert_eq!(limits.mutating(&root), (0, 0));
        let alice = user("alice", &[]);
        let _mine = limits.request(&alice, true).unwrap();
        drop(held);
    }

    #[test]
    fn mutating_requests_are_capped_per_user_and_in_all() {
        let limits = Limits::new(caps(), Metrics::new());
        let (alice, bob, carol) = (user("alice", &[]), user("bob", &[]), user("carol", &[]));
        let first = limits.request(&alice, true).unwrap();
        let refused = limits.request(&alice, true).unwrap_err();
        assert_eq!(refused.reason(), "mutating-inflight-per-user");
        assert_eq!(refused.retry_after_seconds(), INFLIGHT_RETRY_AFTER_SECONDS);
        // Reads are not mutating requests.
        let _read = limits.request(&alice, false).unwrap();
        let _bobs = limits.request(&bob, true).unwrap();
        assert_eq!(
            limits.request(&carol, true).unwrap_err(),
            Refusal::Mutating { limit: 2 }
        );
        drop(first);
        let _carols = limits.request(&carol, true).unwrap();
        assert_eq!(limits.mutating(&carol), (2, 1));
    }

    #[test]
    fn reads_are_capped_in_all_only() {
        let limits = Limits::new(caps(), Metrics::new());
        let alice = user("alice", &[]);
        let _a = limits.request(&alice, false).unwrap();
        let _b = limits.request(&alice, false).unwrap();
        let refused = limits.request(&user("bob", &[]), false).unwrap_err();
        assert_eq!(refused, Refusal::ReadOnly { limit: 2 });
        assert_eq!(refused.reason(), "readonly-inflight");
    }

    #[test]
    fn a_refusal_is_a_429_status_saying_when_to_retry() {
        let error = ApiError::from(Refusal::Mutating { limit: 5 });
        assert_eq!(error.code(), 429);
        assert_eq!(error.0.reason, "TooManyRequests");
        assert_eq!(
            error.0.details.as_ref().and_then(|d| d.retry_after_seconds),
            Some(INFLIGHT_RETRY_AFTER_SECONDS)
        );
    }
}
