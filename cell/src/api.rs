//! The tenant API on the main listener: admission in explicit phases, then the reference tenant
//! service (items and counters in the tenant's key space) or, with services listed, the
//! gateway to them ([`crate::gateway`]). The same item and counter handlers serve the tenant
//! state API on the lane's loopback ([`state_router`]), admitted by phases 1-2 only.
//!
//! Phases, each a function with one job:
//! 1. [`identify`]: tenant id, epoch and priority from the headers (`crds` names) — 400 with the
//!    reason when malformed.
//! 2. [`tenant_state`]: the tenant's record in this cell → 404 unknown, 409 stale epoch (with the
//!    current epoch), 503 fenced/importing, 421 moved (naming the new cell).
//! 3. [`crate::limiter`]: local bucket, then the authoritative Redis script → 429 or, when Redis is
//!    down and the policy fails closed, 503.
//! 4. [`crate::shed`]: the adaptive concurrency limit by priority → 503 shed.
//! 5. the handler; writes re-check state and epoch atomically in the write script.

use std::time::Instant;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cellstack_api::{
    admin::TenantRecord,
    keys::{ItemName, KeyKind, TenantKeys},
    tenant::TenantId,
    wire::{self, ErrorCode, Priority, header},
};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::{
    app::AppState,
    error::ApiError,
    limiter::Verdict,
    metrics::{PriorityLabels, RequestLabels},
    store::{self, StoreError, WriteOp, WriteOutcome},
    tenant_metrics::Outcome,
    tenant_state,
};

/// Which admission phases a listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The tenant port: phases 1-4 (identity, tenant state, rate limits, load shedding).
    Tenant,
    /// The tenant state API on loopback, called by the cell's own services on behalf of a
    /// request or a background job: identity and tenant state (epoch, fence, move) only. The
    /// request that led to the call was admitted (limited, shed) on the tenant port already.
    State,
}

/// The tenant port of the reference service: `/v1/whoami` and the data routes.
pub fn router(state: AppState) -> Router {
    data_routes(Admission::Tenant)
        .route("/v1/whoami", get(whoami))
        .fallback(not_found)
        .with_state(state)
}

/// The tenant state API (docs/services.md): the data routes, for the cell's own services.
pub fn state_router(state: AppState) -> Router {
    data_routes(Admission::State)
        .fallback(not_found)
        .with_state(state)
}

fn data_routes(admission: Admission) -> Router<AppState> {
    Router::new()
        .route("/v1/items", get(list_items))
        .route(
            "/v1/items/{name}",
            get(get_item).put(put_item).delete(delete_item),
        )
        .route("/v1/counters/{name}", get(get_counter))
        .route("/v1/counters/{name}/increment", post(increment_counter))
        .layer(axum::Extension(admission))
}

/// What phase 1 reads from a request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tenant: TenantId,
    pub epoch: Option<u64>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII"))),
    }
}

/// Phase 1: who is asking, at which epoch; a priority it asks for must be a class's name
/// ([`effective_priority`] decides the class it gets).
pub fn identify(headers: &HeaderMap) -> Result<Identity, ApiError> {
    let raw = header_str(headers, header::TENANT)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidTenant,
            format!(
                "missing {} header: every request names its tenant",
                header::TENANT
            ),
        )
    })?;
    let tenant =
        TenantId::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidTenant, e.to_string()))?;
    let epoch = header_str(headers, header::EPOCH)?
        .map(wire::parse_epoch)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    header_str(headers, header::PRIORITY)?
        .map(str::parse::<Priority>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Identity { tenant, epoch })
}

/// The class a request runs at: its tenant's (from the policy in force, `normal` without one),
/// or the lower one it asked for in [`header::PRIORITY`] — a client can give up priority, never
/// claim more. Lenient: a missing or malformed tenant or priority header is refused by
/// [`identify`] before the class matters.
pub fn effective_priority(state: &AppState, headers: &HeaderMap) -> Priority {
    let visible = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let class = visible(header::TENANT)
        .and_then(|tenant| {
            state
                .policies
                .load()
                .for_tenant(tenant)
                .map(|p| p.request_priority)
        })
        .unwrap_or_default();
    Priority::requested(
        class,
        visible(header::PRIORITY).and_then(|v| v.parse().ok()),
    )
}

