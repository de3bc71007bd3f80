//! The router's listeners against clients a client library would never be: one that half-closes
//! after its request, one that never finishes its request head or its body, and one that opens
//! more connections than its share. Real router, cell and Redis processes.

use std::{net::SocketAddr, time::Duration};

use cellstack_api::wire::header;
use cellstack_testkit::raw_http;
use tokio::{io::AsyncWriteExt, net::TcpStream};

mod common;
use common::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A router in front of one lane holding `tenant`, started with `extra` arguments.
async fn router_with_tenant(
    http: &reqwest::Client,
    name: &str,
    tenant: &str,
    extra: &[&str],
) -> (Lane, Router) {
    let dir = scratch(name);
    let lane = lane(http, "listeners", &redis_url(), &dir).await;
    put_tenant(http, &lane, tenant, &active(1)).await;
    let router = router_for(
        http,
        &dir,
        cell_route("listeners", &[&lane], 1),
        tenant,
        1,
        None,
        extra,
    )
    .await;
    (lane, router)
}

/// A client that sends a complete request and shuts down its write side gets the answer, on the
/// traffic port (through to the cell) and on the admin port; the cell's own ports answer it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let http = reqwest::Client::new();
    let tenant = unique("halfclose");
    let (lane, router) = router_with_tenant(&http, "half-close", &tenant, &[]).await;
    let whoami = raw_http::get(
        "/v1/whoami",
        &[(header::TENANT, &tenant), ("Connection", "close")],
    );
    let livez = raw_http::get("/livez", &[]);
    for (port, request, what) in [
        (router.port, &whoami, "router traffic"),
        (router.admin, &livez, "router admin"),
        (lane.api, &whoami, "cell tenant API"),
        (lane.admin, &livez, "cell admin"),
    ] {
        let answer = raw_http::half_closed(addr(port), request).await.unwrap();
        assert_eq!(
            raw_http::status(&answer),
            Some(200),
            "{what}: a half-closed request got {answer:?}"
        );
    }
}

/// A client that starts a request head and never finishes it is disconnected once
/// `--header-read-timeout-ms` passes, on both ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let http = reqwest::Client::new();
    let tenant = unique("slowhead");
    let (_lane, router) = router_with_tenant(
        &http,
        "slow-head",
        &tenant,
        &["--header-read-timeout-ms", "500"],
    )
    .await;
    for (port, what) in [(router.port, "traffic"), (router.admin, "admin")] {
        let mut tcp = TcpStream::connect(addr(port)).await.unwrap();
        tcp.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (after, _) = raw_http::until_closed(&mut tcp, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            after >= Duration::from_millis(400),
            "{what}: closed after {after:?}, before the head timeout"
        );
    }
}

/// A request body that does not arrive before the request's deadline is answered
/// `408 request_timeout` (the in-flight place it held is freed), and nothing reaches the cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let http = reqwest::Client::new();
    let tenant = unique("slowbody");
    let (lane, router) =
        router_with_tenant(&http, "slow-body", &tenant, &["--deadline-ms", "500"]).await;
    let mut tcp = TcpStream::connect(addr(router.port)).await.unwrap();
    let head = format!(
        "PUT /v1/items/slow HTTP/1.1\r\nHost: x\r\n{}: {tenant}\r\nContent-Length: 10\r\n\r\nab",
        header::TENANT
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (_, answer) = raw_http::until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(raw_http::status(&answer), Some(408), "{answer:?}");
    assert!(answer.contains("request_timeout"), "{answer:?}");
    let got = http
        .get(format!("http://127.0.0.1:{}/v1/items/slow", lane.api))
        .header(header::TENANT, &tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.status(),
        reqwest::StatusCode::NOT_FOUND,
        "the item was written"
    );
}

/// One client address gets `--max-connections-per-client` connections; one more is closed at
/// once without an answer and counted, and once one of its connections ends it gets another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_client_bound_are_closed_at_once() {
    let http = reqwest::Client::new();
    let tenant = unique("perclient");
    let (_lane, router) = router_with_tenant(
        &http,
        "per-client",
        &tenant,
        &["--max-connections-per-client", "2"],
    )
    .await;
    // router_for's readiness checks went to the admin port: the traffic port has none open.
    let mut held = vec![];
    for _ in 0..2 {
        held.push(TcpStream::connect(addr(router.port)).await.unwrap());
    }
    let mut third = TcpStream::connect(addr(router.port)).await.unwrap();
    let (_, sent) = raw_http::until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("the third connection is closed");
    assert_eq!(sent, "", "the refused connection got bytes");
    let metrics = router.metrics(&http).await;
    assert_eq!(
        metric_sum(&metrics, "cellstack_router_connections_refused_total"),
        1.0
    );
    // The held ones are served.
    let request = raw_http::get(
        "/v1/whoami",
        &[(header::TENANT, &tenant), ("Connection", "close")],
    );
    held[0].write_all(request.as_bytes()).await.unwrap();
    let (_, answer) = raw_http::until_closed(&mut held[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(raw_http::status(&answer), Some(200), "{answer:?}");
    // That one ended: a new connection gets its place (once the worker has seen it end).
    wait_until(
        "a place for a new connection",
        Duration::from_secs(10),
        async || {
            raw_http::half_closed(addr(router.port), &request)
                .await
                .is_ok_and(|a| raw_http::status(&a) == Some(200))
        },
    )
    .await;
}
