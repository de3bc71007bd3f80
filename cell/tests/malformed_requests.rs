//! Malformed requests get a 4xx with a reason in the wire error body, and never take the
//! process down.

mod common;

use cellstack_api::{
    admin::TenantState,
    wire::{ErrorBody, header},
};
use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn malformed_requests_get_4xx_with_a_reason() {
    let mut cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let tenant = unique("bad");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    let t = tenant.as_str();
    let huge = "x".repeat(64 * 1024 + 1);
    let long_name = "n".repeat(201);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "no tenant header",
            cell.http.get(cell.url("/v1/items/a")),
            400,
        ),
        (
            "empty tenant",
            cell.http
                .get(cell.url("/v1/items/a"))
                .header(header::TENANT, ""),
            400,
        ),
        (
            "uppercase tenant",
            cell.req(Method::GET, "ACME", "/v1/items/a"),
            400,
        ),
        (
            "tenant with a dot",
            cell.req(Method::GET, "a.b", "/v1/items/a"),
            400,
        ),
        (
            "tenant with a brace",
            cell.req(Method::GET, "a}b", "/v1/items/a"),
            400,
        ),
        (
            "tenant with a glob",
            cell.req(Method::GET, "a*", "/v1/items/a"),
            400,
        ),
        (
            "tenant too long",
            cell.req(Method::GET, &"a".repeat(41), "/v1/items/a"),
            400,
        ),
        (
            "tenant edge hyphen",
            cell.req(Method::GET, "-a", "/v1/items/a"),
            400,
        ),
        (
            "non-ASCII tenant header",
            cell.http.get(cell.url("/v1/items/a")).header(
                header::TENANT,
                reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            ),
            400,
        ),
        (
            "negative epoch",
            cell.req(Method::GET, t, "/v1/items/a")
                .header(header::EPOCH, "-1"),
            400,
        ),
        (
            "text epoch",
            cell.req(Method::GET, t, "/v1/items/a")
                .header(header::EPOCH, "one"),
            400,
        ),
        (
            "overflowing epoch",
            cell.req(Method::GET, t, "/v1/items/a")
                .header(header::EPOCH, "99999999999999999999999"),
            400,
        ),
        (
            "unknown priority",
            cell.req(Method::GET, t, "/v1/items/a")
                .header(header::PRIORITY, "urgent"),
            400,
        ),
        (
            "item name with a colon",
            cell.req(Method::GET, t, "/v1/items/a:b"),
            400,
        ),
        (
            "item name with a glob",
            cell.req(Method::PUT, t, "/v1/items/a*").body("v"),
            400,
        ),
        (
            "item name too long",
            cell.req(Method::GET, t, &format!("/v1/items/{long_name}")),
            400,
        ),
        (
            "body too large",
            cell.req(Method::PUT, t, "/v1/items/a").body(huge),
            413,
        ),
        (
            "increment not JSON",
            cell.req(Method::POST, t, "/v1/counters/c/increment")
                .body("{"),
            400,
        ),
        (
            "increment by a string",
            cell.req(Method::POST, t, "/v1/counters/c/increment")
                .body(r#"{"by":"1"}"#),
            400,
        ),
        (
            "increment unknown field",
            cell.req(Method::POST, t, "/v1/counters/c/increment")
                .body(r#"{"by":1,"x":2}"#),
            400,
        ),
        (
            "list limit zero",
            cell.req(Method::GET, t, "/v1/items?limit=0"),
            400,
        ),
        (
            "list limit not a number",
            cell.req(Method::GET, t, "/v1/items?limit=many"),
            400,
        ),
        (
            "unknown route",
            cell.req(Method::GET, t, "/v2/nothing"),
            404,
        ),
        (
            "missing item",
            cell.req(Method::GET, t, "/v1/items/missing"),
            404,
        ),
        (
            "delete a missing item",
            cell.req(Method::DELETE, t, "/v1/items/missing"),
            404,
        ),
    ];
    assert!(cases.len() >= 20);
    let mut failures = vec![];
    for (why, req, want) in cases {
        let res = req.send().await.unwrap_or_else(|e| panic!("{why}: {e}"));
        let status = res.status().as_u16();
        let error_header = res.headers().get(header::ERROR).cloned();
        let body = res.text().await.unwrap_or_default();
        let parsed = serde_json::from_str::<ErrorBody>(&body);
        match parsed {
            Ok(b) if status == want && !b.message.is_empty() && error_header.is_some() => {}
            _ => failures.push(format!(
                "{why}: want {want} with a reason, got {status} {body:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        cell.is_running(),
        "the cell survived every malformed request"
    );
    let ok = cell.req(Method::GET, t, "/v1/whoami").send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
