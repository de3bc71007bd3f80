//! Every `cellstack_cell_*` metric the docs name is on a running cell's `/metrics` page, and
//! every family the page declares is named in the docs: a doc and the registry cannot drift apart.
//! Series whose labels are known in advance exist from the start (at zero); the families
//! labelled by what requests bring (`requests_total{route,code}`, `state_requests_total`)
//! appear after one request. The cell runs with a service listed (none listens: the gateway's
//! families exist all the same) and its tenant state API.

mod common;

use std::path::Path;

use common::*;
use reqwest::Method;

#[tokio::test]
async fn the_docs_name_exactly_the_metrics_a_running_cell_serves() {
    let state = format!("127.0.0.1:{}", free_port());
    let cell = CellProcess::start(
        &shared_redis(),
        CellOptions {
            extra_args: vec![
                "--service".into(),
                format!("name=docs,port={}", free_port()),
                "--state-listen".into(),
                state.clone(),
            ],
            ..Default::default()
        },
    )
    .await;
    // Any answer counts; an unknown tenant's is enough.
    cell.req(Method::GET, &unique("t"), "/v1/whoami")
        .send()
        .await
        .expect("the tenant API answers");
    cell.http
        .get(format!("http://{state}/v1/items"))
        .header(cellstack_api::wire::header::TENANT, unique("t"))
        .send()
        .await
        .expect("the state API answers");
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
