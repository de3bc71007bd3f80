//! Benchmark: authoritative rate-limit checks per second on one Redis, next to redis-benchmark's
//! own figures on the same machine and Redis, and the admission path's latency through a real
//! `cellstack-cell` process. Prints a table; run with `cargo bench -p cellstack-cell` (or
//! `bench/cell-limits.sh`).
//!
//! Same concurrency for both (50 connections/tasks): redis-benchmark with 50 clients runs the
//! very script the cell runs, via EVALSHA; the cell's figure goes through its `Store` (timeout,
//! breaker, connection manager), i.e. what a request pays.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    keys::TenantKeys,
    policy::{CellPolicies, EffectiveLimit, EffectivePolicy},
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode},
    wire::header,
};
use cellstack_cell::{
    breaker::Breaker,
    metrics::Metrics,
    scripts,
    store::{Store, StoreOptions},
};

const CONCURRENCY: usize = 50;
const SECONDS: u64 = 5;

use cellstack_testkit::ports::free_port;

fn redis_benchmark(port: u16, args: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &CONCURRENCY.to_string(),
            "-n",
            "200000",
            "-q",
        ])
        .args(args)
        .output()
        .expect("redis-benchmark (Debian redis-tools) on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    // "<command>: 123456.79 requests per second, p50=0.199 msec" (progress lines are
    // \r-separated; the command itself may contain colons).
    text.split(['\r', '\n'])
        .filter_map(|l| {
            l.split(" requests per second")
                .next()
                .filter(|_| l.contains(" requests per second"))
        })
        .filter_map(|head| head.rsplit(' ').next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("cannot read redis-benchmark output: {text}"))
}

/// Kills a child process when dropped, so a failing benchmark leaves nothing running.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn limit() -> EffectiveLimit {
    EffectiveLimit {
        name: "requests".into(),
        algorithm: Algorithm::TokenBucket,
        requests: 1_000_000,
        period_ms: 1000,
        burst: 1_000_000,
        methods: vec![],
        path_prefix: None,
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("cellstack-bench-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _redis = Reap(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let store = loop {
        match Store::connect(
            &StoreOptions::url(&url, Duration::from_millis(500)),
            Breaker::new(1, Duration::from_secs(1)),
            Arc::new(Metrics::new(
                &mut prometheus_client::registry::Registry::default(),
            )),
        )
        .await
        {
            Ok(s) => break Arc::new(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };

    // redis-benchmark's own figures.
    let incr = redis_benchmark(port, &["-t", "incr"]);
    let sha = scripts::RATE_LIMIT.get_hash().to_owned();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(scripts::RATE_LIMIT_SOURCE)
        .query_async(&mut conn)
        .await
        .unwrap();
    let evalsha = redis_benchmark(
        port,
        &[
            "evalsha",
            &sha,
            "1",
            "cs:{bench}:rl:requests",
            "tb",
            "1000000",
            "1000",
            "1000000",
        ],
    );

    // The cell's authoritative checks through its Store, same concurrency.
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CONCURRENCY {
        let (store, done) = (store.clone(), done.clone());
        tasks.spawn(async move {
            let keys = TenantKeys::new(&TenantId::parse(&format!("bench-{t}")).unwrap());
            let l = limit();
            while Instant::now() < deadline {
                store.rate_limit(&keys, &[&l]).await.expect("limit check");
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let checks = done.load(Ordering::Relaxed) as f64 / SECONDS as f64;

    // The admission path through a real cell process.
    let token = dir.join("token");
    std::fs::write(&token, "bench-admin-token-0123456789").unwrap();
    let tenant = "bench-tenant";
    let mut policies = CellPolicies {
        version: "bench".into(),
        ..Default::default()
    };
    policies.tenants.insert(
        TenantId::parse(tenant).unwrap(),
        EffectivePolicy {
            policy: "bench".into(),
            fail_mode: FailMode::Open,
            shadow: false,
            limits: vec![limit()],
            request_priority: Default::default(),
        },
    );
    let policy_file = dir.join("policies.json");
    std::fs::write(&policy_file, serde_json::to_vec(&policies).unwrap()).unwrap();
    let (api, admin) = (free_port(), free_port());
    let _cell = Reap(
        Command::new(env!("CARGO_BIN_EXE_cellstack-cell"))
            .args([
                "--redis-url",
                &url,
                "--listen",
                &format!("127.0.0.1:{api}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
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
    let http = reqwest::Client::new();
    while http
        .get(format!("http://127.0.0.1:{admin}/livez"))
        .send()
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = TenantRecord::new(TenantState::Active, 1, None);
    http.put(format!(
        "http://127.0.0.1:{admin}/admin/v1/tenants/{tenant}"
    ))
    .bearer_auth("bench-admin-token-0123456789")
    .json(&record)
    .send()
    .await
    .unwrap();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, latencies) = (http.clone(), latencies.clone());
        tasks.spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let res = http
                    .get(format!("http://127.0.0.1:{api}/v1/whoami"))
                    .header(header::TENANT, tenant)
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success(), "{}", res.status());
                mine.push(t.elapsed());
            }
            latencies.lock().unwrap().extend(mine);
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut samples = std::mem::take(&mut *latencies.lock().unwrap());
    let rps = samples.len() as f64 / SECONDS as f64;
    let (p50, p99) = (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    );

    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "cellstack cell: rate limiting on one Redis ({CONCURRENCY} concurrent clients, {SECONDS} s)"
    );
    println!("  redis-benchmark INCR                     {incr:>12.0} ops/s");
    println!("  redis-benchmark EVALSHA (our script)     {evalsha:>12.0} ops/s");
    println!("  cell authoritative checks (Store)        {checks:>12.0} checks/s");
    println!(
        "  ratio cell / redis-benchmark EVALSHA     {:>12.2}   (goal >= 0.5)",
        checks / evalsha
    );
    println!(
        "  ratio cell / redis-benchmark INCR        {:>12.2}",
        checks / incr
    );
    println!("admission path through cellstack-cell (whoami, one limit, 8 concurrent clients)");
    println!(
        "  throughput {rps:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
