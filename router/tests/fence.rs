//! Writes that hit a moving tenant's fence, against real cell processes: the router waits for the
//! flip within the request's deadline and delivers the write where the tenant went — told by the
//! source's `moved` answer or by a newly published table — and a fence that outlasts the deadline
//! (or the wait limit) reaches the client as the cell's 503 + `Retry-After`, as does at once a
//! write whose streamed body cannot be sent twice.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    routing::{CellRoute, RoutingTable, TenantRoute},
    tenant::TenantId,
    wire::header,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::*;

const FENCED: &str = "cellstack_router_retries_total{reason=\"fenced\"}";
const MOVED: &str = "cellstack_router_retries_total{reason=\"moved\"}";
const OUTLASTED: &str = "cellstack_router_fence_outlasted_total";

/// A tenant created in a cell that is to receive it: it refuses requests until activated.
fn importing(epoch: u64) -> TenantRecord {
    TenantRecord {
        state: TenantState::Importing,
        epoch,
        moved_to: None,
        tracking: false,
        marker: None,
    }
}

/// Writes table `version` to `file`: `cells`, and each `(tenant, cell index, epoch)`.
fn write_table(file: &Path, version: u64, cells: Vec<CellRoute>, tenants: &[(&str, u32, u64)]) {
    let routes = tenants
        .iter()
        .map(|&(t, cell, epoch)| TenantRoute {
            id: TenantId::parse(t).unwrap(),
            cell,
            epoch,
            shard_variant: 0,
            edge_limit: None,
        })
        .collect();
    let table = RoutingTable::canonical(version, 0, cells, vec![], routes).unwrap();
    // Written aside and renamed, so the router's poll never reads half a file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, table.encode().unwrap()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

async fn metric(r: &Router, http: &reqwest::Client, name: &str) -> f64 {
    metric_sum(&r.metrics(http).await, name)
}

/// Status, cell and body of an answer.
async fn answer(res: reqwest::Response) -> (StatusCode, Option<String>, String) {
    let cell = res
        .headers()
        .get(header::CELL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (res.status(), cell, res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_wait_for_the_flip_and_land_in_the_new_cell() {
    let http = reqwest::Client::new();
    let dir = scratch("fence-flip");
    // Each cell has its own Redis, as in production.
    let (_bravo_redis, bravo_redis) = start_redis().await;
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let bravo = lane(&http, "bravo", &bravo_redis, &dir).await;
    let prefix = unique("f");
    // `told` learns of its flip from alpha's `moved` answer; `published` from a new table, while
    // alpha stays fenced.
    let (told, published) = (format!("{prefix}-told"), format!("{prefix}-pub"));
    for t in [&told, &published] {
        put_tenant(&http, &alpha, t, &active(1)).await;
        put_tenant(&http, &bravo, t, &importing(2)).await;
    }
    let cells = || {
        vec![
            cell_route("alpha", &[&alpha], 1),
            cell_route("bravo", &[&bravo], 1),
        ]
    };
    let table_file = dir.join("table.bin");
    write_table(
        &table_file,
        1,
        cells(),
        &[(&told, 0, 1), (&published, 0, 1)],
    );
    let r = ready_router(&http, &table_file, &dir.join("lkg.bin"), "5000").await;

    // The move of `told`: alpha is fenced when a write comes in; the write waits at the fence.
    tenant_admin(&http, &alpha, &told, "fence", None).await;
    let started = Instant::now();
    let write = tokio::spawn(
        r.req(&http, Method::PUT, &told, "/v1/items/k")
            .body("written during the move")
            .send(),
    );
    wait_until(
        "the write to wait at the fence",
        Duration::from_secs(3),
        async || metric(&r, &http, FENCED).await >= 3.0,
    )
    .await;
    assert!(!write.is_finished(), "a fenced write waits for the flip");
    // Flip: bravo serves the tenant at epoch 2, then alpha answers `moved`; the table stays.
    tenant_admin(&http, &bravo, &told, "activate", Some(json!({"epoch": 2}))).await;
    tenant_admin(
        &http,
        &alpha,
        &told,
        "moved",
        Some(json!({"to": "bravo", "epoch": 2})),
    )
    .await;
    let (status, cell, body) = answer(write.await.unwrap().unwrap()).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(cell.as_deref(), Some("bravo"), "the write landed in bravo");
    assert!(
        took < Duration::from_secs(5),
        "within the deadline: {took:?}"
    );
    let waits = metric(&r, &http, FENCED).await;
    println!("write to {told}: {waits} fence waits, then a moved answer followed, in {took:?}");
    assert_eq!(
        metric(&r, &http, MOVED).await,
        1.0,
        "the fence waits did not use up the one follow of a moved answer"
    );
    // It is in bravo's datastore, read straight from bravo.
    let stored = http
        .get(format!("http://127.0.0.1:{}/v1/items/k", bravo.api))
        .header(header::TENANT, &told)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    assert_eq!(stored.text().await.unwrap(), "written during the move");

    // The move of `published`: alpha stays fenced; the flip reaches the router as table 2.
    tenant_admin(&http, &alpha, &published, "fence", None).await;
    let before = metric(&r, &http, FENCED).await;
    let started = Instant::now();
    let write = tokio::spawn(
        r.req(&http, Method::POST, &published, "/v1/counters/c/increment")
            .json(&json!({"by": 1}))
            .send(),
    );
    wait_until(
        "the write to wait at the fence",
        Duration::from_secs(3),
        async || metric(&r, &http, FENCED).await >= before + 3.0,
    )
    .await;
    assert!(!write.is_finished(), "a fenced write waits for the flip");
    tenant_admin(
        &http,
        &bravo,
        &published,
        "activate",
        Some(json!({"epoch": 2})),
    )
    .await;
    write_table(
        &table_file,
        2,
        cells(),
        &[(&told, 1, 2), (&published, 1, 2)],
    );
    let (status, cell, body) = answer(write.await.unwrap().unwrap()).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        cell.as_deref(),
        Some("bravo"),
        "the write followed the table"
    );
    assert!(
        took < Duration::from_secs(5),
        "within the deadline: {took:?}"
    );
    let waits = metric(&r, &http, FENCED).await - before;
    println!("write to {published}: {waits} fence waits, then the new table followed, in {took:?}");
    assert_eq!(
        metric(&r, &http, MOVED).await,
        1.0,
        "no moved answer this time"
    );
    assert_eq!(metric(&r, &http, OUTLASTED).await, 0.0);
    // A POST is not idempotent: it was applied once, in bravo.
    let counter = http
        .get(format!("http://127.0.0.1:{}/v1/counters/c", bravo.api))
        .header(header::TENANT, &published)
        .send()
        .await
        .unwrap();
    assert_eq!(counter.status(), StatusCode::OK);
    let counter: serde_json::Value = counter.json().await.unwrap();
    assert_eq!(counter["value"], 1, "{counter}");
}

/// A router over `table_file` with the given request deadline, once it reports ready.
async fn ready_router(
    http: &reqwest::Client,
    table_file: &Path,
    lkg: &Path,
    deadline_ms: &str,
) -> Router {
    let r = router_with(http, Some(table_file), lkg, &["--deadline-ms", deadline_ms]).await;
    wait_ok(http, &format!("http://127.0.0.1:{}/readyz", r.admin)).await;
    r
}

/// A write to a fenced tenant: the answer must be the 503 + Retry-After the router gives back
/// once it stops waiting; returns it and how long it took.
async fn fenced_write(
    http: &reqwest::Client,
    r: &Router,
    tenant: &str,
) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let res = r
        .req(http, Method::PUT, tenant, "/v1/items/k")
        .body("v")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "after {took:?}"
    );
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    (res, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_that_outlasts_the_deadline_reaches_the_client_as_503_with_retry_after() {
    let http = reqwest::Client::new();
    let dir = scratch("fence-deadline");
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let tenant = unique("g");
    put_tenant(&http, &alpha, &tenant, &active(1)).await;
    tenant_admin(&http, &alpha, &tenant, "fence", None).await;
    let table_file = dir.join("table.bin");
    write_table(
        &table_file,
        1,
        vec![cell_route("alpha", &[&alpha], 1)],
        &[(&tenant, 0, 1)],
    );
    let r = ready_router(&http, &table_file, &dir.join("lkg.bin"), "600").await;

    // The fence outlasts the deadline: the write waited, then got the cell's answer.
    let (res, took) = fenced_write(&http, &r, &tenant).await;
    assert_eq!(res.headers()[header::ERROR], "fenced");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "fenced", "the cell's own answer: {body}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "waited, but not past the 600 ms deadline: {took:?}"
    );
    let waits = metric(&r, &http, FENCED).await;
    println!("{waits} fence waits in {took:?} before giving up");
    assert!(waits >= 3.0, "{waits}");
    assert_eq!(metric(&r, &http, OUTLASTED).await, 1.0);

    // A streamed body (no length, so not buffered) cannot be sent twice: 503 at once, no wait.
    let raw = format!(
        "PUT /v1/items/k HTTP/1.1\r\nhost: router\r\n{}: {tenant}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\nv\r\n0\r\n\r\n",
        header::TENANT
    );
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    conn.write_all(raw.as_bytes()).await.unwrap();
    let mut streamed = String::new();
    conn.read_to_string(&mut streamed).await.unwrap();
    assert!(streamed.starts_with("HTTP/1.1 503"), "{streamed}");
    assert!(streamed.contains(&format!("{}: fenced", header::ERROR)));
    assert!(streamed.contains(&format!("{}: ", header::RETRY_AFTER)));
    assert_eq!(metric(&r, &http, FENCED).await, waits, "no wait for it");

    // With a long deadline, the wait limit ends the waits: 50 of them, a few seconds.
    let patient = ready_router(&http, &table_file, &dir.join("lkg-patient.bin"), "30000").await;
    let (_, took) = fenced_write(&http, &patient, &tenant).await;
    assert_eq!(metric(&patient, &http, FENCED).await, 50.0, "{took:?}");
    assert_eq!(metric(&patient, &http, OUTLASTED).await, 1.0);
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The refusals were read whole, so the lane's connection was reused, not reopened per wait.
    let opened = metric(
        &patient,
        &http,
        "cellstack_router_upstream_connections_total",
    )
    .await;
    assert!(opened <= 2.0, "{opened} connections for 51 tries");
}
