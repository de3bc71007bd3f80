//! TLS from the router to its lanes (`--upstream-ca-file`) against real router, cell and Redis
//! processes: a lane whose certificate chains to the router's CA is reached, over HTTP/1.1 and
//! h2; a lane with another CA's certificate, or without TLS, gets nothing; a lane asking for
//! client certificates (`--client-ca-file`) serves a router presenting one of its CA
//! (`--upstream-client-cert-file`) and nothing to others, its admin port only the probes to a
//! client without one; and the CA rotated while requests run (both bundles widened, the lane's
//! and the router's certificates replaced, both narrowed) drops none of them.

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
use cellstack_testkit::pki::{Issued, TestCa, Usage};
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

/// Where a router's client pair lives in its directory, and the flags naming it.
fn client_identity(dir: &Path, issued: &Issued) -> [String; 4] {
    write_files(
        dir,
        &[
            ("client.crt", &issued.cert_pem),
            ("client.key", &issued.key_pem),
        ],
    );
    [
        "--upstream-client-cert-file".into(),
        dir.join("client.crt").display().to_string(),
        "--upstream-client-key-file".into(),
        dir.join("client.key").display().to_string(),
    ]
}

fn lane_cert(ca: &TestCa) -> Issued {
    ca.issue_for(&["127.0.0.1"], &[Usage::ServerAuth])
        .expect("a lane certificate")
}

