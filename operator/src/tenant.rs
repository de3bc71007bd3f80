//! The TenantAssignment controller: gives each tenant a cell — the one it is pinned to, or the
//! least utilized eligible one ([`crate::placement`]) — and reports it in status (cell, epoch,
//! phase, `Placed` condition) with an Event that says why.
//!
//! Placement decisions are serialized through one [`PlacementState`] so concurrent reconciles
//! never overfill a cell: it counts every tenant the cache shows on a cell plus the placements
//! made since that the cache does not show yet, and is rebuilt from the caches at most once a
//! second (the counts it keeps in between only grow, so it errs towards fuller cells).
//! A tenant that already has a cell keeps it until its target changes (`spec.cell`, or its cell
//! drains): that is a move, driven by [`crate::moves`]. A placed tenant is provisioned in its
//! cell (its record created through the cell's admin API) once the cell is Ready.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use cellstack_api::{
    shard::{self, ShardParams},
    v1alpha1::{
        Cell, ShuffleShardPool, TenantAssignment, TenantAssignmentStatus, TenantPhase,
        condition_type,
    },
};
use futures::{Stream, StreamExt};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    cell::desired::CELL_LABEL,
    cell_admin::CellAdmin,
    conditions::{self, Desired},
    context::{Context, readable},
    controllers,
    error::{Error, Result},
    moves::{self, Mover},
    placement::{CellView, Placer, Request},
    pools,
};

const CONTROLLER: &str = "tenant";
/// How long the placement state is trusted before it is rebuilt from the caches.
const REBUILD_AFTER: Duration = Duration::from_secs(1);
/// How long a placement the cache does not show is counted anyway.
const PENDING_TTL: Duration = Duration::from_secs(300);
/// How often an unschedulable tenant is tried again besides cell changes.
const UNSCHEDULABLE_RECHECK: Duration = Duration::from_secs(15);

/// Condition reasons.
pub mod reason {
    pub const PLACED: &str = "Placed";
    pub const PINNED: &str = "Pinned";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const CELL_NOT_FOUND: &str = "CellNotFound";
    pub const CELL_DRAINING: &str = "CellDraining";
    pub const PINNED_TO_DRAINING: &str = "PinnedToDrainingCell";
    pub const STABLE: &str = "Stable";
}

/// What the TenantAssignment controller shares besides the [`Context`].
pub struct Tenants {
    pub ctx: Arc<Context>,
    pub cells: Store<DeserializeGuard<Cell>>,
    pub placement: Mutex<PlacementState>,
    /// For the cells' admin APIs.
    pub http: reqwest::Client,
    pub moves: moves::Settings,
    /// Tenants moved out of one draining cell at the same time.
    pub drain_concurrency: usize,
    /// Admin clients by cell, with when they were made (the token and lanes are re-read
    /// after [`ADMIN_TTL`]).
    pub admins: Mutex<HashMap<String, (Instant, CellAdmin)>>,
    /// Placement Events, published off the reconcile path.
    pub events: controllers::EventQueue,
}

/// How soon a tenant whose cell could not be given its record yet is tried again.
const PROVISION_RECHECK: Duration = Duration::from_secs(3);
/// How long a cached admin client is used.
const ADMIN_TTL: Duration = Duration::from_secs(60);
/// How soon a tenant waiting for its turn to leave a draining cell looks again.
const DRAIN_RECHECK: Duration = Duration::from_secs(2);
/// How long a drain move this replica started counts before the cache shows it.
const DRAIN_PENDING_TTL: Duration = Duration::from_secs(30);

/// Counts of tenants per cell as placement sees them.
#[derive(Default)]
pub struct PlacementState {
    placer: Option<(Instant, Placer)>,
    /// Placements made that the TenantAssignment cache may not show yet: tenant → (cell,
    /// shard variant, when).
    pending: HashMap<String, (String, u32, Instant)>,
    /// Moves out of draining cells started here: tenant → (from, when).
    drains: HashMap<String, (String, Instant)>,
}

/// How often the tenants of draining cells are looked for.
const DRAIN_SCAN: Duration = Duration::from_secs(2);
/// A tenant of a draining cell is triggered at most this often by the scan (a throttled one
/// requeues itself meanwhile).
const DRAIN_TRIGGER_EVERY: Duration = Duration::from_secs(30);

