//! A circuit breaker for the cell's Redis: after a failure, calls fail immediately for a
//! cooldown instead of each waiting out a timeout, then one probe decides whether to close.
//! This is what makes fail-open/fail-closed decisions fast after the first one.
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
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: State::Closed,
            cooldown,
            threshold: threshold.max(1),
            failures: 0,
        }
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
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures += 1;
        if self.state == State::HalfOpen || self.failures >= self.threshold {
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
        b.failure(t0);
        assert!(b.allow(t0), "one failure is below the threshold");
        b.failure(t0);
        assert!(!b.allow(t0 + Duration::from_millis(500)), "open: fail fast");
        let later = t0 + Duration::from_secs(1);
        assert!(b.allow(later), "cooldown over: one probe");
        assert!(!b.allow(later), "only one probe at a time");
        b.failure(later);
        assert!(
            !b.allow(later + Duration::from_millis(999)),
            "a failed probe reopens"
        );
        assert!(b.allow(later + Duration::from_secs(1)));
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(later + Duration::from_secs(1)));
    }
}
