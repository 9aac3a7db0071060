//! The Lease kind: a named, expiring claim, used for leader election and node heartbeats.

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, is_default};
use crate::resource::{impl_resource, impl_spec_kind};

/// A Lease. Namespaced, no status: holders write the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct Lease {
    /// `loom.dev/v1`.
    pub api_version: String,
    /// `Lease`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// Who holds it and until when.
    #[serde(skip_serializing_if = "is_default")]
    pub spec: LeaseSpec,
}

impl_resource!(
    Lease,
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    short_names: [],
    namespaced: true,
    has_status: false,
);
impl_spec_kind!(Lease, LeaseSpec, no_status);

/// Who holds a lease and until when.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(deny_unknown_fields)]
pub struct LeaseSpec {
    /// The holder's identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// How long the lease lasts after `renewTime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i32>,
    /// When the current holder acquired it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<DateTime<Utc>>,
    /// When the current holder last renewed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<DateTime<Utc>>,
    /// How many times it changed hands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i32>,
}

impl LeaseSpec {
    /// When the lease runs out: `renewTime + leaseDurationSeconds` (or `acquireTime` if never renewed).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        let since = self.renew_time.or(self.acquire_time)?;
        let duration = Duration::try_seconds(i64::from(self.lease_duration_seconds?))?;
        since.checked_add_signed(duration)
    }

    /// Whether the lease has a holder and has not run out at `now`.
    pub fn is_held_at(&self, now: DateTime<Utc>) -> bool {
        self.holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty())
            && self.expires_at().is_some_and(|t| now < t)
    }
}
