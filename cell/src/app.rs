//! The cell runtime's shared state and its two listeners: the tenant API (what the router
//! reaches) and the admin listener (health, metrics, admin API; never exposed by the router).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use cellstack_api::{admin::TenantRecord, wire::Priority};
use dashmap::DashMap;
use prometheus_client::registry::Registry;

use crate::{
    error::ApiError, limiter::Limiter, metrics::Metrics, policy_file::Policies, shed::Shedder,
    store::Store,
};

/// Most tenant records remembered for answering while Redis is unreachable.
const MAX_REMEMBERED: usize = 100_000;

/// A simulated backend in front of the reference service, for demos and load tests: it shares
/// `capacity` "cores" between the requests in it (processor sharing), so each request takes
/// `work × max(1, concurrent / capacity)` — latency rises smoothly with load, which is what load
/// shedding reacts to. Off unless configured.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub capacity: usize,
    pub active: Arc<std::sync::atomic::AtomicUsize>,
    pub work: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub cell: Arc<str>,
    pub store: Arc<Store>,
    pub policies: Policies,
    pub limiter: Arc<Limiter>,
    pub shedder: Arc<Mutex<Shedder>>,
    pub metrics: Arc<Metrics>,
    pub tenant_metrics: Arc<crate::tenant_metrics::TenantMetrics>,
    pub registry: Arc<Registry>,
    pub admin_token: Arc<str>,
    /// Admin calls need a verified client certificate (`--client-ca-file`).
    pub client_certificates: bool,
    pub max_body_bytes: usize,
    pub draining: Arc<AtomicBool>,
    pub remembered: Arc<DashMap<String, TenantRecord>>,
    pub simulation: Option<Simulation>,
    /// Share of admitted requests answered `500 internal` on purpose (fault injection).
    pub failure_ratio: f64,
    /// The gateway to the cell's services, when any are listed.
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
}

/// A concurrency slot of the shedder; released (with the request's latency) when dropped.
pub struct Slot {
    shedder: Arc<Mutex<Shedder>>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shedder.lock() {
            s.release(self.started.elapsed(), Instant::now());
            self.metrics.concurrency_limit.set(s.limit() as i64);
            self.metrics.in_flight.set(i64::from(s.in_flight()));
        }
    }
}

impl AppState {
    /// Phase 4: a slot for a request of `priority`, or `None` when it must be shed.
    pub fn acquire(&self, priority: Priority) -> Option<Slot> {
        let mut s = self.shedder.lock().ok()?;
        if !s.try_acquire(priority) {
            return None;
        }
        self.metrics.in_flight.set(i64::from(s.in_flight()));
        Some(Slot {
            shedder: self.shedder.clone(),
            metrics: self.metrics.clone(),
            started: Instant::now(),
        })
    }

    pub fn remember(&self, tenant: &str, record: TenantRecord) {
        if self.remembered.len() >= MAX_REMEMBERED && !self.remembered.contains_key(tenant) {
            self.remembered.clear();
        }
        self.remembered.insert(tenant.to_owned(), record);
    }

    pub fn forget(&self, tenant: &str) {
        self.remembered.remove(tenant);
    }

    pub fn remembered(&self, tenant: &str) -> Option<TenantRecord> {
        self.remembered.get(tenant).map(|r| r.clone())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Fault injection: fails this request with the configured probability, before any work.
    pub fn injected_failure(&self) -> Result<(), ApiError> {
        if self.failure_ratio > 0.0 && rand::random::<f64>() < self.failure_ratio {
            return Err(ApiError::new(
                cellstack_api::wire::ErrorCode::Internal,
                "injected failure (--simulate-failure-ratio): nothing was done",
            ));
        }
        Ok(())
    }

    /// Runs the simulated backend's work for one request, if configured.
    pub async fn simulate_work(&self) -> Result<(), ApiError> {
        let Some(sim) = &self.simulation else {
            return Ok(());
        };
        use std::sync::atomic::Ordering::SeqCst;
        let concurrent = sim.active.fetch_add(1, SeqCst) + 1;
        let stretch = (concurrent as f64 / sim.capacity.max(1) as f64).max(1.0);
        tokio::time::sleep(sim.work.mul_f64(stretch)).await;
        sim.active.fetch_sub(1, SeqCst);
        Ok(())
    }
}

/// The tenant port's router (the gateway to the cell's services, or the reference service) and
/// the admin port's.
pub fn routers(state: AppState) -> (Router, Router) {
    let api = match state.gateway.clone() {
        Some(gateway) => crate::gateway::router(state.clone(), gateway),
        None => crate::api::router(state.clone()),
    };
    (api, crate::admin::router(state))
}
