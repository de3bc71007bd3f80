//! The ShuffleShardPool controller: reports each pool's figures — C(N,k), the worst overlap
//! between any two tenants of one of its cells, lanes healthy, and the blast radius of every
//! lane — computed by [`crate::logic::blast_radius`] from the cells and placed tenants as they are.
//! The pool's lane count reaches the cells through the Cell controller; this one observes.

use std::{sync::Arc, time::Duration};

use cellstack_api::v1alpha1::{Cell, ShuffleShardPool, ShuffleShardPoolStatus, condition_type};
use futures::Stream;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::Store,
    },
};

use crate::{
    context::{Context, readable},
    controllers,
    error::{Error, Result},
    logic::{
        blast_radius::{self, PoolCell, PoolTenant},
        conditions::{self, Desired},
        pools,
    },
};

const CONTROLLER: &str = "shuffleshardpool";
/// Cells listed in status (the schema's bound); the figures cover them all.
const LISTED_CELLS: usize = 256;

pub mod reason {
    pub const HEALTHY: &str = "AllLanesHealthy";
    pub const LANES_UNHEALTHY: &str = "LanesUnhealthy";
    pub const NO_CELLS: &str = "NoCells";
    pub const SHARED_CELLS: &str = "CellsInAnotherPool";
    pub const OVERLAP_EXCEEDED: &str = "OverlapBoundExceeded";
    pub const WITHIN_BOUNDS: &str = "WithinBounds";
}

pub struct Pools {
    pub ctx: Arc<Context>,
    pub cells: Store<DeserializeGuard<Cell>>,
}

pub fn controller(
    client: &kube::Client,
    selector: &str,
) -> Controller<DeserializeGuard<ShuffleShardPool>> {
    Controller::new(
        Api::<DeserializeGuard<ShuffleShardPool>>::all(client.clone()),
        controllers::selected(selector),
    )
}

/// Runs until `stop`; `changes` (any tenant, cell or pool change) brings every pool back.
pub fn run(
    controller: Controller<DeserializeGuard<ShuffleShardPool>>,
    shared: Arc<Pools>,
    changes: impl Stream<Item = ()> + Send + 'static,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let controller = controller.reconcile_all_on(changes).with_config(
        controller::Config::default()
            .concurrency(2)
            .debounce(Duration::from_secs(1)),
    );
    controllers::run(controller, shared, stop)
}

impl controllers::Reconciler for Pools {
    type Kind = ShuffleShardPool;
    const NAME: &'static str = CONTROLLER;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, guard: &DeserializeGuard<ShuffleShardPool>) -> Result<Action> {
        reconcile_inner(guard, self).await
    }
}

async fn reconcile_inner(
    guard: &DeserializeGuard<ShuffleShardPool>,
    shared: &Pools,
) -> Result<Action> {
    let ctx = &shared.ctx;
    let pool = controllers::object_of(guard)?;
    let name = pool.name_any();
    let params = blast_radius::params_of(&pool.spec).map_err(|e| Error::InvalidSpec {
        kind: "ShuffleShardPool",
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let all_pools: Vec<ShuffleShardPool> = readable(&ctx.pools);
    let cells: Vec<Cell> = readable(&shared.cells);
    let mine: Vec<&Cell> = cells.iter().filter(|c| pools::selects(pool, c)).collect();
    // A cell selected by several pools is shaped by the first by name; the others say so.
    let elsewhere: Vec<String> = mine
        .iter()
        .filter(|c| {
            pools::pools_of(c, &all_pools)
                .first()
                .is_some_and(|p| p.name_any() != name)
        })
        .map(|c| c.name_any())
        .collect();
    let pool_cells: Vec<PoolCell> = mine
        .iter()
        .map(|c| PoolCell {
            name: c.name_any(),
            lanes_healthy: c.status.as_ref().map_or(0, |s| s.ready_lanes),
        })
        .collect();
    let tenants = ctx.tenants.state();
    let placed = tenants.iter().filter_map(|g| {
        let ta = g.0.as_ref().ok()?;
        let status = ta.status.as_ref()?;
        Some(PoolTenant {
            id: ta.tenant_id(),
            cell: status.cell.as_deref()?,
            shard_variant: status.shard_variant,
        })
    });
    let figures = blast_radius::figures(params, &pool_cells, placed);

    let healthy = if pool_cells.is_empty() {
        Desired::new(
            condition_type::READY,
            false,
            reason::NO_CELLS,
            "the selector matches no cell",
        )
    } else if !elsewhere.is_empty() {
        Desired::new(
            condition_type::READY,
            false,
            reason::SHARED_CELLS,
            format!(
                "cells {} are selected by another pool that sorts first and shapes them; narrow one selector",
                elsewhere.join(", ")
            ),
        )
    } else if figures.lanes_healthy < figures.lanes_total {
        Desired::new(
            condition_type::READY,
            false,
            reason::LANES_UNHEALTHY,
            format!(
                "{} lanes healthy; the router routes around the others",
                figures.lanes_healthy_summary()
            ),
        )
    } else {
        Desired::new(
            condition_type::READY,
            true,
            reason::HEALTHY,
            format!("{} lanes healthy", figures.lanes_healthy_summary()),
        )
    };
    let bound = match pool.spec.max_overlap {
        Some(max) if figures.worst_overlap > max => Desired::new(
            condition_type::DEGRADED,
            true,
            reason::OVERLAP_EXCEEDED,
            format!(
                "two tenants share {} lanes, above maxOverlap {max}: they were placed before the bound or pinned; new placements honour it",
                figures.worst_overlap
            ),
        ),
        _ => Desired::new(
            condition_type::DEGRADED,
            false,
            reason::WITHIN_BOUNDS,
            format!(
                "worst overlap {} of k = {}",
                figures.worst_overlap, pool.spec.shard_size
            ),
        ),
    };
    let previous = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let mut listed = figures.status_cells();
    listed.truncate(LISTED_CELLS);
    let status = ShuffleShardPoolStatus {
        conditions: conditions::merge(
            &previous.conditions,
            &[healthy, bound],
            generation,
            &Time(Timestamp::now()),
        ),
        observed_generation: generation,
        combinations: figures.combinations,
        worst_overlap: figures.worst_overlap,
        tenants: figures.tenants,
        lanes_healthy: figures.lanes_healthy,
        lanes_total: figures.lanes_total,
        lanes_healthy_summary: Some(figures.lanes_healthy_summary()),
        cells: listed,
    };
    if pool.status.as_ref() != Some(&status) {
        controllers::apply_status::<ShuffleShardPool>(ctx, &name, &status).await?;
    }
    Ok(Action::requeue(ctx.resync))
}