fn refusal_error(refusal: &tenant_state::Refusal, tenant: &str) -> ApiError {
    let mut err = ApiError::new(refusal.code(), refusal.message(tenant));
    match refusal {
        tenant_state::Refusal::Moved { to, epoch } => {
            // The epoch the tenant has in its new cell, so the router's retry there carries it.
            err.body.moved_to = Some(to.clone());
            err.body.current_epoch = Some(*epoch);
        }
        tenant_state::Refusal::Stale { current, .. } => err.body.current_epoch = Some(*current),
        tenant_state::Refusal::Fenced
        | tenant_state::Refusal::Importing
        | tenant_state::Refusal::Unconfirmed => err = err.retry_after(1),
        tenant_state::Refusal::Unknown | tenant_state::Refusal::DataLost => {}
    }
    err
}

fn store_error(e: &StoreError) -> ApiError {
    if e.is_not_durable() {
        return ApiError::new(ErrorCode::NotDurable, e.to_string()).retry_after(1);
    }
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the cell's datastore is unavailable: {e}"),
    )
    .retry_after(1)
}

/// Phase 2: the tenant's record in this cell, checked against the request. When Redis cannot
/// answer, the last record seen is used (so a fail-open policy keeps serving known tenants).
pub async fn tenant_state(
    state: &AppState,
    id: &Identity,
    keys: &TenantKeys,
    write: bool,
) -> Result<TenantRecord, ApiError> {
    let record = match state.store.tenant_and_policy_version(keys).await {
        Ok((record, policy_override)) => {
            // The tenant's policy override, if any, read only when new to this lane.
            let tenant = id.tenant.as_str();
            let token = policy_override.as_deref();
            state.policies.sync(&state.store, keys, tenant, token).await;
            match &record {
                Some(r) => state.remember(id.tenant.as_str(), r.clone()),
                None => state.forget(id.tenant.as_str()),
            }
            record
        }
        Err(e) => match state.remembered(id.tenant.as_str()) {
            Some(r) => Some(r),
            None => return Err(store_error(&e)),
        },
    };
    let refusal = match tenant_state::check(record.as_ref(), id.epoch, write) {
        Ok(()) => None,
        Err(tenant_state::Refusal::Unknown) => Some(unknown(state).await),
        Err(refusal) => Some(refusal),
    };
    if let Some(refusal) = refusal {
        return Err(refusal_error(&refusal, id.tenant.as_str()));
    }
    record.ok_or_else(|| ApiError::new(ErrorCode::UnknownTenant, "unknown tenant"))
}

/// The refusal for a tenant this cell has no record of: unknown while the datastore carries the
/// operator's confirmation that it holds every tenant placed in the cell; otherwise the tenant's
/// data may have gone with the datastore's, so never "unknown" (see `admin::DATASTORE_PATH`).
async fn unknown(state: &AppState) -> tenant_state::Refusal {
    match state.store.confirmation().await {
        Ok(Some(_)) => tenant_state::Refusal::Unknown,
        Ok(None) | Err(_) => tenant_state::Refusal::Unconfirmed,
    }
}

/// An admitted request: holds its concurrency slot until dropped.
pub struct Admitted {
    pub id: Identity,
    /// The class the request ran at ([`effective_priority`]).
    pub priority: Priority,
    pub keys: TenantKeys,
    /// The tenant's epoch in this cell when the request was admitted.
    pub epoch: u64,
    pub limit_headers: Option<crate::limiter::Headers>,
    /// Held while the request runs (tenant port only).
    _slot: Option<crate::app::Slot>,
}

