//! The cell's Redis: tenant records, tenant data, limiter state, and the export/import used by
//! moves. Every call has a timeout and goes through the breaker, so a slow or dead Redis costs
//! one timeout, not one per request.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use cellstack_api::{
    admin::{self, Entry, ExportPage, TenantRecord, TenantState, Value},
    keys::{DATASTORE_CONFIRMED_KEY, DATASTORE_CONFIRMING_KEY, ItemName, KeyKind, TenantKeys},
    policy::EffectiveLimit,
    tenant::TenantId,
    v1alpha1::Algorithm,
};
use redis::{
    AsyncCommands, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline,
    aio::{ConnectionManager, ConnectionManagerConfig},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use tracing::Instrument;

use crate::{breaker::Breaker, metrics::Metrics, scripts};

/// Connections to the primary each write that waits for replica acknowledgements goes through
/// (round robin). `WAIT` blocks the connection it runs on until the replicas answer, so writes
/// that wait never share a connection with reads, and a few of them let concurrent writes wait
/// together.
const DURABLE_CONNECTIONS: usize = 4;
/// Longest a connection to a (newly named) primary may take, `ROLE` check included.
const CONNECT_BUDGET: Duration = Duration::from_secs(5);
/// Longest one ask of the sentinels may take (each sentinel and the primary it names have the
/// redis crate's own 1 s connect / 500 ms answer timeouts inside it).
const RESOLVE_BUDGET: Duration = Duration::from_secs(5);
/// How long one round of following a failover keeps asking the sentinels before it gives up
/// (the next failing call starts another).
const FOLLOW_FOR: Duration = Duration::from_secs(60);
/// Delay between asks while following: doubling from the first to the last, jittered.
const FOLLOW_DELAYS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// A `+switch-master` listener pings its sentinel this often, and reconnects when a ping is not
/// answered within [`LISTEN_PING_TIMEOUT`] (a sentinel whose pod is gone never closes the
/// connection).
const LISTEN_PING_EVERY: Duration = Duration::from_secs(5);
const LISTEN_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Delay before a listener connects to its sentinel again: doubling from the first to the last,
/// jittered; back to the first once subscribed.
const LISTEN_DELAYS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));
/// The channel on which a sentinel announces a failover: `<name> <old host> <old port> <new
/// host> <new port>`.
const SWITCH_CHANNEL: &str = "+switch-master";
/// After a round that found the primary unchanged, further triggers within this time are
/// ignored (a primary refusing writes for lack of replicas must not cost a sentinel ask per
/// request).
const FOLLOW_QUIET: Duration = Duration::from_secs(1);

/// Field of the tenant's meta hash holding the version of its policy override (read with the
/// tenant's state on every request).
const META_POLICY_VERSION: &str = "policyVersion";
/// Field of the tenant's meta hash holding its policy override (JSON).
const META_POLICY: &str = "policy";

/// The fields of a tenant's meta hash a request reads, in this order; the admin API's record
/// reads [`META_MARKER`] too (no request needs the data marker).
const META_REQUEST_FIELDS: [&str; 5] =
    ["state", "epoch", "movedTo", "tracking", META_POLICY_VERSION];
/// Field of the tenant's meta hash holding its data marker.
const META_MARKER: &str = "marker";

/// A tenant's record from the fields of its meta hash; none without a state.
fn parse_record(
    keys: &TenantKeys,
    state: Option<String>,
    epoch: Option<String>,
    moved_to: Option<String>,
    tracking: Option<String>,
    marker: Option<String>,
) -> Result<Option<TenantRecord>, StoreError> {
    let bad = |reason: String| StoreError::BadEntry {
        key: keys.meta(),
        reason,
    };
    let state = match state.as_deref() {
        None => return Ok(None),
        Some("active") => TenantState::Active,
        Some("fenced") => TenantState::Fenced,
        Some("moved") => TenantState::Moved,
        Some("importing") => TenantState::Importing,
        Some("lost") => TenantState::Lost,
        Some(other) => return Err(bad(format!("unknown tenant state {other:?}"))),
    };
    let epoch = match epoch {
        None => 0,
        Some(e) => e
            .parse()
            .map_err(|_| bad(format!("epoch {e:?} is not a number")))?,
    };
    Ok(Some(TenantRecord {
        state,
        epoch,
        moved_to,
        tracking: tracking.as_deref() == Some("1"),
        marker,
    }))
}

/// Stores a policy override in an existing tenant record, version and value in one step.
/// KEYS: meta. ARGV: version, override (JSON). Returns 1, or 0 when the tenant has no record.
static SET_POLICY_OVERRIDE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'policyVersion', ARGV[1], 'policy', ARGV[2])
return 1
"#,
    )
});

/// Why a Redis call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is unavailable (breaker open after recent failures)")]
    BreakerOpen,
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("key {key} has type {kind}, which tenant export does not support")]
    UnsupportedType { key: String, kind: String },
    #[error("invalid export cursor {0:?}")]
    BadCursor(String),
    #[error("invalid entry {key}: {reason}")]
    BadEntry { key: String, reason: String },
    #[error(
        "the tenant is {state:?}, not importing: imports go only into a tenant created in importing state"
    )]
    NotImporting { state: String },
    #[error(
        "the write is not acknowledged: {acked} of the {wanted} replica acknowledgements required arrived within {timeout:?}; it may have been applied on the primary only"
    )]
    NotDurable {
        acked: u32,
        wanted: u32,
        timeout: Duration,
    },
    #[error(
        "the primary refused the write for lack of replicas in sync (NOREPLICAS): nothing was written"
    )]
    NoReplicas,
    #[error("redis answered something unexpected: {0}")]
    BadReply(String),
    #[error(
        "the datastore changed while its records were checked (it was emptied, its primary moved, or another confirmation started): nothing was confirmed; retry"
    )]
    ConfirmationLost,
}

impl StoreError {
    /// True for the answers that say a write lacks replica acknowledgements.
    pub fn is_not_durable(&self) -> bool {
        matches!(self, Self::NotDurable { .. } | Self::NoReplicas)
    }
}

/// Where the cell's Redis primary is.
#[derive(Debug, Clone)]
pub enum Target {
    /// One fixed address.
    Url(String),
    /// Whatever the sentinels name under `master_name`.
    Sentinels {
        sentinels: Vec<(String, u16)>,
        master_name: String,
    },
}

