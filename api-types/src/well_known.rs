//! Well-known names: the labels, annotations, taints, namespaces, leases, finalizers
//! and task reasons that more than one part of Loom writes or reads.
//!
//! These are contracts between the parts (and with users' own controllers and
//! scripts): a label the Job controller writes is one the scheduler spreads by and
//! `loomctl` selects on. Every crate uses these constants; none spells the strings
//! itself.
//!
//! ```
//! use api_types::well_known;
//!
//! let selector = format!("{}=train", well_known::LABEL_JOB);
//! assert_eq!(selector, "loom.dev/job=train");
//! ```

// The node attribute labels and the namespaces live beside their kinds; they are
// named here too so that this module is the one list.
pub use crate::kinds::namespace::{DEFAULT_NAMESPACE, SYSTEM_NAMESPACE};
pub use crate::kinds::node::{
    LABEL_ALLOW_HOST_PATHS, LABEL_ALLOW_RAW_EXEC, LABEL_ARCH, LABEL_HOSTNAME, LABEL_KERNEL,
    LABEL_OS,
};

// Labels on tasks.

/// The label carrying the name of a task's Job (the scheduler spreads by it).
pub const LABEL_JOB: &str = "loom.dev/job";
/// The label carrying a Job task's index.
pub const LABEL_JOB_INDEX: &str = "loom.dev/job-index";
/// The label carrying which attempt at its index a Job task is (0 for the first).
pub const LABEL_ATTEMPT: &str = "loom.dev/attempt";
/// The label carrying the name of a task's Service (the scheduler spreads by it).
pub const LABEL_SERVICE: &str = "loom.dev/service";
/// The label carrying the hash of the Service template a task was made from.
pub const LABEL_TEMPLATE_HASH: &str = "loom.dev/template-hash";

// Annotations and taints on nodes.

/// The node annotation in which schedulers record recent placements (claims)
/// before they bind, so that two schedulers binding to one node serialize there.
pub const ANNOTATION_CLAIMS: &str = "loom.dev/claims";
/// The taint (effect `NoExecute`) the node lifecycle controller puts on a node
/// whose Lease stopped being renewed.
pub const TAINT_UNREACHABLE: &str = "loom.dev/unreachable";

// Namespaces and leases.

/// The namespace nodelets keep their heartbeat Leases in (one named after each node).
pub const NODE_LEASE_NAMESPACE: &str = "loom-node-lease";
/// The leader-election Lease (in [`SYSTEM_NAMESPACE`]) of the controller-managers.
pub const LEASE_CONTROLLERS: &str = "loom-controllers";
/// The leader-election Lease (in [`SYSTEM_NAMESPACE`]) of the schedulers.
pub const LEASE_SCHEDULER: &str = "loom-scheduler";

// Finalizers (as in Kubernetes, without a domain).

/// The finalizer a Foreground delete puts on the owner: the garbage collector
/// removes it once the owner's dependents are gone.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";
/// The finalizer an Orphan delete puts on the owner: the garbage collector
/// removes the owner's references from its dependents, then the finalizer.
pub const FINALIZER_ORPHAN: &str = "orphan";

// Task status reasons that one part writes and another acts on.

/// A task Killed because a higher-priority task needed its place (written by the
/// scheduler; the Job controller replaces the task).
pub const REASON_PREEMPTED: &str = "Preempted";
/// A task Killed because it ran past its `timeLimitSeconds` (written by the
/// nodelet; the Job controller fails the job).
pub const REASON_TIME_LIMIT_EXCEEDED: &str = "TimeLimitExceeded";
/// A task Lost because its node stopped renewing its Lease (written by the node
/// lifecycle controller; owners replace the task).
pub const REASON_NODE_LOST: &str = "NodeLost";
/// A run whose shim died without recording its end (the node crashed, or the
/// shim was killed): written by the nodelet, which restarts the task in place
/// when its restart policy allows and otherwise marks it Lost (owners replace
/// it without counting a failure).
pub const REASON_SHIM_LOST: &str = "ShimLost";
/// A task Killed by its own node because the node could not renew its Lease
/// for longer than the lease's duration (fencing: the control plane may have
/// replaced it elsewhere). Written by the nodelet; owners replace the task
/// without counting a failure.
pub const REASON_NODE_FENCED: &str = "NodeFenced";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{is_dns1123_label, is_label_key};

    #[test]
    fn keys_are_label_keys_and_names_are_dns_labels() {
        for key in [
            LABEL_JOB,
            LABEL_JOB_INDEX,
            LABEL_ATTEMPT,
            LABEL_SERVICE,
            LABEL_TEMPLATE_HASH,
            LABEL_ARCH,
            LABEL_OS,
            LABEL_KERNEL,
            LABEL_HOSTNAME,
            LABEL_ALLOW_RAW_EXEC,
            LABEL_ALLOW_HOST_PATHS,
            ANNOTATION_CLAIMS,
            TAINT_UNREACHABLE,
        ] {
            assert!(is_label_key(key).is_empty(), "{key}");
        }
        for name in [NODE_LEASE_NAMESPACE, LEASE_CONTROLLERS, LEASE_SCHEDULER] {
            assert!(is_dns1123_label(name).is_empty(), "{name}");
        }
    }
}
