//! The chaos matrix (docs/e2e.md, "Chaos matrix"): one fault each, under steady traffic to every
//! tenant and a sequence-numbered writer in every cell; each asserts the blast radius (which
//! tenants saw errors) and that no acknowledged write was lost, and prints one result line
//! `chaos <fault>: tenants affected A/T, errors E, lost writes L, recovered in R`.

use std::net::SocketAddr;

use cellstack_api::{services::RUNTIME_CONTAINER, shard};
use cellstack_testkit::cluster::{container_pids, signal};

use super::*;

/// How long a fault is left in place: long enough for the router's outlier ejection (3 failures,
/// then 5 s out, doubling) to act more than once.
const FAULT: Duration = Duration::from_secs(20);

/// A sequence-numbered writer in every cell (its first tenant), ~20 writes/s each.
struct Writers(Vec<(String, String, Checker)>);

impl Writers {
    /// Through `router` (the release's router Service, or an edge in front of the routers).
    fn start(env: &Env, router: &str, prefix: &str) -> Self {
        let mut cells: BTreeMap<&String, &String> = BTreeMap::new();
        for (tenant, cell) in &env.homes {
            cells.entry(cell).or_insert(tenant);
        }
        Self(
            cells
                .into_iter()
                .map(|(cell, tenant)| {
                    let checker =
                        Checker::start(router, tenant, prefix, 1, Duration::from_millis(50));
                    (cell.clone(), tenant.clone(), checker)
                })
                .collect(),
        )
    }

    /// Stops them and returns (acknowledged, lost) over all cells, failing on any loss.
    async fn finish(self, env: &Env) -> anyhow::Result<(usize, usize)> {
        let (mut acked, mut lost_total, mut report) = (0, 0, Vec::new());
        for (cell, tenant, checker) in self.0 {
            let (acks, _) = checker.finish().await;
            let lost = lost_writes(&env.client, &cell, &tenant, &acks).await?;
            acked += acks.len();
            lost_total += lost.len();
            if !lost.is_empty() {
                report.push(format!("{tenant} in {cell}: {lost:?}"));
            }
        }
        ensure!(
            report.is_empty(),
            "acknowledged writes lost: {}",
            report.join("; ")
        );
        Ok((acked, lost_total))
    }
}

