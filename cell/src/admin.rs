//! The admin listener: `/livez`, `/readyz`, `/metrics`, and the tenant admin API the operator
//! drives moves with (token-protected; see `cellstack_api::admin` for the contract).

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cellstack_api::{
    admin::{
        self, Activate, Checksum, ChecksumQuery, ConfirmDatastore, DatastoreConfirmation, Import,
        Moved, NewTenantOutcome, NewTenants, PolicyInForce, PolicyOverride, TenantRecord,
        TenantState,
    },
    keys::TenantKeys,
    tenant::TenantId,
    wire::ErrorCode,
};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    app::AppState, error::ApiError, metrics::ResultLabels, policy_file::Override, store::StoreError,
};

/// Largest admin request body (an import page).
const MAX_ADMIN_BODY: usize = 32 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    let tenants = Router::new()
        .route("/{tenant}", get(get_tenant).put(put_tenant).delete(purge))
        .route("/{tenant}/fence", post(fence))
        .route("/{tenant}/activate", post(activate))
        .route("/{tenant}/moved", post(moved))
        .route("/{tenant}/mark", post(mark))
        .route("/{tenant}/export", get(export))
        .route("/{tenant}/changes", get(changes))
        .route("/{tenant}/changes/take", post(take_changes))
        .route("/{tenant}/import", post(import))
        .route("/{tenant}/checksum", get(checksum))
        .route(
            &format!("/{{tenant}}/{}", admin::POLICY_OVERRIDE_PATH),
            get(policy_in_force).put(hand_over_policy),
        )
        // Every admin call needs the bearer token.
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    let datastore = Router::new()
        .route(admin::DATASTORE_PATH, get(confirmation).put(confirm))
        .route(admin::NEW_TENANTS_PATH, post(new_tenants))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(admin::POLICY_VERSION_PATH, get(policy_version))
        .nest(admin::PREFIX, tenants)
        .merge(datastore)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_client_certificate,
        ))
        .with_state(state)
}

/// With `--client-ca-file`, every admin path but the kubelet's probes needs the connection to
/// have presented a verified client certificate (the operator's): a node port makes the admin
/// port reachable from other clusters (docs/security.md "Client certificates").
async fn require_client_certificate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = !state.client_certificates
        || matches!(req.uri().path(), "/livez" | "/readyz")
        || req
            .extensions()
            .get::<cellstack_runtime::tls::TlsPeer>()
            .is_some_and(|peer| peer.certificate.is_some());
    if allowed {
        return next.run(req).await;
    }
    state
        .metrics
        .admin_calls
        .get_or_create(&ResultLabels {
            result: "no_client_certificate",
        })
        .inc();
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": "no_client_certificate",
            "message": "this port serves the probes to anyone and everything else only to a client certificate issued by the release's internal CA (the operator's); present one"
        })),
    )
        .into_response()
}

/// The metrics port's routes: what a monitoring namespace may reach, nothing of the admin API.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Liveness never looks at dependencies: a Redis outage must not restart every lane.
async fn livez() -> &'static str {
    "ok"
}

/// The effective-policy version this process enforces (the operator's acknowledgement check).
async fn policy_version(State(state): State<AppState>) -> Json<admin::PolicyVersion> {
    let policies = state.policies.load();
    let file = policies.file();
    Json(admin::PolicyVersion {
        version: file.version.clone(),
        tenants: u32::try_from(file.tenants.len()).unwrap_or(u32::MAX),
    })
}

/// Readiness: not draining, every service behind the runtime healthy, and Redis answers.
/// Fails first on SIGTERM.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if let Some(unready) = state.gateway.as_ref().map(|g| g.unready())
        && !unready.is_empty()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, unready.join("\n")).into_response();
    }
    match state.store.ping().await {
        Ok(()) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .breaker_open
        .set(i64::from(state.store.breaker_open()));
    cellstack_runtime::metrics::response(&state.registry)
}

/// Compares digests so the comparison takes the same time wherever the token differs.
fn token_matches(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes())
}

