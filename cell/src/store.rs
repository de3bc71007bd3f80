//! The cell's Redis: tenant records, tenant data, limiter state, and the export/import used by
//! moves. Every call has a timeout and goes through the breaker, so a slow or dead Redis costs
//! one timeout, not one per request.

use std::{
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use cellstack_api::{
    admin::{self, Entry, ExportPage, TenantRecord, TenantState, Value},
    keys::{ItemName, KeyKind, TenantKeys},
    policy::EffectiveLimit,
    tenant::TenantId,
    v1alpha1::Algorithm,
};
use redis::{AsyncCommands, aio::ConnectionManager};

use crate::{breaker::Breaker, scripts};

/// Field of the tenant's meta hash holding the version of its policy override (read with the
/// tenant's state on every request).
const META_POLICY_VERSION: &str = "policyVersion";
/// Field of the tenant's meta hash holding its policy override (JSON).
const META_POLICY: &str = "policy";

/// The fields of a tenant's meta hash a request reads: state, epoch, movedTo, tracking and
/// policyVersion.
type MetaFields = (
    Option<String>,
    Option<u64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

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
}

/// Result of a data write.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Ok(String),
    Unknown,
    Importing,
    Moved { epoch: u64, to: String },
    Stale { epoch: u64 },
    Fenced,
}

/// A data write.
#[derive(Debug, Clone, Copy)]
pub enum WriteOp<'a> {
    Set(&'a [u8]),
    Delete,
    Increment(i64),
}

/// The authoritative answer of the rate-limit script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDecision {
    pub allowed: bool,
    /// Index (into the limits passed) of the limit that refused, or the tightest one.
    pub limit: usize,
    pub remaining: u64,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
}

pub struct Store {
    conn: ConnectionManager,
    breaker: Mutex<Breaker>,
    timeout: Duration,
}

