//! Command line and environment configuration of `cellstack-router`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::{identify::TenantFrom, upstream::Protocol};

/// The cellstack router: sends every tenant's requests to its cell from a locally cached
/// routing table, without asking the control plane on the request path.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Tenant traffic listener.
    #[arg(long, env = "CELLSTACK_ROUTER_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Admin listener: /livez, /readyz, /status, /metrics.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_ADMIN_LISTEN",
        default_value = "0.0.0.0:9000"
    )]
    pub admin_listen: SocketAddr,

    /// Where the tenant id comes from: `header`, `path-prefix` or `host-suffix:.<domain>`.
    #[arg(long, env = "CELLSTACK_ROUTER_TENANT_FROM", default_value = "header")]
    pub tenant_from: TenantFrom,

    /// An encoded routing table file to serve (outside Kubernetes, and tests); re-read when it
    /// changes.
    #[arg(long, env = "CELLSTACK_ROUTER_TABLE_FILE")]
    pub table_file: Option<PathBuf>,

    /// How often the table file is checked, in milliseconds.
    #[arg(long, env = "CELLSTACK_ROUTER_TABLE_POLL_MS", default_value_t = 1000)]
    pub table_poll_ms: u64,

    /// Watch the routing table the operator publishes in Kubernetes (in-cluster config, or
    /// KUBECONFIG).
    #[arg(long, env = "CELLSTACK_ROUTER_KUBERNETES", default_value_t = false)]
    pub kubernetes: bool,

    /// Namespace the operator publishes the routing table in.
    #[arg(long, env = "CELLSTACK_ROUTER_NAMESPACE", default_value = cellstack_api::routing::publication::DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Seconds without a confirmation that the table is current (an operator heartbeat naming
    /// its version, a new table, or the table file read again) after which the router reports
    /// its table stale: `/status` `stale`, `cellstack_router_table_stale` 1, a WARN log. It
    /// keeps serving the table all the same. The operator renews its heartbeat every 10 s by
    /// default: 60 s is six missed renewals.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_TABLE_STALE_AFTER_SECS",
        default_value_t = 60
    )]
    pub table_stale_after: u64,

    /// The last-known-good copy of the table, loaded first at start.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_LKG",
        default_value = "/var/lib/cellstack-router/routing-table.bin"
    )]
    pub last_known_good: PathBuf,

    /// Timeout of one try against a lane, in milliseconds.
    #[arg(long, env = "CELLSTACK_ROUTER_TRY_TIMEOUT_MS", default_value_t = 2000)]
    pub try_timeout_ms: u64,

    /// Overall deadline of a request, retries included, in milliseconds.
    #[arg(long, env = "CELLSTACK_ROUTER_DEADLINE_MS", default_value_t = 5000)]
    pub deadline_ms: u64,

    /// Most requests in flight; beyond it the router answers 503 at once.
    #[arg(long, env = "CELLSTACK_ROUTER_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,

    /// Most open connections from one client address on the traffic port; a connection past it
    /// is closed at once (counted in `cellstack_router_connections_refused_total`). 0: no bound.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 256
    )]
    pub max_connections_per_client: usize,

    /// Milliseconds a client may take to send a request's head, on both ports; a client
    /// slower than that (a slow-loris one) is disconnected.
    #[arg(
        long,
        env = "CELLSTACK_HEADER_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub header_read_timeout_ms: u64,

    /// After SIGTERM: seconds to keep serving with readiness failing.
    #[arg(long, env = "CELLSTACK_ROUTER_DRAIN_DELAY_SECS", default_value_t = 5)]
    pub drain_delay_secs: u64,

    /// Then: seconds for in-flight requests to finish.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 20
    )]
    pub shutdown_timeout_secs: u64,

    /// Protocol spoken to lanes: `http1` (HTTP/1.1 keep-alive) or `h2` (HTTP/2 with prior
    /// knowledge, h2c).
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_UPSTREAM_PROTOCOL",
        value_enum,
        default_value_t = Protocol::Http1
    )]
    pub upstream_protocol: Protocol,

    /// Event loops serving tenant traffic, each a thread owning its connections; 0: one per
    /// core (the CPUs this process may use, cgroup quota included).
    #[arg(long, env = "CELLSTACK_ROUTER_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log as JSON lines.
    #[arg(long, env = "CELLSTACK_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}
