//! RateLimitPolicies and ShuffleShardPools against a real cluster: precedence decides each
//! tenant's effective policy, ties are reported as conflicts, the cells' lanes acknowledge the
//! version they enforce, the router's table carries the same numbers as edge limits, and a
//! pool's status equals what the `crds/` shard functions compute.

mod common;

use anyhow::{Context as _, ensure};
use cellstack_api::{
    admin::{POLICY_VERSION_PATH, PolicyVersion},
    policy::{CellPolicies, POLICY_FILE_KEY},
    routing::RoutingTable,
    shard::{self, ShardParams},
    v1alpha1::{RateLimitPolicy, ShuffleShardPool, TenantAssignment},
};
use cellstack_testkit::cluster::poll;
use common::{TEST_LABEL, World, is_ready};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

async fn read_table(api: &Api<ConfigMap>) -> anyhow::Result<RoutingTable> {
    cellstack_operator::controllers::publish::read_published(
        api,
        std::time::Duration::from_secs(10),
    )
    .await?
    .context("no table yet")
}

fn policy(
    world: &World,
    name: &str,
    selector: serde_json::Value,
    priority: i32,
    requests: u32,
) -> anyhow::Result<RateLimitPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": format!("{}-{name}", world.id), "labels": {TEST_LABEL: world.id}},
        "spec": {"selector": selector, "priority": priority,
                 "limits": [{"name": "requests", "requests": requests, "periodSeconds": 1}], "failMode": "Open"},
    }))?)
}

