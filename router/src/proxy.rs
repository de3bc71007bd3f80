//! The request path, in explicit phases (after Pingora's `ProxyHttp`):
//!
//! 1. **identify** the tenant ([`crate::identify`]) — 400 with the reason;
//! 2. **look up** its route in the current snapshot (lock-free, no I/O) — 404 unknown tenant,
//!    503 when no table has been loaded yet;
//! 3. **edge pre-limit** from the table's edge limits (local token bucket) — 429;
//! 4. **pick upstream**: the tenant's cell, one of its k lanes, around ejected lanes
//!    ([`crate::lanes`]);
//! 5. **forward** with the tenant, epoch and request-id headers, a per-try timeout inside an
//!    overall deadline, over a lane connection of [`crate::upstream`] (HTTP/1.1 driven from this
//!    task, or h2); the response is streamed back. Then, by the cell's answer:
//!    - `moved`: followed once, to the named cell;
//!    - `stale_epoch`: retried once at the cell's epoch;
//!    - `fenced` (the tenant is moving; nothing was applied): a buffered request waits a jittered
//!      10 ms doubling to 100 ms, re-reads the current table and tries again — where the table
//!      now routes the tenant if it names another cell or a newer epoch, else the same cell —
//!      until the fence lifts (a `moved` answer after the flip is still followed), at most
//!      [`MAX_FENCE_WAITS`] times and never past the deadline; then, and for a streamed body at
//!      once, the cell's 503 + `Retry-After` goes to the client. The cell refuses cheaply, so
//!      these waits are not charged to the retry budget; they are counted as retries with
//!      reason `fenced`;
//!    - failures: retried on another lane when safe (idempotent method, or the cell said nothing
//!      was applied) and the retry budget allows;
//! 6. **log and measure**.
//!
//! In-flight requests are bounded: past the bound the router answers 503 at once.
//!
//! The path allocates little per request: labels share the snapshot's cell names, the URI and
//! headers of the incoming request are reused rather than re-formatted, and the request id is
//! written into a stack buffer.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use cellstack_api::{
    routing::EdgeLimit,
    wire::{ErrorBody, ErrorCode, header_name as names},
};
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use tower::retry::budget::{Budget, TpsBudget};

use crate::{
    identify::{self, TenantFrom},
    lanes::Outliers,
    metrics::{Metrics, RequestLabels},
    table_store::TableStore,
    upstream::{Protocol, Upstreams},
};

/// Request bodies up to this size are buffered so the request can be retried; larger ones are
/// streamed once.
pub const RETRY_BODY_LIMIT: usize = 64 * 1024;

/// Most edge-limit buckets kept before the map is reset (buckets refill from scratch).
const MAX_EDGE_BUCKETS: usize = 200_000;

/// Most times one request waits for its tenant's fence to lift (about 4 s of pauses), whatever
/// its deadline.
pub const MAX_FENCE_WAITS: u32 = 50;

/// A cell's refusal is a small JSON body; one up to this size is read whole so its HTTP/1.1
/// connection is kept (dropping an unread body closes the connection).
const REFUSAL_BODY_LIMIT: usize = 4096;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub tenant_from: TenantFrom,
    pub try_timeout: Duration,
    pub deadline: Duration,
    pub max_in_flight: usize,
    pub upstream_protocol: Protocol,
}

