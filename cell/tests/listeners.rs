//! The cell's listeners against slow clients: one that never finishes its request head is
//! disconnected, one that never finishes its body gets `408 request_timeout` and nothing is
//! written. (Half-closed requests: `router/tests/listeners.rs` checks the cell's ports too.)

mod common;

use std::time::Duration;

use cellstack_api::{admin::TenantState, wire::header};
use cellstack_testkit::raw_http;
use common::*;
use reqwest::Method;
use tokio::{io::AsyncWriteExt, net::TcpStream};

fn options() -> CellOptions {
    CellOptions {
        extra_args: [
            "--header-read-timeout-ms",
            "500",
            "--body-read-timeout-ms",
            "500",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..CellOptions::default()
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let cell = CellProcess::start(&shared_redis(), options()).await;
    for (addr, what) in [(cell.api, "tenant API"), (cell.admin, "admin")] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
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

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_nothing_is_written() {
    let cell = CellProcess::start(&shared_redis(), options()).await;
    let tenant = unique("slowbody");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    let mut tcp = TcpStream::connect(cell.api).await.unwrap();
    let head = format!(
        "PUT /v1/items/slow HTTP/1.1\r\nHost: x\r\n{}: {tenant}\r\nContent-Length: 10\r\n\r\nab",
        header::TENANT
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (after, answer) = raw_http::until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        raw_http::status(&answer),
        Some(408),
        "after {after:?}: {answer:?}"
    );
    assert!(answer.contains("request_timeout"), "{answer:?}");
    let got = cell
        .req(Method::GET, &tenant, "/v1/items/slow")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.status(),
        reqwest::StatusCode::NOT_FOUND,
        "the item was written"
    );
}

/// The metrics listener (`--metrics-listen`, what a monitoring namespace is admitted to) serves
/// `/metrics` and `/livez` and nothing of the admin API, even with the admin token.
#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_no_admin_call() {
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cell = CellProcess::start(
        &shared_redis(),
        CellOptions {
            extra_args: vec!["--metrics-listen".into(), metrics.to_string()],
            ..CellOptions::default()
        },
    )
    .await;
    let page = cell
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(text.contains("cellstack_cell_"), "{text}");
    let live = cell
        .http
        .get(format!("http://{metrics}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    for (method, path) in [
        (Method::GET, "/admin/v1/tenants/t1"),
        (Method::PUT, "/admin/v1/tenants/t1"),
        (Method::GET, "/admin/v1/datastore"),
        (Method::GET, "/readyz"),
    ] {
        let answer = cell
            .http
            .request(method.clone(), format!("http://{metrics}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{method} {path} on the metrics port");
    }
    // The admin port still has them.
    let admin = cell
        .admin_req(Method::GET, "/admin/v1/datastore")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}