async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let result = match given {
        Some(token) if token_matches(token, &state.admin_token) => return next.run(req).await,
        Some(_) => "forbidden",
        None => "unauthenticated",
    };
    state
        .metrics
        .admin_calls
        .get_or_create(&ResultLabels { result })
        .inc();
    let status = if given.is_some() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    (status, Json(json!({"error": result, "message": "the admin API needs Authorization: Bearer <token from the cell's admin Secret>"}))).into_response()
}

fn tenant(raw: &str) -> Result<(TenantId, TenantKeys), ApiError> {
    crate::store::tenant_keys(raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidTenant, e.to_string()))
}

fn unavailable(e: StoreError) -> ApiError {
    match e {
        StoreError::BadCursor(_)
        | StoreError::BadEntry { .. }
        | StoreError::UnsupportedType { .. }
        | StoreError::NotImporting { .. } => ApiError::bad_request(e.to_string()),
        e if e.is_not_durable() => {
            ApiError::new(ErrorCode::NotDurable, format!("redis: {e}")).retry_after(1)
        }
        other => ApiError::new(ErrorCode::Unavailable, format!("redis: {other}")).retry_after(1),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    crate::error::read_body(req.into_body(), MAX_ADMIN_BODY, "the admin body").await
}

fn done(state: &AppState) {
    state
        .metrics
        .admin_calls
        .get_or_create(&ResultLabels { result: "ok" })
        .inc();
}

async fn confirmation(
    State(state): State<AppState>,
) -> Result<Json<DatastoreConfirmation>, ApiError> {
    let since_ms = state.store.confirmation().await.map_err(unavailable)?;
    done(&state);
    Ok(Json(DatastoreConfirmation {
        confirmed: since_ms.is_some(),
        since_ms,
        missing_count: 0,
        missing: Vec::new(),
    }))
}

/// Confirms the datastore when every tenant named has a record (`admin::DATASTORE_PATH`).
/// `POST` [`admin::NEW_TENANTS_PATH`]: new tenants' records, created where a tenant has none,
/// in one durable write.
async fn new_tenants(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<Vec<NewTenantOutcome>>, ApiError> {
    let body: NewTenants = json_body(&read_body(req).await?)?;
    if body.tenants.len() > admin::NEW_TENANTS_MAX {
        return Err(ApiError::bad_request(format!(
            "{} new tenants in one call; at most {} are accepted",
            body.tenants.len(),
            admin::NEW_TENANTS_MAX
        )));
    }
    let mut new = Vec::with_capacity(body.tenants.len());
    for t in &body.tenants {
        let (id, keys) = tenant(&t.tenant)?;
        if t.epoch == 0 {
            return Err(ApiError::bad_request(format!(
                "tenant {id}: epoch 0; a placed tenant's epoch starts at 1"
            )));
        }
        if !admin::valid_marker(&t.marker) {
            return Err(ApiError::bad_request(format!(
                "tenant {id}: marker {:?} is not 16 to 64 lowercase hex characters",
                t.marker
            )));
        }
        new.push((keys, t.epoch, t.marker.as_str()));
    }
    let held = state
        .store
        .create_tenants(&new)
        .await
        .map_err(unavailable)?;
    done(&state);
    Ok(Json(
        body.tenants
            .iter()
            .zip(held)
            .map(|(t, held)| NewTenantOutcome {
                tenant: t.tenant.clone(),
                created: held.is_none(),
                record: held.unwrap_or_else(|| {
                    TenantRecord::new(TenantState::Active, t.epoch, Some(t.marker.clone()))
                }),
            })
            .collect(),
    ))
}

async fn confirm(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<DatastoreConfirmation>, ApiError> {
    let body: ConfirmDatastore = json_body(&read_body(req).await?)?;
    let metas = body
        .tenants
        .iter()
        .map(|raw| tenant(raw).map(|(_, keys)| keys.meta()))
        .collect::<Result<Vec<_>, _>>()?;
    let now = crate::policy_file::now_ms();
    let missing = state
        .store
        .confirm(&metas, now)
        .await
        .map_err(unavailable)?;
    done(&state);
    let confirmed = missing.is_empty();
    if confirmed {
        tracing::info!(tenants = metas.len(), "datastore confirmed");
    } else {
        tracing::warn!(
            tenants = metas.len(),
            missing = missing.len(),
            "datastore not confirmed: tenants placed here have no record"
        );
    }
    Ok(Json(DatastoreConfirmation {
        confirmed,
        since_ms: confirmed.then_some(now),
        missing_count: missing.len() as u64,
        missing: missing
            .iter()
            .take(admin::MISSING_NAMED)
            .filter_map(|&i| body.tenants.get(i).cloned())
            .collect(),
    }))
}

async fn get_tenant(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TenantRecord>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let record = state.store.tenant(&keys).await.map_err(unavailable)?;
    done(&state);
    record.map(Json).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownTenant,
            format!("tenant {id} is not in this cell"),
        )
    })
}