pub struct Proxy {
    pub config: ProxyConfig,
    pub tables: Arc<TableStore>,
    pub outliers: Outliers,
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
    edge: DashMap<String, Arc<DefaultDirectRateLimiter>>,
    ids: RandomState,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(code, message);
    let mut res = (
        StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_GATEWAY),
        axum::Json(&body),
    )
        .into_response();
    res.headers_mut()
        .insert(names::ERROR, HeaderValue::from_static(code.as_str()));
    if matches!(
        code,
        ErrorCode::Overloaded | ErrorCode::RateLimited | ErrorCode::Unavailable
    ) {
        res.headers_mut()
            .insert(names::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

/// Headers that describe one hop, not the request.
const HOP_BY_HOP: [HeaderName; 8] = [
    axum::http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    axum::http::header::TRANSFER_ENCODING,
    axum::http::header::TE,
    axum::http::header::TRAILER,
    axum::http::header::UPGRADE,
    axum::http::header::HOST,
];

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        tables: Arc<TableStore>,
        outliers: Outliers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            in_flight: InFlight::new(config.max_in_flight),
            config,
            tables,
            outliers,
            metrics,
            edge: DashMap::new(),
            ids: RandomState::new(),
        }
    }

    fn edge_allows(&self, tenant: &str, limit: &EdgeLimit) -> bool {
        let key = format!(
            "{tenant}/{}/{}/{}",
            limit.requests, limit.period_ms, limit.burst
        );
        let bucket = match self.edge.get(&key) {
            Some(b) => b.clone(),
            None => {
                let per = Duration::from_millis(u64::from(limit.period_ms)) / limit.requests.max(1);
                let Some(quota) = Quota::with_period(per)
                    .zip(NonZeroU32::new(limit.burst.max(limit.requests)))
                    .map(|(q, b)| q.allow_burst(b))
                else {
                    return true;
                };
                if self.edge.len() >= MAX_EDGE_BUCKETS {
                    self.edge.clear();
                }
                let b = Arc::new(RateLimiter::direct(quota));
                self.edge.insert(key, b.clone());
                b
            }
        };
        bucket.check().is_ok()
    }
}

/// The bound on requests in flight, without a lock: past it a request is answered 503 at once,
/// nobody waits for a slot, so a counter is all it takes. (tokio's `Semaphore` would lock its
/// wait-queue mutex, shared by every worker, each time a permit is dropped.)
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// One request counted in flight, until dropped.
pub struct Entered<'a>(&'a InFlight);

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Counts a request in, unless `max` are in flight already.
    pub fn try_enter(&self) -> Option<Entered<'_>> {
        // Counted first, checked after: a burst may overshoot for an instant, but no request is
        // let in while `max` others are.
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Entered(self))
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed).min(self.max)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most distinct request label sets a worker caches counters for before the cache is reset.
const MAX_CACHED_COUNTERS: usize = 10_000;

/// The request path's state that belongs to one worker ([`crate::serve`]): its connections to
/// lanes, its share of the retry budgets and its handles on the request metrics. Only that
/// worker's thread uses it, so its locks are never contended and no other core writes its
/// cache lines.
pub struct WorkerState {
    /// The worker's number: its shard of the latency histogram.
    pub index: usize,
    pub upstreams: Upstreams,
    pub budgets: RetryBudgets,
    /// Counters of `requests`, by label set, looked up without the family's shared lock.
    counters: Mutex<HashMap<RequestLabels, Counter>>,
    /// Requests this worker has started.
    seq: AtomicU64,
}

impl WorkerState {
    /// The state of worker `index` of `workers`.
    pub fn new(proxy: &Proxy, index: usize, workers: usize) -> Self {
        Self {
            index,
            upstreams: Upstreams::new(
                proxy.config.upstream_protocol,
                proxy.metrics.upstream_connections.clone(),
            ),
            budgets: RetryBudgets::share(workers),
            counters: Mutex::default(),
            seq: AtomicU64::new(0),
        }
    }

    fn count(&self, metrics: &Metrics, labels: RequestLabels) {
        let Ok(mut counters) = self.counters.lock() else {
            metrics.requests.get_or_create(&labels).inc();
            return;
        };
        if let Some(c) = counters.get(&labels) {
            c.inc();
            return;
        }
        if counters.len() >= MAX_CACHED_COUNTERS {
            counters.clear();
        }
        let c = metrics.requests.get_or_create(&labels).clone();
        c.inc();
        counters.insert(labels, c);
    }
}

