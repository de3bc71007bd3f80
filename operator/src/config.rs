//! Command line and environment configuration of `cellstack-operator`.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

/// The cellstack operator: reconciles Cells into independent cell stacks.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Namespace the operator runs in: its Lease lives there, and cells admit the router and the
    /// operator from it.
    #[arg(long, env = "CELLSTACK_NAMESPACE", default_value = cellstack_api::routing::publication::DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Namespace whose pods (Prometheus) every cell's NetworkPolicy admits to its lanes' metrics
    /// port, and to nothing else. Empty: none.
    #[arg(
        long,
        env = "CELLSTACK_MONITORING_NAMESPACE",
        default_value = "monitoring"
    )]
    pub monitoring_namespace: String,

    /// Name of the Lease replicas elect a leader through; only the leader writes.
    #[arg(
        long,
        env = "CELLSTACK_LEASE_NAME",
        default_value = "cellstack-operator"
    )]
    pub lease_name: String,

    /// Identity of this replica in the Lease (default: the pod name from `HOSTNAME`, else a
    /// random one).
    #[arg(long, env = "CELLSTACK_IDENTITY")]
    pub identity: Option<String>,

    /// Seconds a leader holds the Lease without renewing it; a standby takes over after that.
    #[arg(long, env = "CELLSTACK_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,

    /// Only handle cellstack objects (Cells, TenantAssignments, pools, policies) matching this
    /// label selector, e.g. to run one operator per environment or per test; empty means all.
    #[arg(long, env = "CELLSTACK_SELECTOR", default_value = "")]
    pub selector: String,

    /// Image of the cell runtime with the reference tenant service, run by every lane of a cell
    /// that lists no services of its own.
    #[arg(
        long,
        env = "CELLSTACK_CELL_IMAGE",
        default_value = concat!("localhost/cellstack/cell:", env!("CARGO_PKG_VERSION"))
    )]
    pub cell_image: String,

    /// Image of the Redis the operator runs for a cell with a managed datastore.
    #[arg(
        long,
        env = "CELLSTACK_REDIS_IMAGE",
        default_value = "localhost/cellstack/redis:7.0.15"
    )]
    pub redis_image: String,

    /// Pull policy of the images the operator runs.
    #[arg(
        long,
        env = "CELLSTACK_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,

    /// Listener for `/metrics`, `/livez` and `/readyz`.
    #[arg(long, env = "CELLSTACK_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// Timeout of one Kubernetes API call, in seconds.
    #[arg(long, env = "CELLSTACK_API_TIMEOUT_SECS", default_value_t = 10)]
    pub api_timeout_secs: u64,

    /// Seconds between renewals of the routing heartbeat Lease (`cellstack-routing-heartbeat`),
    /// which tells routers their table is still current while nothing changes; routers report
    /// their table stale after `--table-stale-after` without one (default 6 renewals).
    #[arg(long, env = "CELLSTACK_ROUTING_HEARTBEAT_SECS", default_value_t = 10)]
    pub routing_heartbeat_secs: u64,

    /// How the routing table's chunk ConfigMaps store it: `zstd` (stored, and sent to every
    /// router, smaller: 1.8 times for random UUID-shaped tenant ids, about 40 times for
    /// sequential ones) or `none` (the encoded table as it is). Routers of releases before
    /// compression refuse a zstd table and keep serving the one they have: upgrade them first,
    /// or run `none` until they are.
    #[arg(
        long,
        env = "CELLSTACK_ROUTING_TABLE_COMPRESSION",
        default_value = "zstd"
    )]
    pub routing_table_compression: cellstack_api::routing::Compression,

    /// Cells reconciled at the same time.
    #[arg(long, env = "CELLSTACK_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// TenantAssignments reconciled at the same time. A reconcile mostly waits on the API
    /// server and the cell (placing 10k tenants is 10k status writes), so many go at once.
    #[arg(
        long,
        env = "CELLSTACK_TENANT_CONCURRENCY",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub tenant_concurrency: u16,

    /// Seconds between reconciles of a healthy cell or tenant (a resync that repairs drift
    /// nothing watched would report); tenants are swept in even shares over this period.
    #[arg(long, env = "CELLSTACK_RESYNC_SECS", default_value_t = 300)]
    pub resync_secs: u64,

    /// Longest time a moving tenant's writes may be paused (Fence to Flip), in milliseconds; a
    /// move that would pause them longer rolls back instead of stalling clients.
    #[arg(long, env = "CELLSTACK_MAX_WRITE_PAUSE_MS", default_value_t = 1000)]
    pub max_write_pause_ms: u64,

    /// Seconds a moved tenant's data is kept in its old cell after the flip, while requests
    /// already there finish.
    #[arg(long, env = "CELLSTACK_MOVE_GRACE_SECS", default_value_t = 10)]
    pub move_grace_secs: u64,

    /// Seconds before a rolled-back move to the same cell is tried again.
    #[arg(long, env = "CELLSTACK_MOVE_RETRY_SECS", default_value_t = 300)]
    pub move_retry_secs: u64,

    /// Tenants moved out of one draining cell at the same time.
    #[arg(long, env = "CELLSTACK_DRAIN_CONCURRENCY", default_value_t = 1)]
    pub drain_concurrency: u16,

    /// OTLP/HTTP endpoint (base URL, e.g. `http://otel-collector.monitoring:4318`) the cells'
    /// lanes export their spans to; unset: the lanes' traces are off. The operator's own traces
    /// follow its `OTEL_*` environment (docs/tracing.md).
    #[arg(long, env = "CELLSTACK_LANE_OTLP_ENDPOINT")]
    pub lane_otlp_endpoint: Option<String>,

    /// TLS inside the release (docs/security.md): the operator keeps a CA of its own in Secret
    /// `cellstack-internal-ca`, publishes its trust bundle in ConfigMap
    /// `cellstack-internal-ca-bundle` (both in `--namespace`), issues each cell a certificate its
    /// lanes serve both ports with, and calls the lanes' admin API over HTTPS only. Routers
    /// mount the bundle (`--upstream-ca-file`). Off: everything inside is plain HTTP.
    #[arg(long, env = "CELLSTACK_INTERNAL_TLS", default_value_t = false)]
    pub internal_tls: bool,

    /// Cells reachable from other clusters (docs/multicluster.md): every lane Service is also a
    /// `NodePort`, each Cell publishes `status.crossClusterEndpoints` (one `node:nodePort` per
    /// lane) and its NetworkPolicy admits the nodes' addresses on the lanes' tenant and admin
    /// ports. Off: lanes are reached only inside their cluster.
    /// Needs `--internal-tls` ([`Config::validate`]): the admin API's bearer token crosses
    /// clusters.
    #[arg(long, env = "CELLSTACK_MULTICLUSTER", default_value_t = false)]
    pub multicluster: bool,

    /// With `--multicluster`, which address of this cluster's nodes (`InternalIP` or
    /// `ExternalIP`) other clusters reach its lanes by; a member's own is its MemberCluster's
    /// `spec.network.nodeAddressType`.
    #[arg(
        long,
        env = "CELLSTACK_NODE_ADDRESS_TYPE",
        default_value = "InternalIP"
    )]
    pub node_address_type: cellstack_api::v1alpha1::NodeAddressType,

    /// With `--multicluster`, the address blocks (comma-separated CIDRs) other clusters'
    /// routers and operator reach the lanes' node ports from, as seen by the node they arrive
    /// at: their nodes' addresses, or their NAT gateways'. Admitted on the lanes' tenant and
    /// admin ports besides this cluster's own nodes (NetworkPolicy engines see the client's
    /// address when a node port delivers to a lane on the same node; docs/multicluster.md, D8).
    #[arg(long, env = "CELLSTACK_CROSS_CLUSTER_SOURCES", value_delimiter = ',')]
    pub cross_cluster_sources: Vec<ipnet::IpNet>,

    /// Seconds a changed trust bundle is given to reach every router's mounted copy before the
    /// CA it added starts issuing (kubelet's sync period plus its cache, plus the routers'
    /// re-read interval).
    #[arg(
        long,
        env = "CELLSTACK_INTERNAL_CA_PROPAGATION_SECS",
        default_value_t = 90
    )]
    pub internal_ca_propagation_secs: u64,

    /// Log as JSON lines.
    #[arg(long, env = "CELLSTACK_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