/// The shard parameters of `cell`: those of the ShuffleShardPool that selects it.
async fn shard_params(env: &Env, cell: &str) -> anyhow::Result<shard::ShardParams> {
    let labels = Api::<Cell>::all(env.client.clone())
        .get(cell)
        .await?
        .labels()
        .clone();
    let pools = Api::<ShuffleShardPool>::all(env.client.clone())
        .list(&ListParams::default())
        .await?;
    let pool = pools
        .items
        .iter()
        .find(|p| {
            p.spec
                .cells
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .with_context(|| format!("no ShuffleShardPool selects cell {cell}"))?;
    Ok(shard::ShardParams::new(
        pool.spec.lanes,
        pool.spec.shard_size,
        pool.spec.seed,
    )?)
}

/// The lanes serving `tenant` in `cell`: the cell's shard parameters and the tenant's published
/// variant (the routing table's own inputs).
async fn lanes_of(env: &Env, cell: &str, tenant: &str) -> anyhow::Result<shard::LaneSet> {
    let params = shard_params(env, cell).await?;
    let variant = Api::<TenantAssignment>::all(env.client.clone())
        .get(tenant)
        .await?
        .status
        .map(|s| s.shard_variant)
        .unwrap_or_default();
    Ok(shard::lanes_for(tenant, variant, params))
}

/// Leaves a fault in place for [`FAULT`] (the sleep is the fault's duration, not a wait for a
/// condition), takes what every tenant of `load` got meanwhile, undoes the fault with `undo`, and
/// waits until every tenant has 10 answers in a row: the counts during the fault and the time to
/// recover.
async fn fault_window(
    load: &Load,
    undo: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(BTreeMap<String, TenantStats>, Duration)> {
    tokio::time::sleep(FAULT).await;
    let during = load.snapshot();
    undo()?;
    let undone = Instant::now();
    load.reset();
    load.until_every_tenant(
        "every tenant 10 answers in a row after the fault",
        RECOVERY,
        |s| s.streak >= 10,
    )
    .await?;
    Ok((during, undone.elapsed()))
}

/// The example tenants of `cell` whose shard includes `lane`.
async fn tenants_on_lane(env: &Env, cell: &str, lane: u32) -> anyhow::Result<BTreeSet<String>> {
    let mut on = BTreeSet::new();
    for tenant in env.tenants_of(cell) {
        if lanes_of(env, cell, &tenant).await?.contains(lane) {
            on.insert(tenant);
        }
    }
    Ok(on)
}

/// The lane of `cell` that the most of its example tenants' shards include (the lowest on a
/// tie), with those tenants.
async fn busiest_lane(env: &Env, cell: &str) -> anyhow::Result<(u32, BTreeSet<String>)> {
    let mut by_lane: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for tenant in env.tenants_of(cell) {
        for lane in lanes_of(env, cell, &tenant).await?.iter() {
            by_lane.entry(lane).or_default().insert(tenant.clone());
        }
    }
    let mut busiest = (0, BTreeSet::new());
    for (lane, on) in by_lane {
        if on.len() > busiest.1.len() {
            busiest = (lane, on);
        }
    }
    Ok(busiest)
}

/// The busiest lane of cell alpha (the one the most of its tenants use: how the examples'
/// tenants fall on lanes varies with automatic placement) frozen for 20 s (SIGSTOP of its cell
/// runtime: alive, silent, not restarted), then thawed. The tenants whose shard does not include that lane, in any cell,
/// see no error; the lane's own tenants keep getting answers from their other lanes (the
/// router's per-try timeout, retry and outlier ejection); every writer's acknowledged writes are
/// in its cell afterwards.
pub(super) async fn freezing_one_lane_leaves_tenants_off_it_untouched(
    env: &Env,
) -> anyhow::Result<()> {
    const CELL: &str = "alpha";
    let (lane, on_lane) = busiest_lane(env, CELL).await?;
    ensure!(
        !on_lane.is_empty(),
        "no tenant of {CELL} uses any lane: nothing to measure"
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &format!("cell-{CELL}"));
    let pod = pods.get(&format!("lane-{lane}")).await?;
    let pids = container_pids(&pod, RUNTIME_CONTAINER)?;

    let load = env.steady_load();
    let writers = Writers::start(env, &env.router, "lane-freeze");
    load.until_every_tenant("every tenant answered before the fault", WAIT, |s| {
        s.ok >= 5
    })
    .await?;
    load.reset();
    signal(&pids, "STOP")?;
    let (during, recovered) = fault_window(&load, || signal(&pids, "CONT")).await?;
    let after = load.finish().await;
    let (acked, lost) = writers.finish(env).await?;

    let (bad, account) = failing(&during);
    let errors: u64 = during.values().map(TenantStats::error_count).sum();
    eprintln!(
        "    chaos lane frozen ({CELL} lane-{lane}, {} tenants on it): tenants affected {}/{}, errors {errors}, lost writes {lost} of {acked}, recovered in {recovered:.1?}",
        on_lane.len(),
        bad.len(),
        during.len()
    );
    let outside: Vec<&String> = bad.iter().filter(|t| !on_lane.contains(*t)).collect();
    ensure!(
        outside.is_empty(),
        "tenants not on the frozen lane saw errors: {outside:?}\n{account}"
    );
    let unserved: Vec<&String> = on_lane
        .iter()
        .filter(|t| during.get(*t).is_none_or(|s| s.ok == 0))
        .collect();
    ensure!(
        unserved.is_empty(),
        "the frozen lane's tenants got no answer from their other lanes: {unserved:?}\n{account}"
    );
    let (late, _) = failing(&after);
    eprintln!(
        "    after the thaw: {} tenants saw an error before their 10 in a row",
        late.len()
    );
    Ok(())
}

/// The cell the drain scenario makes, drains and deletes (zone-a, two lanes, an ephemeral
/// datastore: quick to start, and nothing else depends on it).
const DRAINED_CELL: &str = "delta";
/// Its tenants, each with a sequence-numbered writer.
const DRAINED_TENANTS: [&str; 4] = ["drain-1", "drain-2", "drain-3", "drain-4"];

/// The operator's pod (the release runs one replica).
async fn operator_pod(env: &Env) -> anyhow::Result<Pod> {
    let pods = env
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await?;
    pods.items
        .into_iter()
        .find(cellstack_testkit::cluster::pod_is_ready)
        .context("no Ready operator pod")
}

/// A cell of four tenants, each written to by a sequence-numbered writer, is drained while the
/// operator is SIGKILLed twice at a random moment (the kubelet restarts it each time), under
/// traffic to every other tenant and a writer per cell: every drained tenant ends up in another
/// cell holding every write it acknowledged, the drained cell reports Drained, and the other
/// tenants see no error and lose no write.
pub(super) async fn killing_the_operator_twice_during_a_drain_loses_no_write(
    env: &Env,
) -> anyhow::Result<()> {
    let cells: Api<Cell> = Api::all(env.client.clone());
    let tas: Api<TenantAssignment> = Api::all(env.client.clone());
    let cell: Cell = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell",
        "metadata": {"name": DRAINED_CELL, "labels": {RUN_LABEL: env.id}},
        "spec": {
            "zone": "zone-a", "lanes": 2,
            "capacity": {"maxTenants": 10},
            "datastore": {"managed": {"storage": "Ephemeral"}},
        },
    }))?;
    cells.create(&PostParams::default(), &cell).await?;
    let result = drain_with_kills(env, &cells, &tas).await;
    // Whatever happened: the tenants go, then the cell.
    for tenant in DRAINED_TENANTS {
        let _ = tas.delete(tenant, &DeleteParams::background()).await;
    }
    let cleanup = poll(&format!("cell {DRAINED_CELL} deleted"), WAIT, || async {
        match cells.get_opt(DRAINED_CELL).await? {
            None => Ok(Some(())),
            Some(c) if c.metadata.deletion_timestamp.is_none() => {
                // Refused while a tenant is still counted: tried again on the next poll.
                let _ = cells
                    .delete(DRAINED_CELL, &DeleteParams::background())
                    .await;
                Ok(None)
            }
            Some(_) => Ok(None),
        }
    })
    .await;
    result.and(cleanup)
}