/// The router's handler for every tenant request: [`crate::serve`] calls it with the state of
/// the worker that serves the connection.
pub async fn handle(proxy: &Proxy, worker: &WorkerState, req: Request) -> Response {
    let started = Instant::now();
    let Some(_entered) = proxy.in_flight.try_enter() else {
        worker.count(&proxy.metrics, RequestLabels::refused(503));
        return error(
            ErrorCode::Overloaded,
            "the router is at its in-flight limit; retry shortly",
        );
    };
    let (response, cell, lane) = route(proxy, worker, req, started).await;
    let labels = RequestLabels {
        cell,
        lane,
        code: response.status().as_u16(),
    };
    worker.count(&proxy.metrics, labels);
    proxy
        .metrics
        .duration
        .observe(worker.index, started.elapsed());
    response
}

/// Phases 1-5, for a request received at `started`. Returns the response and, when one was
/// chosen, the cell and lane.
async fn route(
    proxy: &Proxy,
    worker: &WorkerState,
    req: Request,
    started: Instant,
) -> (Response, Option<Arc<str>>, Option<u32>) {
    let (mut parts, body) = req.into_parts();
    // 1. identify
    let id = match identify::identify(&proxy.config.tenant_from, &parts.headers, &parts.uri) {
        Ok(id) => id,
        // Missing or malformed, it is `invalid_tenant` on the wire.
        Err(e) => return (error(ErrorCode::InvalidTenant, e.to_string()), None, None),
    };
    let tenant = id.tenant.as_str();
    // 2. look up
    let Some(snapshot) = proxy.tables.current() else {
        return (
            error(
                ErrorCode::Unavailable,
                "the router has no routing table yet",
            ),
            None,
            None,
        );
    };
    let Some(route) = snapshot.route(tenant) else {
        return (
            error(
                ErrorCode::UnknownTenant,
                format!(
                    "tenant {tenant} is not in routing table version {}",
                    snapshot.version()
                ),
            ),
            None,
            None,
        );
    };
    // 3. edge pre-limit
    if let Some(limit) = route.edge_limit
        && !proxy.edge_allows(tenant, limit)
    {
        proxy.metrics.edge_limited.inc();
        let mut res = error(
            ErrorCode::RateLimited,
            format!(
                "tenant {tenant} is over its edge limit of {} requests per {} ms",
                limit.requests, limit.period_ms
            ),
        );
        res.headers_mut()
            .insert(names::RATELIMIT_LIMIT, HeaderValue::from(limit.requests));
        return (res, None, None);
    }
    // Bodies small enough are buffered so the request can be retried.
    let small = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= RETRY_BODY_LIMIT)
        || matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
    let mut streamed = None;
    let buffered = if small {
        match axum::body::to_bytes(body, RETRY_BODY_LIMIT).await {
            Ok(b) => Some(b),
            Err(_) => {
                return (
                    error(
                        ErrorCode::PayloadTooLarge,
                        "request body larger than its Content-Length or the retry buffer",
                    ),
                    None,
                    None,
                );
            }
        }
    } else {
        streamed = Some(body);
        None
    };
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    );
    // The upstream URI is origin-form: the request's own path and query (shared, not
    // re-formatted), or the path left once a path-prefix tenant is stripped.
    let uri = match &id.forward_path {
        None => parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone())),
        Some(path) => match path.parse::<Uri>() {
            Ok(u) => u,
            Err(e) => {
                return (
                    error(
                        ErrorCode::BadRequest,
                        format!("cannot build the upstream URI: {e}"),
                    ),
                    None,
                    None,
                );
            }
        },
    };
    // This request's number in its worker: seeds its request id, lane choice and jitter.
    let seq = worker.seq.fetch_add(1, Ordering::Relaxed);
    let request_id = match parts
        .headers
        .get(names::REQUEST_ID)
        .filter(|v| v.to_str().is_ok())
    {
        Some(v) => v.clone(),
        None => new_request_id(proxy.ids.hash_one((worker.index, seq))),
    };
    let headers = upstream_headers(std::mem::take(&mut parts.headers), tenant, request_id);

    if let Some(cell) = snapshot.table().cells.get(route.tenant.cell as usize) {
        worker.budgets.deposit(&cell.name);
    }
    let deadline = started + proxy.config.deadline;
    let shard_variant = route.tenant.shard_variant;
    let mut lanes = route.lanes;
    let mut epoch = Some(route.tenant.epoch);
    // The snapshot and cell this attempt goes to; following a move switches both.
    let mut snap = snapshot.clone();
    let mut cell_idx = route.tenant.cell as usize;
    let mut exclude = None;
    let mut followed = false;
    let mut tries = 0u32;
    let mut fence_waits = 0u32;
    loop {
        tries += 1;
        // Tries after a fence wait are not retries: they count neither against the retry limit
        // nor towards the failure backoff.
        let attempt = tries - fence_waits;
        if exclude.is_some() {
            // A retry after a failure: back off briefly, with jitter so a burst of failed
            // requests does not retry in lockstep, and never past the deadline.
            let pause = backoff(attempt, proxy.ids.hash_one((seq, tries)));
            if Instant::now() + pause >= deadline {
                return (
                    error(
                        ErrorCode::Timeout,
                        "the request deadline passed while retrying",
                    ),
                    snap.cell_name(cell_idx).cloned(),
                    exclude,
                );
            }
            tokio::time::sleep(pause).await;
        }
        let cell = &snap.table().cells[cell_idx];
        let cell_label = snap.cell_name(cell_idx).cloned();
        // 4. pick upstream
        let now = Instant::now();
        let Some(lane) =
            proxy
                .outliers
                .pick(&cell.name, lanes, seq + u64::from(tries), exclude, now)
        else {
            return (
                error(
                    ErrorCode::Overloaded,
                    format!("cell {} has no lane for tenant {tenant}", cell.name),
                ),
                cell_label.clone(),
                None,
            );
        };
        let Some(addr) = cell.lanes.get(lane as usize) else {
            return (
                error(
                    ErrorCode::Unavailable,
                    "routing table names a lane the cell does not have",
                ),
                cell_label.clone(),
                None,
            );
        };
        // 5. forward
        let body = match (&buffered, streamed.take()) {
            (Some(b), _) => Body::from(b.clone()),
            (None, Some(s)) => s,
            (None, None) => {
                return (
                    error(
                        ErrorCode::Unavailable,
                        "a streamed request body cannot be retried",
                    ),
                    cell_label.clone(),
                    Some(lane),
                );
            }
        };
        let upstream = build_request(&parts.method, &uri, &headers, epoch, body);
        // `now` (taken for the lane choice) stands for the send time: microseconds apart.
        let sent = now;
        let Some(left) = deadline.checked_duration_since(sent) else {
            return (
                error(ErrorCode::Timeout, "the request deadline passed"),
                cell_label,
                Some(lane),
            );
        };
        let outcome = tokio::time::timeout_at(
            tokio::time::Instant::from_std(sent + proxy.config.try_timeout.min(left)),
            worker.upstreams.send(addr, upstream),
        )
        .await;
        let can_retry = |nothing_applied: bool| {
            (idempotent || nothing_applied) && buffered.is_some() && attempt < 3
        };
        match outcome {
            Ok(Ok(res)) => {
                let code = res
                    .headers()
                    .get(names::ERROR)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<ErrorCode>().ok());
                match code {
                    // The tenant lives elsewhere now: follow once, to the named cell.
                    Some(ErrorCode::Moved) if !followed => {
                        let to = res
                            .headers()
                            .get(names::MOVED_TO)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let fresh = proxy.tables.current();
                        let target = fresh.as_ref().zip(to.as_deref()).and_then(|(f, name)| {
                            let i = f.table().cells.iter().position(|c| c.name == name)?;
                            Some((f.clone(), i))
                        });
                        if let Some((fresh, i)) = target {
                            followed = true;
                            proxy
                                .metrics
                                .retries
                                .get_or_create(&crate::metrics::RetryLabels { reason: "moved" })
                                .inc();
                            lanes = fresh.table().cells[i]
                                .shard_params()
                                .map(|p| cellstack_api::shard::lanes_for(tenant, shard_variant, p))
                                .unwrap_or_default();
                            epoch = res
                                .headers()
                                .get(names::EPOCH)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok());
                            exclude = None;
                            snap = fresh;
                            cell_idx = i;
                            continue;
                        }
                        return (forward_response(res), cell_label.clone(), Some(lane));
                    }
                    // Our epoch is not the cell's: retry once at the cell's epoch.
                    Some(ErrorCode::StaleEpoch) if !followed => {
                        followed = true;
                        proxy
                            .metrics
                            .retries
                            .get_or_create(&crate::metrics::RetryLabels {
                                reason: "stale_epoch",
                            })
                            .inc();
                        epoch = res
                            .headers()
                            .get(names::EPOCH)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        continue;
                    }
                    // Writes are paused while the tenant moves, and nothing was applied: wait for
                    // the flip rather than fail, then go where the tenant is.
                    Some(ErrorCode::Fenced) if buffered.is_some() => {
                        // The cell is healthy: it refused by design.
                        proxy.outliers.success(&cell.name, lane);
                        let took = sent.elapsed();
                        let res = read_refusal(res, deadline).await;
                        let pause = fence_backoff(fence_waits, proxy.ids.hash_one((seq, tries)));
                        // The try after the pause needs about as long as this one took.
                        if fence_waits >= MAX_FENCE_WAITS
                            || Instant::now() + pause + took >= deadline
                        {
                            proxy.metrics.fence_outlasted.inc();
                            return (forward_response(res), cell_label.clone(), Some(lane));
                        }
                        fence_waits += 1;
                        // Not charged to the retry budget: a fenced cell refuses cheaply, and the
                        // waits are bounded by the deadline and `MAX_FENCE_WAITS`.
                        proxy
                            .metrics
                            .retries
                            .get_or_create(&crate::metrics::RetryLabels { reason: "fenced" })
                            .inc();
                        tokio::time::sleep(pause).await;
                        // The flip publishes a new route: if the table now sends the tenant
                        // elsewhere, or at a newer epoch, follow it. A `moved` answer from this
                        // cell is followed as usual (the wait does not use up the follow).
                        let fresh = proxy.tables.current();
                        let rerouted = fresh.as_ref().and_then(|f| {
                            let r = f.route(tenant)?;
                            (r.cell.name != cell.name || epoch.is_some_and(|e| r.tenant.epoch > e))
                                .then_some((r.tenant.cell as usize, r.lanes, r.tenant.epoch))
                        });
                        if let (Some(fresh), Some((i, l, e))) = (fresh, rerouted) {
                            snap = fresh;
                            cell_idx = i;
                            lanes = l;
                            epoch = Some(e);
                        }
                        exclude = None;
                        continue;
                    }
                    Some(c @ (ErrorCode::Shed | ErrorCode::Unavailable))
                        if can_retry(c.nothing_applied())
                            && retry_allowed(proxy, worker, &cell.name, "refused") =>
                    {
                        proxy.outliers.failure(&cell.name, lane, Instant::now());
                        exclude = Some(lane);
                        continue;
                    }
                    _ => {}
                }
                // A 5xx the cell did not explain, or its own `internal` failure: the lane is
                // failing (other coded 5xx were handled above).
                if res.status().is_server_error() && code.is_none_or(|c| c == ErrorCode::Internal) {
                    proxy.outliers.failure(&cell.name, lane, Instant::now());
                    if can_retry(false) && retry_allowed(proxy, worker, &cell.name, "5xx") {
                        exclude = Some(lane);
                        continue;
                    }
                } else {
                    proxy.outliers.success(&cell.name, lane);
                }
                return (forward_response(res), cell_label.clone(), Some(lane));
            }
            Ok(Err(e)) => {
                proxy.outliers.failure(&cell.name, lane, Instant::now());
                // A failed connect sent nothing.
                let nothing_sent = e.nothing_sent();
                if can_retry(nothing_sent) && retry_allowed(proxy, worker, &cell.name, "error") {
                    exclude = Some(lane);
                    continue;
                }
                return (
                    error(
                        ErrorCode::Unavailable,
                        format!("cell {} lane {lane} failed: {e}", cell.name),
                    ),
                    cell_label.clone(),
                    Some(lane),
                );
            }
            Err(_) => {
                proxy.outliers.failure(&cell.name, lane, Instant::now());
                if can_retry(false)
                    && Instant::now() < deadline
                    && retry_allowed(proxy, worker, &cell.name, "timeout")
                {
                    exclude = Some(lane);
                    continue;
                }
                return (
                    error(
                        ErrorCode::Timeout,
                        format!("cell {} lane {lane} did not answer in time", cell.name),
                    ),
                    cell_label.clone(),
                    Some(lane),
                );
            }
        }
    }
}

