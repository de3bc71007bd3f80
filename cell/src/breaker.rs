//! A circuit breaker for the cell's Redis: after a failure, calls fail immediately for a
//! cooldown instead of each waiting out a timeout, then one probe decides whether to close.
//! This is what makes fail-open/fail-closed decisions fast after the first one.
//!
//! Failures count only when they span time ([`Breaker::with_min_span`]): the calls that were in
//! flight when the whole host stalled (a CPU stall of a node shared by its pods, a frozen VM)
//! all time out together when it resumes, although Redis answered; they were sent within one
//! timeout of each other. Redis that really fails goes on failing the calls sent after them, and
//! the breaker opens once the failed calls were sent `min_span` apart.
//!
//! Hand-written: the state machine is a dozen lines and must be driven by injected time in
//! tests; the tower/failsafe crates either lack half-open probing with a single permit or pull
//! in a runtime-specific clock.

use std::time::{Duration, Instant};

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is in flight; everything else fails fast until it reports.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    cooldown: Duration,
    /// Consecutive failures that open the breaker.
    threshold: u32,
    failures: u32,
    /// How far apart the consecutive failed calls must have been sent to open it.
    min_span: Duration,
    /// When the first of the current run of failed calls was sent.
    first_failed_sent: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: State::Closed,
            cooldown,
            threshold: threshold.max(1),
            failures: 0,
            min_span: Duration::ZERO,
            first_failed_sent: None,
        }
    }

    /// Opens only once the consecutive failed calls were sent at least `span` apart (besides
    /// being `threshold` many). More than the calls' timeout, so that calls in flight together
    /// through one stall of the host do not open it.
    pub fn with_min_span(mut self, span: Duration) -> Self {
        self.min_span = span;
        self
    }

    /// Whether a call may go to Redis now. A `true` in the open state is the single probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn success(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
        self.first_failed_sent = None;
    }

    /// A call sent at `sent` failed (seen at `now`).
    pub fn failure(&mut self, now: Instant, sent: Instant) {
        self.failures += 1;
        let first = *self.first_failed_sent.get_or_insert(sent);
        let spanned = sent.saturating_duration_since(first) >= self.min_span;
        if self.state == State::HalfOpen || (self.failures >= self.threshold && spanned) {
            self.state = State::Open {
                until: now + self.cooldown,
            };
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_fails_fast_then_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        assert!(b.allow(t0));
        b.failure(t0, t0);
        assert!(b.allow(t0), "one failure is below the threshold");
        b.failure(t0, t0);
        assert!(!b.allow(t0 + Duration::from_millis(500)), "open: fail fast");
        let later = t0 + Duration::from_secs(1);
        assert!(b.allow(later), "cooldown over: one probe");
        assert!(!b.allow(later), "only one probe at a time");
        b.failure(later, later);
        assert!(
            !b.allow(later + Duration::from_millis(999)),
            "a failed probe reopens"
        );
        assert!(b.allow(later + Duration::from_secs(1)));
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(later + Duration::from_secs(1)));
    }

    #[test]
    fn calls_in_flight_through_one_stall_do_not_open_it_but_failures_that_go_on_do() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1)).with_min_span(ms(200));
        // A stall of the host: ten calls sent within 100 ms all time out when it resumes.
        for i in 0..10 {
            b.failure(t0 + ms(250), t0 + ms(i * 10));
        }
        assert_eq!(b.state(), State::Closed, "failed calls sent 90 ms apart");
        // The next call, sent after the stall, is answered: the run of failures is over.
        b.success();
        b.failure(t0 + ms(600), t0 + ms(500));
        b.failure(t0 + ms(700), t0 + ms(600));
        assert_eq!(b.state(), State::Closed, "two failures, 100 ms apart");
        // Redis keeps failing: a call sent 200 ms after the first failed one fails too.
        b.failure(t0 + ms(800), t0 + ms(700));
        assert_eq!(
            b.state(),
            State::Open {
                until: t0 + ms(1800)
            }
        );
    }
}
