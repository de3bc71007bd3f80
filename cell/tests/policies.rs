//! Effective policies: hot-reloaded from the file without a restart (an invalid file keeps the
//! previous policies), shadow policies count but never refuse, and the limiter's state lives in
//! the tenant's key space, so an export carries it.

mod common;

use std::time::Duration;

use cellstack_api::{
    admin::{ExportPage, TenantState},
    policy::CellPolicies,
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
};
use common::*;
use reqwest::{Method, StatusCode};

fn policies(tenant: &str, version: &str, requests: u32, shadow: bool) -> CellPolicies {
    let mut p = policy(
        "p",
        FailMode::Open,
        vec![limit(
            "requests",
            Algorithm::TokenBucket,
            requests,
            60_000,
            requests,
        )],
    );
    p.shadow = shadow;
    let mut all = CellPolicies {
        version: version.into(),
        ..Default::default()
    };
    all.tenants.insert(TenantId::parse(tenant).unwrap(), p);
    all
}

async fn statuses(cell: &CellProcess, tenant: &str, n: usize) -> Vec<StatusCode> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(
            cell.req(Method::GET, tenant, "/v1/whoami")
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    out
}

async fn metric(cell: &CellProcess, prefix: &str) -> f64 {
    let text = cell.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_new_policy_file_takes_effect_without_a_restart_and_a_broken_one_is_ignored() {
    let tenant = unique("reload");
    let cell = CellProcess::start(
        &shared_redis(),
        CellOptions {
            policies: Some(policies(&tenant, "1", 1000, false)),
            ..Default::default()
        },
    )
    .await;
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    assert!(
        statuses(&cell, &tenant, 20)
            .await
            .iter()
            .all(|s| *s == StatusCode::OK)
    );

    // Tighten to 5 requests a minute: the cell picks it up by itself.
    let file = cell.dir.join("policies.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&policies(&tenant, "2", 5, false)).unwrap(),
    )
    .unwrap();
    wait_until(
        "the tightened policy to refuse requests",
        Duration::from_secs(10),
        || async {
            cell.req(Method::GET, &tenant, "/v1/whoami")
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        },
    )
    .await;

    // The version in force is what the operator's acknowledgement check reads.
    let version: cellstack_api::admin::PolicyVersion =
        reqwest::get(cell.admin_url(cellstack_api::admin::POLICY_VERSION_PATH))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!((version.version.as_str(), version.tenants), ("2", 1));

    // A broken file is refused and the tightened policy stays in force.
    std::fs::write(&file, b"{ not json").unwrap();
    wait_until(
        "the invalid file to be reported",
        Duration::from_secs(10),
        || async {
            metric(
                &cell,
                "cellstack_cell_policy_reloads_total{result=\"invalid\"}",
            )
            .await
                >= 1.0
        },
    )
    .await;
    let after = statuses(&cell, &tenant, 5).await;
    let still: cellstack_api::admin::PolicyVersion =
        reqwest::get(cell.admin_url(cellstack_api::admin::POLICY_VERSION_PATH))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        still.version, "2",
        "a broken file does not change the version in force"
    );
    assert!(
        after.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "previous policy kept: {after:?}"
    );

    // The limiter's state is tenant data: an export carries it. Every page is read: a page of
    // a SCAN may hold none of the tenant's keys while others remain (the Redis is shared).
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/admin/v1/tenants/{tenant}/export?count=100");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: ExportPage = cell
            .admin_req(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.extend(page.entries.into_iter().map(|e| e.key));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(
        keys.iter().any(|k| k == "rl:requests"),
        "limiter state exported: {keys:?}"
    );
}

#[tokio::test]
async fn a_shadow_policy_counts_but_never_refuses() {
    let tenant = unique("shadow");
    let cell = CellProcess::start(
        &shared_redis(),
        CellOptions {
            policies: Some(policies(&tenant, "1", 3, true)),
            ..Default::default()
        },
    )
    .await;
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    let got = statuses(&cell, &tenant, 20).await;
    assert!(
        got.iter().all(|s| *s == StatusCode::OK),
        "shadow never refuses: {got:?}"
    );
    let counted = metric(
        &cell,
        "cellstack_cell_rate_limited_total{tier=\"redis\",shadow=\"true\"}",
    )
    .await
        + metric(
            &cell,
            "cellstack_cell_rate_limited_total{tier=\"local\",shadow=\"true\"}",
        )
        .await;
    // 20 requests against 3 a minute: 17 over, each counted once (a token refills only every
    // 20 s, far longer than this test).
    assert_eq!(
        counted, 17.0,
        "each of the 17 requests over the limit is counted once"
    );
}
