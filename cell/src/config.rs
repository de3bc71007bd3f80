//! Command line and environment configuration of `cellstack-cell`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// The cellstack cell runtime: per-tenant admission and the reference tenant service.
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about,
    after_help = "Subcommand: `cellstack-cell datastore-init ...` writes the configuration of one \
                  pod of a cell's managed Redis (see `cellstack-cell datastore-init --help`)."
)]
pub struct Config {
    /// Name of the cell this process belongs to (reported in every answer).
    #[arg(long, env = "CELLSTACK_CELL", default_value = "local")]
    pub cell: String,

    /// Tenant API listener (what the router reaches).
    #[arg(long, env = "CELLSTACK_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Admin listener: health, metrics and the admin API (never exposed by the router).
    #[arg(long, env = "CELLSTACK_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// Metrics listener: `/metrics` and `/livez` only (the admin listener serves them too), for
    /// a monitoring namespace that must not reach the admin API. Same TLS as the admin listener.
    #[arg(long, env = "CELLSTACK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The cell's Redis. Not used when `--redis-sentinels` is set: the sentinels name it.
    #[arg(
        long,
        env = "CELLSTACK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Redis Sentinels (comma-separated `host:port`) that name the cell's primary. When set, the
    /// runtime resolves the primary through them, checks `ROLE` after connecting, and follows a
    /// failover by itself.
    #[arg(long, env = "CELLSTACK_REDIS_SENTINELS", value_delimiter = ',', value_parser = host_port)]
    pub redis_sentinels: Vec<(String, u16)>,

    /// The name the sentinels monitor the cell's primary under.
    #[arg(long, env = "CELLSTACK_REDIS_MASTER_NAME", default_value = "cellstack")]
    pub redis_master_name: String,

    /// File holding the password of the cell's Redis and of its sentinels (`AUTH`). Unset: no
    /// authentication.
    #[arg(long, env = "CELLSTACK_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// Replicas that must hold every tenant data write before it is acknowledged (`WAIT`). 0:
    /// a write is acknowledged once the primary applied it.
    #[arg(long, env = "CELLSTACK_REDIS_WRITE_ACKS", default_value_t = 0)]
    pub redis_write_acks: u32,

    /// How long a write waits for its replica acknowledgements, in milliseconds; fewer by then
    /// and the write is answered `503 not_durable`.
    #[arg(
        long,
        env = "CELLSTACK_REDIS_ACK_TIMEOUT_MS",
        default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub redis_ack_timeout_ms: u64,

    /// Timeout of one Redis call, in milliseconds.
    #[arg(long, env = "CELLSTACK_REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub redis_timeout_ms: u64,

    /// Most rate-limit checks sent to Redis in one script call: checks that arrive while calls
    /// are out wait and share the next one (crate::limit_batch); 1 sends each alone.
    #[arg(
        long,
        env = "CELLSTACK_LIMIT_BATCH_MAX",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub limit_batch_max: u32,

    /// Most rate-limit script calls out to Redis at once.
    #[arg(
        long,
        env = "CELLSTACK_LIMIT_CALLS_IN_FLIGHT",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub limit_calls_in_flight: u32,

    /// How long to keep trying to reach Redis at startup before giving up, in seconds; 0 (the
    /// default): as long as it takes. A lane often starts before its cell's Redis answers (a new
    /// cell's datastore can take a minute); it retries, answering `/livez` and failing
    /// `/readyz` meanwhile, instead of crash-looping.
    #[arg(long, env = "CELLSTACK_REDIS_CONNECT_WAIT_SECS", default_value_t = 0)]
    pub redis_connect_wait_secs: u64,

    /// How long Redis calls fail fast once the breaker opened before one probe, in milliseconds.
    #[arg(long, env = "CELLSTACK_BREAKER_COOLDOWN_MS", default_value_t = 1000)]
    pub breaker_cooldown_ms: u64,

