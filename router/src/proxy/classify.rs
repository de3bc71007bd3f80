//! Phase 6: what a lane's answer means for the request — a pure function of the answer and of
//! the request's tries so far, so every case is unit-tested without a lane.
//!
//! | answer | verdict |
//! |---|---|
//! | `moved` (421), not followed yet | [`Verdict::FollowMove`] to the named cell |
//! | `stale_epoch` (409), not followed yet | [`Verdict::RetryAtEpoch`], the cell's |
//! | `fenced` (503), body buffered | [`Verdict::WaitOutFence`] |
//! | `shed`/`unavailable` (503) that [`may_retry`] | [`Verdict::RetryElsewhere`], reason `refused`; if the budget says no, the answer goes back and the lane counts as healthy (it refused by design) |
//! | a 5xx without a code, or `internal` | the lane is failing; [`Verdict::RetryElsewhere`] (`5xx`) if [`may_retry`], else returned |
//! | connection failed | the lane is failing; retried (`error`) if [`may_retry`] — any method when nothing was sent |
//! | per-try timeout | the lane is failing; retried (`timeout`) if [`may_retry`] and the deadline is not past |
//! | anything else | returned; the lane is healthy |
//!
//! "Returned" means the client gets the lane's answer — or, for a failed connection or a
//! timeout, the router's own 503 or 504.

use axum::http::StatusCode;
use cellstack_api::wire::ErrorCode;

use super::retry::{Attempt, RetryReason, may_retry};

/// A lane's answer to one try, as far as the verdict depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The lane answered, with this status and, when the cell gave one, error code.
    Response {
        status: StatusCode,
        code: Option<ErrorCode>,
    },
    /// The connection failed; `nothing_sent`: before any of the request reached the lane.
    Failed { nothing_sent: bool },
    /// No answer within the per-try timeout; `deadline_left`: the request's deadline is not
    /// past yet.
    TimedOut { deadline_left: bool },
}

/// What an answer tells of the lane that gave it, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneHealth {
    /// It answered as a healthy lane does (success resets its failure count).
    Healthy,
    /// It failed (counts towards its ejection).
    Failing,
}

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The client gets the answer; the lane is recorded as `lane`.
    Return { lane: LaneHealth },
    /// Try another lane of the same cell if the cell's retry budget allows, counting `reason`;
    /// the lane is then failing. If the budget says no, the client gets the answer and the lane
    /// is recorded as `kept`.
    RetryElsewhere {
        reason: RetryReason,
        kept: LaneHealth,
    },
    /// The tenant moved: try the cell the answer names, at the epoch it gives (once per
    /// request; the answer goes back if the table does not know that cell).
    FollowMove,
    /// The request's epoch is not the cell's: try again at the cell's epoch (once per request).
    RetryAtEpoch,
    /// The tenant's writes are fenced while it moves and nothing was applied: wait, then try
    /// where the current table routes the tenant (bounded by the wait limit and the deadline).
    WaitOutFence,
}

