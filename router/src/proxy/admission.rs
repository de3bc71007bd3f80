//! Admission: whether the router takes a request on at all, before it costs a lane anything.
//!
//! Two gates, both answered at once (nobody queues):
//! - the **in-flight bound** ([`InFlight`]), checked first of all, before the tenant is even
//!   identified, so that refusing under overload is the cheapest thing the router does — 503;
//! - the tenant's **edge pre-limit** ([`EdgeLimits`]), once its route is known: a local token
//!   bucket per tenant and limit from the routing table's edge limits — 429 with
//!   `RateLimit-Limit`. It is a coarse guard in front of the cell's own limiter, per router
//!   replica.

use std::{
    num::NonZeroU32,
    ops::ControlFlow::{self, Break, Continue},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{http::HeaderValue, response::Response};
use cellstack_api::{
    routing::EdgeLimit,
    wire::{ErrorCode, header_name as names},
};
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::reply;

/// Most edge-limit buckets kept before the map is reset (buckets refill from scratch).
const MAX_EDGE_BUCKETS: usize = 200_000;

/// The bound on requests in flight, without a lock: past it a request is answered 503 at once,
/// nobody waits for a slot, so a counter is all it takes. (tokio's `Semaphore` would lock its
/// wait-queue mutex, shared by every worker, each time a permit is dropped.)
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// One request counted in flight, until dropped.
pub struct Entered<'a>(&'a InFlight);

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Counts a request in, unless `max` are in flight already.
    pub fn try_enter(&self) -> Option<Entered<'_>> {
        // Counted first, checked after: a burst may overshoot for an instant, but no request is
        // let in while `max` others are.
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Entered(self))
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed).min(self.max)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router's answer when the in-flight bound refuses a request.
pub fn overloaded() -> Response {
    reply::error(
        ErrorCode::Overloaded,
        "the router is at its in-flight limit; retry shortly",
    )
}

/// Token buckets of the tenants' edge limits, keyed by tenant and limit (a changed limit in a
/// new table starts a new bucket).
#[derive(Default)]
pub struct EdgeLimits {
    buckets: DashMap<String, Arc<DefaultDirectRateLimiter>>,
}

impl EdgeLimits {
    /// Admits one request of `tenant` under `limit` (none: no edge limit), or ends it with the
    /// 429 to answer.
    pub fn admit(&self, tenant: &str, limit: Option<&EdgeLimit>) -> ControlFlow<Response> {
        match limit {
            Some(limit) if !self.allows(tenant, limit) => Break(over_limit(tenant, limit)),
            _ => Continue(()),
        }
    }

    fn allows(&self, tenant: &str, limit: &EdgeLimit) -> bool {
        let key = format!(
            "{tenant}/{}/{}/{}",
            limit.requests, limit.period_ms, limit.burst
        );
        let bucket = match self.buckets.get(&key) {
            Some(b) => b.clone(),
            None => {
                let per = Duration::from_millis(u64::from(limit.period_ms)) / limit.requests.max(1);
                let Some(quota) = Quota::with_period(per)
                    .zip(NonZeroU32::new(limit.burst.max(limit.requests)))
                    .map(|(q, b)| q.allow_burst(b))
                else {
                    return true;
                };
                if self.buckets.len() >= MAX_EDGE_BUCKETS {
                    self.buckets.clear();
                }
                let b = Arc::new(RateLimiter::direct(quota));
                self.buckets.insert(key, b.clone());
                b
            }
        };
        bucket.check().is_ok()
    }
}

fn over_limit(tenant: &str, limit: &EdgeLimit) -> Response {
    let mut res = reply::error(
        ErrorCode::RateLimited,
        format!(
            "tenant {tenant} is over its edge limit of {} requests per {} ms",
            limit.requests, limit.period_ms
        ),
    );
    res.headers_mut()
        .insert(names::RATELIMIT_LIMIT, HeaderValue::from(limit.requests));
    res
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn the_in_flight_bound_lets_in_max_requests_and_frees_a_slot_on_drop() {
        let bound = InFlight::new(2);
        let a = bound.try_enter().expect("first");
        let b = bound.try_enter().expect("second");
        assert!(bound.try_enter().is_none(), "a third is refused");
        assert_eq!(bound.current(), 2, "a refusal leaves the count alone");
        drop(a);
        assert_eq!(bound.current(), 1);
        let c = bound.try_enter().expect("the freed slot");
        drop((b, c));
        assert_eq!(bound.current(), 0);
        assert!(
            InFlight::new(0).try_enter().is_none(),
            "max 0 lets nothing in"
        );
    }

    #[test]
    fn the_edge_limit_admits_its_burst_then_refuses_with_429_and_the_limit() {
        let edge = EdgeLimits::default();
        let limit = EdgeLimit {
            requests: 3,
            period_ms: 60_000,
            burst: 3,
        };
        for i in 0..3 {
            assert!(
                edge.admit("acme", Some(&limit)).is_continue(),
                "request {i}"
            );
        }
        let Break(refused) = edge.admit("acme", Some(&limit)) else {
            panic!("the fourth is admitted");
        };
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[names::ERROR], "rate_limited");
        assert_eq!(refused.headers()[names::RATELIMIT_LIMIT], "3");
        assert!(
            edge.admit("other", Some(&limit)).is_continue(),
            "each tenant has its own bucket"
        );
        assert!(
            edge.admit("acme", None).is_continue(),
            "no limit, no refusal"
        );
    }
}