    /// Tenants with their own series in `cellstack_cell_tenant_requests_total` (per lane);
    /// later ones are counted as `_other`. Each costs up to four series. 0: none.
    #[arg(
        long,
        env = "CELLSTACK_TENANT_METRICS_MAX",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(0..=100_000)
    )]
    pub tenant_metrics_max: u32,

    /// Consecutive failed Redis calls (timeouts, lost connections) that open the breaker, the
    /// first and the last of them sent at least `--breaker-min-span-ms` (and two call timeouts,
    /// `--redis-timeout-ms`) apart. More than one, and spread in time, so that one slow answer
    /// or one stall of the host (a stalled node, a GC pause: every call in flight times out
    /// together) does not fail every request of the lane for a whole cooldown; Redis that
    /// really hangs goes on failing the calls sent after those and opens it once they span
    /// that long.
    #[arg(
        long,
        env = "CELLSTACK_BREAKER_FAILURES",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub breaker_failures: u32,

    /// How long the breaker's consecutive failed calls must span (from the first sent to the
    /// last) before it opens, in milliseconds; at least two call timeouts are used whatever
    /// this says. 1 s: host stalls of several hundred milliseconds (a rollout starting pods on
    /// a busy node) time out the calls of one stretch without Redis being down, while Redis
    /// that is down costs each request one call timeout for 1 s before requests fail fast.
    #[arg(
        long,
        env = "CELLSTACK_BREAKER_MIN_SPAN_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(0..=60_000)
    )]
    pub breaker_min_span_ms: u64,

    /// The effective-policy file (JSON, written by the operator through a ConfigMap). Without
    /// one, no tenant is rate limited.
    #[arg(long, env = "CELLSTACK_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// How often the policy file is checked for changes, in milliseconds.
    #[arg(long, env = "CELLSTACK_POLICY_POLL_MS", default_value_t = 2000)]
    pub policy_poll_ms: u64,

    /// File holding the admin API bearer token (mounted from the cell's admin Secret).
    #[arg(long, env = "CELLSTACK_ADMIN_TOKEN_FILE")]
    pub admin_token_file: PathBuf,

    /// Serve both ports over TLS with this PEM certificate chain (with `--tls-key-file`; the
    /// cell's certificate from the operator's CA). Re-read every `--tls-poll-ms`: a renewed
    /// pair is used for new connections. Without it both ports are plain HTTP.
    #[arg(long, env = "CELLSTACK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The PEM private key of `--tls-cert-file`.
    #[arg(long, env = "CELLSTACK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How often the certificate and key files are checked for a change, in milliseconds.
    #[arg(long, env = "CELLSTACK_TLS_POLL_MS", default_value_t = 5000)]
    pub tls_poll_ms: u64,

    /// Ask clients for a certificate chaining to a CA of this PEM bundle (the release's internal
    /// CA: what the operator and the routers present; docs/security.md "Client certificates").
    /// The tenant port then refuses a handshake without one; the admin port completes it but
    /// answers every path except `/livez` and `/readyz` (the kubelet's probes) `401
    /// no_client_certificate`. The metrics port does not ask. Re-read every `--tls-poll-ms`.
    #[arg(long, env = "CELLSTACK_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,

    /// Largest request body of the tenant API, in bytes.
    #[arg(long, env = "CELLSTACK_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Starting adaptive concurrency limit.
    #[arg(long, env = "CELLSTACK_SHED_INITIAL_LIMIT", default_value_t = 64.0)]
    pub shed_initial_limit: f64,

    /// Ceiling of the adaptive concurrency limit.
    #[arg(long, env = "CELLSTACK_SHED_MAX_LIMIT", default_value_t = 1024.0)]
    pub shed_max_limit: f64,

    /// After SIGTERM: seconds to keep serving with readiness failing, so endpoints update first.
    #[arg(long, env = "CELLSTACK_DRAIN_DELAY_SECS", default_value_t = 5)]
    pub drain_delay_secs: u64,

    /// After the drain delay: seconds to let in-flight requests finish before exiting.
    #[arg(long, env = "CELLSTACK_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    /// Simulated backend (demos and load tests): requests it serves at full speed at once;
    /// beyond that they share it and slow down. 0 disables the simulation.
    #[arg(long, env = "CELLSTACK_SIMULATE_WORKERS", default_value_t = 0)]
    pub simulate_workers: usize,

    /// Simulated backend: milliseconds of work per request.
    #[arg(long, env = "CELLSTACK_SIMULATE_WORK_MS", default_value_t = 5)]
    pub simulate_work_ms: u64,

    /// Fault injection (rollout drills, chaos tests): the share of admitted tenant requests,
    /// from 0 to 1, answered `500 internal` before any work is done. 0 (the default) injects
    /// nothing.
    #[arg(long, env = "CELLSTACK_SIMULATE_FAILURE_RATIO", default_value_t = 0.0, value_parser = ratio)]
    pub simulate_failure_ratio: f64,

    /// Milliseconds a client may take to send a request's head, on both ports; a client
    /// slower than that (a slow-loris one) is disconnected.
    #[arg(
        long,
        env = "CELLSTACK_HEADER_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub header_read_timeout_ms: u64,

    /// Milliseconds a client may take to send a request's body, on both ports; past it the
    /// request fails with a 4xx and nothing is done.
    #[arg(long, env = "CELLSTACK_BODY_READ_TIMEOUT_MS", default_value_t = 60_000)]
    pub body_read_timeout_ms: u64,

    /// A service of the cell behind the runtime (repeat for each; the operator passes the
    /// Cell's `spec.services`): `name=<name>,port=<port>[,routes=/a|/b][,health=/healthz]
    /// [,timeout=<seconds>]`. With any, the tenant port is a gateway to them (docs/services.md)
    /// instead of the reference service.
    #[arg(long = "service", env = "CELLSTACK_SERVICES", value_delimiter = cellstack_api::services::SPEC_SEPARATOR)]
    pub services: Vec<crate::gateway::ServiceSpec>,

    /// Where to serve the tenant state API for the cell's services; loopback addresses only
    /// (it trusts the tenant its callers name). Off unless given.
    #[arg(long, env = "CELLSTACK_STATE_LISTEN", value_parser = loopback)]
    pub state_listen: Option<SocketAddr>,

    /// Largest request body forwarded to a service, in bytes.
    #[arg(long, env = "CELLSTACK_SERVICE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub service_max_body_bytes: usize,

    /// Largest answer body read from a service, in bytes; a larger one is a 502.
    #[arg(long, env = "CELLSTACK_SERVICE_MAX_ANSWER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub service_max_answer_bytes: usize,

    /// Log as JSON lines.
    #[arg(long, env = "CELLSTACK_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

