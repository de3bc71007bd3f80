//! Confirming a cell's datastore: telling the cell that its datastore holds a record of every
//! tenant placed in it, so that it may answer a tenant it has no record of as unknown (`404`).
//! A datastore that came back without its data came back without the confirmation too, and the
//! cell answers such tenants `503 data_unavailable` until this has run again, after the tenant
//! controller marked the lost tenants (see `cellstack_api::admin::DATASTORE_PATH`).
//!
//! Each reconcile of a Ready cell asks whether its datastore is confirmed (one admin call); only
//! when it is not does it send the tenants whose records it must hold.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use cellstack_api::v1alpha1::{Cell, condition_type};
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{events::EventType, reflector::Store},
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    cached_tenant::CachedTenant,
    cell_admin::{self, CellAdmin},
    context::Context,
    controllers,
    logic::{cell::tenants, conditions},
    target::Target,
};

/// How long an admin client (lane addresses and token) is reused.
const ADMIN_TTL: Duration = Duration::from_secs(60);
/// How soon a cell whose datastore could not be confirmed is tried again.
pub const RECHECK: Duration = Duration::from_secs(3);

/// Confirms cells' datastores; holds an admin client per cell.
#[derive(Default)]
pub struct Confirmer {
    admins: Mutex<HashMap<String, (Instant, CellAdmin)>>,
}

impl Confirmer {
    /// Makes sure `cell`'s datastore (in `target`) carries the confirmation. `Some(delay)` when
    /// it does not yet (the cell is not Ready, did not answer, or misses records): reconcile
    /// again then.
    pub async fn ensure(
        &self,
        ctx: &Context,
        target: &Target,
        cell: &Cell,
        assignments: &Store<DeserializeGuard<CachedTenant>>,
    ) -> Option<Duration> {
        let name = cell.name_any();
        let ready = cell
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition_type::READY))
            && cell_admin::reachable(cell);
        if !ready {
            // The cell's own status change brings it back once it is Ready.
            return None;
        }
        let Some(admin) = self.admin(ctx, target, cell).await else {
            return Some(RECHECK);
        };
        match admin.confirmation().await {
            Ok(c) if c.confirmed => return None,
            Ok(_) => {}
            Err(e) => {
                warn!(cell = %name, error = %e, "cannot read the datastore confirmation");
                return Some(RECHECK);
            }
        }
        // Read only now: a confirmed datastore (the usual case) needs no tenant list.
        let all = assignments.state();
        let expected = tenants::recorded_in(&name, all.iter().filter_map(|g| g.0.as_ref().ok()));
        let count = expected.len();
        match admin.confirm(expected).await {
            Ok(c) if c.confirmed => {
                info!(cell = %name, tenants = count, "datastore confirmed");
                if count > 0 {
                    controllers::publish(
                        ctx,
                        &cell.object_ref(&()),
                        EventType::Normal,
                        "DatastoreConfirmed",
                        format!(
                            "the datastore holds a record of each of the {count} tenant(s) placed in the cell; a tenant it has no record of is answered 404 unknown_tenant again, not 503 data_unavailable"
                        ),
                    )
                    .await;
                }
                None
            }
            Ok(c) => {
                // Expected for a moment after a datastore came back empty: the tenant
                // controller is marking those tenants lost, and each mark brings this back.
                info!(
                    cell = %name,
                    missing = c.missing_count,
                    first = %c.missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                    "datastore not confirmed yet: tenants placed here have no record"
                );
                Some(RECHECK)
            }
            Err(e) => {
                warn!(cell = %name, error = %e, "cannot confirm the datastore");
                Some(RECHECK)
            }
        }
    }

    async fn admin(&self, ctx: &Context, target: &Target, cell: &Cell) -> Option<CellAdmin> {
        let name = cell.name_any();
        let mut admins = self.admins.lock().await;
        if let Some((_, admin)) = admins.get(&name).filter(|(at, _)| at.elapsed() < ADMIN_TTL) {
            return Some(admin.clone());
        }
        match CellAdmin::of(ctx, target, cell).await {
            Ok(admin) => {
                admins.insert(name, (Instant::now(), admin.clone()));
                Some(admin)
            }
            Err(e) => {
                warn!(cell = %name, error = %e, "cannot reach the cell's admin API");
                None
            }
        }
    }

    /// Forgets a deleted cell's client.
    pub async fn forget(&self, cell: &str) {
        self.admins.lock().await.remove(cell);
    }
}
