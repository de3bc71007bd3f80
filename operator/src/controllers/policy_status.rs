//! The RateLimitPolicy controller: tells the truth about each policy in its status — the tenants
//! it is effective for, its conflicts (ties under the documented precedence), and whether every
//! cell holding those tenants has acknowledged the policy version it must enforce (asked of each
//! lane's admin listener, not assumed from having written the ConfigMap).
//!
//! The cells' policy files are written by the Cell controller; this controller only observes.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use cellstack_api::{
    admin::{POLICY_VERSION_PATH, PolicyVersion},
    v1alpha1::{
        Cell, PolicyConflict, RateLimitPolicy, RateLimitPolicyStatus, TenantAssignment,
        condition_type,
    },
};
use futures::Stream;
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
    context::{Context, readable},
    controllers,
    error::{Error, Result},
    logic::{
        cell::tenants,
        conditions::{self, Desired},
        effective,
    },
    names::ADMIN_PORT,
};

const CONTROLLER: &str = "ratelimitpolicy";
/// Conflicts listed in status (the schema's bound); the count has them all.
const LISTED_CONFLICTS: usize = 20;
/// How soon a policy not yet acknowledged everywhere is checked again.
const ACK_RECHECK: Duration = Duration::from_secs(5);
/// Timeout of one question to a lane.
const LANE_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub http: reqwest::Client,
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
    let placed: Vec<&TenantAssignment> = all.iter().filter_map(|g| g.0.as_ref().ok()).collect();
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
        .filter(|ta| resolution.per_tenant.get(ta.spec.tenant_id.as_str()) == Some(&name))
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
        let held: Vec<&TenantAssignment> = placed
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
        match lanes_enforcing(&shared.http, cell, &expected).await {
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
    http: &reqwest::Client,
    cell: &Cell,
    expected: &str,
) -> std::result::Result<(), String> {
    let status = cell.status.as_ref().ok_or("no status yet")?;
    if status.endpoints.is_empty() {
        return Err("no lane addresses yet".into());
    }
    for endpoint in &status.endpoints {
        let host = endpoint
            .rsplit_once(':')
            .map_or(endpoint.as_str(), |(h, _)| h);
        let url = format!("http://{host}:{ADMIN_PORT}{POLICY_VERSION_PATH}");
        let answer = http
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
