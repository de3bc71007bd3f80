//! The last step: a placed tenant's record in its cell, created through the cell's admin API
//! once the cell is Ready, with the tenant's own policy handed over at once when it has one (the
//! cell's policy file, a ConfigMap volume, can take a minute or more to name a new tenant; until
//! then the cell would apply the default policy).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{NewTenant, NewTenantOutcome},
    v1alpha1::{Cell, DataLoss, MoveStep, TenantAssignmentStatus, condition_type},
};
use cellstack_runtime::batch::{BatchError, BatchSettings, Batcher};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Resource, ResourceExt, runtime::events::EventType};
use tracing::{error, info, warn};

use super::{Tenants, reason, status};
use crate::{
    cached_tenant::CachedTenant,
    cell_admin::{CellAdmin, Provisioned},
    context::with_readable,
    error::{Error, Result},
    logic::{
        conditions,
        data_marker::{self, Judgement},
    },
    metrics::Metrics,
};

/// How long a cached admin client is used.
const ADMIN_TTL: Duration = Duration::from_secs(60);
/// How long a policy hand-over that failed is tried again (by then the cell's policy file names
/// the tenant).
const HANDOVER_RETRY_FOR: Duration = Duration::from_secs(600);

/// What provisioning came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Provision {
    /// The cell has the tenant's record and data (and its policy, when it has its own).
    Done,
    /// Not yet: the cell is not Ready, did not answer, or a call failed; soon again.
    NotYet,
    /// The cell lost the tenant's data and the loss is not resolved: checked again often, since
    /// a restore through the cell's admin API is no Kubernetes event.
    DataLost,
}

/// The Ready cell named `cell` and a client of its admin API (cached for a minute); none while
/// the cell is not Ready or cannot be reached.
async fn ready_admin(shared: &Tenants, tenant: &str, cell: &str) -> Option<(Cell, CellAdmin)> {
    let found = with_readable(&shared.cells, cell, |c| {
        let ready = c
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition_type::READY));
        (ready && crate::cell_admin::reachable(c)).then(|| c.clone())
    })
    .flatten()?;
    let mut admins = shared.admins.lock().await;
    if let Some((_, admin)) = admins.get(cell).filter(|(at, _)| at.elapsed() < ADMIN_TTL) {
        return Some((found, admin.clone()));
    }
    let admin = match shared.ctx.target_of(&found) {
        Ok(target) => CellAdmin::of(&shared.ctx, &target, &found).await,
        Err(e) => Err(e),
    };
    match admin {
        Ok(admin) => {
            admins.insert(cell.to_owned(), (Instant::now(), admin.clone()));
            Some((found, admin))
        }
        Err(e) => {
            warn!(%tenant, %cell, error = %e, "cannot reach the cell to provision a tenant");
            None
        }
    }
}

/// New placements' records, one batcher per cell: the placements that arrive while a call to
/// the cell is out share the next one ([`cellstack_runtime::batch`]), so thousands of new
/// tenants cost the cell tens of durable writes, not thousands.
#[derive(Default)]
pub struct NewRecords {
    by_cell: std::sync::Mutex<HashMap<String, NewRecordBatcher>>,
}

type NewRecordBatcher = Batcher<(CellAdmin, NewTenant), NewTenantOutcome, Error>;

/// Most new records in one call (the cell takes up to `admin::NEW_TENANTS_MAX`).
const NEW_RECORDS_PER_CALL: usize = 128;
/// Calls out to one cell at once.
const NEW_RECORD_CALLS: usize = 2;
/// Longest a placement waits for its record: longer than one admin call with its retries.
const NEW_RECORD_DEADLINE: Duration = Duration::from_secs(45);

impl NewRecords {
    fn batcher(&self, cell: &str, metrics: &Arc<Metrics>) -> NewRecordBatcher {
        let mut by_cell = self.by_cell.lock().unwrap_or_else(|e| e.into_inner());
        by_cell
            .entry(cell.to_owned())
            .or_insert_with(|| {
                let metrics = metrics.clone();
                Batcher::spawn(
                    BatchSettings {
                        max_batch: NEW_RECORDS_PER_CALL,
                        in_flight: NEW_RECORD_CALLS,
                        queue: 4096,
                        deadline: NEW_RECORD_DEADLINE,
                    },
                    |batch: Vec<(CellAdmin, NewTenant)>| async move {
                        // Every request names the same cell; the newest client is as good as any.
                        let Some(admin) = batch.last().map(|(a, _)| a.clone()) else {
                            return Ok(Vec::new());
                        };
                        admin
                            .new_tenants(batch.into_iter().map(|(_, t)| t).collect())
                            .await
                    },
                    move |n| metrics.new_tenant_records_per_call.observe(n as f64),
                )
            })
            .clone()
    }
}

