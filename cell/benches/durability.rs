//! Benchmark: what durability costs a write through one cell (docs/durability.md). The same
//! `cellstack-cell` process and the same tenant writes (`PUT /v1/items/...`) against three
//! datastores, side by side in one run, in interleaved rounds:
//!
//! - `Ephemeral`: one Redis, append-only file with `appendfsync everysec`, no replica — what an
//!   `Ephemeral` cell runs (a crash can lose the last second, a lost pod loses everything);
//! - `appendfsync always`: one Redis that fsyncs its append-only file before each answer;
//! - `replica ack` (the default for `Persistent` cells): a primary and two replicas, each with
//!   `appendfsync everysec`, the primary with `min-replicas-to-write 1`, and the cell waiting for
//!   one replica (`WAIT 1`) before it acknowledges a write.
//!
//! Everything runs on this machine over loopback, so the replica's round trip is a loopback
//! one: on a real network add one network round trip per write. The Redis files go under the
//! cargo target directory (a disk, not a tmpfs: an fsync there is real).
//!
//! Prints, for each: the latency of one write at a time (p50/p99 of ≥ 1,000 writes per round)
//! and the throughput with 32 concurrent writers (median and spread of the rounds).
//! Run with `bench/durability.sh`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{PREFIX, TenantRecord, TenantState},
    wire::header,
};
use cellstack_testkit::ports::free_port;
use cellstack_testkit::process::Reap;

const ROUNDS: usize = 3;
const SERIAL: Duration = Duration::from_secs(3);
const CONCURRENT: Duration = Duration::from_secs(3);
const WRITERS: usize = 32;
const TENANT: &str = "bench-durability";
const TOKEN: &str = "bench-admin-token-0123456789";

fn redis(port: u16, dir: &Path, args: &[&str]) -> Reap {
    std::fs::create_dir_all(dir).expect("redis dir");
    Reap(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (bench/durability.sh installs it)"),
    )
}

async fn info_replication(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .ok()
}

/// One datastore and a cell in front of it.
struct Setup {
    name: &'static str,
    api: u16,
    _procs: Vec<Reap>,
}

impl Setup {
    async fn start(name: &'static str, dir: &Path) -> Setup {
        let primary = free_port();
        let mut procs = Vec::new();
        let acks = match name {
            "Ephemeral" => {
                procs.push(redis(primary, dir, &["--appendfsync", "everysec"]));
                0
            }
            "appendfsync always" => {
                procs.push(redis(primary, dir, &["--appendfsync", "always"]));
                0
            }
            _ => {
                procs.push(redis(
                    primary,
                    &dir.join("primary"),
                    &[
                        "--appendfsync",
                        "everysec",
                        "--min-replicas-to-write",
                        "1",
                        "--min-replicas-max-lag",
                        "10",
                    ],
                ));
                for r in 0..2 {
                    procs.push(redis(
                        free_port(),
                        &dir.join(format!("replica-{r}")),
                        &[
                            "--appendfsync",
                            "everysec",
                            "--replicaof",
                            "127.0.0.1",
                            &primary.to_string(),
                        ],
                    ));
                }
                1
            }
        };
        // Up, and with every replica online.
        let replicas = if acks == 0 { 0 } else { 2 };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let online = info_replication(primary)
                .await
                .map(|i| i.lines().filter(|l| l.contains("state=online")).count());
            if online == Some(replicas) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the datastore did not come up with {replicas} replicas online"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token file");
        let (api, admin) = (free_port(), free_port());
        procs.push(Reap(
            Command::new(env!("CARGO_BIN_EXE_cellstack-cell"))
                .args(["--redis-url", &format!("redis://127.0.0.1:{primary}")])
                .args(["--redis-write-acks", &acks.to_string()])
                .args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .arg("--admin-token-file")
                .arg(&token)
                .args(["--drain-delay-secs", "0"])
                .env("CELLSTACK_LOG", "warn")
                .spawn()
                .expect("cellstack-cell"),
        ));
        let http = reqwest::Client::new();
        let record = TenantRecord::new(TenantState::Active, 1, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let res = http
                .put(format!("http://127.0.0.1:{admin}{PREFIX}/{TENANT}"))
                .bearer_auth(TOKEN)
                .json(&record)
                .send()
                .await;
            if res.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the cell did not take the tenant's record"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Setup {
            name,
            api,
            _procs: procs,
        }
    }

    /// Writes from `writers` tasks for `run`: every acknowledged write's latency, and the
    /// number of writes that were not acknowledged.
    async fn write(&self, writers: usize, run: Duration) -> (Vec<Duration>, u64) {
        let http = reqwest::Client::new();
        let seq = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + run;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let (http, seq, failed, api) = (http.clone(), seq.clone(), failed.clone(), self.api);
            tasks.spawn(async move {
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let res = http
                        .put(format!("http://127.0.0.1:{api}/v1/items/k{n}"))
                        .header(header::TENANT, TENANT)
                        .body(format!("value {n}"))
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status().is_success() => mine.push(started.elapsed()),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                mine
            });
        }
        let mut all = Vec::new();
        while let Some(mine) = tasks.join_next().await {
            all.extend(mine.expect("writer task"));
        }
        (all, failed.load(Ordering::Relaxed))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default)]
