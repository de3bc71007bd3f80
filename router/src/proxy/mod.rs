//! The request path, in explicit phases (after Pingora's `ProxyHttp`). [`handle`] and
//! [`pipeline`] read as the list below; each phase's rules live in its own module.
//!
//! 1. **identify** the tenant ([`crate::identify`]) — 400 with the reason, or 401 when it comes
//!    from a bearer token that is missing or not valid ([`crate::jwt`]);
//! 2. **look up** its route in the current snapshot (lock-free, no I/O; [`context::Target`]) —
//!    404 unknown tenant, 503 when no table has been loaded yet;
//! 3. **admit** ([`admission`]): the in-flight bound — checked first of all, before phase 1,
//!    so refusing under overload costs least (503) — and the tenant's edge pre-limit (429);
//! 4. **pick a lane**: one of the tenant's k lanes in its cell, around ejected lanes and the
//!    lane that just failed ([`crate::lanes`]);
//! 5. **forward** with the tenant, epoch and request-id headers ([`forward`]), a per-try
//!    timeout inside an overall deadline, over a lane connection of [`crate::upstream`]
//!    (HTTP/1.1 driven from this task, or h2); the response is streamed back;
//! 6. **classify** the answer ([`classify`], a pure function) and act on it: return it, retry on
//!    another lane (when [`retry`] allows: safe to repeat, the body at hand, the cell's retry
//!    budget), follow a `moved` answer or retry a `stale_epoch` one at the cell's epoch (once),
//!    or wait out a `fenced` one (bounded by [`MAX_FENCE_WAITS`] and the deadline, not charged
//!    to the budget) — then back to 4;
//! 7. **measure**: the request counter by cell, lane and status, and the latency histogram.
//!
//! Phases 4-6 run with a per-request [`context::Context`]: what is sent, where the next try
//! goes, and the tries so far.
//!
//! The path allocates little per request: labels share the snapshot's cell names, the URI and
//! headers of the incoming request are reused rather than re-formatted, and the request id is
//! written into a stack buffer.

mod admission;
mod classify;
mod context;
mod forward;
mod reply;
pub(crate) mod retry;
mod worker;

use std::{
    convert::Infallible,
    hash::{BuildHasher, RandomState},
    ops::ControlFlow::{self, Break, Continue},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::Request, response::Response};
use cellstack_api::wire::{ErrorCode, header_name as names};
use tracing::{Instrument, field::Empty};

pub use self::{
    admission::{EdgeLimits, InFlight},
    retry::{MAX_FENCE_WAITS, RETRY_FLOOR_PER_SEC, RetryBudgets},
    worker::WorkerState,
};
use self::{
    classify::classify,
    context::{Arrival, Context, Target},
};
use crate::{
    identify::{self, IdentifyError, TenantFrom},
    jwt::Verifier,
    lanes::Outliers,
    metrics::{Metrics, RequestLabels},
    table_store::TableStore,
    upstream::Protocol,
};

/// Request bodies up to this size are buffered so the request can be retried; larger ones are
/// streamed once.
pub const RETRY_BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub tenant_from: TenantFrom,
    /// The key set of `--tenant-from jwt`.
    pub jwt: Option<Arc<Verifier>>,
    pub try_timeout: Duration,
    pub deadline: Duration,
    pub max_in_flight: usize,
    pub upstream_protocol: Protocol,
    /// TLS to lanes (`--upstream-ca-file`).
    pub upstream_tls: Option<Arc<cellstack_runtime::tls::TrustStore>>,
}

/// What every worker's requests share.
pub struct Proxy {
    pub config: ProxyConfig,
    pub tables: Arc<TableStore>,
    pub outliers: Outliers,
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
    edge: EdgeLimits,
    ids: RandomState,
}

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
            edge: EdgeLimits::default(),
            ids: RandomState::new(),
        }
    }
}

/// How a request ended: the client's answer and, when one was chosen, the cell and lane —
/// what phase 7 measures.
struct Routed {
    response: Response,
    cell: Option<Arc<str>>,
    lane: Option<u32>,
}

impl Routed {
    /// Ended before a cell was chosen.
    fn refused(response: Response) -> Self {
        Self {
            response,
            cell: None,
            lane: None,
        }
    }
}

