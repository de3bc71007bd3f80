//! The status and Events of a decision: cell, epoch, phase, the `Placed` and `Progressing`
//! conditions (times kept where they did not flip), and an Event that says where the tenant went
//! and why, or why it cannot go anywhere.

use cellstack_api::v1alpha1::{
    DataLoss, TenantAssignment, TenantAssignmentStatus, TenantPhase, condition_type,
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use tracing::info;

use super::{CONTROLLER, Tenants, decide::Decision, reason};
use crate::{
    cached_tenant::CachedTenant,
    controllers::{self, moves},
    error::Result,
    logic::conditions::{self, Desired},
};

/// Writes the status `decision` gives `ta` when it differs from the one it has, and publishes
/// the Event of a transition; returns the status in force. `marker`: the marker of a new
/// placement's data, created in its cell just before, written with the placement.
pub(super) async fn write(
    shared: &Tenants,
    ta: &CachedTenant,
    previous: &TenantAssignmentStatus,
    decision: &Decision,
    marker: Option<String>,
) -> Result<TenantAssignmentStatus> {
    let ctx = &shared.ctx;
    let base = match marker {
        Some(marker) => TenantAssignmentStatus {
            data_marker: Some(marker),
            ..previous.clone()
        },
        None => previous.clone(),
    };
    let status = status_for(ta, &base, decision, &Time(Timestamp::now()));
    // `previous` is the status the cache holds, rebuilt whole (default when there is none).
    if ta.status.is_some() && status == *previous {
        return Ok(status);
    }
    let api: Api<TenantAssignment> = Api::all(ctx.client.clone());
    // A merge patch, not server-side apply: placing 10k tenants is 10k of these, and apply
    // costs the API server field-ownership bookkeeping on every one. The operator is the
    // status' only writer; the resourceVersion makes a write from an outdated cache fail
    // (and retry) instead of undoing a newer one. The move record is the mover's alone.
    let mut patched = status.clone();
    patched.move_ = None;
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": ta.resource_version() },
        "status": patched,
    });
    let name = ta.name_any();
    ctx.call(
        format!("patch status of tenant {name}"),
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    ctx.metrics
        .status_patches
        .get_or_create(&crate::metrics::ControllerLabels {
            controller: CONTROLLER,
        })
        .inc();
    publish_transition(&shared.events, ta, previous, decision).await;
    Ok(status)
}

/// The status for `decision`, keeping condition times that did not flip.
pub(super) fn status_for(
    ta: &CachedTenant,
    previous: &TenantAssignmentStatus,
    decision: &Decision,
    now: &Time,
) -> TenantAssignmentStatus {
    let generation = ta.metadata.generation;
    let mut status = TenantAssignmentStatus {
        observed_generation: generation,
        ..previous.clone()
    };
    let desired = match decision {
        Decision::Keep {
            cell,
            pinned_to_draining,
        } => {
            status.phase = TenantPhase::Placed;
            let placed = previous
                .conditions
                .iter()
                .find(|c| c.type_ == condition_type::PLACED && c.status == "True")
                .map_or_else(
                    || {
                        Desired::new(
                            condition_type::PLACED,
                            true,
                            reason::PLACED,
                            format!("served by {cell}"),
                        )
                    },
                    |c| {
                        Desired::new(
                            condition_type::PLACED,
                            true,
                            known_reason(&c.reason),
                            c.message.clone(),
                        )
                    },
                );
            let progressing = if *pinned_to_draining {
                Desired::new(
                    condition_type::PROGRESSING,
                    false,
                    reason::PINNED_TO_DRAINING,
                    format!(
                        "cell {cell} is draining, but the tenant is pinned to it: change spec.cell to move it"
                    ),
                )
            } else {
                Desired::new(
                    condition_type::PROGRESSING,
                    false,
                    reason::STABLE,
                    format!("served by {cell}"),
                )
            };
            vec![placed, progressing]
        }
        Decision::Place {
            cell,
            shard_variant,
            reason,
            message,
            ..
        } => {
            status.phase = TenantPhase::Placed;
            status.cell = Some(cell.clone());
            status.shard_variant = *shard_variant;
            // The first placement is epoch 1; moves bump it from there.
            status.epoch = status.epoch.max(1);
            vec![
                Desired::new(condition_type::PLACED, true, reason, message.clone()),
                Desired::new(
                    condition_type::PROGRESSING,
                    false,
                    reason::STABLE,
                    format!("served by {cell}"),
                ),
            ]
        }
        Decision::Unschedulable { reason, message } => {
            status.phase = TenantPhase::Unschedulable;
            vec![
                Desired::new(condition_type::PLACED, false, reason, message.clone()),
                Desired::new(condition_type::PROGRESSING, false, reason, message.clone()),
            ]
        }
    };
    let mut desired = desired;
    if let Some(data) = data_condition(&status) {
        desired.push(data);
    }
    if status.data_loss.is_some() {
        status.phase = TenantPhase::DataLost;
    }
    status.conditions = conditions::merge(&previous.conditions, &desired, generation, now);
    status
}

