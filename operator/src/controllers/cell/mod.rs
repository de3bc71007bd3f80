//! The Cell controller: turns each Cell into its stack (namespace, Redis, lanes, Services,
//! policies, admin token, disruption budget, isolation), reports status, and keeps a Cell that
//! still holds tenants from being deleted.
//!
//! A reconcile reads as a pipeline: read inputs → build (pure, [`desired`]) → apply and delete
//! orphans ([`apply`]) → compute status (pure, [`status`]) → patch it only when it changed, with
//! Events only on transitions.

pub mod apply;
pub mod certificate;
pub mod confirm;
pub mod lanes;

use crate::logic::cell::{
    datastore, desired,
    exposure::{self, LaneAddresses},
    ownership, status, tenants,
};

use std::{sync::Arc, time::Duration};

use cellstack_api::v1alpha1::{Cell, CellStatus, ZONE_LABEL, condition_type};
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Namespace, Node, ObjectReference, Pod, Secret, Service},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::ListParams,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        finalizer::{self, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, info};

use self::{
    desired::Inputs,
    ownership::Owner,
    status::{Observed, Problem, reason},
};
use crate::{
    cached_tenant::CachedTenant,
    context::Context,
    controllers,
    error::{Error, Result},
    metrics::CellLabels,
    names::{MANAGED_BY, MANAGED_BY_LABEL},
    target::{MemberEvent, Reach, Target},
};

/// Finalizer that holds a Cell until it has no tenants and its namespace is deleted.
pub const FINALIZER: &str = "cellstack.dev/cell-protection";
/// On a Cell whose member cluster is gone for good: `"true"` lets its deletion finish without
/// deleting its stack there.
pub const ABANDON_ANNOTATION: &str = "cellstack.dev/abandon-stack";
const CONTROLLER: &str = "cell";
/// How often a cell whose deletion waits for tenants is checked besides tenant events.
const BLOCKED_RECHECK: Duration = Duration::from_secs(30);
/// How often a cell whose member cluster cannot be acted in (or is not yet probed) is looked at
/// again; the member controller probes every 10 s.
const MEMBER_RECHECK: Duration = Duration::from_secs(10);
/// Tenants named in messages about a blocked deletion.
const NAMED_TENANTS: usize = 5;

/// The Cell controller's watches: Cells (optionally only those matching `cell_selector`) and
/// every child kind, through the operator's label.
pub fn controller(
    client: &kube::Client,
    cell_selector: &str,
    listed: &controllers::Listed,
) -> Controller<DeserializeGuard<Cell>> {
    // The Cells' own reflector, built here rather than by `Controller::new`, so the publisher
    // can tell when its first list has arrived (`listed`) and a failing watch backs off.
    let (cells, writer) = reflector::store();
    let cell_events = reflector::reflector(
        writer,
        watcher(
            Api::<DeserializeGuard<Cell>>::all(client.clone()),
            controllers::selected(cell_selector),
        )
        .modify(trim_cached_cell),
    )
    .default_backoff()
    .inspect(listed.mark())
    .applied_objects();
    // Children are watched only through the operator's label, so a change or deletion of one
    // brings its cell back to the reconciler without watching every object in the cluster.
    let children = watcher::Config::default()
        .labels(crate::names::MANAGED_SELECTOR)
        .any_semantic();
    // Children are mapped to their cell through the controller owner reference by hand:
    // `owns` would give a cluster-scoped Cell the child's namespace, so one cell would show up
    // under several keys and could be reconciled twice at once.
    Controller::for_stream(cell_events, cells)
        .watches(
            Api::<Namespace>::all(client.clone()),
            children.clone(),
            owning_cell,
        )
        .watches(
            Api::<StatefulSet>::all(client.clone()),
            children.clone(),
            owning_cell,
        )
        .watches(
            Api::<Service>::all(client.clone()),
            children.clone(),
            owning_cell,
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            children.clone(),
            owning_cell,
        )
        .watches(
            Api::<Secret>::all(client.clone()),
            children.clone(),
            owning_cell,
        )
        .watches(
            Api::<PodDisruptionBudget>::all(client.clone()),
            children.clone(),
            owning_cell,
        )
        .watches(
            Api::<NetworkPolicy>::all(client.clone()),
            children,
            owning_cell,
        )
}

