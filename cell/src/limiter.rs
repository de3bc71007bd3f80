//! Phase 3 of admission: the tenant's rate limits.
//!
//! Two tiers. A local token bucket per (tenant, limit) (`governor`) refuses what this replica
//! alone already sees over the limit, without a Redis round trip; it is sized at the full limit,
//! so it never refuses what the authoritative check would admit. Then the authoritative check:
//! one atomic script in the cell's Redis, shared by every replica, with the limiter state in the
//! tenant's key space (it moves with the tenant); concurrent checks share a script call
//! ([`crate::limit_batch`]).
//!
//! When Redis cannot answer (timeout, the breaker open after one, or too many checks already
//! waiting for it), the policy's fail mode decides at once: `Open` admits (the local bucket
//! still holds each replica to the limit), `Closed` refuses with 503.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use cellstack_api::{
    keys::TenantKeys,
    policy::{EffectiveLimit, EffectivePolicy},
    v1alpha1::{Algorithm, FailMode},
};
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::{
    limit_batch::LimitBatcher,
    metrics::{FailModeLabels, LimitLabels, Metrics},
    store::LimitCheck,
};

/// Most local buckets kept; past this the map is cleared (buckets refill from scratch, which
/// only makes the local tier more lenient for a moment — Redis stays authoritative).
const MAX_LOCAL_BUCKETS: usize = 200_000;

/// What the limiter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; headers describe the tightest limit, if any applied.
    Admit(Option<Headers>),
    /// Over the limit.
    Limited(Headers),
    /// Redis unavailable and the policy fails closed.
    Unavailable,
}

/// Values of the `RateLimit-*` and `Retry-After` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    pub limit: u32,
    pub remaining: u64,
    pub reset_seconds: u64,
    pub retry_after_seconds: u64,
}

pub struct Limiter {
    local: DashMap<String, Arc<DefaultDirectRateLimiter>>,
    authority: LimitBatcher,
    metrics: Arc<Metrics>,
}

fn ceil_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl Limiter {
    /// A limiter whose authoritative checks go through `authority`.
    pub fn new(authority: LimitBatcher, metrics: Arc<Metrics>) -> Self {
        Self {
            local: DashMap::new(),
            authority,
            metrics,
        }
    }

    fn local_bucket(
        &self,
        tenant: &str,
        limit: &EffectiveLimit,
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        // Keyed by the quota too, so a changed policy gets a fresh bucket.
        let key = format!(
            "{tenant}/{}/{}/{}/{}",
            limit.name, limit.requests, limit.period_ms, limit.burst
        );
        if let Some(b) = self.local.get(&key) {
            return Some(b.clone());
        }
        let per = Duration::from_millis(limit.period_ms.max(1)) / limit.requests.max(1);
        let burst = NonZeroU32::new(limit.burst.max(limit.requests))?;
        let quota = Quota::with_period(per)?.allow_burst(burst);
        if self.local.len() >= MAX_LOCAL_BUCKETS {
            self.local.clear();
        }
        let bucket = Arc::new(RateLimiter::direct(quota));
        self.local.insert(key, bucket.clone());
        Some(bucket)
    }

    /// Checks one request of `tenant` (`method`, `path`) against `policy`.
    pub async fn check(
        &self,
        keys: &TenantKeys,
        tenant: &str,
        policy: &EffectivePolicy,
        method: &str,
        path: &str,
    ) -> Verdict {
        let limits: Vec<&EffectiveLimit> = policy
            .limits
            .iter()
            .filter(|l| l.matches(method, path))
            .collect();
        if limits.is_empty() {
            return Verdict::Admit(None);
        }
        let shadow = policy.shadow;
        // Local tier.
        for limit in &limits {
            let Some(bucket) = self.local_bucket(tenant, limit) else {
                continue;
            };
            if let Err(not_until) = bucket.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                self.metrics
                    .rate_limited
                    .get_or_create(&LimitLabels {
                        tier: "local",
                        shadow,
                    })
                    .inc();
                if shadow {
                    // Counted once; the authoritative check would only count it again.
                    return Verdict::Admit(None);
                } else {
                    // The bucket's next token is when a token bucket admits again; a sliding
                    // window admits only once what it counts now has left it, up to a period
                    // later, which this replica's bucket cannot see.
                    let wait_ms = match limit.algorithm {
                        Algorithm::TokenBucket => wait.as_millis() as u64,
                        Algorithm::SlidingWindow => limit.period_ms,
                    };
                    let seconds = ceil_seconds(wait_ms).max(1);
                    return Verdict::Limited(Headers {
                        limit: limit.requests,
                        remaining: 0,
                        reset_seconds: seconds,
                        retry_after_seconds: seconds,
                    });
                }
            }
        }
        // Authoritative tier.
        match self.authority.check(LimitCheck::new(keys, &limits)).await {
            Ok(decision) => {
                let limit = limits.get(decision.limit).map_or(0, |l| l.requests);
                let headers = Headers {
                    limit,
                    remaining: decision.remaining,
                    reset_seconds: ceil_seconds(decision.reset_ms),
                    retry_after_seconds: ceil_seconds(decision.retry_after_ms).max(1),
                };
                if decision.allowed {
                    Verdict::Admit(Some(headers))
                } else {
                    self.metrics
                        .rate_limited
                        .get_or_create(&LimitLabels {
                            tier: "redis",
                            shadow,
                        })
                        .inc();
                    if shadow {
                        Verdict::Admit(None)
                    } else {
                        Verdict::Limited(headers)
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, tenant, "limit store unavailable; applying fail mode");
                match policy.fail_mode {
                    FailMode::Open => {
                        self.metrics
                            .limiter_unavailable
                            .get_or_create(&FailModeLabels { mode: "open" })
                            .inc();
                        Verdict::Admit(None)
                    }
                    FailMode::Closed => {
                        self.metrics
                            .limiter_unavailable
                            .get_or_create(&FailModeLabels { mode: "closed" })
                            .inc();
                        Verdict::Unavailable
                    }
                }
            }
        }
    }
}
