//! A request's priority class comes from its tenant's policy; the `x-cellstack-priority` header
//! may only lower it. Checked on a real cell: the class a request ran at is what `/v1/whoami`
//! answers and what the latency histogram is labelled with.

mod common;

use cellstack_api::{
    admin::TenantState, policy::CellPolicies, tenant::TenantId, v1alpha1::FailMode, wire::Priority,
    wire::header,
};
use common::*;
use reqwest::{Method, StatusCode};

async fn class_of(cell: &CellProcess, tenant: &str, asked: Option<&str>) -> String {
    let mut req = cell.req(Method::GET, tenant, "/v1/whoami");
    if let Some(asked) = asked {
        req = req.header(header::PRIORITY, asked);
    }
    let res = req.send().await.expect("whoami");
    assert_eq!(res.status(), StatusCode::OK, "{tenant} asking {asked:?}");
    let body: serde_json::Value = res.json().await.expect("a JSON body");
    body["priority"].as_str().expect("a priority").to_owned()
}

/// The count of the latency histogram's series for `priority`.
fn served_at(metrics: &str, priority: &str) -> u64 {
    let series =
        format!("cellstack_cell_request_duration_seconds_count{{priority=\"{priority}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test]
async fn a_client_can_lower_its_tenants_class_but_never_raise_it() {
    let (plain, vip) = (unique("plain"), unique("vip"));
    let mut policies = CellPolicies {
        version: "classes".into(),
        ..Default::default()
    };
    policies.tenants.insert(
        TenantId::parse(&vip).expect("a tenant id"),
        cellstack_api::policy::EffectivePolicy {
            request_priority: Priority::High,
            ..policy("vip", FailMode::Open, vec![])
        },
    );
    let cell = CellProcess::start(
        &shared_redis(),
        CellOptions {
            policies: Some(policies),
            ..Default::default()
        },
    )
    .await;
    cell.put_tenant(&plain, TenantState::Active, 1).await;
    cell.put_tenant(&vip, TenantState::Active, 1).await;

    // A tenant without a policy is `normal`: claiming `high` gets it nothing, `low` is honoured.
    assert_eq!(class_of(&cell, &plain, None).await, "normal");
    assert_eq!(class_of(&cell, &plain, Some("high")).await, "normal");
    assert_eq!(class_of(&cell, &plain, Some("low")).await, "low");
    // A tenant whose policy says `high` runs there by default and may ask for less.
    assert_eq!(class_of(&cell, &vip, None).await, "high");
    assert_eq!(class_of(&cell, &vip, Some("normal")).await, "normal");
    assert_eq!(class_of(&cell, &vip, Some("high")).await, "high");

    // The load shedder and the metrics see the same class: two `high` requests, both the vip's.
    let metrics = cell.metrics_text().await;
    assert_eq!(served_at(&metrics, "high"), 2, "{metrics}");
    assert_eq!(served_at(&metrics, "normal"), 3, "{metrics}");
    assert_eq!(served_at(&metrics, "low"), 1, "{metrics}");
}