async fn drain_with_kills(
    env: &Env,
    cells: &Api<Cell>,
    tas: &Api<TenantAssignment>,
) -> anyhow::Result<()> {
    poll(
        &format!("cell {DRAINED_CELL} Ready"),
        SETUP_WAIT,
        || async { Ok(is_ready(&cells.get(DRAINED_CELL).await?).then_some(())) },
    )
    .await?;
    for tenant in DRAINED_TENANTS {
        let ta: TenantAssignment = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": {"name": tenant, "labels": {RUN_LABEL: env.id}},
            "spec": {"tenantId": tenant, "cell": DRAINED_CELL},
        }))?;
        tas.create(&PostParams::default(), &ta).await?;
    }
    let http = reqwest::Client::new();
    for tenant in DRAINED_TENANTS {
        poll(
            &format!("{tenant} served in {DRAINED_CELL}"),
            WAIT,
            || async {
                put_ok(&http, &env.router, tenant, "first", "1").await?;
                Ok(Some(()))
            },
        )
        .await?;
        // Unpinned, so the drain may move it (a pinned tenant stays, and says so).
        tas.patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cell": null, "automatic": {}}})),
        )
        .await?;
    }
    let writers: Vec<(&str, Checker)> = DRAINED_TENANTS
        .iter()
        .map(|t| {
            (
                *t,
                Checker::start(&env.router, t, "drain", 1, Duration::from_millis(50)),
            )
        })
        .collect();
    let load = env.steady_load();
    let cell_writers = Writers::start(env, &env.router, "drain-steady");
    poll("writes before the drain", WAIT, || async {
        Ok(writers.iter().all(|(_, c)| c.acked() >= 20).then_some(()))
    })
    .await?;
    load.reset();
    let started = Instant::now();
    cells
        .patch(
            DRAINED_CELL,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"draining": true}})),
        )
        .await?;
    // Two kills at moments drawn from the clock's nanoseconds: the first 0.5-3 s in (the first
    // moves under way), the second 10-40 s after the operator is back (the drain moves one
    // tenant at a time and takes 90 s here, so it lands in a later tenant's move).
    let mut kills = Vec::new();
    for (first_ms, spread_ms) in [(500, 2_500), (10_000, 30_000)] {
        let jitter = Duration::from_millis(
            first_ms + u64::from(started.elapsed().subsec_nanos()) % spread_ms,
        );
        tokio::time::sleep(jitter).await;
        let pod = operator_pod(env).await?;
        let pids = container_pids(&pod, "operator")?;
        signal(&pids, "KILL")?;
        let moving: Vec<String> = tas
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={}", env.id)))
            .await?
            .items
            .iter()
            .filter_map(|ta| {
                let mv = ta.status.as_ref()?.move_.as_ref()?;
                (mv.step != MoveStep::Done).then(|| format!("{} at {:?}", ta.name_any(), mv.step))
            })
            .collect();
        kills.push(format!("{:.1?} ({moving:?})", started.elapsed()));
        // The next kill only once the restarted operator is Ready again.
        poll("the operator Ready again", WAIT, || async {
            let pod = operator_pod(env).await.ok();
            Ok(pod
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.restart_count > 0))
                })
                .map(|_| ()))
        })
        .await?;
    }
    let homes = poll(
        "every tenant of the drained cell moved",
        SETUP_WAIT,
        || async {
            let mut homes = BTreeMap::new();
            for tenant in DRAINED_TENANTS {
                let status = tas.get(tenant).await?.status;
                let cell = status.as_ref().and_then(|s| s.cell.clone());
                let moving = status
                    .as_ref()
                    .and_then(|s| s.move_.as_ref())
                    .is_some_and(|m| m.step != MoveStep::Done);
                match cell {
                    Some(c) if c != DRAINED_CELL && !moving => {
                        homes.insert(tenant, c);
                    }
                    _ => return Ok(None),
                }
            }
            Ok(Some(homes))
        },
    )
    .await?;
    let drained_after = started.elapsed();
    poll(&format!("{DRAINED_CELL} reports Drained"), WAIT, || async {
        let cell = cells.get(DRAINED_CELL).await?;
        Ok(cell
            .status
            .as_ref()
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Drained" && c.status == "True")
            })
            .then_some(()))
    })
    .await?;
    let stats = load.finish().await;
    let (steady_acked, _) = cell_writers.finish(env).await?;
    let (bad, account) = failing(&stats);
    let (mut acked, mut lost_all) = (0, Vec::new());
    for (tenant, checker) in writers {
        let (acks, _) = checker.finish().await;
        acked += acks.len();
        let lost = lost_writes(&env.client, &homes[tenant], tenant, &acks).await?;
        if !lost.is_empty() {
            lost_all.push(format!("{tenant} in {}: {lost:?}", homes[tenant]));
        }
    }
    eprintln!(
        "    chaos operator killed during a drain: operator killed at {}; tenants moved {}/{} to {:?}, lost writes {} of {acked} (0 of {steady_acked} for the writer of each cell), tenants affected {}/{} of the others, drained in {drained_after:.1?}",
        kills.join(", "),
        homes.len(),
        DRAINED_TENANTS.len(),
        homes.values().collect::<BTreeSet<_>>(),
        lost_all.len(),
        bad.len(),
        stats.len()
    );
    ensure!(
        lost_all.is_empty(),
        "acknowledged writes lost: {}",
        lost_all.join("; ")
    );
    ensure!(
        bad.is_empty(),
        "tenants of the other cells saw errors while the operator was killed: {bad:?}\n{account}"
    );
    Ok(())
}