/// A share from 0 to 1.
fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number; give a share from 0 to 1, such as 0.3"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is outside 0..=1; give a share, such as 0.3 for 30 %"
        ))
    }
}

/// A loopback `address:port`.
fn loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("'{s}' is not address:port, such as 127.0.0.1:7070"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: the state API trusts the tenant its callers name, so only the pod's own containers may reach it; use 127.0.0.1:{}",
            addr.port()
        ))
    }
}

/// A `host:port` address.
pub fn host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not host:port, such as redis-0.redis:26379"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{port}' in '{s}' is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("'{s}' has no host; give host:port"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["cellstack-cell", "--admin-token-file", "/dev/null"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    #[test]
    fn sentinels_parse_as_a_comma_separated_host_port_list() {
        let c = parse(&["--redis-sentinels", "redis-0.redis:26379,10.0.0.7:26380"]).unwrap();
        assert_eq!(
            c.redis_sentinels,
            vec![
                ("redis-0.redis".to_owned(), 26379),
                ("10.0.0.7".to_owned(), 26380)
            ]
        );
        assert_eq!(c.redis_master_name, "cellstack");
        assert_eq!((c.redis_write_acks, c.redis_ack_timeout_ms), (0, 500));
        assert!(parse(&["--redis-sentinels", "redis-0.redis"]).is_err());
        assert!(parse(&["--redis-sentinels", "redis-0:x"]).is_err());
        assert!(parse(&["--redis-ack-timeout-ms", "0"]).is_err());
        assert!(parse(&[]).unwrap().redis_sentinels.is_empty());
    }

    #[test]
    fn the_state_api_listens_on_loopback_only_and_services_parse() {
        let c = parse(&[
            "--state-listen",
            "127.0.0.1:7070",
            "--service",
            "name=orders,port=8081,routes=/orders",
            "--service",
            "name=rest,port=8082",
        ])
        .unwrap();
        assert_eq!(c.state_listen, Some("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(c.services.len(), 2);
        let err = parse(&["--state-listen", "0.0.0.0:7070"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(parse(&["--service", "name=orders"]).is_err());
    }
}