/// How the store reaches Redis and what a write waits for.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub target: Target,
    /// `AUTH` password of Redis and of the sentinels.
    pub password: Option<String>,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Replicas that must acknowledge every write (`WAIT`); 0: none.
    pub write_acks: u32,
    /// How long a write waits for them.
    pub ack_timeout: Duration,
}

impl StoreOptions {
    /// A fixed Redis, no password, writes acknowledged once the primary applied them.
    pub fn url(url: &str, timeout: Duration) -> Self {
        Self {
            target: Target::Url(url.to_owned()),
            password: None,
            timeout,
            write_acks: 0,
            ack_timeout: Duration::from_millis(500),
        }
    }
}

/// The connections to the primary in use.
struct Conns {
    /// `host:port` of the primary.
    address: String,
    /// Reads, the limiter and writes that do not wait.
    main: ConnectionManager,
    /// Writes that wait for replica acknowledgements (empty when none are required).
    durable: Vec<ConnectionManager>,
}

/// Result of a data write.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Ok(String),
    Unknown,
    Importing,
    Lost,
    Moved {
        epoch: u64,
        to: String,
    },
    Stale {
        epoch: u64,
    },
    Fenced,
    /// A conditional write's condition did not hold; nothing was written. `current`: the
    /// SHA-1 (hex) of the value there now, `None` when there is none.
    Conflict {
        current: Option<String>,
    },
}

/// A data write.
#[derive(Debug, Clone, Copy)]
pub enum WriteOp<'a> {
    Set(&'a [u8]),
    Delete,
    Increment(i64),
    /// Sets the value only if the current one has SHA-1 (hex) `expected`, or (`None`) only if
    /// there is none: compare-and-set for read-modify-write.
    SetIf {
        value: &'a [u8],
        expected: Option<&'a str>,
    },
}

/// One request's rate-limit check: the state key and quota of each limit that matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    limits: Vec<LimitArgs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitArgs {
    key: String,
    /// `tb` or `sw`, as the script names them.
    algorithm: &'static str,
    requests: u32,
    period_ms: u64,
    burst: u32,
}

impl LimitCheck {
    /// A request of `keys`' tenant against `limits` (those that match it, tightest decided).
    pub fn new(keys: &TenantKeys, limits: &[&EffectiveLimit]) -> Self {
        Self {
            limits: limits
                .iter()
                .map(|l| LimitArgs {
                    key: keys.rate_limit(&l.name),
                    algorithm: match l.algorithm {
                        Algorithm::TokenBucket => "tb",
                        Algorithm::SlidingWindow => "sw",
                    },
                    requests: l.requests,
                    period_ms: l.period_ms,
                    burst: l.burst.max(1),
                })
                .collect(),
        }
    }
}

/// The authoritative answer of the rate-limit script for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    pub allowed: bool,
    /// Index (into the limits passed) of the limit that refused, or the tightest one.
    pub limit: usize,
    pub remaining: u64,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
}

