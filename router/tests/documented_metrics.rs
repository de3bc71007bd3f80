//! Every `cellstack_router_*` metric the docs name is on a running router's `/metrics` page, and
//! every family the page declares is named in the docs: a doc and the registry cannot drift apart.

mod common;

use std::path::Path;

use common::*;

#[tokio::test]
async fn the_docs_name_exactly_the_metrics_a_running_router_serves() {
    let http = reqwest::Client::new();
    let dir = scratch("documented-metrics");
    let r = router(&http, None, &dir.join("lkg.bin")).await;
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
