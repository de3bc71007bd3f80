//! The RateLimitPolicy controller: tells the truth about each policy in its status — the tenants
//! it is effective for, its conflicts (ties under the documented precedence), and whether every
//! cell holding those tenants has acknowledged the policy version it must enforce (asked of each
//! lane's admin listener, not assumed from having written the ConfigMap).
//!
//! The cells' policy files are written by the Cell controller; this controller only observes.
//!
//! Besides, [`watch_acknowledgements`] asks every cell's lanes on a fixed interval and keeps
//! `cellstack_operator_policy_ack_age_seconds{cell}`: how long the cell's lanes have not all
//! enforced the version of its current policy file (0 while they do).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{POLICY_VERSION_PATH, PolicyVersion},
    v1alpha1::{Cell, PolicyConflict, RateLimitPolicy, RateLimitPolicyStatus, condition_type},
};
use futures::{Stream, StreamExt};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::Store,
    },
};

use crate::{
    cached_tenant::CachedTenant,
    context::{Context, readable},
    controllers,
    error::{Error, Result},
    logic::{
        cell::tenants,
        conditions::{self, Desired},
        effective,
    },
};

const CONTROLLER: &str = "ratelimitpolicy";
/// Conflicts listed in status (the schema's bound); the count has them all.
const LISTED_CONFLICTS: usize = 20;
/// How soon a policy not yet acknowledged everywhere is checked again.
const ACK_RECHECK: Duration = Duration::from_secs(5);
/// Timeout of one question to a lane.
const LANE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often [`watch_acknowledgements`] asks every cell.
pub const ACK_SWEEP: Duration = Duration::from_secs(5);
/// Cells asked at the same time by one sweep.
const ACK_SWEEP_CONCURRENCY: usize = 8;

pub mod reason {
    pub const RESOLVED: &str = "Resolved";
    pub const ACKNOWLEDGED: &str = "Acknowledged";
    pub const WAITING: &str = "WaitingForCells";
    pub const NO_CELLS: &str = "NoCells";
    pub const NO_CONFLICT: &str = "NoConflict";
    pub const CONFLICT: &str = "Conflict";
}

/// What the controller shares besides the [`Context`].
pub struct Policies {
    pub ctx: Arc<Context>,
    pub cells: Store<DeserializeGuard<Cell>>,
}

pub fn controller(
    client: &kube::Client,
    selector: &str,
) -> Controller<DeserializeGuard<RateLimitPolicy>> {
    Controller::new(
        Api::<DeserializeGuard<RateLimitPolicy>>::all(client.clone()),
        controllers::selected(selector),
    )
}

/// Runs until `stop`; `changes` (any tenant, cell or policy change) brings every policy back,
/// since a change anywhere can change a policy's matches, conflicts or acknowledgement.
pub fn run(
    controller: Controller<DeserializeGuard<RateLimitPolicy>>,
    shared: Arc<Policies>,
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

impl controllers::Reconciler for Policies {
    type Kind = RateLimitPolicy;
    const NAME: &'static str = CONTROLLER;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, guard: &DeserializeGuard<RateLimitPolicy>) -> Result<Action> {
        reconcile_inner(guard, self).await
    }
}