/// The controller over the shared TenantAssignment store, triggered by its subscription, and
/// by [`cell_triggers`] for the tenants of draining cells and of cells that became Ready again
/// (a Cell's change is not an event of the tenants it holds).
pub fn controller(
    subscription: impl Stream<Item = Arc<DeserializeGuard<TenantAssignment>>> + Send + 'static,
    store: Store<DeserializeGuard<TenantAssignment>>,
    cells: Store<DeserializeGuard<Cell>>,
    datastores: Store<Pod>,
) -> Controller<DeserializeGuard<TenantAssignment>> {
    Controller::for_shared_stream(subscription, store.clone())
        .reconcile_on(cell_triggers(cells, datastores, store))
}

/// The TenantAssignment events worth a reconcile: a new object, or a new generation of its
/// spec. The operator's own status patches (one per placement) would otherwise bring every
/// tenant back once more for nothing; moves drive themselves by requeueing. Keyed by uid, so a
/// tenant deleted and created again under its name is new. The memory of uids is dropped when
/// it holds twice the tenants the store does (everything then passes once).
pub fn spec_changes(
    events: impl Stream<Item = Arc<DeserializeGuard<TenantAssignment>>> + Send + 'static,
    store: Store<DeserializeGuard<TenantAssignment>>,
) -> impl Stream<Item = Arc<DeserializeGuard<TenantAssignment>>> + Send + 'static {
    let mut seen: HashMap<String, i64> = HashMap::new();
    events.filter(move |guard| {
        let (uid, generation) = (guard.meta().uid.clone(), guard.meta().generation);
        let pass = match (uid, generation) {
            (Some(uid), Some(generation)) => {
                if seen.len() > 2 * store.len() + 1024 {
                    seen.clear();
                }
                seen.insert(uid, generation) != Some(generation)
            }
            // Without a uid or generation there is nothing to compare: reconcile.
            _ => true,
        };
        std::future::ready(pass)
    })
}

/// What a cell is serving from, as far as its tenants' records go: since when it is Ready, and
/// which pod runs its managed datastore (a new pod of an `Ephemeral` datastore starts empty).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incarnation {
    ready_since: Time,
    datastore: Option<String>,
}

/// A cell's incarnation, when it is Ready.
fn incarnation(cell: &Cell, datastores: &HashMap<String, String>) -> Option<Incarnation> {
    let ready_since = cell
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY && c.status == "True")
        .map(|c| c.last_transition_time.clone())?;
    Some(Incarnation {
        ready_since,
        datastore: datastores.get(&cell.name_any()).cloned(),
    })
}

/// Cell name → uid of the Ready pod of its managed datastore.
fn ready_datastores(pods: &Store<Pod>) -> HashMap<String, String> {
    pods.state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.labels().get(CELL_LABEL)?.clone(), p.uid()?)))
        .collect()
}

