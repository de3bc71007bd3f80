//! The router in front of a lane whose runtime is the gateway to the Go example service
//! (docs/services.md): a tenant's orders go through both and come back as the service made
//! them, reads and writes alike.

mod common;

use std::process::{Command, Stdio};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn orders_go_through_the_router_and_the_runtime_to_the_go_service_and_back() {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let (_redis, redis) = start_redis().await;
    let dir = scratch("gateway");
    let go = cellstack_testkit::go_orders().expect("building examples/go-orders");
    let (service, state) = (
        cellstack_testkit::ports::free_port(),
        cellstack_testkit::ports::free_port(),
    );
    let _go = Proc(
        Command::new(go)
            .args(["-listen", &format!("127.0.0.1:{service}")])
            .args(["-state", &format!("http://127.0.0.1:{state}")])
            .stderr(Stdio::null())
            .spawn()
            .expect("go-orders"),
    );
    let service_flag = format!("name=orders,port={service},health=/healthz");
    let state_flag = format!("127.0.0.1:{state}");
    let lane = lane_with(
        &http,
        "orders",
        &redis,
        &dir,
        &["--service", &service_flag, "--state-listen", &state_flag],
    )
    .await;
    let tenant = unique("shop");
    put_tenant(&http, &lane, &tenant, &active(2)).await;
    wait_ok(&http, &format!("http://127.0.0.1:{}/readyz", lane.admin)).await;
    let router = router_for(
        &http,
        &dir,
        cell_route("orders", &[&lane], 1),
        &tenant,
        2,
        None,
        &[],
    )
    .await;

    let res = router
        .req(&http, Method::POST, &tenant, "/orders")
        .json(&json!({"item": "book", "quantity": 3}))
        .send()
        .await
        .expect("create through the router");
    assert_eq!(res.status(), StatusCode::CREATED);
    let order: Value = res.json().await.expect("JSON");
    assert_eq!(
        (order["id"].as_i64(), order["quantity"].as_i64()),
        (Some(1), Some(3))
    );
    let res = router
        .req(&http, Method::GET, &tenant, "/orders/1")
        .send()
        .await
        .expect("read through the router");
    assert_eq!(res.status(), StatusCode::OK);
    let read: Value = res.json().await.expect("JSON");
    assert_eq!(read, order);
    // The service's own 404 passes through both.
    let res = router
        .req(&http, Method::GET, &tenant, "/orders/99")
        .send()
        .await
        .expect("a missing order");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}
