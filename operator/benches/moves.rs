//! Move benchmark on the local cluster: for tenants of each size (default 10k and 100k keys),
//! a few moves back and forth between two cells while a checker writes through the router,
//! printing the move's duration, the bulk copy rate (keys/s), the write pause the operator
//! recorded (Fence to Flip; a rolled-back move records none) and the write latency the checker
//! saw. Every move is reported, rolled-back ones included and counted; the pause summary is over
//! every move that recorded a pause. A percentile is only printed where the samples support it: p99 needs ≥ 100 moves
//! (`BENCH_MOVES=100`), with fewer the maximum is printed instead. Goals on this machine:
//! pause < 50 ms at the maximum of ≥ 10 moves (p99 with ≥ 100), copy ≥ 100k keys/s.
//!
//! Then a drain: `BENCH_DRAIN_TENANTS` tenants (default 10) of `BENCH_DRAIN_KEYS` keys each
//! (default 10k) in one cell, moved out all at once (`--drain-concurrency` as many) when it
//! drains, each under its own writer: the drain's total time and the worst write pause.
//!
//! Run through `bench/moves.sh` (release operator, router and cell images). Environment:
//! `BENCH_MOVE_SIZES` (comma-separated key counts, default `10000,100000`; empty: the drain
//! only), `BENCH_MOVES` (moves per size, default 5), `BENCH_DRAIN_TENANTS` (0 skips the drain),
//! `BENCH_DRAIN_KEYS`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{MoveStep, TenantAssignment};
use cellstack_testkit::cluster::poll;
use common::{
    TEST_LABEL, World, is_ready,
    traffic::{Checker, finished, first_write, move_of, percentile, retarget, setup},
};
use kube::{
    ResourceExt,
    api::{Api, DeleteParams, PostParams},
};
use serde_json::json;

/// Fewest samples a p99 is printed for.
const MIN_P99_SAMPLES: usize = 100;

struct Run {
    keys: u64,
    total: Duration,
    copy_rate: f64,
    pause: Option<Duration>,
    write_p99: Duration,
    write_max: Duration,
    result: MoveStep,
}

async fn bench_size(keys: u64, moves: usize) -> anyhow::Result<Vec<Run>> {
    let mut world = World::new("bench-move").await?;
    let mut runs = Vec::new();
    let result = async {
        let (alpha, bravo, tenant, router) = setup(&mut world).await?;
        let started = Instant::now();
        let loader = Checker::start(&router.url, &tenant, "pre", 32, Duration::ZERO);
        poll(
            &format!("{keys} keys written"),
            Duration::from_secs(1800),
            || {
                let n = loader.acked() as u64;
                async move { Ok((n >= keys).then_some(())) }
            },
        )
        .await?;
        let (loaded, refused) = loader.finish().await;
        ensure!(refused.is_empty(), "preload writes refused: {refused:?}");
        eprintln!(
            "[bench/moves] {} keys loaded in {:.1}s",
            loaded.len(),
            started.elapsed().as_secs_f64()
        );
        let (mut from, mut to) = (alpha, bravo);
        let mut last = None;
        for _ in 0..moves {
            let checker = Checker::start(&router.url, &tenant, "live", 4, Duration::from_millis(5));
            let began = Instant::now();
            retarget(&world, &tenant, &to).await?;
            let started_at = poll("the move to start", Duration::from_secs(60), || async {
                Ok(move_of(&world, &tenant)
                    .await?
                    .filter(|m| m.to == to && m.started_at != last)
                    .and_then(|m| m.started_at))
            })
            .await?;
            let mv = finished(&world, &tenant, &to, Some(&started_at)).await?;
            let total = began.elapsed();
            last = Some(started_at);
            let (acks, _) = checker.finish().await;
            let mut latencies: Vec<Duration> = acks.iter().map(|a| a.latency).collect();
            latencies.sort();
            let copy_ms = mv
                .step_millis
                .iter()
                .find(|d| d.step == MoveStep::Copy)
                .map_or(0, |d| d.millis);
            runs.push(Run {
                keys: mv.keys_copied,
                total,
                copy_rate: mv.keys_copied as f64 / (copy_ms.max(1) as f64 / 1000.0),
                pause: mv.write_pause_millis.map(Duration::from_millis),
                write_p99: percentile(&latencies, 0.99),
                write_max: latencies.last().copied().unwrap_or_default(),
                result: mv.step,
            });
            if mv.step == MoveStep::Done {
                std::mem::swap(&mut from, &mut to);
            }
        }
        Api::<TenantAssignment>::all(world.client.clone())
            .delete(&tenant, &DeleteParams::default())
            .await?;
        drop(router);
        Ok(())
    }
    .await;
    world.finish(result).await?;
    Ok(runs)
}

