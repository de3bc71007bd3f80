//! Retry policy: which failed tries may be tried again, how long to pause first, and how many
//! retries a cell's budget allows.
//!
//! - **Which** ([`may_retry`]): a try may be retried when the request's body is still at hand
//!   (buffered, not streamed), it is one of the first [`MAX_ATTEMPTS`] tries, and repeating it is
//!   safe — the method is idempotent, or nothing of it was applied (a failed connect, or a cell
//!   answer that guarantees so);
//! - **how many** ([`RetryBudgets`], [`withdraw`]): per cell, at most 10 % extra load from
//!   retries, with a floor of [`RETRY_FLOOR_PER_SEC`]; every retry and every refusal is counted;
//! - **when** ([`backoff`]): a full-jitter pause, 5 ms doubling per attempt, never past the
//!   deadline;
//! - **fence waits** ([`fence_backoff`], [`fence_wait_fits`]): a fenced cell refused cheaply and
//!   applied nothing, so waits for a fence to lift are not charged to the budget; they are
//!   bounded by [`MAX_FENCE_WAITS`] and the deadline instead.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use tower::retry::budget::{Budget, TpsBudget};

use crate::metrics::{CellLabels, Metrics, RetryLabels};

/// Most tries of one request, by [`Attempt::number`]: a failed try numbered this is not
/// retried. The try after a `moved` or `stale_epoch` answer counts; one after a fence wait does
/// not.
pub const MAX_ATTEMPTS: u32 = 3;

/// Most times one request waits for its tenant's fence to lift (about 4 s of pauses), whatever
/// its deadline.
pub const MAX_FENCE_WAITS: u32 = 50;

/// Retries a cell gets per second whatever its traffic, over all workers.
pub const RETRY_FLOOR_PER_SEC: u32 = 10;

/// One try of a request, as the retry rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first try; tries after a fence wait are not counted (they are not retries).
    pub number: u32,
    /// The method may be repeated without changing the result.
    pub idempotent: bool,
    /// The body is buffered, so it can be sent again (a streamed one cannot).
    pub replayable: bool,
    /// A `moved` or `stale_epoch` answer was already followed for this request.
    pub followed: bool,
}

/// Whether a failed try may be tried again, `nothing_applied` saying whether the failure
/// guarantees the request had no effect. The budget is asked separately ([`withdraw`]).
pub fn may_retry(attempt: &Attempt, nothing_applied: bool) -> bool {
    (attempt.idempotent || nothing_applied) && attempt.replayable && attempt.number < MAX_ATTEMPTS
}

/// Why a request was tried again: the `reason` label of `cellstack_router_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The cell answered `moved`, and the request followed the tenant.
    Moved,
    /// The cell answered `stale_epoch`, and the request was sent again at its epoch.
    StaleEpoch,
    /// One wait for a fence to lift.
    Fenced,
    /// The cell refused (`shed`, `unavailable`) and said nothing was applied.
    Refused,
    /// A 5xx the cell did not explain, or its own `internal` failure.
    ServerError,
    /// The connection to the lane failed.
    Error,
    /// The lane did not answer within the per-try timeout.
    Timeout,
}