/// Runs `controller` until `stop` resolves, then finishes the reconciles in flight. Tenant
/// events bring the cells they name back; any pool event brings back every cell (a pool may
/// select cells by label); `member_changes` the cells in a member that turned reachable or not,
/// those in a cluster whose nodes changed, and those whose objects in their member changed.
/// Yields once per finished reconcile.
pub fn run(
    controller: Controller<DeserializeGuard<Cell>>,
    ctx: Arc<Context>,
    tenant_events: impl Stream<Item = Result<DeserializeGuard<CachedTenant>, watcher::Error>>
    + Send
    + 'static,
    pool_events: impl Stream<Item = ()> + Send + 'static,
    member_changes: impl Stream<Item = MemberEvent> + Send + 'static,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    // A member cluster turning reachable or not, or a change of a cluster's nodes, brings back
    // the cells in it; a change of a cell's objects in its member, that cell.
    let store = controller.store();
    let member_cells = member_changes.flat_map(move |event| {
        let in_cluster = |cluster: Option<&str>| -> Vec<ObjectRef<DeserializeGuard<Cell>>> {
            store
                .state()
                .iter()
                .filter_map(|guard| guard.0.as_ref().ok())
                .filter(|cell| cell.spec.cluster.as_deref() == cluster)
                .map(|cell| ObjectRef::new(&cell.name_any()))
                .collect()
        };
        let cells = match event {
            MemberEvent::Reachability(member) => in_cluster(Some(&member)),
            MemberEvent::Nodes(cluster) => in_cluster(cluster.as_deref()),
            MemberEvent::Child(cell) => vec![ObjectRef::new(&cell)],
        };
        futures::stream::iter(cells)
    });
    let controller = controller
        .reconcile_on(member_cells)
        .watches_stream(tenant_events, |guard: DeserializeGuard<CachedTenant>| {
            guard
                .0
                .ok()
                .map(|ta| tenants::cells_of(&ta))
                .unwrap_or_default()
                .into_iter()
                .map(|cell| ObjectRef::<DeserializeGuard<Cell>>::new(&cell))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(pool_events)
        .with_config(
            controller::Config::default()
                .concurrency(concurrency)
                // Coalesce bursts (a StatefulSet reports each pod's readiness separately).
                .debounce(Duration::from_millis(500)),
        );
    let cells = Cells {
        ctx,
        confirmer: confirm::Confirmer::default(),
    };
    controllers::run(controller, Arc::new(cells), stop)
}

/// The Cell controller's reconciler.
struct Cells {
    ctx: Arc<Context>,
    confirmer: confirm::Confirmer,
}

impl controllers::Reconciler for Cells {
    type Kind = Cell;
    const NAME: &'static str = CONTROLLER;
    // The finalizer helper's patches have no timeout of their own.
    const API_TIMEOUTS: u32 = 6;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, guard: &DeserializeGuard<Cell>) -> Result<Action> {
        reconcile_guarded(guard, &self.ctx, &self.confirmer).await
    }

    fn after_error(&self, key: &str, error: &Error) -> Action {
        if let Error::DeletionBlocked { .. } = error {
            // Not a failure to back off from: the cell waits for its tenants, and every change
            // to a TenantAssignment naming it brings it back at once; this is only a safety net.
            return Action::requeue(BLOCKED_RECHECK);
        }
        controllers::retry(&self.ctx, key, error)
    }
}

/// The Cell that controls `obj`, if any: by its controller owner reference, or, in a member
/// cluster, by its labels ([`ownership::cell_of`]).
fn owning_cell<K: Resource>(obj: K) -> Option<ObjectRef<DeserializeGuard<Cell>>> {
    ownership::cell_of(obj.meta()).map(ObjectRef::new)
}

async fn reconcile_guarded(
    guard: &DeserializeGuard<Cell>,
    ctx: &Arc<Context>,
    confirmer: &confirm::Confirmer,
) -> Result<Action> {
    let cell = match &guard.0 {
        Ok(cell) => cell.clone(),
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            let reference = ObjectReference {
                api_version: Some(Cell::api_version(&()).into_owned()),
                kind: Some(Cell::kind(&()).into_owned()),
                name: Some(name.clone()),
                uid: invalid.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            controllers::publish(
                ctx,
                &reference,
                EventType::Warning,
                "Unreadable",
                format!("this operator cannot read the cell: {}", invalid.error),
            )
            .await;
            return Err(Error::Unreadable {
                kind: Cell::kind(&()).into_owned(),
                name,
                reason: invalid.error.clone(),
            });
        }
    };
    let name = cell.name_any();
    let api: Api<Cell> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, Arc::new(cell), |event| async {
        match event {
            finalizer::Event::Apply(cell) => apply_cell(&cell, ctx, confirmer).await,
            finalizer::Event::Cleanup(cell) => {
                confirmer.forget(&cell.name_any()).await;
                cleanup(&cell, ctx).await
            }
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer {
            kind: "Cell",
            name,
            message: other.to_string(),
        },
    })
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// A Cell as the operator caches it: without its managed fields and `kubectl apply`'s copy of
/// the object, which it never reads. The tenant controller looks a cell up for each tenant it
/// provisions and copies it, and a cell's managed fields are a tree of hundreds of small maps.
fn trim_cached_cell(guard: &mut DeserializeGuard<Cell>) {
    if let Ok(cell) = &mut guard.0 {
        cell.metadata.managed_fields = None;
        if let Some(annotations) = &mut cell.metadata.annotations {
            annotations.remove(LAST_APPLIED);
        }
    }
}

/// Where `kubectl apply` keeps the object it last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The tenants `cell` holds, from the TenantAssignment reflector.
fn held_tenants(store: &Store<DeserializeGuard<CachedTenant>>, cell: &str) -> Vec<String> {
    let all = store.state();
    tenants::held_by(cell, all.iter().filter_map(|g| g.0.as_ref().ok()))
}

async fn apply_cell(
    cell: &Cell,
    ctx: &Arc<Context>,
    confirmer: &confirm::Confirmer,
) -> Result<Action> {
    let name = cell.name_any();
    let namespace = crate::names::namespace_of(&name);
    let target = match ctx.reach_of(cell) {
        Reach::Reachable(target) => target,
        Reach::Pending => {
            debug!(cell = %name, "its member cluster is not known yet; looking again shortly");
            return Ok(Action::requeue(MEMBER_RECHECK));
        }
        unseen => return report_unseen(cell, ctx, unseen).await,
    };
    let owner = Owner::of(cell, target.cluster())?;

    let outcome = build_and_apply(cell, ctx, &target, &owner, &namespace).await;
    let (mut observed, lanes, error) = match outcome {
        Ok((observed, lanes)) => (observed, lanes, None),
        Err(e) => {
            let Some(problem) = problem_of(&e) else {
                return Err(e);
            };
            let observed = Observed {
                problem: Some(problem),
                ..Observed::default()
            };
            (observed, None, Some(e))
        }
    };
    observed.tenants = {
        let all = ctx.tenants.state();
        tenants::count_held(&name, all.iter().filter_map(|g| g.0.as_ref().ok()))
    };
    observed.data_lost = {
        let all = ctx.tenants.state();
        tenants::lost_in(&name, all.iter().filter_map(|g| g.0.as_ref().ok()))
    };
    ctx.metrics
        .cell_data_lost_tenants
        .get_or_create(&CellLabels { cell: name.clone() })
        .set(i64::try_from(observed.data_lost.len()).unwrap_or(i64::MAX));
    let status = status::compute(cell, &observed, &now());
    publish_status(cell, ctx, status).await?;
    if let Some(e) = error {
        return Err(e);
    }
    let unconfirmed = confirmer.ensure(ctx, &target, cell, &ctx.tenants).await;
    let next = unconfirmed.map_or(ctx.resync, |d| d.min(ctx.resync));
    if let Some(lanes) = &lanes
        && let Some(delay) = lanes::roll(ctx, &target, &namespace, lanes).await?
    {
        return Ok(Action::requeue(delay.min(next)));
    }
    Ok(Action::requeue(next))
}

/// A cell whose member cluster cannot be acted in: nothing is called there; its status keeps
/// what was last seen of the stack, with `Unknown` conditions saying why
/// ([`status::Observed::unseen`]) — or, for a cell never provisioned whose MemberCluster does not
/// exist, `Ready=False`. Looked at again in [`MEMBER_RECHECK`].
async fn report_unseen(cell: &Cell, ctx: &Arc<Context>, reach: Reach) -> Result<Action> {
    let name = cell.name_any();
    let member = cell.spec.cluster.clone().unwrap_or_default();
    let provisioned = cell.status.as_ref().is_some_and(|s| s.namespace.is_some());
    let problem = match reach {
        Reach::Reachable(_) | Reach::Pending => return Ok(Action::requeue(MEMBER_RECHECK)),
        // The member's own message (with its count of failed probes) stays on the MemberCluster:
        // this one does not change while the member stays away, so nothing is rewritten.
        Reach::Unreachable { last_contact, .. } => Problem {
            reason: reason::CLUSTER_UNREACHABLE,
            message: format!(
                "member cluster {member} has not answered {}: the cell's stack is neither changed nor checked; its lanes and its cluster's routers keep serving (kubectl get membercluster {member})",
                last_contact.map_or_else(
                    || "since the operator started".to_owned(),
                    |t| format!("since {}", t.0)
                ),
            ),
        },
        Reach::Unusable { message } => Problem {
            reason: reason::MEMBER_CLUSTER_UNUSABLE,
            message: format!(
                "member cluster {member} has no usable credentials, so the cell's stack is neither changed nor checked: {message}"
            ),
        },
        Reach::NotFound => Problem {
            reason: reason::MEMBER_CLUSTER_NOT_FOUND,
            message: format!(
                "spec.cluster names MemberCluster {member}, which does not exist; create it (docs/member-clusters.md){}",
                if provisioned {
                    "; the cell's stack there is neither changed nor checked"
                } else {
                    ": nothing is applied until then"
                }
            ),
        },
    };
    let mut observed = if provisioned || problem.reason != reason::MEMBER_CLUSTER_NOT_FOUND {
        Observed {
            unseen: Some(problem),
            ..Observed::default()
        }
    } else {
        Observed {
            problem: Some(problem),
            ..Observed::default()
        }
    };
    observed.tenants = {
        let all = ctx.tenants.state();
        tenants::count_held(&name, all.iter().filter_map(|g| g.0.as_ref().ok()))
    };
    observed.data_lost = {
        let all = ctx.tenants.state();
        tenants::lost_in(&name, all.iter().filter_map(|g| g.0.as_ref().ok()))
    };
    let status = status::compute(cell, &observed, &now());
    publish_status(cell, ctx, status).await?;
    Ok(Action::requeue(MEMBER_RECHECK))
}

/// What the conditions say about an error of building or applying the stack; `None` for a
/// transient one (timeouts, conflicts, the API server briefly away): retried with backoff, not
/// worth flapping the conditions for.
fn problem_of(e: &Error) -> Option<Problem> {
    let reason = match e {
        Error::InvalidSpec { .. } => reason::INVALID_SPEC,
        Error::ExternalSecret { .. } => reason::EXTERNAL_SECRET,
        Error::NamespaceOwnedElsewhere { .. } => reason::NAMESPACE_OWNED_ELSEWHERE,
        e if e.is_permanent() => reason::APPLY_FAILED,
        _ => return None,
    };
    Some(Problem {
        reason,
        message: e.to_string(),
    })
}

/// Builds the stack of `cell` and applies it in `target`, its objects marked as `owner` says,
/// into `namespace` (in a member cluster only if that namespace is not someone else's).
async fn build_and_apply(
    cell: &Cell,
    ctx: &Arc<Context>,
    target: &Target,
    owner: &Owner,
    namespace: &str,
) -> Result<(Observed, Option<StatefulSet>)> {
    let name = cell.name_any();
    apply::guard_member_namespace(ctx, target, &name, owner, namespace).await?;
    let external = match &cell.spec.datastore.external {
        Some(ext) => Some(apply::external_redis_url(ctx, &name, &ext.url_secret_ref).await?),
        None => None,
    };
    let admin_token = apply::admin_token(ctx, target, namespace).await?;
    // The effective policies of the tenants this cell holds, resolved from every
    // RateLimitPolicy; the cell runtime reloads the file when it changes.
    let all_tenants = ctx.tenants.state();
    let held: Vec<&CachedTenant> = all_tenants
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|ta| tenants::holds(&name, ta))
        .collect();
    let policies = crate::logic::effective::policy_views(&crate::context::readable(&ctx.policies));
    let policies_json =
        crate::logic::effective::cell_file_of(&name, held.iter().copied(), &policies)
            .and_then(|file| serde_json::to_string(&file))
            .map_err(|source| Error::Encode {
                what: format!("policies of cell {name}"),
                source,
            })?;
    // With `--multicluster`: the cluster's nodes, for the lanes' addresses and the
    // NetworkPolicy's node sources (a failed read is retried: a policy without them would
    // refuse the traffic other clusters send).
    let nodes = match target.cross_cluster() {
        Some(_) => Some(list_nodes(ctx, target).await?),
        None => None,
    };
    let sources = nodes
        .as_deref()
        .map(|nodes| exposure::policy_sources(nodes, &ctx.cross_cluster_sources));
    let inputs = Inputs {
        lanes: crate::logic::pools::shape(cell, &crate::context::readable(&ctx.pools)).lanes,
        images: &ctx.images,
        system_namespace: target.system_namespace(),
        monitoring_namespace: target.monitoring_namespace(),
        admin_token: &admin_token,
        policies_json: &policies_json,
        external_redis_url: external.as_deref(),
        otlp_endpoint: target.otlp_endpoint(),
        tls: ctx.internal_ca.is_some(),
        owner: owner.clone(),
        cross_cluster: sources.as_deref(),
    };
    let stack = desired::stack(cell, &inputs)?;
    let applied = apply::apply_stack(ctx, target, &stack).await?;
    let pods = list_pods(ctx, target, namespace).await;
    let node_addresses = target
        .cross_cluster()
        .zip(nodes.as_deref())
        .map(|(kind, nodes)| exposure::nodes_of(nodes, kind));
    let cross_cluster = node_addresses
        .as_deref()
        .map(|nodes| {
            cross_cluster_addresses(
                cell,
                &applied.lane_services,
                pods.as_deref().unwrap_or_default(),
                nodes,
            )
        })
        .unwrap_or_default();
    let node_ips: Vec<std::net::IpAddr> = node_addresses
        .iter()
        .flatten()
        .filter_map(|n| n.address)
        .collect();
    certificate::ensure(
        ctx,
        target,
        cell,
        owner,
        namespace,
        &applied.lane_services,
        &node_ips,
    )
    .await?;
    apply::delete_orphans(ctx, target, &name, owner, namespace, &stack).await?;

    let lanes = applied.lanes.as_ref().map(status::Rollout::of);
    // A managed datastore is ready once enough pods are to take acknowledged writes.
    let datastore_ready = match datastore::Plan::of_cell(cell) {
        Some(plan) => applied
            .redis
            .as_ref()
            .map(status::Rollout::of)
            .is_some_and(|r| plan.ready_enough(r.ready)),
        None => external.is_some(),
    };
    let runs_in = match &pods {
        Some(pods) => runs_in(ctx, target, pods, nodes.as_deref()).await,
        None => None,
    };
    let observed = Observed {
        namespace: Some(namespace.to_owned()),
        lanes,
        datastore_ready,
        endpoints: apply::endpoints(&applied.lane_services),
        cross_cluster,
        tenants: 0,
        data_lost: Vec::new(),
        problem: None,
        unseen: None,
        runs_in,
    };
    Ok((observed, applied.lanes))
}

/// Where other clusters reach `cell`'s lanes ([`exposure::lane_addresses`], sticking to the
/// nodes its status names); empty until every lane has an address.
fn cross_cluster_addresses(
    cell: &Cell,
    lane_services: &[k8s_openapi::api::core::v1::Service],
    pods: &[Pod],
    nodes: &[exposure::NodeAddress],
) -> LaneAddresses {
    let previous = cell
        .status
        .as_ref()
        .map(|s| s.cross_cluster_endpoints.as_slice())
        .unwrap_or_default();
    exposure::lane_addresses(previous, &exposure::lanes_of(lane_services, pods), nodes)
        .unwrap_or_default()
}

/// Every Node of `target`'s cluster.
async fn list_nodes(ctx: &Context, target: &Target) -> Result<Vec<Node>> {
    let api: Api<Node> = Api::all(target.client().clone());
    Ok(ctx
        .call(
            "list the nodes".to_owned(),
            api.list(&ListParams::default()),
        )
        .await?
        .items)
}

/// The pods of the cell's stack in `namespace` of `target`, not being deleted; `None` when the
/// read failed (what needs them is informational or has a fallback).
async fn list_pods(ctx: &Context, target: &Target, namespace: &str) -> Option<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(target.client().clone(), namespace);
    match ctx
        .call(
            format!("list the pods of {namespace}"),
            api.list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))),
        )
        .await
    {
        Ok(pods) => Some(
            pods.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect(),
        ),
        Err(e) => {
            debug!(%namespace, error = %e, "the cell's pods not read");
            None
        }
    }
}

