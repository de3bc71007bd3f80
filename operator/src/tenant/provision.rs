//! The last step: a placed tenant's record in its cell, created through the cell's admin API
//! once the cell is Ready.

use std::time::{Duration, Instant};

use cellstack_api::v1alpha1::condition_type;
use kube::ResourceExt;
use tracing::{info, warn};

use super::Tenants;
use crate::{cell_admin::CellAdmin, conditions, context::readable};

/// How long a cached admin client is used.
const ADMIN_TTL: Duration = Duration::from_secs(60);

/// Makes sure `cell` has the tenant's record, once the cell is Ready; false when that could
/// not be done yet. Failures are logged and tried again soon: they must not hold up placement.
pub(super) async fn provision(shared: &Tenants, tenant: &str, cell: &str, epoch: u64) -> bool {
    let found = readable(&shared.cells)
        .into_iter()
        .find(|c| c.name_any() == cell);
    let Some(found) = found.filter(|c| {
        c.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition_type::READY))
            && crate::cell_admin::reachable(c)
    }) else {
        return false;
    };
    let admin = {
        let mut admins = shared.admins.lock().await;
        match admins.get(cell).filter(|(at, _)| at.elapsed() < ADMIN_TTL) {
            Some((_, admin)) => admin.clone(),
            None => match CellAdmin::of(&shared.ctx, &shared.http, &found).await {
                Ok(admin) => {
                    admins.insert(cell.to_owned(), (Instant::now(), admin.clone()));
                    admin
                }
                Err(e) => {
                    warn!(%tenant, %cell, error = %e, "cannot reach the cell to provision a tenant");
                    return false;
                }
            },
        }
    };
    match admin.provision(tenant, epoch).await {
        Ok(true) => {
            shared.ctx.metrics.tenants_provisioned.inc();
            info!(%tenant, %cell, epoch, "tenant provisioned in its cell");
            true
        }
        Ok(false) => true,
        Err(e) => {
            shared.admins.lock().await.remove(cell);
            warn!(%tenant, %cell, error = %e, "provisioning a tenant failed; trying again soon");
            false
        }
    }
}
