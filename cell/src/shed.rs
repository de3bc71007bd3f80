//! Phase 4 of admission: adaptive load shedding.
//!
//! A concurrency limit adapts to latency (AIMD): while requests complete within `tolerance` ×
//! the best recent latency and demand exceeds the limit, the limit grows by about one per round
//! trip; when they get slower, it shrinks by `backoff` at most once per `decrease_interval`. Priorities get nested shares of
//! the limit — `low` is admitted only below half of it, `normal` below 80 %, `high` up to all of
//! it — so low-priority work is shed first and high-priority latency stays near unloaded.
//! Nothing queues: a request over its share is refused at once (503 + Retry-After).
//!
//! Hand-written: tower's `ConcurrencyLimit` is static and has no priorities; the
//! Netflix-style gradient crates for Rust are unmaintained. Time is injected for tests.

use std::time::{Duration, Instant};

use cellstack_api::wire::Priority;

#[derive(Debug, Clone)]
pub struct ShedConfig {
    pub initial_limit: f64,
    pub min_limit: f64,
    pub max_limit: f64,
    /// Latency above `tolerance × baseline` counts as overload.
    pub tolerance: f64,
    /// Multiplier applied to the limit on overload.
    pub backoff: f64,
    pub decrease_interval: Duration,
    /// How fast the latency baseline forgets an old minimum (per completion).
    pub baseline_decay: f64,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            initial_limit: 64.0,
            min_limit: 4.0,
            max_limit: 1024.0,
            tolerance: 1.5,
            backoff: 0.9,
            decrease_interval: Duration::from_millis(50),
            baseline_decay: 0.001,
        }
    }
}

/// Share of the limit each priority may use.
pub fn share(priority: Priority) -> f64 {
    match priority {
        Priority::High => 1.0,
        Priority::Normal => 0.8,
        Priority::Low => 0.5,
    }
}

#[derive(Debug)]
pub struct Shedder {
    config: ShedConfig,
    limit: f64,
    in_flight: u32,
    /// Best recent latency, in seconds; drifts up slowly so a stale minimum is forgotten.
    baseline: Option<f64>,
    last_decrease: Option<Instant>,
    /// Something was refused since the limit last grew: demand exceeds the limit, so growing it
    /// is worth trying. Without demand the limit stays put instead of drifting up unused.
    saturated: bool,
}

impl Shedder {
    pub fn new(config: ShedConfig) -> Self {
        Self {
            limit: config
                .initial_limit
                .clamp(config.min_limit, config.max_limit),
            config,
            in_flight: 0,
            baseline: None,
            last_decrease: None,
            saturated: false,
        }
    }

    /// Admits a request of `priority` if it fits its share of the limit.
    pub fn try_acquire(&mut self, priority: Priority) -> bool {
        let allowed = (self.limit * share(priority)).max(1.0);
        if f64::from(self.in_flight) + 1.0 > allowed {
            self.saturated = true;
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// Reports that an admitted request finished after `latency`.
    pub fn release(&mut self, latency: Duration, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let seconds = latency.as_secs_f64();
        let baseline = match self.baseline {
            Some(b) if seconds >= b => b + (seconds - b) * self.config.baseline_decay,
            _ => seconds,
        };
        self.baseline = Some(baseline);
        if seconds > baseline * self.config.tolerance {
            let due = self
                .last_decrease
                .is_none_or(|t| now.duration_since(t) >= self.config.decrease_interval);
            if due {
                self.limit = (self.limit * self.config.backoff).max(self.config.min_limit);
                self.last_decrease = Some(now);
            }
        } else if self.saturated {
            self.limit = (self.limit + 1.0 / self.limit).min(self.config.max_limit);
            self.saturated = false;
        }
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shedder(limit: f64) -> Shedder {
        Shedder::new(ShedConfig {
            initial_limit: limit,
            min_limit: 2.0,
            ..Default::default()
        })
    }

    #[test]
    fn low_priority_is_shed_first_and_high_last() {
        let mut s = shedder(10.0);
        let mut admitted = |p| (0..20).filter(|_| s.try_acquire(p)).count();
        assert_eq!(admitted(Priority::Low), 5, "low gets half the limit");
        assert_eq!(admitted(Priority::Normal), 3, "normal fills up to 80 %");
        assert_eq!(admitted(Priority::High), 2, "high gets the rest");
        assert!(!s.try_acquire(Priority::High));
    }

    #[test]
    fn slow_completions_shrink_the_limit_and_fast_ones_grow_it() {
        let t0 = Instant::now();
        let mut s = shedder(10.0);
        for i in 0..50 {
            assert!(s.try_acquire(Priority::High));
            s.release(Duration::from_millis(2), t0 + Duration::from_millis(i));
        }
        assert_eq!(
            s.limit(),
            10.0,
            "without demand beyond the limit it does not grow"
        );
        for i in 0..50 {
            // Fill the limit and get one refusal: demand exceeds it.
            let held = (0..20).filter(|_| s.try_acquire(Priority::High)).count();
            for _ in 0..held {
                s.release(Duration::from_millis(2), t0 + Duration::from_millis(i));
            }
        }
        let grown = s.limit();
        assert!(
            grown > 10.0,
            "fast completions under demand grow the limit: {grown}"
        );
        for i in 0..20u64 {
            assert!(s.try_acquire(Priority::High));
            s.release(
                Duration::from_millis(50),
                t0 + Duration::from_millis(100 + i * 60),
            );
        }
        assert!(
            s.limit() < grown * 0.2,
            "sustained slow completions shrink it: {}",
            s.limit()
        );
        assert!(s.limit() >= 2.0, "never below the minimum");
    }

    #[test]
    fn decreases_are_spaced_by_the_interval() {
        let t0 = Instant::now();
        let mut s = shedder(100.0);
        s.try_acquire(Priority::High);
        s.release(Duration::from_millis(1), t0);
        for _ in 0..10 {
            s.try_acquire(Priority::High);
            s.release(Duration::from_millis(100), t0);
        }
        assert!(
            (s.limit() - 90.0).abs() < 1.0,
            "one decrease within one interval: {}",
            s.limit()
        );
    }
}
