//! Command line and environment configuration of `cellstack-router`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::{identify::TenantFrom, jwt::JwtConfig, upstream::Protocol};

/// The cellstack router: sends every tenant's requests to its cell from a locally cached
/// routing table, without asking the control plane on the request path.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Tenant traffic listener.
    #[arg(long, env = "CELLSTACK_ROUTER_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Serve the traffic port over TLS with this PEM certificate chain (with `--tls-key-file`;
    /// a `kubernetes.io/tls` Secret's `tls.crt`). Re-read every `--tls-poll-ms`: a changed pair
    /// is used for new connections. Without it the traffic port is plain HTTP (the local demo).
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// The PEM private key of `--tls-cert-file` (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// How often the certificate and key files are checked for a change, in milliseconds.
    #[arg(long, env = "CELLSTACK_ROUTER_TLS_POLL_MS", default_value_t = 5000)]
    pub tls_poll_ms: u64,

    /// Admin listener: /livez, /readyz, /status, /metrics.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_ADMIN_LISTEN",
        default_value = "0.0.0.0:9000"
    )]
    pub admin_listen: SocketAddr,

    /// Where the tenant id comes from. `jwt`: a claim of a verified bearer token (the
    /// `--jwt-*` flags); any tenant header the client sent is replaced. The others take the
    /// client's word and belong behind a proxy that authenticates clients: `header` (the
    /// `x-cellstack-tenant` header), `path-prefix` (`/<tenant>/...`) or `host-suffix:.<domain>`
    /// (`<tenant>.<domain>`). No default: which clients to trust is a decision to write down.
    #[arg(long, env = "CELLSTACK_ROUTER_TENANT_FROM")]
    pub tenant_from: TenantFrom,

    /// With `--tenant-from jwt`: the JSON Web Key Set file whose keys sign tokens (a mounted
    /// Secret). Re-read every `--jwt-jwks-poll-ms`; a changed file is put in force when it holds
    /// a usable key, else refused and the keys in force stay.
    #[arg(long, env = "CELLSTACK_ROUTER_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// With `--tenant-from jwt`: the audiences (`aud`) a token may name, comma-separated; at
    /// least one.
    #[arg(long, env = "CELLSTACK_ROUTER_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// With `--tenant-from jwt`: the issuers (`iss`) a token may name, comma-separated; none:
    /// any issuer whose key is in the set.
    #[arg(long, env = "CELLSTACK_ROUTER_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// With `--tenant-from jwt`: the claim that holds the tenant id.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_JWT_TENANT_CLAIM",
        default_value = "tenant"
    )]
    pub jwt_tenant_claim: String,

    /// With `--tenant-from jwt`: seconds of clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "CELLSTACK_ROUTER_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// With `--tenant-from jwt`: how often the JWKS file is checked for a change, in
    /// milliseconds.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_JWT_JWKS_POLL_MS",
        default_value_t = 5000
    )]
    pub jwt_jwks_poll_ms: u64,

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

    /// Speak TLS to lanes, verifying their certificates against the CAs of this PEM bundle (the
    /// operator's CA; during a rotation the bundle holds the old and the new one). Re-read every
    /// `--tls-poll-ms`. Without it lanes are reached in plain HTTP.
    #[arg(long, env = "CELLSTACK_ROUTER_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Present this PEM certificate chain (with `--upstream-client-key-file`) to lanes that ask
    /// for a client certificate: the release's `cellstack-router-client` Secret, which lanes
    /// reachable through node ports require (docs/security.md "Client certificates"). Re-read
    /// every `--tls-poll-ms`: a renewed pair is used for new connections.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_UPSTREAM_CLIENT_CERT_FILE",
        requires_all = ["upstream_client_key_file", "upstream_ca_file"]
    )]
    pub upstream_client_cert_file: Option<PathBuf>,

    /// The PEM private key of `--upstream-client-cert-file`.
    #[arg(
        long,
        env = "CELLSTACK_ROUTER_UPSTREAM_CLIENT_KEY_FILE",
        requires = "upstream_client_cert_file"
    )]
    pub upstream_client_key_file: Option<PathBuf>,

    /// Protocol spoken to lanes: `http1` (HTTP/1.1 keep-alive) or `h2` (HTTP/2: with prior
    /// knowledge in plain HTTP, by ALPN over TLS).
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

impl Config {
    /// The token checks of `--tenant-from jwt`, or `None` for another source. An error names
    /// what is missing; `--jwt-*` flags given with another source are refused too, since they
    /// would be silently ignored.
    pub fn jwt(&self) -> Result<Option<JwtConfig>, String> {
        if self.tenant_from != TenantFrom::Jwt {
            if self.jwt_jwks_file.is_some() || !self.jwt_audience.is_empty() {
                return Err(format!(
                    "--jwt-jwks-file and --jwt-audience apply to --tenant-from jwt, not {}",
                    self.tenant_from
                ));
            }
            return Ok(None);
        }
        let jwks_file = self
            .jwt_jwks_file
            .clone()
            .ok_or("--tenant-from jwt needs --jwt-jwks-file: the key set that signs the tokens")?;
        let audiences: Vec<String> = self
            .jwt_audience
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(
                "--tenant-from jwt needs --jwt-audience: the audience (aud) tokens for this router name".into(),
            );
        }
        if self.jwt_tenant_claim.trim().is_empty() {
            return Err("--jwt-tenant-claim must name a claim".into());
        }
        Ok(Some(JwtConfig {
            jwks_file,
            claim: self.jwt_tenant_claim.trim().to_owned(),
            audiences,
            issuers: self
                .jwt_issuer
                .iter()
                .map(|i| i.trim().to_owned())
                .filter(|i| !i.is_empty())
                .collect(),
            leeway: std::time::Duration::from_secs(self.jwt_leeway_secs),
        }))
    }
}
