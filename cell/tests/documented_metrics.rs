//! Every `cellstack_cell_*` metric the docs name is on a running cell's `/metrics` page, and
//! every family the page declares is named in the docs: a doc and the registry cannot drift apart.
//! Series whose labels are known in advance exist from the start (at zero); the one family
//! labelled by what requests bring (`requests_total{route,code}`) appears after one request.

mod common;

use std::path::Path;

use common::*;
use reqwest::Method;

#[tokio::test]
async fn the_docs_name_exactly_the_metrics_a_running_cell_serves() {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    // Any answer counts; an unknown tenant's is enough.
    cell.req(Method::GET, &unique("t"), "/v1/whoami")
        .send()
        .await
        .expect("the tenant API answers");
    let page = cell
        .http
        .get(cell.admin_url("/metrics"))
        .send()
        .await
        .expect("the admin port answers")
        .text()
        .await
        .expect("a /metrics page");
    let docs = cellstack_runtime::metrics::documentation(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    )
    .expect("the workspace's docs are readable");
    let wrong = cellstack_runtime::metrics::disagreements(&docs, &page, "cellstack_cell_");
    assert!(
        wrong.is_empty(),
        "docs and /metrics disagree: {wrong:#?}\npage:\n{page}"
    );
}