/// The cells Ready now whose incarnation changed since the last look: not Ready then, Ready
/// since another time (a flip and back between two looks), or on another datastore pod. The
/// first sight of a cell is no news: the controller's start reconciles every tenant anyway.
fn revived<T: PartialEq>(
    before: &HashMap<String, Option<T>>,
    now: &HashMap<String, Option<T>>,
) -> HashSet<String> {
    now.iter()
        .filter(|(name, since)| {
            since.is_some() && before.get(*name).is_some_and(|was| was != *since)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Every [`DRAIN_SCAN`], looks at the cached Cells and triggers:
/// - the tenants that live in a draining cell and were not triggered in the last
///   [`DRAIN_TRIGGER_EVERY`]: so setting `draining: true` starts the drain within seconds, and
///   after a restart too;
/// - every tenant of a cell that became Ready again or whose datastore pod was replaced (see
///   [`revived`]): an `Ephemeral` datastore comes back empty, and the reconcile provisions the
///   tenant's record again at once instead of at the next resync, while it answered 404. (A
///   restart can be too quick for the cell's Ready condition to show; the pod's uid cannot.)
///
/// Bounded: one reference per such tenant per period, deduplicated by the controller's queue.
pub fn cell_triggers(
    cells: Store<DeserializeGuard<Cell>>,
    datastores: Store<Pod>,
    tenants: Store<DeserializeGuard<TenantAssignment>>,
) -> impl Stream<Item = ObjectRef<DeserializeGuard<TenantAssignment>>> + Send + 'static {
    let ticks = futures::stream::unfold(tokio::time::interval(DRAIN_SCAN), |mut every| async {
        every.tick().await;
        Some(((), every))
    });
    let mut triggered: HashMap<String, Instant> = HashMap::new();
    let mut ready: HashMap<String, Option<Incarnation>> = HashMap::new();
    ticks.flat_map(move |_| {
        let cells = readable(&cells);
        let draining: HashSet<String> = cells
            .iter()
            .filter(|c| c.spec.draining)
            .map(|c| c.name_any())
            .collect();
        let pods = ready_datastores(&datastores);
        let now: HashMap<String, Option<Incarnation>> = cells
            .iter()
            .map(|c| (c.name_any(), incarnation(c, &pods)))
            .collect();
        let revived = revived(&ready, &now);
        ready = now;
        for cell in &revived {
            info!(%cell, "cell became Ready again or has a new datastore; checking its tenants are provisioned");
        }
        triggered.retain(|_, at| at.elapsed() < DRAIN_TRIGGER_EVERY);
        let mut due = Vec::new();
        if !draining.is_empty() || !revived.is_empty() {
            for guard in tenants.state() {
                let Ok(ta) = &guard.0 else { continue };
                let Some(home) = ta.status.as_ref().and_then(|s| s.cell.as_deref()) else {
                    continue;
                };
                let name = ta.name_any();
                if revived.contains(home) {
                    due.push(ObjectRef::new(&name));
                } else if draining.contains(home) && !triggered.contains_key(&name) {
                    triggered.insert(name.clone(), Instant::now());
                    due.push(ObjectRef::new(&name));
                }
            }
        }
        futures::stream::iter(due)
    })
}

/// Runs the controller until `stop`; yields once per finished reconcile.
pub fn run(
    controller: Controller<DeserializeGuard<TenantAssignment>>,
    shared: Arc<Tenants>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    controller
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, shared)
        .map(|result| match result {
            Ok(_) => {}
            Err(controller::Error::ReconcilerFailed(e, obj)) => {
                warn!(tenant = %obj.name, error = %e, "tenant reconcile failed");
            }
            Err(e) => warn!(error = %e, "tenant controller"),
        })
}

fn error_policy(
    guard: Arc<DeserializeGuard<TenantAssignment>>,
    error: &Error,
    shared: Arc<Tenants>,
) -> Action {
    controllers::retry(&shared.ctx, &format!("tenant/{}", guard.name_any()), error)
}

async fn reconcile(
    guard: Arc<DeserializeGuard<TenantAssignment>>,
    shared: Arc<Tenants>,
) -> Result<Action> {
    let key = format!("tenant/{}", guard.name_any());
    let deadline = shared.ctx.api_timeout * 3;
    controllers::instrumented(
        &shared.ctx,
        CONTROLLER,
        &key,
        deadline,
        reconcile_inner(&guard, &shared),
    )
    .await
}

/// What the reconcile decided for a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
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
        explanation: String,
    },
    /// No cell can take it.
    Unschedulable {
        reason: &'static str,
        message: String,
    },
}

