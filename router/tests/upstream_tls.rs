//! TLS from the router to its lanes (`--upstream-ca-file`) against real router, cell and Redis
//! processes: a lane whose certificate chains to the router's CA is reached, over HTTP/1.1 and
//! h2; a lane with another CA's certificate, or without TLS, gets nothing; and the CA rotated
//! while requests run (the bundle widened, the lane's certificate replaced, the bundle narrowed)
//! drops none of them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use cellstack_api::wire::header;
use cellstack_testkit::pki::{Issued, TestCa};
use reqwest::StatusCode;

mod common;
use common::*;

/// A lane serving its ports with the pair in `dir` when `tls`, holding `tenant`.
struct TlsLane {
    lane: Lane,
    dir: PathBuf,
}

async fn tls_lane(
    name: &str,
    issued: Option<&Issued>,
    admin: &reqwest::Client,
    tenant: &str,
    extra: &[&str],
) -> TlsLane {
    let dir = scratch(name);
    let (api, admin_port) = (free_port(), free_port());
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let mut cmd = Command::new(cell_binary());
    cmd.args([
        "--cell",
        "tls",
        "--redis-url",
        &redis_url(),
        "--drain-delay-secs",
        "0",
    ])
    .args(["--listen", &format!("127.0.0.1:{api}")])
    .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
    .arg("--admin-token-file")
    .arg(&token)
    .args(extra)
    .env("CELLSTACK_LOG", "warn")
    .stdout(Stdio::null());
    let scheme = match issued {
        Some(issued) => {
            write_pair(&dir, issued);
            cmd.arg("--tls-cert-file")
                .arg(dir.join("tls.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("tls.key"))
                .args(["--tls-poll-ms", "100"]);
            "https"
        }
        None => "http",
    };
    let lane = Lane {
        api,
        admin: admin_port,
        proc: Some(Proc(cmd.spawn().expect("start the cell"))),
    };
    let base = format!("{scheme}://127.0.0.1:{admin_port}");
    wait_until("the lane to serve", Duration::from_secs(20), async || {
        admin
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let res = admin
        .put(format!("{base}/admin/v1/tenants/{tenant}"))
        .bearer_auth(TOKEN)
        .json(&active(1))
        .send()
        .await
        .expect("the admin API");
    assert!(res.status().is_success(), "{}", res.status());
    TlsLane { lane, dir }
}

/// A router on a table of `lanes` (one cell) for `tenant`, trusting the bundle in `dir`.
async fn router_trusting(dir: &Path, lanes: &[&Lane], tenant: &str, extra: &[&str]) -> Router {
    let http = reqwest::Client::new();
    let bundle = dir.join("ca.pem").display().to_string();
    let mut args = vec!["--upstream-ca-file", &bundle, "--tls-poll-ms", "100"];
    args.extend_from_slice(extra);
    router_for(
        &http,
        dir,
        cell_route("tls", lanes, 1),
        tenant,
        1,
        None,
        &args,
    )
    .await
}

async fn whoami(http: &reqwest::Client, router: &Router, tenant: &str) -> reqwest::Response {
    http.get(format!("http://127.0.0.1:{}/v1/whoami", router.port))
        .header(header::TENANT, tenant)
        .send()
        .await
        .expect("an answer from the router")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_with_a_certificate_of_the_routers_ca_is_reached_over_tls() {
    let ca = TestCa::new("internal-ca").expect("a CA");
    let tenant = unique("tlsup");
    let lane = tls_lane(
        "upstream-tls-ok",
        Some(&ca.issue(&["127.0.0.1"]).expect("a cert")),
        &trusting(&[&ca], false),
        &tenant,
        &[],
    )
    .await;
    let dir = scratch("upstream-tls-ok-router");
    write_files(&dir, &[("ca.pem", &ca.pem())]);
    let http = reqwest::Client::new();
    for protocol in ["http1", "h2"] {
        let router = router_trusting(
            &dir,
            &[&lane.lane],
            &tenant,
            &["--upstream-protocol", protocol],
        )
        .await;
        let res = whoami(&http, &router, &tenant).await;
        assert_eq!(res.status(), StatusCode::OK, "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_with_another_cas_certificate_or_without_tls_gets_nothing() {
    let (ca, other) = (
        TestCa::new("internal-ca").expect("a CA"),
        TestCa::new("someone-else").expect("a CA"),
    );
    let tenant = unique("tlsbad");
    let impostor = tls_lane(
        "upstream-tls-impostor",
        Some(&other.issue(&["127.0.0.1"]).expect("a cert")),
        &trusting(&[&other], false),
        &tenant,
        &[],
    )
    .await;
    let plain = tls_lane(
        "upstream-tls-plain",
        None,
        &reqwest::Client::new(),
        &tenant,
        &[],
    )
    .await;
    let dir = scratch("upstream-tls-bad-router");
    write_files(&dir, &[("ca.pem", &ca.pem())]);
    let http = reqwest::Client::new();
    for (lane, what, admin) in [
        (
            &impostor,
            "a lane with another CA's certificate",
            trusting(&[&other], false),
        ),
        (&plain, "a lane without TLS", reqwest::Client::new()),
    ] {
        let router = router_trusting(&dir, &[&lane.lane], &tenant, &[]).await;
        let res = whoami(&http, &router, &tenant).await;
        assert!(res.status().is_server_error(), "{what}: {}", res.status());
        // The lane's tenant API answered nothing: no request got past the handshake.
        let scheme = if what.contains("without") {
            "http"
        } else {
            "https"
        };
        let metrics = admin
            .get(format!("{scheme}://127.0.0.1:{}/metrics", lane.lane.admin))
            .send()
            .await
            .expect("the lane's metrics")
            .text()
            .await
            .expect("text");
        assert_eq!(
            metric_sum(&metrics, "cellstack_cell_requests_total"),
            0.0,
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_internal_ca_drops_no_request() {
    let (old, new) = (
        TestCa::new("internal-ca-1").expect("a CA"),
        TestCa::new("internal-ca-2").expect("a CA"),
    );
    let tenant = unique("tlsrot");
    let admin = trusting(&[&old, &new], false);
    let lane = tls_lane(
        "upstream-tls-rotation",
        Some(&old.issue(&["127.0.0.1"]).expect("a cert")),
        &admin,
        &tenant,
        // Each request holds its connection 50 ms, so a burst opens new ones; the shedder's
        // limit is far above the widest burst (48 at once), so nothing is shed.
        &[
            "--simulate-workers",
            "256",
            "--simulate-work-ms",
            "50",
            "--shed-initial-limit",
            "1024",
        ],
    )
    .await;
    let dir = scratch("upstream-tls-rotation-router");
    write_files(&dir, &[("ca.pem", &old.pem())]);
    let router = Arc::new(router_trusting(&dir, &[&lane.lane], &tenant, &[]).await);

    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (http, router, tenant, stop, served, failed) = (
                http.clone(),
                router.clone(),
                tenant.clone(),
                stop.clone(),
                served.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if whoami(&http, &router, &tenant).await.status() == StatusCode::OK {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let router_reloads = async |result: &str| {
        metric_sum(
            &router.metrics(&http).await,
            &format!("cellstack_router_upstream_ca_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let connections = async || {
        metric_sum(
            &router.metrics(&http).await,
            "cellstack_router_upstream_connections_total",
        )
    };
    // Requests keep flowing after each step, and a burst wider than any before it opens new
    // connections to the lane.
    let width = AtomicU64::new(16);
    let more = async |n: u64| {
        let at = served.load(Ordering::Relaxed);
        let opened = connections().await;
        let burst: Vec<_> = (0..width.fetch_add(8, Ordering::Relaxed))
            .map(|_| {
                let (http, router, tenant) = (http.clone(), router.clone(), tenant.clone());
                tokio::spawn(async move { whoami(&http, &router, &tenant).await.status() })
            })
            .collect();
        for b in burst {
            assert_eq!(b.await.expect("a request"), StatusCode::OK);
        }
        wait_until("requests to flow", Duration::from_secs(10), async || {
            served.load(Ordering::Relaxed) >= at + n
        })
        .await;
        assert!(
            connections().await > opened,
            "the burst opened no connection"
        );
    };
    more(8).await;

    // 1. The router trusts both CAs.
    write_files(&dir, &[("ca.pem", &format!("{}{}", old.pem(), new.pem()))]);
    wait_until("the widened bundle", Duration::from_secs(10), async || {
        router_reloads("loaded").await == 1.0
    })
    .await;
    more(8).await;
    // 2. The lane presents a certificate of the new CA.
    write_pair(&lane.dir, &new.issue(&["127.0.0.1"]).expect("a cert"));
    let lane_metrics = format!("https://127.0.0.1:{}/metrics", lane.lane.admin);
    wait_until(
        "the lane's new certificate",
        Duration::from_secs(10),
        async || {
            let text = match admin.get(&lane_metrics).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => return false,
            };
            metric_sum(&text, "cellstack_cell_tls_reloads_total{result=\"loaded\"}") == 1.0
        },
    )
    .await;
    more(8).await;
    // 3. The router trusts only the new CA.
    write_files(&dir, &[("ca.pem", &new.pem())]);
    wait_until("the narrowed bundle", Duration::from_secs(10), async || {
        router_reloads("loaded").await == 2.0
    })
    .await;
    more(8).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("a load task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} served",
        served.load(Ordering::Relaxed)
    );
}