/// Where the cell's `pods` run, by the zones of their nodes (`status.runsIn`), read from
/// `nodes` when listed, else one by one. Informational: a failed read keeps the last value
/// (`None`) instead of failing the reconcile.
async fn runs_in(
    ctx: &Context,
    target: &Target,
    pods: &[Pod],
    nodes: Option<&[Node]>,
) -> Option<String> {
    let pods: Vec<Option<String>> = pods
        .iter()
        .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    let listed = |name: &str| {
        nodes?
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    };
    let nodes_api: Api<Node> = Api::all(target.client().clone());
    let mut zone_of = std::collections::BTreeMap::new();
    for node in pods.iter().flatten() {
        if zone_of.contains_key(node) {
            continue;
        }
        let found = match listed(node) {
            Some(n) => Some(n.clone()),
            None => match ctx
                .call(format!("read node {node}"), nodes_api.get_opt(node))
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    debug!(%node, error = %e, "where the cell runs: node not read");
                    return None;
                }
            },
        };
        if let Some(zone) = found.as_ref().and_then(|n| n.labels().get(ZONE_LABEL)) {
            zone_of.insert(node.clone(), zone.clone());
        }
    }
    Some(status::runs_in(pods.iter().map(Option::as_deref), &zone_of))
}

/// Patches the status when it differs from the one the cell has, and publishes an Event for
/// each transition.
async fn publish_status(cell: &Cell, ctx: &Arc<Context>, status: CellStatus) -> Result<()> {
    let name = cell.name_any();
    let labels = CellLabels { cell: name.clone() };
    ctx.metrics
        .cell_ready_lanes
        .get_or_create(&labels)
        .set(i64::from(status.ready_lanes));
    ctx.metrics
        .cell_tenants
        .get_or_create(&labels)
        .set(i64::from(status.tenant_count));
    let ready = crate::logic::conditions::is_true(&status.conditions, condition_type::READY);
    ctx.metrics
        .cell_ready
        .get_or_create(&labels)
        .set(i64::from(ready));
    let previous = cell.status.clone().unwrap_or_default();
    if cell.status.as_ref() == Some(&status) {
        return Ok(());
    }
    controllers::apply_status::<Cell>(ctx, &name, &status).await?;
    ctx.metrics
        .status_patches
        .get_or_create(&crate::metrics::ControllerLabels {
            controller: CONTROLLER,
        })
        .inc();

    let reference = cell.object_ref(&());
    if previous.phase != status.phase || cell.status.is_none() {
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let kind = if matches!(
            status.phase,
            cellstack_api::v1alpha1::CellPhase::Degraded
                | cellstack_api::v1alpha1::CellPhase::Unknown
        ) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let phase = serde_json::to_value(status.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        info!(cell = %name, phase = %phase, "cell phase changed");
        controllers::publish(ctx, &reference, kind, &format!("Cell{phase}"), ready).await;
    }
    // A problem gets its own Warning when it appears, even if its condition's status did not
    // flip (Progressing stays True from Provisioning to DeletionBlocked).
    let problems = [
        reason::INVALID_SPEC,
        reason::EXTERNAL_SECRET,
        reason::APPLY_FAILED,
        reason::NAMESPACE_OWNED_ELSEWHERE,
        reason::DELETION_BLOCKED,
    ];
    // Its cluster out of sight is a Warning too, on Ready only (all four conditions flip).
    let unseen = [
        reason::CLUSTER_UNREACHABLE,
        reason::MEMBER_CLUSTER_UNUSABLE,
        reason::MEMBER_CLUSTER_NOT_FOUND,
    ];
    for c in crate::logic::conditions::changed(&previous.conditions, &status.conditions) {
        let problem = c.status == "True" && problems.contains(&c.reason.as_str());
        let out_of_sight = c.type_ == condition_type::READY
            && c.status != "True"
            && unseen.contains(&c.reason.as_str());
        if problem || out_of_sight {
            controllers::publish(
                ctx,
                &reference,
                EventType::Warning,
                &c.reason,
                c.message.clone(),
            )
            .await;
        }
    }
    Ok(())
}

/// Deletion: refused (status, Event, error) while the cell holds tenants; otherwise the
/// namespace goes and the finalizer is removed.
async fn cleanup(cell: &Cell, ctx: &Arc<Context>) -> Result<Action> {
    let name = cell.name_any();
    let held = held_tenants(&ctx.tenants, &name);
    if !held.is_empty() {
        let names = tenants::first_few(&held, NAMED_TENANTS);
        let message = format!(
            "deletion waits until the cell holds no tenants: {} left ({names}); set spec.draining: true to move them away, or move them by hand",
            held.len()
        );
        let status =
            status::deletion_blocked(cell, &held, reason::DELETION_BLOCKED, message, &now());
        publish_status(cell, ctx, status).await?;
        return Err(Error::DeletionBlocked {
            cell: name,
            count: held.len(),
            names,
        });
    }
    let namespace = crate::names::namespace_of(&name);
    let never_provisioned = cell.status.as_ref().is_none_or(|s| s.namespace.is_none());
    if never_provisioned && matches!(ctx.reach_of(cell), Reach::NotFound) {
        // Its MemberCluster never existed while it did: nothing of it anywhere to delete.
        forget_metrics(ctx, &name);
        info!(cell = %name, "cell deleted; its member cluster does not exist and nothing was applied");
        return Ok(Action::await_change());
    }
    let target = match ctx.target_of(cell) {
        Ok(target) => target,
        Err(unavailable) if abandons_stack(cell) => {
            controllers::publish(
                ctx,
                &cell.object_ref(&()),
                EventType::Warning,
                "StackAbandoned",
                format!(
                    "{unavailable}; the cell is annotated {ABANDON_ANNOTATION}=true: namespace {namespace} there is left as it is, and the cell goes"
                ),
            )
            .await;
            forget_metrics(ctx, &name);
            return Ok(Action::await_change());
        }
        Err(unavailable) => {
            // Never forgotten silently: the deletion waits for the member, or the annotation.
            let message = format!(
                "deletion waits to delete namespace {namespace} in the member cluster: {unavailable}; if the member is gone for good, annotate the cell {ABANDON_ANNOTATION}=true to leave its stack there"
            );
            let status =
                status::deletion_blocked(cell, &[], reason::CLUSTER_UNREACHABLE, message, &now());
            publish_status(cell, ctx, status).await?;
            return Ok(Action::requeue(MEMBER_RECHECK));
        }
    };
    let owner = Owner::of(cell, target.cluster())?;
    controllers::publish(
        ctx,
        &cell.object_ref(&()),
        EventType::Normal,
        "Deleting",
        format!("the cell holds no tenants; deleting namespace {namespace}"),
    )
    .await;
    if let Some(holder) = apply::delete_namespace(ctx, &target, &owner, &namespace).await? {
        controllers::publish(
            ctx,
            &cell.object_ref(&()),
            EventType::Warning,
            reason::NAMESPACE_OWNED_ELSEWHERE,
            format!(
                "namespace {namespace} in member cluster {} is not this cell's ({holder}): left in place",
                target.cluster().unwrap_or_default()
            ),
        )
        .await;
    }
    forget_metrics(ctx, &name);
    info!(cell = %name, %namespace, "cell deleted");
    Ok(Action::await_change())
}

/// Whether `cell` may go while its member cluster cannot be reached, leaving its stack there
/// ([`ABANDON_ANNOTATION`] is `"true"`).
fn abandons_stack(cell: &Cell) -> bool {
    cell.annotations()
        .get(ABANDON_ANNOTATION)
        .map(String::as_str)
        == Some("true")
}

/// Drops the series of deleted cell `name`.
fn forget_metrics(ctx: &Context, name: &str) {
    let labels = CellLabels {
        cell: name.to_owned(),
    };
    ctx.metrics.cell_ready_lanes.remove(&labels);
    ctx.metrics.cell_tenants.remove(&labels);
    ctx.metrics.cell_ready.remove(&labels);
    ctx.metrics.cell_data_lost_tenants.remove(&labels);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::{
        fixtures::CellFixture,
        logic::cell::ownership::{Holder, NamespaceClaim},
        names::{CELL_LABEL, CELL_UID_LABEL},
    };

    fn config_map(meta: ObjectMeta) -> ConfigMap {
        ConfigMap {
            metadata: meta,
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_cached_cell_loses_its_managed_fields_and_last_applied_copy_and_keeps_the_rest() {
        let mut cell = Cell::test("delta");
        cell.metadata.managed_fields = Some(vec![Default::default(); 2]);
        cell.metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED.to_owned(), "{}".to_owned()),
            ("team".to_owned(), "payments".to_owned()),
        ]));
        let mut guard = DeserializeGuard(Ok(cell.clone()));
        trim_cached_cell(&mut guard);
        let Ok(trimmed) = guard.0 else {
            panic!("a readable cell stays readable");
        };
        assert_eq!(trimmed.metadata.managed_fields, None);
        assert_eq!(
            trimmed.metadata.annotations,
            Some(BTreeMap::from([("team".to_owned(), "payments".to_owned())]))
        );
        assert_eq!((trimmed.spec, trimmed.status), (cell.spec, cell.status));
    }

    #[test]
    fn a_child_in_a_member_maps_to_its_cell_by_label() {
        let cell = Cell::test("delta");
        let mut meta = ObjectMeta {
            name: Some("policies".into()),
            labels: Some(BTreeMap::from([(
                CELL_LABEL.to_owned(),
                "delta".to_owned(),
            )])),
            ..ObjectMeta::default()
        };
        Owner::of(&cell, Some("east"))
            .expect("owner")
            .mark(&mut meta);
        assert_eq!(
            owning_cell(config_map(meta.clone())),
            Some(ObjectRef::new("delta"))
        );
        // The cell label alone is not ownership: objects without a uid label or a controller
        // owner reference bring no cell back.
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(CELL_UID_LABEL);
        }
        assert_eq!(owning_cell(config_map(meta)), None);
    }

    #[test]
    fn a_local_child_still_maps_to_its_cell_by_owner_reference() {
        let cell = Cell::test("alpha");
        let mut meta = ObjectMeta::default();
        Owner::of(&cell, None).expect("owner").mark(&mut meta);
        assert_eq!(owning_cell(config_map(meta)), Some(ObjectRef::new("alpha")));
    }

    #[test]
    fn a_namespace_owned_elsewhere_makes_the_cell_not_ready_naming_the_namespace_and_the_other_uid()
    {
        let cell = Cell::test("delta");
        let other = "11111111-2222-3333-4444-555555555555";
        let owner = Owner::of(&cell, Some("east")).expect("owner");
        let found = ObjectMeta {
            name: Some("cell-delta".into()),
            labels: Some(BTreeMap::from([(
                CELL_UID_LABEL.to_owned(),
                other.to_owned(),
            )])),
            ..ObjectMeta::default()
        };
        let NamespaceClaim::Elsewhere(holder) = ownership::namespace_claim(Some(&found), &owner)
        else {
            panic!("another cell's namespace is not ours");
        };
        assert_eq!(
            holder,
            Holder::OtherCell {
                uid: other.to_owned()
            }
        );
        let error = Error::NamespaceOwnedElsewhere {
            cell: "delta".into(),
            uid: owner.cell_uid().to_owned(),
            namespace: "cell-delta".into(),
            cluster: "east".into(),
            holder: holder.describe(),
        };
        assert!(
            !error.is_permanent(),
            "a change in the member helps, not one of the Cell"
        );
        let observed = Observed {
            problem: problem_of(&error),
            ..Observed::default()
        };
        let status = status::compute(&cell, &observed, &Time(Timestamp::UNIX_EPOCH));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .expect("a Ready condition");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, reason::NAMESPACE_OWNED_ELSEWHERE);
        for named in ["cell-delta", "east", other, owner.cell_uid()] {
            assert!(ready.message.contains(named), "{named}: {}", ready.message);
        }
    }
}