/// The `DataLost` condition `status`' data fields give: true while a loss is unresolved, false
/// once the tenant's data has a marker; none before (a tenant not provisioned yet).
fn data_condition(status: &TenantAssignmentStatus) -> Option<Desired> {
    match (&status.data_loss, &status.data_marker) {
        (Some(loss), _) => Some(Desired::new(
            condition_type::DATA_LOST,
            true,
            reason::DATA_LOST,
            loss_message(loss),
        )),
        (None, Some(_)) => Some(Desired::new(
            condition_type::DATA_LOST,
            false,
            reason::DATA_INTACT,
            // Not the marker itself (it is in `status.dataMarker`): a message that names only
            // the cell is the same for every tenant there, held once by the operator's cache.
            format!(
                "cell {} holds the tenant's data (the marker in status.dataMarker)",
                status.cell.as_deref().unwrap_or("?")
            ),
        )),
        (None, None) => None,
    }
}

/// What a person reads about a loss: what was lost, what is there now, and the ways out.
pub(super) fn loss_message(loss: &DataLoss) -> String {
    format!(
        "cell {} lost the tenant's data (marker {}); found {}; last known: {}. Its requests are answered 503 data_unavailable. Restore it (docs/durability.md), or accept the loss: set spec.acceptDataLossOf to {}",
        loss.cell,
        loss.marker,
        loss.found,
        loss.last_known
            .as_deref()
            .unwrap_or("no verified count or digest recorded"),
        loss.marker,
    )
}

/// `status` with its data fields set to `marker` and `loss`, and the `DataLost` condition and
/// phase that follow, at `now`.
pub(super) fn with_data(
    ta: &CachedTenant,
    status: &TenantAssignmentStatus,
    marker: Option<String>,
    loss: Option<DataLoss>,
    now: &Time,
) -> TenantAssignmentStatus {
    let mut next = status.clone();
    next.data_marker = marker;
    next.data_loss = loss.map(Box::new);
    next.phase = match (&next.data_loss, status.phase) {
        (Some(_), _) => TenantPhase::DataLost,
        (None, TenantPhase::DataLost) => TenantPhase::Placed,
        (None, phase) => phase,
    };
    let mut merged: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != condition_type::DATA_LOST)
        .cloned()
        .collect();
    let data: Vec<Desired> = data_condition(&next).into_iter().collect();
    merged.extend(conditions::merge(
        &status.conditions,
        &data,
        ta.metadata.generation,
        now,
    ));
    next.conditions = merged;
    next
}