/// Pause before retry number `attempt` (2, 3, ...): 5 ms doubling per attempt, with "full
/// jitter" — a uniform share of it picked by `random`.
fn backoff(attempt: u32, random: u64) -> Duration {
    let cap = Duration::from_millis(5) * (1u32 << attempt.saturating_sub(2).min(6));
    cap.mul_f64((random % 1000) as f64 / 1000.0)
}

/// Pause before fence wait number `wait` (0, 1, ...): 10 ms doubling per wait up to 100 ms, with
/// "equal jitter" — half of it fixed, half a uniform share picked by `random` — so a burst of
/// fenced writes neither retries in lockstep nor comes back at once (full jitter, as in
/// [`backoff`], can draw a zero pause).
fn fence_backoff(wait: u32, random: u64) -> Duration {
    let cap = (Duration::from_millis(10) * (1u32 << wait.min(4))).min(Duration::from_millis(100));
    cap / 2 + (cap / 2).mul_f64((random % 1000) as f64 / 1000.0)
}

/// Reads a small cell answer whole, until `until` at the latest, so its connection goes back to
/// the lane, and gives the same answer back. A body that fails, is too large or late is left out
/// (the status and headers carry the refusal).
async fn read_refusal(
    res: axum::http::Response<Body>,
    until: Instant,
) -> axum::http::Response<Body> {
    let (mut parts, body) = res.into_parts();
    let read = tokio::time::timeout_at(
        tokio::time::Instant::from_std(until),
        axum::body::to_bytes(body, REFUSAL_BODY_LIMIT),
    )
    .await;
    match read {
        Ok(Ok(bytes)) => axum::http::Response::from_parts(parts, Body::from(bytes)),
        _ => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            axum::http::Response::from_parts(parts, Body::empty())
        }
    }
}

