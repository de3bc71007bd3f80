//! The operator's HTTP listener: `/metrics`, `/livez` and `/readyz`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct ServerState {
    pub registry: Arc<Registry>,
    /// Set once shutdown starts: readiness fails first.
    pub draining: Arc<AtomicBool>,
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        // Liveness never checks dependencies: an unreachable API server must not restart us.
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(state): State<ServerState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        // A standby replica is ready too: it is healthy and waiting for the Lease.
        "ok".into_response()
    }
}

async fn metrics(State(state): State<ServerState>) -> Response {
    cellstack_runtime::metrics::response(&state.registry)
}
