//! The per-request context: everything one request carries through its tries, and the phases
//! that act on it — pick a lane, forward, and act on the verdict of [`super::classify`].
//!
//! It is three parts, each changed by its own phases only:
//! - [`Message`], what is sent: method, origin-form URI, the upstream headers (built once) and
//!   the body (buffered up to [`RETRY_BODY_LIMIT`] so it can be sent again, else streamed once);
//! - [`Target`], where the next try goes: a table snapshot, a cell of it, the tenant's lanes
//!   there and the epoch to send — following a move, a stale epoch or a new table changes it;
//! - [`Tries`], the tries so far: how many, how many were fence waits, whether a move or stale
//!   epoch was followed, and the lane to avoid after a failure.

use std::{
    hash::BuildHasher,
    ops::ControlFlow::{self, Break, Continue},
    sync::Arc,
    time::Instant,
};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, Method, Uri, request::Parts},
};
use cellstack_api::{
    routing::{CellRoute, EdgeLimit},
    shard::{LaneSet, lanes_for},
    tenant::TenantId,
    wire::{ErrorCode, header_name as names},
};

use super::{
    Proxy, RETRY_BODY_LIMIT, Routed,
    classify::{Answer, LaneHealth, Verdict},
    forward::{build_request, client_response, read_refusal, upstream_headers},
    reply::error,
    retry::{self, Attempt, RetryReason},
    worker::WorkerState,
};
use crate::{identify::Identified, snapshot::Snapshot, upstream::UpstreamError};

/// What is sent to the lanes.
pub struct Message {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: RequestBody,
    idempotent: bool,
}

enum RequestBody {
    /// Small enough to keep: sent on every try.
    Buffered(Bytes),
    /// Sent once, by the first try that takes it.
    Streamed(Option<Body>),
}

impl Message {
    /// The body can be sent again.
    fn replayable(&self) -> bool {
        matches!(self.body, RequestBody::Buffered(_))
    }

    /// The body for one more try, if there is one to send.
    fn body_for_try(&mut self) -> Option<Body> {
        match &mut self.body {
            RequestBody::Buffered(b) => Some(Body::from(b.clone())),
            RequestBody::Streamed(s) => s.take(),
        }
    }
}

/// Where the next try goes.
pub struct Target {
    snapshot: Arc<Snapshot>,
    cell: usize,
    lanes: LaneSet,
    /// The epoch the tries carry (none after a `moved` or `stale_epoch` answer without one).
    epoch: Option<u64>,
    /// The tenant's shard variant, from its first route, for the lanes of a cell it moved to.
    shard_variant: u32,
}

impl Target {
    /// Phase 2, look up: the tenant's route in the current table and its edge limit, or the
    /// answer when there is no table or the tenant is not in it.
    pub fn look_up(
        current: Option<Arc<Snapshot>>,
        tenant: &str,
    ) -> ControlFlow<Routed, (Self, Option<EdgeLimit>)> {
        let Some(snapshot) = current else {
            return Break(Routed::refused(error(
                ErrorCode::Unavailable,
                "the router has no routing table yet",
            )));
        };
        let Some(route) = snapshot.route(tenant) else {
            return Break(Routed::refused(error(
                ErrorCode::UnknownTenant,
                format!(
                    "tenant {tenant} is not in routing table version {}",
                    snapshot.version()
                ),
            )));
        };
        let (cell, lanes, epoch, shard_variant) = (
            route.tenant.cell as usize,
            route.lanes,
            route.tenant.epoch,
            route.tenant.shard_variant,
        );
        let edge_limit = route.edge_limit.copied();
        let target = Self {
            snapshot,
            cell,
            lanes,
            epoch: Some(epoch),
            shard_variant,
        };
        Continue((target, edge_limit))
    }

    fn cell(&self) -> &CellRoute {
        &self.snapshot.table().cells()[self.cell]
    }

    /// The cell's name as a metric label, shared with the snapshot.
    fn label(&self) -> Option<Arc<str>> {
        self.snapshot.cell_name(self.cell).cloned()
    }

    /// Follows the tenant to cell `cell` of `snapshot`, at `epoch`.
    fn follow(&mut self, snapshot: Arc<Snapshot>, cell: usize, tenant: &str, epoch: Option<u64>) {
        self.lanes = snapshot.table().cells()[cell]
            .shard_params()
            .map(|p| lanes_for(tenant, self.shard_variant, p))
            .unwrap_or_default();
        self.epoch = epoch;
        self.snapshot = snapshot;
        self.cell = cell;
    }