/// Sets `record`, optionally requiring a current state; a refusal is a 409 with the reason.
async fn set(
    state: &AppState,
    keys: &TenantKeys,
    record: TenantRecord,
    require: Option<TenantState>,
) -> Result<Json<TenantRecord>, ApiError> {
    match state
        .store
        .set_tenant(keys, &record, require)
        .await
        .map_err(unavailable)?
    {
        Ok(()) => {
            done(state);
            Ok(Json(record))
        }
        Err(reason) => Err(ApiError::new(ErrorCode::StaleEpoch, reason)),
    }
}

async fn current(
    state: &AppState,
    id: &TenantId,
    keys: &TenantKeys,
) -> Result<TenantRecord, ApiError> {
    state
        .store
        .tenant(keys)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownTenant,
                format!("tenant {id} is not in this cell"),
            )
        })
}

async fn put_tenant(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Json<TenantRecord>, ApiError> {
    let (_, keys) = tenant(&raw)?;
    let record: TenantRecord = json_body(&read_body(req).await?)?;
    set(&state, &keys, record, None).await
}

async fn fence(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TenantRecord>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let mut record = current(&state, &id, &keys).await?;
    if record.state == TenantState::Fenced {
        return Ok(Json(record));
    }
    record.state = TenantState::Fenced;
    set(&state, &keys, record, Some(TenantState::Active)).await
}

async fn activate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Json<TenantRecord>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let body: Activate = json_body(&read_body(req).await?)?;
    let mut record = current(&state, &id, &keys).await?;
    if record.state == TenantState::Lost {
        // Serving it again would answer an empty tenant as if nothing had happened: a lost
        // tenant is replaced (PUT) by whoever resolves the loss, never just activated.
        return Err(ApiError::new(
            ErrorCode::DataUnavailable,
            format!(
                "tenant {id}'s data was lost in this cell: restore it or accept the loss; it cannot simply be activated"
            ),
        ));
    }
    record.state = TenantState::Active;
    record.epoch = body.epoch;
    record.moved_to = None;
    record.tracking = false;
    set(&state, &keys, record, None).await
}

async fn moved(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Json<TenantRecord>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let body: Moved = json_body(&read_body(req).await?)?;
    if body.to.is_empty() {
        return Err(ApiError::bad_request(
            "moved needs the new cell's name in `to`",
        ));
    }
    let mut record = current(&state, &id, &keys).await?;
    record.state = TenantState::Moved;
    record.epoch = body.epoch;
    record.moved_to = Some(body.to);
    set(&state, &keys, record, None).await
}