/// Phases 1-4 (1-2 for [`Admission::State`]), for a request of class `priority`
/// ([`effective_priority`]).
async fn admit(
    state: &AppState,
    admission: Admission,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    write: bool,
    priority: Priority,
) -> Result<Admitted, ApiError> {
    let id = identify(headers)?;
    let keys = TenantKeys::new(&id.tenant);
    let record = tenant_state(state, &id, &keys, write)
        .instrument(tracing::debug_span!("tenant state"))
        .await?;
    if admission == Admission::State {
        return Ok(Admitted {
            id,
            priority,
            keys,
            epoch: record.epoch,
            limit_headers: None,
            _slot: None,
        });
    }
    let limit_headers = async {
        let policies = state.policies.load();
        let admitted = match policies.for_tenant(id.tenant.as_str()) {
            None => None,
            Some(policy) => match state
                .limiter
                .check(&keys, id.tenant.as_str(), policy, method.as_str(), path)
                .await
            {
                Verdict::Admit(h) => h,
                Verdict::Limited(h) => {
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "tenant {} is over its rate limit ({} requests); retry after {}s",
                            id.tenant, h.limit, h.retry_after_seconds
                        ),
                    )
                    .retry_after(h.retry_after_seconds)
                    .header(header::RATELIMIT_LIMIT, h.limit)
                    .header(header::RATELIMIT_REMAINING, 0)
                    .header(header::RATELIMIT_RESET, h.reset_seconds));
                }
                Verdict::Unavailable => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "the rate-limit store is unavailable and this tenant's policy fails closed",
                    )
                    .retry_after(1));
                }
            },
        };
        Ok(admitted)
    }
    .instrument(tracing::debug_span!("rate limit"))
    .await?;
    let _phase = tracing::debug_span!("shed", priority = priority.as_str()).entered();
    let slot = state.acquire(priority).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Shed,
            format!("cell overloaded: {priority} priority requests are being shed"),
        )
        .retry_after(1)
    })?;
    Ok(Admitted {
        id,
        priority,
        keys,
        epoch: record.epoch,
        limit_headers,
        _slot: Some(slot),
    })
}

/// Runs admission and a handler, and measures the outcome.
///
/// All of it runs in a `request` span (server kind) carrying the router's request id and the
/// tenant as sent, so every log line of the request names them; with traces on, the span
/// continues the router's W3C trace context, and admission's phases and each Redis call are
/// child spans.
#[allow(clippy::too_many_arguments)] // each is one part of the request; a struct would only rename them
pub(crate) async fn serve<F, Fut>(
    state: AppState,
    admission: Admission,
    route: &'static str,
    req_headers: HeaderMap,
    method: Method,
    path: String,
    write: bool,
    handler: F,
) -> Response
where
    F: FnOnce(AppState, Admitted) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let visible = |name| {
        req_headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let span = tracing::info_span!(
        "request",
        request_id = visible(header::REQUEST_ID).unwrap_or_default(),
        tenant = visible(header::TENANT).unwrap_or_default(),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    cellstack_runtime::telemetry::continue_trace(&span, &req_headers);
    let response = async move {
        let started = Instant::now();
        let priority = effective_priority(&state, &req_headers);
        let tenant_port = admission == Admission::Tenant;
        let admitted = admit(
            &state,
            admission,
            &req_headers,
            &method,
            &path,
            write,
            priority,
        )
        .await;
        let response = match admitted {
            Ok(admitted) if !tenant_port => handler(state.clone(), admitted)
                .await
                .unwrap_or_else(IntoResponse::into_response),
            Ok(admitted) => {
                state
                    .tenant_metrics
                    .count(&admitted.id.tenant, Outcome::Admitted);
                let limit_headers = admitted.limit_headers.clone();
                // The simulated backend (if configured) runs inside the admitted slot, as real
                // service work would.
                let result = match async {
                    state.injected_failure()?;
                    state.simulate_work().await
                }
                .await
                {
                    Ok(()) => handler(state.clone(), admitted).await,
                    Err(e) => Err(e),
                };
                let mut response = result.unwrap_or_else(IntoResponse::into_response);
                if let Some(h) = limit_headers {
                    let hs = response.headers_mut();
                    hs.insert(header::RATELIMIT_LIMIT, HeaderValue::from(h.limit));
                    hs.insert(header::RATELIMIT_REMAINING, HeaderValue::from(h.remaining));
                    hs.insert(header::RATELIMIT_RESET, HeaderValue::from(h.reset_seconds));
                }
                response
            }
            Err(e) if !tenant_port => e.into_response(),
            Err(e) => {
                // Refused before its tenant was identified (a missing or invalid id): no tenant.
                if let Some(tenant) = req_headers
                    .get(header::TENANT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| TenantId::parse(v).ok())
                {
                    let outcome = match e.body.error {
                        ErrorCode::RateLimited => Outcome::Limited,
                        ErrorCode::Shed | ErrorCode::Overloaded => Outcome::Shed,
                        _ => Outcome::Refused,
                    };
                    state.tenant_metrics.count(&tenant, outcome);
                }
                if e.body.error == ErrorCode::Shed {
                    state
                        .metrics
                        .shed
                        .get_or_create(&PriorityLabels {
                            priority: priority_label(priority),
                        })
                        .inc();
                }
                e.into_response()
            }
        };
        let mut response = response;
        if let Ok(v) = HeaderValue::from_str(&state.cell) {
            response.headers_mut().insert(header::CELL, v);
        }
        if !tenant_port {
            // Kept apart: the rollout gate reads the tenant port's figures only.
            state
                .metrics
                .state_requests
                .get_or_create(&RequestLabels {
                    route,
                    code: response.status().as_u16(),
                })
                .inc();
            return response;
        }
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                route,
                code: response.status().as_u16(),
            })
            .inc();
        state
            .metrics
            .duration
            .get_or_create(&PriorityLabels {
                priority: priority_label(priority),
            })
            .observe(started.elapsed().as_secs_f64());
        response
    }
    .instrument(span.clone())
    .await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    // The access log, at `debug` (`CELLSTACK_LOG=cellstack_cell=debug`).
    span.in_scope(|| tracing::debug!(status, "request served"));
    response
}

