//! Benchmark: the latency the cell runtime adds as the gateway in front of a team's service
//! (docs/services.md). The Go example (examples/go-orders) runs on loopback with its data in
//! the runtime's state API on a real Redis; the same requests go to it directly (with the
//! tenant header the runtime would set) and through the runtime's tenant port (identity,
//! tenant state, one rate limit, load shedding, forwarding), in interleaved rounds from one
//! client, one request at a time. Prints p50/p99 per path and round, the medians and the
//! ratios with their spread over rounds. Run with `bench/gateway.sh`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    policy::{CellPolicies, EffectiveLimit, EffectivePolicy},
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
    wire::header,
};
use cellstack_testkit::ports::free_port;
use cellstack_testkit::process::Reap;

const ROUNDS: usize = 5;
/// Requests per path and round (p99 over ≥ 100 samples per round, 5 × that overall).
const PER_ROUND: usize = 1000;
const TENANT: &str = "bench-gateway";
const TOKEN: &str = "bench-admin-token-0123456789";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `PER_ROUND` requests made by `request`, one at a time; their latencies, sorted.
async fn round(
    http: &reqwest::Client,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(PER_ROUND);
    for _ in 0..PER_ROUND {
        let t = Instant::now();
        let res = request(http).send().await.expect("request");
        let status = res.status();
        let _ = res.bytes().await;
        assert!(status.is_success(), "{status}");
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    samples
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let go = cellstack_testkit::go_orders().expect("building examples/go-orders (Go on PATH)");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("cellstack-bench-gateway-{port}"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _redis = Reap(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let mut policies = CellPolicies {
        version: "bench".into(),
        ..Default::default()
    };
    policies.tenants.insert(
        TenantId::parse(TENANT).expect("tenant id"),
        EffectivePolicy {
            policy: "bench".into(),
            fail_mode: FailMode::Open,
            shadow: false,
            limits: vec![EffectiveLimit {
                name: "requests".into(),
                algorithm: Algorithm::TokenBucket,
                requests: 1_000_000,
                period_ms: 1000,
                burst: 1_000_000,
                methods: vec![],
                path_prefix: None,
            }],
            request_priority: Default::default(),
        },
    );
    let policy_file = dir.join("policies.json");
    std::fs::write(&policy_file, serde_json::to_vec(&policies).expect("json")).expect("policies");
    let (api, admin, state, service) = (free_port(), free_port(), free_port(), free_port());
    let _cell = Reap(
        Command::new(env!("CARGO_BIN_EXE_cellstack-cell"))
            .args(["--redis-url", &format!("redis://127.0.0.1:{port}")])
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--state-listen", &format!("127.0.0.1:{state}")])
            .args([
                "--service",
                &format!("name=orders,port={service},health=/healthz"),
            ])
            .arg("--admin-token-file")
            .arg(&token)
            .arg("--policy-file")
            .arg(&policy_file)
            .args(["--drain-delay-secs", "0", "--shed-initial-limit", "1024"])
            .env("CELLSTACK_LOG", "warn")
            .spawn()
            .expect("cellstack-cell"),
    );
    let _go = Reap(
        Command::new(go)
            .args(["-listen", &format!("127.0.0.1:{service}")])
            .args(["-state", &format!("http://127.0.0.1:{state}")])
            .stderr(Stdio::null())
            .spawn()
            .expect("go-orders"),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the cell did not get ready (Redis, service)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = TenantRecord::new(TenantState::Active, 1, None);
    let res = http
        .put(format!(
            "http://127.0.0.1:{admin}/admin/v1/tenants/{TENANT}"
        ))
        .bearer_auth(TOKEN)
        .json(&record)
        .send()
        .await
        .expect("admin API");
    assert!(
        res.status().is_success(),
        "creating the tenant: {}",
        res.status()
    );

    let direct = format!("http://127.0.0.1:{service}");
    let gateway = format!("http://127.0.0.1:{api}");
    let order = serde_json::json!({"item": "bench", "quantity": 1});
    // The order the reads fetch, and a warm-up of every path.
    let created = http
        .post(format!("{gateway}/orders"))
        .header(header::TENANT, TENANT)
        .json(&order)
        .send()
        .await
        .expect("first order");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    for base in [&direct, &gateway] {
        for _ in 0..200 {
            let _ = http
                .get(format!("{base}/orders/1"))
                .header(header::TENANT, TENANT)
                .send()
                .await;
        }
    }

    type Path = (&'static str, reqwest::Method, &'static str);
    let paths: [Path; 2] = [
        ("read  GET /orders/1", reqwest::Method::GET, "/orders/1"),
        ("write POST /orders", reqwest::Method::POST, "/orders"),
    ];
    println!();
    println!(
        "the cell runtime as a gateway: the Go example called directly vs through the runtime"
    );
    println!(
        "(one client, one request at a time, {ROUNDS} interleaved rounds of {PER_ROUND} per path)"
    );
    for (label, method, path) in paths {
        let (mut p50s, mut p99s) = ((vec![], vec![]), (vec![], vec![]));
        let mut ratio50 = vec![];
        let mut ratio99 = vec![];
        for r in 0..ROUNDS {
            let request = |base: &str| {
                let (base, method, order) = (base.to_owned(), method.clone(), order.clone());
                move |http: &reqwest::Client| {
                    let req = http
                        .request(method.clone(), format!("{base}{path}"))
                        .header(header::TENANT, TENANT);
                    if method == reqwest::Method::POST {
                        req.json(&order)
                    } else {
                        req
                    }
                }
            };
            // Alternate which goes first, so neither always runs on a warmer machine.
            let (d, g) = if r % 2 == 0 {
                let d = round(&http, request(&direct)).await;
                (d, round(&http, request(&gateway)).await)
            } else {
                let g = round(&http, request(&gateway)).await;
                (round(&http, request(&direct)).await, g)
            };
            let (d50, d99, g50, g99) = (
                ms(percentile(&d, 0.5)),
                ms(percentile(&d, 0.99)),
                ms(percentile(&g, 0.5)),
                ms(percentile(&g, 0.99)),
            );
            println!(
                "  {label} round {}: direct p50 {d50:.3} p99 {d99:.3} ms | through the runtime p50 {g50:.3} p99 {g99:.3} ms",
                r + 1
            );
            p50s.0.push(d50);
            p50s.1.push(g50);
            p99s.0.push(d99);
            p99s.1.push(g99);
            ratio50.push(g50 / d50);
            ratio99.push(g99 / d99);
        }
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.2}-{hi:.2}")
        };
        println!(
            "  {label}: medians direct p50 {:.3} p99 {:.3} ms, through the runtime p50 {:.3} p99 {:.3} ms; added p50 {:.3} ms",
            median(p50s.0.clone()),
            median(p99s.0.clone()),
            median(p50s.1.clone()),
            median(p99s.1.clone()),
            median(p50s.1.clone()) - median(p50s.0.clone()),
        );
        println!(
            "  {label}: ratio through/direct p50 {:.2} (rounds {}), p99 {:.2} (rounds {})",
            median(ratio50.clone()),
            spread(&ratio50),
            median(ratio99.clone()),
            spread(&ratio99)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
