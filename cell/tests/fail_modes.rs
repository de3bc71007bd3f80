//! With the cell's Redis stopped, a fail-open policy keeps serving and a fail-closed one answers
//! 503 — decided within one timeout, then immediately for every following request (the breaker),
//! and back to normal once Redis returns.

mod common;

use std::time::{Duration, Instant};

use cellstack_api::{
    admin::TenantState,
    policy::CellPolicies,
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
    wire::header,
};
use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_fast_and_recovers() {
    let mut redis = OwnRedis::start().await;
    let (open, closed) = (unique("open"), unique("closed"));
    let mut policies = CellPolicies {
        version: "1".into(),
        ..Default::default()
    };
    for (tenant, mode) in [(&open, FailMode::Open), (&closed, FailMode::Closed)] {
        policies.tenants.insert(
            TenantId::parse(tenant).unwrap(),
            policy(
                "p",
                mode,
                vec![limit(
                    "requests",
                    Algorithm::TokenBucket,
                    10_000,
                    1000,
                    10_000,
                )],
            ),
        );
    }
    let cell = CellProcess::start(
        &redis.url(),
        CellOptions {
            policies: Some(policies),
            extra_args: vec![
                "--redis-timeout-ms".into(),
                "100".into(),
                "--breaker-cooldown-ms".into(),
                "1000".into(),
            ],
        },
    )
    .await;
    cell.put_tenant(&open, TenantState::Active, 1).await;
    cell.put_tenant(&closed, TenantState::Active, 1).await;
    let whoami = |tenant: &str| cell.req(Method::GET, tenant, "/v1/whoami").send();

    // Baseline with Redis up.
    let mut baseline = vec![];
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(whoami(&open).await.unwrap().status(), StatusCode::OK);
        baseline.push(t.elapsed());
    }
    assert_eq!(whoami(&closed).await.unwrap().status(), StatusCode::OK);
    let base_p50 = percentile(&mut baseline, 0.5);

    redis.stop();
    // The first decision may wait out one timeout; from then on the breaker answers.
    let first = Instant::now();
    assert_eq!(
        whoami(&open).await.unwrap().status(),
        StatusCode::OK,
        "fail open serves"
    );
    let first = first.elapsed();
    let mut open_lat = vec![];
    let mut closed_lat = vec![];
    // Stay well inside the breaker's cooldown-and-probe cycle: each probe costs at most one
    // timeout, and the test measures what every other request pays.
    for _ in 0..100 {
        let t = Instant::now();
        let res = whoami(&open).await.unwrap();
        open_lat.push(t.elapsed());
        assert_eq!(res.status(), StatusCode::OK, "fail open keeps serving");
        let t = Instant::now();
        let res = whoami(&closed).await.unwrap();
        closed_lat.push(t.elapsed());
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "fail closed refuses"
        );
        assert_eq!(res.headers()[header::ERROR], "unavailable");
        assert!(res.headers().contains_key(header::RETRY_AFTER));
    }
    let open_p50 = percentile(&mut open_lat, 0.5);
    let closed_p50 = percentile(&mut closed_lat, 0.5);
    let open_p90 = percentile(&mut open_lat, 0.9);
    println!(
        "baseline p50 {base_p50:?}; first decision {first:?}; Redis down: open p50 {open_p50:?} p90 {open_p90:?}, closed p50 {closed_p50:?}"
    );
    assert!(
        first < Duration::from_millis(500),
        "the first decision took {first:?}"
    );
    for (what, p) in [
        ("open p50", open_p50),
        ("closed p50", closed_p50),
        ("open p90", open_p90),
    ] {
        assert!(
            p < base_p50 + Duration::from_millis(5),
            "{what} {p:?} adds more than 5 ms to {base_p50:?}"
        );
    }

    redis.restart().await;
    let last = std::sync::Mutex::new(String::new());
    wait_until_or(
        "the fail-closed tenant to be served again",
        Duration::from_secs(15),
        || async {
            match whoami(&closed).await {
                Ok(r) if r.status() == StatusCode::OK => true,
                Ok(r) => {
                    *last.lock().unwrap() =
                        format!("{} {}", r.status(), r.text().await.unwrap_or_default());
                    false
                }
                Err(e) => {
                    *last.lock().unwrap() = e.to_string();
                    false
                }
            }
        },
        || last.lock().unwrap().clone(),
    )
    .await;
}
