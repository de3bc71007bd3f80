//! Every `cellstack_router_*` metric the docs name is on a running router's `/metrics` page, and
//! every family the page declares is named in the docs: a doc and the registry cannot drift apart.
//! Series whose labels are known in advance exist from the start (at zero), those of a cell once
//! the table names it; `requests_total{cell,lane,code}` appears with the first answer.

mod common;

use std::path::Path;

use common::*;

#[tokio::test]
async fn the_docs_name_exactly_the_metrics_a_running_router_serves() {
    let http = reqwest::Client::new();
    let dir = scratch("documented-metrics");
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let tenant = unique("m");
    put_tenant(&http, &alpha, &tenant, &active(1)).await;
    let r = router_for(
        &http,
        &dir,
        cell_route("alpha", &[&alpha], 1),
        &tenant,
        1,
        None,
        &[],
    )
    .await;
    let answer = r
        .req(&http, reqwest::Method::GET, &tenant, "/v1/whoami")
        .send()
        .await
        .expect("the router answers");
    assert!(answer.status().is_success(), "{}", answer.status());
    let page = r.metrics(&http).await;
    let docs = cellstack_runtime::metrics::documentation(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    )
    .expect("the workspace's docs are readable");
    let wrong = cellstack_runtime::metrics::disagreements(&docs, &page, "cellstack_router_");
    assert!(
        wrong.is_empty(),
        "docs and /metrics disagree: {wrong:#?}\npage:\n{page}"
    );
}