/// The verdict on `answer` to try `attempt`.
pub fn classify(answer: Answer, attempt: &Attempt) -> Verdict {
    let failing = |reason, nothing_applied| {
        if may_retry(attempt, nothing_applied) {
            Verdict::RetryElsewhere {
                reason,
                kept: LaneHealth::Failing,
            }
        } else {
            Verdict::Return {
                lane: LaneHealth::Failing,
            }
        }
    };
    match answer {
        Answer::Response { status, code } => match code {
            Some(ErrorCode::Moved) if !attempt.followed => Verdict::FollowMove,
            Some(ErrorCode::StaleEpoch) if !attempt.followed => Verdict::RetryAtEpoch,
            Some(ErrorCode::Fenced) if attempt.replayable => Verdict::WaitOutFence,
            Some(c @ (ErrorCode::Shed | ErrorCode::Unavailable))
                if may_retry(attempt, c.nothing_applied()) =>
            {
                Verdict::RetryElsewhere {
                    reason: RetryReason::Refused,
                    kept: LaneHealth::Healthy,
                }
            }
            // A 5xx the cell did not explain, or its own `internal` failure: the lane is failing
            // (the cell's other coded 5xx are refusals by design).
            code if status.is_server_error() && code.is_none_or(|c| c == ErrorCode::Internal) => {
                failing(RetryReason::ServerError, false)
            }
            _ => Verdict::Return {
                lane: LaneHealth::Healthy,
            },
        },
        Answer::Failed { nothing_sent } => failing(RetryReason::Error, nothing_sent),
        Answer::TimedOut {
            deadline_left: true,
        } => failing(RetryReason::Timeout, false),
        Answer::TimedOut {
            deadline_left: false,
        } => Verdict::Return {
            lane: LaneHealth::Failing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first try of an idempotent request with a buffered body.
    fn first() -> Attempt {
        Attempt {
            number: 1,
            idempotent: true,
            replayable: true,
            followed: false,
        }
    }

    fn answer(code: Option<ErrorCode>) -> Answer {
        Answer::Response {
            status: code.map_or(StatusCode::OK, |c| {
                StatusCode::from_u16(c.status()).unwrap()
            }),
            code,
        }
    }

    const HEALTHY: Verdict = Verdict::Return {
        lane: LaneHealth::Healthy,
    };
    const FAILING: Verdict = Verdict::Return {
        lane: LaneHealth::Failing,
    };

    fn retry(reason: RetryReason, kept: LaneHealth) -> Verdict {
        Verdict::RetryElsewhere { reason, kept }
    }

    #[test]
    fn a_success_goes_back_and_the_lane_is_healthy() {
        assert_eq!(classify(answer(None), &first()), HEALTHY);
        let not_found = Answer::Response {
            status: StatusCode::NOT_FOUND,
            code: Some(ErrorCode::NotFound),
        };
        assert_eq!(classify(not_found, &first()), HEALTHY);
    }

    #[test]
    fn a_move_or_a_stale_epoch_is_followed_once() {
        assert_eq!(
            classify(answer(Some(ErrorCode::Moved)), &first()),
            Verdict::FollowMove
        );
        assert_eq!(
            classify(answer(Some(ErrorCode::StaleEpoch)), &first()),
            Verdict::RetryAtEpoch
        );
        let followed = Attempt {
            followed: true,
            number: 2,
            ..first()
        };
        for code in [ErrorCode::Moved, ErrorCode::StaleEpoch] {
            assert_eq!(classify(answer(Some(code)), &followed), HEALTHY, "{code:?}");
        }
        // Whatever the method or the body: the cell applied nothing.
        let streamed_post = Attempt {
            idempotent: false,
            replayable: false,
            ..first()
        };
        assert_eq!(
            classify(answer(Some(ErrorCode::StaleEpoch)), &streamed_post),
            Verdict::RetryAtEpoch
        );
    }

    #[test]
    fn a_fence_is_waited_out_only_with_the_body_at_hand() {
        let post = Attempt {
            idempotent: false,
            number: 3,
            ..first()
        };
        assert_eq!(
            classify(answer(Some(ErrorCode::Fenced)), &post),
            Verdict::WaitOutFence,
            "not a retry: neither the method nor the try number matters"
        );
        let streamed = Attempt {
            replayable: false,
            ..first()
        };
        assert_eq!(
            classify(answer(Some(ErrorCode::Fenced)), &streamed),
            HEALTHY,
            "the cell's 503 goes back at once"
        );
    }

    #[test]
    fn a_refusal_is_retried_elsewhere_and_the_lane_kept_healthy_if_not() {
        let refused = retry(RetryReason::Refused, LaneHealth::Healthy);
        let post = Attempt {
            idempotent: false,
            ..first()
        };
        let last = Attempt {
            number: 3,
            ..first()
        };
        assert_eq!(classify(answer(Some(ErrorCode::Shed)), &first()), refused);
        assert_eq!(
            classify(answer(Some(ErrorCode::Shed)), &post),
            refused,
            "a shed request was not applied, whatever its method"
        );
        assert_eq!(classify(answer(Some(ErrorCode::Shed)), &last), HEALTHY);
        assert_eq!(
            classify(answer(Some(ErrorCode::Unavailable)), &first()),
            refused
        );
        assert_eq!(
            classify(answer(Some(ErrorCode::Unavailable)), &post),
            HEALTHY,
            "an unavailable POST may have applied"
        );
    }

    #[test]
    fn a_tenant_whose_data_was_lost_is_answered_as_the_cell_said_and_the_lane_stays_healthy() {
        // Every lane of the cell shares its datastore: another lane would say the same.
        for attempt in [
            first(),
            Attempt {
                idempotent: false,
                ..first()
            },
        ] {
            assert_eq!(
                classify(answer(Some(ErrorCode::DataUnavailable)), &attempt),
                HEALTHY
            );
        }
    }

    #[test]
    fn an_unexplained_5xx_or_internal_error_marks_the_lane_failing() {
        let bare = Answer::Response {
            status: StatusCode::BAD_GATEWAY,
            code: None,
        };
        assert_eq!(
            classify(bare, &first()),
            retry(RetryReason::ServerError, LaneHealth::Failing)
        );
        assert_eq!(
            classify(answer(Some(ErrorCode::Internal)), &first()),
            retry(RetryReason::ServerError, LaneHealth::Failing)
        );
        let post = Attempt {
            idempotent: false,
            ..first()
        };
        assert_eq!(classify(bare, &post), FAILING, "a POST may have applied");
    }

    #[test]
    fn a_failed_connection_is_retried_for_any_method_when_nothing_was_sent() {
        let post = Attempt {
            idempotent: false,
            ..first()
        };
        assert_eq!(
            classify(Answer::Failed { nothing_sent: true }, &post),
            retry(RetryReason::Error, LaneHealth::Failing)
        );
        assert_eq!(
            classify(
                Answer::Failed {
                    nothing_sent: false
                },
                &post
            ),
            FAILING
        );
        assert_eq!(
            classify(
                Answer::Failed {
                    nothing_sent: false
                },
                &first()
            ),
            retry(RetryReason::Error, LaneHealth::Failing)
        );
    }

    #[test]
    fn a_timeout_is_retried_only_before_the_deadline_and_the_last_try() {
        let left = Answer::TimedOut {
            deadline_left: true,
        };
        assert_eq!(
            classify(left, &first()),
            retry(RetryReason::Timeout, LaneHealth::Failing)
        );
        assert_eq!(
            classify(
                Answer::TimedOut {
                    deadline_left: false
                },
                &first()
            ),
            FAILING
        );
        let last = Attempt {
            number: 3,
            ..first()
        };
        assert_eq!(classify(left, &last), FAILING);
    }
}
