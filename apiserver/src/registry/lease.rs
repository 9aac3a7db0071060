//! Leases: heartbeats and leader election.

use api_types::Lease;

use super::{Column, Typed, field};

/// The Lease strategy.
pub fn strategy() -> Typed<Lease> {
    Typed::new(vec![Column {
        name: "Holder",
        kind: "string",
        description: "Who holds the lease",
        priority: 0,
        cell: |o| field(o, "spec.holderIdentity"),
    }])
}