/// The chart's router ports (values.yaml): tenants, and health on the admin listener.
const ROUTER_PORT: u16 = 8000;
const ROUTER_ADMIN_PORT: u16 = 9000;

/// The release's router pods' tenant addresses.
async fn router_addrs(env: &Env) -> anyhow::Result<Vec<SocketAddr>> {
    let pods = env
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/component=router"))
        .await?;
    pods.items
        .iter()
        .map(|p| {
            let ip: std::net::IpAddr = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .with_context(|| format!("router {} has no address", p.name_any()))?
                .parse()?;
            Ok(SocketAddr::from((ip, ROUTER_PORT)))
        })
        .collect()
}

/// `e2e/cluster freeze|thaw NODE`.
fn cluster_node(action: &str, node: &str) -> anyhow::Result<()> {
    let script = std::env::var("CELLSTACK_E2E_CLUSTER_SCRIPT")
        .context("CELLSTACK_E2E_CLUSTER_SCRIPT is not set: stopping a node needs the local cluster (eval \"$(e2e/cluster env)\")")?;
    let out = std::process::Command::new(&script)
        .args([action, node])
        .output()
        .with_context(|| format!("running {script} {action} {node}"))?;
    ensure!(
        out.status.success(),
        "{script} {action} {node}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A whole node stopped: the zone-b node's kubelet, containerd, kube-proxy, kube-router and every
/// pod's processes frozen through the node's cgroup (`e2e/cluster freeze`) for 20 s, under
/// traffic to every tenant through an edge that health-checks the routers (one router runs on
/// that node) and a sequence-numbered writer per cell. Only the tenants of the cell in that zone
/// see errors (all of them do: the fault is real), and only until the node is back; no
/// acknowledged write is lost anywhere.
pub(super) async fn stopping_a_whole_node_reaches_only_the_tenants_of_its_zone(
    env: &Env,
) -> anyhow::Result<()> {
    const ZONE: &str = "zone-b";
    let nodes = Api::<Node>::all(env.client.clone())
        .list(&ListParams::default().labels(&format!("{ZONE_LABEL}={ZONE}")))
        .await?;
    ensure!(
        nodes.items.len() == 1,
        "expected one node in {ZONE} (the local cluster's three-node layout), found {}",
        nodes.items.len()
    );
    let node = nodes.items[0].name_any();
    let cells = Api::<Cell>::all(env.client.clone())
        .list(&ListParams::default().labels(&format!("{RUN_LABEL}={}", env.id)))
        .await?;
    let zoned: BTreeSet<String> = cells
        .iter()
        .filter(|c| c.spec.zone.as_deref() == Some(ZONE))
        .map(|c| c.name_any())
        .collect();
    ensure!(!zoned.is_empty(), "no cell of this run in {ZONE}");
    let in_zone: BTreeSet<String> = zoned.iter().flat_map(|c| env.tenants_of(c)).collect();

    let edge =
        cellstack_testkit::edge::Edge::start(&router_addrs(env).await?, ROUTER_ADMIN_PORT).await?;
    let load = Load::start(
        &edge.url,
        &env.tenants(),
        Pace {
            per_second: 5.0,
            writes_every: 2,
        },
    );
    let writers = Writers::start(env, &edge.url, "node-stop");
    load.until_every_tenant("every tenant answered before the fault", WAIT, |s| {
        s.ok >= 5
    })
    .await?;
    load.reset();
    cluster_node("freeze", &node)?;
    let (during, recovered) = fault_window(&load, || cluster_node("thaw", &node)).await?;
    drop(load.finish().await);
    let (acked, lost) = writers.finish(env).await?;

    let (bad, account) = failing(&during);
    let errors: u64 = during.values().map(TenantStats::error_count).sum();
    eprintln!(
        "    chaos node stopped ({node}, {ZONE}: cells {zoned:?}, {} tenants): tenants affected {}/{}, errors {errors}, lost writes {lost} of {acked}, recovered in {recovered:.1?} after the thaw",
        in_zone.len(),
        bad.len(),
        during.len()
    );
    let outside: Vec<&String> = bad.iter().filter(|t| !in_zone.contains(*t)).collect();
    ensure!(
        outside.is_empty(),
        "tenants outside {ZONE} saw errors: {outside:?}\n{account}"
    );
    let spared: Vec<&String> = in_zone.iter().filter(|t| !bad.contains(*t)).collect();
    ensure!(
        spared.is_empty(),
        "tenants of {ZONE}'s cells saw no error while its only node was stopped: {spared:?} (was the node stopped?)"
    );
    Ok(())
}

/// Two faults at once: a tenant of cell alpha is moved to bravo while one of its own lanes in
/// alpha is frozen (SIGSTOP of the runtime) for 20 s, under traffic to every tenant, a
/// sequence-numbered writer per cell and one to the moving tenant. The move finishes (after
/// rolling back and trying again if the frozen lane cost it its write-pause bound), the new cell
/// holds every write the mover acknowledged, no writer lost a write, and no tenant whose shard
/// leaves out the frozen lane sees an error.
pub(super) async fn freezing_a_lane_while_its_tenant_moves_loses_no_write(
    env: &Env,
) -> anyhow::Result<()> {
    const TENANT: &str = "two-faults";
    const FROM: &str = "alpha";
    const TO: &str = "bravo";
    let tas: Api<TenantAssignment> = Api::all(env.client.clone());
    let ta: TenantAssignment = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
        "metadata": {"name": TENANT, "labels": {RUN_LABEL: env.id}},
        "spec": {"tenantId": TENANT, "cell": FROM},
    }))?;
    tas.create(&PostParams::default(), &ta).await?;
    let result = two_faults(env, &tas, TENANT, FROM, TO).await;
    let _ = tas.delete(TENANT, &DeleteParams::background()).await;
    result
}

