//! A tenant's life in a cell: served when active, reads-only when fenced, refused at a stale
//! epoch, redirected once moved, and exported from one Redis into another without a change in
//! its checksum.

mod common;

use cellstack_api::{
    admin::{
        Checksum, ExportPage, Import, NEW_TENANTS_PATH, NewTenant, NewTenantOutcome, NewTenants,
        TenantRecord, TenantState,
    },
    wire::{ErrorBody, ErrorCode, header},
};
use common::*;
use reqwest::{Method, StatusCode};

async fn error_of(res: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, ErrorBody) {
    let status = res.status();
    let headers = res.headers().clone();
    let body: ErrorBody = res
        .json()
        .await
        .expect("an error answer has the JSON error body");
    (status, headers, body)
}

#[tokio::test]
async fn a_fenced_tenant_serves_reads_and_refuses_writes() {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let tenant = unique("fence");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;

    let put = cell
        .req(Method::PUT, &tenant, "/v1/items/a")
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);

    let fenced = cell
        .admin_req(Method::POST, &format!("/admin/v1/tenants/{tenant}/fence"))
        .send()
        .await
        .unwrap();
    assert_eq!(fenced.status(), StatusCode::OK);

    let (status, headers, body) = error_of(
        cell.req(Method::PUT, &tenant, "/v1/items/a")
            .body("two")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.error, ErrorCode::Fenced);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(headers[header::ERROR], "fenced");
    let counter = cell
        .req(Method::POST, &tenant, "/v1/counters/c/increment")
        .send()
        .await
        .unwrap();
    assert_eq!(
        counter.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "every kind of write is refused"
    );

    let get = cell
        .req(Method::GET, &tenant, "/v1/items/a")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        get.text().await.unwrap(),
        "one",
        "the refused write changed nothing"
    );
}

#[tokio::test]
async fn stale_and_newer_epochs_are_refused_with_the_current_epoch() {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let tenant = unique("epoch");
    cell.put_tenant(&tenant, TenantState::Active, 5).await;

    for sent in ["4", "6"] {
        let res = cell
            .req(Method::PUT, &tenant, "/v1/items/x")
            .header(header::EPOCH, sent)
            .body("v")
            .send()
            .await
            .unwrap();
        let (status, headers, body) = error_of(res).await;
        assert_eq!(status, StatusCode::CONFLICT, "epoch {sent}");
        assert_eq!(body.error, ErrorCode::StaleEpoch);
        assert_eq!(body.current_epoch, Some(5));
        assert_eq!(headers[header::EPOCH], "5");
    }
    let ok = cell
        .req(Method::PUT, &tenant, "/v1/items/x")
        .header(header::EPOCH, "5")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let read = cell
        .req(Method::GET, &tenant, "/v1/items/x")
        .header(header::EPOCH, "4")
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.status(),
        StatusCode::CONFLICT,
        "reads at a stale epoch are refused too"
    );
}

