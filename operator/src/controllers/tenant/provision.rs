//! The last step: a placed tenant's record in its cell, created through the cell's admin API
//! once the cell is Ready, with the tenant's own policy handed over at once when it has one (the
//! cell's policy file, a ConfigMap volume, can take a minute or more to name a new tenant; until
//! then the cell would apply the default policy).

use std::time::{Duration, Instant};

use cellstack_api::v1alpha1::{TenantAssignment, condition_type};
use kube::ResourceExt;
use tracing::{info, warn};

use super::Tenants;
use crate::{cell_admin::CellAdmin, context::readable, logic::conditions};

/// How long a cached admin client is used.
const ADMIN_TTL: Duration = Duration::from_secs(60);
/// How long a policy hand-over that failed is tried again (by then the cell's policy file names
/// the tenant).
const HANDOVER_RETRY_FOR: Duration = Duration::from_secs(600);

/// Makes sure `cell` has the tenant's record, once the cell is Ready; false when that could
/// not be done yet. Failures are logged and tried again soon: they must not hold up placement.
pub(super) async fn provision(
    shared: &Tenants,
    ta: &TenantAssignment,
    cell: &str,
    epoch: u64,
) -> bool {
    let tenant = ta.spec.tenant_id.as_str();
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
    let created = match admin.provision(tenant, epoch).await {
        Ok(created) => created,
        Err(e) => {
            shared.admins.lock().await.remove(cell);
            warn!(%tenant, %cell, error = %e, "provisioning a tenant failed; trying again soon");
            return false;
        }
    };
    if created {
        shared.ctx.metrics.tenants_provisioned.inc();
        info!(%tenant, %cell, epoch, "tenant provisioned in its cell");
    }
    let due = {
        let mut pending = shared.handovers.lock().await;
        pending.retain(|_, since| since.elapsed() < HANDOVER_RETRY_FOR);
        created || pending.contains_key(tenant)
    };
    if !due {
        return true;
    }
    let handed = match shared.ctx.policy_override(ta, cell) {
        Ok(None) => Ok(()),
        Ok(Some(handed)) => admin.hand_over_policy(tenant, &handed).await,
        Err(e) => Err(e),
    };
    let mut pending = shared.handovers.lock().await;
    match handed {
        Ok(()) => {
            pending.remove(tenant);
            true
        }
        Err(e) => {
            warn!(%tenant, %cell, error = %e, "handing a new tenant's policy to its cell failed; trying again soon");
            pending
                .entry(tenant.to_owned())
                .or_insert_with(Instant::now);
            false
        }
    }
}
