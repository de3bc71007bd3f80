//! Where a tenant should live: for an unplaced tenant, the cell it is pinned to or the least
//! utilized eligible one ([`Decision`]); for a placed one, its target ([`Want`]): where it is, the
//! cell it is pinned to, or a new cell when its own drains. Decisions are serialized through one
//! [`PlacementState`] so concurrent reconciles never overfill a cell.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use cellstack_api::{
    shard::{self, LaneSet, ShardParams},
    v1alpha1::{Cell, ShuffleShardPool},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tracing::warn;

use super::{Tenants, reason};
use crate::{
    cached_tenant::CachedTenant,
    context::{Context, readable, with_readable},
    logic::{
        move_plan,
        placement::{CellView, Placer, Request},
        pools,
    },
};

/// How long the placement state is trusted before it is rebuilt from the caches.
const REBUILD_AFTER: Duration = Duration::from_secs(1);
/// How long a placement the cache does not show is counted anyway.
const PENDING_TTL: Duration = Duration::from_secs(300);
/// How long a drain move this replica started counts before the cache shows it.
const DRAIN_PENDING_TTL: Duration = Duration::from_secs(30);

/// Counts of tenants per cell as placement sees them.
#[derive(Default)]
pub struct PlacementState {
    placer: Option<(Instant, Placer)>,
    /// Placements made that the TenantAssignment cache may not show yet: tenant → (cell,
    /// shard variant, when).
    pending: HashMap<String, (String, u32, Instant)>,
    /// Moves out of draining cells started here that the cache may not show yet, by tenant.
    drains: HashMap<String, PendingDrain>,
}

/// A move out of a draining cell decided here.
struct PendingDrain {
    from: String,
    at: Instant,
    /// When the move the tenant's status recorded at the decision started (an ended one, rolled
    /// back say), so that the cache showing that record is not taken for the new move.
    earlier: Option<Time>,
}

impl PendingDrain {
    /// Whether the move still counts as pending: decided less than [`DRAIN_PENDING_TTL`] ago,
    /// and the cache shows no move out of the cell for the tenant (`shown`: when the one it
    /// shows started) other than the one its status recorded at the decision.
    fn pending(&self, shown: Option<&Option<Time>>) -> bool {
        self.at.elapsed() < DRAIN_PENDING_TTL
            && shown.is_none_or(|started| *started == self.earlier)
    }
}

/// What the reconcile decided for a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Keep the current cell (and say when it drains but the tenant is pinned to it).
    Keep {
        cell: String,
        pinned_to_draining: bool,
    },
    /// Put the tenant on `cell` now.
    Place {
        cell: String,
        shard_variant: u32,
        reason: &'static str,
        /// For the `Placed` condition: the same for every tenant placed the same way.
        message: String,
        /// For the Event: `message` with the counts of the moment.
        explanation: String,
    },
    /// No cell can take it.
    Unschedulable {
        reason: &'static str,
        message: String,
    },
}

/// The decision for a tenant whose moves (if any) are done: keep its cell, or place it.
pub(super) async fn decision(ta: &CachedTenant, shared: &Tenants) -> Decision {
    match ta.status.as_ref().and_then(|s| s.cell.clone()) {
        Some(cell) => Decision::Keep {
            pinned_to_draining: ta.spec.cell.as_deref() == Some(cell.as_str())
                && with_readable(&shared.cells, &cell, |c| c.spec.draining) == Some(true),
            cell,
        },
        None => decide(ta, shared).await,
    }
}

/// Where a placed tenant should live.
pub(super) enum Want {
    /// Where it is.
    Stay,
    /// In this cell (a move, unless it is there already).
    Target(String),
    /// Its cell drains, but as many tenants as allowed are leaving it already.
    Throttled,
}

