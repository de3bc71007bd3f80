//! Graceful shutdown of a real router process in front of a real cell: on SIGTERM readiness
//! fails first while traffic is still served, a request in flight finishes, and the process
//! then exits cleanly and stops listening.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};

mod common;
use common::*;

/// How long the router keeps serving after SIGTERM before it stops taking connections.
const DRAIN_DELAY_SECS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_and_lets_a_request_in_flight_finish() {
    let http = reqwest::Client::new();
    let dir = scratch("shutdown");
    // One request at a time at full speed, each taking 2 s: a request that is in flight when
    // the signal comes.
    let lane = lane_with(
        &http,
        "alpha",
        &redis_url(),
        &dir,
        &["--simulate-workers", "1", "--simulate-work-ms", "2000"],
    )
    .await;
    let tenant = unique("sd");
    put_tenant(&http, &lane, &tenant, &active(1)).await;
    let table = one_tenant_table(cell_route("alpha", &[&lane], 1), &tenant, 1, None);
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().unwrap()).unwrap();
    let drain = DRAIN_DELAY_SECS.to_string();
    let mut r = router_with(
        &http,
        Some(&table_file),
        &dir.join("lkg.bin"),
        &[
            "--drain-delay-secs",
            &drain,
            "--try-timeout-ms",
            "10000",
            "--worker-threads",
            "2",
        ],
    )
    .await;
    let ready = format!("http://127.0.0.1:{}/readyz", r.admin);
    wait_ok(&http, &ready).await;

    // A slow request, in flight at the cell before the signal.
    let slow = tokio::spawn(
        r.req(&http, Method::GET, &tenant, "/v1/whoami")
            .timeout(Duration::from_secs(30))
            .send(),
    );
    wait_until(
        "the slow request to reach the cell",
        Duration::from_secs(10),
        async || {
            metric_sum(
                &metrics_of(&http, lane.admin).await,
                "cellstack_cell_in_flight",
            ) >= 1.0
        },
    )
    .await;

    let pid = r.proc.0.id().to_string();
    let signalled = Instant::now();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");

    // Readiness fails at once, within the drain delay...
    wait_until(
        "readiness to fail after SIGTERM",
        Duration::from_secs(DRAIN_DELAY_SECS),
        async || http.get(&ready).send().await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    let res = http.get(&ready).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.text().await.unwrap(), "draining");
    // ...while traffic is still served, so load balancers have time to stop sending. The cell
    // serves one request at a time: this one is answered once the slow one is done.
    let during = r
        .req(&http, Method::GET, &tenant, "/v1/whoami")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("a request sent while draining is answered");
    assert_eq!(during.status(), StatusCode::OK);

    // The request in flight finishes with its answer.
    let slow = slow
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(
        slow.headers()[cellstack_api::wire::header::CELL],
        "alpha",
        "answered by the cell"
    );

    // Then the process exits cleanly, and nothing listens on its port any more.
    wait_until(
        "the router to exit after SIGTERM",
        Duration::from_secs(30),
        async || r.proc.0.try_wait().unwrap().is_some(),
    )
    .await;
    let exit = r.proc.0.wait().unwrap();
    assert!(exit.success(), "router exited with {exit}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(DRAIN_DELAY_SECS),
        "the router stopped before its drain delay: {:?}",
        signalled.elapsed()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", r.port)).is_err(),
        "the traffic port still accepts connections after exit"
    );
}
