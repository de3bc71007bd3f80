//! Fuzz targets for what a cell parses from outside: its policy file, the bodies of its admin
//! API (what the operator sends) and of its tenant API (what clients send). bolero replays each
//! target's corpus (`tests/__fuzz__/<target>/corpus`) and then generated inputs for
//! `cellstack_testkit::fuzz::time_per_target()` (5 s in the default tier, 60 s with `--full`).
//!
//! The API targets send their inputs over HTTP to a real cell on a real Redis, so what runs is
//! the handler as deployed: reading, parsing, validating and storing. A handler that panics
//! drops its connection without an answer, which fails the target, as does any `500` (the cell
//! answers what it cannot take with a 4xx, and a Redis that refuses with a 503).
//!
//! bolero's test mode is not coverage-guided: random bytes alone would stop at JSON syntax. The
//! first input byte picks a shape — raw bytes, or the body's JSON with strings and numbers taken
//! from the rest of the input — so the checks after parsing see inputs too.

mod common;

use std::time::Duration;

use cellstack_api::{admin::TenantState, policy::CellPolicies};
use cellstack_cell::policy_file::PolicySet;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn budget() -> Duration {
    cellstack_testkit::fuzz::time_per_target()
}

/// Strings and numbers read off the input, for JSON bodies.
struct Source<'a>(&'a [u8]);

impl Source<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    /// Up to 32 bytes, as a (lossily decoded) string; sometimes a plausible one.
    fn string(&mut self) -> String {
        let len = usize::from(self.byte() % 33).min(self.0.len());
        let (raw, rest) = self.0.split_at(len);
        self.0 = rest;
        match raw.first().map(|b| b % 4) {
            Some(0) => format!("i:{}", String::from_utf8_lossy(raw)),
            Some(1) => format!("c:{}", String::from_utf8_lossy(raw)),
            _ => String::from_utf8_lossy(raw).into_owned(),
        }
    }

    /// A JSON number (or something a number field must refuse).
    fn number(&mut self) -> Value {
        let mut raw = [0u8; 8];
        for b in &mut raw {
            *b = self.byte();
        }
        let n = u64::from_le_bytes(raw);
        match self.byte() % 6 {
            0 => json!(n),
            1 => json!(n % 16),
            2 => json!(-(n as i64).abs()),
            3 => json!(n as f64 / 7.0),
            4 => json!(self.string()),
            _ => Value::Null,
        }
    }

    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[usize::from(self.byte()) % options.len()]
    }

    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        (0..self.byte() % 5).map(|_| item(self)).collect()
    }
}

fn limit(s: &mut Source) -> Value {
    json!({
        "name": s.string(),
        "algorithm": s.pick(&["TokenBucket", "SlidingWindow", "tokenBucket"]),
        "requests": s.number(),
        "periodMs": s.number(),
        "burst": s.number(),
        "methods": s.list(|s| s.pick(&["GET", "PUT", "POST", "BREW"])),
        "pathPrefix": s.string(),
    })
}

fn policy(s: &mut Source) -> Value {
    json!({
        "policy": s.string(),
        "failMode": s.pick(&["Open", "Closed", "Ajar"]),
        "shadow": s.byte().is_multiple_of(2),
        "limits": s.list(limit),
        "requestPriority": s.pick(&["low", "normal", "high", "urgent"]),
    })
}

/// The bytes a target sends: the rest of the input raw (first byte 0) or `shape` filled from it.
fn body(input: &[u8], shape: impl FnOnce(&mut Source) -> Value) -> Vec<u8> {
    match input.split_first() {
        Some((0, rest)) => rest.to_vec(),
        Some((_, rest)) => serde_json::to_vec(&shape(&mut Source(rest))).unwrap_or_default(),
        None => vec![],
    }
}

/// The policy file parser, and what a lane does with a file it accepts: look up each tenant's
/// policy and match requests against its limits.
#[test]
fn policy_file() {
    bolero::check!()
        .with_test_time(budget())
        .for_each(|input: &[u8]| {
            let bytes = body(input, |s| {
                json!({
                    "version": s.string(),
                    "default": policy(s),
                    "tenants": {"acme": policy(s), "tenant-1": policy(s)},
                })
            });
            let Ok(file) = serde_json::from_slice::<CellPolicies>(&bytes) else {
                return;
            };
            let set = PolicySet::new(CellPolicies::default());
            set.store_file(file.clone());
            let snapshot = set.load();
            for tenant in file.tenants.keys().map(|t| t.as_str()).chain(["other"]) {
                if let Some(p) = snapshot.for_tenant(tenant) {
                    for l in &p.limits {
                        let _ = l.matches("GET", "/v1/items/a");
                    }
                }
                let _ = snapshot.in_force(tenant);
            }
        });
}

