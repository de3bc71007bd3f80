//! Traces and request ids across the router and a cell, with real processes: a real
//! OpenTelemetry Collector (built through the Go module proxy) receives the spans both export
//! over OTLP, and the router, the lane and Redis are real too.

use std::{path::Path, time::Duration};

use cellstack_api::wire::header;
use cellstack_testkit::otelcol::{Collector, Span};
use reqwest::{Method, StatusCode};

mod common;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// OTLP span kinds.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// A router in front of one lane of cell `tracing`, holding `tenant`, both started with `env`,
/// their logs written to `dir/router.log` and `dir/cell.log`.
async fn stack(
    http: &reqwest::Client,
    dir: &Path,
    tenant: &str,
    env: &[(&str, String)],
) -> (Lane, Router) {
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let lane = lane_in(
        http,
        "tracing",
        &redis_url(),
        dir,
        &[],
        env,
        log("cell.log"),
    )
    .await;
    put_tenant(http, &lane, tenant, &active(1)).await;
    let table = one_tenant_table(cell_route("tracing", &[&lane], 1), tenant, 1, None);
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().unwrap()).unwrap();
    let router = router_in(
        http,
        Some(&table_file),
        &dir.join("lkg.bin"),
        &[],
        env,
        log("router.log"),
    )
    .await;
    wait_ok(http, &format!("http://127.0.0.1:{}/readyz", router.admin)).await;
    (lane, router)
}

fn one<'a>(spans: &'a [Span], service: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {service} span {name:?}, got {found:#?}"
    );
    found[0]
}

fn complete(spans: &[Span]) -> bool {
    let has =
        |service: &str, name: &str| spans.iter().any(|s| s.service == service && s.name == name);
    has("cellstack-router", "request")
        && has("cellstack-router", "upstream try")
        && has("cellstack-cell", "request")
        && has("cellstack-cell", "redis")
}

/// One request whose client sent a W3C `traceparent` is one trace: the router's `request` span
/// is the client's span's child, its phases and its upstream try are children of it, the cell's
/// `request` span is the try's child, and the cell's admission phases and its Redis calls sit
/// under the cell's request. Both request spans carry the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_the_router_is_one_trace_with_the_right_parents() {
    let http = reqwest::Client::new();
    let dir = scratch("tracing-parents");
    let collector = Collector::start(&dir.join("otelcol")).await.unwrap();
    let tenant = unique("traced");
    let (_lane, router) = stack(&http, &dir, &tenant, &collector.env()).await;

    let trace_id = format!("{:032x}", rand_u128());
    let client_span = "00f067aa0ba902b7";
    let request_id = unique("rid");
    let res = router
        .req(&http, Method::PUT, &tenant, "/v1/items/traced")
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .header(header::REQUEST_ID, &request_id)
        .body("v")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "PUT: {}", res.status());

    let spans = collector
        .until_trace(&trace_id, WAIT, complete)
        .await
        .unwrap();
    let router_request = one(&spans, "cellstack-router", "request");
    assert_eq!(router_request.parent_span_id, client_span);
    assert_eq!(router_request.kind, SERVER);
    assert_eq!(router_request.attribute("request_id"), Some(&*request_id));
    assert_eq!(router_request.attribute("tenant"), Some(&*tenant));
    for phase in ["identify", "admit", "prepare"] {
        let span = one(&spans, "cellstack-router", phase);
        assert_eq!(span.parent_span_id, router_request.span_id, "{phase}");
    }
    let try_span = one(&spans, "cellstack-router", "upstream try");
    assert_eq!(try_span.parent_span_id, router_request.span_id);
    assert_eq!(try_span.kind, CLIENT);
    assert_eq!(try_span.attribute("cell"), Some("tracing"));
    assert_eq!(
        try_span
            .attribute("http.response.status_code")
            .map(str::to_owned),
        Some(res.status().as_u16().to_string())
    );

    let cell_request = one(&spans, "cellstack-cell", "request");
    assert_eq!(cell_request.parent_span_id, try_span.span_id);
    assert_eq!(cell_request.kind, SERVER);
    assert_eq!(cell_request.attribute("request_id"), Some(&*request_id));
    let tenant_state = one(&spans, "cellstack-cell", "tenant state");
    assert_eq!(tenant_state.parent_span_id, cell_request.span_id);
    let redis: Vec<&Span> = spans.iter().filter(|s| s.name == "redis").collect();
    let cell_spans: Vec<&str> = spans
        .iter()
        .filter(|s| s.service == "cellstack-cell" && s.name != "redis")
        .map(|s| s.span_id.as_str())
        .collect();
    for r in &redis {
        assert_eq!(r.kind, CLIENT);
        assert_eq!(r.attribute("db.system.name"), Some("redis"));
        assert!(
            cell_spans.contains(&r.parent_span_id.as_str()),
            "a redis span outside the cell's request: {r:#?}"
        );
    }
    let ops: Vec<&str> = redis
        .iter()
        .filter_map(|r| r.attribute("db.operation.name"))
        .collect();
    assert!(
        ops.contains(&"write"),
        "the PUT's write script has no span: {ops:?}"
    );
    assert!(
        redis
            .iter()
            .any(|r| r.parent_span_id == tenant_state.span_id),
        "the tenant state read has no span"
    );
}