/// A new placement's record, created in `cell` before the placement's status is written, so the
/// marker of its data goes out in that one status write (a second write per new tenant would
/// halve how fast thousands of tenants are placed). The marker of the record the cell now holds;
/// none when the cell is not Ready or the call failed (then [`provision`] creates it later and
/// writes the marker on its own). A record the cell already has for the tenant (an earlier
/// reconcile that stopped before its status write) is kept, with its marker.
pub(super) async fn create_first(
    shared: &Tenants,
    ta: &CachedTenant,
    cell: &str,
    epoch: u64,
) -> Option<String> {
    let tenant = ta.tenant_id();
    let (_, admin) = ready_admin(shared, tenant, cell).await?;
    let new = NewTenant {
        tenant: tenant.to_owned(),
        epoch,
        marker: data_marker::new_marker(),
    };
    let batcher = shared.new_records.batcher(cell, &shared.ctx.metrics);
    let outcome = match batcher.call((admin.clone(), new)).await {
        Ok(outcome) => outcome,
        // A cell of an earlier version, without the batch call: one tenant at a time.
        Err(BatchError::Call(e))
            if matches!(
                &*e,
                Error::CellAdminRefused {
                    status: 404 | 405,
                    ..
                }
            ) =>
        {
            return create_alone(shared, &admin, tenant, cell, epoch).await;
        }
        Err(e) => {
            shared.admins.lock().await.remove(cell);
            warn!(%tenant, %cell, error = %e, "creating a new tenant's record failed; trying again soon");
            return None;
        }
    };
    if outcome.created {
        shared.ctx.metrics.tenants_provisioned.inc();
        return outcome.record.marker;
    }
    match data_marker::judge(Some(&outcome.record), None) {
        Judgement::Adopt {
            marker: Some(marker),
        } => Some(marker),
        // A record without a marker (made before markers existed) or one the cell answers as
        // lost: the one-tenant path marks or reports it.
        _ => create_alone(shared, &admin, tenant, cell, epoch).await,
    }
}

/// [`create_first`] through the one-tenant admin calls (read, then create or adopt).
async fn create_alone(
    shared: &Tenants,
    admin: &CellAdmin,
    tenant: &str,
    cell: &str,
    epoch: u64,
) -> Option<String> {
    match admin.provision(tenant, epoch, None).await {
        Ok(Provisioned::Created { marker }) => {
            shared.ctx.metrics.tenants_provisioned.inc();
            Some(marker)
        }
        Ok(Provisioned::Present { marker }) => Some(marker),
        Ok(Provisioned::Lost { .. } | Provisioned::StillLost { .. }) => None,
        Err(e) => {
            shared.admins.lock().await.remove(cell);
            warn!(%tenant, %cell, error = %e, "creating a new tenant's record failed; trying again soon");
            None
        }
    }
}

/// Makes sure `cell` has the tenant's record, once the cell is Ready, and that it still holds
/// the data `status.dataMarker` names. A loss is marked in the cell and reported (status,
/// condition, Events); an accepted loss is replaced by an empty tenant under a new marker.
/// `fresh`: the record was just created by [`create_first`], so the tenant's own policy is
/// handed over. Failures are logged and tried again soon: they must not hold up placement.
pub(super) async fn provision(
    shared: &Tenants,
    ta: &CachedTenant,
    status: &TenantAssignmentStatus,
    cell: &str,
    fresh: bool,
) -> Provision {
    let tenant = ta.tenant_id();
    let epoch = status.epoch;
    let Some((found, admin)) = ready_admin(shared, tenant, cell).await else {
        return Provision::NotYet;
    };
    // A record `create_first` made a moment ago needs no second look.
    let checked = if fresh {
        Ok(Data::Fresh)
    } else {
        check_data(shared, ta, status, &found, &admin).await
    };
    let created = match checked {
        Ok(Data::Lost) => return Provision::DataLost,
        Ok(data) => data == Data::Fresh,
        Err(e) => {
            shared.admins.lock().await.remove(cell);
            warn!(%tenant, %cell, error = %e, "provisioning a tenant failed; trying again soon");
            return Provision::NotYet;
        }
    };
    if created {
        info!(%tenant, %cell, epoch, "tenant provisioned in its cell");
    }
    let due = {
        let mut pending = shared.handovers.lock().await;
        pending.retain(|_, since| since.elapsed() < HANDOVER_RETRY_FOR);
        created || pending.contains_key(tenant)
    };
    if !due {
        return Provision::Done;
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
            Provision::Done
        }
        Err(e) => {
            warn!(%tenant, %cell, error = %e, "handing a new tenant's policy to its cell failed; trying again soon");
            pending
                .entry(tenant.to_owned())
                .or_insert_with(Instant::now);
            Provision::NotYet
        }
    }
}

/// What the record check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    /// The record was (re)created, or first recorded in the status: its policy is handed over.
    Fresh,
    /// The record is there with the tenant's marker.
    Kept,
    /// The data is lost and the loss not resolved.
    Lost,
}