/// Retries a cell gets per second whatever its traffic, over all workers.
pub const RETRY_FLOOR_PER_SEC: u32 = 10;

/// Retry budgets, one per cell: at most 10 % extra load on a cell from retries, with a floor
/// of [`RETRY_FLOOR_PER_SEC`]. Per cell because cells are the unit of blast radius: a failing
/// cell spends its own budget on retries, never the budget its neighbours' tenants need for a
/// transient refusal. Keyed by cell name, so a budget survives table swaps; a cell that left
/// the table keeps a few bytes until the process ends.
///
/// Each worker keeps its own set ([`RetryBudgets::share`]): 10 % of each worker's requests is
/// 10 % of them all, and the floor is split between the workers. A budget shared by all would
/// put a lock and a clock read that every worker takes on every request on one cache line.
pub struct RetryBudgets {
    cells: DashMap<String, TpsBudget>,
    floor_per_sec: u32,
}

impl Default for RetryBudgets {
    /// The budgets of a router with one worker.
    fn default() -> Self {
        Self::share(1)
    }
}

impl RetryBudgets {
    /// One worker's share of the budgets, of `workers`.
    pub fn share(workers: usize) -> Self {
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        Self {
            cells: DashMap::new(),
            floor_per_sec: (RETRY_FLOOR_PER_SEC / workers).max(1),
        }
    }