/// A request without trace context starts a trace at the router (its `request` span is a root)
/// and the cell continues that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_trace_context_starts_its_trace_at_the_router() {
    let http = reqwest::Client::new();
    let dir = scratch("tracing-root");
    let collector = Collector::start(&dir.join("otelcol")).await.unwrap();
    let tenant = unique("untraced");
    let (_lane, router) = stack(&http, &dir, &tenant, &collector.env()).await;
    let request_id = unique("rid");
    let res = router
        .req(&http, Method::GET, &tenant, "/v1/whoami")
        .header(header::REQUEST_ID, &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let mut trace_id = None;
    wait_until("the router's request span", WAIT, async || {
        trace_id = collector.spans().unwrap().into_iter().find_map(|s| {
            (s.service == "cellstack-router"
                && s.name == "request"
                && s.attribute("request_id") == Some(&*request_id))
            .then_some(s.trace_id)
        });
        trace_id.is_some()
    })
    .await;
    let spans = collector
        .until_trace(&trace_id.unwrap(), WAIT, complete)
        .await
        .unwrap();
    let router_request = one(&spans, "cellstack-router", "request");
    assert_eq!(router_request.parent_span_id, "", "not a root span");
    let try_span = one(&spans, "cellstack-router", "upstream try");
    let cell_request = one(&spans, "cellstack-cell", "request");
    assert_eq!(cell_request.parent_span_id, try_span.span_id);
    assert_eq!(cell_request.attribute("request_id"), Some(&*request_id));
}

/// With traces off (no `OTEL_*` variable) and JSON logs at `debug`: every line the router and
/// the cell write inside a request (the access line among them) names the request's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_request_names_its_request_id_on_both_sides() {
    let http = reqwest::Client::new();
    let dir = scratch("tracing-logs");
    let tenant = unique("logged");
    let env = [
        (
            "CELLSTACK_LOG",
            "info,cellstack_router=debug,cellstack_cell=debug".to_owned(),
        ),
        ("CELLSTACK_LOG_JSON", "true".to_owned()),
    ];
    let (_lane, router) = stack(&http, &dir, &tenant, &env).await;
    let request_id = unique("rid");
    let res = router
        .req(&http, Method::GET, &tenant, "/v1/items/none")
        .header(header::REQUEST_ID, &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    for side in ["router.log", "cell.log"] {
        let mut lines = vec![];
        wait_until(
            &format!("{side}: the request's access line"),
            WAIT,
            async || {
                lines = request_lines(&dir.join(side));
                lines
                    .iter()
                    .any(|l| l["fields"]["message"] == "request served")
            },
        )
        .await;
        for line in &lines {
            let request = line["spans"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "request"));
            assert_eq!(
                request.map(|r| &r["request_id"]),
                Some(&serde_json::Value::from(request_id.as_str())),
                "{side}: a line inside a request without its id: {line}"
            );
        }
    }
}

/// The JSON log lines of `path` written inside a `request` span.
fn request_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "request"))
        })
        .collect()
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    (u128::from(s.hash_one(1u8)) << 64) | u128::from(s.hash_one(2u8))
}
