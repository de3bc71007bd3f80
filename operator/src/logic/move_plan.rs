//! The move state machine's decisions, as a plain function over plain values: given where the
//! tenant is, where it should be and the move recorded in its status, what to do next. The
//! steps themselves ([`super::steps`]) do the I/O; this decides which one, so every branch —
//! resume after a crash, cancel, roll back on the pause bound, retry after a rollback — is
//! tested without a cluster.
//!
//! Rules:
//! - Before Flip a move can be undone: when the spec stops asking for its target, or when the
//!   tenant's writes have been paused (since the Fence step began) longer than the bound.
//! - From Flip on it only goes forward: the target may already have accepted writes.
//! - A rolled-back move to the same target is tried again only after a delay, so a move that
//!   cannot finish (say a tenant too busy for the pause bound) does not loop.

use std::time::Duration;

use cellstack_api::v1alpha1::{MoveStatus, MoveStep};
use k8s_openapi::jiff::Timestamp;

/// Knobs of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Longest write pause (Fence to Flip) before a move rolls back instead.
    pub max_pause: Duration,
    /// How long after Flip the source copy is kept (in-flight requests finish or are retried).
    pub grace: Duration,
    /// How long after a rollback the same move is tried again.
    pub retry_after_rollback: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_pause: Duration::from_secs(1),
            grace: Duration::from_secs(10),
            retry_after_rollback: Duration::from_secs(300),
        }
    }
}

/// What to do next for a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// No move wanted and none under way.
    Idle,
    /// Begin a move (its first step is Prepare).
    Start { from: String, to: String },
    /// Run this step of the recorded move.
    Run(MoveStep),
    /// Undo the recorded move (it has not flipped), for this reason.
    RollBack(String),
    /// Nothing to do until then.
    Wait(Duration),
}

/// Whether a move in this step is still under way.
pub fn in_progress(step: MoveStep) -> bool {
    !matches!(step, MoveStep::Done | MoveStep::RolledBack)
}

/// Whether a move in this step counts against `--drain-concurrency`: it is under way and has not
/// flipped yet (or is being undone). A move in `Cleanup` has flipped: the tenant is served by its
/// new cell and only the old copy waits out its grace, which costs the draining cell nothing.
pub fn holds_drain_slot(step: MoveStep) -> bool {
    in_progress(step) && step != MoveStep::Cleanup
}

/// Whether a move in this step can still be undone.
pub fn before_flip(step: MoveStep) -> bool {
    matches!(
        step,
        MoveStep::Prepare | MoveStep::Copy | MoveStep::Fence | MoveStep::CatchUp
    )
}

fn since(
    at: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: Timestamp,
) -> Duration {
    at.map_or(Duration::ZERO, |t| {
        now.duration_since(t.0).try_into().unwrap_or(Duration::ZERO)
    })
}

