//! Tenant placement and routing-table publication against a real cluster: 1,000
//! TenantAssignments are placed within every cell's capacity and zone rules, a cordoned cell gets
//! none, and a reader polling the published table while they churn in never sees a torn or
//! mixed version, nor one older than the last it saw; an operator restarted over them publishes
//! no table without every tenant.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, ensure};
use cellstack_api::{
    routing::RoutingTable,
    v1alpha1::{TenantAssignment, TenantPhase},
};
use cellstack_testkit::cluster::poll;
use common::{TEST_LABEL, World, is_ready};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

const TENANTS: usize = 1000;

/// What a reader of the published table saw.
#[derive(Debug, Default)]
struct Reads {
    whole: usize,
    torn: Vec<String>,
    backwards: Vec<(u64, u64)>,
    last: Option<RoutingTable>,
}

/// Reads the table the way a router does (pointer, then every chunk, verified).
async fn read_table(api: &Api<ConfigMap>) -> anyhow::Result<Option<RoutingTable>> {
    Ok(
        cellstack_operator::controllers::publish::read_published(api, Duration::from_secs(10))
            .await?,
    )
}

#[tokio::test]
async fn a_thousand_tenants_are_placed_within_capacity_and_zones_the_table_is_never_torn_and_a_restart_publishes_no_short_one()
 {
    let mut world = World::new("op-place").await.expect("test world");
    let result = async {
        world.start_operator("a").await?;
        // alpha (weight 200, room for 800) and bravo (weight 100, room for 250) in zone zone-a,
        // charlie cordoned there, delta alone in zone-b. By weight alpha would take twice bravo's
        // share (600/300 of the 900 zone-a tenants); bravo's capacity caps it at 250.
        let spec = |zone: &str, max: u32, weight: u32, cordoned: bool| {
            json!({
                "lanes": 1, "zone": zone, "cordoned": cordoned,
                "capacity": {"maxTenants": max, "weight": weight},
                "datastore": {"managed": {"storage": "Ephemeral"}},
            })
        };
        let alpha = world
            .create_cell("alpha", spec("zone-a", 800, 200, false))
            .await?
            .name_any();
        let bravo = world
            .create_cell("bravo", spec("zone-a", 250, 100, false))
            .await?
            .name_any();
        let charlie = world
            .create_cell("charlie", spec("zone-a", 1000, 100, true))
            .await?
            .name_any();
        let delta = world
            .create_cell("delta", spec("zone-b", 300, 100, false))
            .await?
            .name_any();
        for name in [&alpha, &bravo, &charlie, &delta] {
            world.wait_cell(name, "Ready", is_ready).await?;
        }

        // A reader polls the published table for as long as tenants arrive.
        let configmaps: Api<ConfigMap> = Api::namespaced(world.client.clone(), &world.system.name);
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (api, done) = (configmaps.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = Reads::default();
                while !done.load(Ordering::SeqCst) {
                    match read_table(&api).await {
                        Ok(Some(t)) => {
                            reads.whole += 1;
                            if let Some(last) = &reads.last
                                && t.version < last.version
                            {
                                reads.backwards.push((last.version, t.version));
                            }
                            reads.last = Some(t);
                        }
                        Ok(None) => {}
                        Err(e) => reads.torn.push(format!("{e:#}")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                reads
            })
        };

        // 1,000 tenants: every tenth asks for zone zone-b, the rest for zone-a.
        let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
        let id = world.id.clone();
        let names: Vec<String> = (0..TENANTS).map(|i| format!("{id}-t{i}")).collect();
        futures::stream::iter(names.iter().enumerate().map(|(i, name)| {
            let tenants = tenants.clone();
            let zone = if i % 10 == 0 { "zone-b" } else { "zone-a" };
            let ta: TenantAssignment = serde_json::from_value(json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
                "metadata": {"name": name, "labels": {TEST_LABEL: id}},
                "spec": {"tenantId": name, "automatic": {"zones": [zone]}},
            }))
            .expect("valid tenant");
            async move { tenants.create(&PostParams::default(), &ta).await }
        }))
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .context("creating the tenants")?;

        let selector = format!("{TEST_LABEL}={id}");
        let placed = poll("every tenant placed", Duration::from_secs(180), || {
            let (tenants, selector) = (tenants.clone(), selector.clone());
            async move {
                let list = tenants
                    .list(&ListParams::default().labels(&selector))
                    .await?;
                let placed: Vec<_> = list
                    .items
                    .into_iter()
                    .filter(|t| {
                        t.status
                            .as_ref()
                            .is_some_and(|s| s.phase == TenantPhase::Placed)
                    })
                    .collect();
                ensure!(
                    placed.len() == TENANTS,
                    "{} of {TENANTS} placed",
                    placed.len()
                );
                Ok(Some(placed))
            }
        })
        .await?;
        let mut per_cell: BTreeMap<String, usize> = BTreeMap::new();
        for t in &placed {
            let cell = t
                .status
                .as_ref()
                .and_then(|s| s.cell.clone())
                .unwrap_or_default();
            let wants_b = t
                .spec
                .automatic
                .as_ref()
                .is_some_and(|a| a.zones == ["zone-b"]);
            ensure!(
                (cell == delta) == wants_b,
                "tenant {} (zone zone-b: {wants_b}) placed on {cell}",
                t.name_any()
            );
            ensure!(
                t.status.as_ref().is_some_and(|s| s.epoch == 1),
                "epoch of {}",
                t.name_any()
            );
            *per_cell.entry(cell).or_default() += 1;
        }
        eprintln!("placement: {per_cell:?}");
        ensure!(
            !per_cell.contains_key(&charlie),
            "the cordoned cell got tenants: {per_cell:?}"
        );
        ensure!(
            per_cell.get(&bravo).copied() == Some(250),
            "bravo must be exactly full: {per_cell:?}"
        );
        ensure!(
            per_cell.get(&alpha).copied() == Some(650),
            "alpha takes the rest of zone-a: {per_cell:?}"
        );
        ensure!(
            per_cell.get(&delta).copied() == Some(TENANTS / 10),
            "zone-b tenants: {per_cell:?}"
        );

        // The published table converges to the placements, and no read was torn.
        let table = poll("the table to show every tenant", common::WAIT, || {
            let api = configmaps.clone();
            async move {
                let t = read_table(&api).await?.context("no table yet")?;
                ensure!(
                    t.tenants.len() == TENANTS,
                    "table has {} tenants",
                    t.tenants.len()
                );
                Ok(Some(t))
            }
        })
        .await?;
        for t in &placed {
            let route = table
                .tenant(&t.spec.tenant_id)
                .with_context(|| format!("{} missing from the table", t.name_any()))?;
            let cell = &table.cell(route).name;
            ensure!(
                Some(cell) == t.status.as_ref().and_then(|s| s.cell.as_ref()),
                "table and status disagree for {}",
                t.name_any()
            );
        }
        done.store(true, Ordering::SeqCst);
        let reads = reader.await?;
        eprintln!(
            "reader: {} whole reads, last version {:?}",
            reads.whole,
            reads.last.as_ref().map(|t| t.version)
        );
        ensure!(
            reads.torn.is_empty(),
            "torn reads: {:?}",
            &reads.torn[..reads.torn.len().min(5)]
        );
        ensure!(
            reads.backwards.is_empty(),
            "versions went backwards: {:?}",
            reads.backwards
        );
        ensure!(
            reads.whole > 10,
            "the reader read only {} tables",
            reads.whole
        );

        // A restarted operator publishes nothing before its caches have listed what exists:
        // every table it publishes holds every tenant (a table built from half-listed caches
        // would make routers answer 404 for the rest until the next one).
        let before = read_table(&configmaps)
            .await?
            .context("no table before the restart")?
            .version;
        let seen: Arc<tokio::sync::Mutex<Vec<(u64, usize)>>> = Arc::default();
        let pointer_watch = {
            let (api, seen) = (configmaps.clone(), seen.clone());
            tokio::spawn(async move {
                let config = watcher::Config::default().fields(&format!(
                    "metadata.name={}",
                    cellstack_api::routing::publication::POINTER_NAME
                ));
                let mut pointers = std::pin::pin!(watcher(api.clone(), config).applied_objects());
                while let Some(pointer) = pointers.next().await {
                    let Ok(pointer) = pointer else { continue };
                    let table = cellstack_operator::controllers::publish::read_pointed(
                        &api,
                        &pointer,
                        Duration::from_secs(10),
                    )
                    .await;
                    if let Ok(t) = table {
                        seen.lock().await.push((t.version, t.tenants.len()));
                    }
                }
            })
        };
        world.operators[0].kill().await;
        let b = world.start_operator("b").await?;
        let first = poll(
            "the restarted operator's first publication",
            common::WAIT,
            || {
                let op = &world.operators[b];
                async move {
                    let v = op
                        .metric("cellstack_operator_routing_table_version")
                        .await?
                        .unwrap_or(0.0) as u64;
                    Ok((v > before).then_some(v))
                }
            },
        )
        .await?;
        let published = poll("the pointer watch to see it", common::WAIT, || {
            let seen = seen.clone();
            async move {
                let seen = seen.lock().await;
                Ok(seen.iter().any(|(v, _)| *v >= first).then(|| {
                    seen.iter()
                        .filter(|(v, _)| *v > before)
                        .copied()
                        .collect::<Vec<_>>()
                }))
            }
        })
        .await?;
        pointer_watch.abort();
        eprintln!("tables published after the restart (version, tenants): {published:?}");
        ensure!(
            published.iter().all(|(_, n)| *n == TENANTS),
            "the restarted operator published a table without every tenant \
             (version, tenants): {published:?}"
        );

        tenants
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&selector),
            )
            .await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
        let _ = tenants
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{TEST_LABEL}={}", world.id)),
            )
            .await;
    }
    world.finish(result).await.expect("scenario");
}
