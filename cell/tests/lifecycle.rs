//! Health and shutdown: liveness never depends on Redis (not even before the first connection),
//! readiness does, and on SIGTERM readiness fails first while requests are still served, then
//! the process exits cleanly.

mod common;

use std::time::Duration;

use cellstack_api::admin::TenantState;
use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn liveness_ignores_redis_and_readiness_follows_it() {
    let mut redis = OwnRedis::start().await;
    let cell = CellProcess::start(&redis.url(), CellOptions::default()).await;
    let status = |path: &'static str| {
        let (http, url) = (cell.http.clone(), cell.admin_url(path));
        async move { http.get(url).send().await.map(|r| r.status()).ok() }
    };
    assert_eq!(status("/readyz").await, Some(StatusCode::OK));
    redis.stop();
    wait_until(
        "readiness to fail without Redis",
        Duration::from_secs(10),
        || async { status("/readyz").await == Some(StatusCode::SERVICE_UNAVAILABLE) },
    )
    .await;
    assert_eq!(
        status("/livez").await,
        Some(StatusCode::OK),
        "liveness does not check Redis"
    );
    redis.restart().await;
    wait_until(
        "readiness to recover with Redis",
        Duration::from_secs(10),
        || async { status("/readyz").await == Some(StatusCode::OK) },
    )
    .await;
}

/// A cell started before its Redis answers (a new cell's datastore takes a while): `/livez`
/// answers at once, so the kubelet does not restart it; `/readyz` and the admin API answer 503
/// saying what it waits for; once Redis answers, the cell is ready and serves.
#[tokio::test]
async fn a_cell_started_before_its_redis_is_live_and_serves_once_redis_answers() {
    let mut redis = OwnRedis::start().await;
    redis.stop();
    let mut cell = CellProcess::start(
        &redis.url(),
        CellOptions {
            not_waiting_for_redis: true,
            ..Default::default()
        },
    )
    .await;
    let (http, admin) = (cell.http.clone(), cell.admin_url(""));
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{admin}{path}"));
        async move {
            let res = http.get(url).send().await.expect("the admin port answers");
            (res.status(), res.text().await.unwrap_or_default())
        }
    };
    assert_eq!(get("/livez").await.0, StatusCode::OK);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("waiting for the cell's redis"), "{body}");
    let res = cell
        .admin_req(Method::GET, "/admin/v1/tenants/early")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(cell.is_running(), "the cell exited without Redis");

    redis.restart().await;
    wait_until(
        "readiness once Redis answers",
        Duration::from_secs(10),
        || async { get("/readyz").await.0 == StatusCode::OK },
    )
    .await;
    cell.put_tenant("early", TenantState::Active, 1).await;
    let res = cell
        .req(Method::PUT, "early", "/v1/items/first")
        .body("1")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
}

#[tokio::test]
async fn sigterm_fails_readiness_first_then_drains_and_exits_cleanly() {
    let redis = shared_redis();
    let mut cell = CellProcess::start(
        &redis,
        CellOptions {
            extra_args: ["--drain-delay-secs", "2"].map(String::from).to_vec(),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique("drain");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    let pid = cell.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let readyz = cell.admin_url("/readyz");
    wait_until(
        "readiness to fail after SIGTERM",
        Duration::from_secs(2),
        || async {
            cell.http
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        },
    )
    .await;
    // Still serving during the drain delay.
    let res = cell
        .req(Method::GET, &tenant, "/v1/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "requests are served while draining"
    );
    let status = cell.wait_exit();
    assert!(status.success(), "clean exit after draining: {status}");
}
