//! How the moves in progress stand, for the metrics an alert on a stuck move reads: how many
//! there are and how long the one longest in its current step has been there. Pure: the caller
//! passes the tenants and the time.

use cellstack_api::v1alpha1::MoveStep;
use k8s_openapi::jiff::Timestamp;

use crate::cached_tenant::CachedTenant;

/// The moves in progress among some tenants.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MovesInProgress {
    /// Tenants whose move has neither finished nor been rolled back.
    pub count: u64,
    /// Seconds the move longest in its current step has been in it (0 with none). A step
    /// without a start time counts from the move's start.
    pub longest_step_seconds: f64,
}

/// Whether a move at `step` is still going.
pub fn in_progress(step: MoveStep) -> bool {
    !matches!(step, MoveStep::Done | MoveStep::RolledBack)
}

/// The moves in progress among `tenants` at `now`.
pub fn of<'a>(
    tenants: impl IntoIterator<Item = &'a CachedTenant>,
    now: Timestamp,
) -> MovesInProgress {
    let mut out = MovesInProgress::default();
    for tenant in tenants {
        let Some(m) = tenant.status.as_ref().and_then(|s| s.move_.as_ref()) else {
            continue;
        };
        if !in_progress(m.step) {
            continue;
        }
        out.count += 1;
        if let Some(since) = m.step_started_at.as_ref().or(m.started_at.as_ref()) {
            let seconds = now.duration_since(since.0).as_secs_f64().max(0.0);
            out.longest_step_seconds = out.longest_step_seconds.max(seconds);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use cellstack_api::v1alpha1::{MoveStatus, TenantAssignment, TenantAssignmentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::fixtures::TenantFixture;

    fn tenant(
        step: Option<MoveStep>,
        step_started: Option<i64>,
        started: Option<i64>,
    ) -> CachedTenant {
        let at = |s: i64| Time(Timestamp::from_second(s).unwrap());
        let mut t = TenantAssignment::test("t");
        t.status = Some(TenantAssignmentStatus {
            move_: step.map(|step| {
                Box::new(MoveStatus {
                    from: "a".into(),
                    to: "b".into(),
                    step,
                    started_at: started.map(at),
                    step_started_at: step_started.map(at),
                    keys_copied: 0,
                    keys_total: 0,
                    fenced_at: None,
                    write_pause_millis: None,
                    step_millis: vec![],
                    message: None,
                })
            }),
            ..Default::default()
        });
        t.into()
    }

    #[test]
    fn finished_and_rolled_back_moves_are_not_in_progress() {
        let now = Timestamp::from_second(1_000).unwrap();
        let tenants = [
            tenant(None, None, None),
            tenant(Some(MoveStep::Done), Some(0), Some(0)),
            tenant(Some(MoveStep::RolledBack), Some(0), Some(0)),
        ];
        assert_eq!(of(&tenants, now), MovesInProgress::default());
    }

    #[test]
    fn the_longest_step_counts_from_the_step_or_else_the_move() {
        let now = Timestamp::from_second(1_000).unwrap();
        let tenants = [
            tenant(Some(MoveStep::Copy), Some(990), Some(900)),
            tenant(Some(MoveStep::RollingBack), None, Some(700)),
            tenant(Some(MoveStep::Fence), Some(999), Some(600)),
            // A clock ahead of ours is no negative age.
            tenant(Some(MoveStep::Prepare), Some(1_010), None),
        ];
        let got = of(&tenants, now);
        assert_eq!(got.count, 4);
        assert_eq!(got.longest_step_seconds, 300.0);
    }
}