fn priority_label(p: Priority) -> &'static str {
    p.as_str()
}

fn item_name(raw: &str) -> Result<ItemName, ApiError> {
    ItemName::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn write_result(
    state: &AppState,
    outcome: WriteOutcome,
    tenant: &str,
) -> Result<String, ApiError> {
    use tenant_state::Refusal;
    let refusal = match outcome {
        WriteOutcome::Ok(v) => return Ok(v),
        WriteOutcome::Unknown => unknown(state).await,
        WriteOutcome::Importing => Refusal::Importing,
        WriteOutcome::Lost => Refusal::DataLost,
        WriteOutcome::Moved { epoch, to } => Refusal::Moved { to, epoch },
        WriteOutcome::Stale { epoch } => Refusal::Stale {
            current: epoch,
            requested: 0,
        },
        WriteOutcome::Fenced => Refusal::Fenced,
        WriteOutcome::Conflict { current } => {
            let mut err = ApiError::new(
                ErrorCode::PreconditionFailed,
                match &current {
                    Some(_) => {
                        "the item changed since it was read (or exists, for If-None-Match: *): nothing was written; read it again"
                    }
                    None => "the item does not exist (If-Match names a value): nothing was written",
                },
            );
            if let Some(current) = current {
                err = err.header("etag", quoted(&current));
            }
            return Err(err);
        }
    };
    Err(refusal_error(&refusal, tenant))
}

async fn whoami(State(state): State<AppState>, headers: HeaderMap, req: Request) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    serve(
        state,
        Admission::Tenant,
        "whoami",
        headers,
        method,
        path,
        false,
        |state, a| async move {
            Ok(
                Json(json!({"tenant": a.id.tenant, "cell": &*state.cell, "priority": a.priority}))
                    .into_response(),
            )
        },
    )
    .await
}

#[derive(Deserialize)]
struct ListQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
}

async fn list_items(
    State(state): State<AppState>,
    axum::Extension(admission): axum::Extension<Admission>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    serve(
        state,
        admission,
        "items",
        headers,
        method,
        path,
        false,
        |state, a| async move {
            let Query(q) =
                query.map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
            let limit = q.limit.unwrap_or(100);
            if !(1..=1000).contains(&limit) {
                return Err(ApiError::bad_request("limit must be between 1 and 1000"));
            }
            let (names, next) = state
                .store
                .list(&a.keys, KeyKind::Item, q.cursor.unwrap_or(0), limit)
                .await
                .map_err(|e| store_error(&e))?;
            Ok(
                Json(json!({"items": names, "cursor": (next != 0).then_some(next)}))
                    .into_response(),
            )
        },
    )
    .await
}

async fn get_item(
    State(state): State<AppState>,
    axum::Extension(admission): axum::Extension<Admission>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    serve(
        state,
        admission,
        "items",
        headers,
        method,
        path,
        false,
        |state, a| async move {
            let name = item_name(&name)?;
            let key = store::data_key(&a.keys, KeyKind::Item, &name);
            match state.store.get(&key).await.map_err(|e| store_error(&e))? {
                Some(bytes) => Ok((
                    StatusCode::OK,
                    [
                        ("content-type", "application/octet-stream".to_owned()),
                        ("etag", quoted(&etag(&bytes))),
                    ],
                    bytes,
                )
                    .into_response()),
                None => Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("item {name} does not exist"),
                )),
            }
        },
    )
    .await
}

