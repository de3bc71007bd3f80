//! Benchmark: authoritative rate-limit checks per second on one Redis, next to redis-benchmark's
//! `INCR` on the same machine and Redis at the same concurrency; the checks' latency; how many
//! more than the limit they granted under contention; and the admission path's latency through
//! a real `cellstack-cell` process. Prints a table; run with `cargo bench -p cellstack-cell
//! --bench limits` (or `bench/cell-limits.sh`).
//!
//! Throughput: `ROUNDS` interleaved rounds (each: redis-benchmark INCR, the cell's checks as
//! shipped — coalesced, `crate::limit_batch` — and one check per call), medians compared, and
//! the spread (lowest-highest) of each. Same concurrency everywhere: 50 redis-benchmark clients,
//! 50 tasks checking. The cell's figure goes through the `LimitBatcher` and `Store` (timeout,
//! breaker, connection manager, the script), i.e. what a request pays.
//!
//! Accuracy: 50 tasks check one tenant's token bucket (2,000/s with a burst of 100, then
//! 20,000/s with a burst of 200: a tenth of the checks' own rate, so most calls mix grants and
//! refusals) as fast as they can for 3 s; the most the bucket allows over the run, timed by
//! Redis's own clock (`TIME` before the first check and after the last), is
//! `rate × elapsed + burst`, and the over-grant is what was granted beyond that. (The sliding
//! window is exact to a tenth of its period by construction, so it has no such exact bound.)

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
    limit_batch::{BatchSettings, LimitBatcher},
    metrics::Metrics,
    scripts,
    store::{LimitCheck, Store, StoreOptions},
};
use cellstack_testkit::{ports::free_port, process::Reap};

const CONCURRENCY: usize = 50;
const SECONDS: u64 = 5;
const ROUNDS: usize = 3;

