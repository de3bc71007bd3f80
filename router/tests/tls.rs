//! TLS on the router's traffic port (`--tls-cert-file`, `--tls-key-file`) against real router,
//! cell and Redis processes: HTTP/2 and HTTP/1.1 by ALPN, a certificate rotated while requests
//! run drops none of them, a refused pair leaves the one in force, plain HTTP gets no answer, and
//! a router without a usable pair does not start.

use std::{
    path::Path,
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

struct Stack {
    dir: std::path::PathBuf,
    router: Router,
    tenant: String,
    _lane: Lane,
}

/// One lane (with `lane_args`) holding a tenant, and a router serving TLS with `issued`.
async fn stack(name: &str, issued: &Issued, lane_args: &[&str]) -> Stack {
    let http = reqwest::Client::new();
    let dir = scratch(name);
    let lane = lane_with(&http, "tls", &redis_url(), &dir, lane_args).await;
    let tenant = unique("tls");
    put_tenant(&http, &lane, &tenant, &active(1)).await;
    write_pair(&dir, issued);
    let (cert, key) = (
        dir.join("tls.crt").display().to_string(),
        dir.join("tls.key").display().to_string(),
    );
    let router = router_for(
        &http,
        &dir,
        cell_route("tls", &[&lane], 1),
        &tenant,
        1,
        None,
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-poll-ms",
            "100",
        ],
    )
    .await;
    Stack {
        dir,
        router,
        tenant,
        _lane: lane,
    }
}

impl Stack {
    fn url(&self) -> String {
        format!("https://localhost:{}/v1/whoami", self.router.port)
    }

    async fn whoami(&self, client: &reqwest::Client) -> reqwest::Result<reqwest::Response> {
        client
            .get(self.url())
            .header(header::TENANT, &self.tenant)
            .send()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_reaches_the_cell_over_http2_or_http1_as_alpn_chooses() {
    let ca = TestCa::new("router-tls-test").expect("a CA");
    let s = stack("tls-alpn", &ca.issue(&["localhost"]).expect("a cert"), &[]).await;
    let h2 = s.whoami(&trusting(&[&ca], false)).await.expect("an answer");
    assert_eq!(h2.status(), StatusCode::OK);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let h1 = s.whoami(&trusting(&[&ca], true)).await.expect("an answer");
    assert_eq!(h1.status(), StatusCode::OK);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_and_drops_no_request() {
    let (old_ca, new_ca) = (
        TestCa::new("old-ca").expect("a CA"),
        TestCa::new("new-ca").expect("a CA"),
    );
    // Requests take 300 ms at the lane, so some are always in flight during the rotation.
    let s = Arc::new(
        stack(
            "tls-rotation",
            &old_ca.issue(&["localhost"]).expect("a cert"),
            &["--simulate-workers", "64", "--simulate-work-ms", "300"],
        )
        .await,
    );
    // Clients that trust both CAs keep sending, on their pooled connections and new ones.
    let both = trusting(&[&old_ca, &new_ca], false);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (s, client, stop, served, failed) = (
                s.clone(),
                both.clone(),
                stop.clone(),
                served.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match s.whoami(&client).await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            served.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    wait_until("requests to flow", Duration::from_secs(10), async || {
        served.load(Ordering::Relaxed) >= 8
    })
    .await;

    write_pair(&s.dir, &new_ca.issue(&["localhost"]).expect("a cert"));
    // A client that trusts only the new CA gets through once the router has read the new pair.
    let new_only = trusting(&[&new_ca], false);
    wait_until(
        "the new certificate to be served",
        Duration::from_secs(10),
        async || s.whoami(&new_only).await.is_ok(),
    )
    .await;
    let at_rotation = served.load(Ordering::Relaxed);
    wait_until("requests to go on", Duration::from_secs(10), async || {
        served.load(Ordering::Relaxed) >= at_rotation + 16
    })
    .await;
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
    // The old certificate is no longer handed out.
    assert!(s.whoami(&trusting(&[&old_ca], false)).await.is_err());
    let metrics = s.router.metrics(&reqwest::Client::new()).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "cellstack_router_tls_reloads_total{result=\"loaded\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_pair_is_refused_and_the_pair_in_force_stays() {
    let ca = TestCa::new("router-tls-test").expect("a CA");
    let s = stack(
        "tls-refused",
        &ca.issue(&["localhost"]).expect("a cert"),
        &[],
    )
    .await;
    // A certificate with another certificate's key.
    let (a, b) = (
        ca.issue(&["localhost"]).expect("a cert"),
        ca.issue(&["localhost"]).expect("a cert"),
    );
    write_pair(
        &s.dir,
        &Issued {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        },
    );
    let http = reqwest::Client::new();
    wait_until(
        "the pair to be refused",
        Duration::from_secs(10),
        async || {
            metric_sum(
                &s.router.metrics(&http).await,
                "cellstack_router_tls_reloads_total{result=\"refused\"}",
            ) == 1.0
        },
    )
    .await;
    let res = s
        .whoami(&trusting(&[&ca], false))
        .await
        .expect("still served");
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let ca = TestCa::new("router-tls-test").expect("a CA");
    let s = stack("tls-plain", &ca.issue(&["localhost"]).expect("a cert"), &[]).await;
    let res = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/v1/whoami", s.router.port))
        .header(header::TENANT, &s.tenant)
        .send()
        .await;
    assert!(res.is_err(), "{res:?}");
    let http = reqwest::Client::new();
    wait_until(
        "the failed handshake to be counted",
        Duration::from_secs(5),
        async || {
            metric_sum(
                &s.router.metrics(&http).await,
                "cellstack_router_tls_handshake_failures_total",
            ) >= 1.0
        },
    )
    .await;
}

#[test]
fn the_router_does_not_start_without_a_usable_certificate() {
    let ca = TestCa::new("router-tls-test").expect("a CA");
    let dir = scratch("tls-start");
    let (a, b) = (
        ca.issue(&["localhost"]).expect("a cert"),
        ca.issue(&["localhost"]).expect("a cert"),
    );
    write_pair(
        &dir,
        &Issued {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        },
    );
    let run = |cert: &Path, key: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cellstack-router"))
            .args(["--tenant-from", "header"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .output()
            .expect("run the router");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let mismatched = run(&dir.join("tls.crt"), &dir.join("tls.key"));
    assert!(
        mismatched.contains("is not the key of the certificate"),
        "{mismatched}"
    );
    let missing = run(&dir.join("absent.crt"), &dir.join("tls.key"));
    assert!(missing.contains("cannot read"), "{missing}");
}