async fn reconcile_inner(
    guard: &DeserializeGuard<RateLimitPolicy>,
    shared: &Policies,
) -> Result<Action> {
    let ctx = &shared.ctx;
    let policy = controllers::object_of(guard)?;
    let name = policy.name_any();
    let views = effective::policy_views(&readable(&ctx.policies));
    let all = ctx.tenants.state();
    let placed: Vec<&CachedTenant> = all.iter().filter_map(|g| g.0.as_ref().ok()).collect();
    let resolution = effective::resolve(placed.iter().copied(), &views);
    let matched = resolution
        .matched_per_policy
        .get(&name)
        .copied()
        .unwrap_or(0);
    let conflicts: Vec<PolicyConflict> = resolution
        .conflicts_of(&name)
        .map(PolicyConflict::from)
        .collect();

    // Cells holding a tenant this policy is effective for.
    let target_cells: BTreeSet<String> = placed
        .iter()
        .filter(|ta| resolution.per_tenant.get(ta.tenant_id()) == Some(&name))
        .filter_map(|ta| ta.status.as_ref()?.cell.clone())
        .collect();
    let cells: Vec<Cell> = readable(&shared.cells);
    let mut acknowledged = 0u32;
    let mut waiting = Vec::new();
    for cell_name in &target_cells {
        let Some(cell) = cells.iter().find(|c| c.name_any() == *cell_name) else {
            waiting.push(format!("{cell_name} (no such cell)"));
            continue;
        };
        let held: Vec<&CachedTenant> = placed
            .iter()
            .copied()
            .filter(|ta| tenants::holds(cell_name, ta))
            .collect();
        let expected = effective::cell_file(held.iter().copied(), &views)
            .map_err(|source| Error::Encode {
                what: format!("policies of cell {cell_name}"),
                source,
            })?
            .version;
        match lanes_enforcing(&shared.ctx.lanes, cell, &expected).await {
            Ok(()) => acknowledged += 1,
            Err(why) => waiting.push(format!("{cell_name} ({why})")),
        }
    }
    let total = u32::try_from(target_cells.len()).unwrap_or(u32::MAX);

    let generation = policy.metadata.generation;
    let previous = policy.status.clone().unwrap_or_default();
    let ack = if total == 0 {
        Desired::new(
            condition_type::ACKNOWLEDGED,
            true,
            reason::NO_CELLS,
            "no cell holds a tenant this policy is effective for",
        )
    } else if waiting.is_empty() {
        Desired::new(
            condition_type::ACKNOWLEDGED,
            true,
            reason::ACKNOWLEDGED,
            format!("all {total} cell(s) enforce the current version"),
        )
    } else {
        Desired::new(
            condition_type::ACKNOWLEDGED,
            false,
            reason::WAITING,
            format!(
                "{acknowledged}/{total} cells enforce the current version; waiting for {}",
                waiting.join(", ")
            ),
        )
    };
    let conflict_free = if conflicts.is_empty() {
        Desired::new(
            condition_type::CONFLICT_FREE,
            true,
            reason::NO_CONFLICT,
            "no tenant is selected by another policy of equal precedence",
        )
    } else {
        let first = &conflicts[0];
        Desired::new(
            condition_type::CONFLICT_FREE,
            false,
            reason::CONFLICT,
            format!(
                "{} tenant(s) are selected by policies of equal priority and specificity, e.g. {} by {}; the first by name is enforced; give one a higher priority",
                conflicts.len(),
                first.tenant,
                first.policies.join(", ")
            ),
        )
    };
    let ready = Desired::new(
        condition_type::READY,
        true,
        reason::RESOLVED,
        format!("effective for {matched} tenant(s)"),
    );
    let desired = [ready, ack, conflict_free];
    let status = RateLimitPolicyStatus {
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            generation,
            &Time(Timestamp::now()),
        ),
        observed_generation: generation,
        tenants_matched: matched,
        conflict_count: u32::try_from(conflicts.len()).unwrap_or(u32::MAX),
        conflicts: conflicts.iter().take(LISTED_CONFLICTS).cloned().collect(),
        cells_acknowledged: acknowledged,
        cells_total: total,
    };
    if policy.status.as_ref() != Some(&status) {
        controllers::apply_status::<RateLimitPolicy>(ctx, &name, &status).await?;
        for c in conditions::changed(&previous.conditions, &status.conditions) {
            let event = match (c.type_.as_str(), c.status.as_str()) {
                (t, "False") if t == condition_type::CONFLICT_FREE => {
                    Some((EventType::Warning, reason::CONFLICT))
                }
                (t, "True")
                    if t == condition_type::ACKNOWLEDGED && c.reason == reason::ACKNOWLEDGED =>
                {
                    Some((EventType::Normal, reason::ACKNOWLEDGED))
                }
                _ => None,
            };
            if let Some((type_, reason)) = event {
                controllers::publish(
                    ctx,
                    &policy.object_ref(&()),
                    type_,
                    reason,
                    c.message.clone(),
                )
                .await;
            }
        }
    }
    Ok(if waiting.is_empty() {
        Action::requeue(ctx.resync)
    } else {
        Action::requeue(ACK_RECHECK)
    })
}