#[tokio::test]
async fn a_moved_tenant_is_redirected_and_unknown_ones_are_404() {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let tenant = unique("moved");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    let moved = cell
        .admin_req(Method::POST, &format!("/admin/v1/tenants/{tenant}/moved"))
        .json(&serde_json::json!({"to": "bravo", "epoch": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    let (status, headers, body) = error_of(
        cell.req(Method::GET, &tenant, "/v1/items/a")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(body.moved_to.as_deref(), Some("bravo"));
    assert_eq!(headers[header::MOVED_TO], "bravo");

    let lower = cell
        .admin_req(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/activate"),
        )
        .json(&serde_json::json!({"epoch": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        lower.status(),
        StatusCode::CONFLICT,
        "an epoch never goes down"
    );

    // Unknown, not possibly lost: the datastore is confirmed complete.
    assert!(cell.confirm_datastore(&[]).await.confirmed);
    let (status, _, body) = error_of(
        cell.req(Method::GET, &unique("nobody"), "/v1/items/a")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.error, ErrorCode::UnknownTenant);
}

/// A datastore without the operator's confirmation may have come back empty: a tenant the cell
/// has no record of is then `503 data_unavailable`, never `404`. The confirmation is refused
/// while a named tenant has no record, and goes with the data when the datastore is emptied.
#[tokio::test]
async fn a_tenant_without_a_record_is_unknown_only_while_the_datastore_is_confirmed() {
    let redis = OwnRedis::start().await;
    let cell = CellProcess::start(&redis.url(), CellOptions::default()).await;
    let kept = unique("kept");
    let nobody = unique("nobody");
    let refused_as_unavailable = |what: &'static str| {
        let res = cell.req(Method::GET, &nobody, "/v1/items/a").send();
        async move {
            let (status, headers, body) = error_of(res.await.unwrap()).await;
            assert_eq!(
                (status, body.error),
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DataUnavailable),
                "{what}: {}",
                body.message
            );
            assert_eq!(headers[header::RETRY_AFTER], "1", "{what}");
            assert!(
                body.message.contains("not been confirmed"),
                "{what}: {}",
                body.message
            );
        }
    };

    refused_as_unavailable("a new datastore").await;
    let state: cellstack_api::admin::DatastoreConfirmation = cell
        .admin_req(Method::GET, cellstack_api::admin::DATASTORE_PATH)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!state.confirmed && state.since_ms.is_none());

    cell.put_tenant(&kept, TenantState::Active, 1).await;
    let gone = unique("gone");
    let refused = cell.confirm_datastore(&[&kept, &gone]).await;
    assert!(!refused.confirmed);
    assert_eq!((refused.missing_count, refused.missing), (1, vec![gone]));
    refused_as_unavailable("after a refused confirmation").await;

    let confirmed = cell.confirm_datastore(&[&kept]).await;
    assert!(confirmed.confirmed && confirmed.since_ms.is_some());
    let (status, _, body) = error_of(
        cell.req(Method::GET, &nobody, "/v1/items/a")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.error),
        (StatusCode::NOT_FOUND, ErrorCode::UnknownTenant)
    );

    // The datastore comes back empty: the confirmation went with the data.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    refused_as_unavailable("after the datastore was emptied").await;
    let (status, _, body) = error_of(
        cell.req(Method::PUT, &kept, "/v1/items/a")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.error),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DataUnavailable),
        "a write of a tenant whose record went with the data"
    );
}

async fn export_all(
    cell: &CellProcess,
    tenant: &str,
    what: &str,
) -> Vec<cellstack_api::admin::Entry> {
    let mut entries = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let sep = if what.contains('?') { '&' } else { '?' };
        let mut url = format!("/admin/v1/tenants/{tenant}/{what}{sep}count=50");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: ExportPage = cell
            .admin_req(Method::GET, &url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        entries.extend(page.entries);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return entries,
        }
    }
}