/// Writes the data fields of `next` (marker, loss, their condition and the phase): a merge
/// patch of those fields alone, with an explicit null for a loss that is resolved.
pub(super) async fn write_data(
    shared: &Tenants,
    ta: &CachedTenant,
    next: &TenantAssignmentStatus,
) -> Result<()> {
    let api: Api<TenantAssignment> = Api::all(shared.ctx.client.clone());
    let patch = serde_json::json!({
        "status": {
            "dataMarker": next.data_marker,
            "dataLoss": next.data_loss,
            "phase": next.phase,
            "conditions": next.conditions,
        },
    });
    let name = ta.name_any();
    shared
        .ctx
        .call(
            format!("record the data marker of tenant {name}"),
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
    shared
        .ctx
        .metrics
        .status_patches
        .get_or_create(&crate::metrics::ControllerLabels {
            controller: CONTROLLER,
        })
        .inc();
    Ok(())
}

fn known_reason(s: &str) -> &'static str {
    match s {
        reason::PINNED => reason::PINNED,
        moves::steps::reason::MOVED => moves::steps::reason::MOVED,
        _ => reason::PLACED,
    }
}

/// Events on transitions: where the tenant went and why, or why it cannot go anywhere.
async fn publish_transition(
    events: &controllers::EventQueue,
    ta: &CachedTenant,
    previous: &TenantAssignmentStatus,
    decision: &Decision,
) {
    let (type_, reason, note) = match decision {
        Decision::Place { explanation, .. } => (EventType::Normal, "Placed", explanation.clone()),
        Decision::Unschedulable { reason, message } => {
            let seen = previous.conditions.iter().any(|c| {
                c.type_ == condition_type::PLACED && c.reason == *reason && c.message == *message
            });
            if seen {
                return;
            }
            (EventType::Warning, *reason, message.clone())
        }
        Decision::Keep { .. } => return,
    };
    if matches!(decision, Decision::Place { .. }) {
        info!(tenant = %ta.tenant_id(), %note, "placed");
    }
    events
        .publish(ta.object_ref(&()), type_, reason, note)
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::fixtures::TenantFixture;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    #[test]
    fn a_first_placement_sets_the_cell_epoch_one_and_a_placed_condition() {
        let ta = CachedTenant::test("t1");
        let decision = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 2,
            reason: reason::PLACED,
            message: "placed on alpha: least utilized (weight 100)".into(),
            explanation: "placed on alpha: least utilized (3/1000 tenants, weight 100)".into(),
        };
        let s = status_for(&ta, &TenantAssignmentStatus::default(), &decision, &at(1));
        assert_eq!(
            (s.cell.as_deref(), s.epoch, s.shard_variant, s.phase),
            (Some("alpha"), 1, 2, TenantPhase::Placed)
        );
        assert!(conditions::is_true(&s.conditions, condition_type::PLACED));
        // The condition carries the message without the counts (the Event has them).
        let placed = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::PLACED)
            .map(|c| c.message.as_str());
        assert_eq!(placed, Some("placed on alpha: least utilized (weight 100)"));
    }

    #[test]
    fn keeping_a_placed_tenant_changes_nothing_the_second_time() {
        let ta = CachedTenant::test("t1").served_by("alpha");
        let place = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 0,
            reason: reason::PLACED,
            message: "placed on alpha".into(),
            explanation: "placed on alpha".into(),
        };
        let first = status_for(&ta, &TenantAssignmentStatus::default(), &place, &at(1));
        let keep = Decision::Keep {
            cell: "alpha".into(),
            pinned_to_draining: false,
        };
        let second = status_for(&ta, &first, &keep, &at(2));
        let third = status_for(&ta, &second, &keep, &at(3));
        assert_eq!(second, third);
        assert_eq!(
            second.conditions[0].message, "placed on alpha",
            "the placement reason stays"
        );
    }

    #[test]
    fn a_tenant_pinned_to_its_draining_cell_stays_and_says_how_to_move_it() {
        let ta = CachedTenant::test("t1")
            .pinned_to("alpha")
            .served_by("alpha");
        let previous = ta.full_status().unwrap_or_default();
        let keep = Decision::Keep {
            cell: "alpha".into(),
            pinned_to_draining: true,
        };
        let s = status_for(&ta, &previous, &keep, &at(1));
        assert_eq!(s.cell.as_deref(), Some("alpha"));
        let progressing = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::PROGRESSING)
            .expect("condition");
        assert_eq!(progressing.reason, reason::PINNED_TO_DRAINING);
        assert!(progressing.message.contains("spec.cell"));
    }

    #[test]
    fn an_unschedulable_tenant_says_why_and_keeps_no_cell() {
        let ta = CachedTenant::test("t1");
        let d = Decision::Unschedulable {
            reason: reason::UNSCHEDULABLE,
            message: "no cell in zones [z] can take tenant t1".into(),
        };
        let s = status_for(&ta, &TenantAssignmentStatus::default(), &d, &at(1));
        assert_eq!(
            (s.phase, s.cell.as_deref()),
            (TenantPhase::Unschedulable, None)
        );
        assert!(!conditions::is_true(&s.conditions, condition_type::PLACED));
    }

    fn loss() -> DataLoss {
        DataLoss {
            marker: "0123456789abcdef".into(),
            cell: "alpha".into(),
            detected_at: None,
            found: "no record".into(),
            last_known: None,
        }
    }

    fn data_lost(s: &TenantAssignmentStatus) -> Option<(String, String, String)> {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition_type::DATA_LOST)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    #[test]
    fn a_lost_tenant_stays_in_phase_data_lost_with_the_way_out_through_every_reconcile() {
        let ta = CachedTenant::test("t1").served_by("alpha");
        let mut previous = ta.full_status().unwrap_or_default();
        previous.data_marker = Some("0123456789abcdef".into());
        previous.data_loss = Some(Box::new(loss()));
        let keep = Decision::Keep {
            cell: "alpha".into(),
            pinned_to_draining: false,
        };
        let s = status_for(&ta, &previous, &keep, &at(1));
        assert_eq!(s.phase, TenantPhase::DataLost);
        let (status, reason, message) = data_lost(&s).expect("a DataLost condition");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", reason::DATA_LOST)
        );
        assert!(
            message.contains("spec.acceptDataLossOf to 0123456789abcdef"),
            "{message}"
        );
        assert_eq!(status_for(&ta, &s, &keep, &at(2)), s, "stable once written");
    }

    #[test]
    fn resolving_a_loss_clears_it_and_the_condition_turns_false_with_the_new_marker_in_the_status()
    {
        let ta = CachedTenant::test("t1").served_by("alpha");
        let mut lost = ta.full_status().unwrap_or_default();
        lost.data_loss = Some(Box::new(loss()));
        lost.phase = TenantPhase::DataLost;
        let keep = Decision::Keep {
            cell: "alpha".into(),
            pinned_to_draining: false,
        };
        let lost = status_for(&ta, &lost, &keep, &at(1));
        let resolved = with_data(&ta, &lost, Some("fedcba9876543210".into()), None, &at(2));
        assert_eq!(resolved.phase, TenantPhase::Placed);
        assert!(resolved.data_loss.is_none());
        let (status, reason, message) = data_lost(&resolved).expect("a DataLost condition");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", reason::DATA_INTACT)
        );
        assert_eq!(resolved.data_marker.as_deref(), Some("fedcba9876543210"));
        // The message names the cell and where the marker is, not the marker: the same for
        // every tenant of the cell.
        assert_eq!(
            message,
            "cell alpha holds the tenant's data (the marker in status.dataMarker)"
        );
        // The other conditions are kept as they were.
        assert!(conditions::is_true(
            &resolved.conditions,
            condition_type::PLACED
        ));
    }

    #[test]
    fn a_tenant_without_a_marker_has_no_data_condition_yet() {
        let ta = CachedTenant::test("t1");
        let d = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 0,
            reason: reason::PLACED,
            message: "placed on alpha".into(),
            explanation: "placed on alpha".into(),
        };
        let s = status_for(&ta, &TenantAssignmentStatus::default(), &d, &at(1));
        assert!(data_lost(&s).is_none());
    }
}