struct Figures {
    serial: Vec<Duration>,
    throughput: Vec<f64>,
    failed: u64,
}

#[tokio::main]
async fn main() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-durability-{}", std::process::id()));
    let names = ["Ephemeral", "appendfsync always", "replica ack"];
    let mut setups = Vec::new();
    for (i, name) in names.iter().enumerate() {
        setups.push(Setup::start(name, &root.join(i.to_string())).await);
    }
    let mut figures: Vec<Figures> = names.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        // Interleaved, and each round starts with another setup.
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let setup = &setups[i];
            let (serial, failed) = setup.write(1, SERIAL).await;
            let (concurrent, failed_c) = setup.write(WRITERS, CONCURRENT).await;
            let f = &mut figures[i];
            f.serial.extend(serial);
            f.throughput
                .push(concurrent.len() as f64 / CONCURRENT.as_secs_f64());
            f.failed += failed + failed_c;
            eprintln!(
                "round {}: {:<20} {:>8.0} writes/s with {WRITERS} writers",
                round + 1,
                setup.name,
                concurrent.len() as f64 / CONCURRENT.as_secs_f64()
            );
        }
    }
    drop(setups);
    let _ = std::fs::remove_dir_all(&root);

    println!();
    println!(
        "cellstack cell: the cost of durability per write ({ROUNDS} interleaved rounds; Redis files \
         under {})",
        root.parent()
            .map_or_else(String::new, |p| p.display().to_string())
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>8}   {:>16} {:>18} {:>12}",
        "datastore",
        "p50 ms",
        "p99 ms",
        "samples",
        "writes/s (32 w.)",
        "rounds min-max",
        "not acked"
    );
    let base = {
        let mut t = figures[0].throughput.clone();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    for (name, f) in names.iter().zip(&mut figures) {
        f.serial.sort_unstable();
        f.throughput.sort_by(f64::total_cmp);
        let median = f.throughput[f.throughput.len() / 2];
        println!(
            "  {:<20} {:>10.3} {:>10.3} {:>8}   {:>16.0} {:>8.0}-{:<9.0} {:>12}   ({:.2}x Ephemeral's throughput)",
            name,
            ms(percentile(&f.serial, 0.5)),
            ms(percentile(&f.serial, 0.99)),
            f.serial.len(),
            median,
            f.throughput[0],
            f.throughput[f.throughput.len() - 1],
            f.failed,
            median / base
        );
    }
    println!(
        "  (p50/p99: one write at a time; writes/s: median of the rounds with {WRITERS} concurrent writers)"
    );
}