    fn new_budget(&self) -> TpsBudget {
        TpsBudget::new(Duration::from_secs(10), self.floor_per_sec, 0.1)
    }

    /// Records a request to `cell`.
    pub fn deposit(&self, cell: &str) {
        self.with(cell, |b| b.deposit());
    }

    /// Takes one retry from `cell`'s budget, if it has one left.
    pub fn withdraw(&self, cell: &str) -> bool {
        self.with(cell, |b| b.withdraw())
    }

    /// Runs `f` on `cell`'s budget, made on first use (the lookup allocates only then).
    fn with<R>(&self, cell: &str, f: impl FnOnce(&TpsBudget) -> R) -> R {
        match self.cells.get(cell) {
            Some(budget) => f(&budget),
            None => f(&self
                .cells
                .entry(cell.to_owned())
                .or_insert_with(|| self.new_budget())),
        }
    }
}

/// Whether `cell`'s retry budget allows one more retry; counts the retry, or the refusal.
fn retry_allowed(proxy: &Proxy, worker: &WorkerState, cell: &str, reason: &'static str) -> bool {
    if worker.budgets.withdraw(cell) {
        proxy
            .metrics
            .retries
            .get_or_create(&crate::metrics::RetryLabels { reason })
            .inc();
        true
    } else {
        proxy
            .metrics
            .budget_exhausted
            .get_or_create(&crate::metrics::CellLabels {
                cell: cell.to_owned(),
            })
            .inc();
        false
    }
}