async fn mark(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (id, keys) = tenant(&raw)?;
    current(&state, &id, &keys).await?;
    state.store.mark(&keys).await.map_err(unavailable)?;
    done(&state);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Page {
    cursor: Option<String>,
    count: Option<usize>,
    /// `changes` only: page through the set the last take took instead of the live one.
    #[serde(default)]
    taken: bool,
}

async fn take_changes(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<admin::TakenChanges>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    current(&state, &id, &keys).await?;
    let taken = state.store.take_changes(&keys).await.map_err(unavailable)?;
    done(&state);
    Ok(Json(admin::TakenChanges { keys: taken }))
}

async fn export(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<admin::ExportPage>, ApiError> {
    let (_, keys) = tenant(&raw)?;
    let count = page.count.unwrap_or(500).clamp(1, 10_000);
    let out = state
        .store
        .export(&keys, page.cursor.as_deref(), count)
        .await
        .map_err(unavailable)?;
    done(&state);
    Ok(Json(out))
}

async fn changes(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<admin::ExportPage>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let count = page.count.unwrap_or(500).clamp(1, 10_000);
    let mut out = state
        .store
        .changes(&keys, page.cursor.as_deref(), count, page.taken)
        .await
        .map_err(unavailable)?;
    if out.cursor.is_none() && !page.taken {
        // The limiter state is not tracked write by write (every admitted request changes it);
        // the last page carries its current value, so a move's catch-up takes it along.
        let limiter: Vec<String> = state
            .policies
            .load()
            .for_tenant(id.as_str())
            .map(|p| p.limits.iter().map(|l| keys.rate_limit(&l.name)).collect())
            .unwrap_or_default();
        let entries = state
            .store
            .entries(&keys, &limiter)
            .await
            .map_err(unavailable)?;
        out.entries.extend(
            entries
                .into_iter()
                .filter(|e| !matches!(e.value, admin::Value::Deleted)),
        );
    }
    done(&state);
    Ok(Json(out))
}

async fn import(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let body: Import = json_body(&read_body(req).await?)?;
    let record = current(&state, &id, &keys).await?;
    if record.state != TenantState::Importing {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "tenant {id} is {:?}; imports go only into a tenant created in importing state",
                record.state
            ),
        ));
    }
    state
        .store
        .import(&keys, &body.entries)
        .await
        .map_err(unavailable)?;
    done(&state);
    Ok(StatusCode::NO_CONTENT)
}

async fn checksum(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<ChecksumQuery>,
) -> Result<Json<Checksum>, ApiError> {
    let (_, keys) = tenant(&raw)?;
    let figures = if query.recount {
        state.store.recount(&keys).await
    } else {
        state.store.checksum(&keys).await
    };
    let (keys_count, digest) = figures.map_err(unavailable)?;
    done(&state);
    Ok(Json(Checksum {
        keys: keys_count,
        digest,
    }))
}

async fn purge(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, keys) = tenant(&raw)?;
    let removed = state.store.purge(&keys).await.map_err(unavailable)?;
    state.forget(&raw);
    done(&state);
    Ok(Json(json!({"removedKeys": removed})))
}

/// Stores the tenant's policy override in its record (every lane reads it from there with the
/// tenant's state) and takes it on this lane at once; answers what this lane now enforces.
async fn hand_over_policy(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Json<PolicyInForce>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let handed: PolicyOverride = json_body(&read_body(req).await?)?;
    if handed.version.is_empty() || handed.ttl_ms == 0 {
        return Err(ApiError::bad_request(
            "a policy override needs the file version that carries it and a ttlMs above 0",
        ));
    }
    let received = Override::received(handed, crate::policy_file::now_ms());
    let stored = serde_json::to_string(&received)
        .map_err(|e| ApiError::bad_request(format!("cannot encode the override: {e}")))?;
    let had_record = state
        .store
        .set_policy_override(&keys, &received.token(), &stored)
        .await
        .map_err(unavailable)?;
    if !had_record {
        return Err(ApiError::new(
            ErrorCode::UnknownTenant,
            format!("tenant {id} is not in this cell: create it before handing over its policy"),
        ));
    }
    state.policies.take(id.as_str(), &received);
    tracing::info!(tenant = %id, version = %received.version, "policy override handed over");
    done(&state);
    Ok(Json(state.policies.load().in_force(id.as_str())))
}

/// What this lane enforces for the tenant, after reading the tenant's record the way one of
/// its requests would (so a lane that had not seen the override yet reads it now).
async fn policy_in_force(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<PolicyInForce>, ApiError> {
    let (id, keys) = tenant(&raw)?;
    let (record, token) = state
        .store
        .tenant_and_policy_version(&keys)
        .await
        .map_err(unavailable)?;
    if record.is_none() {
        return Err(ApiError::new(
            ErrorCode::UnknownTenant,
            format!("tenant {id} is not in this cell"),
        ));
    }
    state
        .policies
        .sync(&state.store, &keys, id.as_str(), token.as_deref())
        .await;
    done(&state);
    Ok(Json(state.policies.load().in_force(id.as_str())))
}