impl Store {
    /// Connects (lazily reconnecting later) to `url`.
    pub async fn connect(url: &str, timeout: Duration, breaker: Breaker) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to redis at {url} timed out"))??;
        Ok(Self {
            conn,
            breaker: Mutex::new(breaker),
            timeout,
        })
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.lock().map(|b| b.is_open()).unwrap_or(true)
    }

    /// Runs one Redis call under the breaker and the timeout.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
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
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
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
                Err(_) => b.failure(Instant::now()),
                Ok(_) => b.success(),
            }
        }
        result
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    pub async fn tenant(&self, keys: &TenantKeys) -> Result<Option<TenantRecord>, StoreError> {
        self.tenant_and_policy_version(keys)
            .await
            .map(|(record, _)| record)
    }

    /// The tenant's record and the version of its policy override, if it has one, in the one
    /// read a request makes anyway: the override itself is read only when a lane does not know
    /// that version yet ([`Self::policy_override`]).
    pub async fn tenant_and_policy_version(
        &self,
        keys: &TenantKeys,
    ) -> Result<(Option<TenantRecord>, Option<String>), StoreError> {
        let mut c = self.conn.clone();
        let meta = keys.meta();
        let (state, epoch, moved_to, tracking, policy_version): MetaFields = self
            .call(async move {
                redis::cmd("HMGET")
                    .arg(&meta)
                    .arg(&["state", "epoch", "movedTo", "tracking", META_POLICY_VERSION])
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let state = match state.as_deref() {
            None => return Ok((None, None)),
            Some("active") => TenantState::Active,
            Some("fenced") => TenantState::Fenced,
            Some("moved") => TenantState::Moved,
            Some("importing") => TenantState::Importing,
            Some(other) => {
                return Err(StoreError::BadEntry {
                    key: keys.meta(),
                    reason: format!("unknown tenant state {other:?}"),
                });
            }
        };
        let record = TenantRecord {
            state,
            epoch: epoch.unwrap_or(0),
            moved_to,
            tracking: tracking.as_deref() == Some("1"),
        };
        Ok((Some(record), policy_version))
    }

    /// The tenant's policy override as stored (JSON), if it has one.
    pub async fn policy_override(&self, keys: &TenantKeys) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        let meta = keys.meta();
        self.call(async move { c.hget(&meta, META_POLICY).await })
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
        let mut c = self.conn.clone();
        let mut invocation = SET_POLICY_OVERRIDE.key(keys.meta());
        invocation.arg(version).arg(stored);
        let set: i64 = self
            .call(async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(set == 1)
    }

    /// Sets a tenant's record. `require`: the state it must be in now. Never lowers the epoch.
    pub async fn set_tenant(
        &self,
        keys: &TenantKeys,
        record: &TenantRecord,
        require: Option<TenantState>,
    ) -> Result<Result<(), String>, StoreError> {
        let mut c = self.conn.clone();
        let state = state_str(record.state);
        let require = require.map(state_str).unwrap_or("");
        let mut invocation = scripts::SET_STATE.key(keys.meta());
        invocation
            .arg(state)
            .arg(record.epoch)
            .arg(record.moved_to.as_deref().unwrap_or(""))
            .arg(if record.tracking { "1" } else { "0" })
            .arg(require);
        let reply: Vec<String> = self
            .call(async move { invocation.invoke_async(&mut c).await })
            .await?;
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

    /// Starts tracking writes for an export of changes (clears earlier changes).
    pub async fn mark(&self, keys: &TenantKeys) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let (meta, chg, taken) = (keys.meta(), keys.changes(), keys.changes_taken());
        self.call(async move {
            redis::pipe()
                .atomic()
                .del(&chg)
                .del(&taken)
                .hset(&meta, "tracking", "1")
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub async fn write(
        &self,
        keys: &TenantKeys,
        data_key: &str,
        epoch: Option<u64>,
        op: WriteOp<'_>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut c = self.conn.clone();
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
        };
        invocation.arg(suffix);
        let reply: Vec<String> = self
            .call(async move { invocation.invoke_async(&mut c).await })
            .await?;
        let num = |i: usize| reply.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => WriteOutcome::Ok(reply.get(1).cloned().unwrap_or_default()),
            Some("unknown") => WriteOutcome::Unknown,
            Some("importing") => WriteOutcome::Importing,
            Some("moved") => WriteOutcome::Moved {
                epoch: num(1),
                to: reply.get(2).cloned().unwrap_or_default(),
            },
            Some("stale") => WriteOutcome::Stale { epoch: num(1) },
            Some("fenced") => WriteOutcome::Fenced,
            _ => {
                return Err(StoreError::BadEntry {
                    key: data_key.to_owned(),
                    reason: format!("unexpected write reply {reply:?}"),
                });
            }
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn.clone();
        let key = key.to_owned();
        self.call(async move { c.get(&key).await }).await
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
        let mut c = self.conn.clone();
        self.call(async move {
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

    /// The authoritative rate-limit check of one request against `limits` of `keys`' tenant.
    pub async fn rate_limit(
        &self,
        keys: &TenantKeys,
        limits: &[&EffectiveLimit],
    ) -> Result<LimitDecision, StoreError> {
        let mut c = self.conn.clone();
        let mut invocation = scripts::RATE_LIMIT.prepare_invoke();
        for limit in limits {
            invocation.key(keys.rate_limit(&limit.name));
            let alg = match limit.algorithm {
                Algorithm::TokenBucket => "tb",
                Algorithm::SlidingWindow => "sw",
            };
            invocation
                .arg(alg)
                .arg(limit.requests)
                .arg(limit.period_ms)
                .arg(limit.burst.max(1));
        }
        let reply: Vec<i64> = self
            .call(async move { invocation.invoke_async(&mut c).await })
            .await?;
        let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(LimitDecision {
            allowed: at(0) == 1,
            limit: at(1) as usize,
            remaining: at(2),
            reset_ms: at(3),
            retry_after_ms: at(4),
        })
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
        let mut c = self.conn.clone();
        let mut invocation = scripts::TAKE_CHANGES.key(keys.changes());
        invocation.key(keys.changes_taken());
        self.call(async move { invocation.invoke_async(&mut c).await })
            .await
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
        let mut c = self.conn.clone();
        let chg = if taken {
            keys.changes_taken()
        } else {
            keys.changes()
        };
        let (next, suffixes): (u64, Vec<String>) = self
            .call(async move {
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
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for k in full_keys {
            pipe.cmd("TYPE").arg(k).cmd("PTTL").arg(k);
        }
        let meta: Vec<redis::Value> = self.call(async { pipe.query_async(&mut c).await }).await?;
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
        let mut c = self.conn.clone();
        let values: Vec<redis::Value> = self.call(async { pipe.query_async(&mut c).await }).await?;
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
        let mut limiter = redis::pipe();
        limiter.atomic();
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
                    limiter.cmd("SET").arg(&full).arg(decode(base64)?);
                }
                Value::Hash { fields } => {
                    limiter.cmd("DEL").arg(&full);
                    if !fields.is_empty() {
                        let mut cmd = redis::cmd("HSET");
                        cmd.arg(&full);
                        for (f, v) in fields {
                            cmd.arg(f).arg(decode(v)?);
                        }
                        limiter.add_command(cmd);
                    }
                }
                Value::Deleted => {
                    limiter.cmd("DEL").arg(&full);
                }
            }
            if let Some(ttl) = entry.ttl_ms
                && !matches!(entry.value, Value::Deleted)
            {
                limiter.cmd("PEXPIRE").arg(&full).arg(ttl);
            }
        }
        if data_entries > 0 {
            let mut c = self.conn.clone();
            let reply: Vec<String> = self
                .call(async move { data.invoke_async(&mut c).await })
                .await?;
            if reply.first().map(String::as_str) != Some("ok") {
                return Err(StoreError::NotImporting {
                    state: reply.get(1).cloned().unwrap_or_default(),
                });
            }
        }
        if limiter_entries > 0 {
            let mut c = self.conn.clone();
            self.call(async move { limiter.query_async::<()>(&mut c).await })
                .await?;
        }
        Ok(())
    }

    /// Count and digest of the tenant's data (items and counters) as the write and import
    /// scripts keep them: one call, whatever the tenant's size. See
    /// [`cellstack_api::admin::Checksum`].
    pub async fn checksum(&self, keys: &TenantKeys) -> Result<(u64, String), StoreError> {
        let mut c = self.conn.clone();
        let meta = keys.meta();
        let (n, d): (Option<u64>, Option<String>) = self
            .call(async move {
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

    /// Deletes every key of the tenant, its record included, in batches.
    pub async fn purge(&self, keys: &TenantKeys) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut cursor = 0u64;
        loop {
            let pattern = keys.scan_pattern();
            let (next, found) = self.scan_page(&pattern, cursor, 500).await?;
            if !found.is_empty() {
                let mut c = self.conn.clone();
                let n: u64 = self
                    .call(async move { redis::cmd("UNLINK").arg(&found).query_async(&mut c).await })
                    .await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

fn state_str(s: TenantState) -> &'static str {
    match s {
        TenantState::Importing => "importing",
        TenantState::Active => "active",
        TenantState::Fenced => "fenced",
        TenantState::Moved => "moved",
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