async fn put_item(
    State(state): State<AppState>,
    axum::Extension(admission): axum::Extension<Admission>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let max = state.max_body_bytes;
    serve(
        state,
        admission,
        "items",
        headers,
        method,
        path,
        true,
        |state, a| async move {
            let name = item_name(&name)?;
            let condition = condition(req.headers())?;
            let body: Bytes = crate::error::read_body(req.into_body(), max, "the body").await?;
            let key = store::data_key(&a.keys, KeyKind::Item, &name);
            let op = match &condition {
                None => WriteOp::Set(&body),
                Some(expected) => WriteOp::SetIf {
                    value: &body,
                    expected: expected.as_deref(),
                },
            };
            let outcome = state
                .store
                .write(&a.keys, &key, a.id.epoch, op)
                .await
                .map_err(|e| store_error(&e))?;
            write_result(&state, outcome, a.id.tenant.as_str()).await?;
            Ok((
                StatusCode::OK,
                [("etag", quoted(&etag(&body)))],
                Json(json!({"item": name.as_str(), "bytes": body.len()})),
            )
                .into_response())
        },
    )
    .await
}

async fn delete_item(
    State(state): State<AppState>,
    axum::Extension(admission): axum::Extension<Admission>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    serve(
        state,
        admission,
        "items",
        headers,
        method,
        path,
        true,
        |state, a| async move {
            let name = item_name(&name)?;
            let key = store::data_key(&a.keys, KeyKind::Item, &name);
            let outcome = state
                .store
                .write(&a.keys, &key, a.id.epoch, WriteOp::Delete)
                .await
                .map_err(|e| store_error(&e))?;
            let deleted = write_result(&state, outcome, a.id.tenant.as_str()).await?;
            if deleted == "0" {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("item {name} does not exist"),
                ));
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        },
    )
    .await
}

async fn get_counter(
    State(state): State<AppState>,
    axum::Extension(admission): axum::Extension<Admission>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    serve(
        state,
        admission,
        "counters",
        headers,
        method,
        path,
        false,
        |state, a| async move {
            let name = item_name(&name)?;
            let key = store::data_key(&a.keys, KeyKind::Counter, &name);
            let value = state.store.get(&key).await.map_err(|e| store_error(&e))?;
            let value: i64 = value
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Ok(Json(json!({"counter": name.as_str(), "value": value})).into_response())
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Increment {
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

async fn increment_counter(
    State(state): State<AppState>,
    axum::Extension(admission): axum::Extension<Admission>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let max = state.max_body_bytes;
    serve(state, admission, "counters", headers, method, path, true, |state, a| async move {
        let name = item_name(&name)?;
        let body = crate::error::read_body(req.into_body(), max, "the body").await?;
        let inc: Increment = if body.is_empty() {
            Increment { by: 1 }
        } else {
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body must be {{\"by\": <integer>}}: {e}")))?
        };
        let key = store::data_key(&a.keys, KeyKind::Counter, &name);
        let outcome = state.store.write(&a.keys, &key, a.id.epoch, WriteOp::Increment(inc.by)).await.map_err(|e| store_error(&e))?;
        let value = write_result(&state, outcome, a.id.tenant.as_str()).await?;
        Ok(Json(json!({"counter": name.as_str(), "value": value.parse::<i64>().unwrap_or_default()})).into_response())
    })
    .await
}

/// An item's entity tag: the SHA-1 (hex) of its value, as the write script compares it.
fn etag(value: &[u8]) -> String {
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(value);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// A PUT's condition (RFC 9110 §13.1): `If-None-Match: *` → `Some(None)` (only if absent);
/// `If-Match: "<etag>"` → `Some(Some(etag))` (only if unchanged); neither → `None`. One entity
/// tag only, strong comparison.
fn condition(headers: &HeaderMap) -> Result<Option<Option<String>>, ApiError> {
    let if_match = header_str(headers, "if-match")?;
    let if_none_match = header_str(headers, "if-none-match")?;
    match (if_match, if_none_match) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send If-Match or If-None-Match, not both",
        )),
        (None, Some(v)) if v.trim() == "*" => Ok(Some(None)),
        (None, Some(v)) => Err(ApiError::bad_request(format!(
            "If-None-Match must be \"*\" (create only), not {v:?}"
        ))),
        (Some(v), None) => {
            let tag = v.trim();
            let inner = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| t.len() == 40 && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "If-Match must be one entity tag as an item's GET or PUT gave it (\"<40 hex digits>\"), not {v:?}"
                    ))
                })?;
            Ok(Some(Some(inner.to_ascii_lowercase())))
        }
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}