async fn reconcile_inner(
    guard: &DeserializeGuard<TenantAssignment>,
    shared: &Tenants,
) -> Result<Action> {
    let ctx = &shared.ctx;
    let ta = match &guard.0 {
        Ok(ta) => ta,
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            return Err(Error::Unreadable {
                name,
                reason: invalid.error.clone(),
            });
        }
    };
    let mut fresh = None;
    if let Some(cell) = ta.status.as_ref().and_then(|s| s.cell.clone()) {
        let want = wanted(ta, &cell, shared).await;
        let moving = ta
            .status
            .as_ref()
            .and_then(|s| s.move_.as_ref())
            .is_some_and(|m| moves::plan::in_progress(m.step));
        if let Want::Throttled = want
            && !moving
        {
            return Ok(Action::requeue(DRAIN_RECHECK));
        }
        let target = match &want {
            Want::Target(t) => Some(t.as_str()),
            Want::Stay | Want::Throttled => None,
        };
        if moving || target.is_some_and(|t| t != cell) {
            let cells = readable(&shared.cells);
            let mut mover =
                Mover::load(ctx, &shared.http, &cells, shared.moves, &ta.name_any()).await?;
            match mover.drive(target).await? {
                moves::Outcome::Requeue(after) => return Ok(Action::requeue(after)),
                // Nothing (more) to move: go on with the object as the mover left it.
                moves::Outcome::Idle => fresh = Some(mover.into_object()),
            }
        }
    }
    let ta = fresh.as_ref().unwrap_or(ta);
    let previous = ta.status.clone().unwrap_or_default();
    let decision = match &previous.cell {
        Some(cell) => Decision::Keep {
            cell: cell.clone(),
            pinned_to_draining: ta.spec.cell.as_deref() == Some(cell.as_str())
                && readable(&shared.cells)
                    .iter()
                    .any(|c| c.name_any() == *cell && c.spec.draining),
        },
        None => decide(ta, shared).await,
    };
    let status = status_for(ta, &previous, &decision, &Time(Timestamp::now()));
    if Some(&status) != ta.status.as_ref() {
        let api: Api<TenantAssignment> = Api::all(ctx.client.clone());
        // A merge patch, not server-side apply: placing 10k tenants is 10k of these, and apply
        // costs the API server field-ownership bookkeeping on every one. The operator is the
        // status' only writer; the resourceVersion makes a write from an outdated cache fail
        // (and retry) instead of undoing a newer one. The move record is the mover's alone.
        let mut status = status.clone();
        status.move_ = None;
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": ta.resource_version() },
            "status": status,
        });
        let name = ta.name_any();
        ctx.call(
            format!("patch status of tenant {name}"),
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
        ctx.metrics
            .status_patches
            .get_or_create(&crate::metrics::ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
        publish_transition(&shared.events, ta, &previous, &decision).await;
    }
    let provisioned = match &status.cell {
        Some(cell) => provision(shared, &ta.spec.tenant_id, cell, status.epoch).await,
        None => true,
    };
    Ok(match decision {
        Decision::Unschedulable { .. } => Action::requeue(UNSCHEDULABLE_RECHECK),
        // The cell is not Ready yet or did not answer: soon again, not at the next resync.
        _ if !provisioned => Action::requeue(PROVISION_RECHECK),
        _ => Action::requeue(ctx.resync),
    })
}

/// Where a placed tenant should live.
enum Want {
    /// Where it is.
    Stay,
    /// In this cell (a move, unless it is there already).
    Target(String),
    /// Its cell drains, but as many tenants as allowed are leaving it already.
    Throttled,
}

/// The cell a placed tenant served by `cell` should live in: the one it is pinned to; for an
/// automatic tenant, the target of its move under way, or a new cell when its own drains.
async fn wanted(ta: &TenantAssignment, cell: &str, shared: &Tenants) -> Want {
    if let Some(pin) = &ta.spec.cell {
        return Want::Target(pin.clone());
    }
    let tenant = &ta.spec.tenant_id;
    let recorded = ta.status.as_ref().and_then(|s| s.move_.as_ref());
    if let Some(mv) = recorded.filter(|m| moves::plan::in_progress(m.step)) {
        return Want::Target(mv.to.clone());
    }
    let cells: Vec<Cell> = readable(&shared.cells);
    let draining = cells
        .iter()
        .any(|c| c.name_any() == cell && c.spec.draining);
    if !draining {
        return Want::Stay;
    }
    let mut state = shared.placement.lock().await;
    // One decision at a time: count the moves out of this cell the cache shows, plus those
    // started here that it does not show yet.
    let tenants = shared.ctx.tenants.state();
    let mut leaving: std::collections::HashSet<String> = tenants
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|t| {
            t.status
                .as_ref()
                .and_then(|s| s.move_.as_ref())
                .is_some_and(|m| m.from == cell && moves::plan::in_progress(m.step))
        })
        .map(|t| t.spec.tenant_id.clone())
        .collect();
    state
        .drains
        .retain(|_, (_, at)| at.elapsed() < DRAIN_PENDING_TTL);
    leaving.extend(
        state
            .drains
            .iter()
            .filter(|(_, (from, _))| from == cell)
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
    let placer = build_placer(&cells, &shared.ctx, &mut state.pending);
    state.placer = Some((Instant::now(), placer));
    let Some((_, placer)) = state.placer.as_mut() else {
        return Want::Stay;
    };
    match placer.place(&request) {
        Ok(p) => {
            state
                .drains
                .insert(tenant.clone(), (cell.to_owned(), Instant::now()));
            Want::Target(p.cell)
        }
        Err(e) => {
            warn!(%tenant, %cell, reason = %e.message(), "no cell can take a tenant of a draining cell");
            Want::Throttled
        }
    }
}

