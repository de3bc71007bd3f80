//! The cell runtime as the gateway in front of a team's own service: a real `cellstack-cell`
//! on a real Redis, with the Go example service (examples/go-orders, built with the Go
//! toolchain) behind it on loopback, keeping its data through the runtime's tenant state API.

mod common;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use cellstack_api::{
    admin::{Checksum, TenantState},
    policy::CellPolicies,
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
    wire::header,
};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The Go example running on loopback, talking to a state API.
struct GoService {
    port: u16,
    child: Child,
}

impl GoService {
    fn start(state: SocketAddr, args: &[&str]) -> Self {
        let binary = cellstack_testkit::go_orders().expect("building examples/go-orders");
        let port = cellstack_testkit::ports::free_port();
        let child = Command::new(binary)
            .arg("-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-state")
            .arg(format!("http://{state}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting go-orders");
        Self { port, child }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// What the service itself counted for `tenant` (asked directly, not through the runtime;
    /// `/stats` does not count itself).
    async fn requests_seen(&self, http: &reqwest::Client, tenant: &str) -> i64 {
        let body: Value = http
            .get(format!("http://127.0.0.1:{}/stats", self.port))
            .header(header::TENANT, tenant)
            .send()
            .await
            .expect("go-orders /stats")
            .json()
            .await
            .expect("JSON");
        body["requests"].as_i64().expect("requests")
    }
}

impl Drop for GoService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cell whose tenant port is a gateway to one service on `service_port` (2 s timeout), with
/// the state API.
async fn gateway_cell(
    service_port: u16,
    state: SocketAddr,
    policies: Option<CellPolicies>,
) -> CellProcess {
    gateway_cell_timing_out_after(service_port, state, policies, 2).await
}

/// [`gateway_cell`] with the service's timeout in seconds.
async fn gateway_cell_timing_out_after(
    service_port: u16,
    state: SocketAddr,
    policies: Option<CellPolicies>,
    timeout_secs: u32,
) -> CellProcess {
    CellProcess::start(
        &shared_redis(),
        CellOptions {
            policies,
            extra_args: vec![
                "--service".into(),
                format!("name=orders,port={service_port},health=/healthz,timeout={timeout_secs}"),
                "--state-listen".into(),
                state.to_string(),
            ],
            ..Default::default()
        },
    )
    .await
}

/// The Go example behind a gateway cell, an active tenant (`prefix`, at epoch 1) and the
/// state API's address, once the lane is ready.
async fn started(prefix: &str) -> (GoService, CellProcess, String, SocketAddr) {
    started_timing_out_after(prefix, 2).await
}

/// [`started`] with the service's timeout in seconds.
async fn started_timing_out_after(
    prefix: &str,
    timeout_secs: u32,
) -> (GoService, CellProcess, String, SocketAddr) {
    let state = loopback();
    let tenant = unique(prefix);
    let go = GoService::start(state, &[]);
    let cell = gateway_cell_timing_out_after(go.port, state, None, timeout_secs).await;
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    await_ready(&cell, true).await;
    (go, cell, tenant, state)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cellstack_testkit::ports::free_port()))
}