#[tokio::test]
async fn precedence_conflicts_acknowledgement_edge_limits_and_pool_figures_tell_the_truth() {
    let mut world = World::new("op-policy").await.expect("test world");
    let id = world.id.clone();
    let tenants_api: Api<TenantAssignment> = Api::all(world.client.clone());
    let policies_api: Api<RateLimitPolicy> = Api::all(world.client.clone());
    let pools_api: Api<ShuffleShardPool> = Api::all(world.client.clone());
    let result = async {
        world.start_operator("a").await?;
        // alpha is shaped by a pool (2 lanes, k = 1); bravo has one lane of its own.
        let alpha = world
            .create_cell(
                "alpha",
                json!({"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}}),
            )
            .await?
            .name_any();
        let bravo = world
            .create_cell(
                "bravo",
                json!({"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}}),
            )
            .await?
            .name_any();
        let pool: ShuffleShardPool = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "ShuffleShardPool",
            "metadata": {"name": format!("{id}-pool"), "labels": {TEST_LABEL: id}},
            "spec": {"cells": {"names": [alpha]}, "lanes": 2, "shardSize": 1, "seed": 7},
        }))?;
        pools_api.create(&PostParams::default(), &pool).await?;
        world
            .wait_cell(&alpha, "Ready with the pool's 2 lanes", |c| {
                is_ready(c) && c.status.as_ref().is_some_and(|s| s.lanes == 2)
            })
            .await?;
        world.wait_cell(&bravo, "Ready", is_ready).await?;

        // Six tenants: gold ones on alpha, silver ones on bravo, one VIP.
        let tenant = |n: &str, tier: &str, cell: &str| -> anyhow::Result<TenantAssignment> {
            Ok(serde_json::from_value(json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
                "metadata": {"name": format!("{id}-{n}"), "labels": {TEST_LABEL: id}},
                "spec": {"tenantId": format!("{id}-{n}"), "tier": tier, "cell": cell},
            }))?)
        };
        for (n, tier, cell) in [
            ("g1", "gold", &alpha),
            ("g2", "gold", &alpha),
            ("g3", "gold", &alpha),
            ("vip", "gold", &alpha),
            ("s1", "silver", &bravo),
            ("s2", "silver", &bravo),
        ] {
            tenants_api
                .create(&PostParams::default(), &tenant(n, tier, cell)?)
                .await?;
        }
        let vip = format!("{id}-vip");
        // Precedence: the VIP's own policy (most specific) beats gold's tier policy, which beats
        // the default; two silver policies of equal priority tie; a high-priority policy
        // selecting everyone would win everywhere, so none is created.
        for p in [
            policy(&world, "default", json!({"allTenants": true}), 0, 100)?,
            policy(&world, "gold", json!({"tiers": ["gold"]}), 0, 50)?,
            policy(&world, "vip", json!({"tenantIds": [vip]}), 0, 5)?,
            policy(&world, "silver-a", json!({"tiers": ["silver"]}), 0, 20)?,
            policy(&world, "silver-b", json!({"tiers": ["silver"]}), 0, 30)?,
        ] {
            policies_api.create(&PostParams::default(), &p).await?;
        }
        let name = |n: &str| format!("{id}-{n}");
        let status_of = |n: String| {
            let api = policies_api.clone();
            async move { api.get(&n).await.map(|p| p.status.unwrap_or_default()) }
        };
        poll("policy statuses to settle", common::WAIT, || async {
            let gold = status_of(name("gold")).await?;
            let vipp = status_of(name("vip")).await?;
            let dflt = status_of(name("default")).await?;
            let sa = status_of(name("silver-a")).await?;
            let sb = status_of(name("silver-b")).await?;
            ensure!(
                gold.tenants_matched == 3 && vipp.tenants_matched == 1 && dflt.tenants_matched == 0,
                "gold {} vip {} default {}",
                gold.tenants_matched,
                vipp.tenants_matched,
                dflt.tenants_matched
            );
            ensure!(
                sa.tenants_matched == 2 && sb.tenants_matched == 0,
                "silver-a {} silver-b {}",
                sa.tenants_matched,
                sb.tenants_matched
            );
            ensure!(
                sa.conflict_count == 2 && sb.conflict_count == 2,
                "conflicts a {} b {}",
                sa.conflict_count,
                sb.conflict_count
            );
            ensure!(
                gold.conflict_count == 0,
                "gold conflicts {}",
                gold.conflict_count
            );
            let conflict = sa.conflicts.first().context("a listed conflict")?;
            ensure!(
                conflict.policies == [name("silver-a"), name("silver-b")],
                "tied policies, winner first: {:?}",
                conflict.policies
            );
            // Acknowledged by the lanes themselves.
            for (p, cells) in [(&gold, 1), (&sa, 1)] {
                ensure!(
                    p.cells_total == cells && p.cells_acknowledged == cells,
                    "acknowledged {}/{}",
                    p.cells_acknowledged,
                    p.cells_total
                );
            }
            Ok(Some(()))
        })
        .await?;

        // The cells' policy files say the same, and their lanes enforce that version.
        let cm: Api<ConfigMap> = Api::namespaced(world.client.clone(), &format!("cell-{alpha}"));
        let file: CellPolicies = serde_json::from_str(
            cm.get("policies")
                .await?
                .data
                .as_ref()
                .and_then(|d| d.get(POLICY_FILE_KEY))
                .context("policies.json")?,
        )?;
        ensure!(
            file.for_tenant(&vip)
                .is_some_and(|p| p.policy == name("vip")),
            "vip policy in alpha's file: {file:?}"
        );
        ensure!(
            file.for_tenant(&name("g1"))
                .is_some_and(|p| p.policy == name("gold")),
            "gold policy in alpha's file"
        );
        let cell = world.cells_api().get(&alpha).await?;
        for endpoint in cell.status.map(|s| s.endpoints).unwrap_or_default() {
            let host = endpoint.split(':').next().unwrap_or_default();
            let v: PolicyVersion = reqwest::get(format!("http://{host}:9090{POLICY_VERSION_PATH}"))
                .await?
                .json()
                .await?;
            ensure!(
                v.version == file.version,
                "lane {host} enforces {:?}, the file is {:?}",
                v.version,
                file.version
            );
        }

        // The router's table: edge limits with the same numbers, and alpha's k and seed.
        let configmaps: Api<ConfigMap> = Api::namespaced(world.client.clone(), &world.system.name);
        let table = poll(
            "the table with every tenant and edge limit",
            common::WAIT,
            || {
                let api = configmaps.clone();
                async move {
                    let t = read_table(&api).await?;
                    ensure!(
                        t.tenants.len() == 6 && t.tenants.iter().all(|r| r.edge_limit.is_some()),
                        "table: {} tenants",
                        t.tenants.len()
                    );
                    Ok(Some(t))
                }
            },
        )
        .await?;
        let route = table.tenant(&vip).context("vip in table")?;
        let limit = table.edge_limits[route.edge_limit.context("vip edge limit")? as usize];
        ensure!(
            (limit.requests, limit.period_ms) == (5, 1000),
            "vip edge limit {limit:?}"
        );
        let alpha_route = table
            .cells
            .iter()
            .find(|c| c.name == alpha)
            .context("alpha in table")?;
        ensure!(
            (
                alpha_route.lanes.len(),
                alpha_route.shard_size,
                alpha_route.shard_seed
            ) == (2, 1, 7),
            "alpha route {alpha_route:?}"
        );

        // The pool's figures equal the crds/ functions over its tenants.
        let params = ShardParams::new(2, 1, 7)?;
        let lane_sets: Vec<_> = ["g1", "g2", "g3", "vip"]
            .iter()
            .map(|n| shard::lanes_for(&name(n), 0, params))
            .collect();
        let expected_overlap = shard::worst_overlap(&lane_sets);
        let pool_status = poll("pool status", common::WAIT, || {
            let api = pools_api.clone();
            let pool = format!("{id}-pool");
            async move {
                let s = api.get(&pool).await?.status.unwrap_or_default();
                ensure!(
                    s.tenants == 4 && s.lanes_total == 2 && s.lanes_healthy == 2,
                    "pool status {s:?}"
                );
                Ok(Some(s))
            }
        })
        .await?;
        ensure!(
            pool_status.combinations == shard::combinations(2, 1),
            "C(N,k) {}",
            pool_status.combinations
        );
        ensure!(
            pool_status.worst_overlap == expected_overlap,
            "worst overlap {} vs {expected_overlap}",
            pool_status.worst_overlap
        );
        let per_lane: u32 = pool_status
            .cells
            .iter()
            .flat_map(|c| c.tenants_per_lane.iter())
            .sum();
        ensure!(
            per_lane == 4,
            "k = 1: each tenant on exactly one lane: {:?}",
            pool_status.cells
        );
        Ok(())
    }
    .await;
    let selector = ListParams::default().labels(&format!("{TEST_LABEL}={id}"));
    let _ = tenants_api
        .delete_collection(&DeleteParams::default(), &selector)
        .await;
    let _ = policies_api
        .delete_collection(&DeleteParams::default(), &selector)
        .await;
    let _ = pools_api
        .delete_collection(&DeleteParams::default(), &selector)
        .await;
    world.finish(result).await.expect("scenario");
}
