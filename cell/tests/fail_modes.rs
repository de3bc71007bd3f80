//! With the cell's Redis down — stopped (connections refused) or hung (SIGSTOP: connections
//! open, nothing answers, the case the breaker exists for) — a fail-open policy keeps serving and
//! a fail-closed one answers 503: the first decisions each within one Redis timeout until
//! `--breaker-failures` calls in a row failed over `--breaker-min-span-ms`, then at once for
//! every following request (the breaker), and back to normal once Redis returns.

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

/// Policies for two tenants with a limit they never reach: `open` fails open, `closed` fails
/// closed.
fn fail_open_and_closed(open: &str, closed: &str) -> CellPolicies {
    let mut policies = CellPolicies {
        version: "1".into(),
        ..Default::default()
    };
    for (tenant, mode) in [(open, FailMode::Open), (closed, FailMode::Closed)] {
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
    policies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_fast_and_recovers() {
    let mut redis = OwnRedis::start().await;
    let (open, closed) = (unique("open"), unique("closed"));
    let policies = fail_open_and_closed(&open, &closed);
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
            ..Default::default()
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
    // The first decisions may wait out a timeout (a refused connection fails faster); once the
    // breaker opened, it answers.
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

/// The value of an unlabelled metric `name` on `cell`'s `/metrics`.
async fn gauge(cell: &CellProcess, name: &str) -> Option<f64> {
    let text = cell
        .http
        .get(cell.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_one_timeout_per_failure_until_the_breaker_opens_then_it_answers_at_once()
 {
    // The Redis timeout and the breaker's cooldown this cell runs with.
    const TIMEOUT: Duration = Duration::from_millis(400);
    const COOLDOWN: Duration = Duration::from_secs(5);
    // Consecutive failed calls that open the breaker, and how long they must span from the
    // first sent to the last: the cell's defaults (`--breaker-failures`,
    // `--breaker-min-span-ms`). Calls one after another are sent a timeout apart, so the
    // breaker opens on the call sent at least MIN_SPAN after the first, or the third.
    const BREAKER_FAILURES: u32 = 3;
    const MIN_SPAN: Duration = Duration::from_millis(1000);
    let opening =
        BREAKER_FAILURES.max(MIN_SPAN.as_millis().div_ceil(TIMEOUT.as_millis()) as u32 + 1);
    // The first requests wait out those timeouts; this much more is the cell's own work and the
    // machine's scheduling.
    const FIRST_SLACK: Duration = Duration::from_millis(250);
    // A request that waited on Redis takes a whole timeout; every one after the first must
    // stay under half of it.
    const FAST: Duration = Duration::from_millis(200);

    let redis = OwnRedis::start().await;
    let (open, closed) = (unique("hung-open"), unique("hung-closed"));
    let policies = fail_open_and_closed(&open, &closed);
    let cell = CellProcess::start(
        &redis.url(),
        CellOptions {
            policies: Some(policies),
            extra_args: vec![
                "--redis-timeout-ms".into(),
                TIMEOUT.as_millis().to_string(),
                "--breaker-cooldown-ms".into(),
                COOLDOWN.as_millis().to_string(),
            ],
            ..Default::default()
        },
    )
    .await;
    cell.put_tenant(&open, TenantState::Active, 1).await;
    cell.put_tenant(&closed, TenantState::Active, 1).await;
    let whoami = |tenant: &str| cell.req(Method::GET, tenant, "/v1/whoami").send();
    let breaker = "cellstack_cell_redis_breaker_open";

    // Baseline with Redis answering; both tenants' records are now remembered.
    let mut baseline = vec![];
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(whoami(&open).await.unwrap().status(), StatusCode::OK);
        baseline.push(t.elapsed());
    }
    assert_eq!(whoami(&closed).await.unwrap().status(), StatusCode::OK);
    assert_eq!(gauge(&cell, breaker).await, Some(0.0), "breaker closed");
    let base_p50 = percentile(&mut baseline, 0.5);

    redis.signal("STOP");
    // The breaker opens once `opening` calls in a row waited out their timeout (so Redis
    // really hung), and no sooner: the requests until then take that many timeouts in all.
    let t = Instant::now();
    let mut before_open = 0;
    while gauge(&cell, breaker).await != Some(1.0) {
        assert!(
            before_open < opening,
            "the breaker is still closed after {before_open} requests"
        );
        let res = whoami(&open).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "fail open serves");
        before_open += 1;
    }
    let first = t.elapsed();
    let opened = Instant::now();
    let waited = TIMEOUT * opening;
    assert!(
        first >= waited && first <= waited + FIRST_SLACK,
        "the requests before the breaker opened took {first:?}; expected {opening} Redis timeouts of {TIMEOUT:?} (+ up to {FIRST_SLACK:?})"
    );

    // From now until the cooldown ends nothing goes to Redis: every answer comes at once.
    // (Measured with a second to spare: the probe after the cooldown pays one timeout.)
    let mut open_lat = vec![];
    let mut closed_lat = vec![];
    while open_lat.len() < 100 && opened.elapsed() < COOLDOWN - Duration::from_secs(1) {
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
        let body = res.text().await.unwrap_or_default();
        assert!(
            body.contains("fails closed"),
            "the refusal gives its reason: {body}"
        );
    }
    let t = Instant::now();
    let ready = cell
        .http
        .get(cell.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    let readyz = t.elapsed();
    let n = open_lat.len();
    let open_max = open_lat.iter().max().copied().unwrap_or_default();
    let closed_max = closed_lat.iter().max().copied().unwrap_or_default();
    let open_p50 = percentile(&mut open_lat, 0.5);
    let closed_p50 = percentile(&mut closed_lat, 0.5);
    println!(
        "baseline p50 {base_p50:?}; Redis hung: {before_open} requests in {first:?} until the breaker opened (timeout {TIMEOUT:?}), \
         then {n} pairs: open p50 {open_p50:?} max {open_max:?}, closed p50 {closed_p50:?} max \
         {closed_max:?}; /readyz {ready} in {readyz:?}"
    );
    assert!(
        n >= 20,
        "only {n} requests measured before the cooldown ended"
    );
    for (what, max) in [
        ("open", open_max),
        ("closed", closed_max),
        ("/readyz", readyz),
    ] {
        assert!(
            max < FAST,
            "a {what} answer took {max:?} while the breaker was open: it waited on Redis"
        );
    }
    for (what, p) in [("open p50", open_p50), ("closed p50", closed_p50)] {
        assert!(
            p < base_p50 + Duration::from_millis(5),
            "{what} {p:?} adds more than 5 ms to {base_p50:?}"
        );
    }
    assert!(!ready.is_success(), "/readyz passes with Redis hung");

    // Redis resumes: the next probe (at the latest one cooldown after the last failure) closes
    // the breaker and the fail-closed tenant is served again.
    redis.signal("CONT");
    let last = std::sync::Mutex::new(String::new());
    wait_until_or(
        "the fail-closed tenant to be served again",
        COOLDOWN + TIMEOUT + Duration::from_secs(5),
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
    assert_eq!(
        gauge(&cell, breaker).await,
        Some(0.0),
        "breaker closed again"
    );
}