async fn ready(cell: &CellProcess) -> (StatusCode, String) {
    let res = cell
        .http
        .get(cell.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    (res.status(), res.text().await.unwrap_or_default())
}

async fn await_ready(cell: &CellProcess, want: bool) -> String {
    let last = std::sync::Mutex::new(String::new());
    wait_until_or(
        &format!("the lane to be ready={want}"),
        Duration::from_secs(15),
        || async {
            let (status, body) = ready(cell).await;
            *last.lock().unwrap() = body;
            (status == StatusCode::OK) == want
        },
        || last.lock().unwrap().clone(),
    )
    .await;
    last.into_inner().unwrap()
}

async fn json_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn admitted_requests_reach_the_service_and_its_data_is_the_tenants() {
    let state = loopback();
    let tenant = unique("orders");
    let go = GoService::start(state, &[]);
    let cell = gateway_cell(go.port, state, None).await;
    cell.put_tenant(&tenant, TenantState::Active, 3).await;
    await_ready(&cell, true).await;

    let res = cell
        .req(Method::POST, &tenant, "/orders")
        .json(&json!({"item": "book", "quantity": 2}))
        .send()
        .await
        .expect("create");
    assert_eq!(
        res.headers()
            .get(header::CELL)
            .and_then(|v| v.to_str().ok()),
        Some("test-cell"),
        "the runtime's own header is added to the service's answer"
    );
    let (status, order) = json_of(res).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(
        (order["id"].as_i64(), order["status"].as_str()),
        (Some(1), Some("placed"))
    );
    let (status, second) = json_of(
        cell.req(Method::POST, &tenant, "/orders")
            .json(&json!({"item": "pen", "quantity": 1}))
            .send()
            .await
            .expect("create"),
    )
    .await;
    assert_eq!(
        (status, second["id"].as_i64()),
        (StatusCode::CREATED, Some(2))
    );
    let (status, paid) = json_of(
        cell.req(Method::POST, &tenant, "/orders/1/status")
            .json(&json!({"status": "paid"}))
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(
        (status, paid["status"].as_str()),
        (StatusCode::OK, Some("paid")),
        "{paid}"
    );
    // The service's own refusal passes through unchanged.
    let (status, refused) = json_of(
        cell.req(Method::POST, &tenant, "/orders/2/status")
            .json(&json!({"status": "delivered"}))
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{refused}"
    );
    let (status, listed) = json_of(
        cell.req(Method::GET, &tenant, "/orders")
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<i64> = listed["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);

    // A request naming no tenant never reaches the service.
    let before = go.requests_seen(&cell.http, &tenant).await;
    let res = cell
        .http
        .get(cell.url("/orders"))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        go.requests_seen(&cell.http, &tenant).await,
        before,
        "the service saw a request the runtime refused"
    );

    // Its data is the tenant's: kept under the tenant's keys, counted in its O(1) checksum
    // exactly as a recount of the keys finds it (2 orders, the sequence counter).
    let maintained: Checksum = cell
        .admin_req(Method::GET, &format!("/admin/v1/tenants/{tenant}/checksum"))
        .send()
        .await
        .expect("checksum")
        .json()
        .await
        .expect("JSON");
    let recounted: Checksum = cell
        .admin_req(
            Method::GET,
            &format!("/admin/v1/tenants/{tenant}/checksum?recount=true"),
        )
        .send()
        .await
        .expect("checksum")
        .json()
        .await
        .expect("JSON");
    assert_eq!(maintained.keys, 3, "order-1, order-2, order-seq");
    assert_eq!(maintained, recounted);
}

#[tokio::test]
async fn a_tenant_over_its_limit_gets_429_from_the_runtime_and_the_service_never_sees_those_requests()
 {
    let state = loopback();
    let tenant = unique("limited");
    let mut policies = CellPolicies {
        version: "gateway-limits".into(),
        ..Default::default()
    };
    policies.tenants.insert(
        TenantId::parse(&tenant).expect("tenant id"),
        policy(
            "five",
            FailMode::Closed,
            vec![limit("all", Algorithm::TokenBucket, 5, 60_000, 5)],
        ),
    );
    let go = GoService::start(state, &[]);
    let cell = gateway_cell(go.port, state, Some(policies)).await;
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    await_ready(&cell, true).await;

    let before = go.requests_seen(&cell.http, &tenant).await;
    let (mut admitted, mut limited) = (0, 0);
    for _ in 0..20 {
        let res = cell
            .req(Method::GET, &tenant, "/orders")
            .send()
            .await
            .expect("list");
        match res.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(
                    res.headers()
                        .get(header::ERROR)
                        .and_then(|v| v.to_str().ok()),
                    Some("rate_limited")
                );
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((admitted, limited), (5, 15));
    // The service counted the 5 admitted requests, nothing else.
    assert_eq!(go.requests_seen(&cell.http, &tenant).await, before + 5);
}

#[tokio::test]
async fn fifty_concurrent_compare_and_set_increments_lose_none() {
    // The 50 read-modify-writes of one item succeed one at a time: with other test binaries on
    // the 2 cores, the last took longer than the 2 s the other tests give the service (the
    // --full run of 2026-12-06: 20 of 50 answered 504). This test is about none being lost.
    let (_go, cell, tenant, state) = started_timing_out_after("tally", 20).await;

    let calls = (0..50).map(|_| {
        let req = cell.req(Method::POST, &tenant, "/tallies/clicks");
        async move { req.send().await.map(|r| r.status()) }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(StatusCode::OK))),
        "{statuses:?}"
    );
    let value = cell
        .http
        .get(format!("http://{state}/v1/items/tally-clicks"))
        .header(header::TENANT, &tenant)
        .send()
        .await
        .expect("state API")
        .text()
        .await
        .expect("value");
    assert_eq!(value, "50");
}

#[tokio::test]
async fn conditional_writes_of_the_state_api_refuse_a_changed_item_with_412_and_its_etag() {
    let (_go, cell, tenant, state) = started("cas").await;
    let item = format!("http://{state}/v1/items/doc");
    let put = |body: &'static str| {
        cell.http
            .put(&item)
            .header(header::TENANT, &tenant)
            .body(body)
    };

    // Create only: the first wins, the second is refused.
    let created = put("v1")
        .header("if-none-match", "*")
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::OK);
    let etag = created.headers()["etag"].to_str().expect("etag").to_owned();
    let again = put("other")
        .header("if-none-match", "*")
        .send()
        .await
        .expect("create");
    assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        again.headers()["etag"].to_str().ok(),
        Some(etag.as_str()),
        "the current value's tag"
    );
    // If-Match with the tag read: written; with the old tag again: refused, nothing written.
    let got = cell
        .http
        .get(&item)
        .header(header::TENANT, &tenant)
        .send()
        .await
        .expect("get");
    assert_eq!(got.headers()["etag"].to_str().ok(), Some(etag.as_str()));
    let updated = put("v2")
        .header("if-match", &etag)
        .send()
        .await
        .expect("update");
    assert_eq!(updated.status(), StatusCode::OK);
    let stale = put("v3")
        .header("if-match", &etag)
        .send()
        .await
        .expect("update");
    let (status, body) = json_of(stale).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition_failed"))
    );
    let now = cell
        .http
        .get(&item)
        .header(header::TENANT, &tenant)
        .send()
        .await
        .expect("get");
    assert_eq!(now.text().await.expect("body"), "v2");
}

