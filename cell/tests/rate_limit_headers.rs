//! What a `429` tells a client, from both tiers of the limiter (a replica's own bucket, and the
//! authoritative script in the shared Redis): `RateLimit-Limit` is the policy's limit,
//! `RateLimit-Remaining` 0, `Retry-After` and `RateLimit-Reset` whole seconds within the policy's
//! period, the body's `retry_after_seconds` the same as the header — and a client that waits
//! `Retry-After` is admitted. Admitted answers count `RateLimit-Remaining` down.
//!
//! (The retry found a defect: a replica's own bucket refusing for a sliding window answered
//! with its next token, 1 s here, while the window stayed full for up to a period; it now
//! answers with the period.)

mod common;

use std::time::{Duration, Instant};

use cellstack_api::{
    admin::TenantState,
    policy::CellPolicies,
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
    wire::{ErrorBody, ErrorCode, header},
};
use common::*;
use reqwest::{Method, Response, StatusCode};

/// Requests a policy admits per period in these tests.
const REQUESTS: u32 = 3;

fn number(res: &Response, name: &str) -> u64 {
    let value = res
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("a {} answer without {name}", res.status()));
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a whole number: {value:?}"))
}

/// The sum of `cell`'s metric lines starting with `prefix`.
async fn metric(cell: &CellProcess, prefix: &str) -> f64 {
    let text = cell.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Checks a 429's headers and body against a policy of [`REQUESTS`] per `period`; returns its
/// `Retry-After` in seconds.
async fn check_refusal(res: Response, period: Duration, tier: &str) -> u64 {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{tier}");
    let period_secs = period.as_secs();
    let limit = number(&res, header::RATELIMIT_LIMIT);
    let remaining = number(&res, header::RATELIMIT_REMAINING);
    let retry_after = number(&res, header::RETRY_AFTER);
    let reset = number(&res, header::RATELIMIT_RESET);
    assert_eq!(
        res.headers()[header::ERROR],
        ErrorCode::RateLimited.as_str()
    );
    assert_eq!(
        (limit, remaining),
        (u64::from(REQUESTS), 0),
        "{tier}: RateLimit-Limit is the policy's limit and nothing remains"
    );
    assert!(
        (1..=period_secs).contains(&retry_after),
        "{tier}: Retry-After {retry_after} s is outside 1..={period_secs} s (the policy's period)"
    );
    assert!(
        (retry_after..=period_secs).contains(&reset),
        "{tier}: RateLimit-Reset {reset} s is outside Retry-After..=the period ({retry_after}..={period_secs} s)"
    );
    let body: ErrorBody = res.json().await.expect("a JSON error body");
    assert_eq!(
        body.retry_after_seconds.map(u64::from),
        Some(retry_after),
        "{tier}: the body's retry_after_seconds agrees with Retry-After"
    );
    println!(
        "{tier}: 429 with RateLimit-Limit {limit}, Remaining {remaining}, Reset {reset} s, Retry-After {retry_after} s"
    );
    retry_after
}

/// The limiter tier that refuses: a replica's own bucket, or the authoritative script in Redis.
#[derive(Debug, Clone, Copy)]
enum Tier {
    Local,
    Redis,
}

impl Tier {
    fn label(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Redis => "redis",
        }
    }
}

async fn headers_tell_the_truth(algorithm: Algorithm, period: Duration) {
    let tiers = [Tier::Local, Tier::Redis];
    let tenants = tiers.map(|t| unique(&format!("headers-{}", t.label())));
    let mut policies = CellPolicies {
        version: "1".into(),
        ..Default::default()
    };
    for tenant in &tenants {
        policies.tenants.insert(
            TenantId::parse(tenant).unwrap(),
            policy(
                "p",
                // A Redis hiccup answers 503 instead of admitting: it cannot pass for a header.
                FailMode::Closed,
                vec![limit(
                    "requests",
                    algorithm,
                    REQUESTS,
                    period.as_millis() as u64,
                    REQUESTS,
                )],
            ),
        );
    }
    // Two replicas of one cell. `a` takes a tenant's whole limit; then `a` refuses the next
    // request from its own bucket, while `b`, whose bucket is still full, asks Redis, which
    // refuses it. One tenant for each, so each retry below meets only its own refusal.
    let options = CellOptions {
        policies: Some(policies),
        extra_args: ["--redis-timeout-ms", "1000"].map(String::from).to_vec(),
        ..Default::default()
    };
    let redis = shared_redis();
    let a = CellProcess::start(&redis, options.clone()).await;
    let b = CellProcess::start(&redis, options).await;
    let refused = |tier: Tier| {
        format!(
            "cellstack_cell_rate_limited_total{{tier=\"{}\",shadow=\"false\"}}",
            tier.label()
        )
    };

    for (tier, tenant) in tiers.into_iter().zip(&tenants) {
        let what = format!("{algorithm:?}, {} tier", tier.label());
        a.put_tenant(tenant, TenantState::Active, 1).await;
        let whoami = |cell: &CellProcess| cell.req(Method::GET, tenant, "/v1/whoami").send();

        // Admitted answers count down. (A token bucket's count is exact while the requests
        // take less than one token's refill, period / REQUESTS.)
        let started = Instant::now();
        let mut remaining = vec![];
        for _ in 0..REQUESTS {
            let res = whoami(&a).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{what}");
            assert_eq!(number(&res, header::RATELIMIT_LIMIT), u64::from(REQUESTS));
            let reset = number(&res, header::RATELIMIT_RESET);
            assert!(
                (1..=period.as_secs()).contains(&reset),
                "{what}: RateLimit-Reset {reset} s on an admitted answer is outside the period"
            );
            remaining.push(number(&res, header::RATELIMIT_REMAINING));
        }
        let took = started.elapsed();
        assert!(
            took < period / REQUESTS,
            "{what}: the admitted requests took {took:?}, longer than one token's refill: the counts below would not be exact"
        );
        assert_eq!(
            remaining,
            [2, 1, 0],
            "{what}: RateLimit-Remaining counts down"
        );

        let refuser = match tier {
            Tier::Local => &a,
            Tier::Redis => &b,
        };
        let before = [
            metric(refuser, &refused(Tier::Local)).await,
            metric(refuser, &refused(Tier::Redis)).await,
        ];
        let retry_after = check_refusal(whoami(refuser).await.unwrap(), period, &what).await;
        let after = [
            metric(refuser, &refused(Tier::Local)).await,
            metric(refuser, &refused(Tier::Redis)).await,
        ];
        let expected = match tier {
            Tier::Local => [before[0] + 1.0, before[1]],
            Tier::Redis => [before[0], before[1] + 1.0],
        };
        assert_eq!(
            after, expected,
            "{what}: refused by that tier (local, redis)"
        );

        // A client that waits as told is admitted.
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let res = whoami(refuser).await.unwrap();
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "{what}: refused again after waiting Retry-After {retry_after} s: {body}"
        );
    }
}

#[tokio::test]
async fn a_token_bucket_429_says_when_to_retry_and_a_client_that_waits_is_admitted() {
    // One token every 2 s.
    headers_tell_the_truth(Algorithm::TokenBucket, Duration::from_secs(6)).await;
}

#[tokio::test]
async fn a_sliding_window_429_says_when_to_retry_and_a_client_that_waits_is_admitted() {
    headers_tell_the_truth(Algorithm::SlidingWindow, Duration::from_secs(3)).await;
}
