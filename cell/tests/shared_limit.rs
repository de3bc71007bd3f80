//! Two cell processes sharing one Redis enforce one tenant limit together: offered 5× the
//! allowed rate for 10 s, they admit the limit's worth within ±2 %.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::TenantState,
    policy::CellPolicies,
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
};
use common::*;
use reqwest::{Method, StatusCode};

/// Offers `rate` requests/s for `secs` seconds, split over both cells; returns (admitted,
/// limited, the span from the first send to the last in seconds).
async fn offer(cells: &[Arc<CellProcess>], tenant: &str, rate: u64, secs: u64) -> (u64, u64, f64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = tokio::task::JoinSet::new();
    // Requests go out on a fixed schedule (open loop), alternating between the cells, so the
    // offered rate does not depend on how fast answers come back.
    for i in 0..total {
        let at = start + interval * i as u32;
        let cell = cells[(i % cells.len() as u64) as usize].clone();
        let (tenant, admitted, limited) = (tenant.to_owned(), admitted.clone(), limited.clone());
        tokio::time::sleep_until(at.into()).await;
        tasks.spawn(async move {
            let res = cell.req(Method::GET, &tenant, "/v1/whoami").send().await;
            match res.as_ref().map(|r| r.status()) {
                Ok(StatusCode::OK) => admitted.fetch_add(1, Ordering::Relaxed),
                Ok(StatusCode::TOO_MANY_REQUESTS) => limited.fetch_add(1, Ordering::Relaxed),
                Ok(other) => panic!(
                    "unexpected answer {other} {:?}",
                    res.ok()
                        .and_then(|r| r.headers().get("x-cellstack-error").cloned())
                ),
                Err(e) => panic!("request failed: {e}"),
            };
        });
    }
    let span = start.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    (
        admitted.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        span,
    )
}

async fn two_cells_hold_one_limit(algorithm: Algorithm, requests: u32, burst: u32) {
    let tenant = unique("shared");
    let mut policies = CellPolicies {
        version: "1".into(),
        ..Default::default()
    };
    policies.tenants.insert(
        TenantId::parse(&tenant).unwrap(),
        policy(
            "p",
            FailMode::Closed,
            vec![limit("requests", algorithm, requests, 1000, burst)],
        ),
    );
    // Accuracy is under test here, not outages or overload: give Redis calls and the
    // concurrency limit room, so a busy test machine does not trip the breaker or the shedder.
    let options = CellOptions {
        policies: Some(policies),
        extra_args: ["--shed-initial-limit", "1024", "--redis-timeout-ms", "1000"]
            .map(String::from)
            .to_vec(),
    };
    let redis = shared_redis();
    let a = Arc::new(CellProcess::start(&redis, options.clone()).await);
    let b = Arc::new(CellProcess::start(&redis, options).await);
    a.put_tenant(&tenant, TenantState::Active, 1).await;

    let secs = 10;
    let (admitted, limited, span) = offer(&[a, b], &tenant, u64::from(requests) * 5, secs).await;
    let rate = f64::from(requests);
    // What an exact limiter admits over the span the load actually took (a loaded machine
    // stretches the schedule a little): a token bucket its burst plus the rate; a sliding window
    // the rate, plus up to one more period's worth depending on where the span starts (even an
    // exact sliding window admits a full burst at each end of a closed span).
    let (low, high) = match algorithm {
        Algorithm::TokenBucket => (
            rate * span + f64::from(burst),
            rate * span + f64::from(burst),
        ),
        Algorithm::SlidingWindow => (rate * span, rate * (span + 1.0)),
    };
    println!(
        "{algorithm:?}: admitted {admitted}, limited {limited} over {span:.2}s; exact limiter admits {low:.0}..={high:.0}"
    );
    let a = admitted as f64;
    assert!(
        a >= low * 0.98 && a <= high * 1.02,
        "{algorithm:?}: admitted {admitted}, outside {low:.0}..={high:.0} ±2%"
    );
    assert!(limited > admitted * 3, "most of the 5× load was limited");
}

// One test, run one algorithm after the other: two 5× load generators in parallel on a
// 2-core machine would measure the machine, not the limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cells_hold_one_limit_within_2_percent() {
    two_cells_hold_one_limit(Algorithm::TokenBucket, 100, 100).await;
    two_cells_hold_one_limit(Algorithm::SlidingWindow, 100, 100).await;
}