/// The cell a placed tenant served by `cell` should live in: the one it is pinned to; for an
/// automatic tenant, the target of its move under way, or a new cell when its own drains.
pub(super) async fn wanted(ta: &CachedTenant, cell: &str, shared: &Tenants) -> Want {
    if let Some(pin) = &ta.spec.cell {
        return Want::Target(pin.to_string());
    }
    let tenant = ta.tenant_id();
    let recorded = ta.status.as_ref().and_then(|s| s.move_.as_ref());
    if let Some(mv) = recorded.filter(|m| move_plan::in_progress(m.step)) {
        return Want::Target(mv.to.clone());
    }
    if with_readable(&shared.cells, cell, |c| c.spec.draining) != Some(true) {
        return Want::Stay;
    }
    let mut state = shared.placement.lock().await;
    // One decision at a time: count the moves out of this cell the cache shows that have not
    // flipped yet, plus those started here that it does not show yet.
    let tenants = shared.ctx.tenants.state();
    // Tenant → when its move out of this cell the cache shows (under way or ended) started.
    let mut shown: HashMap<String, Option<Time>> = HashMap::new();
    let mut leaving: HashSet<String> = HashSet::new();
    for t in tenants.iter().filter_map(|g| g.0.as_ref().ok()) {
        let Some(mv) = t.status.as_ref().and_then(|s| s.move_.as_ref()) else {
            continue;
        };
        if mv.from != cell {
            continue;
        }
        shown.insert(t.tenant_id().to_owned(), mv.started_at.clone());
        if move_plan::holds_drain_slot(mv.step) {
            leaving.insert(t.tenant_id().to_owned());
        }
    }
    // A pending move is no longer counted once the cache shows it: a move out other than the
    // one its status recorded when it was decided (a retry after a rollback still shows the
    // rolled-back move until its new one is written).
    state
        .drains
        .retain(|t, pending| pending.pending(shown.get(t)));
    leaving.extend(
        state
            .drains
            .iter()
            .filter(|(_, pending)| pending.from == cell)
            .map(|(t, _)| t.clone()),
    );
    leaving.remove(tenant);
    if leaving.len() >= shared.drain_concurrency {
        return Want::Throttled;
    }
    let Some(request) = Request::from_assignment(ta) else {
        return Want::Stay;
    };
    // A placer over fresh counts: a drain is rare, and its choices must not overfill a cell.
    let cells: Vec<Cell> = readable(&shared.cells);
    let placer = build_placer(&cells, &shared.ctx, &mut state.pending);
    state.placer = Some((Instant::now(), placer));
    let Some((_, placer)) = state.placer.as_mut() else {
        return Want::Stay;
    };
    match placer.place(&request) {
        Ok(p) => {
            state.drains.insert(
                tenant.to_owned(),
                PendingDrain {
                    from: cell.to_owned(),
                    at: Instant::now(),
                    earlier: recorded.and_then(|m| m.started_at.clone()),
                },
            );
            Want::Target(p.cell)
        }
        Err(e) => {
            warn!(%tenant, %cell, reason = %e.message(), "no cell can take a tenant of a draining cell");
            Want::Throttled
        }
    }
}

/// Chooses a cell for an unplaced tenant, counting it there at once.
async fn decide(ta: &CachedTenant, shared: &Tenants) -> Decision {
    let tenant = ta.tenant_id().to_owned();
    let cells: Vec<Cell> = shared
        .cells
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect();
    let mut state = shared.placement.lock().await;
    if let Some((cell, variant, _)) = state.pending.get(&tenant) {
        // Decided by an earlier reconcile whose status patch the cache does not show yet (or
        // that failed): the same decision again, never a second cell.
        let message = format!("placed on {cell}");
        return Decision::Place {
            cell: cell.clone(),
            shard_variant: *variant,
            reason: reason::PLACED,
            explanation: message.clone(),
            message,
        };
    }
    if let Some(target) = &ta.spec.cell {
        let Some(cell) = cells.iter().find(|c| c.name_any() == **target) else {
            return Decision::Unschedulable {
                reason: reason::CELL_NOT_FOUND,
                message: format!(
                    "tenant {tenant} is pinned to cell {target}, which does not exist; create it or change spec.cell"
                ),
            };
        };
        if cell.spec.draining || cell.metadata.deletion_timestamp.is_some() {
            return Decision::Unschedulable {
                reason: reason::CELL_DRAINING,
                message: format!(
                    "tenant {tenant} is pinned to cell {target}, which is draining or being deleted; pin it to another cell"
                ),
            };
        }
        state
            .pending
            .insert(tenant.clone(), (target.to_string(), 0, Instant::now()));
        // The placer's counts no longer include everything: rebuild before the next decision.
        state.placer = None;
        let message = format!(
            "placed on {target}: pinned by spec.cell (cordons and capacity are not applied to a pin)"
        );
        return Decision::Place {
            cell: target.to_string(),
            shard_variant: 0,
            reason: reason::PINNED,
            explanation: message.clone(),
            message,
        };
    }
    let Some(request) = Request::from_assignment(ta) else {
        return Decision::Unschedulable {
            reason: reason::UNSCHEDULABLE,
            message: "the assignment names neither a cell nor automatic placement".into(),
        };
    };
    let stale = state
        .placer
        .as_ref()
        .is_none_or(|(built, _)| built.elapsed() > REBUILD_AFTER);
    if stale {
        let placer = build_placer(&cells, &shared.ctx, &mut state.pending);
        state.placer = Some((Instant::now(), placer));
    }
    let Some((_, placer)) = state.placer.as_mut() else {
        return Decision::Unschedulable {
            reason: reason::UNSCHEDULABLE,
            message: "placement state unavailable".into(),
        };
    };
    match placer.place(&request) {
        Ok(p) => {
            state
                .pending
                .insert(tenant, (p.cell.clone(), p.shard_variant, Instant::now()));
            Decision::Place {
                cell: p.cell,
                shard_variant: p.shard_variant,
                reason: reason::PLACED,
                message: p.summary,
                explanation: p.explanation,
            }
        }
        Err(e) => Decision::Unschedulable {
            reason: reason::UNSCHEDULABLE,
            message: e.message(),
        },
    }
}