fn redis_benchmark(port: u16, args: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &CONCURRENCY.to_string(),
            "-n",
            "300000",
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

fn limit(algorithm: Algorithm, requests: u32, burst: u32) -> EffectiveLimit {
    EffectiveLimit {
        name: "requests".into(),
        algorithm,
        requests,
        period_ms: 1000,
        burst,
        methods: vec![],
        path_prefix: None,
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median and the lowest and highest of `xs`.
fn spread(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// What `CONCURRENCY` tasks checking as fast as they can for `seconds` got.
struct Run {
    checks_per_second: f64,
    granted: u64,
    latencies: Vec<Duration>,
}

/// `CONCURRENCY` tasks checking through `batcher` for `seconds`, each as its own tenant or all
/// as one (`shared`).
async fn hammer(batcher: &LimitBatcher, l: &EffectiveLimit, seconds: u64, shared: bool) -> Run {
    let (done, granted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CONCURRENCY {
        let (batcher, done, granted, l) =
            (batcher.clone(), done.clone(), granted.clone(), l.clone());
        let tenant = if shared {
            "bench-shared".to_owned()
        } else {
            format!("bench-{t}")
        };
        tasks.spawn(async move {
            let check =
                LimitCheck::new(&TenantKeys::new(&TenantId::parse(&tenant).unwrap()), &[&l]);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let decision = batcher.check(check.clone()).await.expect("limit check");
                latencies.push(started.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
                if decision.allowed {
                    granted.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(mine) = tasks.join_next().await {
        latencies.extend(mine.expect("checking task"));
    }
    Run {
        checks_per_second: done.load(Ordering::Relaxed) as f64 / seconds as f64,
        granted: granted.load(Ordering::Relaxed),
        latencies,
    }
}

/// Redis's clock, in milliseconds.
async fn redis_now(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s as f64 * 1e3 + us as f64 / 1e3
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
    let metrics = Arc::new(Metrics::new(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let store = loop {
        match Store::connect(
            &StoreOptions::url(&url, Duration::from_millis(500)),
            Breaker::new(1, Duration::from_secs(1)),
            metrics.clone(),
        )
        .await
        {
            Ok(s) => break Arc::new(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let shipped = LimitBatcher::spawn(store.clone(), BatchSettings::default(), metrics.clone());
    let alone = LimitBatcher::spawn(
        store.clone(),
        BatchSettings {
            max_batch: 1,
            in_flight: CONCURRENCY,
            ..BatchSettings::default()
        },
        metrics.clone(),
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(scripts::RATE_LIMIT_SOURCE)
        .query_async(&mut conn)
        .await
        .unwrap();
    let sha = scripts::RATE_LIMIT.get_hash().to_owned();
    // redis-benchmark running the very script, one check per call.
    let evalsha = redis_benchmark(
        port,
        &[
            "evalsha",
            &sha,
            "1",
            "cs:{bench}:rl:requests",
            "1",
            "1",
            "tb",
            "1000000",
            "1000",
            "1000000",
        ],
    );

    // Throughput, interleaved.
    let open = limit(Algorithm::TokenBucket, 1_000_000, 1_000_000);
    let (mut incr, mut batched, mut single) = (Vec::new(), Vec::new(), Vec::new());
    let (mut batched_lat, mut single_lat) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Each round starts one target later, so none always runs first.
        for step in 0..3 {
            match (round + step) % 3 {
                0 => incr.push(redis_benchmark(port, &["-t", "incr"])),
                1 => {
                    let run = hammer(&shipped, &open, SECONDS, false).await;
                    batched.push(run.checks_per_second);
                    batched_lat.extend(run.latencies);
                }
                _ => {
                    let run = hammer(&alone, &open, SECONDS, false).await;
                    single.push(run.checks_per_second);
                    single_lat.extend(run.latencies);
                }
            }
        }
    }

    // Accuracy under contention: every task on one tenant's limit.
    let mut accuracy = Vec::new();
    for (name, l) in [
        (
            "token bucket 2000/s, burst 100",
            limit(Algorithm::TokenBucket, 2_000, 100),
        ),
        (
            "token bucket 20000/s, burst 200",
            limit(Algorithm::TokenBucket, 20_000, 200),
        ),
        // A burst shorter than the time between clumps of checks: grants less than its rate
        // (docs/cell.md), never more.
        (
            "token bucket 20000/s, burst 10",
            limit(Algorithm::TokenBucket, 20_000, 10),
        ),
    ] {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let from = redis_now(&mut conn).await;
        let run = hammer(&shipped, &l, 3, true).await;
        let to = redis_now(&mut conn).await;
        let elapsed_ms = to - from;
        // GCRA: one emission interval per grant, `burst` of them ahead at most.
        let allowed = f64::from(l.requests) * elapsed_ms / 1000.0 + f64::from(l.burst);
        let over = (run.granted as f64 - allowed).max(0.0) / allowed * 100.0;
        accuracy.push((name, run.granted, allowed, over, run.checks_per_second));
    }

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
            limits: vec![open.clone()],
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

    let (incr_med, incr_lo, incr_hi) = spread(&incr);
    let (b_med, b_lo, b_hi) = spread(&batched);
    let (s_med, s_lo, s_hi) = spread(&single);
    let ratios: Vec<f64> = batched.iter().zip(&incr).map(|(b, i)| b / i).collect();
    let (r_med, r_lo, r_hi) = spread(&ratios);
    println!();
    println!(
        "cellstack cell: rate limiting on one Redis ({CONCURRENCY} concurrent clients, {ROUNDS} interleaved rounds of {SECONDS} s; median (lowest-highest))"
    );
    println!(
        "  redis-benchmark INCR                     {incr_med:>10.0} ops/s    ({incr_lo:.0}-{incr_hi:.0})"
    );
    println!("  redis-benchmark EVALSHA (our script)     {evalsha:>10.0} ops/s    (one run)");
    println!(
        "  cell checks, coalesced (as shipped)      {b_med:>10.0} checks/s ({b_lo:.0}-{b_hi:.0}), p50 {:.3} ms, p99 {:.3} ms over {} checks",
        ms(percentile(&mut batched_lat, 0.5)),
        ms(percentile(&mut batched_lat, 0.99)),
        batched_lat.len()
    );
    println!(
        "  cell checks, one per call                {s_med:>10.0} checks/s ({s_lo:.0}-{s_hi:.0}), p50 {:.3} ms, p99 {:.3} ms over {} checks",
        ms(percentile(&mut single_lat, 0.5)),
        ms(percentile(&mut single_lat, 0.99)),
        single_lat.len()
    );
    println!(
        "  ratio coalesced / redis-benchmark INCR   {r_med:>10.2}   ({r_lo:.2}-{r_hi:.2}; goal >= 1.0)"
    );
    println!(
        "  ratio one per call / INCR                {:>10.2}",
        s_med / incr_med
    );
    println!("accuracy: {CONCURRENCY} tasks on one tenant's limit for 3 s, coalesced");
    for (name, granted, allowed, over, rate) in &accuracy {
        println!(
            "  {name:<32} granted {granted} of the {allowed:.0} it allows ({:.1} %): over-grant {over:.2} % (goal <= 1 %), {rate:.0} checks/s",
            *granted as f64 / allowed * 100.0
        );
    }
    // The figures bench/all.sh tabulates.
    println!(
        "summary: key=limiter.checks_vs_incr value={r_med:.3} goal=>=1.0 what=limiter: coalesced checks/s / redis-benchmark INCR ({CONCURRENCY} clients)"
    );
    println!(
        "summary: key=limiter.checks_per_s value={b_med:.0} goal=- what=limiter: coalesced checks/s"
    );
    println!(
        "summary: key=limiter.p99_ms value={:.3} goal=- what=limiter: check p99 (ms), coalesced",
        ms(percentile(&mut batched_lat, 0.99))
    );
    let worst_over = accuracy.iter().map(|a| a.3).fold(0.0, f64::max);
    println!(
        "summary: key=limiter.overgrant_pct value={worst_over:.3} goal=<=1.0 what=limiter: over-grant under contention (%), worst bucket"
    );
    println!("admission path through cellstack-cell (whoami, one limit, 8 concurrent clients)");
    println!(
        "  throughput {rps:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