/// Runs `send` for every input of the fuzz target `target` against one cell, on a runtime of the test's own; fails on a
/// `500` or on no answer at all, and checks the cell still serves afterwards.
fn against_a_cell(
    target: &'static str,
    send: impl Fn(&CellProcess, &[u8]) -> reqwest::RequestBuilder,
    setup: impl AsyncFnOnce(&CellProcess),
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let cell = rt.block_on(async {
        let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
        setup(&cell).await;
        cell
    });
    // A panic anywhere fails the test; nothing is used after one.
    let accepted = std::sync::atomic::AtomicU64::new(0);
    let shared = std::panic::AssertUnwindSafe((&rt, &cell, &send, &accepted));
    // Named: the corpus is the calling test's (`tests/__fuzz__/<target>/corpus`).
    bolero::check!(name = target)
        .with_test_time(budget())
        .for_each(|input: &[u8]| {
            let (rt, cell, send, accepted) = *shared;
            let (status, text) = rt.block_on(async {
                let res = send(cell, input)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{target}: no answer ({e}): the handler panicked?"));
                (res.status(), res.text().await.unwrap_or_default())
            });
            assert!(
                status != StatusCode::INTERNAL_SERVER_ERROR && status.as_u16() < 600,
                "{target}: {status} {text}"
            );
            if status.is_success() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    // The shapes are there to get past parsing: some inputs must have been taken.
    let accepted = accepted.into_inner();
    println!("{target}: {accepted} inputs accepted");
    assert!(accepted > 0, "{target}: no input got past validation");
    rt.block_on(async {
        let res = cell
            .http
            .get(cell.admin_url("/livez"))
            .send()
            .await
            .expect("the cell still answers");
        assert!(res.status().is_success());
    });
}

/// Every admin endpoint that takes a body, for tenants in each state: a record, an activation,
/// a move, an import page, a handed-over policy and a datastore confirmation.
#[test]
fn admin_api_bodies() {
    let (active, importing) = (unique("fuzzact"), unique("fuzzimp"));
    let tenants = [active.clone(), importing.clone()];
    against_a_cell(
        "admin_api_bodies",
        |cell, input| {
            let (which, rest) = input.split_first().unwrap_or((&0, &[]));
            let tenant = &tenants[usize::from(*which >> 7)];
            let prefix = format!("/admin/v1/tenants/{tenant}");
            let (method, path, bytes) = match which % 6 {
                0 => (
                    Method::PUT,
                    prefix,
                    body(rest, |s| {
                        json!({
                            "state": s.pick(&["active", "fenced", "importing", "moved", "datalost", "gone"]),
                            "epoch": s.number(),
                            "movedTo": s.string(),
                            "tracking": s.byte().is_multiple_of(2),
                            "marker": s.string(),
                        })
                    }),
                ),
                1 => (
                    Method::POST,
                    format!("{prefix}/activate"),
                    body(rest, |s| json!({"epoch": s.number()})),
                ),
                2 => (
                    Method::POST,
                    format!("{prefix}/moved"),
                    body(rest, |s| json!({"to": s.string(), "epoch": s.number()})),
                ),
                3 => (
                    Method::POST,
                    format!("{prefix}/import"),
                    body(rest, |s| {
                        json!({"entries": s.list(|s| {
                            let value = match s.byte() % 4 {
                                0 => json!({"type": "string", "base64": s.string()}),
                                1 => json!({"type": "hash", "fields": s.list(|s| (s.string(), s.string()))}),
                                2 => json!({"type": "deleted"}),
                                _ => json!({"type": s.string()}),
                            };
                            json!({"key": s.string(), "value": value, "ttlMs": s.number()})
                        })})
                    }),
                ),
                4 => (
                    Method::PUT,
                    format!("{prefix}/policy"),
                    body(
                        rest,
                        |s| json!({"version": s.string(), "policy": policy(s), "ttlMs": s.number()}),
                    ),
                ),
                _ => (
                    Method::PUT,
                    "/admin/v1/datastore".to_owned(),
                    body(rest, |s| json!({"tenants": s.list(|s| s.string())})),
                ),
            };
            cell.admin_req(method, &path).body(bytes)
        },
        async |cell| {
            cell.put_tenant(&active, TenantState::Active, 1).await;
            cell.put_tenant(&importing, TenantState::Importing, 1).await;
        },
    );
}

/// The tenant API's bodies and names: an item written under any name with any body, and a
/// counter incremented by anything.
#[test]
fn tenant_api_bodies() {
    let tenant = unique("fuzzapi");
    against_a_cell(
        "tenant_api_bodies",
        |cell, input| {
            let (which, rest) = input.split_first().unwrap_or((&0, &[]));
            let mut s = Source(rest);
            let name = s.string();
            let escaped = url_escape(if name.is_empty() { "x" } else { &name });
            if which.is_multiple_of(2) {
                cell.req(Method::PUT, &tenant, &format!("/v1/items/{escaped}"))
                    .body(s.0.to_vec())
            } else {
                let bytes = body(s.0, |s| json!({"by": s.number()}));
                cell.req(
                    Method::POST,
                    &tenant,
                    &format!("/v1/counters/{escaped}/increment"),
                )
                .header("content-type", "application/json")
                .body(bytes)
            }
        },
        async |cell| cell.put_tenant(&tenant, TenantState::Active, 1).await,
    );
}

/// Percent-encodes every byte outside the unreserved set, so any name reaches the handler.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
