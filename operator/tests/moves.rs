//! Tenant moves on the real cluster, with real cells (their pods and Redis), a real router
//! process reading the table the operator publishes, and a checker client writing
//! sequence-numbered items to the tenant through the router all along:
//! - a move under load ends on the target with every acknowledged write there, none of the
//!   writes acknowledged by the target on the source, and the write pause reported;
//! - the operator SIGKILLed at each step of a move (and started again) ends the move completed
//!   or rolled back, with no acknowledged write lost either way;
//! - a draining cell hands its tenants over one at a time, loses none of their writes, reports
//!   itself drained and can then be deleted.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{MoveStep, TenantAssignment};
use cellstack_e2e::cluster::{host_reaches_cluster_ips, poll};
use common::{
    TEST_LABEL, World, is_ready,
    traffic::{
        Ack, Checker, PRELOAD, Router, finished, items_in, move_of, no_write_lost, percentile,
        preload, retarget, setup,
    },
};
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;

#[tokio::test]
async fn a_tenant_moves_under_load_without_losing_an_acknowledged_write() {
    let mut world = World::new("op-move").await.expect("test world");
    let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
    let result = async {
        let (alpha, bravo, tenant, router) = setup(&mut world).await?;
        preload(&router, &tenant).await?;
        let checker = Checker::start(&router.url, &tenant, "w", 4, Duration::from_millis(5));
        poll("steady writes before the move", common::WAIT, || {
            let n = checker.acked();
            async move { Ok((n >= 100).then_some(())) }
        })
        .await?;
        let started = Instant::now();
        retarget(&world, &tenant, &bravo).await?;
        // Flipped but not yet cleaned up: the source still has its copy to compare.
        poll("the flip", common::WAIT, || async {
            let mv = move_of(&world, &tenant).await?;
            Ok(mv.filter(|m| m.to == bravo && matches!(m.step, MoveStep::Cleanup | MoveStep::Done)))
        })
        .await?;
        let moved_in = started.elapsed();
        let on_source = items_in(&world, &alpha, &tenant).await?;
        // Writes keep succeeding on the new cell.
        let before = checker.acked();
        poll("writes after the flip", common::WAIT, || {
            let n = checker.acked();
            async move { Ok((n >= before + 100).then_some(())) }
        })
        .await?;
        let (acks, refused) = checker.finish().await;
        let mv = finished(&world, &tenant, &bravo, None).await?;
        ensure!(mv.step == MoveStep::Done, "move ended {:?}: {:?}", mv.step, mv.message);

        no_write_lost(&world, &bravo, &tenant, &acks).await?;
        // Nothing the target acknowledged went to the source (it refused writes from Fence on).
        let leaked: Vec<&Ack> = acks
            .iter()
            .filter(|a| a.cell == bravo && on_source.contains(&a.item))
            .take(5)
            .collect();
        ensure!(leaked.is_empty(), "writes acknowledged by {bravo} found in {alpha}: {leaked:?}");
        ensure!(
            acks.iter().any(|a| a.cell == alpha) && acks.iter().any(|a| a.cell == bravo),
            "the checker saw both cells acknowledge writes"
        );
        ensure!(refused.is_empty(), "writes refused during the move: {refused:?}");
        // The source keeps only a `moved` record; its data is purged.
        ensure!(
            items_in(&world, &alpha, &tenant).await?.is_empty(),
            "the source still holds items after cleanup"
        );
        let ta = tenants.get(&tenant).await?;
        let status = ta.status.context("status")?;
        ensure!(
            status.cell.as_deref() == Some(bravo.as_str()) && status.epoch == 2,
            "status after the move: cell {:?}, epoch {}",
            status.cell,
            status.epoch
        );
        ensure!(
            mv.keys_copied >= PRELOAD && mv.keys_total >= PRELOAD,
            "progress: {} of {} keys",
            mv.keys_copied,
            mv.keys_total
        );
        let pause = mv.write_pause_millis.context("write pause recorded")?;
        let mut latencies: Vec<Duration> = acks.iter().map(|a| a.latency).collect();
        latencies.sort();
        eprintln!(
            "move under load: {} acknowledged writes ({} by {alpha}, {} by {bravo}), 0 lost; flip {:.2}s after the change; recorded write pause {pause} ms; write latency p50 {:?} p99 {:?} max {:?}; steps {:?}",
            acks.len(),
            acks.iter().filter(|a| a.cell == alpha).count(),
            acks.iter().filter(|a| a.cell == bravo).count(),
            moved_in.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
            mv.step_millis
        );
        tenants.delete(&tenant, &DeleteParams::default()).await?;
        Ok(())
    }
    .await;
    world.finish(result).await.expect("move under load");
}

