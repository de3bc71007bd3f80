//! How long ago the router last confirmed that the table it serves is current, and whether that
//! is longer than its bound (`--table-stale-after`).
//!
//! A table's own age (since the operator built it) says nothing in a quiet system: an unchanged
//! table is never republished. What does is a *confirmation*, timed by the router's own clock
//! when it receives it (no clock skew between machines enters):
//! - a renewal of the operator's heartbeat Lease naming a version not above the one served
//!   ([`judge_heartbeat`]);
//! - a new table swapped in from the pointer;
//! - with a file source, the file read again, changed or not.
//!
//! Past the bound the router keeps serving (static stability: the table it has is the best it
//! knows) and reports itself degraded (`/status` `stale`, the `_table_stale` gauge, a WARN log
//! once per transition); `/readyz` stays ok, since failing it would take every router out of
//! its Service at once whenever the operator is down.
//!
//! Everything here is pure and lock-free; [`monitor`] logs the transitions.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The confirmations of one router's table.
#[derive(Debug)]
pub struct Freshness {
    bound: Duration,
    started: Instant,
    /// Nanoseconds after `started` of the last confirmation, plus one; 0: none yet.
    last: AtomicU64,
    /// Staleness as last reported by [`Freshness::transition`].
    reported_stale: AtomicBool,
}

impl Freshness {
    /// Nothing confirmed yet; the age counts from `started`.
    pub fn new(bound: Duration, started: Instant) -> Self {
        Self {
            bound,
            started,
            last: AtomicU64::new(0),
            reported_stale: AtomicBool::new(false),
        }
    }

    /// The bound past which the table is reported stale.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Records a confirmation received at `now` (an earlier one than the last is ignored).
    pub fn confirm(&self, now: Instant) {
        let nanos = u64::try_from(now.saturating_duration_since(self.started).as_nanos())
            .unwrap_or(u64::MAX - 1);
        self.last.fetch_max(nanos + 1, Ordering::Relaxed);
    }

    /// Whether any confirmation has arrived since the start.
    pub fn ever_confirmed(&self) -> bool {
        self.last.load(Ordering::Relaxed) > 0
    }

    /// Time since the last confirmation, or since the start when there was none.
    pub fn confirmed_age(&self, now: Instant) -> Duration {
        let since = match self.last.load(Ordering::Relaxed) {
            0 => self.started,
            n => self.started + Duration::from_nanos(n - 1),
        };
        now.saturating_duration_since(since)
    }

    /// Whether the last confirmation is older than the bound.
    pub fn is_stale(&self, now: Instant) -> bool {
        self.confirmed_age(now) > self.bound
    }

    /// The staleness at `now` if it differs from the one this returned last (at first: from
    /// fresh); `None` when it has not changed. Each transition is returned once.
    pub fn transition(&self, now: Instant) -> Option<bool> {
        let stale = self.is_stale(now);
        (self.reported_stale.swap(stale, Ordering::Relaxed) != stale).then_some(stale)
    }
}

/// What a sighting of the heartbeat Lease means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// A renewal naming a version not above the one served: the table is current.
    Confirms,
    /// Not a renewal: the same `renewTime` as the last sighting (another field changed, or the
    /// watch listed the object again), or the first sighting in a list (its age is unknown
    /// without trusting the operator's clock).
    NotARenewal,
    /// A renewal naming a version above the one served (or none is served): the router is
    /// behind.
    Ahead,
    /// The Lease carries no readable version or renewal time.
    Unreadable,
}

/// Judges one sighting of the heartbeat Lease: its `renew_time` and version annotation as read,
/// the `renew_time` of the previous sighting (`None`: first one), whether it came from a live
/// watch event (`live`) rather than a list, and the version served.
pub fn judge_heartbeat(
    previous_renewal: Option<&str>,
    renewal: Option<&str>,
    version: Option<&str>,
    live: bool,
    serving: Option<u64>,
) -> Heartbeat {
    let (Some(renewal), Some(version)) = (renewal, version.and_then(|v| v.parse::<u64>().ok()))
    else {
        return Heartbeat::Unreadable;
    };
    if previous_renewal == Some(renewal) || (previous_renewal.is_none() && !live) {
        return Heartbeat::NotARenewal;
    }
    match serving {
        Some(served) if version <= served => Heartbeat::Confirms,
        _ => Heartbeat::Ahead,
    }
}

