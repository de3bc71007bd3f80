//! Cells in two real clusters: the cluster in `KUBECONFIG` (the management cluster, where a real
//! `cellstack-operator` runs with `--multicluster --internal-tls`) and a second one with nodes
//! of its own, peered with it (`e2e/cluster` index 1, `CELLSTACK_E2E_MEMBER_*`; the full tier of
//! `e2e/test-all` boots it). The operator acts in the member as the chart's member mode lets it
//! (its remote ServiceAccount's token), and a real `cellstack-router` on the host serves the
//! management cluster's table:
//!
//! - a cell in each cluster becomes Ready; the member's lanes are published at node ports of
//!   the member's nodes, the certificate verified against the release's CA;
//! - a tenant in each cell takes writes through the router;
//! - a tenant moved from the management cluster's cell to the member's, under a
//!   sequence-numbered writer, loses no acknowledged write (its write pause printed); then, in
//!   turns, moves within the first cluster and across clusters, each losing and refusing no
//!   write, their write pauses printed side by side;
//! - the member's API server stopped (SIGSTOP): the member's cell goes on taking the tenant's
//!   writes (none refused, none lost), the Cell goes `Unknown`, and once the API server is
//!   continued the cell leaves `Unknown` with every object of its stack in the member as it was
//!   (same uids: nothing deleted or re-created);
//! - the management cluster's API server stopped for 60 s: a router reading the member's own
//!   API server (the table mirrored there) and the host's router (from memory, then, started
//!   again 20 s into the outage, from its last-known-good copy on disk) serve a tenant in each
//!   cluster without one refused or lost write.

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{CellPhase, MoveStep, TenantAssignment};
use cellstack_testkit::cluster::poll;
use common::{
    TEST_LABEL, World, is_ready,
    members::{Stopped, register_member, stack_in},
    router_tls::RouterTls,
    traffic::{Checker, Router, finished, first_write, percentile, retarget},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

/// The member's routers' namespace.
const MEMBER_SYSTEM_NAMESPACE: &str = "cellstack-system";
/// How long the management cluster's API server is stopped (the issue's 60 s).
const MANAGEMENT_OUTAGE: Duration = Duration::from_secs(60);
/// When, into that outage, the host's router is started again.
const MANAGEMENT_RESTART_AT: Duration = Duration::from_secs(20);

/// The second cluster's admin kubeconfig, as `e2e/cluster env --prefix MEMBER_` exports it.
fn member_kubeconfig() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CELLSTACK_E2E_MEMBER_KUBECONFIG").context(
        "CELLSTACK_E2E_MEMBER_KUBECONFIG is not set: this test needs a second cluster peered with \
         the first (e2e/test-all --full boots one; by hand: docs/local-cluster.md, \"A second \
         cluster\", then eval \"$(... e2e/cluster env --prefix MEMBER_)\")",
    )?;
    Ok(PathBuf::from(path))
}

/// The pid of an API server, from the file environment variable `var` names (`e2e/cluster env`,
/// with `--prefix MEMBER_` for the second cluster).
fn apiserver_pid(var: &str) -> anyhow::Result<i32> {
    let file = std::env::var(var)
        .with_context(|| format!("{var} is not set (e2e/cluster env [--prefix MEMBER_])"))?;
    std::fs::read_to_string(&file)
        .with_context(|| format!("reading {file}"))?
        .trim()
        .parse()
        .with_context(|| format!("{file} holds no pid"))
}

async fn client_of(path: &PathBuf) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full tier (e2e/test-all --full): needs a second cluster with nodes, peered with the \
            first (CELLSTACK_E2E_MEMBER_KUBECONFIG)"]
async fn cells_in_two_clusters_move_a_tenant_across_without_a_lost_write_and_serve_through_either_api_server_stopping()
-> anyhow::Result<()> {
    let mut world = World::new("op-xcells").await?;
    let result = scenario(&mut world).await;
    world.finish(result).await
}