    /// After a fence wait: goes where `current` routes the tenant, if that is another cell or a
    /// newer epoch.
    fn reroute(&mut self, current: Option<Arc<Snapshot>>, tenant: &str) {
        let Some(current) = current else { return };
        let moved = current.route(tenant).and_then(|r| {
            (r.cell.name != self.cell().name || self.epoch.is_some_and(|e| r.tenant.epoch > e))
                .then_some((r.tenant.cell as usize, r.lanes, r.tenant.epoch))
        });
        if let Some((cell, lanes, epoch)) = moved {
            self.snapshot = current;
            self.cell = cell;
            self.lanes = lanes;
            self.epoch = Some(epoch);
        }
    }
}

/// The tries so far.
#[derive(Debug, Default)]
pub struct Tries {
    count: u32,
    fence_waits: u32,
    /// A `moved` or `stale_epoch` answer was followed (once per request).
    followed: bool,
    /// The lane that just failed: the next try avoids it, after a back-off.
    exclude: Option<u32>,
}

/// One try's result.
pub struct Tried {
    lane: u32,
    /// When the try was sent.
    sent: Instant,
    outcome: Outcome,
}

enum Outcome {
    Response(axum::http::Response<Body>),
    Failed(UpstreamError),
    TimedOut,
}

/// One request, from its look-up until its answer.
pub struct Context<'a> {
    proxy: &'a Proxy,
    worker: &'a WorkerState,
    tenant: TenantId,
    /// This request's number in its worker: seeds its request id, lane choice and jitter.
    seq: u64,
    deadline: Instant,
    message: Message,
    target: Target,
    tries: Tries,
}

/// When a request arrived, its number on its worker and its request id.
pub struct Arrival {
    pub started: Instant,
    pub seq: u64,
    pub request_id: HeaderValue,
}