/// What a drain of `tenants` tenants at once came to.
struct Drain {
    total: Duration,
    pauses: Vec<Duration>,
    /// Moves rolled back (then tried again), of the last five of each tenant.
    rolled_back: usize,
    writes: usize,
    write_max: Duration,
}

/// `tenants` automatic tenants of `keys` keys each in one cell, drained into another with
/// `--drain-concurrency` = `tenants`, each tenant written to all along.
async fn bench_drain(tenants: usize, keys: u64) -> anyhow::Result<Drain> {
    let mut world = World::new("bench-drain").await?;
    let result = async {
        let concurrency = tenants.to_string();
        world.operator_env.extend([
            ("CELLSTACK_MOVE_RETRY_SECS".into(), "2".into()),
            ("CELLSTACK_DRAIN_CONCURRENCY".into(), concurrency),
        ]);
        world.start_operator("a").await?;
        let spec = json!({"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}});
        let alpha = world.create_cell("alpha", spec.clone()).await?.name_any();
        world.wait_cell(&alpha, "Ready", is_ready).await?;
        let api = Api::<TenantAssignment>::all(world.client.clone());
        let names: Vec<String> = (0..tenants).map(|i| format!("{}-d{i}", world.id)).collect();
        for name in &names {
            let ta: TenantAssignment = serde_json::from_value(json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
                "metadata": {"name": name, "labels": {TEST_LABEL: world.id}},
                "spec": {"tenantId": name, "automatic": {}},
            }))?;
            api.create(&PostParams::default(), &ta).await?;
        }
        let router = common::traffic::Router::start(&world).await?;
        for name in &names {
            first_write(&router, name).await?;
        }
        let loaders: Vec<Checker> = names
            .iter()
            .map(|n| Checker::start(&router.url, n, "pre", 4, Duration::ZERO))
            .collect();
        poll(
            "the drain's tenants preloaded",
            Duration::from_secs(1800),
            || {
                let done = loaders.iter().all(|l| l.acked() as u64 >= keys);
                async move { Ok(done.then_some(())) }
            },
        )
        .await?;
        for loader in loaders {
            let (_, refused) = loader.finish().await;
            ensure!(refused.is_empty(), "preload writes refused: {refused:?}");
        }
        let bravo = world.create_cell("bravo", spec).await?.name_any();
        world.wait_cell(&bravo, "Ready", is_ready).await?;
        let writers: Vec<Checker> = names
            .iter()
            .map(|n| Checker::start(&router.url, n, "live", 1, Duration::from_millis(10)))
            .collect();
        let began = Instant::now();
        world.drain_cell(&alpha).await?;
        let mut pauses = Vec::new();
        let mut rolled_back = 0;
        for name in &names {
            // A rolled-back move is tried again after 2 s; the drain ends with each on bravo.
            let mv = poll(
                &format!("{name} moved to {bravo}"),
                Duration::from_secs(1800),
                || async {
                    let mv = move_of(&world, name).await?;
                    Ok(mv.filter(|m| m.to == bravo && m.step == MoveStep::Done))
                },
            )
            .await?;
            pauses.extend(mv.write_pause_millis.map(Duration::from_millis));
            let recent = api.get(name).await?.status.map(|s| s.recent_moves);
            rolled_back += recent
                .unwrap_or_default()
                .iter()
                .filter(|m| m.result == MoveStep::RolledBack)
                .count();
        }
        let total = began.elapsed();
        let mut writes = 0;
        let mut write_max = Duration::ZERO;
        for writer in writers {
            let (acks, refused) = writer.finish().await;
            ensure!(
                refused.is_empty(),
                "writes refused during the drain: {refused:?}"
            );
            writes += acks.len();
            write_max = acks
                .iter()
                .map(|a| a.latency)
                .fold(write_max, Duration::max);
        }
        for name in &names {
            api.delete(name, &DeleteParams::default()).await?;
        }
        drop(router);
        Ok(Drain {
            total,
            pauses,
            rolled_back,
            writes,
            write_max,
        })
    }
    .await;
    let (result, drained) = match result {
        Ok(d) => (Ok(()), Some(d)),
        Err(e) => (Err(e), None),
    };
    world.finish(result).await?;
    drained.context("the drain ended without figures")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::var("BENCH_MOVE_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(str::trim)
        // Empty: no sizes, the drain only.
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .context("BENCH_MOVE_SIZES: comma-separated key counts")
        })
        .collect::<anyhow::Result<_>>()?;
    let moves: usize = std::env::var("BENCH_MOVES")
        .unwrap_or_else(|_| "5".into())
        .parse()
        .context("BENCH_MOVES: a number of moves")?;
    println!(
        "{:>8} {:>4} {:>9} {:>10} {:>12} {:>9} {:>9} {:>9} {:>11}",
        "keys", "move", "result", "duration", "copy keys/s", "pause", "write p99", "write max", ""
    );
    for keys in sizes {
        let runs = bench_size(keys, moves).await?;
        let mut pauses: Vec<Duration> = runs.iter().filter_map(|r| r.pause).collect();
        for (i, r) in runs.iter().enumerate() {
            println!(
                "{:>8} {:>4} {:>9} {:>9.2}s {:>12.0} {:>9} {:>7}ms {:>7}ms",
                r.keys,
                i + 1,
                format!("{:?}", r.result),
                r.total.as_secs_f64(),
                r.copy_rate,
                r.pause
                    .map_or_else(|| "-".to_owned(), |p| format!("{}ms", p.as_millis())),
                r.write_p99.as_millis(),
                r.write_max.as_millis(),
            );
        }
        pauses.sort();
        let done = runs.iter().filter(|r| r.result == MoveStep::Done).count();
        let rolled_back = runs
            .iter()
            .filter(|r| r.result == MoveStep::RolledBack)
            .count();
        let rates: Vec<f64> = runs.iter().map(|r| r.copy_rate).collect();
        let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let tail = if pauses.len() >= MIN_P99_SAMPLES {
            format!("p99 {} ms", percentile(&pauses, 0.99).as_millis())
        } else {
            format!(
                "max {} ms (a p99 needs ≥ {MIN_P99_SAMPLES} moves)",
                pauses.last().copied().unwrap_or_default().as_millis()
            )
        };
        println!(
            "{keys:>8} keys: {} moves: {done} done, {rolled_back} rolled back; write pause over the {} moves that recorded one: p50 {} ms, {tail} (goal < 50 ms); copy {:.0} keys/s mean (goal ≥ 100000)",
            runs.len(),
            pauses.len(),
            percentile(&pauses, 0.5).as_millis(),
            mean_rate
        );
        let (worst, worst_name) = if pauses.len() >= MIN_P99_SAMPLES {
            (percentile(&pauses, 0.99), "p99")
        } else {
            (pauses.last().copied().unwrap_or_default(), "max")
        };
        println!(
            "summary: key=moves.{keys}.pause_{worst_name}_ms value={} goal=<50 what=moves: {keys}-key tenant, write pause {worst_name} of {} moves (ms)",
            worst.as_millis(),
            pauses.len()
        );
        println!(
            "summary: key=moves.{keys}.copy_keys_per_s value={mean_rate:.0} goal=>=100000 what=moves: {keys}-key tenant, bulk copy keys/s (mean)"
        );
        println!(
            "summary: key=moves.{keys}.rolled_back value={rolled_back} goal=<=0 what=moves: {keys}-key tenant, moves rolled back of {}",
            runs.len()
        );
    }
    let drain_tenants: usize = std::env::var("BENCH_DRAIN_TENANTS")
        .unwrap_or_else(|_| "10".into())
        .parse()
        .context("BENCH_DRAIN_TENANTS: a number of tenants")?;
    let drain_keys: u64 = std::env::var("BENCH_DRAIN_KEYS")
        .unwrap_or_else(|_| "10000".into())
        .parse()
        .context("BENCH_DRAIN_KEYS: a number of keys")?;
    if drain_tenants > 0 {
        let mut d = bench_drain(drain_tenants, drain_keys).await?;
        d.pauses.sort();
        let worst = d.pauses.last().copied().unwrap_or_default();
        println!(
            "drain: {drain_tenants} tenants of {drain_keys} keys moved at once: {:.1} s in all, worst write pause {} ms over {} moves (p50 {} ms), {} moves rolled back (and tried again), {} writes acknowledged meanwhile (slowest {} ms)",
            d.total.as_secs_f64(),
            worst.as_millis(),
            d.pauses.len(),
            percentile(&d.pauses, 0.5).as_millis(),
            d.rolled_back,
            d.writes,
            d.write_max.as_millis()
        );
        println!(
            "summary: key=moves.drain_{drain_tenants}.total_s value={:.1} goal=- what=moves: drain of {drain_tenants} tenants x {drain_keys} keys at once, total s",
            d.total.as_secs_f64()
        );
        println!(
            "summary: key=moves.drain_{drain_tenants}.worst_pause_ms value={} goal=<50 what=moves: drain of {drain_tenants} at once, worst write pause (ms)",
            worst.as_millis()
        );
    }
    Ok(())
}