/// Checks `freshness` every `every` until `shutdown` and logs each transition: a WARN when the
/// table turns stale, an INFO when it is confirmed again.
pub async fn monitor(
    freshness: std::sync::Arc<Freshness>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = Instant::now();
        match freshness.transition(now) {
            Some(true) => tracing::warn!(
                confirmed_seconds_ago = freshness.confirmed_age(now).as_secs_f64(),
                stale_after_seconds = freshness.bound().as_secs_f64(),
                ever_confirmed = freshness.ever_confirmed(),
                "routing table stale: not confirmed current within the bound (no operator heartbeat or new table); still serving it"
            ),
            Some(false) => tracing::info!(
                stale_after_seconds = freshness.bound().as_secs_f64(),
                "routing table confirmed current again"
            ),
            None => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn never_confirmed_ages_from_the_start() {
        let t0 = Instant::now();
        let f = Freshness::new(secs(60), t0);
        assert!(!f.ever_confirmed());
        assert_eq!(f.confirmed_age(t0 + secs(30)), secs(30));
        assert!(!f.is_stale(t0 + secs(60)), "at the bound is not past it");
        assert!(f.is_stale(t0 + secs(61)));
    }

    #[test]
    fn a_confirmation_resets_the_age_and_an_older_one_is_ignored() {
        let t0 = Instant::now();
        let f = Freshness::new(secs(10), t0);
        f.confirm(t0 + secs(20));
        assert!(f.ever_confirmed());
        assert_eq!(f.confirmed_age(t0 + secs(25)), secs(5));
        f.confirm(t0 + secs(15));
        assert_eq!(f.confirmed_age(t0 + secs(25)), secs(5));
        assert!(!f.is_stale(t0 + secs(30)));
        assert!(f.is_stale(t0 + secs(31)));
        // A confirmation at the start itself counts too.
        let g = Freshness::new(secs(10), t0);
        g.confirm(t0);
        assert!(g.ever_confirmed());
        assert_eq!(g.confirmed_age(t0 + secs(3)), secs(3));
    }

    #[test]
    fn each_transition_is_reported_once() {
        let t0 = Instant::now();
        let f = Freshness::new(secs(10), t0);
        assert_eq!(f.transition(t0 + secs(5)), None, "fresh at start");
        assert_eq!(f.transition(t0 + secs(11)), Some(true));
        assert_eq!(f.transition(t0 + secs(12)), None);
        f.confirm(t0 + secs(13));
        assert_eq!(f.transition(t0 + secs(13)), Some(false));
        assert_eq!(f.transition(t0 + secs(14)), None);
        assert_eq!(f.transition(t0 + secs(24)), Some(true));
    }

    #[test]
    fn a_renewal_confirms_only_a_version_not_above_the_one_served() {
        let judge = |version: &str, serving| {
            judge_heartbeat(Some("t1"), Some("t2"), Some(version), true, serving)
        };
        assert_eq!(judge("7", Some(7)), Heartbeat::Confirms);
        assert_eq!(
            judge("6", Some(7)),
            Heartbeat::Confirms,
            "the pointer got ahead"
        );
        assert_eq!(judge("8", Some(7)), Heartbeat::Ahead);
        assert_eq!(judge("1", None), Heartbeat::Ahead, "nothing served");
        assert_eq!(judge("x", Some(7)), Heartbeat::Unreadable);
        assert_eq!(
            judge_heartbeat(Some("t1"), None, Some("7"), true, Some(7)),
            Heartbeat::Unreadable
        );
    }

    #[test]
    fn only_a_new_renewal_time_is_a_renewal() {
        let j = |prev, live| judge_heartbeat(prev, Some("t2"), Some("3"), live, Some(3));
        assert_eq!(j(Some("t2"), true), Heartbeat::NotARenewal, "same renewal");
        assert_eq!(j(Some("t2"), false), Heartbeat::NotARenewal, "relisted");
        assert_eq!(
            j(Some("t1"), false),
            Heartbeat::Confirms,
            "renewed while away"
        );
        assert_eq!(
            j(None, false),
            Heartbeat::NotARenewal,
            "first list: age unknown"
        );
        assert_eq!(j(None, true), Heartbeat::Confirms, "created while watched");
    }
}