impl<'a> Context<'a> {
    /// Prepares a request received at `started` for its tries: its body buffered when small
    /// enough (or the method has none), its upstream URI and headers built, the request counted
    /// in its cell's retry budget. Ends the request when the body or URI is unusable.
    pub async fn prepare(
        proxy: &'a Proxy,
        worker: &'a WorkerState,
        id: Identified,
        mut parts: Parts,
        body: Body,
        target: Target,
        arrival: Arrival,
    ) -> ControlFlow<Routed, Self> {
        let Arrival {
            started,
            seq,
            request_id,
        } = arrival;
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
        let body = if small {
            // A body that does not arrive holds an in-flight place: bounded by the deadline.
            let read = tokio::time::timeout_at(
                tokio::time::Instant::from_std(started + proxy.config.deadline),
                axum::body::to_bytes(body, RETRY_BODY_LIMIT),
            );
            match read.await {
                Ok(Ok(b)) => RequestBody::Buffered(b),
                Ok(Err(_)) => {
                    return Break(Routed::refused(error(
                        ErrorCode::PayloadTooLarge,
                        "request body larger than its Content-Length or the retry buffer",
                    )));
                }
                Err(_) => {
                    return Break(Routed::refused(error(
                        ErrorCode::RequestTimeout,
                        "the request body did not arrive before the request's deadline",
                    )));
                }
            }
        } else {
            RequestBody::Streamed(Some(body))
        };
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        // Origin-form: the request's own path and query (shared, not re-formatted), or the
        // path left once a path-prefix tenant is stripped.
        let uri = match &id.forward_path {
            None => parts
                .uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone())),
            Some(path) => match path.parse::<Uri>() {
                Ok(u) => u,
                Err(e) => {
                    return Break(Routed::refused(error(
                        ErrorCode::BadRequest,
                        format!("cannot build the upstream URI: {e}"),
                    )));
                }
            },
        };
        let tenant = id.tenant;
        let headers = upstream_headers(
            std::mem::take(&mut parts.headers),
            tenant.as_str(),
            request_id,
        );
        worker.budgets.deposit(&target.cell().name);
        Continue(Self {
            proxy,
            worker,
            tenant,
            seq,
            deadline: started + proxy.config.deadline,
            message: Message {
                method: parts.method,
                uri,
                headers,
                body,
                idempotent,
            },
            target,
            tries: Tries::default(),
        })
    }

    /// The cell the next try goes to.
    pub fn target_cell(&self) -> &str {
        &self.target.cell().name
    }

    /// This try, as the retry rules see it.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            // Tries after a fence wait are not retries: they count neither against the retry
            // limit nor towards the failure backoff.
            number: self.tries.count - self.tries.fence_waits,
            idempotent: self.message.idempotent,
            replayable: self.message.replayable(),
            followed: self.tries.followed,
        }
    }

    /// Starts the next try: counts it, and after a failure backs off briefly, with jitter so a
    /// burst of failed requests does not retry in lockstep — or ends the request if the pause
    /// would reach the deadline.
    pub async fn next_try(&mut self) -> ControlFlow<Routed> {
        self.tries.count += 1;
        let Some(failed) = self.tries.exclude else {
            return Continue(());
        };
        let random = self.proxy.ids.hash_one((self.seq, self.tries.count));
        let pause = retry::backoff(self.attempt().number, random);
        if Instant::now() + pause >= self.deadline {
            return Break(Routed {
                response: error(
                    ErrorCode::Timeout,
                    "the request deadline passed while retrying",
                ),
                cell: self.target.label(),
                lane: Some(failed),
            });
        }
        tokio::time::sleep(pause).await;
        Continue(())
    }

    /// Phase 4: one of the tenant's lanes in the target cell, around ejected lanes and the one
    /// that just failed.
    pub fn pick_lane(&self, now: Instant) -> ControlFlow<Routed, u32> {
        let cell = self.target.cell();
        let picked = self.proxy.outliers.pick(
            &cell.name,
            self.target.lanes,
            self.seq + u64::from(self.tries.count),
            self.tries.exclude,
            now,
        );
        match picked {
            Some(lane) => Continue(lane),
            None => Break(Routed {
                response: error(
                    ErrorCode::Overloaded,
                    format!("cell {} has no lane for tenant {}", cell.name, self.tenant),
                ),
                cell: self.target.label(),
                lane: None,
            }),
        }
    }

    /// Phase 5: sends one try to `lane` at `sent`, within the per-try timeout and the deadline.
    pub async fn forward(&mut self, lane: u32, sent: Instant) -> ControlFlow<Routed, Tried> {
        let cell = self.target.cell();
        let ended = |response, lane| {
            Break(Routed {
                response,
                cell: self.target.label(),
                lane,
            })
        };
        let Some(addr) = cell.lanes.get(lane as usize) else {
            return ended(
                error(
                    ErrorCode::Unavailable,
                    "routing table names a lane the cell does not have",
                ),
                None,
            );
        };
        let Some(body) = self.message.body_for_try() else {
            return ended(
                error(
                    ErrorCode::Unavailable,
                    "a streamed request body cannot be retried",
                ),
                Some(lane),
            );
        };
        let m = &self.message;
        let mut upstream = build_request(&m.method, &m.uri, &m.headers, self.target.epoch, body);
        // The lane's spans are children of this try's (see `super::pipeline`).
        cellstack_runtime::telemetry::propagate(upstream.headers_mut());
        let Some(left) = self.deadline.checked_duration_since(sent) else {
            return ended(
                error(ErrorCode::Timeout, "the request deadline passed"),
                Some(lane),
            );
        };
        let outcome = tokio::time::timeout_at(
            tokio::time::Instant::from_std(sent + self.proxy.config.try_timeout.min(left)),
            self.worker.upstreams.send(addr, upstream),
        )
        .await;
        let outcome = match outcome {
            Ok(Ok(res)) => Outcome::Response(res),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::TimedOut,
        };
        Continue(Tried {
            lane,
            sent,
            outcome,
        })
    }

    /// What a try's answer is, for [`super::classify::classify`].
    pub fn answer(&self, tried: &Tried) -> Answer {
        match &tried.outcome {
            Outcome::Response(res) => Answer::Response {
                status: res.status(),
                code: res
                    .headers()
                    .get(names::ERROR)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<ErrorCode>().ok()),
            },
            Outcome::Failed(e) => Answer::Failed {
                nothing_sent: e.nothing_sent(),
            },
            Outcome::TimedOut => Answer::TimedOut {
                deadline_left: Instant::now() < self.deadline,
            },
        }
    }

    /// Acts on the `verdict` on `tried`: ends the request with its answer, or sets up the next
    /// try.
    pub async fn act(&mut self, verdict: Verdict, tried: Tried) -> ControlFlow<Routed> {
        let Tried {
            lane,
            sent,
            outcome,
        } = tried;
        match (verdict, outcome) {
            (Verdict::Return { lane: health }, outcome) => {
                self.record(lane, health);
                Break(self.finish(lane, outcome))
            }
            (Verdict::RetryElsewhere { reason, kept }, outcome) => {
                let cell = &self.target.cell().name;
                if retry::withdraw(&self.proxy.metrics, &self.worker.budgets, cell, reason) {
                    self.record(lane, LaneHealth::Failing);
                    self.tries.exclude = Some(lane);
                    Continue(())
                } else {
                    self.record(lane, kept);
                    Break(self.finish(lane, outcome))
                }
            }
            (Verdict::FollowMove, Outcome::Response(res)) => self.follow_move(lane, res),
            (Verdict::RetryAtEpoch, Outcome::Response(res)) => {
                // Our epoch is not the cell's: once, at the cell's epoch.
                self.tries.followed = true;
                retry::count(&self.proxy.metrics, RetryReason::StaleEpoch);
                self.target.epoch = epoch_of(&res);
                Continue(())
            }
            (Verdict::WaitOutFence, Outcome::Response(res)) => {
                self.wait_out_fence(lane, sent, res).await
            }
            // `classify` gives the verdicts above for a response only.
            (_, outcome) => Break(self.finish(lane, outcome)),
        }
    }

    /// The tenant lives elsewhere now: once, to the cell the answer names, if the current
    /// table knows it; else the answer goes back.
    fn follow_move(&mut self, lane: u32, res: axum::http::Response<Body>) -> ControlFlow<Routed> {
        let current = self.proxy.tables.current();
        let to = res
            .headers()
            .get(names::MOVED_TO)
            .and_then(|v| v.to_str().ok());
        let found = current.zip(to).and_then(|(snapshot, name)| {
            let cell = snapshot
                .table()
                .cells()
                .iter()
                .position(|c| c.name == name)?;
            Some((snapshot, cell))
        });
        let Some((snapshot, cell)) = found else {
            return Break(self.finish(lane, Outcome::Response(res)));
        };
        self.tries.followed = true;
        retry::count(&self.proxy.metrics, RetryReason::Moved);
        let epoch = epoch_of(&res);
        self.target
            .follow(snapshot, cell, self.tenant.as_str(), epoch);
        self.tries.exclude = None;
        Continue(())
    }

    /// Writes are paused while the tenant moves and nothing was applied: waits for the flip
    /// rather than fail — while a wait fits — then goes where the tenant is.
    async fn wait_out_fence(
        &mut self,
        lane: u32,
        sent: Instant,
        res: axum::http::Response<Body>,
    ) -> ControlFlow<Routed> {
        // The cell is healthy: it refused by design.
        self.record(lane, LaneHealth::Healthy);
        let took = sent.elapsed();
        let res = read_refusal(res, self.deadline).await;
        let random = self.proxy.ids.hash_one((self.seq, self.tries.count));
        let pause = retry::fence_backoff(self.tries.fence_waits, random);
        if !retry::fence_wait_fits(
            self.tries.fence_waits,
            Instant::now(),
            pause,
            took,
            self.deadline,
        ) {
            self.proxy.metrics.fence_outlasted.inc();
            return Break(self.finish(lane, Outcome::Response(res)));
        }
        self.tries.fence_waits += 1;
        // Not charged to the retry budget: a fenced cell refuses cheaply, and the waits are
        // bounded by the deadline and `MAX_FENCE_WAITS`.
        retry::count(&self.proxy.metrics, RetryReason::Fenced);
        tokio::time::sleep(pause).await;
        // The flip publishes a new route: if the table now sends the tenant elsewhere, or at a
        // newer epoch, follow it. A `moved` answer from this cell is followed as usual (the
        // wait does not use up the follow).
        self.target
            .reroute(self.proxy.tables.current(), self.tenant.as_str());
        self.tries.exclude = None;
        Continue(())
    }

    /// Records what a try told of `lane`'s health, for outlier detection.
    fn record(&self, lane: u32, health: LaneHealth) {
        let cell = &self.target.cell().name;
        match health {
            LaneHealth::Healthy => self.proxy.outliers.success(cell, lane),
            LaneHealth::Failing => {
                self.proxy.outliers.failure(cell, lane, Instant::now());
            }
        }
    }

    /// The client's answer from a try of `lane`: the lane's answer, or the router's own for a
    /// failed connection or a timeout.
    fn finish(&self, lane: u32, outcome: Outcome) -> Routed {
        let cell = &self.target.cell().name;
        let response = match outcome {
            Outcome::Response(res) => client_response(res),
            Outcome::Failed(e) => error(
                ErrorCode::Unavailable,
                format!("cell {cell} lane {lane} failed: {e}"),
            ),
            Outcome::TimedOut => error(
                ErrorCode::Timeout,
                format!("cell {cell} lane {lane} did not answer in time"),
            ),
        };
        Routed {
            response,
            cell: self.target.label(),
            lane: Some(lane),
        }
    }
}

/// The epoch a cell's answer gives (`moved`: the tenant's in its new cell; `stale_epoch`: the
/// cell's).
fn epoch_of(res: &axum::http::Response<Body>) -> Option<u64> {
    res.headers()
        .get(names::EPOCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