async fn two_faults(
    env: &Env,
    tas: &Api<TenantAssignment>,
    tenant: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    poll(&format!("{tenant} served in {from}"), WAIT, || async {
        put_ok(&http, &env.router, tenant, "first", "1").await?;
        Ok(Some(()))
    })
    .await?;
    // One of the tenant's own lanes in the source cell, and the other tenants sharing it.
    let lane = lanes_of(env, from, tenant)
        .await?
        .iter()
        .next()
        .context("a shard without lanes")?;
    let on_lane = tenants_on_lane(env, from, lane).await?;
    let pod = Api::<Pod>::namespaced(env.client.clone(), &format!("cell-{from}"))
        .get(&format!("lane-{lane}"))
        .await?;
    let pids = container_pids(&pod, RUNTIME_CONTAINER)?;

    let load = env.steady_load();
    let writers = Writers::start(env, &env.router, "two-faults");
    let checker = Checker::start(&env.router, tenant, "two", 1, Duration::from_millis(25));
    poll("writes before the faults", WAIT, || {
        let n = checker.acked();
        async move { Ok((n >= 100).then_some(())) }
    })
    .await?;
    load.reset();
    let started = Instant::now();
    signal(&pids, "STOP")?;
    let done = || async {
        let mv = tas.get(tenant).await?.status.and_then(|s| s.move_);
        Ok::<_, anyhow::Error>(mv.filter(|m| m.to == to && m.step == MoveStep::Done))
    };
    // The move runs while the lane is frozen; when it is done is looked at every 200 ms.
    let during = async {
        tas.patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cell": to}})),
        )
        .await?;
        let mut finished = None;
        while started.elapsed() < FAULT {
            if finished.is_none() && done().await?.is_some() {
                finished = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<_, anyhow::Error>(finished)
    }
    .await;
    signal(&pids, "CONT")?;
    let finished = during?;
    let mv = poll(
        &format!("the move of {tenant} to {to}"),
        RECOVERY,
        || async { done().await },
    )
    .await?;
    let done_after = match finished {
        Some(t) => format!("{t:.1?}, while the lane was frozen"),
        None => format!("{:.1?}, after the thaw", started.elapsed()),
    };
    let at_done = checker.acked();
    poll("writes after the move", WAIT, || {
        let n = checker.acked();
        async move { Ok((n >= at_done + 50).then_some(())) }
    })
    .await?;
    let (acks, refused) = checker.finish().await;
    let lost = lost_writes(&env.client, to, tenant, &acks).await?;
    let stats = load.finish().await;
    let (acked, _) = writers.finish(env).await?;
    let (bad, account) = failing(&stats);
    let errors: u64 = stats.values().map(TenantStats::error_count).sum();
    let attempts = tas
        .get(tenant)
        .await?
        .status
        .map(|s| s.recent_moves.len())
        .unwrap_or_default();
    eprintln!(
        "    chaos lane frozen while its tenant moves ({from} lane-{lane}, {} other tenants on it; {tenant} to {to}): tenants affected {}/{}, errors {errors}, lost writes {} of {} (0 of {acked} for the writer of each cell), move done after {done_after} ({attempts} recorded attempts, pause {:?} ms), the mover refused {refused:?}",
        on_lane.len(),
        bad.len(),
        stats.len(),
        lost.len(),
        acks.len(),
        mv.write_pause_millis
    );
    ensure!(
        lost.is_empty(),
        "acknowledged writes missing from {to}: {lost:?}"
    );
    let outside: Vec<&String> = bad.iter().filter(|t| !on_lane.contains(*t)).collect();
    ensure!(
        outside.is_empty(),
        "tenants not on the frozen lane saw errors: {outside:?}\n{account}"
    );
    Ok(())
}
