//! `status.recentMoves`: the tenant's last moves that ended, newest first, kept when a move
//! reaches `Done` or `RolledBack`.

use cellstack_api::v1alpha1::{FinishedMove, MoveStatus, MoveStep, RECENT_MOVES};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// `history` with `mv` in front when `mv` has just ended and is not there yet (a status saved
/// twice records its move once), at most [`RECENT_MOVES`] long.
pub fn remember(history: &[FinishedMove], mv: &MoveStatus, now: &Time) -> Vec<FinishedMove> {
    if !matches!(mv.step, MoveStep::Done | MoveStep::RolledBack) {
        return history.to_vec();
    }
    let same =
        |f: &FinishedMove| f.from == mv.from && f.to == mv.to && f.started_at == mv.started_at;
    if history.first().is_some_and(same) {
        return history.to_vec();
    }
    let mut next = Vec::with_capacity(RECENT_MOVES);
    next.push(FinishedMove {
        from: mv.from.clone(),
        to: mv.to.clone(),
        result: mv.step,
        started_at: mv.started_at.clone(),
        finished_at: Some(now.clone()),
        keys_copied: mv.keys_copied,
        write_pause_millis: mv.write_pause_millis,
        message: mv.message.clone(),
    });
    next.extend(history.iter().filter(|f| !same(f)).cloned());
    next.truncate(RECENT_MOVES);
    next
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn mv(i: i64, step: MoveStep) -> MoveStatus {
        MoveStatus {
            from: format!("c{i}"),
            to: format!("c{}", i + 1),
            step,
            started_at: Some(Time(Timestamp::from_second(1_800_000_000 + i).expect("t"))),
            step_started_at: None,
            keys_copied: 10,
            keys_total: 10,
            fenced_at: None,
            write_pause_millis: Some(7),
            step_millis: vec![],
            message: None,
        }
    }

    #[test]
    fn ended_moves_are_kept_newest_first_once_each_and_at_most_five() {
        let now = Time(Timestamp::from_second(1_900_000_000).expect("t"));
        let mut history = Vec::new();
        // A move under way is not history yet.
        assert!(remember(&history, &mv(0, MoveStep::Copy), &now).is_empty());
        for i in 0..7 {
            let step = if i % 2 == 0 {
                MoveStep::Done
            } else {
                MoveStep::RolledBack
            };
            history = remember(&history, &mv(i, step), &now);
            // Saved again with the same ended move: nothing added.
            history = remember(&history, &mv(i, step), &now);
        }
        assert_eq!(history.len(), RECENT_MOVES);
        let froms: Vec<&str> = history.iter().map(|f| f.from.as_str()).collect();
        assert_eq!(froms, ["c6", "c5", "c4", "c3", "c2"]);
        assert_eq!(history[1].result, MoveStep::RolledBack);
        assert_eq!(history[0].write_pause_millis, Some(7));
    }
}