async fn scenario(world: &mut World) -> anyhow::Result<()> {
    let member_path = member_kubeconfig()?;
    let member_client = client_of(&member_path).await?;
    // Every address of both clusters' node networks (10.243.<k>.0/24: the nodes, and the host's
    // address on each bridge, where this test's operator and router run).
    let env = [
        ("CELLSTACK_MULTICLUSTER", "true"),
        ("CELLSTACK_INTERNAL_TLS", "true"),
        ("CELLSTACK_CROSS_CLUSTER_SOURCES", "10.243.0.0/16"),
        ("CELLSTACK_MOVE_RETRY_SECS", "2"),
    ];
    world.start_operator_with("x", &env).await?;
    let member = register_member(
        world,
        &member_client,
        &member_path,
        MEMBER_SYSTEM_NAMESPACE,
        true,
    )
    .await?;

    let ephemeral = json!({ "managed": { "storage": "Ephemeral" } });
    let near = world
        .create_cell("near", json!({ "lanes": 1, "datastore": ephemeral }))
        .await?
        .name_any();
    // A second cell in the first cluster: moves within one cluster, for the comparison.
    let other = world
        .create_cell("other", json!({ "lanes": 1, "datastore": ephemeral }))
        .await?
        .name_any();
    let far = world
        .create_cell(
            "far",
            json!({ "cluster": member, "lanes": 1, "datastore": ephemeral }),
        )
        .await?
        .name_any();
    for name in [&near, &other, &far] {
        world.wait_cell(name, "Ready", is_ready).await?;
    }
    let far_cell = world.cells_api().get(&far).await?;
    let published = far_cell
        .status
        .as_ref()
        .map(|s| s.cross_cluster_endpoints.clone())
        .unwrap_or_default();
    ensure!(
        published.len() == 1 && published.iter().all(|a| a.starts_with("10.243.1.")),
        "the member's lane is published at a node port of the member's nodes: {published:?}"
    );

    // A router on the host, trusting the release's CA and presenting its client certificate
    // (the member's lanes ask for one), serving the management cluster's table (the member's
    // cell at its node port).
    let tls = RouterTls::read(&world.client, &world.system.name, &world.id).await?;
    let router = Router::start_with(world, &tls.args()).await?;

    // A tenant in each cell takes writes.
    let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
    let mover = format!("{}-m", world.id);
    let resident = format!("{}-r", world.id);
    let local = format!("{}-l", world.id);
    for (tenant, cell) in [(&mover, &near), (&resident, &far), (&local, &near)] {
        let ta: TenantAssignment = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": {"name": tenant, "labels": {TEST_LABEL: world.id}},
            "spec": {"tenantId": tenant, "cell": cell},
        }))?;
        tenants.create(&PostParams::default(), &ta).await?;
    }
    first_write(&router, &resident).await?;
    first_write(&router, &mover).await?;
    first_write(&router, &local).await?;
    eprintln!("a tenant in each cluster takes writes through the router ({far} at {published:?})");

    // The move across clusters, under a sequence-numbered writer.
    let first = move_under_load(
        world,
        &router,
        &mover,
        (&near, &world.client),
        (&far, &member_client),
        "w",
    )
    .await?;
    let mut latencies: Vec<Duration> = first.acks.iter().map(|a| a.latency).collect();
    latencies.sort();
    eprintln!(
        "move across clusters under load: {} acknowledged writes ({} by {near}, {} by {far} in the member), 0 lost; done {:.2}s after the change; write pause {} ms; write latency p50 {:?} p99 {:?}; steps {:?}",
        first.acks.len(),
        first.acks.iter().filter(|a| a.cell == near).count(),
        first.acks.iter().filter(|a| a.cell == far).count(),
        first.took.as_secs_f64(),
        first.pause_ms,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        first.steps
    );

    // The write pause across clusters against within one, measured in turns: a second tenant
    // goes back and forth between the first cluster's two cells while the mover goes back and
    // forth between the clusters, one move at a time.
    let (mut within, mut across) = (Vec::new(), Vec::new());
    let sides = [(&near, &world.client), (&far, &member_client)];
    let pair = [(&near, &world.client), (&other, &world.client)];
    for round in 0..PAUSE_ROUNDS {
        let (from, to) = (pair[round % 2], pair[(round + 1) % 2]);
        let tag = format!("i{round}");
        within.push(
            move_under_load(world, &router, &local, from, to, &tag)
                .await?
                .pause_ms,
        );
        let (from, to) = (sides[(round + 1) % 2], sides[round % 2]);
        let tag = format!("x{round}");
        across.push(
            move_under_load(world, &router, &mover, from, to, &tag)
                .await?
                .pause_ms,
        );
    }
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    eprintln!(
        "write pause, {PAUSE_ROUNDS} moves each, interleaved, 0 writes lost or refused: within the first cluster {within:?} ms (median {}, max {}); across clusters {across:?} ms (median {}, max {})",
        median(&within),
        within.iter().max().copied().unwrap_or_default(),
        median(&across),
        across.iter().max().copied().unwrap_or_default(),
    );

    // The member's API server stopped: static stability of the cell there.
    let far_uid = far_cell.uid().context("the cell has no uid")?;
    let before = stack_in(&member_client, &far_uid).await?;
    let pid = apiserver_pid("CELLSTACK_E2E_MEMBER_APISERVER_PID_FILE")?;
    let mut checker = Checker::start(&router.url, &mover, "s", 2, Duration::from_millis(20));
    poll(
        "writes before the member's API server stops",
        common::WAIT,
        || {
            let n = checker.acked();
            async move { Ok((n >= 50).then_some(())) }
        },
    )
    .await?;
    let acked_at_stop = checker.acked();
    let stopped = Stopped::stop(pid)?;
    let stopped_at = Instant::now();
    let while_stopped = async {
        world
            .wait_cell(
                &far,
                "Unknown while its member's API server is stopped",
                |c| {
                    c.status
                        .as_ref()
                        .is_some_and(|s| s.phase == CellPhase::Unknown)
                },
            )
            .await?;
        let unknown_after = stopped_at.elapsed();
        // And it goes on serving: a few hundred more writes while the member stays stopped.
        let n = checker.acked();
        poll(
            "writes while the member's API server is stopped",
            common::WAIT,
            || {
                let m = checker.acked();
                async move { Ok((m >= n + 300).then_some(())) }
            },
        )
        .await?;
        Ok::<_, anyhow::Error>(unknown_after)
    }
    .await;
    let stopped_for = stopped_at.elapsed();
    stopped.resume()?;
    let unknown_after = while_stopped?;
    let acked_while_stopped = checker.acked() - acked_at_stop;
    world
        .wait_cell(&far, "out of Unknown once its member answers", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.phase != CellPhase::Unknown)
        })
        .await?;
    let back_after = stopped_at.elapsed();
    checker.stop().await;
    let why = checker.refusal_messages();
    let (acks, refused) = checker.finish().await;
    ensure!(
        refused.is_empty(),
        "writes refused while the member's API server was stopped: {refused:?}; reasons: {why:?}"
    );
    let lost = cellstack_testkit::traffic::lost_writes_at(
        &world.client,
        &member_client,
        &far,
        &mover,
        &acks,
    )
    .await?;
    ensure!(
        lost.is_empty(),
        "acknowledged writes missing from {far}: {lost:?}"
    );
    let after = stack_in(&member_client, &far_uid).await?;
    ensure!(
        after == before,
        "the cell's objects in the member changed while its API server was stopped:\nbefore {before:#?}\nafter {after:#?}"
    );
    eprintln!(
        "member API server stopped {:.0}s: the cell Unknown after {:.1}s, {} writes acknowledged by {far} meanwhile ({} in all), 0 refused, 0 lost; out of Unknown {:.1}s after the stop; {} objects of its stack unchanged",
        stopped_for.as_secs_f64(),
        unknown_after.as_secs_f64(),
        acked_while_stopped,
        acks.len(),
        back_after.as_secs_f64(),
        after.len()
    );

    // The management cluster's API server stopped for 60 s.
    // The member's router mounts the member's copies of the bundle and client certificate.
    let member_tls = RouterTls::read(
        &member_client,
        MEMBER_SYSTEM_NAMESPACE,
        &format!("{}-member", world.id),
    )
    .await?;
    let member_router = Router::start_reading(
        world,
        "member-router",
        Some(&member_path),
        MEMBER_SYSTEM_NAMESPACE,
        &member_tls.args(),
    )
    .await?;
    // The member's view routes both tenants: the member's cell at its ClusterIP, the management
    // cluster's at a node port of the first cluster.
    first_write(&member_router, &local).await?;
    first_write(&member_router, &mover).await?;
    let pid = apiserver_pid("CELLSTACK_E2E_APISERVER_PID_FILE")?;
    let writers = |router: &Router, tag: &str| {
        [&local, &mover].map(|tenant| {
            (
                format!("{tag} {tenant}"),
                Checker::start(&router.url, tenant, tag, 1, Duration::from_millis(20)),
            )
        })
    };
    let mut checkers: Vec<(String, Checker)> = Vec::new();
    checkers.extend(writers(&member_router, "mr"));
    checkers.extend(writers(&router, "hr"));
    let stopped = Stopped::stop(pid)?;
    let stopped_at = Instant::now();
    let outage = async {
        tokio::time::sleep(MANAGEMENT_RESTART_AT).await;
        // The host's router started again while the API server is down: it serves from the copy
        // on disk (the same name, so the same directory).
        let host_writers: Vec<(String, Checker)> = checkers.split_off(2);
        let mut finished_host = Vec::new();
        for (name, mut checker) in host_writers {
            checker.stop().await;
            finished_host.push((name, checker));
        }
        drop(router);
        let restarted =
            Router::start_reading(world, "router", None, &world.system.name, &tls.args()).await?;
        let readyz = format!("{}/readyz", restarted.admin);
        poll(
            "the restarted router Ready from its last-known-good copy",
            Duration::from_secs(30),
            || {
                let readyz = readyz.clone();
                async move {
                    Ok(reqwest::get(&readyz)
                        .await?
                        .status()
                        .is_success()
                        .then_some(()))
                }
            },
        )
        .await
        .map_err(|e| e.context(restarted.log_tail()))?;
        checkers.extend(writers(&restarted, "rr"));
        let left = MANAGEMENT_OUTAGE.saturating_sub(stopped_at.elapsed());
        tokio::time::sleep(left).await;
        Ok::<_, anyhow::Error>((finished_host, restarted))
    }
    .await;
    let outage_took = stopped_at.elapsed();
    stopped.resume()?;
    let (finished_host, restarted) = outage?;
    let mut summary = Vec::new();
    for (name, mut checker) in checkers.into_iter().chain(finished_host) {
        checker.stop().await;
        let why = checker.refusal_messages();
        let (acks, refused) = checker.finish().await;
        ensure!(
            refused.is_empty(),
            "{name}: writes refused while the management API server was stopped: {refused:?}; reasons: {why:?}\n{}",
            restarted.log_tail()
        );
        ensure!(
            acks.len() >= 20,
            "{name}: too few writes to judge ({})",
            acks.len()
        );
        let home = if name.ends_with(local.as_str()) {
            &near
        } else {
            &far
        };
        let stack = if home == &near {
            &world.client
        } else {
            &member_client
        };
        let lost = cellstack_testkit::traffic::lost_writes_at(
            &world.client,
            stack,
            home,
            name.rsplit(' ').next().unwrap_or_default(),
            &acks,
        )
        .await?;
        ensure!(
            lost.is_empty(),
            "{name}: acknowledged writes missing from {home}: {lost:?}"
        );
        summary.push(format!("{name}: {}", acks.len()));
    }
    eprintln!(
        "management API server stopped {:.0}s (the host's router started again after {}s, from disk): acknowledged writes {}; 0 refused, 0 lost",
        outage_took.as_secs_f64(),
        MANAGEMENT_RESTART_AT.as_secs(),
        summary.join(", ")
    );
    // The operator lost its leader Lease while its API server was away, and exits so that it
    // rejoins the election from a clean start: one is started again to finish the test.
    if !world.operators.iter_mut().any(|o| o.alive()) {
        world.start_operator_with("x2", &env).await?;
    }

    for tenant in [&mover, &resident, &local] {
        tenants.delete(tenant, &DeleteParams::default()).await?;
    }
    let _ = std::fs::remove_dir_all(&tls.dir);
    let _ = std::fs::remove_dir_all(&member_tls.dir);
    Ok(())
}