async fn checksum_with(cell: &CellProcess, tenant: &str, query: &str) -> Checksum {
    cell.admin_req(
        Method::GET,
        &format!("/admin/v1/tenants/{tenant}/checksum{query}"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

/// The figures the cell maintains on every write, checked against a full recount.
async fn checksum(cell: &CellProcess, tenant: &str) -> Checksum {
    let kept = checksum_with(cell, tenant, "").await;
    let counted = checksum_with(cell, tenant, "?recount=true").await;
    assert_eq!(kept, counted, "maintained checksum vs recount");
    kept
}

#[tokio::test]
async fn export_then_import_into_another_redis_gives_the_same_checksum() {
    let source = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let other_redis = OwnRedis::start().await;
    let target = CellProcess::start(&other_redis.url(), CellOptions::default()).await;
    let tenant = unique("export");
    source.put_tenant(&tenant, TenantState::Active, 3).await;
    for i in 0..300 {
        let res = source
            .req(Method::PUT, &tenant, &format!("/v1/items/item-{i}"))
            .body(format!("value-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    for _ in 0..7 {
        source
            .req(Method::POST, &tenant, "/v1/counters/hits/increment")
            .send()
            .await
            .unwrap();
    }
    // Setting a value it already has, deleting what is not there, and a counter's changes all
    // keep the maintained figures exact.
    for (method, path, body) in [
        (Method::PUT, "/v1/items/item-5", "value-5"),
        (Method::DELETE, "/v1/items/never-written", ""),
        (Method::PUT, "/v1/items/gone", "soon"),
        (Method::DELETE, "/v1/items/gone", ""),
    ] {
        let res = source
            .req(method, &tenant, path)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success() || res.status() == StatusCode::NOT_FOUND);
    }
    assert_eq!(checksum(&source, &tenant).await.keys, 301);
    // Writes after the mark are what a move's catch-up copies.
    let mark = source
        .admin_req(Method::POST, &format!("/admin/v1/tenants/{tenant}/mark"))
        .send()
        .await
        .unwrap();
    assert_eq!(mark.status(), StatusCode::NO_CONTENT);
    let snapshot = export_all(&source, &tenant, "export").await;
    assert_eq!(snapshot.len(), 301, "300 items and one counter");
    source
        .req(Method::PUT, &tenant, "/v1/items/item-0")
        .body("changed")
        .send()
        .await
        .unwrap();
    source
        .req(Method::DELETE, &tenant, "/v1/items/item-1")
        .send()
        .await
        .unwrap();
    source
        .req(Method::PUT, &tenant, "/v1/items/late")
        .body("new")
        .send()
        .await
        .unwrap();
    // A move takes those before fencing; writes from then on are recorded afresh.
    let taken: serde_json::Value = source
        .admin_req(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/changes/take"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(taken["keys"], 3, "the keys written since the mark: {taken}");
    source
        .req(Method::PUT, &tenant, "/v1/items/after-take")
        .body("x")
        .send()
        .await
        .unwrap();
    let taken = export_all(&source, &tenant, "changes?taken=true").await;
    assert_eq!(taken.len(), 3, "exactly the keys taken: {taken:?}");
    let changes = export_all(&source, &tenant, "changes").await;
    assert_eq!(
        changes.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        vec!["i:after-take"],
        "exactly the keys written since the take"
    );

    target.put_tenant(&tenant, TenantState::Importing, 3).await;
    for (what, entries) in [
        ("snapshot", snapshot),
        ("taken changes", taken),
        ("changes", changes),
    ] {
        let res = target
            .admin_req(Method::POST, &format!("/admin/v1/tenants/{tenant}/import"))
            .json(&Import { entries })
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "importing the {what}");
    }
    let (a, b) = (
        checksum(&source, &tenant).await,
        checksum(&target, &tenant).await,
    );
    assert_eq!(a, b, "source and target hold the same data");
    assert_eq!(a.keys, 302);

    // A difference shows.
    target
        .admin_req(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/activate"),
        )
        .json(&serde_json::json!({"epoch": 4}))
        .send()
        .await
        .unwrap();
    target
        .req(Method::PUT, &tenant, "/v1/items/late")
        .body("newer")
        .send()
        .await
        .unwrap();
    assert_ne!(checksum(&target, &tenant).await, a);

    let purged = source
        .admin_req(Method::DELETE, &format!("/admin/v1/tenants/{tenant}"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    assert_eq!(checksum(&source, &tenant).await.keys, 0);
}

#[tokio::test]
async fn the_admin_api_needs_the_token() {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let url = cell.admin_url("/admin/v1/tenants/acme");
    assert_eq!(
        cell.http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        cell.http
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // The tenant API does not expose admin routes.
    let res = cell
        .req(Method::GET, "acme", "/admin/v1/tenants/acme")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_tenant_marked_lost_is_refused_as_data_unavailable_keeps_its_marker_and_cannot_be_activated()
 {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let tenant = unique("lost");
    let path = format!("/admin/v1/tenants/{tenant}");
    let marker = "0123456789abcdef0123456789abcdef";
    let put = |state: TenantState, marker: Option<&str>| {
        cell.admin_req(Method::PUT, &path).json(&TenantRecord {
            state,
            epoch: 2,
            moved_to: None,
            tracking: false,
            marker: marker.map(str::to_owned),
        })
    };
    assert_eq!(
        put(TenantState::Active, Some(marker))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // A PUT without a marker keeps the stored one.
    assert_eq!(
        put(TenantState::Lost, None).send().await.unwrap().status(),
        StatusCode::OK
    );
    let record = record_of(&cell, &path).await;
    assert_eq!(
        (record.state, record.marker.as_deref()),
        (TenantState::Lost, Some(marker))
    );

    for (method, url) in [
        (Method::GET, "/v1/items/a"),
        (Method::PUT, "/v1/items/a"),
        (Method::POST, "/v1/counters/c/increment"),
    ] {
        let (status, headers, body) = error_of(
            cell.req(method.clone(), &tenant, url)
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body.error),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DataUnavailable),
            "{method} {url}"
        );
        assert_eq!(headers[header::ERROR], "data_unavailable");
        assert!(body.message.contains("lost"), "{}", body.message);
    }

    let activate = cell
        .admin_req(Method::POST, &format!("{path}/activate"))
        .json(&serde_json::json!({"epoch": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        activate.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a lost tenant is not simply activated"
    );
    assert_eq!(record_of(&cell, &path).await.state, TenantState::Lost);
}

/// The tenant's record, read through the admin API at `path`.
async fn record_of(cell: &CellProcess, path: &str) -> TenantRecord {
    cell.admin_req(Method::GET, path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST /admin/v1/new-tenants` creates the records of tenants that have none, active at their
/// epoch with their marker, and leaves a tenant that has one as it was, answering its record;
/// a bad entry refuses the whole call with a 400 naming it, and nothing is written.
#[tokio::test]
async fn new_tenants_get_records_in_one_call_and_existing_records_are_left_as_they_were() {
    let cell = CellProcess::start(&shared_redis(), CellOptions::default()).await;
    let (a, b, existing) = (unique("new-a"), unique("new-b"), unique("new-old"));
    cell.put_tenant(&existing, TenantState::Fenced, 7).await;
    let marker = |c: char| c.to_string().repeat(32);
    let body = NewTenants {
        tenants: vec![
            NewTenant {
                tenant: a.clone(),
                epoch: 1,
                marker: marker('a'),
            },
            NewTenant {
                tenant: existing.clone(),
                epoch: 1,
                marker: marker('e'),
            },
            NewTenant {
                tenant: b.clone(),
                epoch: 3,
                marker: marker('b'),
            },
        ],
    };
    let res = cell
        .admin_req(Method::POST, NEW_TENANTS_PATH)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let outcomes: Vec<NewTenantOutcome> = res.json().await.unwrap();
    let summary: Vec<(String, bool, TenantState, u64)> = outcomes
        .iter()
        .map(|o| (o.tenant.clone(), o.created, o.record.state, o.record.epoch))
        .collect();
    assert_eq!(
        summary,
        vec![
            (a.clone(), true, TenantState::Active, 1),
            (existing.clone(), false, TenantState::Fenced, 7),
            (b.clone(), true, TenantState::Active, 3),
        ]
    );
    // What a later read sees: the new records with their markers, the old one untouched.
    let a_record = record_of(&cell, &format!("/admin/v1/tenants/{a}")).await;
    assert_eq!(a_record.marker, Some(marker('a')));
    let old = record_of(&cell, &format!("/admin/v1/tenants/{existing}")).await;
    assert_eq!((old.state, old.epoch), (TenantState::Fenced, 7));
    assert_ne!(old.marker, Some(marker('e')));

    // One bad entry (a marker that is not hex) refuses the call; the good one is not written.
    let c = unique("new-c");
    let bad = NewTenants {
        tenants: vec![
            NewTenant {
                tenant: c.clone(),
                epoch: 1,
                marker: marker('c'),
            },
            NewTenant {
                tenant: unique("new-d"),
                epoch: 1,
                marker: "not-a-marker".into(),
            },
        ],
    };
    let res = cell
        .admin_req(Method::POST, NEW_TENANTS_PATH)
        .json(&bad)
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(res).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.message.contains("marker"), "{}", body.message);
    let res = cell
        .admin_req(Method::GET, &format!("/admin/v1/tenants/{c}"))
        .send()
        .await
        .unwrap();
    assert_ne!(
        res.status(),
        StatusCode::OK,
        "nothing of a refused call is written"
    );
}