pub struct Store {
    conns: Arc<ArcSwap<Conns>>,
    next_durable: AtomicUsize,
    breaker: Mutex<Breaker>,
    timeout: Duration,
    write_acks: u32,
    ack_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Set when the sentinels name the primary.
    follower: Option<Arc<Follower>>,
    /// One `+switch-master` listener per sentinel, stopped with the store.
    _listeners: Vec<AbortOnDrop>,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Store {
    /// Connects (lazily reconnecting later) to the primary `options` name: the URL, or the one
    /// the sentinels name (its `ROLE` checked).
    pub async fn connect(
        options: &StoreOptions,
        breaker: Breaker,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (conns, follower) = match &options.target {
            Target::Url(url) => {
                let mut info = url.as_str().into_connection_info()?;
                if let Some(password) = &options.password {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                let client = redis::Client::open(info)?;
                let conns = open_conns(client, options, false)
                    .await
                    .map_err(|e| anyhow::anyhow!("connecting to redis at {url}: {e}"))?;
                (conns, None)
            }
            Target::Sentinels {
                sentinels,
                master_name,
            } => {
                let follower = Follower::new(sentinels, master_name, options, metrics.clone())?;
                let conns = follower.resolve().await.map_err(|e| {
                    anyhow::anyhow!(
                        "finding the redis primary {master_name:?} through the sentinels {}: {e}",
                        sentinels
                            .iter()
                            .map(|(h, p)| format!("{h}:{p}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                })?;
                (conns, Some(follower))
            }
        };
        metrics.set_primary(None, &conns.address);
        tracing::info!(primary = %conns.address, write_acks = options.write_acks, "connected to the cell's redis");
        let conns = Arc::new(ArcSwap::from_pointee(conns));
        let follower = follower.map(|mut f| {
            f.conns = Some(conns.clone());
            Arc::new(f)
        });
        let listeners = match (&options.target, &follower) {
            (Target::Sentinels { sentinels, .. }, Some(f)) => sentinels
                .iter()
                .map(|sentinel| {
                    let task = tokio::spawn(listen_for_switches(f.clone(), sentinel.clone()));
                    AbortOnDrop(task.abort_handle())
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            conns,
            next_durable: AtomicUsize::new(0),
            breaker: Mutex::new(breaker),
            timeout: options.timeout,
            write_acks: options.write_acks,
            ack_timeout: options.ack_timeout,
            metrics,
            follower,
            _listeners: listeners,
        })
    }

    /// `host:port` of the primary in use.
    pub fn primary(&self) -> String {
        self.conns.load().address.clone()
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.lock().map(|b| b.is_open()).unwrap_or(true)
    }

    /// The connection for reads, the limiter and writes that do not wait.
    fn conn(&self) -> ConnectionManager {
        self.conns.load().main.clone()
    }

    /// Runs one Redis call under the breaker and the timeout.
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(op, self.timeout, f).await
    }

    /// Runs one Redis call under the breaker and `timeout`; after an answer that says the
    /// primary moved (connection lost, `READONLY`, `MASTERDOWN`, `NOREPLICAS`), asks the
    /// sentinels again in the background.
    async fn call_within<T, F>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let allowed = self
            .breaker
            .lock()
            .map(|mut b| b.allow(Instant::now()))
            .unwrap_or(false);
        if !allowed {
            return Err(StoreError::BreakerOpen);
        }
        let sent = Instant::now();
        // One span per round trip (a script, a pipeline or one command), named by the store
        // operation it serves; `debug`, so it costs nothing unless traces are exported.
        let span = tracing::debug_span!(
            "redis",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = op,
            otel.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let result = match tokio::time::timeout(timeout, f.instrument(span.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.code() == Some("NOREPLICAS") => Err(StoreError::NoReplicas),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(e));
        }
        if let (Some(follower), Err(e)) = (&self.follower, &result)
            && let Some(why) = primary_suspect(e)
        {
            follower.trigger(why);
        }
        if let Ok(mut b) = self.breaker.lock() {
            match &result {
                // A script or type error is an answer, not Redis being down.
                Err(StoreError::Redis(e))
                    if !(e.is_io_error()
                        || e.is_connection_refusal()
                        || e.is_connection_dropped()
                        || e.is_timeout()) =>
                {
                    b.success()
                }
                Err(e) => {
                    let was_closed = !b.is_open();
                    b.failure(Instant::now(), sent);
                    if was_closed && b.is_open() {
                        tracing::warn!(op, error = %e, "redis breaker opened: calls fail fast until a probe succeeds");
                    }
                }
                Ok(_) => {
                    if b.is_open() {
                        tracing::info!(op, "redis breaker closed: a probe succeeded");
                    }
                    b.success()
                }
            }
        }
        result
    }

    /// Runs `invocation` (a script that writes) and, when writes wait for replicas, `WAIT` on
    /// the same connection in the same round trip.
    async fn durable_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.write_acks == 0 {
            let mut c = self.conn();
            return self
                .call(op, async move { invocation.invoke_async(&mut c).await })
                .await
                .map_err(|e| self.counted(e));
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation);
        match self.waited(op, pipe.clone()).await {
            // The script is not in this Redis yet (a new primary, a restart): the pipeline's
            // EVALSHA did nothing. Load it and run the write once more.
            Err(StoreError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut c = self.conn();
                self.call(op, async move { invocation.load_async(&mut c).await })
                    .await?;
                self.waited(op, pipe).await
            }
            other => other,
        }
    }

    /// Runs `cmds` as one transaction (`MULTI`/`EXEC`) and, when writes wait for replicas,
    /// `WAIT` on the same connection in the same round trip.
    /// Answers each command's reply.
    async fn durable_transaction(
        &self,
        op: &'static str,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<redis::Value>, StoreError> {
        let mut pipe = redis::pipe();
        if self.write_acks == 0 {
            pipe.atomic();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let mut c = self.conn();
            return self
                .call(op, async move { pipe.query_async(&mut c).await })
                .await
                .map_err(|e| self.counted(e));
        }
        pipe.cmd("MULTI").ignore();
        for cmd in cmds {
            pipe.add_command(cmd).ignore();
        }
        pipe.cmd("EXEC");
        self.waited(op, pipe).await
    }

    /// `pipe` (whose one unignored answer is the write's) followed by `WAIT <acks> <timeout>`,
    /// on a connection reserved for writes that wait; fewer acknowledgements → `NotDurable`.
    async fn waited<T: FromRedisValue>(
        &self,
        op: &'static str,
        mut pipe: Pipeline,
    ) -> Result<T, StoreError> {
        pipe.cmd("WAIT")
            .arg(self.write_acks)
            .arg(self.ack_timeout.as_millis() as u64);
        let mut c = {
            let conns = self.conns.load();
            let i = self.next_durable.fetch_add(1, Ordering::Relaxed) % conns.durable.len();
            conns.durable[i].clone()
        };
        let result = self
            .call_within(op, self.timeout + self.ack_timeout, async move {
                pipe.query_async::<(T, u32)>(&mut c).await
            })
            .await;
        match result {
            Ok((value, acked)) if acked >= self.write_acks => Ok(value),
            Ok((_, acked)) => {
                self.metrics
                    .writes_not_durable
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: "acks_timeout",
                    })
                    .inc();
                Err(StoreError::NotDurable {
                    acked,
                    wanted: self.write_acks,
                    timeout: self.ack_timeout,
                })
            }
            Err(e) => Err(self.counted(e)),
        }
    }

    /// Counts a refusal for lack of replicas.
    fn counted(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::NoReplicas) {
            self.metrics
                .writes_not_durable
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "no_replicas",
                })
                .inc();
        }
        e
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        self.call("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    pub async fn tenant(&self, keys: &TenantKeys) -> Result<Option<TenantRecord>, StoreError> {
        self.read_meta(keys, true).await.map(|(record, _)| record)
    }

    /// The tenant's record (without its data marker) and the version of its policy override,
    /// if it has one, in the one read a request makes anyway: the override itself is read only
    /// when a lane does not know that version yet ([`Self::policy_override`]).
    pub async fn tenant_and_policy_version(
        &self,
        keys: &TenantKeys,
    ) -> Result<(Option<TenantRecord>, Option<String>), StoreError> {
        self.read_meta(keys, false).await
    }

    async fn read_meta(
        &self,
        keys: &TenantKeys,
        with_marker: bool,
    ) -> Result<(Option<TenantRecord>, Option<String>), StoreError> {
        let mut c = self.conn();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(keys.meta()).arg(&META_REQUEST_FIELDS);
        if with_marker {
            hmget.arg(META_MARKER);
        }
        let mut values: Vec<Option<String>> = self
            .call("read_meta", async move { hmget.query_async(&mut c).await })
            .await?;
        let marker = if with_marker {
            values.pop().flatten()
        } else {
            None
        };
        let [state, epoch, moved_to, tracking, policy_version]: [Option<String>; 5] = values
            .try_into()
            .map_err(|v: Vec<_>| StoreError::BadEntry {
                key: keys.meta(),
                reason: format!("HMGET answered {} fields", v.len()),
            })?;
        let record = parse_record(keys, state, epoch, moved_to, tracking, marker)?;
        let policy_version = record.as_ref().and(policy_version);
        Ok((record, policy_version))
    }

    /// The tenant's policy override as stored (JSON), if it has one.
    pub async fn policy_override(&self, keys: &TenantKeys) -> Result<Option<String>, StoreError> {
        let mut c = self.conn();
        let meta = keys.meta();
        self.call("policy_override", async move {
            c.hget(&meta, META_POLICY).await
        })
        .await
    }

    /// Stores a policy override (`stored`, JSON) under `version` in the tenant's record, only
    /// if the tenant has a record in this cell. Returns whether it had one.
    pub async fn set_policy_override(
        &self,
        keys: &TenantKeys,
        version: &str,
        stored: &str,
    ) -> Result<bool, StoreError> {
        let mut invocation = SET_POLICY_OVERRIDE.key(keys.meta());
        invocation.arg(version).arg(stored);
        let set: i64 = self
            .durable_script("set_policy_override", &invocation)
            .await?;
        Ok(set == 1)
    }

    /// Sets a tenant's record. `require`: the state it must be in now. Never lowers the epoch;
    /// keeps the stored marker when the record has none.
    pub async fn set_tenant(
        &self,
        keys: &TenantKeys,
        record: &TenantRecord,
        require: Option<TenantState>,
    ) -> Result<Result<(), String>, StoreError> {
        let state = state_str(record.state);
        let require = require.map(state_str).unwrap_or("");
        let mut invocation = scripts::SET_STATE.key(keys.meta());
        invocation
            .arg(state)
            .arg(record.epoch)
            .arg(record.moved_to.as_deref().unwrap_or(""))
            .arg(if record.tracking { "1" } else { "0" })
            .arg(require)
            .arg(record.marker.as_deref().unwrap_or(""));
        let reply: Vec<String> = self.durable_script("set_tenant", &invocation).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("lower") => Err(format!(
                "epoch {} is lower than the current epoch {}; epochs never decrease",
                record.epoch,
                reply.get(1).map(String::as_str).unwrap_or("?")
            )),
            Some("state") => Err(format!(
                "tenant is {:?}, not {require:?}",
                reply.get(1).map(String::as_str).unwrap_or("absent")
            )),
            _ => Err(format!("unexpected reply {reply:?}")),
        })
    }

