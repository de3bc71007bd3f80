//! Staleness that means something, against the real API server in `KUBECONFIG` and a real cell:
//! a router confirms its table current at each renewal of the operator's heartbeat Lease naming
//! the version it serves; without renewals it reports the table stale past its bound
//! (`/status`, the metric, one WARN log) while it keeps serving it and stays ready; renewed
//! again, it is fresh again. With only a table file, each check of the file is the confirmation.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use cellstack_api::routing::publication::{HEARTBEAT_NAME, HEARTBEAT_VERSION_ANNOTATION};
use common::*;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Namespace,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};

/// The bound the routers of these tests run with.
const BOUND_SECS: u64 = 2;
const WAIT: Duration = Duration::from_secs(30);

/// The router's `/status`.
async fn status(http: &reqwest::Client, admin: u16) -> serde_json::Value {
    http.get(format!("http://127.0.0.1:{admin}/status"))
        .send()
        .await
        .expect("the router's admin port answers")
        .json()
        .await
        .expect("/status is JSON")
}

/// One sample of a metric without labels.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not on the page:\n{page}"))
}

/// Renews the heartbeat Lease in `ns` as the operator does, naming `version`.
async fn renew(client: &Client, ns: &str, version: u64) {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(HEARTBEAT_NAME.into()),
            annotations: Some(BTreeMap::from([(
                HEARTBEAT_VERSION_ANNOTATION.to_owned(),
                version.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("staleness-test".into()),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), ns)
        .patch(
            HEARTBEAT_NAME,
            &PatchParams::apply("cellstack-test").force(),
            &Patch::Apply(&lease),
        )
        .await
        .expect("renewing the heartbeat Lease");
}

/// Lines of `log` that report the table turning stale.
fn stale_warnings(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("routing table stale"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_table_fresh_and_without_them_it_is_reported_stale_but_served() {
    let http = reqwest::Client::new();
    let dir = scratch("staleness");
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set, so there is no API server to test against: run the README's \
         test command (e2e/test-all), or `e2e/control-plane up && eval \"$(e2e/control-plane env)\"`"
    );
    let client = Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    let ns = unique("stale-");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("creating the test namespace");

    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let tenant = unique("s");
    put_tenant(&http, &alpha, &tenant, &active(1)).await;
    let table = one_tenant_table(cell_route("alpha", &[&alpha], 1), &tenant, 1, None);
    publish(&client, &ns, &table).await;

    let (port, admin) = (free_port(), free_port());
    let log = dir.join("router.log");
    let _router = Proc(
        Command::new(env!("CARGO_BIN_EXE_cellstack-router"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--tenant-from", "header"])
            .args([
                "--kubernetes",
                "--namespace",
                &ns,
                "--drain-delay-secs",
                "0",
            ])
            .args(["--table-stale-after", &BOUND_SECS.to_string()])
            .arg("--last-known-good")
            .arg(dir.join("lkg.bin"))
            .env("CELLSTACK_LOG", "warn")
            // Log lines go to stdout (tracing-subscriber's default writer).
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let served = async || {
        http.get(format!("http://127.0.0.1:{port}/v1/whoami"))
            .header(cellstack_api::wire::header::TENANT, &tenant)
            .send()
            .await
            .map(|r| r.status())
    };
    wait_until("table version 1 from Kubernetes", WAIT, async || {
        http.get(format!("http://127.0.0.1:{admin}/status"))
            .send()
            .await
            .is_ok()
            && status(&http, admin).await["tableVersion"] == 1
    })
    .await;
    let s = status(&http, admin).await;
    assert_eq!(s["staleAfterSeconds"], BOUND_SECS as f64, "{s}");
    assert_eq!(
        s["stale"], false,
        "a table just swapped in is confirmed: {s}"
    );

    // Renewals naming the version served, every 300 ms, keep it fresh for longer than the bound
    // (two bounds by the router's own clock).
    let renewals = {
        let (client, ns) = (client.clone(), ns.clone());
        tokio::spawn(async move {
            loop {
                renew(&client, &ns, 1).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let mut polls = 0;
    wait_until("two bounds of renewals", WAIT, async || {
        let s = status(&http, admin).await;
        assert_eq!(s["stale"], false, "fresh while renewed: {s}");
        assert!(
            s["confirmedSecondsAgo"].as_f64().unwrap() < 1.5,
            "confirmed at each renewal: {s}"
        );
        polls += 1;
        s["receivedSecondsAgo"].as_f64().unwrap() > 2.0 * BOUND_SECS as f64
    })
    .await;
    assert!(polls > 1);
    let page = metrics_of(&http, admin).await;
    assert_eq!(sample(&page, "cellstack_router_table_stale"), 0.0);
    assert!(sample(&page, "cellstack_router_table_confirmed_age_seconds") < 1.5);

    // The operator goes quiet: past the bound the table is stale, and still served.
    renewals.abort();
    let _ = renewals.await;
    wait_until("the table to be reported stale", WAIT, async || {
        status(&http, admin).await["stale"] == true
    })
    .await;
    let s = status(&http, admin).await;
    assert!(
        s["confirmedSecondsAgo"].as_f64().unwrap() > BOUND_SECS as f64,
        "{s}"
    );
    assert_eq!(s["tableVersion"], 1, "{s}");
    let page = metrics_of(&http, admin).await;
    assert_eq!(sample(&page, "cellstack_router_table_stale"), 1.0);
    assert!(sample(&page, "cellstack_router_table_confirmed_age_seconds") > BOUND_SECS as f64);
    for i in 0..20 {
        assert_eq!(
            served().await.unwrap(),
            reqwest::StatusCode::OK,
            "request {i} with a stale table"
        );
    }
    let ready = http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success(), "a stale router stays ready");
    wait_until("the stale WARN log", WAIT, async || {
        stale_warnings(&log) >= 1
    })
    .await;

    // A renewal naming a newer version than the one served confirms nothing (the router is
    // behind): the age goes on growing, by the router's clock, for a second after it.
    renew(&client, &ns, 2).await;
    let after = status(&http, admin).await["confirmedSecondsAgo"]
        .as_f64()
        .unwrap();
    wait_until(
        "a second after a renewal naming a newer version",
        WAIT,
        async || {
            let s = status(&http, admin).await;
            assert_eq!(s["stale"], true, "a newer version confirms nothing: {s}");
            s["confirmedSecondsAgo"].as_f64().unwrap() > after + 1.0
        },
    )
    .await;
    // One naming the version served does.
    renew(&client, &ns, 1).await;
    wait_until("the table to be fresh again", WAIT, async || {
        status(&http, admin).await["stale"] == false
    })
    .await;
    let page = metrics_of(&http, admin).await;
    assert_eq!(sample(&page, "cellstack_router_table_stale"), 0.0);
    assert_eq!(stale_warnings(&log), 1, "one WARN per transition");
    assert_eq!(served().await.unwrap(), reqwest::StatusCode::OK);

    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn with_a_table_file_each_read_confirms_and_a_missing_file_turns_stale() {
    let http = reqwest::Client::new();
    let dir = scratch("staleness-file");
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let tenant = unique("f");
    put_tenant(&http, &alpha, &tenant, &active(1)).await;
    let r = router_for(
        &http,
        &dir,
        cell_route("alpha", &[&alpha], 1),
        &tenant,
        1,
        None,
        &["--table-stale-after", &BOUND_SECS.to_string()],
    )
    .await;
    // Read every 100 ms, unchanged: fresh for longer than the bound.
    wait_until("two bounds of unchanged reads", WAIT, async || {
        let s = status(&http, r.admin).await;
        assert_eq!(s["stale"], false, "fresh while the file is read: {s}");
        s["receivedSecondsAgo"].as_f64().unwrap() > 2.0 * BOUND_SECS as f64
    })
    .await;
    // No file to read: nothing confirms the table any more.
    std::fs::remove_file(dir.join("table.bin")).unwrap();
    wait_until("the table to be reported stale", WAIT, async || {
        status(&http, r.admin).await["stale"] == true
    })
    .await;
    let answer = r
        .req(&http, reqwest::Method::GET, &tenant, "/v1/whoami")
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "still served: {}",
        answer.status()
    );
}
