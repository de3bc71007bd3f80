//! The operator's errors: one variant per failing step, each naming the object, and whether
//! retrying can help.

use std::time::Duration;

/// What went wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field the API server always sets.
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),

    /// The spec cannot be built into what it asks for; only a change to it can help.
    #[error("invalid spec of {kind} {name}: {reason}")]
    InvalidSpec {
        kind: &'static str,
        name: String,
        reason: String,
    },

    /// A rollout selects more cells than its status can list; only a narrower selector helps.
    #[error(
        "rollout {rollout} selects {cells} cells; one rollout covers at most {max}: split it into rollouts with narrower cell selectors"
    )]
    RolloutTooLarge {
        rollout: String,
        cells: usize,
        max: usize,
    },

    /// The object could not be read as the operator's version of its kind.
    #[error("{kind} {name} cannot be read by this operator version: {reason}")]
    Unreadable {
        kind: String,
        name: String,
        reason: String,
    },

    /// A routing table could not be encoded or split into chunks (no object's spec is at fault:
    /// the table is built from all of them).
    #[error("cannot encode routing table version {version}: {reason}")]
    RoutingTable { version: u64, reason: String },

    /// A Kubernetes API call failed.
    #[error("failed to {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// A Kubernetes API call did not answer in time.
    #[error("timed out after {timeout:?} trying to {action}")]
    Timeout { action: String, timeout: Duration },

    /// A cell's external Redis Secret is missing or incomplete.
    #[error("external datastore of cell {cell}: {reason}")]
    ExternalSecret { cell: String, reason: String },

    /// A cell's namespace in a member cluster exists and is not the cell's (docs/multicluster.md,
    /// "Objects in a member"): the operator neither applies into it nor deletes it. Retried with
    /// backoff: removing or relabelling the namespace in the member is what helps, not a change
    /// of the Cell.
    #[error(
        "namespace {namespace} in member cluster {cluster} is not cell {cell}'s (uid {uid}): {holder}; it is neither adopted nor deleted: if it is left over, delete it in {cluster}, or label it {label}={uid} to hand it to this cell",
        label = crate::names::CELL_UID_LABEL
    )]
    NamespaceOwnedElsewhere {
        cell: String,
        uid: String,
        namespace: String,
        cluster: String,
        /// Who holds it, as a sentence ([`Holder::describe`](crate::logic::cell::ownership::Holder::describe)).
        holder: String,
    },

    /// A cell's member cluster cannot be acted in now (it does not answer, has no usable
    /// credentials, or does not exist): nothing is done there until it can.
    #[error("cell {cell} runs in member cluster {member}, which cannot be reached now: {why}")]
    MemberUnavailable {
        cell: String,
        member: String,
        why: String,
    },

    /// A cell still holds tenants and so cannot be deleted yet.
    #[error("cell {cell} still holds {count} tenant(s) ({names}); drain it before deleting it")]
    DeletionBlocked {
        cell: String,
        count: usize,
        names: String,
    },

    /// Encoding a desired object failed.
    #[error("failed to encode {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// A call to a cell's admin API failed (every lane was tried).
    #[error("cell {cell}: {action}: {reason}")]
    CellAdmin {
        cell: String,
        action: String,
        reason: String,
    },

    /// A cell's admin API refused a call (4xx): retrying the same call will not help.
    #[error("cell {cell}: {action}: refused with {status}: {reason}")]
    CellAdminRefused {
        cell: String,
        action: String,
        status: u16,
        reason: String,
    },

    /// The internal CA cannot be read, made or used (docs/security.md).
    #[error("internal CA: {reason}")]
    InternalCa { reason: String },

    /// Adding or removing a finalizer failed.
    #[error("finalizer of {kind} {name}: {message}")]
    Finalizer {
        kind: &'static str,
        name: String,
        message: String,
    },

    /// A deleted MemberCluster is still named by Cells, and so is kept.
    #[error(
        "member cluster {member} still runs cells ({cells}); delete them first (a cell whose member is gone for good can be annotated cellstack.dev/abandon-stack=true), then the member goes"
    )]
    MemberInUse { member: String, cells: String },
}