    /// Creates the records of new tenants, `active` at their epoch with their marker, where a
    /// tenant has none, all in one durable script call. One answer per tenant, in order: `None`
    /// when its record was created, the record it already had otherwise (left as it was).
    pub async fn create_tenants(
        &self,
        new: &[(TenantKeys, u64, &str)],
    ) -> Result<Vec<Option<TenantRecord>>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts::CREATE_TENANTS.prepare_invoke();
        for (keys, epoch, marker) in new {
            invocation.key(keys.meta()).arg(*epoch).arg(*marker);
        }
        let reply: Vec<String> = self.durable_script("create_tenants", &invocation).await?;
        if reply.len() != new.len() * 5 {
            return Err(StoreError::BadReply(format!(
                "the create-tenants script answered {} fields for {} tenants",
                reply.len(),
                new.len()
            )));
        }
        let given = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        new.iter()
            .zip(reply.chunks_exact(5))
            // A created record answers no state: `parse_record` makes that `None`.
            .map(|((keys, _, _), f)| {
                parse_record(
                    keys,
                    given(&f[0]),
                    given(&f[1]),
                    given(&f[2]),
                    given(&f[3]),
                    given(&f[4]),
                )
            })
            .collect()
    }

    /// Starts tracking writes for an export of changes (clears earlier changes).
    pub async fn mark(&self, keys: &TenantKeys) -> Result<(), StoreError> {
        let (meta, chg, taken) = (keys.meta(), keys.changes(), keys.changes_taken());
        let mut tracking = redis::cmd("HSET");
        tracking.arg(&meta).arg("tracking").arg("1");
        self.durable_transaction(
            "mark",
            vec![
                redis::cmd("DEL").arg(&chg).clone(),
                redis::cmd("DEL").arg(&taken).clone(),
                tracking,
            ],
        )
        .await
        .map(|_| ())
    }

    pub async fn write(
        &self,
        keys: &TenantKeys,
        data_key: &str,
        epoch: Option<u64>,
        op: WriteOp<'_>,
    ) -> Result<WriteOutcome, StoreError> {
        let suffix = data_key
            .strip_prefix(keys.prefix())
            .unwrap_or(data_key)
            .to_owned();
        let mut invocation = scripts::WRITE.key(keys.meta());
        invocation.key(data_key).key(keys.changes());
        invocation.arg(epoch.map_or(-1, |e| e as i64));
        match op {
            WriteOp::Set(bytes) => invocation.arg("set").arg(bytes),
            WriteOp::Delete => invocation.arg("del").arg(""),
            WriteOp::Increment(by) => invocation.arg("incr").arg(by),
            WriteOp::SetIf { value, .. } => invocation.arg("cas").arg(value),
        };
        invocation.arg(suffix);
        if let WriteOp::SetIf { expected, .. } = op {
            invocation.arg(expected.unwrap_or(""));
        }
        let reply: Vec<String> = self.durable_script("write", &invocation).await?;
        let num = |i: usize| reply.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => WriteOutcome::Ok(reply.get(1).cloned().unwrap_or_default()),
            Some("unknown") => WriteOutcome::Unknown,
            Some("importing") => WriteOutcome::Importing,
            Some("lost") => WriteOutcome::Lost,
            Some("moved") => WriteOutcome::Moved {
                epoch: num(1),
                to: reply.get(2).cloned().unwrap_or_default(),
            },
            Some("stale") => WriteOutcome::Stale { epoch: num(1) },
            Some("fenced") => WriteOutcome::Fenced,
            Some("conflict") => WriteOutcome::Conflict {
                current: reply.get(1).filter(|c| !c.is_empty()).cloned(),
            },
            _ => {
                return Err(StoreError::BadEntry {
                    key: data_key.to_owned(),
                    reason: format!("unexpected write reply {reply:?}"),
                });
            }
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn();
        let key = key.to_owned();
        self.call("get", async move { c.get(&key).await }).await
    }

    /// Names of the tenant's items (or counters), a page at a time.
    pub async fn list(
        &self,
        keys: &TenantKeys,
        kind: KeyKind,
        cursor: u64,
        count: usize,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let tag = if kind == KeyKind::Counter { "c:" } else { "i:" };
        let pattern = format!("{}{tag}*", keys.prefix());
        let (next, found) = self.scan_page(&pattern, cursor, count).await?;
        let prefix = format!("{}{tag}", keys.prefix());
        Ok((
            found
                .into_iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                .collect(),
            next,
        ))
    }

    /// One page of `SCAN <cursor> MATCH <pattern> COUNT <count>`: the next cursor (0 at the end)
    /// and the keys found.
    async fn scan_page(
        &self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut c = self.conn();
        self.call("scan_page", async move {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// The authoritative rate-limit checks of `checks`, in one round trip: a decision per
    /// check, in order ([`scripts::RATE_LIMIT`]; [`crate::limit_batch`] gathers the checks).
    pub async fn rate_limit(
        &self,
        checks: &[LimitCheck],
    ) -> Result<Vec<LimitDecision>, StoreError> {
        let mut c = self.conn();
        let mut invocation = scripts::RATE_LIMIT.prepare_invoke();
        invocation.arg(checks.len());
        for check in checks {
            invocation.arg(check.limits.len());
            for limit in &check.limits {
                invocation
                    .key(&limit.key)
                    .arg(limit.algorithm)
                    .arg(limit.requests)
                    .arg(limit.period_ms)
                    .arg(limit.burst);
            }
        }
        let reply: Vec<i64> = self
            .call("rate_limit", async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if reply.len() != checks.len() * 5 {
            return Err(StoreError::BadReply(format!(
                "the rate-limit script answered {} values for {} checks, not 5 each",
                reply.len(),
                checks.len()
            )));
        }
        let at = |r: &[i64], i: usize| r[i].max(0) as u64;
        Ok(reply
            .chunks_exact(5)
            .map(|r| LimitDecision {
                allowed: r[0] == 1,
                limit: at(r, 1) as usize,
                remaining: at(r, 2),
                reset_ms: at(r, 3),
                retry_after_ms: at(r, 4),
            })
            .collect())
    }

    /// One page of the tenant's data keys (items, counters, limiter state).
    pub async fn export(
        &self,
        keys: &TenantKeys,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<ExportPage, StoreError> {
        let start: u64 = match cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| StoreError::BadCursor(c.to_owned()))?,
        };
        let pattern = keys.scan_pattern();
        let (next, found) = self.scan_page(&pattern, start, count).await?;
        let data: Vec<String> = found
            .into_iter()
            .filter(|k| keys.classify(k).is_some_and(KeyKind::is_data))
            .collect();
        let entries = self.read_entries(keys, &data).await?;
        Ok(ExportPage {
            entries,
            cursor: (next != 0).then(|| next.to_string()),
        })
    }

    /// The tenant's keys written since `mark`, a page at a time (`SSCAN` of the change set);
    /// a key deleted since is exported as [`Value::Deleted`].
    /// Takes the change set (see [`scripts::TAKE_CHANGES`]); returns how many keys it held.
    pub async fn take_changes(&self, keys: &TenantKeys) -> Result<u64, StoreError> {
        let mut invocation = scripts::TAKE_CHANGES.key(keys.changes());
        invocation.key(keys.changes_taken());
        self.durable_script("take_changes", &invocation).await
    }

    /// A page of the keys written since `mark` (or the last take), or with `taken`, of the
    /// set the last take took, with their current values.
    pub async fn changes(
        &self,
        keys: &TenantKeys,
        cursor: Option<&str>,
        count: usize,
        taken: bool,
    ) -> Result<ExportPage, StoreError> {
        let start: u64 = match cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| StoreError::BadCursor(c.to_owned()))?,
        };
        let mut c = self.conn();
        let chg = if taken {
            keys.changes_taken()
        } else {
            keys.changes()
        };
        let (next, suffixes): (u64, Vec<String>) = self
            .call("changes", async move {
                redis::cmd("SSCAN")
                    .arg(&chg)
                    .arg(start)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let full: Vec<String> = suffixes
            .iter()
            .map(|s| format!("{}{s}", keys.prefix()))
            .collect();
        let entries = self.read_entries(keys, &full).await?;
        Ok(ExportPage {
            entries,
            cursor: (next != 0).then(|| next.to_string()),
        })
    }

    /// The current value of each of `full_keys` (all the tenant's), as export entries.
    pub async fn entries(
        &self,
        keys: &TenantKeys,
        full_keys: &[String],
    ) -> Result<Vec<Entry>, StoreError> {
        self.read_entries(keys, full_keys).await
    }

    async fn read_entries(
        &self,
        keys: &TenantKeys,
        full_keys: &[String],
    ) -> Result<Vec<Entry>, StoreError> {
        if full_keys.is_empty() {
            return Ok(vec![]);
        }
        let mut c = self.conn();
        let mut pipe = redis::pipe();
        for k in full_keys {
            pipe.cmd("TYPE").arg(k).cmd("PTTL").arg(k);
        }
        let meta: Vec<redis::Value> = self
            .call("read_entries", async { pipe.query_async(&mut c).await })
            .await?;
        let mut kinds = Vec::with_capacity(full_keys.len());
        for (i, pair) in meta.chunks(2).enumerate() {
            let kind: String = redis::from_redis_value_ref(&pair[0]).unwrap_or_default();
            let ttl: i64 = redis::from_redis_value_ref(&pair[1]).unwrap_or(-1);
            kinds.push((full_keys[i].clone(), kind, ttl));
        }
        let mut pipe = redis::pipe();
        for (k, kind, _) in &kinds {
            match kind.as_str() {
                "string" => {
                    pipe.cmd("GET").arg(k);
                }
                "hash" => {
                    pipe.cmd("HGETALL").arg(k);
                }
                "none" => {
                    pipe.cmd("EXISTS").arg(k);
                }
                other => {
                    return Err(StoreError::UnsupportedType {
                        key: k.clone(),
                        kind: other.to_owned(),
                    });
                }
            }
        }
        let mut c = self.conn();
        let values: Vec<redis::Value> = self
            .call("read_entries", async { pipe.query_async(&mut c).await })
            .await?;
        let mut entries = Vec::with_capacity(kinds.len());
        for ((k, kind, ttl), v) in kinds.into_iter().zip(values) {
            let value = match kind.as_str() {
                "string" => {
                    let bytes: Vec<u8> = redis::from_redis_value(v).unwrap_or_default();
                    Value::String {
                        base64: B64.encode(bytes),
                    }
                }
                "hash" => {
                    let map: std::collections::BTreeMap<String, Vec<u8>> =
                        redis::from_redis_value(v).unwrap_or_default();
                    Value::Hash {
                        fields: map.into_iter().map(|(f, v)| (f, B64.encode(v))).collect(),
                    }
                }
                _ => Value::Deleted,
            };
            let key = k.strip_prefix(keys.prefix()).unwrap_or(&k).to_owned();
            entries.push(Entry {
                key,
                value,
                ttl_ms: (ttl > 0).then_some(ttl as u64),
            });
        }
        Ok(entries)
    }

    /// Writes imported entries under the tenant's prefix: items and counters through the import
    /// script (which keeps the tenant's count and digest), limiter state as it comes.
    pub async fn import(&self, keys: &TenantKeys, entries: &[Entry]) -> Result<(), StoreError> {
        let mut data = scripts::IMPORT.key(keys.meta());
        let mut data_entries = 0usize;
        let mut limiter: Vec<Cmd> = Vec::new();
        let mut limiter_entries = 0usize;
        for entry in entries {
            let full = format!("{}{}", keys.prefix(), entry.key);
            let kind = keys
                .classify(&full)
                .filter(|k| k.is_data())
                .ok_or_else(|| StoreError::BadEntry {
                    key: entry.key.clone(),
                    reason: "not a data key of the tenant layout (i:, c: or rl:)".into(),
                })?;
            let decode = |s: &str| {
                B64.decode(s).map_err(|e| StoreError::BadEntry {
                    key: entry.key.clone(),
                    reason: format!("value is not base64: {e}"),
                })
            };
            if kind != KeyKind::RateLimit {
                let op = match &entry.value {
                    Value::String { base64 } => {
                        let mut op = vec![b's'];
                        op.extend(decode(base64)?);
                        op
                    }
                    Value::Deleted => vec![b'd'],
                    Value::Hash { .. } => {
                        return Err(StoreError::BadEntry {
                            key: entry.key.clone(),
                            reason: "items and counters are strings, not hashes".into(),
                        });
                    }
                };
                if entry.ttl_ms.is_some() {
                    return Err(StoreError::BadEntry {
                        key: entry.key.clone(),
                        reason: "items and counters do not expire; drop ttlMs".into(),
                    });
                }
                data.key(&full).arg(&entry.key).arg(op);
                data_entries += 1;
                continue;
            }
            limiter_entries += 1;
            match &entry.value {
                Value::String { base64 } => {
                    limiter.push(redis::cmd("SET").arg(&full).arg(decode(base64)?).clone());
                }
                Value::Hash { fields } => {
                    limiter.push(redis::cmd("DEL").arg(&full).clone());
                    if !fields.is_empty() {
                        let mut cmd = redis::cmd("HSET");
                        cmd.arg(&full);
                        for (f, v) in fields {
                            cmd.arg(f).arg(decode(v)?);
                        }
                        limiter.push(cmd);
                    }
                }
                Value::Deleted => {
                    limiter.push(redis::cmd("DEL").arg(&full).clone());
                }
            }
            if let Some(ttl) = entry.ttl_ms
                && !matches!(entry.value, Value::Deleted)
            {
                limiter.push(redis::cmd("PEXPIRE").arg(&full).arg(ttl).clone());
            }
        }
        if data_entries > 0 {
            let reply: Vec<String> = self.durable_script("import", &data).await?;
            if reply.first().map(String::as_str) != Some("ok") {
                return Err(StoreError::NotImporting {
                    state: reply.get(1).cloned().unwrap_or_default(),
                });
            }
        }
        if limiter_entries > 0 {
            self.durable_transaction("import", limiter).await?;
        }
        Ok(())
    }

    /// Count and digest of the tenant's data (items and counters) as the write and import
    /// scripts keep them: one call, whatever the tenant's size. See
    /// [`cellstack_api::admin::Checksum`].
    pub async fn checksum(&self, keys: &TenantKeys) -> Result<(u64, String), StoreError> {
        let mut c = self.conn();
        let meta = keys.meta();
        let (n, d): (Option<u64>, Option<String>) = self
            .call("checksum", async move {
                redis::cmd("HMGET")
                    .arg(&meta)
                    .arg("keys")
                    .arg("digest")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok((
            n.unwrap_or(0),
            d.unwrap_or_else(|| admin::EMPTY_DIGEST.to_owned()),
        ))
    }

    /// The same figures recomputed from the keys themselves (a scan of the tenant): what the
    /// maintained ones must equal.
    pub async fn recount(&self, keys: &TenantKeys) -> Result<(u64, String), StoreError> {
        let mut parts = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.export(keys, cursor.as_deref(), 1000).await?;
            for entry in &page.entries {
                let full = format!("{}{}", keys.prefix(), entry.key);
                let Value::String { base64 } = &entry.value else {
                    continue;
                };
                if keys.classify(&full) == Some(KeyKind::RateLimit) {
                    continue;
                }
                let raw = B64.decode(base64).map_err(|e| StoreError::BadEntry {
                    key: entry.key.clone(),
                    reason: format!("exported value is not base64: {e}"),
                })?;
                parts.push(admin::entry_digest(&entry.key, &raw));
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok((parts.len() as u64, admin::fold_digest(&parts)))
    }

    /// When the operator confirmed that the datastore holds every tenant placed in the cell
    /// (ms since the Unix epoch), or `None` when the datastore carries no confirmation
    /// (see [`cellstack_api::admin::DATASTORE_PATH`]).
    pub async fn confirmation(&self) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn();
        self.call("confirmation", async move {
            redis::cmd("GET")
                .arg(DATASTORE_CONFIRMED_KEY)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Confirms that the datastore holds a record of each of `metas` (tenants' meta keys), as of
    /// `now_ms`. Answers the positions in `metas` of the records that are missing; then nothing
    /// is confirmed. The records are checked a page at a time between setting a token and
    /// setting the confirmation only if the token is still there, so a datastore emptied during
    /// the check is never confirmed ([`StoreError::ConfirmationLost`]).
    pub async fn confirm(&self, metas: &[String], now_ms: u64) -> Result<Vec<usize>, StoreError> {
        /// Records checked per round trip.
        const PAGE: usize = 1000;
        /// How long a token of a confirmation that never finished lingers.
        const TOKEN_TTL_MS: u64 = 60_000;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut c = self.conn();
        let set = redis::cmd("SET")
            .arg(DATASTORE_CONFIRMING_KEY)
            .arg(&token)
            .arg("PX")
            .arg(TOKEN_TTL_MS)
            .clone();
        self.call(
            "confirm",
            async move { set.query_async::<()>(&mut c).await },
        )
        .await?;
        let mut missing = Vec::new();
        for (page, chunk) in metas.chunks(PAGE).enumerate() {
            let mut pipe = redis::pipe();
            for meta in chunk {
                pipe.cmd("EXISTS").arg(meta);
            }
            let mut c = self.conn();
            let found: Vec<bool> = self
                .call("confirm", async move { pipe.query_async(&mut c).await })
                .await?;
            missing.extend(
                found
                    .iter()
                    .enumerate()
                    .filter(|(_, found)| !**found)
                    .map(|(i, _)| page * PAGE + i),
            );
        }
        if !missing.is_empty() {
            return Ok(missing);
        }
        let mut invocation = scripts::CONFIRM.key(DATASTORE_CONFIRMING_KEY);
        invocation
            .key(DATASTORE_CONFIRMED_KEY)
            .arg(&token)
            .arg(now_ms);
        let mut c = self.conn();
        let confirmed: bool = self
            .call(
                "confirm",
                async move { invocation.invoke_async(&mut c).await },
            )
            .await?;
        if confirmed {
            Ok(missing)
        } else {
            Err(StoreError::ConfirmationLost)
        }
    }

    /// Deletes every key of the tenant, its record included, in batches.
    pub async fn purge(&self, keys: &TenantKeys) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut cursor = 0u64;
        loop {
            let pattern = keys.scan_pattern();
            let (next, found) = self.scan_page(&pattern, cursor, 500).await?;
            if !found.is_empty() {
                let reply = self
                    .durable_transaction("purge", vec![redis::cmd("UNLINK").arg(&found).clone()])
                    .await?;
                let n: u64 = reply
                    .first()
                    .and_then(|v| redis::from_redis_value_ref(v).ok())
                    .unwrap_or(0);
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// Why an error suggests the primary is no longer where the store talks to, if it does.
fn primary_suspect(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Timeout(_) => Some("a call timed out"),
        StoreError::NoReplicas => Some("NOREPLICAS"),
        StoreError::Redis(e) if e.code() == Some("READONLY") => Some("READONLY"),
        StoreError::Redis(e) if e.code() == Some("MASTERDOWN") => Some("MASTERDOWN"),
        StoreError::Redis(e)
            if e.is_io_error()
                || e.is_connection_refusal()
                || e.is_connection_dropped()
                || e.is_timeout() =>
        {
            Some("the connection failed")
        }
        _ => None,
    }
}

fn manager_config(connect: Duration, answer: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(answer))
        .set_number_of_retries(1)
}

/// Opens the connections to the Redis `client` points at; with `check_role`, only if it
/// answers `ROLE` as a primary.
async fn open_conns(
    client: redis::Client,
    options: &StoreOptions,
    check_role: bool,
) -> Result<Conns, String> {
    let address = client.get_connection_info().addr().to_string();
    let connect = options.timeout.max(Duration::from_millis(200));
    let open = async {
        let mut main = ConnectionManager::new_with_config(
            client.clone(),
            manager_config(connect, options.timeout),
        )
        .await
        .map_err(|e| e.to_string())?;
        if check_role {
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut main)
                .await
                .map_err(|e| format!("ROLE: {e}"))?;
            let role: String = role
                .first()
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default();
            if role != "master" {
                return Err(format!(
                    "{address} answers ROLE {role:?}, not master: the sentinels' answer is out of date"
                ));
            }
        }
        let mut durable = Vec::new();
        if options.write_acks > 0 {
            let answer = options.timeout + options.ack_timeout;
            for _ in 0..DURABLE_CONNECTIONS {
                durable.push(
                    ConnectionManager::new_with_config(
                        client.clone(),
                        manager_config(connect, answer),
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                );
            }
        }
        Ok(Conns {
            address: address.clone(),
            main,
            durable,
        })
    };
    tokio::time::timeout(CONNECT_BUDGET, open)
        .await
        .map_err(|_| format!("connecting to {address} took longer than {CONNECT_BUDGET:?}"))?
}

/// Finds the primary through the sentinels and moves the store's connections to it when it
/// changes.
///
/// The redis crate's sentinel client does the asking: it asks the sentinels (`SENTINEL
/// MASTERS`, up to three at once, each with the crate's 1 s connect / 500 ms answer timeouts),
/// skips a primary they flag down, and checks `ROLE` on the one named before answering. The
/// store then checks `ROLE` again on the connection it will use.
struct Follower {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
    /// Held while the connections move, so two announcements of one failover (one per
    /// sentinel), or an announcement and an asking round, move them once.
    moving: tokio::sync::Mutex<()>,
    options: StoreOptions,
    metrics: Arc<Metrics>,
    /// The store's connections (set once the store exists).
    conns: Option<Arc<ArcSwap<Conns>>>,
    running: AtomicBool,
    /// No new round before this (see [`FOLLOW_QUIET`]).
    quiet_until: Mutex<Option<Instant>>,
}

impl Follower {
    fn new(
        sentinels: &[(String, u16)],
        master_name: &str,
        options: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!sentinels.is_empty(), "no sentinel addresses given");
        let addrs = sentinels
            .iter()
            .map(|(h, p)| redis::ConnectionAddr::Tcp(h.clone(), *p));
        let mut builder =
            SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)?;
        if let Some(password) = &options.password {
            builder = builder
                .set_client_to_sentinel_password(password)
                .set_client_to_redis_password(password);
        }
        Ok(Self {
            sentinel: tokio::sync::Mutex::new(builder.build()?),
            master_name: master_name.to_owned(),
            moving: tokio::sync::Mutex::new(()),
            options: options.clone(),
            metrics,
            conns: None,
            running: AtomicBool::new(false),
            quiet_until: Mutex::new(None),
        })
    }

    /// The primary the sentinels name, as a client (its `ROLE` checked by the crate).
    async fn ask(&self) -> Result<redis::Client, String> {
        let asked = tokio::time::timeout(RESOLVE_BUDGET, async {
            self.sentinel.lock().await.async_get_client().await
        })
        .await;
        let result = match asked {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the sentinels did not answer within {RESOLVE_BUDGET:?}"
            )),
        };
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .redis_primary_resolutions
            .get_or_create(&crate::metrics::ResultLabels { result: label })
            .inc();
        result
    }

    /// Connections to the primary the sentinels name now.
    async fn resolve(&self) -> Result<Conns, String> {
        let client = self.ask().await?;
        open_conns(client, &self.options, true).await
    }

    /// Starts a round of following in the background, unless one runs or just ended.
    fn trigger(self: &Arc<Self>, why: &'static str) {
        if self
            .quiet_until
            .lock()
            .is_ok_and(|q| q.is_some_and(|t| Instant::now() < t))
        {
            return;
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.follow(why).await;
            me.running.store(false, Ordering::SeqCst);
        });
    }

    /// A client of the Redis (or sentinel) at `host:port`, with the cell's password.
    fn client(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        let mut info = (host, port).into_connection_info()?;
        if let Some(password) = &self.options.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        redis::Client::open(info)
    }

    /// Moves the connections to the primary a sentinel announced, unless they are there
    /// already; its `ROLE` is checked first. On failure the next failing call asks the
    /// sentinels as before.
    async fn switch_to(&self, host: &str, port: u16) {
        let Some(conns) = &self.conns else { return };
        let _moving = self.moving.lock().await;
        let current = conns.load().address.clone();
        let client = match self.client(host, port) {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%host, port, %error, "a sentinel announced a primary this lane cannot address");
                return;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        if address == current {
            return;
        }
        match open_conns(client, &self.options, true).await {
            Ok(new) => {
                conns.store(Arc::new(new));
                self.metrics.redis_primary_changes.inc();
                self.metrics.set_primary(Some(&current), &address);
                tracing::warn!(from = %current, to = %address, "following the new redis primary a sentinel announced");
            }
            Err(error) => {
                tracing::warn!(primary = %current, announced = %address, %error, "cannot use the primary a sentinel announced yet; the next failing call asks the sentinels");
            }
        }
    }

    /// Asks the sentinels until they name a primary that answers as one (bounded by
    /// [`FOLLOW_FOR`], jittered doubling delays), and moves the connections there if it
    /// changed.
    async fn follow(&self, why: &'static str) {
        let Some(conns) = &self.conns else { return };
        let deadline = Instant::now() + FOLLOW_FOR;
        let mut delay = FOLLOW_DELAYS.0;
        for attempt in 1u32.. {
            let current = conns.load().address.clone();
            let found = match self.ask().await {
                Ok(client) => {
                    let address = client.get_connection_info().addr().to_string();
                    if address == current {
                        Ok(None)
                    } else {
                        open_conns(client, &self.options, true).await.map(Some)
                    }
                }
                Err(e) => Err(e),
            };
            match found {
                Ok(None) => {
                    tracing::debug!(primary = %current, why, "the sentinels still name the same primary");
                    if let Ok(mut q) = self.quiet_until.lock() {
                        *q = Some(Instant::now() + FOLLOW_QUIET);
                    }
                    return;
                }
                Ok(Some(new)) => {
                    let _moving = self.moving.lock().await;
                    let address = new.address.clone();
                    // An announcement may have moved them while this round asked.
                    let from = conns.load().address.clone();
                    if from == address {
                        return;
                    }
                    conns.store(Arc::new(new));
                    self.metrics.redis_primary_changes.inc();
                    self.metrics.set_primary(Some(&from), &address);
                    tracing::warn!(from = %from, to = %address, why, attempt, "following the new redis primary the sentinels name");
                    return;
                }
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::warn!(primary = %current, why, attempt, error = %e, "no usable primary from the sentinels yet; asking again");
                    tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..1.0))).await;
                    delay = (delay * 2).min(FOLLOW_DELAYS.1);
                }
                Err(e) => {
                    tracing::error!(primary = %current, why, attempts = attempt, error = %e, "gave up following the redis primary for now; the next failing call asks again");
                    return;
                }
            }
        }
    }
}