#[tokio::test]
async fn an_operator_killed_at_each_step_resumes_or_rolls_back_without_losing_a_write() {
    let mut world = World::new("op-movekill").await.expect("test world");
    let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
    let result = async {
        let (alpha, bravo, tenant, router) = setup(&mut world).await?;
        preload(&router, &tenant).await?;
        let checker = Checker::start(&router.url, &tenant, "k", 4, Duration::from_millis(5));
        let mut last_started = None;
        let mut home = alpha.clone();
        let mut other = bravo.clone();
        let mut outcomes = Vec::new();
        let mut restarts = 0;
        for kill_at in [
            MoveStep::Prepare,
            MoveStep::Copy,
            MoveStep::Fence,
            MoveStep::Flip,
            MoveStep::Cleanup,
        ] {
            retarget(&world, &tenant, &other).await?;
            // Kill as soon as the record shows this step or a later one. On this small machine a
            // move may roll back by itself (its write pause outlasted the bound) before it gets
            // there: then wait for it to be retried, so that every step really is killed.
            let order = |s: MoveStep| match s {
                MoveStep::Prepare => 0,
                MoveStep::Copy => 1,
                MoveStep::Fence | MoveStep::CatchUp => 2,
                MoveStep::Flip => 3,
                MoveStep::Cleanup => 4,
                MoveStep::Done => 5,
                MoveStep::RollingBack | MoveStep::RolledBack => 6,
            };
            let mut seen = None;
            let deadline = Instant::now() + common::WAIT * 3;
            while seen.is_none() && Instant::now() < deadline {
                // A new move (not the record of the last one) that got this far.
                if let Some(mv) = move_of(&world, &tenant).await?
                    && mv.to == other
                    && mv.started_at != last_started
                {
                    if matches!(mv.step, MoveStep::RollingBack | MoveStep::RolledBack) {
                        eprintln!("the move rolled back by itself before {kill_at:?}: trying again");
                        last_started = mv.started_at.clone();
                        finished(&world, &tenant, &other, last_started.as_ref()).await?;
                    } else if order(mv.step) >= order(kill_at) && mv.step != MoveStep::Done {
                        seen = Some(mv.step);
                        last_started = mv.started_at.clone();
                    }
                }
                if seen.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let seen = seen.with_context(|| format!("the move never reached {kill_at:?}"))?;
            let leader = world.operators.len() - 1;
            world.operators[leader].kill().await;
            restarts += 1;
            world.start_operator(&format!("r{restarts}")).await?;
            let mv = finished(&world, &tenant, &other, last_started.as_ref()).await?;
            outcomes.push(format!("killed at {kill_at:?} (saw {seen:?}): {:?}", mv.step));
            if mv.step == MoveStep::Done {
                std::mem::swap(&mut home, &mut other);
            }
            // Whatever happened, every write acknowledged so far is where the tenant lives.
            let acks = checker.acks();
            no_write_lost(&world, &home, &tenant, &acks)
                .await
                .with_context(|| format!("after {}", outcomes.join("; ")))?;
            // Writes go on.
            let before = checker.acked();
            poll("writes after the restart", common::WAIT, || {
                let n = checker.acked();
                async move { Ok((n >= before + 20).then_some(())) }
            })
            .await?;
        }
        let (acks, refused) = checker.finish().await;
        no_write_lost(&world, &home, &tenant, &acks).await?;
        eprintln!(
            "operator killed mid-move: {}; {} acknowledged writes, 0 lost; refused (not acknowledged): {refused:?}",
            outcomes.join("; "),
            acks.len()
        );
        let _ = router;
        tenants.delete(&tenant, &DeleteParams::default()).await?;
        Ok(())
    }
    .await;
    world
        .finish(result)
        .await
        .expect("moves across operator kills");
}

#[tokio::test]
async fn a_draining_cell_hands_its_tenants_over_one_at_a_time_and_can_then_be_deleted() {
    let mut world = World::new("op-drain").await.expect("test world");
    let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
    let result = async {
        ensure!(
            host_reaches_cluster_ips(),
            "this test reads the cells' admin APIs from this host: the cluster's Service addresses must be reachable (e2e/cluster sets that up)"
        );
        // A short grace after each flip: the drain waits for one move to end before the next.
        world
            .operator_env
            .push(("CELLSTACK_MOVE_GRACE_SECS".into(), "2".into()));
        world.start_operator("a").await?;
        let spec = json!({"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}});
        let alpha = world.create_cell("alpha", spec.clone()).await?.name_any();
        world.wait_cell(&alpha, "Ready", is_ready).await?;
        // Placed automatically while alpha is the only cell.
        let names: Vec<String> = (0..3).map(|i| format!("{}-d{i}", world.id)).collect();
        for name in &names {
            let ta: TenantAssignment = serde_json::from_value(json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
                "metadata": {"name": name, "labels": {TEST_LABEL: world.id}},
                "spec": {"tenantId": name, "automatic": {}},
            }))?;
            tenants.create(&PostParams::default(), &ta).await?;
        }
        let router = Router::start(&world).await?;
        // Every tenant takes writes through the router all along.
        let mut checkers = Vec::new();
        for name in &names {
            let checker = Checker::start(&router.url, name, "w", 1, Duration::from_millis(20));
            poll(&format!("writes to {name}"), common::WAIT, || {
                let n = checker.acked();
                async move { Ok((n >= 20).then_some(())) }
            })
            .await
            .map_err(|e| e.context(router.log_tail()))?;
            checkers.push(checker);
        }
        let bravo = world.create_cell("bravo", spec).await?.name_any();
        world.wait_cell(&bravo, "Ready", is_ready).await?;

        // Watch the moves (every status write is an event, so no overlap goes unseen): never
        // more than one at a time out of alpha (the default --drain-concurrency), and in the
        // end every tenant on bravo with its move done. The watch is listed before the drain
        // starts.
        let selector = format!("{TEST_LABEL}={}", world.id);
        let mut events = Box::pin(watcher(tenants.clone(), watcher::Config::default().labels(&selector)));
        loop {
            match tokio::time::timeout(common::WAIT, events.next()).await {
                Ok(Some(Ok(watcher::Event::InitDone))) => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => anyhow::bail!("the TenantAssignment watch never listed"),
            }
        }
        world
            .cells_api()
            .patch(
                &alpha,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"draining": true}})),
            )
            .await?;
        let mut moving: BTreeSet<String> = BTreeSet::new();
        let mut arrived: BTreeSet<String> = BTreeSet::new();
        let mut seen_moving = BTreeSet::new();
        let mut most_at_once = 0;
        let deadline = Instant::now() + common::WAIT * 2;
        while arrived.len() < names.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, events.next())
                .await
                .with_context(|| format!("the drain did not finish; moves seen: {seen_moving:?}"))?
                .context("the TenantAssignment watch ended")??;
            let (watcher::Event::Apply(ta) | watcher::Event::InitApply(ta)) = event else {
                continue;
            };
            let name = ta.name_any();
            let status = ta.status.unwrap_or_default();
            let mv = status.move_.as_ref();
            if mv.is_some_and(|m| !matches!(m.step, MoveStep::Done | MoveStep::RolledBack)) {
                moving.insert(name.clone());
                seen_moving.insert(name.clone());
            } else {
                moving.remove(&name);
            }
            most_at_once = most_at_once.max(moving.len());
            if status.cell.as_deref() == Some(bravo.as_str())
                && mv.is_some_and(|m| m.step == MoveStep::Done)
            {
                arrived.insert(name);
            }
        }
        ensure!(
            most_at_once == 1,
            "moves out of the draining cell at once: at most {most_at_once}, expected 1"
        );
        for (name, checker) in names.iter().zip(checkers) {
            let (acks, _) = checker.finish().await;
            no_write_lost(&world, &bravo, name, &acks)
                .await
                .with_context(|| format!("tenant {name}"))?;
            ensure!(
                acks.iter().any(|a| a.cell == bravo),
                "tenant {name}: no write acknowledged by {bravo} after the drain"
            );
        }
        let drained = poll("alpha to report itself drained", common::WAIT, || async {
            let cell = world.cells_api().get(&alpha).await?;
            Ok(common::condition(&cell, "Drained")
                .filter(|(s, _)| s == "True")
                .map(|(_, message)| (cell, message)))
        })
        .await?;
        ensure!(
            drained.0.status.as_ref().is_some_and(|s| s.tenant_count == 0),
            "a drained cell still counts tenants: {:?}",
            drained.0.status
        );
        world
            .cells_api()
            .delete(&alpha, &DeleteParams::default())
            .await?;
        poll("the drained cell to be deleted", common::WAIT, || async {
            Ok(world.cells_api().get_opt(&alpha).await?.is_none().then_some(()))
        })
        .await?;
        eprintln!(
            "drain: {} tenants moved from {alpha} to {bravo}, at most {most_at_once} at a time, 0 writes lost; {alpha} Drained ({})",
            names.len(),
            drained.1
        );
        let _ = router;
        for name in &names {
            tenants.delete(name, &DeleteParams::default()).await?;
        }
        Ok(())
    }
    .await;
    world.finish(result).await.expect("drain");
}