impl RetryReason {
    /// Every reason, for the metric series created at start.
    pub const ALL: [Self; 7] = [
        Self::Moved,
        Self::StaleEpoch,
        Self::Fenced,
        Self::Refused,
        Self::ServerError,
        Self::Error,
        Self::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Moved => "moved",
            Self::StaleEpoch => "stale_epoch",
            Self::Fenced => "fenced",
            Self::Refused => "refused",
            Self::ServerError => "5xx",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

/// Counts a retry that is not charged to a budget (following the tenant, fence waits).
pub fn count(metrics: &Metrics, reason: RetryReason) {
    metrics
        .retries
        .get_or_create(&RetryLabels {
            reason: reason.as_str(),
        })
        .inc();
}

/// Takes one retry from `cell`'s budget in `budgets` if it has one left; counts the retry, or
/// the refusal.
pub fn withdraw(
    metrics: &Metrics,
    budgets: &RetryBudgets,
    cell: &str,
    reason: RetryReason,
) -> bool {
    if budgets.withdraw(cell) {
        count(metrics, reason);
        true
    } else {
        metrics
            .budget_exhausted
            .get_or_create(&CellLabels {
                cell: cell.to_owned(),
            })
            .inc();
        false
    }
}

/// Pause before retry number `attempt` (2, 3, ...): 5 ms doubling per attempt, with "full
/// jitter" — a uniform share of it picked by `random`.
pub fn backoff(attempt: u32, random: u64) -> Duration {
    let cap = Duration::from_millis(5) * (1u32 << attempt.saturating_sub(2).min(6));
    cap.mul_f64((random % 1000) as f64 / 1000.0)
}

/// Pause before fence wait number `wait` (0, 1, ...): 10 ms doubling per wait up to 100 ms, with
/// "equal jitter" — half of it fixed, half a uniform share picked by `random` — so a burst of
/// fenced writes neither retries in lockstep nor comes back at once (full jitter, as in
/// [`backoff`], can draw a zero pause).
pub fn fence_backoff(wait: u32, random: u64) -> Duration {
    let cap = (Duration::from_millis(10) * (1u32 << wait.min(4))).min(Duration::from_millis(100));
    cap / 2 + (cap / 2).mul_f64((random % 1000) as f64 / 1000.0)
}

/// Whether one more fence wait fits: fewer than [`MAX_FENCE_WAITS`] so far (`waits`), and the
/// try after the `pause` — which needs about as long as the fenced one `took` — starts before
/// the `deadline`.
pub fn fence_wait_fits(
    waits: u32,
    now: Instant,
    pause: Duration,
    took: Duration,
    deadline: Instant,
) -> bool {
    waits < MAX_FENCE_WAITS && now + pause + took < deadline
}

/// Retry budgets, one per cell: at most 10 % extra load on a cell from retries, with a floor
/// of [`RETRY_FLOOR_PER_SEC`]. Per cell because cells are the unit of blast radius: a failing
/// cell spends its own budget on retries, never the budget its neighbours' tenants need for a
/// transient refusal. Keyed by cell name, so a budget survives table swaps; a cell that left
/// the table keeps a few bytes until the process ends.
///
/// Each worker keeps its own set ([`RetryBudgets::share`]): 10 % of each worker's requests is
/// 10 % of them all, and the floor is split between the workers. A budget shared by all would
/// put a lock and a clock read that every worker takes on every request on one cache line.
pub struct RetryBudgets {
    cells: DashMap<String, TpsBudget>,
    floor_per_sec: u32,
}

impl Default for RetryBudgets {
    /// The budgets of a router with one worker.
    fn default() -> Self {
        Self::share(1)
    }
}

impl RetryBudgets {
    /// One worker's share of the budgets, of `workers`.
    pub fn share(workers: usize) -> Self {
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        Self {
            cells: DashMap::new(),
            floor_per_sec: (RETRY_FLOOR_PER_SEC / workers).max(1),
        }
    }

    fn new_budget(&self) -> TpsBudget {
        TpsBudget::new(Duration::from_secs(10), self.floor_per_sec, 0.1)
    }

    /// Records a request to `cell`.
    pub fn deposit(&self, cell: &str) {
        self.with(cell, |b| b.deposit());
    }

    /// Takes one retry from `cell`'s budget, if it has one left.
    pub fn withdraw(&self, cell: &str) -> bool {
        self.with(cell, |b| b.withdraw())
    }

    /// Runs `f` on `cell`'s budget, made on first use (the lookup allocates only then).
    fn with<R>(&self, cell: &str, f: impl FnOnce(&TpsBudget) -> R) -> R {
        match self.cells.get(cell) {
            Some(budget) => f(&budget),
            None => f(&self
                .cells
                .entry(cell.to_owned())
                .or_insert_with(|| self.new_budget())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32) -> Attempt {
        Attempt {
            number,
            idempotent: true,
            replayable: true,
            followed: false,
        }
    }

    #[test]
    fn only_safe_replayable_early_tries_may_be_retried() {
        assert!(may_retry(&attempt(1), false));
        assert!(may_retry(&attempt(2), false));
        assert!(!may_retry(&attempt(3), true), "the third try is the last");
        let post = Attempt {
            idempotent: false,
            ..attempt(1)
        };
        assert!(!may_retry(&post, false), "a POST that may have applied");
        assert!(may_retry(&post, true), "a POST that surely did not");
        let streamed = Attempt {
            replayable: false,
            ..attempt(1)
        };
        assert!(!may_retry(&streamed, true), "a streamed body is gone");
    }

    #[test]
    fn a_failing_cell_spends_its_own_retry_budget_not_its_neighbours() {
        let budgets = RetryBudgets::default();
        for _ in 0..100 {
            budgets.deposit("alpha");
            budgets.deposit("bravo");
        }
        // alpha fails every request and retries until its budget says no.
        let mut spent = 0;
        while budgets.withdraw("alpha") {
            spent += 1;
            assert!(spent < 10_000, "alpha's budget never ran out");
        }
        assert!(spent > 0);
        assert!(
            budgets.withdraw("bravo"),
            "bravo's tenants keep their retries while alpha's budget is spent"
        );
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_cap() {
        assert!(backoff(2, 999) <= Duration::from_millis(5));
        assert!(
            backoff(3, 999) <= Duration::from_millis(10)
                && backoff(3, 999) > Duration::from_millis(9)
        );
        assert_eq!(backoff(2, 0), Duration::ZERO);
        let spread: std::collections::BTreeSet<_> =
            (0..50u64).map(|r| backoff(4, r * 37)).collect();
        assert!(spread.len() > 10, "different draws give different pauses");
        assert!(backoff(40, 999) <= Duration::from_millis(320), "capped");
    }

    #[test]
    fn fence_backoff_doubles_from_10_ms_to_100_ms_and_never_draws_zero() {
        let ms = Duration::from_millis;
        assert_eq!(fence_backoff(0, 0), ms(5));
        assert!(fence_backoff(0, 999) <= ms(10) && fence_backoff(0, 999) > ms(9));
        assert_eq!(fence_backoff(1, 0), ms(10));
        assert_eq!(fence_backoff(3, 0), ms(40));
        for wait in [4, 5, 49, u32::MAX] {
            assert_eq!(fence_backoff(wait, 0), ms(50), "half of the cap at least");
            assert!(fence_backoff(wait, 999) <= ms(100), "capped");
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50u64).map(|r| fence_backoff(2, r * 37)).collect();
        assert!(spread.len() > 10, "different draws give different pauses");
        // The most a request can spend waiting for a fence, whatever its deadline.
        let most: Duration = (0..MAX_FENCE_WAITS).map(|w| fence_backoff(w, 999)).sum();
        assert!(most < Duration::from_secs(5), "{most:?}");
    }

    #[test]
    fn a_fence_wait_fits_under_the_wait_limit_and_before_the_deadline() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let deadline = now + ms(100);
        assert!(fence_wait_fits(0, now, ms(10), ms(5), deadline));
        assert!(
            !fence_wait_fits(0, now, ms(60), ms(40), deadline),
            "the next try would start at the deadline"
        );
        assert!(fence_wait_fits(
            MAX_FENCE_WAITS - 1,
            now,
            ms(1),
            ms(1),
            deadline
        ));
        assert!(!fence_wait_fits(
            MAX_FENCE_WAITS,
            now,
            ms(1),
            ms(1),
            deadline
        ));
    }
}