/// Makes sure `cell` has the tenant's record, once the cell is Ready; false when that could
/// not be done yet. Failures are logged and tried again soon: they must not hold up placement.
async fn provision(shared: &Tenants, tenant: &str, cell: &str, epoch: u64) -> bool {
    let found = readable(&shared.cells)
        .into_iter()
        .find(|c| c.name_any() == cell);
    let Some(found) = found.filter(|c| {
        c.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition_type::READY))
            && crate::cell_admin::reachable(c)
    }) else {
        return false;
    };
    let admin = {
        let mut admins = shared.admins.lock().await;
        match admins.get(cell).filter(|(at, _)| at.elapsed() < ADMIN_TTL) {
            Some((_, admin)) => admin.clone(),
            None => match CellAdmin::of(&shared.ctx, &shared.http, &found).await {
                Ok(admin) => {
                    admins.insert(cell.to_owned(), (Instant::now(), admin.clone()));
                    admin
                }
                Err(e) => {
                    warn!(%tenant, %cell, error = %e, "cannot reach the cell to provision a tenant");
                    return false;
                }
            },
        }
    };
    match admin.provision(tenant, epoch).await {
        Ok(true) => {
            shared.ctx.metrics.tenants_provisioned.inc();
            info!(%tenant, %cell, epoch, "tenant provisioned in its cell");
            true
        }
        Ok(false) => true,
        Err(e) => {
            shared.admins.lock().await.remove(cell);
            warn!(%tenant, %cell, error = %e, "provisioning a tenant failed; trying again soon");
            false
        }
    }
}

