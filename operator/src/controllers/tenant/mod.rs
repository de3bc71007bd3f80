//! The TenantAssignment controller: gives each tenant a cell — the one it is pinned to, or the
//! least utilized eligible one ([`crate::logic::placement`]) — moves it when that changes, and reports
//! it in status (cell, epoch, phase, `Placed` condition) with an Event that says why.
//!
//! Each reconcile is a pipeline, one module a step:
//! 1. **read** the object ([`controllers::object_of`]: one this operator version cannot read is
//!    an error naming it);
//! 2. **decide** where it should live ([`decide`]): a placed tenant's target — its cell, its pin,
//!    or a new cell when its own drains — and an unplaced tenant's cell, serialized through one
//!    [`PlacementState`] so concurrent reconciles never overfill a cell;
//! 3. **move** a placed tenant to a target that is not its cell ([`movement`], driving
//!    [`crate::controllers::moves`]), coming back until the move is done;
//! 4. **status**: cell, epoch, phase and conditions, with an Event on each transition
//!    ([`status`]);
//! 5. **provision** its record in its cell once the cell is Ready, and check that the cell still
//!    holds the data the status' marker names: a loss is marked and reported, never recreated
//!    as an empty tenant ([`provision`], [`crate::logic::data_marker`]).
//!
//! What brings a tenant back besides its own spec changes is in [`triggers`].

mod decide;
mod movement;
mod provision;
mod status;
mod triggers;

pub use decide::PlacementState;
pub use provision::NewRecords;
pub use triggers::{cell_triggers, resync_sweep, spec_changes};

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use cellstack_api::v1alpha1::Cell;
use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::Store,
    },
};
use tokio::sync::Mutex;

use crate::{
    cached_tenant::CachedTenant,
    cell_admin::CellAdmin,
    context::Context,
    controllers::{self, moves},
    error::Result,
};
use decide::Decision;

const CONTROLLER: &str = "tenant";
/// How often an unschedulable tenant is tried again besides cell changes.
const UNSCHEDULABLE_RECHECK: Duration = Duration::from_secs(15);

/// Condition reasons.
pub mod reason {
    pub const PLACED: &str = "Placed";
    pub const PINNED: &str = "Pinned";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const CELL_NOT_FOUND: &str = "CellNotFound";
    pub const CELL_DRAINING: &str = "CellDraining";
    pub const PINNED_TO_DRAINING: &str = "PinnedToDrainingCell";
    pub const STABLE: &str = "Stable";
    pub const DATA_LOST: &str = "DataLost";
    pub const DATA_INTACT: &str = "DataIntact";
    pub const LOSS_ACCEPTED: &str = "DataLossAccepted";
    pub const DATA_RESTORED: &str = "DataRestored";
}

/// What the TenantAssignment controller shares besides the [`Context`].
pub struct Tenants {
    pub ctx: Arc<Context>,
    pub cells: Store<DeserializeGuard<Cell>>,
    pub placement: Mutex<PlacementState>,
    /// For the cells' admin APIs.
    pub moves: moves::Settings,
    /// Tenants moved out of one draining cell at the same time.
    pub drain_concurrency: usize,
    /// Admin clients by cell, with when they were made (the token and lanes are re-read
    /// after a minute).
    pub admins: Mutex<HashMap<String, (Instant, CellAdmin)>>,
    /// New placements' records, batched per cell.
    pub new_records: NewRecords,
    /// Placement Events, published off the reconcile path.
    pub events: controllers::EventQueue,
    /// Tenants whose policy hand-over to their new cell failed, since when (tried again on the
    /// next reconcile, for a bounded time).
    pub handovers: Mutex<HashMap<String, Instant>>,
}

/// How soon a tenant whose cell could not be given its record yet is tried again.
const PROVISION_RECHECK: Duration = Duration::from_secs(3);
/// How often a tenant whose data is lost is checked again (one admin call): a restore through
/// the cell's admin API changes no Kubernetes object, so nothing else would bring it back.
const LOSS_RECHECK: Duration = Duration::from_secs(10);

/// The controller over the shared TenantAssignment store, triggered by its subscription, by
/// [`cell_triggers`] for the tenants of draining cells and of cells that became Ready again
/// (a Cell's change is not an event of the tenants it holds), and by [`resync_sweep`] once per
/// `resync` for every tenant.
pub fn controller(
    subscription: impl Stream<Item = Arc<DeserializeGuard<CachedTenant>>> + Send + 'static,
    store: Store<DeserializeGuard<CachedTenant>>,
    cells: Store<DeserializeGuard<Cell>>,
    datastores: Store<Pod>,
    resync: Duration,
) -> Controller<DeserializeGuard<CachedTenant>> {
    Controller::for_shared_stream(subscription, store.clone())
        .reconcile_on(cell_triggers(cells, datastores, store.clone()))
        .reconcile_on(resync_sweep(store, resync))
}

/// Runs the controller until `stop`; yields once per finished reconcile.
pub fn run(
    controller: Controller<DeserializeGuard<CachedTenant>>,
    shared: Arc<Tenants>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let controller = controller.with_config(controller::Config::default().concurrency(concurrency));
    controllers::run(controller, shared, stop)
}

impl controllers::Reconciler for Tenants {
    type Kind = CachedTenant;
    const NAME: &'static str = CONTROLLER;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, guard: &DeserializeGuard<CachedTenant>) -> Result<Action> {
        reconcile_inner(guard, self).await
    }
}

async fn reconcile_inner(
    guard: &DeserializeGuard<CachedTenant>,
    shared: &Tenants,
) -> Result<Action> {
    // 1. read
    let read = controllers::object_of(guard)?;
    // 2. and 3.: a placed tenant goes where it should live first.
    let moved = match movement::follow_target(read, shared).await? {
        movement::Flow::Requeue(after) => return Ok(Action::requeue(after)),
        movement::Flow::Continue(moved) => moved,
    };
    let ta = moved.as_deref().unwrap_or(read);
    // 2. where it lives now, or where it goes first
    let previous = ta.full_status().unwrap_or_default();
    let decision = decide::decision(ta, shared).await;
    // A new placement's record first, so the marker of its data goes out with its status.
    let first = match &decision {
        Decision::Place { cell, .. } if previous.data_marker.is_none() => {
            provision::create_first(shared, ta, cell, previous.epoch.max(1)).await
        }
        _ => None,
    };
    let fresh = first.is_some();
    // 4. status and Events
    let status = status::write(shared, ta, &previous, &decision, first).await?;
    // 5. its record in its cell
    let provisioned = match &status.cell {
        Some(cell) => provision::provision(shared, ta, &status, cell, fresh).await,
        None => provision::Provision::Done,
    };
    Ok(match (decision, provisioned) {
        (Decision::Unschedulable { .. }, _) => Action::requeue(UNSCHEDULABLE_RECHECK),
        // The cell is not Ready yet or did not answer: soon again, not at the next resync.
        (_, provision::Provision::NotYet) => Action::requeue(PROVISION_RECHECK),
        (_, provision::Provision::DataLost) => Action::requeue(LOSS_RECHECK),
        // Healthy: the resync sweep brings it back (no scheduler entry per tenant meanwhile).
        (_, provision::Provision::Done) => Action::await_change(),
    })
}
