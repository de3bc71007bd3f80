//! Phase 4 (pick upstream): one of the tenant's k lanes, routing around lanes that are failing.
//!
//! Outlier detection: a lane that fails `threshold` times in a row is ejected for `ejection`
//! (doubling on each repeat, up to `max_ejection`), then tried again. A tenant's requests rotate
//! over its healthy lanes; when all of them are ejected, the least recently ejected is tried
//! anyway (better a likely failure than a certain one). Time is injected for tests.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use cellstack_api::shard::LaneSet;

#[derive(Debug, Clone)]
pub struct OutlierConfig {
    pub threshold: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            threshold: 3,
            ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct LaneState {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// Health of every lane the router has had a failure from, by cell name and lane number.
#[derive(Debug, Default)]
pub struct Outliers {
    config: OutlierConfig,
    /// Whether any failure was ever recorded: until then the request path takes no lock.
    any: std::sync::atomic::AtomicBool,
    cells: Mutex<HashMap<String, HashMap<u32, LaneState>>>,
}

impl Outliers {
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            any: std::sync::atomic::AtomicBool::new(false),
            cells: Mutex::default(),
        }
    }

    /// Picks a lane of `lanes` in `cell` for the request numbered `seq`, skipping `exclude`
    /// (a lane already tried for this request). Allocates nothing.
    pub fn pick(
        &self,
        cell: &str,
        lanes: LaneSet,
        seq: u64,
        exclude: Option<u32>,
        now: Instant,
    ) -> Option<u32> {
        let candidates = LaneSet(exclude.map_or(lanes.0, |e| lanes.0 & !(1u64 << e.min(63))));
        let n = candidates.len();
        if n == 0 {
            return exclude.filter(|l| lanes.contains(*l));
        }
        let start = (seq % u64::from(n)) as usize;
        let rotated = || {
            candidates
                .iter()
                .skip(start)
                .chain(candidates.iter().take(start))
        };
        if !self.any.load(std::sync::atomic::Ordering::Relaxed) {
            return rotated().next();
        }
        let guard = self.cells.lock().ok()?;
        let states = guard.get(cell);
        let ejected_until = |lane: u32| {
            states
                .and_then(|s| s.get(&lane))
                .and_then(|s| s.ejected_until)
                .filter(|until| *until > now)
        };
        if let Some(healthy) = rotated().find(|l| ejected_until(*l).is_none()) {
            return Some(healthy);
        }
        // All ejected: the one coming back soonest.
        rotated().min_by_key(|l| ejected_until(*l))
    }

    pub fn success(&self, cell: &str, lane: u32) {
        if !self.any.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(mut g) = self.cells.lock()
            && let Some(s) = g.get_mut(cell).and_then(|c| c.get_mut(&lane))
        {
            s.consecutive_failures = 0;
            s.ejected_until = None;
            s.ejections = 0;
        }
    }

    /// Records a failure; returns true when it ejected the lane.
    pub fn failure(&self, cell: &str, lane: u32, now: Instant) -> bool {
        let Ok(mut g) = self.cells.lock() else {
            return false;
        };
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        let s = g
            .entry(cell.to_owned())
            .or_default()
            .entry(lane)
            .or_default();
        s.consecutive_failures += 1;
        if s.consecutive_failures >= self.config.threshold
            && s.ejected_until.is_none_or(|u| u <= now)
        {
            let factor = 1u32 << s.ejections.min(16);
            s.ejected_until =
                Some(now + (self.config.ejection * factor).min(self.config.max_ejection));
            s.ejections += 1;
            s.consecutive_failures = 0;
            return true;
        }
        false
    }

    /// Lanes currently ejected, for metrics.
    pub fn ejected(&self, now: Instant) -> usize {
        self.cells
            .lock()
            .map(|g| {
                g.values()
                    .flat_map(|c| c.values())
                    .filter(|s| s.ejected_until.is_some_and(|u| u > now))
                    .count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_over_the_tenants_lanes() {
        let o = Outliers::new(OutlierConfig::default());
        let lanes = LaneSet(0b1010);
        let now = Instant::now();
        let picks: Vec<u32> = (0..4)
            .map(|seq| o.pick("a", lanes, seq, None, now).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
        assert_eq!(
            o.pick("a", lanes, 0, Some(1), now),
            Some(3),
            "a retry goes to another lane"
        );
    }

    #[test]
    fn a_failing_lane_is_ejected_and_routed_around_then_tried_again() {
        let cfg = OutlierConfig {
            threshold: 2,
            ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        };
        let o = Outliers::new(cfg);
        let lanes = LaneSet(0b0011);
        let t0 = Instant::now();
        assert!(!o.failure("a", 0, t0));
        assert!(o.failure("a", 0, t0), "second consecutive failure ejects");
        for seq in 0..10 {
            assert_eq!(o.pick("a", lanes, seq, None, t0), Some(1));
        }
        assert_eq!(o.ejected(t0), 1);
        let later = t0 + Duration::from_secs(6);
        assert!(
            (0..4).any(|seq| o.pick("a", lanes, seq, None, later) == Some(0)),
            "back after the ejection"
        );
        // Ejected again: twice as long.
        o.failure("a", 0, later);
        o.failure("a", 0, later);
        assert_eq!(
            o.pick("a", lanes, 0, None, later + Duration::from_secs(9)),
            Some(1)
        );
        o.success("a", 0);
        assert_eq!(o.ejected(later), 0);
    }

    #[test]
    fn with_every_lane_ejected_the_soonest_back_is_tried() {
        let o = Outliers::new(OutlierConfig {
            threshold: 1,
            ..Default::default()
        });
        let t0 = Instant::now();
        o.failure("a", 0, t0);
        o.failure("a", 1, t0 + Duration::from_secs(1));
        assert_eq!(
            o.pick("a", LaneSet(0b11), 1, None, t0 + Duration::from_secs(2)),
            Some(0)
        );
    }
}