/// A placer whose counts are the tenants the cache shows on each cell plus the `pending`
/// placements it does not show yet (those it does show are dropped from `pending`). Built for
/// every batch of placements (at most once a second in a burst), so it borrows from the cache
/// and computes lane sets only for the cells whose pool bounds their overlap: at 100k tenants a
/// copy of every id each time was 100k short-lived strings among the cache's long-lived ones.
fn build_placer(
    cells: &[Cell],
    ctx: &Context,
    pending: &mut HashMap<String, (String, u32, Instant)>,
) -> Placer {
    let tenants = ctx.tenants.state();
    let pools: Vec<ShuffleShardPool> = ctx
        .pools
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect();
    let bounds: HashMap<String, (u32, ShardParams)> = cells
        .iter()
        .filter_map(|cell| {
            let pool = *pools::pools_of(cell, &pools).first()?;
            let params = ShardParams::new(pool.spec.lanes, pool.spec.shard_size, pool.spec.seed);
            Some((cell.name_any(), (pool.spec.max_overlap?, params.ok()?)))
        })
        .collect();
    let mut counts: HashMap<&str, u32> = HashMap::new();
    let mut occupied: HashMap<&str, Vec<LaneSet>> = HashMap::new();
    let mut add = |cell, tenant: &str, variant| {
        *counts.entry(cell).or_default() += 1;
        if let Some((_, params)) = bounds.get(cell) {
            let lanes = shard::lanes_for(tenant, variant, *params);
            occupied.entry(cell).or_default().push(lanes);
        }
    };
    let mut present = HashSet::new();
    for ta in tenants.iter().filter_map(|g| g.0.as_ref().ok()) {
        present.insert(ta.tenant_id());
        let Some(status) = ta.status.as_ref() else {
            continue;
        };
        if let Some(cell) = status.cell.as_deref() {
            pending.remove(ta.tenant_id());
            add(cell, ta.tenant_id(), status.shard_variant);
        }
    }
    // A pending placement of a tenant deleted before the cache showed its status would count
    // forever; one the cache has never shown for this long is dropped.
    pending.retain(|tenant, (_, _, at)| {
        present.contains(tenant.as_str()) || at.elapsed() < PENDING_TTL
    });
    for (tenant, (cell, variant, _)) in pending.iter() {
        add(cell, tenant, *variant);
    }
    let views = cells.iter().map(|cell| {
        let name = cell.name_any();
        let view = CellView::from_cell(cell, counts.get(name.as_str()).copied().unwrap_or(0));
        match bounds.get(&name) {
            Some((max_overlap, params)) => view.with_overlap_bound(
                *params,
                *max_overlap,
                occupied.remove(name.as_str()).unwrap_or_default(),
            ),
            None => view,
        }
    });
    Placer::new(views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn time(secs: i64) -> Option<Time> {
        Some(Time(Timestamp::from_second(secs).expect("valid")))
    }

    fn decided(earlier: Option<Time>) -> PendingDrain {
        PendingDrain {
            from: "alpha".into(),
            at: Instant::now(),
            earlier,
        }
    }

    #[test]
    fn a_retry_stays_pending_while_the_cache_shows_the_move_it_retries() {
        let retry = decided(time(100));
        assert!(retry.pending(Some(&time(100))));
    }

    #[test]
    fn a_pending_move_ends_when_the_cache_shows_a_new_move() {
        assert!(!decided(time(100)).pending(Some(&time(200))));
        assert!(!decided(None).pending(Some(&time(200))));
    }

    #[test]
    fn a_move_the_cache_does_not_show_stays_pending_until_its_time_runs_out() {
        assert!(decided(None).pending(None));
        let long_ago = Instant::now()
            .checked_sub(DRAIN_PENDING_TTL)
            .expect("a monotonic clock that started more than the TTL ago");
        let expired = PendingDrain {
            at: long_ago,
            ..decided(None)
        };
        assert!(!expired.pending(None));
    }
}