/// The record check of [`provision`]: judges the cell's record against the status' marker, acts
/// on the judgement, and records the outcome in the status.
async fn check_data(
    shared: &Tenants,
    ta: &CachedTenant,
    status: &TenantAssignmentStatus,
    cell: &Cell,
    admin: &CellAdmin,
) -> Result<Data> {
    let tenant = ta.tenant_id();
    let cell_name = cell.name_any();
    let now = Time(Timestamp::now());
    let metrics = &shared.ctx.metrics;
    // An accepted loss: the tenant is served again, empty, under a new marker.
    if let Some(loss) = &status.data_loss
        && loss.cell == cell_name
        && ta.spec.accept_data_loss_of.as_deref() == Some(loss.marker.as_str())
        && let Some(marker) = admin.accept_loss(tenant, status.epoch).await?
    {
        let next = status::with_data(ta, status, Some(marker.clone()), None, &now);
        status::write_data(shared, ta, &next).await?;
        metrics.tenant_data_losses_accepted.inc();
        let note = format!(
            "the loss of the tenant's data (marker {}) in cell {cell_name} was accepted: it is served again, empty, under marker {marker}",
            loss.marker
        );
        warn!(%tenant, cell = %cell_name, lost = %loss.marker, %marker, "data loss accepted; tenant served again, empty");
        shared
            .events
            .publish(
                ta.object_ref(&()),
                EventType::Normal,
                reason::LOSS_ACCEPTED,
                note,
            )
            .await;
        return Ok(Data::Fresh);
    }
    let outcome = admin
        .provision(tenant, status.epoch, status.data_marker.as_deref())
        .await?;
    let created = matches!(outcome, Provisioned::Created { .. });
    match outcome {
        Provisioned::Present { marker } | Provisioned::Created { marker } => {
            if created {
                metrics.tenants_provisioned.inc();
            }
            // A record the status has no marker for yet is as good as new for the policy
            // hand-over: its creation's status write may have failed after the record was made.
            let fresh = if created || status.data_marker.is_none() {
                Data::Fresh
            } else {
                Data::Kept
            };
            if status.data_marker.as_deref() == Some(marker.as_str()) && status.data_loss.is_none()
            {
                return Ok(fresh);
            }
            let restored = status.data_loss.clone();
            let next = status::with_data(ta, status, Some(marker), None, &now);
            status::write_data(shared, ta, &next).await?;
            if let Some(loss) = restored {
                let note = format!(
                    "cell {cell_name} holds the tenant's data again (marker {}): the loss reported earlier is resolved",
                    loss.marker
                );
                shared
                    .events
                    .publish(
                        ta.object_ref(&()),
                        EventType::Normal,
                        reason::DATA_RESTORED,
                        note,
                    )
                    .await;
            }
            Ok(fresh)
        }
        Provisioned::Lost { marker, found } => {
            report_loss(shared, ta, status, cell, marker, found, &now).await?;
            Ok(Data::Lost)
        }
        Provisioned::StillLost { marker } => {
            // Marked lost in the cell, but not (yet) in the status: an operator that stopped
            // between the two, or a loss another tool marked.
            if status.data_loss.is_none() {
                let marker = marker
                    .or_else(|| status.data_marker.clone())
                    .unwrap_or_default();
                let found = "the cell already answers the tenant as lost".to_owned();
                report_loss(shared, ta, status, cell, marker, found, &now).await?;
            }
            Ok(Data::Lost)
        }
    }
}

/// Records a loss in the status and tells people: a Warning Event on the tenant and on its
/// cell, an ERROR log line, and the loss counter.
async fn report_loss(
    shared: &Tenants,
    ta: &CachedTenant,
    status: &TenantAssignmentStatus,
    cell: &Cell,
    marker: String,
    found: String,
    now: &Time,
) -> Result<()> {
    let tenant = ta.tenant_id();
    let cell_name = cell.name_any();
    let loss = DataLoss {
        marker,
        cell: cell_name.clone(),
        detected_at: Some(now.clone()),
        found,
        last_known: last_known(status, &cell_name),
    };
    let message = status::loss_message(&loss);
    let next = status::with_data(ta, status, status.data_marker.clone(), Some(loss), now);
    status::write_data(shared, ta, &next).await?;
    shared.ctx.metrics.tenant_data_losses.inc();
    error!(%tenant, cell = %cell_name, %message, "tenant data lost");
    shared
        .events
        .publish(
            ta.object_ref(&()),
            EventType::Warning,
            reason::DATA_LOST,
            message.clone(),
        )
        .await;
    shared
        .events
        .publish(
            cell.object_ref(&()),
            EventType::Warning,
            reason::DATA_LOST,
            format!("tenant {tenant}: {message}"),
        )
        .await;
    Ok(())
}

/// The tenant's last verified figures in `cell`: the key count of the move that brought it
/// there (checked by count and digest before its Flip), if that is the last thing known.
fn last_known(status: &TenantAssignmentStatus, cell: &str) -> Option<String> {
    let mv = status.move_.as_ref()?;
    (mv.to == cell && mv.step == MoveStep::Done).then(|| {
        format!(
            "{} keys, count and digest verified when it moved here from {}{}",
            mv.keys_copied,
            mv.from,
            mv.started_at
                .as_ref()
                .map(|t| format!(" (move started {})", t.0))
                .unwrap_or_default()
        )
    })
}