/// The headers sent to lanes, built once per request from the client's: hop-by-hop ones
/// removed, the tenant and request-id headers set. The epoch is set per try.
fn upstream_headers(
    mut headers: axum::http::HeaderMap,
    tenant: &str,
    request_id: HeaderValue,
) -> axum::http::HeaderMap {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    // A tenant read from the header is already there, once, as it was sent.
    let mut sent = headers.get_all(names::TENANT).iter();
    let as_sent = sent
        .next()
        .is_some_and(|v| v.as_bytes() == tenant.as_bytes())
        && sent.next().is_none();
    if !as_sent && let Ok(v) = HeaderValue::from_str(tenant) {
        headers.insert(names::TENANT, v);
    }
    headers.insert(names::REQUEST_ID, request_id);
    headers
}

/// A request id: 16 hex digits of `random`, formatted without a heap string.
fn new_request_id(random: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Builds one try's request to a lane: the client's method, the prepared headers with this
/// try's epoch, and the body. The URI is origin-form; [`Upstreams`] adds `Host`/`:authority`.
fn build_request(
    method: &Method,
    uri: &Uri,
    headers: &axum::http::HeaderMap,
    epoch: Option<u64>,
    body: Body,
) -> axum::http::Request<Body> {
    let mut req = axum::http::Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    *h = headers.clone();
    match epoch {
        Some(e) => {
            h.insert(names::EPOCH, HeaderValue::from(e));
        }
        None => {
            h.remove(names::EPOCH);
        }
    }
    req
}

/// Streams a lane's answer back to the client.
fn forward_response(mut res: axum::http::Response<Body>) -> Response {
    for h in &HOP_BY_HOP {
        res.headers_mut().remove(h);
    }
    res
}

#[cfg(test)]
mod tests {
    use cellstack_api::wire::header;

    use super::*;

    #[test]
    fn a_failing_cell_spends_its_own_retry_budget_not_its_neighbours() {
        let budgets = RetryBudgets::default();
        for _ in 0..100 {
            budgets.deposit("alpha");
            budgets.deposit("bravo");
        }
        // alpha fails every request and retries until its budget says no.
        let mut spent = 0;
        while budgets.withdraw("alpha") {
            spent += 1;
            assert!(spent < 10_000, "alpha's budget never ran out");
        }
        assert!(spent > 0);
        assert!(
            budgets.withdraw("bravo"),
            "bravo's tenants keep their retries while alpha's budget is spent"
        );
    }

    #[test]
    fn the_in_flight_bound_lets_in_max_requests_and_frees_a_slot_on_drop() {
        let bound = InFlight::new(2);
        let a = bound.try_enter().expect("first");
        let b = bound.try_enter().expect("second");
        assert!(bound.try_enter().is_none(), "a third is refused");
        assert_eq!(bound.current(), 2, "a refusal leaves the count alone");
        drop(a);
        assert_eq!(bound.current(), 1);
        let c = bound.try_enter().expect("the freed slot");
        drop((b, c));
        assert_eq!(bound.current(), 0);
        assert!(
            InFlight::new(0).try_enter().is_none(),
            "max 0 lets nothing in"
        );
    }

    #[test]
    fn request_ids_are_16_hex_digits() {
        assert_eq!(new_request_id(0x0123_4567_89ab_cdef), "0123456789abcdef");
        assert_eq!(new_request_id(0), "0000000000000000");
        assert_eq!(new_request_id(u64::MAX), "ffffffffffffffff");
    }

    #[test]
    fn upstream_headers_drop_hop_by_hop_and_name_tenant_and_request() {
        let mut client = axum::http::HeaderMap::new();
        client.insert("connection", HeaderValue::from_static("keep-alive"));
        client.insert("host", HeaderValue::from_static("router.example"));
        client.insert("x-other", HeaderValue::from_static("kept"));
        client.insert(header::EPOCH, HeaderValue::from_static("7"));
        let h = upstream_headers(client, "acme", HeaderValue::from_static("rid"));
        assert!(h.get("connection").is_none() && h.get("host").is_none());
        assert_eq!(h["x-other"], "kept");
        assert_eq!(h[header::TENANT], "acme");
        assert_eq!(h[header::REQUEST_ID], "rid");
        let uri = Uri::from_static("/v1/whoami?x=1");
        let req = build_request(&Method::PUT, &uri, &h, Some(3), Body::empty());
        assert_eq!(req.headers()[header::EPOCH], "3");
        assert_eq!(req.uri(), "/v1/whoami?x=1");
        assert_eq!(req.method(), Method::PUT);
        let req = build_request(&Method::GET, &uri, &h, None, Body::empty());
        assert!(req.headers().get(header::EPOCH).is_none());
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_cap() {
        assert!(backoff(2, 999) <= Duration::from_millis(5));
        assert!(
            backoff(3, 999) <= Duration::from_millis(10)
                && backoff(3, 999) > Duration::from_millis(9)
        );
        assert_eq!(backoff(2, 0), Duration::ZERO);
        let spread: std::collections::BTreeSet<_> =
            (0..50u64).map(|r| backoff(4, r * 37)).collect();
        assert!(spread.len() > 10, "different draws give different pauses");
        assert!(backoff(40, 999) <= Duration::from_millis(320), "capped");
    }

    #[test]
    fn fence_backoff_doubles_from_10_ms_to_100_ms_and_never_draws_zero() {
        let ms = Duration::from_millis;
        assert_eq!(fence_backoff(0, 0), ms(5));
        assert!(fence_backoff(0, 999) <= ms(10) && fence_backoff(0, 999) > ms(9));
        assert_eq!(fence_backoff(1, 0), ms(10));
        assert_eq!(fence_backoff(3, 0), ms(40));
        for wait in [4, 5, 49, u32::MAX] {
            assert_eq!(fence_backoff(wait, 0), ms(50), "half of the cap at least");
            assert!(fence_backoff(wait, 999) <= ms(100), "capped");
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50u64).map(|r| fence_backoff(2, r * 37)).collect();
        assert!(spread.len() > 10, "different draws give different pauses");
        // The most a request can spend waiting for a fence, whatever its deadline.
        let most: Duration = (0..MAX_FENCE_WAITS).map(|w| fence_backoff(w, 999)).sum();
        assert!(most < Duration::from_secs(5), "{most:?}");
    }
}