/// Whether every lane of `cell` enforces policy version `expected`; otherwise why not.
async fn lanes_enforcing(
    lanes: &crate::lane_client::LaneClient,
    cell: &Cell,
    expected: &str,
) -> std::result::Result<(), String> {
    let addresses = crate::logic::cell::exposure::admin_addresses(cell);
    if addresses.is_empty() {
        return Err("no lane addresses the operator can reach yet".into());
    }
    for host in &addresses {
        let url = lanes.url(host, POLICY_VERSION_PATH);
        let answer = lanes
            .http()
            .get(&url)
            .timeout(LANE_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("lane {host} unreachable: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("lane {host} answered {}", answer.status()));
        }
        let version: PolicyVersion = answer
            .json()
            .await
            .map_err(|e| format!("lane {host}: {e}"))?;
        if version.version != expected {
            return Err(format!(
                "lane {host} enforces version {:?}",
                version.version
            ));
        }
    }
    Ok(())
}

/// When each cell's lanes were last seen all enforcing the version of its current policy file.
/// Pure: fed observations and their times, it gives each cell's acknowledgement age.
#[derive(Debug, Default)]
pub struct AckClock {
    /// Per cell: the last observation where every lane enforced the current version, or the
    /// first observation of the cell if none has yet.
    acknowledged_at: HashMap<String, Instant>,
}

impl AckClock {
    /// Records that `cell`'s lanes all enforce (`acknowledged`) or not the version its current
    /// file carries, as observed at `now`; returns how long they have not all done so (zero
    /// when they do).
    pub fn observe(&mut self, cell: &str, acknowledged: bool, now: Instant) -> Duration {
        let since = self.acknowledged_at.entry(cell.to_owned()).or_insert(now);
        if acknowledged {
            *since = now;
            Duration::ZERO
        } else {
            now.saturating_duration_since(*since)
        }
    }

    /// Forgets the cells not in `cells`; returns them.
    pub fn retain(&mut self, cells: &BTreeSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .acknowledged_at
            .keys()
            .filter(|c| !cells.contains(*c))
            .cloned()
            .collect();
        for cell in &gone {
            self.acknowledged_at.remove(cell);
        }
        gone
    }
}

/// Every [`ACK_SWEEP`] until `stop`: asks the lanes of every cell in the cache whether they
/// enforce the version of the policy file the cell should carry now (the tenants it holds under
/// the current policies) and sets `policy_ack_age_seconds{cell}` from an [`AckClock`]; the
/// series of a cell starts with its first sweep and is removed once the cell is gone. Each
/// question to a lane is bounded by its timeout, and at most [`ACK_SWEEP_CONCURRENCY`] cells
/// are asked at once.
pub async fn watch_acknowledgements(
    shared: Arc<Policies>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut clock = AckClock::default();
    let mut ticks = tokio::time::interval(ACK_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sweep = sweep_acknowledgements(&shared);
        let observed = tokio::select! {
            observed = sweep => observed,
            _ = stop.wait_for(|s| *s) => return,
        };
        let now = Instant::now();
        let metrics = &shared.ctx.metrics;
        let mut names = BTreeSet::new();
        for (cell, acknowledged) in observed {
            let age = clock.observe(&cell, acknowledged, now);
            metrics
                .policy_ack_age_seconds
                .get_or_create(&crate::metrics::CellLabels { cell: cell.clone() })
                .set(age.as_secs_f64());
            names.insert(cell);
        }
        for cell in clock.retain(&names) {
            metrics
                .policy_ack_age_seconds
                .remove(&crate::metrics::CellLabels { cell });
        }
    }
}

/// Each cached cell, and whether all its lanes enforce its current policy file's version.
async fn sweep_acknowledgements(shared: &Policies) -> Vec<(String, bool)> {
    let ctx = &shared.ctx;
    let views = effective::policy_views(&readable(&ctx.policies));
    let all = ctx.tenants.state();
    let placed: Vec<&CachedTenant> = all.iter().filter_map(|g| g.0.as_ref().ok()).collect();
    let cells: Vec<Cell> = readable(&shared.cells);
    let mut asks = Vec::with_capacity(cells.len());
    for cell in &cells {
        let name = cell.name_any();
        let held = placed
            .iter()
            .copied()
            .filter(|ta| tenants::holds(&name, ta));
        let expected = match effective::cell_file(held, &views) {
            Ok(file) => file.version,
            Err(error) => {
                tracing::warn!(cell = %name, %error, "cannot build the policy file of a cell to check its acknowledgement");
                asks.push(futures::future::Either::Left(std::future::ready((
                    name, false,
                ))));
                continue;
            }
        };
        let lanes = shared.ctx.lanes.clone();
        asks.push(futures::future::Either::Right(async move {
            let acknowledged = lanes_enforcing(&lanes, cell, &expected).await;
            if let Err(why) = &acknowledged {
                tracing::debug!(cell = %name, why, "policy version not acknowledged by every lane");
            }
            (name, acknowledged.is_ok())
        }));
    }
    futures::stream::iter(asks)
        .buffer_unordered(ACK_SWEEP_CONCURRENCY)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_age_is_zero_while_acknowledged_and_grows_from_the_last_acknowledgement() {
        let mut clock = AckClock::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(clock.observe("a", true, at(0)), Duration::ZERO);
        assert_eq!(clock.observe("a", true, at(5)), Duration::ZERO);
        // The file changed; the lanes lag behind it.
        assert_eq!(clock.observe("a", false, at(10)), Duration::from_secs(5));
        assert_eq!(clock.observe("a", false, at(15)), Duration::from_secs(10));
        assert_eq!(clock.observe("a", true, at(20)), Duration::ZERO);
        assert_eq!(clock.observe("a", false, at(25)), Duration::from_secs(5));
    }

    #[test]
    fn a_cell_never_acknowledged_ages_from_its_first_sighting_and_is_forgotten_when_gone() {
        let mut clock = AckClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.observe("new", false, t0), Duration::ZERO);
        assert_eq!(
            clock.observe("new", false, t0 + Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        clock.observe("kept", true, t0);
        let gone = clock.retain(&BTreeSet::from(["kept".to_owned()]));
        assert_eq!(gone, vec!["new".to_owned()]);
        // Seen again later, it starts over.
        assert_eq!(
            clock.observe("new", false, t0 + Duration::from_secs(60)),
            Duration::ZERO
        );
    }
}
