//! Command line and environment configuration of `cellstack-cell`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// The cellstack cell runtime: per-tenant admission and the reference tenant service.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
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

    /// The cell's Redis.
    #[arg(
        long,
        env = "CELLSTACK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Timeout of one Redis call, in milliseconds.
    #[arg(long, env = "CELLSTACK_REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub redis_timeout_ms: u64,

    /// How long to keep trying to reach Redis at startup before giving up, in seconds. A lane
    /// often starts before its cell's Redis answers; it retries instead of crash-looping.
    #[arg(long, env = "CELLSTACK_REDIS_CONNECT_WAIT_SECS", default_value_t = 20)]
    pub redis_connect_wait_secs: u64,

    /// How long Redis calls fail fast after a failure before one probe, in milliseconds.
    #[arg(long, env = "CELLSTACK_BREAKER_COOLDOWN_MS", default_value_t = 1000)]
    pub breaker_cooldown_ms: u64,

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