/// Moves of each kind in the interleaved comparison of write pauses: even, so that both
/// tenants end where they started (the mover in the member's cell, the other in `near`).
const PAUSE_ROUNDS: usize = 6;

/// What one move under load showed.
struct MoveUnderLoad {
    acks: Vec<cellstack_testkit::traffic::Ack>,
    pause_ms: u64,
    took: Duration,
    steps: Vec<cellstack_api::v1alpha1::StepDuration>,
}

/// Moves `tenant` from cell `from` to cell `to` (each with the client of its cluster) while a
/// sequence-numbered writer (tag `tag`) writes through `router`; fails unless the move is done
/// with no write refused and every acknowledged write in `to`.
async fn move_under_load(
    world: &World,
    router: &Router,
    tenant: &str,
    from: (&String, &Client),
    to: (&String, &Client),
    tag: &str,
) -> anyhow::Result<MoveUnderLoad> {
    let (from, _) = from;
    let (to, to_client) = to;
    let mut checker = Checker::start(&router.url, tenant, tag, 4, Duration::from_millis(5));
    poll("steady writes before the move", common::WAIT, || {
        let n = checker.acked();
        async move { Ok((n >= 100).then_some(())) }
    })
    .await?;
    let started = Instant::now();
    retarget(world, tenant, to).await?;
    let mv = finished(world, tenant, to, None).await?;
    let took = started.elapsed();
    let before = checker.acked();
    poll("writes after the move", common::WAIT, || {
        let n = checker.acked();
        async move { Ok((n >= before + 100).then_some(())) }
    })
    .await?;
    checker.stop().await;
    let why = checker.refusal_messages();
    let (acks, refused) = checker.finish().await;
    ensure!(
        mv.step == MoveStep::Done,
        "the move of {tenant} from {from} to {to} ended {:?}: {:?}\n{}",
        mv.step,
        mv.message,
        router.log_tail()
    );
    let lost =
        cellstack_testkit::traffic::lost_writes_at(&world.client, to_client, to, tenant, &acks)
            .await?;
    ensure!(
        lost.is_empty(),
        "acknowledged writes of {tenant} missing from {to} (first {}): {lost:?}",
        lost.len()
    );
    ensure!(
        acks.iter().any(|a| a.cell == *from) && acks.iter().any(|a| a.cell == *to),
        "the writer of {tenant} saw both {from} and {to} acknowledge writes"
    );
    ensure!(
        refused.is_empty(),
        "writes of {tenant} refused during its move from {from} to {to}: {refused:?}; reasons: {why:?}"
    );
    Ok(MoveUnderLoad {
        acks,
        pause_ms: mv.write_pause_millis.context("no write pause recorded")?,
        took,
        steps: mv.step_millis.clone(),
    })
}
