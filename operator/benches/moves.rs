//! Move benchmark on the local cluster: for tenants of each size (default 10k and 100k keys),
//! a few moves back and forth between two cells while a checker writes through the router,
//! printing the move's duration, the bulk copy rate (keys/s), the write pause the operator
//! recorded (Fence to Flip; a rolled-back move records none) and the write latency the checker
//! saw. Every move is reported, rolled-back ones included and counted; the pause summary is over
//! every move that recorded a pause. A percentile is only printed where the samples support it: p99 needs ≥ 100 moves
//! (`BENCH_MOVES=100`), with fewer the maximum is printed instead. Goals on this machine:
//! pause p99 < 100 ms, copy ≥ 20k keys/s.
//!
//! Run through `bench/moves.sh` (release operator, router and cell images). Environment:
//! `BENCH_MOVE_SIZES` (comma-separated key counts, default `10000,100000`), `BENCH_MOVES`
//! (moves per size, default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{MoveStep, TenantAssignment};
use cellstack_testkit::cluster::poll;
use common::{
    World,
    traffic::{Checker, finished, move_of, percentile, retarget, setup},
};
use kube::api::{Api, DeleteParams};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::var("BENCH_MOVE_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
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
            "{keys:>8} keys: {} moves: {done} done, {rolled_back} rolled back; write pause over the {} moves that recorded one: p50 {} ms, {tail} (goal p99 < 100 ms); copy {:.0} keys/s mean (goal ≥ 20000)",
            runs.len(),
            pauses.len(),
            percentile(&pauses, 0.5).as_millis(),
            mean_rate
        );
    }
    Ok(())
}