#[tokio::test]
async fn the_state_api_refuses_a_malformed_key_an_oversized_value_and_a_nameless_caller_with_a_reason()
 {
    let (_go, cell, tenant, state) = started("bad").await;
    let base = format!("http://{state}");
    let cases = [
        (
            cell.http
                .put(format!("{base}/v1/items/a%20b"))
                .header(header::TENANT, &tenant)
                .body("x"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            cell.http
                .put(format!("{base}/v1/items/big"))
                .header(header::TENANT, &tenant)
                .body(vec![b'x'; 65 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            cell.http.put(format!("{base}/v1/items/ok")).body("x"),
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
        ),
        (
            cell.http
                .put(format!("{base}/v1/items/ok"))
                .header(header::TENANT, &tenant)
                .header("if-match", "yesterday")
                .body("x"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            cell.http
                .post(format!("{base}/v1/counters/n/increment"))
                .header(header::TENANT, &tenant)
                .body("{\"by\": \"one\"}"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (req, want, code) in cases {
        let (status, body) = json_of(req.send().await.expect("state API")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some(code)),
            "{body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // Nothing was written by any of them.
    let listed: Value = cell
        .http
        .get(format!("{base}/v1/items"))
        .header(header::TENANT, &tenant)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["items"], json!([]));
}

#[tokio::test]
async fn a_background_job_is_refused_while_its_tenant_is_fenced_and_loses_no_write() {
    let (_go, cell, tenant, state) = started("job").await;
    let counter = |name: String| {
        let (http, tenant) = (cell.http.clone(), tenant.clone());
        async move {
            let body: Value = http
                .get(format!("http://{state}/v1/counters/{name}"))
                .header(header::TENANT, &tenant)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["value"].as_i64()
        }
    };

    let (status, job) = json_of(
        cell.req(Method::POST, &tenant, "/jobs")
            .json(&json!({"writes": 60, "intervalMs": 20}))
            .send()
            .await
            .expect("start job"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let name = job["counter"].as_str().expect("counter").to_owned();
    wait_until("the job's first writes", Duration::from_secs(10), || {
        let c = counter(name.clone());
        async move { c.await.unwrap_or(0) >= 5 }
    })
    .await;

    // Fenced (a move's Fence step): the job's writes are refused, whoever calls.
    cell.put_tenant(&tenant, TenantState::Fenced, 1).await;
    let at_fence = counter(name.clone()).await.expect("counter");
    let direct = cell
        .http
        .post(format!("http://{state}/v1/counters/{name}/increment"))
        .header(header::TENANT, &tenant)
        .send()
        .await
        .expect("state API");
    assert_eq!(direct.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        direct
            .headers()
            .get(header::ERROR)
            .and_then(|v| v.to_str().ok()),
        Some("fenced")
    );
    // An observation window, not a wait for a condition: the job tries every 20 ms, so a
    // second of fence is ~50 refused attempts, none of which may land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        counter(name.clone()).await,
        Some(at_fence),
        "a write landed while fenced"
    );

    // Unfenced: the job goes on where it stopped and ends with every one of its writes.
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    wait_until(
        "the job to finish its 60 writes",
        Duration::from_secs(20),
        || {
            let c = counter(name.clone());
            async move { c.await == Some(60) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_hung_or_dead_service_makes_the_lane_unready_and_its_requests_fail_fast_while_the_runtime_stays_up()
 {
    let (mut go, cell, tenant, _) = started("hung").await;

    // Frozen (SIGSTOP): its health check times out, the lane goes unready naming it, and a
    // request ends in 504 after the service's 2 s timeout.
    go.signal("STOP");
    let why = await_ready(&cell, false).await;
    assert!(
        why.contains("service orders") && why.contains("no answer"),
        "{why}"
    );
    let started = std::time::Instant::now();
    let (status, body) = json_of(
        cell.req(Method::GET, &tenant, "/orders")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("timeout")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    go.signal("CONT");
    await_ready(&cell, true).await;

    // Dead: nothing listens; 503 `unavailable` (nothing reached it, so a router may retry).
    let _ = go.child.kill();
    let _ = go.child.wait();
    let why = await_ready(&cell, false).await;
    assert!(why.contains("refuses connections"), "{why}");
    let (status, body) = json_of(
        cell.req(Method::GET, &tenant, "/orders")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{body}"
    );
    let live = cell
        .http
        .get(cell.admin_url("/livez"))
        .send()
        .await
        .expect("livez");
    assert_eq!(live.status(), StatusCode::OK, "the runtime itself stays up");
    let metrics = cell.metrics_text().await;
    for series in [
        "cellstack_cell_service_errors_total{service=\"orders\",kind=\"timeout\"} 1",
        "cellstack_cell_service_errors_total{service=\"orders\",kind=\"refused\"} 1",
        "cellstack_cell_service_up{service=\"orders\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_service_answering_garbage_gets_its_client_a_502_not_a_crash() {
    let state = loopback();
    let tenant = unique("garbage");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"this is not HTTP\r\n\r\n").await;
            });
        }
    });
    let cell = gateway_cell(port, state, None).await;
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    let (status, body) = json_of(
        cell.req(Method::GET, &tenant, "/orders")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("bad_gateway")),
        "{body}"
    );
    let live = cell
        .http
        .get(cell.admin_url("/livez"))
        .send()
        .await
        .expect("livez");
    assert_eq!(live.status(), StatusCode::OK);
}
