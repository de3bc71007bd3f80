//! Per-tenant request counts for chargeback (`cellstack_cell_tenant_requests_total{tenant,
//! outcome}`) on a cell with a real Redis: admitted and rate-limited requests are counted per
//! tenant as the cell answered them, and tenants past `--tenant-metrics-max` share one `_other`
//! series.

mod common;

use cellstack_api::{
    admin::TenantState,
    policy::CellPolicies,
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
};
use common::*;
use reqwest::{Method, StatusCode};

/// `cell`'s value of `cellstack_cell_tenant_requests_total` for `tenant` and `outcome` (0 when
/// the series does not exist).
async fn count(cell: &CellProcess, tenant: &str, outcome: &str) -> u64 {
    let text = cell.metrics_text().await;
    let want = format!(
        "cellstack_cell_tenant_requests_total{{tenant=\"{tenant}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&want)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn requests_are_counted_per_tenant_by_outcome_up_to_the_cap_then_as_other() {
    let (limited, plain, late) = (unique("charged"), unique("plain"), unique("late"));
    let mut policies = CellPolicies {
        version: "1".into(),
        ..Default::default()
    };
    // Three requests a minute: the next ones are refused, by either tier of the limiter.
    policies.tenants.insert(
        TenantId::parse(&limited).unwrap(),
        policy(
            "p",
            FailMode::Closed,
            vec![limit("requests", Algorithm::TokenBucket, 3, 60_000, 3)],
        ),
    );
    let cell = CellProcess::start(
        &shared_redis(),
        CellOptions {
            policies: Some(policies),
            extra_args: ["--tenant-metrics-max", "2", "--redis-timeout-ms", "1000"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .await;
    for tenant in [&limited, &plain, &late] {
        cell.put_tenant(tenant, TenantState::Active, 1).await;
    }
    let mut answers = std::collections::BTreeMap::<(String, u16), u64>::new();
    for (tenant, n) in [(&limited, 8), (&plain, 4), (&late, 2)] {
        for _ in 0..n {
            let status = cell
                .req(Method::GET, tenant, "/v1/whoami")
                .send()
                .await
                .unwrap()
                .status();
            *answers
                .entry((tenant.clone(), status.as_u16()))
                .or_default() += 1;
        }
    }
    let got = |t: &String, s: StatusCode| answers.get(&(t.clone(), s.as_u16())).copied();
    assert_eq!(
        (
            got(&limited, StatusCode::OK),
            got(&limited, StatusCode::TOO_MANY_REQUESTS)
        ),
        (Some(3), Some(5)),
        "answers: {answers:?}"
    );
    assert_eq!(got(&plain, StatusCode::OK), Some(4), "answers: {answers:?}");
    assert_eq!(got(&late, StatusCode::OK), Some(2), "answers: {answers:?}");

    assert_eq!(count(&cell, &limited, "admitted").await, 3);
    assert_eq!(count(&cell, &limited, "limited").await, 5);
    assert_eq!(count(&cell, &plain, "admitted").await, 4);
    assert_eq!(count(&cell, &plain, "limited").await, 0);
    // The third tenant came after the cap of two: counted as _other, never under its name.
    assert_eq!(count(&cell, &late, "admitted").await, 0);
    assert_eq!(count(&cell, "_other", "admitted").await, 2);
}
