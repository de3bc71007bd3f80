//! The router's own guards, against real cell processes and a real Redis: the edge pre-limit
//! refuses over-limit requests itself (the cell never sees them), a `stale_epoch` answer is
//! retried once at the cell's epoch, and a hung lane trips the per-try timeout — the request
//! succeeds on another lane within the deadline — and is ejected after repeated failures.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use cellstack_api::{routing::EdgeLimit, wire::header};
use reqwest::{Method, StatusCode};
use serde_json::json;

mod common;
use common::*;

const EDGE_LIMITED: &str = "cellstack_router_edge_limited_total";
const STALE_EPOCH: &str = "cellstack_router_retries_total{reason=\"stale_epoch\"}";
const TIMEOUT: &str = "cellstack_router_retries_total{reason=\"timeout\"}";
const EJECTED: &str = "cellstack_router_lanes_ejected";

/// Tenant API answers a lane has given, with status `code` if given.
async fn cell_answers(http: &reqwest::Client, lane: &Lane, code: Option<u16>) -> f64 {
    let text = metrics_of(http, lane.admin).await;
    text.lines()
        .filter(|l| l.starts_with("cellstack_cell_requests_total{"))
        .filter(|l| code.is_none_or(|c| l.contains(&format!("code=\"{c}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_edge_limit_get_429_from_the_router_and_never_reach_the_cell() {
    let http = reqwest::Client::new();
    let dir = scratch("edge-limit");
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let tenant = unique("e");
    put_tenant(&http, &alpha, &tenant, &active(1)).await;
    // A burst of 5, refilled one request per 2 minutes: nothing refills during the test.
    let limit = EdgeLimit {
        requests: 5,
        period_ms: 600_000,
        burst: 5,
    };
    let r = router_for(
        &http,
        &dir,
        cell_route("alpha", &[&alpha], 1),
        &tenant,
        1,
        Some(limit),
        &[],
    )
    .await;
    let seen_before = cell_answers(&http, &alpha, None).await;

    let (mut passed, mut refused) = (0, 0);
    for i in 0..20 {
        let res = r
            .req(&http, Method::GET, &tenant, "/v1/whoami")
            .send()
            .await
            .unwrap();
        match res.status() {
            StatusCode::OK => {
                assert_eq!(res.headers()[header::CELL], "alpha");
                passed += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let h = res.headers();
                assert_eq!(h[header::ERROR], "rate_limited", "request {i}");
                assert_eq!(h[header::RATELIMIT_LIMIT], "5", "request {i}");
                assert!(h.contains_key(header::RETRY_AFTER), "request {i}");
                assert!(
                    !h.contains_key(header::CELL),
                    "request {i}: the router's answer, not a cell's"
                );
                refused += 1;
            }
            other => panic!("request {i}: {other}"),
        }
    }
    assert_eq!(
        (passed, refused),
        (5, 15),
        "the burst passes, the rest is refused"
    );
    assert_eq!(metric_sum(&r.metrics(&http).await, EDGE_LIMITED), 15.0);
    assert_eq!(
        cell_answers(&http, &alpha, None).await - seen_before,
        5.0,
        "the cell saw only the requests under the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_is_retried_once_at_the_cells_epoch_and_the_write_applies_once() {
    let http = reqwest::Client::new();
    let dir = scratch("stale-epoch");
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let tenant = unique("s");
    // The cell has the tenant at epoch 3; the router's table still says 2.
    put_tenant(&http, &alpha, &tenant, &active(3)).await;
    let r = router_for(
        &http,
        &dir,
        cell_route("alpha", &[&alpha], 1),
        &tenant,
        2,
        None,
        &[],
    )
    .await;

    // A POST is not idempotent: it goes again only because the cell said nothing was applied.
    let res = r
        .req(&http, Method::POST, &tenant, "/v1/counters/c/increment")
        .json(&json!({"by": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(metric_sum(&r.metrics(&http).await, STALE_EPOCH), 1.0);
    assert_eq!(
        cell_answers(&http, &alpha, Some(409)).await,
        1.0,
        "the cell refused the first try, at epoch 2"
    );
    let counter: serde_json::Value = http
        .get(format!("http://127.0.0.1:{}/v1/counters/c", alpha.api))
        .header(header::TENANT, &tenant)
        .header(header::EPOCH, "3")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counter["value"], 1, "applied once, at epoch 3: {counter}");

    // Each request retries once: the next one starts again from the table's epoch.
    let res = r
        .req(&http, Method::GET, &tenant, "/v1/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(metric_sum(&r.metrics(&http).await, STALE_EPOCH), 2.0);
    assert_eq!(cell_answers(&http, &alpha, Some(409)).await, 2.0);
}

/// Sends `SIGSTOP` (or `SIGCONT`) to a lane's process: it keeps its sockets, and the kernel
/// still accepts connections for it, but nothing answers.
fn signal(lane: &Lane, sig: &str) {
    let pid = lane.proc.as_ref().expect("a running lane").0.id();
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_lane_trips_the_per_try_timeout_and_is_ejected() {
    let http = reqwest::Client::new();
    let dir = scratch("hung-lane");
    let redis = redis_url();
    let lanes = [
        lane(&http, "alpha", &redis, &dir).await,
        lane(&http, "alpha", &redis, &dir).await,
    ];
    let tenant = unique("h");
    put_tenant(&http, &lanes[0], &tenant, &active(1)).await;
    let (try_timeout, deadline) = (Duration::from_millis(300), Duration::from_secs(5));
    let r = router_for(
        &http,
        &dir,
        cell_route("alpha", &[&lanes[0], &lanes[1]], 2),
        &tenant,
        1,
        None,
        &[
            "--try-timeout-ms",
            &try_timeout.as_millis().to_string(),
            "--deadline-ms",
            &deadline.as_millis().to_string(),
        ],
    )
    .await;
    let get = || async {
        let started = Instant::now();
        let res = r
            .req(&http, Method::GET, &tenant, "/v1/whoami")
            .send()
            .await
            .unwrap();
        (res.status(), started.elapsed())
    };
    // Both lanes answer, and the router holds connections to them.
    for _ in 0..4 {
        assert_eq!(get().await.0, StatusCode::OK);
    }

    signal(&lanes[0], "-STOP");
    // Requests rotate over the two lanes: those sent to the hung one wait out the per-try
    // timeout and succeed on the other, until three failures in a row eject it.
    let mut slow = 0;
    for i in 0..20 {
        let (status, took) = get().await;
        assert_eq!(status, StatusCode::OK, "request {i} after {took:?}");
        assert!(took < deadline, "request {i} took {took:?}");
        if took >= try_timeout {
            slow += 1;
        }
        let status: serde_json::Value = http
            .get(format!("http://127.0.0.1:{}/status", r.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["lanesEjected"] == 1 {
            break;
        }
    }
    let metrics = r.metrics(&http).await;
    let timeouts = metric_sum(&metrics, TIMEOUT);
    println!("{slow} requests waited out the per-try timeout; {timeouts} retried after it");
    assert_eq!(
        metric_sum(&metrics, EJECTED),
        1.0,
        "the hung lane is ejected"
    );
    assert!(timeouts >= 3.0, "three failures eject a lane: {timeouts}");
    assert!(slow >= 3, "{slow} requests waited for the per-try timeout");

    // Ejected (for 5 s), the hung lane gets no more tries: no more timeouts.
    for i in 0..10 {
        let (status, took) = get().await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} after ejection, {took:?}"
        );
    }
    assert_eq!(metric_sum(&r.metrics(&http).await, TIMEOUT), timeouts);
    signal(&lanes[0], "-CONT");
}