/// Listens for failovers announced by one sentinel (`+switch-master` for the cell's master name)
/// and moves the store to the new primary at once, instead of waiting for a call to fail and the
/// sentinels to be asked again (that remains the fallback). Runs until the store is dropped;
/// reconnects with jittered, doubling delays and pings the sentinel to notice a dead one.
async fn listen_for_switches(follower: Arc<Follower>, (host, port): (String, u16)) {
    let mut delay = LISTEN_DELAYS.0;
    loop {
        let subscribed = async {
            let client = follower.client(&host, port)?;
            let mut pubsub = tokio::time::timeout(CONNECT_BUDGET, client.get_async_pubsub())
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting took too long",
                    ))
                })??;
            pubsub.subscribe(SWITCH_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        let (mut sink, mut messages) = match subscribed {
            Ok(pubsub) => {
                delay = LISTEN_DELAYS.0;
                pubsub.split()
            }
            Err(error) => {
                tracing::debug!(sentinel = %format!("{host}:{port}"), %error, "cannot listen to a sentinel for failovers yet");
                tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..1.0))).await;
                delay = (delay * 2).min(LISTEN_DELAYS.1);
                continue;
            }
        };
        let mut pings = tokio::time::interval(LISTEN_PING_EVERY);
        pings.tick().await;
        loop {
            tokio::select! {
                message = futures::StreamExt::next(&mut messages) => {
                    let Some(message) = message else { break };
                    let Ok(payload) = message.get_payload::<String>() else { continue };
                    let fields: Vec<&str> = payload.split_whitespace().collect();
                    if let [name, _, _, new_host, new_port] = fields[..]
                        && name == follower.master_name
                        && let Ok(new_port) = new_port.parse::<u16>()
                    {
                        follower.switch_to(new_host, new_port).await;
                    }
                }
                _ = pings.tick() => {
                    let pong = tokio::time::timeout(LISTEN_PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::debug!(sentinel = %format!("{host}:{port}"), "lost the sentinel's failover announcements; listening again");
    }
}

fn state_str(s: TenantState) -> &'static str {
    match s {
        TenantState::Importing => "importing",
        TenantState::Active => "active",
        TenantState::Fenced => "fenced",
        TenantState::Moved => "moved",
        TenantState::Lost => "lost",
    }
}

/// The data key of an item or counter name.
pub fn data_key(keys: &TenantKeys, kind: KeyKind, name: &ItemName) -> String {
    match kind {
        KeyKind::Counter => keys.counter(name),
        _ => keys.item(name),
    }
}

/// Parses a tenant id from a path segment of the admin API.
pub fn tenant_keys(
    raw: &str,
) -> Result<(TenantId, TenantKeys), cellstack_api::tenant::TenantIdError> {
    let id = TenantId::parse(raw)?;
    let keys = TenantKeys::new(&id);
    Ok((id, keys))
}
