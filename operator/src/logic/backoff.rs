//! Requeue delays after transient failures: exponential in the number of consecutive failures,
//! capped, with full jitter so many failing objects do not retry in lockstep.

use std::time::Duration;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry); `unit` in `[0, 1)` is the
    /// jitter draw. The delay lies in `[ceiling / 2, ceiling)` where the ceiling doubles per
    /// attempt up to `max`: half fixed so retries never come back at once, half random.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let unit = unit.clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + unit / 2.0)
    }
}

/// Consecutive failure counts per object key, so the requeue delay grows per object and resets
/// when it reconciles cleanly.
#[derive(Debug, Default)]
pub struct Failures(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `key`; returns the new count.
    pub fn record(&self, key: &str) -> u32 {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn clear(&self, key: &str) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(2, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_spreads_over_the_upper_half() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(1));
        assert!(b.delay(3, 0.5) > Duration::from_secs(1));
        assert!(b.delay(3, 0.5) < Duration::from_secs(2));
    }
}