fn router_cert(ca: &TestCa) -> Issued {
    ca.issue_for(&["cellstack-router"], &[Usage::ClientAuth])
        .expect("a client certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_asking_for_client_certificates_serves_only_a_router_presenting_one_of_its_ca() {
    let (ca, other) = (
        TestCa::new("internal-ca").expect("a CA"),
        TestCa::new("someone-else").expect("a CA"),
    );
    let tenant = unique("mtls");
    let cas_dir = scratch("upstream-mtls-cas");
    write_files(&cas_dir, &[("ca.pem", &ca.pem())]);
    let client_ca = cas_dir.join("ca.pem").display().to_string();
    let operator = presenting(&[&ca], &router_cert(&ca));
    let lane = tls_lane(
        "upstream-mtls",
        Some(&lane_cert(&ca)),
        &operator,
        &tenant,
        &["--client-ca-file", &client_ca],
    )
    .await;
    let http = reqwest::Client::new();
    let requests = async || {
        let text = operator
            .get(format!("https://127.0.0.1:{}/metrics", lane.lane.admin))
            .send()
            .await
            .expect("the lane's metrics")
            .text()
            .await
            .expect("text");
        metric_sum(&text, "cellstack_cell_requests_total")
    };

    // A router presenting a client certificate of the lane's CA is served, h1 and h2.
    for protocol in ["http1", "h2"] {
        let dir = scratch(&format!("upstream-mtls-router-{protocol}"));
        write_files(&dir, &[("ca.pem", &ca.pem())]);
        let identity = client_identity(&dir, &router_cert(&ca));
        let mut extra: Vec<&str> = identity.iter().map(String::as_str).collect();
        extra.extend(["--upstream-protocol", protocol]);
        let router = router_trusting(&dir, &[&lane.lane], &tenant, &extra).await;
        let res = whoami(&http, &router, &tenant).await;
        assert_eq!(res.status(), StatusCode::OK, "{protocol}");
    }
    let served = requests().await;
    assert!(served >= 2.0, "{served} requests counted");

    // Routers with no client certificate, with a lane's (server-only) certificate of the same
    // CA, or with a client certificate of another CA: the handshake fails, nothing reaches the
    // tenant API.
    for (what, identity) in [
        ("no client certificate", None),
        ("a server-only certificate of the CA", Some(lane_cert(&ca))),
        (
            "a client certificate of another CA",
            Some(router_cert(&other)),
        ),
    ] {
        let dir = scratch("upstream-mtls-refused");
        write_files(&dir, &[("ca.pem", &ca.pem())]);
        let flags = identity.map(|issued| client_identity(&dir, &issued));
        let extra: Vec<&str> = flags.iter().flatten().map(String::as_str).collect();
        let router = router_trusting(&dir, &[&lane.lane], &tenant, &extra).await;
        let res = whoami(&http, &router, &tenant).await;
        assert!(res.status().is_server_error(), "{what}: {}", res.status());
        assert_eq!(
            requests().await,
            served,
            "{what}: a request reached the lane"
        );
    }

    // The admin port without a client certificate: the probes, and nothing else.
    let anonymous = trusting(&[&ca], false);
    let admin = format!("https://127.0.0.1:{}", lane.lane.admin);
    for path in ["/livez", "/readyz"] {
        let res = anonymous
            .get(format!("{admin}{path}"))
            .send()
            .await
            .expect("a probe");
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    for path in ["/metrics", &format!("/admin/v1/tenants/{tenant}")] {
        let res = anonymous
            .get(format!("{admin}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("an answer");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: serde_json::Value = res.json().await.expect("a JSON refusal");
        assert_eq!(body["error"], "no_client_certificate", "{path}");
    }
    let text = operator
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("the lane's metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric_sum(
            &text,
            "cellstack_cell_admin_calls_total{result=\"no_client_certificate\"}"
        ),
        2.0
    );
    // And its tenant port refuses the handshake itself.
    let direct = anonymous
        .get(format!("https://127.0.0.1:{}/v1/whoami", lane.lane.api))
        .header(header::TENANT, &tenant)
        .send()
        .await;
    assert!(direct.is_err(), "{direct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_internal_ca_drops_no_request() {
    let (old, new) = (
        TestCa::new("internal-ca-1").expect("a CA"),
        TestCa::new("internal-ca-2").expect("a CA"),
    );
    let tenant = unique("tlsrot");
    // The lane asks for client certificates of the CAs in `client_cas`; the admin client
    // presents one of each CA.
    let client_cas = scratch("upstream-tls-rotation-client-cas");
    write_files(&client_cas, &[("ca.pem", &old.pem())]);
    let client_ca = client_cas.join("ca.pem").display().to_string();
    let (admin, admin_new) = (
        presenting(&[&old, &new], &router_cert(&old)),
        presenting(&[&old, &new], &router_cert(&new)),
    );
    let lane = tls_lane(
        "upstream-tls-rotation",
        Some(&lane_cert(&old)),
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
            "--client-ca-file",
            &client_ca,
        ],
    )
    .await;
    let dir = scratch("upstream-tls-rotation-router");
    write_files(&dir, &[("ca.pem", &old.pem())]);
    let identity = client_identity(&dir, &router_cert(&old));
    let extra: Vec<&str> = identity.iter().map(String::as_str).collect();
    let router = Arc::new(router_trusting(&dir, &[&lane.lane], &tenant, &extra).await);

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
    let router_reloads = async |what: &str| {
        metric_sum(
            &router.metrics(&http).await,
            &format!("cellstack_router_upstream_{what}_reloads_total{{result=\"loaded\"}}"),
        )
    };
    let lane_metrics = format!("https://127.0.0.1:{}/metrics", lane.lane.admin);
    let lane_reloads = async |admin: &reqwest::Client, what: &str| {
        let text = match admin.get(&lane_metrics).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        metric_sum(
            &text,
            &format!("cellstack_cell_{what}_reloads_total{{result=\"loaded\"}}"),
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

    // 1. The router trusts both CAs for lanes, the lane both for clients.
    let both = format!("{}{}", old.pem(), new.pem());
    write_files(&dir, &[("ca.pem", &both)]);
    write_files(&client_cas, &[("ca.pem", &both)]);
    wait_until("the widened bundles", Duration::from_secs(10), async || {
        router_reloads("ca").await == 1.0 && lane_reloads(&admin, "client_ca").await == 1.0
    })
    .await;
    more(8).await;
    // 2. The lane presents a certificate of the new CA.
    write_pair(&lane.dir, &lane_cert(&new));
    wait_until(
        "the lane's new certificate",
        Duration::from_secs(10),
        async || lane_reloads(&admin, "tls").await == 1.0,
    )
    .await;
    more(8).await;
    // 3. The router presents a client certificate of the new CA.
    let _ = client_identity(&dir, &router_cert(&new));
    wait_until(
        "the router's new client certificate",
        Duration::from_secs(10),
        async || router_reloads("client_cert").await == 1.0,
    )
    .await;
    more(8).await;
    // 4. Both trust only the new CA.
    write_files(&dir, &[("ca.pem", &new.pem())]);
    write_files(&client_cas, &[("ca.pem", &new.pem())]);
    wait_until(
        "the narrowed bundles",
        Duration::from_secs(10),
        async || {
            router_reloads("ca").await == 2.0 && lane_reloads(&admin_new, "client_ca").await == 2.0
        },
    )
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