/// The next thing to do for a tenant served by `cell` that should live in `wanted` (`None`:
/// wherever it is), with `recorded` the move in its status. `measured_pause` is the write pause
/// as this process measured it, when it did the fencing itself: the record's `fencedAt` has
/// whole seconds only and may overstate the pause by up to a second, which is fine for a
/// resumed move (a restart takes longer than that) but not for the mover that just fenced.
pub fn next(
    cell: &str,
    wanted: Option<&str>,
    recorded: Option<&MoveStatus>,
    measured_pause: Option<Duration>,
    now: Timestamp,
    settings: &Settings,
) -> Next {
    if let Some(mv) = recorded.filter(|mv| in_progress(mv.step)) {
        if before_flip(mv.step) {
            if wanted != Some(mv.to.as_str()) {
                return Next::RollBack(match wanted {
                    Some(other) => format!(
                        "the tenant should now live in {other}, not {}: undoing the move before it flipped",
                        mv.to
                    ),
                    None => format!(
                        "the tenant should no longer move to {}: undoing the move before it flipped",
                        mv.to
                    ),
                });
            }
            if matches!(mv.step, MoveStep::Fence | MoveStep::CatchUp) {
                let paused = measured_pause.unwrap_or_else(|| since(mv.fenced_at.as_ref(), now));
                if (measured_pause.is_some() || mv.fenced_at.is_some())
                    && paused > settings.max_pause
                {
                    return Next::RollBack(format!(
                        "writes have been paused for {} ms, more than the {} ms bound (the operator restarted mid-fence, or catch-up was too slow): undoing the move",
                        paused.as_millis(),
                        settings.max_pause.as_millis()
                    ));
                }
            }
        }
        if mv.step == MoveStep::Cleanup {
            let waited = since(mv.step_started_at.as_ref(), now);
            if waited < settings.grace {
                return Next::Wait(settings.grace - waited);
            }
        }
        return Next::Run(mv.step);
    }
    let Some(target) = wanted.filter(|w| *w != cell) else {
        return Next::Idle;
    };
    if let Some(mv) = recorded
        && mv.step == MoveStep::RolledBack
        && mv.to == target
        && mv.from == cell
    {
        let waited = since(mv.step_started_at.as_ref(), now);
        if waited < settings.retry_after_rollback {
            return Next::Wait(settings.retry_after_rollback - waited);
        }
    }
    Next::Start {
        from: cell.to_owned(),
        to: target.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    fn mv(step: MoveStep, started: i64) -> MoveStatus {
        MoveStatus {
            from: "alpha".into(),
            to: "bravo".into(),
            step,
            started_at: Some(Time(at(0))),
            step_started_at: Some(Time(at(started))),
            keys_copied: 0,
            keys_total: 0,
            fenced_at: matches!(step, MoveStep::Fence | MoveStep::CatchUp)
                .then(|| Time(at(started))),
            write_pause_millis: None,
            step_millis: vec![],
            message: None,
        }
    }

    const S: Settings = Settings {
        max_pause: Duration::from_secs(1),
        grace: Duration::from_secs(10),
        retry_after_rollback: Duration::from_secs(300),
    };

    #[test]
    fn nothing_to_do_when_the_tenant_is_where_it_should_be() {
        assert_eq!(next("alpha", None, None, None, at(5), &S), Next::Idle);
        assert_eq!(
            next("alpha", Some("alpha"), None, None, at(5), &S),
            Next::Idle
        );
        let done = mv(MoveStep::Done, 1);
        assert_eq!(
            next("bravo", Some("bravo"), Some(&done), None, at(5), &S),
            Next::Idle
        );
    }

    #[test]
    fn a_new_target_starts_a_move_from_the_serving_cell() {
        assert_eq!(
            next("alpha", Some("bravo"), None, None, at(5), &S),
            Next::Start {
                from: "alpha".into(),
                to: "bravo".into()
            }
        );
    }

    #[test]
    fn a_recorded_step_resumes_where_it_stopped() {
        for step in [
            MoveStep::Prepare,
            MoveStep::Copy,
            MoveStep::Flip,
            MoveStep::RollingBack,
        ] {
            assert_eq!(
                next("alpha", Some("bravo"), Some(&mv(step, 5)), None, at(5), &S),
                Next::Run(step),
                "{step:?}"
            );
        }
        // Within the pause bound, a fence resumes too.
        let fence = mv(MoveStep::Fence, 5);
        assert_eq!(
            next("alpha", Some("bravo"), Some(&fence), None, at(5), &S),
            Next::Run(MoveStep::Fence)
        );
    }

    #[test]
    fn the_pause_this_process_measured_beats_the_coarse_record() {
        // Recorded at second 5, read at 6.06: the record says 1060 ms, the mover measured 90.
        let fence = mv(MoveStep::Fence, 5);
        let now = Timestamp::from_millisecond(6_060).expect("time");
        assert!(matches!(
            next("alpha", Some("bravo"), Some(&fence), None, now, &S),
            Next::RollBack(_)
        ));
        assert_eq!(
            next(
                "alpha",
                Some("bravo"),
                Some(&fence),
                Some(Duration::from_millis(90)),
                now,
                &S
            ),
            Next::Run(MoveStep::Fence)
        );
        assert!(matches!(
            next(
                "alpha",
                Some("bravo"),
                Some(&fence),
                Some(Duration::from_millis(1_500)),
                at(5),
                &S
            ),
            Next::RollBack(_)
        ));
    }

    #[test]
    fn a_fence_older_than_the_pause_bound_rolls_back() {
        let fence = mv(MoveStep::Fence, 5);
        let Next::RollBack(why) = next("alpha", Some("bravo"), Some(&fence), None, at(7), &S)
        else {
            panic!("expected a rollback");
        };
        assert!(why.contains("2000 ms") && why.contains("1000 ms"), "{why}");
    }

    #[test]
    fn changing_the_target_before_flip_undoes_the_move_but_not_after() {
        let copy = mv(MoveStep::Copy, 5);
        assert!(matches!(
            next("alpha", Some("alpha"), Some(&copy), None, at(6), &S),
            Next::RollBack(_)
        ));
        assert!(matches!(
            next("alpha", Some("charlie"), Some(&copy), None, at(6), &S),
            Next::RollBack(why) if why.contains("charlie")
        ));
        // Flipped: the target may have taken writes; only forward.
        let flip = mv(MoveStep::Flip, 5);
        assert_eq!(
            next("alpha", Some("alpha"), Some(&flip), None, at(60), &S),
            Next::Run(MoveStep::Flip)
        );
    }

    #[test]
    fn cleanup_waits_for_the_grace_period() {
        let cleanup = mv(MoveStep::Cleanup, 100);
        assert_eq!(
            next("bravo", Some("bravo"), Some(&cleanup), None, at(104), &S),
            Next::Wait(Duration::from_secs(6))
        );
        assert_eq!(
            next("bravo", Some("bravo"), Some(&cleanup), None, at(110), &S),
            Next::Run(MoveStep::Cleanup)
        );
    }

    #[test]
    fn a_rolled_back_move_is_retried_only_after_the_delay_or_for_another_target() {
        let rolled = mv(MoveStep::RolledBack, 100);
        assert_eq!(
            next("alpha", Some("bravo"), Some(&rolled), None, at(160), &S),
            Next::Wait(Duration::from_secs(240))
        );
        assert!(matches!(
            next("alpha", Some("bravo"), Some(&rolled), None, at(400), &S),
            Next::Start { .. }
        ));
        assert_eq!(
            next("alpha", Some("charlie"), Some(&rolled), None, at(160), &S),
            Next::Start {
                from: "alpha".into(),
                to: "charlie".into()
            }
        );
        assert_eq!(
            next("alpha", Some("alpha"), Some(&rolled), None, at(160), &S),
            Next::Idle
        );
    }
}
