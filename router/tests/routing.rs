//! The router against real cell processes and a real Redis: every tenant reaches its own cell,
//! a dead lane is routed around without a client-visible error, a moved tenant is followed, and
//! a restarted router serves from its last-known-good copy — or refuses a corrupt one.

use cellstack_api::{
    routing::{RoutingTable, TenantRoute},
    tenant::TenantId,
    wire::header,
};
use reqwest::{Method, StatusCode};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_their_cells_around_dead_lanes_and_after_moves() {
    let http = reqwest::Client::new();
    let dir = scratch("routing");
    // Each cell has its own Redis, as in production: alpha the shared test Redis, bravo one of
    // its own.
    let (_bravo_redis, bravo_redis) = start_redis().await;
    let alpha_redis = redis_url();
    let alpha = [
        lane(&http, "alpha", &alpha_redis, &dir).await,
        lane(&http, "alpha", &alpha_redis, &dir).await,
    ];
    let bravo = [lane(&http, "bravo", &bravo_redis, &dir).await];
    let prefix = unique("r");
    let tenants: Vec<String> = (0..10).map(|i| format!("{prefix}-{i}")).collect();
    // Even tenants live in alpha (k = 2 of its 2 lanes), odd ones in bravo; a tenant is created
    // through one lane of its cell (the lanes share the cell's Redis).
    let mut routes = vec![];
    for (i, t) in tenants.iter().enumerate() {
        let home = if i % 2 == 0 { &alpha[0] } else { &bravo[0] };
        put_tenant(&http, home, t, &active(1)).await;
        routes.push(TenantRoute {
            id: TenantId::parse(t).unwrap(),
            cell: (i % 2) as u32,
            epoch: 1,
            shard_variant: 0,
            edge_limit: None,
        });
    }
    let table = RoutingTable::canonical(
        1,
        0,
        vec![
            cell_route("alpha", &[&alpha[0], &alpha[1]], 2),
            cell_route("bravo", &[&bravo[0]], 1),
        ],
        vec![],
        routes,
    )
    .unwrap();
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().unwrap()).unwrap();
    let lkg = dir.join("lkg/routing-table.bin");
    let r = router(&http, Some(&table_file), &lkg).await;
    wait_ok(&http, &format!("http://127.0.0.1:{}/readyz", r.admin)).await;

    // Every tenant reaches its own cell.
    for (i, t) in tenants.iter().enumerate() {
        let res = r
            .req(&http, Method::GET, t, "/v1/whoami")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{t}");
        let want = if i % 2 == 0 { "alpha" } else { "bravo" };
        assert_eq!(
            res.headers()[header::CELL],
            want,
            "{t} answered by the wrong cell"
        );
    }
    // Unknown and invalid tenants.
    assert_eq!(
        r.req(&http, Method::GET, "nobody", "/v1/whoami")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.req(&http, Method::GET, "No_Body", "/v1/whoami")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );

    // Kill one of alpha's lanes: idempotent requests of alpha's tenants never see an error.
    let [mut a0, _a1] = alpha;
    drop(a0.proc.take());
    for round in 0..30 {
        let t = &tenants[(round * 2) % tenants.len()];
        let res = r
            .req(&http, Method::GET, t, "/v1/whoami")
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "round {round}: a dead lane must be routed around"
        );
    }

    // Move tenant 0 to bravo behind the router's back: alpha answers `moved`, the router follows.
    let moved = &tenants[0];
    put_tenant(&http, &bravo[0], moved, &active(2)).await;
    let res = http
        .post(format!(
            "http://127.0.0.1:{}/admin/v1/tenants/{moved}/moved",
            _a1.admin
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"to": "bravo", "epoch": 2}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let res = r
        .req(&http, Method::PUT, moved, "/v1/items/after-move")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the router follows the move");
    assert_eq!(res.headers()[header::CELL], "bravo");

    // HTTP/1.1 connections to lanes are reused, not opened per request.
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", r.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let opened = metric_sum(&metrics, "cellstack_router_upstream_connections_total");
    assert!(
        (1.0..=8.0).contains(&opened),
        "about one connection per lane for 40-odd sequential requests, not {opened}"
    );

    // The last-known-good copy was written; a router started without any source serves it.
    assert!(lkg.exists());
    let restarted = router(&http, None, &lkg).await;
    wait_ok(
        &http,
        &format!("http://127.0.0.1:{}/readyz", restarted.admin),
    )
    .await;
    let res = restarted
        .req(&http, Method::GET, &tenants[1], "/v1/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "served from disk with no source at all"
    );
    let status: serde_json::Value = http
        .get(format!("http://127.0.0.1:{}/status", restarted.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["origin"], "Disk");
    assert_eq!(status["tableVersion"], 1);
}

#[tokio::test]
async fn a_corrupt_last_known_good_copy_is_refused_and_reported() {
    let http = reqwest::Client::new();
    let dir = scratch("corrupt");
    let lkg = dir.join("routing-table.bin");
    std::fs::write(&lkg, b"CSRT\x01\x00this is not a table").unwrap();
    let r = router(&http, None, &lkg).await;
    let ready = http
        .get(format!("http://127.0.0.1:{}/readyz", r.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing of a corrupt copy is served"
    );
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", r.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cellstack_router_table_refused_total{source=\"disk\"} 1")),
        "the refusal is counted:\n{metrics}"
    );
    let res = r
        .req(&http, Method::GET, "acme", "/v1/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_under_a_failing_cell() {
    let http = reqwest::Client::new();
    let dir = scratch("budget");
    let (redis, redis_url) = start_redis().await;
    let cell = lane(&http, "failing", &redis_url, &dir).await;
    let tenant = unique("b");
    put_tenant(&http, &cell, &tenant, &active(1)).await;
    let routes = vec![TenantRoute {
        id: TenantId::parse(&tenant).unwrap(),
        cell: 0,
        epoch: 1,
        shard_variant: 0,
        edge_limit: None,
    }];
    let table = RoutingTable::canonical(
        1,
        0,
        vec![cell_route("failing", &[&cell], 1)],
        vec![],
        routes,
    )
    .unwrap();
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().unwrap()).unwrap();
    let r = router(&http, Some(&table_file), &dir.join("lkg.bin")).await;
    wait_ok(&http, &format!("http://127.0.0.1:{}/readyz", r.admin)).await;
    // The cell has seen the tenant; now its datastore goes away and every read fails with a
    // 503 that does not promise nothing was applied, so only the budget limits retries.
    drop(redis);
    let requests = 300;
    for _ in 0..requests {
        let res = r
            .req(&http, Method::GET, &tenant, "/v1/items/x")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", r.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retries = metric_sum(&metrics, "cellstack_router_retries_total");
    let exhausted = metric_sum(&metrics, "cellstack_router_retry_budget_exhausted_total");
    // TpsBudget(ttl 10 s, 10/s floor, 10 %): a reserve of about 100 retries plus 10 % of requests,
    // against up to 600 (two retries per request) without a budget.
    println!("{requests} requests: {retries} retries, {exhausted} refused by the budget");
    assert!(
        retries <= 100.0 + 0.1 * f64::from(requests) + 5.0,
        "retries {retries} exceed the budget"
    );
    assert!(exhausted > 0.0, "the budget refused retries");
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("cellstack_router_retry_budget_exhausted_total{cell=\"failing\"}")),
        "the refusals are counted against the failing cell: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_real_cells_over_h2_and_share_one_connection_per_lane() {
    let http = reqwest::Client::new();
    let dir = scratch("h2");
    let redis = redis_url();
    let lanes = [
        lane(&http, "hotel", &redis, &dir).await,
        lane(&http, "hotel", &redis, &dir).await,
    ];
    let prefix = unique("h");
    let tenants: Vec<String> = (0..6).map(|i| format!("{prefix}-{i}")).collect();
    let mut routes = vec![];
    for t in &tenants {
        put_tenant(&http, &lanes[0], t, &active(1)).await;
        routes.push(TenantRoute {
            id: TenantId::parse(t).unwrap(),
            cell: 0,
            epoch: 1,
            shard_variant: 0,
            edge_limit: None,
        });
    }
    let table = RoutingTable::canonical(
        1,
        0,
        vec![cell_route("hotel", &[&lanes[0], &lanes[1]], 2)],
        vec![],
        routes,
    )
    .unwrap();
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().unwrap()).unwrap();
    let r = router_with(
        &http,
        Some(&table_file),
        &dir.join("lkg.bin"),
        &["--upstream-protocol", "h2", "--worker-threads", "2"],
    )
    .await;
    wait_ok(&http, &format!("http://127.0.0.1:{}/readyz", r.admin)).await;

    // Reads, and writes with a body, many at once: streams multiplexed on each lane's connection.
    let mut calls = tokio::task::JoinSet::new();
    for (i, t) in tenants.iter().enumerate() {
        for j in 0..10 {
            let (http, t) = (http.clone(), t.clone());
            let url = format!("http://127.0.0.1:{}/v1/items/k{j}", r.port);
            calls.spawn(async move {
                let value = format!("value {i}/{j}");
                let put = http
                    .put(&url)
                    .header(header::TENANT, &t)
                    .body(value.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(put.status(), StatusCode::OK, "{t} PUT");
                assert_eq!(put.headers()[header::CELL], "hotel");
                let got = http
                    .get(&url)
                    .header(header::TENANT, &t)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(got.status(), StatusCode::OK, "{t} GET");
                assert!(
                    got.text().await.unwrap().contains(&value),
                    "{t} reads back what it wrote through h2"
                );
            });
        }
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", r.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let opened = metric_sum(&metrics, "cellstack_router_upstream_connections_total");
    // Each worker keeps its own connections: at most one per lane per worker (2 × 2).
    assert!(
        (1.0..=4.0).contains(&opened),
        "one h2 connection per lane and worker, not one per request: {opened}"
    );
    let ok = metrics
        .lines()
        .filter(|l| l.starts_with("cellstack_router_requests_total{cell=\"hotel\""))
        .filter(|l| l.contains("code=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(ok, 120.0, "{metrics}");

    // A dead lane is routed around over h2 too.
    let [mut l0, _l1] = lanes;
    drop(l0.proc.take());
    for round in 0..20 {
        let t = &tenants[round % tenants.len()];
        let res = r
            .req(&http, Method::GET, t, "/v1/whoami")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "round {round}");
    }
}