impl Config {
    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_secs.max(1))
    }

    /// Interval of the routing heartbeat (at least a second).
    pub fn routing_heartbeat(&self) -> Duration {
        Duration::from_secs(self.routing_heartbeat_secs.max(1))
    }

    /// The move state machine's knobs.
    pub fn moves(&self) -> crate::controllers::moves::Settings {
        crate::controllers::moves::Settings {
            max_pause: Duration::from_millis(self.max_write_pause_ms.max(1)),
            grace: Duration::from_secs(self.move_grace_secs),
            retry_after_rollback: Duration::from_secs(self.move_retry_secs),
        }
    }

    /// What flags cannot say on their own: refuses combinations that would run unsafely.
    pub fn validate(&self) -> Result<(), String> {
        if self.multicluster && !self.internal_tls {
            return Err("--multicluster needs --internal-tls: other clusters would reach the lanes' admin API, bearer token included, in clear text".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn multicluster_is_refused_without_internal_tls() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(
                std::iter::once("cellstack-operator").chain(args.iter().copied()),
            )
            .expect("parses")
        };
        let error = parse(&["--multicluster"]).validate().expect_err("refused");
        assert!(error.contains("--internal-tls"), "{error}");
        assert_eq!(
            parse(&["--multicluster", "--internal-tls"]).validate(),
            Ok(())
        );
        assert_eq!(parse(&[]).validate(), Ok(()));
    }
}