impl Error {
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source: Box::new(source),
        }
    }

    /// Errors only a change of the object can fix: the controller waits for that change
    /// instead of retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec { .. } | Self::Unreadable { .. } | Self::RolloutTooLarge { .. } => {
                true
            }
            // The API server refused what we built from the spec (422: invalid, e.g. a
            // StatefulSet field that cannot change): retrying the same spec cannot succeed.
            Self::Kube { source, .. } => {
                matches!(source.as_ref(), kube::Error::Api(status) if status.code == 422)
            }
            _ => false,
        }
    }

    /// Every value [`Error::metric_label`] gives.
    pub const METRIC_LABELS: [&str; 16] = [
        "missing_object_key",
        "invalid_spec",
        "rollout_too_large",
        "unreadable",
        "routing_table",
        "kube_api",
        "timeout",
        "external_secret",
        "namespace_owned_elsewhere",
        "member_unavailable",
        "deletion_blocked",
        "encode",
        "finalizer",
        "member_in_use",
        "cell_admin",
        "internal_ca",
    ];

    /// Short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::RolloutTooLarge { .. } => "rollout_too_large",
            Self::Unreadable { .. } => "unreadable",
            Self::RoutingTable { .. } => "routing_table",
            Self::Kube { .. } => "kube_api",
            Self::Timeout { .. } => "timeout",
            Self::ExternalSecret { .. } => "external_secret",
            Self::NamespaceOwnedElsewhere { .. } => "namespace_owned_elsewhere",
            Self::MemberUnavailable { .. } => "member_unavailable",
            Self::DeletionBlocked { .. } => "deletion_blocked",
            Self::Encode { .. } => "encode",
            Self::Finalizer { .. } => "finalizer",
            Self::MemberInUse { .. } => "member_in_use",
            Self::CellAdmin { .. } | Self::CellAdminRefused { .. } => "cell_admin",
            Self::InternalCa { .. } => "internal_ca",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_label_is_listed_for_zero_initialisation() {
        let text = || String::from("x");
        let all = [
            Error::MissingObjectKey("metadata.name"),
            Error::InvalidSpec {
                kind: "Cell",
                name: text(),
                reason: text(),
            },
            Error::RolloutTooLarge {
                rollout: text(),
                cells: 2,
                max: 1,
            },
            Error::Unreadable {
                kind: text(),
                name: text(),
                reason: text(),
            },
            Error::RoutingTable {
                version: 1,
                reason: text(),
            },
            Error::kube("get", kube::Error::Service(text().into())),
            Error::Timeout {
                action: text(),
                timeout: Duration::from_secs(1),
            },
            Error::ExternalSecret {
                cell: text(),
                reason: text(),
            },
            Error::NamespaceOwnedElsewhere {
                cell: text(),
                uid: text(),
                namespace: text(),
                cluster: text(),
                holder: text(),
            },
            Error::MemberUnavailable {
                cell: text(),
                member: text(),
                why: text(),
            },
            Error::DeletionBlocked {
                cell: text(),
                count: 1,
                names: text(),
            },
            Error::Encode {
                what: text(),
                source: serde_json::from_str::<u8>("").unwrap_err(),
            },
            Error::CellAdmin {
                cell: text(),
                action: text(),
                reason: text(),
            },
            Error::Finalizer {
                kind: "Cell",
                name: text(),
                message: text(),
            },
            Error::MemberInUse {
                member: text(),
                cells: text(),
            },
            Error::InternalCa { reason: text() },
        ];
        let labels: std::collections::BTreeSet<&str> =
            all.iter().map(Error::metric_label).collect();
        let listed: std::collections::BTreeSet<&str> = Error::METRIC_LABELS.into_iter().collect();
        assert_eq!(labels, listed);
    }
}