/// The router's handler for every tenant request: [`crate::serve`] calls it with the state of
/// the worker that serves the connection.
///
/// The request runs in a `request` span (server kind, `debug`) carrying its request id — the
/// client's `x-request-id` when it sent a usable one, else a new one — so every log line it
/// causes names it; with traces on, the span continues the client's W3C trace context, and
/// phases 1-3 and each try are child spans.
pub async fn handle(proxy: &Proxy, worker: &WorkerState, req: Request) -> Response {
    let started = Instant::now();
    // 3. admit, first gate: the in-flight bound, before any other work.
    let Some(_entered) = proxy.in_flight.try_enter() else {
        worker.count(&proxy.metrics, RequestLabels::refused(503));
        return admission::overloaded();
    };
    let seq = worker.next_seq();
    let request_id = match req
        .headers()
        .get(names::REQUEST_ID)
        .filter(|v| v.to_str().is_ok())
    {
        Some(v) => v.clone(),
        None => forward::new_request_id(proxy.ids.hash_one((worker.index, seq))),
    };
    // A debug span: at the default log level it costs nothing (a proxy's hot path; the router
    // writes no line at info or above from inside a request), and it is on whenever traces are
    // exported or the router logs at debug (docs/tracing.md).
    let span = tracing::debug_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        tenant = Empty,
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        http.response.status_code = Empty,
    );
    cellstack_runtime::telemetry::continue_trace(&span, req.headers());
    let arrival = Arrival {
        started,
        seq,
        request_id,
    };
    let routed = match pipeline(proxy, worker, req, arrival, &span)
        .instrument(span.clone())
        .await
    {
        Break(routed) => routed,
        Continue(never) => match never {},
    };
    let status = routed.response.status().as_u16();
    span.record("http.response.status_code", status);
    // The access log, at `debug` (`CELLSTACK_LOG=cellstack_router=debug`).
    span.in_scope(|| {
        tracing::debug!(
            status,
            cell = routed.cell.as_deref(),
            lane = routed.lane,
            elapsed_us = started.elapsed().as_micros() as u64,
            "request served"
        );
    });
    // 7. measure
    let labels = RequestLabels {
        cell: routed.cell,
        lane: routed.lane,
        code: routed.response.status().as_u16(),
    };
    worker.count(&proxy.metrics, labels);
    proxy
        .metrics
        .duration
        .observe(worker.index, started.elapsed());
    routed.response
}

/// Phases 1-6 for a request that arrived as `arrival` says (in `request_span`), until one of them ends the request
/// (`Break`) with its answer.
async fn pipeline(
    proxy: &Proxy,
    worker: &WorkerState,
    req: Request,
    arrival: Arrival,
    request_span: &tracing::Span,
) -> ControlFlow<Routed, Infallible> {
    let (parts, body) = req.into_parts();
    let (id, target, edge_limit) = {
        let _phase = tracing::debug_span!("identify").entered();
        // 1. identify
        let id = match identify::identify(
            &proxy.config.tenant_from,
            proxy.config.jwt.as_deref(),
            &parts.headers,
            &parts.uri,
        ) {
            Ok(id) => id,
            Err(IdentifyError::Unauthorized(e)) => {
                return Break(Routed::refused(reply::unauthorized(&e)));
            }
            // Missing or malformed, it is `invalid_tenant` on the wire.
            Err(e) => {
                return Break(Routed::refused(reply::error(
                    ErrorCode::InvalidTenant,
                    e.to_string(),
                )));
            }
        };
        request_span.record("tenant", id.tenant.as_str());
        // 2. look up
        let (target, edge_limit) = Target::look_up(proxy.tables.current(), id.tenant.as_str())?;
        (id, target, edge_limit)
    };
    // 3. admit, second gate: the tenant's edge pre-limit.
    let edge = {
        let _phase = tracing::debug_span!("admit").entered();
        proxy.edge.admit(id.tenant.as_str(), edge_limit.as_ref())
    };
    if let Break(refusal) = edge {
        proxy.metrics.edge_limited.inc();
        return Break(Routed::refused(refusal));
    }
    let mut request = Context::prepare(proxy, worker, id, parts, body, target, arrival)
        .instrument(tracing::debug_span!("prepare"))
        .await?;
    loop {
        request.next_try().await?;
        // 4. pick a lane; `now` stands for the send time too (microseconds apart).
        let now = Instant::now();
        let lane = request.pick_lane(now)?;
        // 5. forward, in a span of its own that the lane's spans are children of.
        let try_span = tracing::debug_span!(
            "upstream try",
            otel.kind = "client",
            cell = %request.target_cell(),
            lane,
            attempt = request.attempt().number,
            http.response.status_code = Empty,
            error = Empty,
            otel.status_code = Empty,
        );
        let tried = request
            .forward(lane, now)
            .instrument(try_span.clone())
            .await?;
        // 6. classify, and act on the verdict: the answer ends the request, or one more try.
        let answer = request.answer(&tried);
        record_try(&try_span, &answer);
        let verdict = classify(answer, &request.attempt());
        request.act(verdict, tried).await?;
    }
}

/// Writes how a try ended onto its span.
fn record_try(span: &tracing::Span, answer: &classify::Answer) {
    match answer {
        classify::Answer::Response { status, code } => {
            span.record("http.response.status_code", status.as_u16());
            if let Some(code) = code {
                span.record("error", code.as_str());
            }
        }
        classify::Answer::Failed { nothing_sent } => {
            span.record("otel.status_code", "ERROR");
            span.record(
                "error",
                if *nothing_sent {
                    "connection failed before the request was sent"
                } else {
                    "connection failed"
                },
            );
        }
        classify::Answer::TimedOut { .. } => {
            span.record("otel.status_code", "ERROR");
            span.record("error", "timed out");
        }
    }
}