/// Chooses a cell for an unplaced tenant, counting it there at once.
async fn decide(ta: &TenantAssignment, shared: &Tenants) -> Decision {
    let tenant = ta.spec.tenant_id.clone();
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
        return Decision::Place {
            cell: cell.clone(),
            shard_variant: *variant,
            reason: reason::PLACED,
            explanation: format!("placed on {cell}"),
        };
    }
    if let Some(target) = &ta.spec.cell {
        let Some(cell) = cells.iter().find(|c| c.name_any() == *target) else {
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
            .insert(tenant.clone(), (target.clone(), 0, Instant::now()));
        // The placer's counts no longer include everything: rebuild before the next decision.
        state.placer = None;
        return Decision::Place {
            cell: target.clone(),
            shard_variant: 0,
            reason: reason::PINNED,
            explanation: format!(
                "placed on {target}: pinned by spec.cell (cordons and capacity are not applied to a pin)"
            ),
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
/// placements it does not show yet (those it does show are dropped from `pending`).
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
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut lane_sets: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    let mut present = std::collections::HashSet::new();
    for ta in tenants.iter().filter_map(|g| g.0.as_ref().ok()) {
        present.insert(ta.spec.tenant_id.as_str());
        let status = ta.status.as_ref();
        if let Some(cell) = status.and_then(|s| s.cell.as_ref()) {
            pending.remove(&ta.spec.tenant_id);
            *counts.entry(cell.clone()).or_default() += 1;
            lane_sets.entry(cell.clone()).or_default().push((
                ta.spec.tenant_id.clone(),
                status.map_or(0, |s| s.shard_variant),
            ));
        }
    }
    // A pending placement of a tenant deleted before the cache showed its status would count
    // forever; one the cache has never shown for this long is dropped.
    pending.retain(|tenant, (_, _, at)| {
        present.contains(tenant.as_str()) || at.elapsed() < PENDING_TTL
    });
    for (tenant, (cell, variant, _)) in pending.iter() {
        *counts.entry(cell.clone()).or_default() += 1;
        lane_sets
            .entry(cell.clone())
            .or_default()
            .push((tenant.clone(), *variant));
    }
    let views = cells.iter().map(|cell| {
        let name = cell.name_any();
        let view = CellView::from_cell(cell, counts.get(&name).copied().unwrap_or(0));
        let pool = pools::pools_of(cell, &pools).first().map(|p| (*p).clone());
        match pool.and_then(|p| {
            Some((
                p.spec.max_overlap?,
                ShardParams::new(p.spec.lanes, p.spec.shard_size, p.spec.seed).ok()?,
            ))
        }) {
            Some((max_overlap, params)) => {
                let occupied = lane_sets
                    .get(&name)
                    .map(|ts| {
                        ts.iter()
                            .map(|(t, v)| shard::lanes_for(t, *v, params))
                            .collect()
                    })
                    .unwrap_or_default();
                view.with_overlap_bound(params, max_overlap, occupied)
            }
            None => view,
        }
    });
    Placer::new(views)
}

/// The status for `decision`, keeping condition times that did not flip.
fn status_for(
    ta: &TenantAssignment,
    previous: &TenantAssignmentStatus,
    decision: &Decision,
    now: &Time,
) -> TenantAssignmentStatus {
    let generation = ta.metadata.generation;
    let mut status = TenantAssignmentStatus {
        observed_generation: generation,
        ..previous.clone()
    };
    let desired = match decision {
        Decision::Keep {
            cell,
            pinned_to_draining,
        } => {
            status.phase = TenantPhase::Placed;
            let placed = previous
                .conditions
                .iter()
                .find(|c| c.type_ == condition_type::PLACED && c.status == "True")
                .map_or_else(
                    || {
                        Desired::new(
                            condition_type::PLACED,
                            true,
                            reason::PLACED,
                            format!("served by {cell}"),
                        )
                    },
                    |c| {
                        Desired::new(
                            condition_type::PLACED,
                            true,
                            known_reason(&c.reason),
                            c.message.clone(),
                        )
                    },
                );
            let progressing = if *pinned_to_draining {
                Desired::new(
                    condition_type::PROGRESSING,
                    false,
                    reason::PINNED_TO_DRAINING,
                    format!(
                        "cell {cell} is draining, but the tenant is pinned to it: change spec.cell to move it"
                    ),
                )
            } else {
                Desired::new(
                    condition_type::PROGRESSING,
                    false,
                    reason::STABLE,
                    format!("served by {cell}"),
                )
            };
            vec![placed, progressing]
        }
        Decision::Place {
            cell,
            shard_variant,
            reason,
            explanation,
        } => {
            status.phase = TenantPhase::Placed;
            status.cell = Some(cell.clone());
            status.shard_variant = *shard_variant;
            // The first placement is epoch 1; moves bump it from there.
            status.epoch = status.epoch.max(1);
            vec![
                Desired::new(condition_type::PLACED, true, reason, explanation.clone()),
                Desired::new(
                    condition_type::PROGRESSING,
                    false,
                    reason::STABLE,
                    format!("served by {cell}"),
                ),
            ]
        }
        Decision::Unschedulable { reason, message } => {
            status.phase = TenantPhase::Unschedulable;
            vec![
                Desired::new(condition_type::PLACED, false, reason, message.clone()),
                Desired::new(condition_type::PROGRESSING, false, reason, message.clone()),
            ]
        }
    };
    status.conditions = conditions::merge(&previous.conditions, &desired, generation, now);
    status
}

fn known_reason(s: &str) -> &'static str {
    match s {
        reason::PINNED => reason::PINNED,
        moves::steps::reason::MOVED => moves::steps::reason::MOVED,
        _ => reason::PLACED,
    }
}

/// Events on transitions: where the tenant went and why, or why it cannot go anywhere.
async fn publish_transition(
    events: &controllers::EventQueue,
    ta: &TenantAssignment,
    previous: &TenantAssignmentStatus,
    decision: &Decision,
) {
    let (type_, reason, note) = match decision {
        Decision::Place { explanation, .. } => (EventType::Normal, "Placed", explanation.clone()),
        Decision::Unschedulable { reason, message } => {
            let seen = previous.conditions.iter().any(|c| {
                c.type_ == condition_type::PLACED && c.reason == *reason && c.message == *message
            });
            if seen {
                return;
            }
            (EventType::Warning, *reason, message.clone())
        }
        Decision::Keep { .. } => return,
    };
    if matches!(decision, Decision::Place { .. }) {
        info!(tenant = %ta.spec.tenant_id, %note, "placed");
    }
    events
        .publish(ta.object_ref(&()), type_, reason, note)
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::fixtures::TenantFixture;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    #[test]
    fn a_first_placement_sets_the_cell_epoch_one_and_a_placed_condition() {
        let ta = TenantAssignment::test("t1");
        let decision = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 2,
            reason: reason::PLACED,
            explanation: "placed on alpha: least utilized".into(),
        };
        let s = status_for(&ta, &TenantAssignmentStatus::default(), &decision, &at(1));
        assert_eq!(
            (s.cell.as_deref(), s.epoch, s.shard_variant, s.phase),
            (Some("alpha"), 1, 2, TenantPhase::Placed)
        );
        assert!(conditions::is_true(&s.conditions, condition_type::PLACED));
    }

    #[test]
    fn keeping_a_placed_tenant_changes_nothing_the_second_time() {
        let ta = TenantAssignment::test("t1").served_by("alpha");
        let place = Decision::Place {
            cell: "alpha".into(),
            shard_variant: 0,
            reason: reason::PLACED,
            explanation: "placed on alpha".into(),
        };
        let first = status_for(&ta, &TenantAssignmentStatus::default(), &place, &at(1));
        let keep = Decision::Keep {
            cell: "alpha".into(),
            pinned_to_draining: false,
        };
        let second = status_for(&ta, &first, &keep, &at(2));
        let third = status_for(&ta, &second, &keep, &at(3));
        assert_eq!(second, third);
        assert_eq!(
            second.conditions[0].message, "placed on alpha",
            "the placement reason stays"
        );
    }

    #[test]
    fn a_cell_that_becomes_ready_again_has_its_tenants_checked() {
        let t = |secs: i64| {
            Some(Time(
                Timestamp::from_second(secs).expect("a valid timestamp"),
            ))
        };
        let map = |pairs: &[(&str, Option<Time>)]| -> HashMap<String, Option<Time>> {
            pairs
                .iter()
                .map(|(n, s)| ((*n).to_owned(), s.clone()))
                .collect()
        };
        // First sight: nothing to do.
        assert!(revived(&map(&[]), &map(&[("a", t(1))])).is_empty());
        // Not Ready, then Ready.
        let r = revived(&map(&[("a", None)]), &map(&[("a", t(2))]));
        assert_eq!(r, HashSet::from(["a".to_owned()]));
        // Flipped and back between two looks: Ready since another time.
        let r = revived(&map(&[("a", t(1))]), &map(&[("a", t(5))]));
        assert_eq!(r, HashSet::from(["a".to_owned()]));
        // Unchanged, or not Ready now.
        assert!(revived(&map(&[("a", t(1))]), &map(&[("a", t(1))])).is_empty());
        assert!(revived(&map(&[("a", t(1))]), &map(&[("a", None)])).is_empty());
    }

    #[test]
    fn a_tenant_pinned_to_its_draining_cell_stays_and_says_how_to_move_it() {
        let ta = TenantAssignment::test("t1")
            .pinned_to("alpha")
            .served_by("alpha");
        let previous = ta.status.clone().unwrap_or_default();
        let keep = Decision::Keep {
            cell: "alpha".into(),
            pinned_to_draining: true,
        };
        let s = status_for(&ta, &previous, &keep, &at(1));
        assert_eq!(s.cell.as_deref(), Some("alpha"));
        let progressing = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::PROGRESSING)
            .expect("condition");
        assert_eq!(progressing.reason, reason::PINNED_TO_DRAINING);
        assert!(progressing.message.contains("spec.cell"));
    }

    #[test]
    fn an_unschedulable_tenant_says_why_and_keeps_no_cell() {
        let ta = TenantAssignment::test("t1");
        let d = Decision::Unschedulable {
            reason: reason::UNSCHEDULABLE,
            message: "no cell in zones [z] can take tenant t1".into(),
        };
        let s = status_for(&ta, &TenantAssignmentStatus::default(), &d, &at(1));
        assert_eq!(
            (s.phase, s.cell.as_deref()),
            (TenantPhase::Unschedulable, None)
        );
        assert!(!conditions::is_true(&s.conditions, condition_type::PLACED));
    }
}
