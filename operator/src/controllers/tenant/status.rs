//! The status and Events of a decision: cell, epoch, phase, the `Placed` and `Progressing`
//! conditions (times kept where they did not flip), and an Event that says where the tenant went
//! and why, or why it cannot go anywhere.

use cellstack_api::v1alpha1::{
    TenantAssignment, TenantAssignmentStatus, TenantPhase, condition_type,
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
    controllers::{self, moves},
    error::Result,
    logic::conditions::{self, Desired},
};

/// Writes the status `decision` gives `ta` when it differs from the one it has, and publishes
/// the Event of a transition; returns the status in force.
pub(super) async fn write(
    shared: &Tenants,
    ta: &TenantAssignment,
    previous: &TenantAssignmentStatus,
    decision: &Decision,
) -> Result<TenantAssignmentStatus> {
    let ctx = &shared.ctx;
    let status = status_for(ta, previous, decision, &Time(Timestamp::now()));
    if Some(&status) == ta.status.as_ref() {
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
    ta: &TenantAssignment,
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
            explanation,
        } => {
            status.phase = TenantPhase::Placed;
            status.cell = Some(cell.clone());
            status.shard_variant = *shard_variant;
            // The first placement is epoch 1; moves bump it from there.
            status.epoch = status.epoch.max(1);
            vec![
                Desired::new(condition_type::PLACED, true, reason, explanation.clone()),
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
    status.conditions = conditions::merge(&previous.conditions, &desired, generation, now);
    status
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
    ta: &TenantAssignment,
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
        info!(tenant = %ta.spec.tenant_id, %note, "placed");
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
        let ta = TenantAssignment::test("t1");
        let decision = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 2,
            reason: reason::PLACED,
            explanation: "placed on alpha: least utilized".into(),
        };
        let s = status_for(&ta, &TenantAssignmentStatus::default(), &decision, &at(1));
        assert_eq!(
            (s.cell.as_deref(), s.epoch, s.shard_variant, s.phase),
            (Some("alpha"), 1, 2, TenantPhase::Placed)
        );
        assert!(conditions::is_true(&s.conditions, condition_type::PLACED));
    }

    #[test]
    fn keeping_a_placed_tenant_changes_nothing_the_second_time() {
        let ta = TenantAssignment::test("t1").served_by("alpha");
        let place = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 0,
            reason: reason::PLACED,
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
        let ta = TenantAssignment::test("t1")
            .pinned_to("alpha")
            .served_by("alpha");
        let previous = ta.status.clone().unwrap_or_default();
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
        let ta = TenantAssignment::test("t1");
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
}
