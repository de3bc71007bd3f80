//! How a routing table is stored as Kubernetes objects: the names and keys the operator writes
//! and the router reads.
//!
//! Every version is a set of immutable ConfigMaps, one per chunk, named after the version; one
//! small pointer ConfigMap holds the [`super::Manifest`] of the current version and is switched
//! last, so a reader that follows the pointer sees a whole table or the previous one, never half.

/// Namespace the operator publishes into, unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "cellstack-system";

/// Name of the pointer ConfigMap.
pub const POINTER_NAME: &str = "cellstack-routing-table";

/// Name of the `coordination.k8s.io/v1` Lease the leading operator renews at a fixed interval,
/// changed or not, so a router can tell a quiet control plane from a dead one: each renewal
/// whose [`HEARTBEAT_VERSION_ANNOTATION`] is not above the version a router serves confirms that
/// its table is still current. Distinct from the leader-election Lease, and from the table
/// objects (which are only written when the table changes).
pub const HEARTBEAT_NAME: &str = "cellstack-routing-heartbeat";

/// Annotation of the heartbeat Lease: the routing-table version the operator has published and
/// believes current (decimal).
pub const HEARTBEAT_VERSION_ANNOTATION: &str = "cellstack.dev/published-table-version";

/// Key of the manifest JSON in the pointer ConfigMap's `data`.
pub const POINTER_KEY: &str = "manifest.json";

/// Key of the chunk bytes in a chunk ConfigMap's `binaryData`.
pub const CHUNK_KEY: &str = "chunk";

/// Label carrying the table version on every chunk object.
pub const VERSION_LABEL: &str = "cellstack.dev/routing-table-version";

/// Label marking objects that belong to the routing table.
pub const COMPONENT_LABEL: &str = "cellstack.dev/component";
pub const COMPONENT_VALUE: &str = "routing-table";

/// Largest chunk written. A ConfigMap holds at most 1 MiB of data; this leaves room for the
/// object's metadata.
pub const CHUNK_BUDGET_BYTES: usize = 900 * 1024;

/// Name of chunk `index` of table `version`.
pub fn chunk_name(version: u64, index: u32) -> String {
    format!("{POINTER_NAME}-v{version}-{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_are_valid_object_names_and_distinct_per_version() {
        let name = chunk_name(u64::MAX, u32::MAX);
        assert!(name.len() <= 253);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(chunk_name(1, 11), chunk_name(11, 1));
    }
}
