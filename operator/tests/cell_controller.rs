//! The Cell controller against a real cluster: stacks are created, updated in place (lanes one
//! at a time, through their disruption budget), repaired, protected from deletion while they
//! hold tenants; a malformed Cell stalls nothing; a standby
//! operator takes over when the leader dies.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail, ensure};
use cellstack_api::v1alpha1::TenantAssignment;
use cellstack_testkit::cluster::{image, poll};
use common::{World, condition, is_ready, observed_current, uid_of};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event, Namespace, Pod, Secret, Service},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;

fn ephemeral(lanes: u32) -> serde_json::Value {
    json!({ "lanes": lanes, "datastore": { "managed": { "storage": "Ephemeral" } } })
}

/// Every child's uid and resourceVersion, by kind/name: what "nothing changed" compares.
async fn children(
    client: &kube::Client,
    ns: &str,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($kind:ty, $label:literal) => {
            for o in Api::<$kind>::namespaced(client.clone(), ns)
                .list(
                    &ListParams::default()
                        .labels("app.kubernetes.io/managed-by=cellstack-operator"),
                )
                .await?
                .items
            {
                out.insert(
                    format!("{}/{}", $label, o.name_any()),
                    (uid_of(&o), o.resource_version().unwrap_or_default()),
                );
            }
        };
    }
    collect!(StatefulSet, "StatefulSet");
    collect!(Service, "Service");
    collect!(ConfigMap, "ConfigMap");
    collect!(Secret, "Secret");
    collect!(PodDisruptionBudget, "PodDisruptionBudget");
    collect!(NetworkPolicy, "NetworkPolicy");
    Ok(out)
}

#[tokio::test]
async fn a_cell_gets_its_whole_stack_becomes_ready_and_reconciling_again_changes_nothing() {
    let mut world = World::new("op-stack").await.expect("test world");
    let result = async {
        world.start_operator("a").await?;
        let cell = world.create_cell("stack", ephemeral(2)).await?;
        let name = cell.name_any();
        let ns = format!("cell-{name}");
        let ready = world
            .wait_cell(&name, "Ready with 2 lanes", is_ready)
            .await?;
        let status = ready.status.clone().context("status")?;
        ensure!(
            status.lanes == 2 && status.ready_lanes == 2,
            "lanes in status: {status:?}"
        );
        ensure!(
            status.namespace.as_deref() == Some(ns.as_str()),
            "namespace in status: {status:?}"
        );
        ensure!(
            status.endpoints.len() == 2,
            "endpoints: {:?}",
            status.endpoints
        );
        for type_ in ["Ready", "Available"] {
            ensure!(
                condition(&ready, type_).is_some_and(|(s, _)| s == "True"),
                "{type_} not True: {status:?}"
            );
        }
        for type_ in ["Progressing", "Degraded"] {
            ensure!(
                condition(&ready, type_).is_some_and(|(s, _)| s == "False"),
                "{type_} not False: {status:?}"
            );
        }
        ensure!(
            ready
                .finalizers()
                .iter()
                .any(|f| f == "cellstack.dev/cell-protection"),
            "no finalizer: {:?}",
            ready.finalizers()
        );

        // The whole stack, owned by the cell.
        let kids = children(&world.client, &ns).await?;
        for want in [
            "StatefulSet/lane",
            "StatefulSet/redis",
            "Service/lanes",
            "Service/lane-0",
            "Service/lane-1",
            "Service/redis",
            "ConfigMap/policies",
            "Secret/admin-token",
            "PodDisruptionBudget/lanes",
            "NetworkPolicy/cell-isolation",
        ] {
            ensure!(
                kids.contains_key(want),
                "{want} missing; have {:?}",
                kids.keys()
            );
        }
        let namespace = Api::<Namespace>::all(world.client.clone()).get(&ns).await?;
        let owner = namespace
            .owner_references()
            .first()
            .context("namespace has no owner")?;
        ensure!(
            owner.uid == uid_of(&ready) && owner.controller == Some(true),
            "namespace owner: {owner:?}"
        );

        // The lanes answer on the addresses the status publishes (once kube-proxy has
        // programmed the new Services, which may trail readiness by a moment).
        for endpoint in &status.endpoints {
            let ip = endpoint.split(':').next().unwrap_or_default().to_owned();
            poll(
                &format!("lane {endpoint} to answer /readyz on its admin port"),
                common::WAIT,
                || {
                    let ip = ip.clone();
                    async move {
                        let (code, body) =
                            cellstack_testkit::cluster::http_get(&ip, 9090, "/readyz").await?;
                        ensure!(code == 200, "answered {code}: {body}");
                        Ok(Some(()))
                    }
                },
            )
            .await?;
        }

        // Reconciling again (an annotation change triggers it without a new generation)
        // touches no child and no status.
        let op = &world.operators[0];
        let before = op
            .metric("cellstack_operator_reconciles_total{controller=\"cell\",result=\"ok\"}")
            .await?
            .context("reconcile metric missing from /metrics")?;
        let patches_before = op
            .metric("cellstack_operator_status_patches_total{controller=\"cell\"}")
            .await?
            .unwrap_or(0.0);
        let cells = world.cells_api();
        let poke = json!({"metadata": {"annotations": {"cellstack.dev/poke": "1"}}});
        cells
            .patch(&name, &PatchParams::default(), &Patch::Merge(&poke))
            .await?;
        poll("another reconcile", common::WAIT, || async {
            let now = op
                .metric("cellstack_operator_reconciles_total{controller=\"cell\",result=\"ok\"}")
                .await?
                .unwrap_or(0.0);
            Ok((now > before).then_some(()))
        })
        .await?;
        let after = children(&world.client, &ns).await?;
        ensure!(
            after == kids,
            "a second reconcile changed children:\nbefore {kids:?}\nafter {after:?}"
        );
        let patches_after = op
            .metric("cellstack_operator_status_patches_total{controller=\"cell\"}")
            .await?
            .unwrap_or(0.0);
        ensure!(
            patches_after == patches_before,
            "status patched again: {patches_before} -> {patches_after}"
        );
        let again = cells.get(&name).await?;
        ensure!(
            again.status == ready.status,
            "status changed:\n{:?}\n{:?}",
            ready.status,
            again.status
        );
        let text = op.scrape().await?;
        ensure!(
            text.contains("cellstack_operator_reconcile_duration_seconds_bucket"),
            "no duration histogram"
        );
        Ok(())
    }
    .await;
    world.finish(result).await.expect("scenario");
}

#[tokio::test]
async fn changing_lanes_and_images_updates_the_stack_in_place_and_a_deleted_child_comes_back() {
    let mut world = World::new("op-update").await.expect("test world");
    let result = async {
        world.start_operator("a").await?;
        let cell = world.create_cell("update", ephemeral(1)).await?;
        let name = cell.name_any();
        let ns = format!("cell-{name}");
        world
            .wait_cell(&name, "Ready with 1 lane", is_ready)
            .await?;
        let ns_uid = uid_of(&Api::<Namespace>::all(world.client.clone()).get(&ns).await?);
        let sts: Api<StatefulSet> = Api::namespaced(world.client.clone(), &ns);
        let lanes_uid = uid_of(&sts.get("lane").await?);

        // Two lanes, each running the Go example behind the runtime: the StatefulSet is
        // updated, not replaced, and lane-1 gets a Service. Ready means the runtime found the
        // service healthy (its health path answers over the pod's loopback).
        let go_image = image("CELLSTACK_E2E_GO_ORDERS_IMAGE")?;
        let patch = json!({"spec": {"lanes": 2, "services": [{
            "name": "orders", "image": go_image, "healthPath": "/healthz",
            "args": ["-version", "v7"],
        }]}});
        world
            .cells_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let ready = world
            .wait_cell(&name, "Ready with 2 lanes after the update", |c| {
                is_ready(c) && c.status.as_ref().is_some_and(|s| s.ready_lanes == 2)
            })
            .await?;
        ensure!(
            ready
                .status
                .as_ref()
                .is_some_and(|s| s.endpoints.len() == 2),
            "{:?}",
            ready.status
        );
        let lanes = sts.get("lane").await?;
        ensure!(
            uid_of(&lanes) == lanes_uid,
            "lanes StatefulSet was replaced, not updated"
        );
        let pod = lanes
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .context("pod template")?;
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        ensure!(names == ["cell", "orders"], "containers: {names:?}");
        let env = pod.containers[0].env.clone().unwrap_or_default();
        ensure!(
            env.iter().any(|e| e.name == "CELLSTACK_SERVICES"
                && e.value.as_deref() == Some("name=orders,port=8081,health=/healthz,timeout=10")),
            "the runtime is not told about the service: {env:?}"
        );
        let services: Api<Service> = Api::namespaced(world.client.clone(), &ns);
        services.get("lane-1").await.context("lane-1 Service")?;

        // Back to one lane: the Service of lane 1 is an orphan and goes.
        let patch = json!({"spec": {"lanes": 1}});
        world
            .cells_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        poll("lane-1 Service to be deleted", common::WAIT, || {
            let services = services.clone();
            async move { Ok(services.get_opt("lane-1").await?.is_none().then_some(())) }
        })
        .await?;
        world
            .wait_cell(&name, "Ready with 1 lane", |c| {
                is_ready(c)
                    && c.status
                        .as_ref()
                        .is_some_and(|s| s.lanes == 1 && s.endpoints.len() == 1)
            })
            .await?;

        // A deleted child is recreated.
        let cms: Api<ConfigMap> = Api::namespaced(world.client.clone(), &ns);
        let old_cm = uid_of(&cms.get("policies").await?);
        let old_svc = uid_of(&services.get("lane-0").await?);
        cms.delete("policies", &DeleteParams::default()).await?;
        services.delete("lane-0", &DeleteParams::default()).await?;
        poll(
            "policies ConfigMap and lane-0 Service to come back",
            common::WAIT,
            || {
                let (cms, services, old_cm, old_svc) = (
                    cms.clone(),
                    services.clone(),
                    old_cm.clone(),
                    old_svc.clone(),
                );
                async move {
                    let cm = cms.get_opt("policies").await?;
                    let svc = services.get_opt("lane-0").await?;
                    Ok(match (cm, svc) {
                        (Some(cm), Some(svc))
                            if uid_of(&cm) != old_cm && uid_of(&svc) != old_svc =>
                        {
                            Some(())
                        }
                        _ => None,
                    })
                }
            },
        )
        .await?;
        let ns_now = uid_of(&Api::<Namespace>::all(world.client.clone()).get(&ns).await?);
        ensure!(ns_now == ns_uid, "the namespace was replaced");
        Ok(())
    }
    .await;
    world.finish(result).await.expect("scenario");
}

#[tokio::test]
async fn a_cell_with_tenants_is_refused_deletion_until_drained_then_its_namespace_goes() {
    let mut world = World::new("op-delete").await.expect("test world");
    let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
    let tenant = cellstack_testkit::unique_name("held");
    let result = async {
        world.start_operator("a").await?;
        let cell = world.create_cell("held", ephemeral(1)).await?;
        let name = cell.name_any();
        let ns = format!("cell-{name}");
        world
            .wait_cell(&name, "its status", observed_current)
            .await?;
        let ta: TenantAssignment = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": {"name": tenant, "labels": {common::TEST_LABEL: world.id}},
            "spec": {"tenantId": tenant, "cell": name},
        }))?;
        tenants.create(&PostParams::default(), &ta).await?;
        world
            .wait_cell(&name, "tenant count 1", |c| {
                c.status.as_ref().is_some_and(|s| s.tenant_count == 1)
            })
            .await?;

        world
            .cells_api()
            .delete(&name, &DeleteParams::default())
            .await?;
        let blocked = world
            .wait_cell(&name, "deletion blocked", |c| {
                condition(c, "Progressing").is_some_and(|(_, r)| r == "DeletionBlocked")
            })
            .await?;
        let message = blocked
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"))
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(
            message.contains(&tenant),
            "the message does not name the tenant: {message}"
        );
        let events: Api<Event> = Api::namespaced(world.client.clone(), "default");
        let uid = uid_of(&blocked);
        poll("a DeletionBlocked event", common::WAIT, || {
            let (events, uid, tenant) = (events.clone(), uid.clone(), tenant.clone());
            async move {
                let list = events
                    .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
                    .await?;
                Ok(list
                    .items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("DeletionBlocked")
                            && e.message.as_deref().is_some_and(|m| m.contains(&tenant))
                    })
                    .then_some(()))
            }
        })
        .await?;
        // Still serving: the namespace is intact while deletion waits.
        let namespaces: Api<Namespace> = Api::all(world.client.clone());
        ensure!(
            namespaces.get_opt(&ns).await?.is_some(),
            "namespace went before the tenants did"
        );

        // Drained: the tenant goes, then the cell and its namespace.
        tenants.delete(&tenant, &DeleteParams::default()).await?;
        let cells = world.cells_api();
        poll("the cell to be deleted", common::WAIT, || {
            let (cells, name) = (cells.clone(), name.clone());
            async move { Ok(cells.get_opt(&name).await?.is_none().then_some(())) }
        })
        .await?;
        poll("the cell's namespace to be deleted", common::WAIT, || {
            let (namespaces, ns) = (namespaces.clone(), ns.clone());
            async move { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) }
        })
        .await?;
        Ok(())
    }
    .await;
    let _ = tenants.delete(&tenant, &DeleteParams::default()).await;
    world.finish(result).await.expect("scenario");
}

#[tokio::test]
async fn a_malformed_cell_does_not_stop_the_others_from_reconciling() {
    let mut world = World::new("op-malformed").await.expect("test world");
    let result = async {
        // The API server accepts a condition time with more than nine fractional digits (RFC
        // 3339 sets no limit); the operator's time type takes nanoseconds at most, so it cannot
        // read such a Cell. (Every number the operator cannot hold is refused by the schema.)
        let bad = world.create_cell("bad", ephemeral(1)).await?;
        let bad_name = bad.name_any();
        let status = json!({"status": {"phase": "Pending", "conditions": [{
            "type": "Ready", "status": "False", "reason": "Probe", "message": "unreadable time",
            "lastTransitionTime": "2026-12-03T21:00:00.1234567891Z",
        }]}});
        // Through the dynamic API: the typed client cannot read the answer either.
        let dynamic = cellstack_testkit::dynamic_api(&world.client, "Cell")?;
        dynamic
            .patch_status(&bad_name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        world.start_operator("a").await?;
        let good = world.create_cell("good", ephemeral(1)).await?;
        world
            .wait_cell(&good.name_any(), "its status", observed_current)
            .await?;

        let events: Api<Event> = Api::namespaced(world.client.clone(), "default");
        let uid = uid_of(&bad);
        poll(
            "an Unreadable event on the malformed cell",
            common::WAIT,
            || {
                let (events, uid) = (events.clone(), uid.clone());
                async move {
                    let list = events
                        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
                        .await?;
                    Ok(list
                        .items
                        .iter()
                        .any(|e| e.reason.as_deref() == Some("Unreadable"))
                        .then_some(()))
                }
            },
        )
        .await?;
        // Repairing the object lets the operator take it up.
        let fixed = json!({"status": {"conditions": []}});
        dynamic
            .patch_status(&bad_name, &PatchParams::default(), &Patch::Merge(&fixed))
            .await?;
        world
            .wait_cell(&bad_name, "its status once readable", observed_current)
            .await?;
        Ok(())
    }
    .await;
    world.finish(result).await.expect("scenario");
}

/// The Lease the operators elect a leader through (the operator's default `--lease-name`).
const LEASE_NAME: &str = "cellstack-operator";
/// `--lease-seconds` of the operators this harness starts (`common::Operator::start`); the test
/// checks the Lease says the same.
const LEASE: Duration = Duration::from_secs(6);
/// kube-lease-manager 0.13: a standby that finds the holder's Lease expired force-releases it,
/// then waits a random 100-1000 ms (so two standbys rarely collide) before taking it.
const RELEASE_WAIT: Duration = Duration::from_secs(1);
/// The standby's Lease calls after the expiry (read, release, read; read, apply, patch, read)
/// and this test's 50 ms polls of the Lease and the standby's `/metrics`, on a shared 2-core
/// machine.
const API_SLACK: Duration = Duration::from_secs(1);

/// A SIGKILLed leader cannot release its Lease, so the standby waits for it to expire: it sleeps
/// until the expiry it read (the holder's last `renewTime` + `leaseDurationSeconds`), then
/// releases the Lease and takes it after [`RELEASE_WAIT`]. Asserted: the standby takes the Lease
/// no earlier than that expiry and at most `RELEASE_WAIT + API_SLACK` after it, and leads (its
/// `cellstack_operator_leader` gauge) at most `LEASE + RELEASE_WAIT + API_SLACK` (8 s) after the
/// kill — the lease time counts from the last renewal, which came before the kill.
#[tokio::test]
async fn a_standby_operator_takes_over_once_the_killed_leaders_lease_expires() {
    let mut world = World::new("op-leader").await.expect("test world");
    let result = async {
        world.start_operator("one").await?;
        world.start_operator("two").await?;
        let leader = poll("one leader", common::WAIT, || {
            let ops = &world.operators;
            async move {
                let mut leaders = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    if op.is_leader().await {
                        leaders.push(i);
                    }
                }
                match leaders.as_slice() {
                    [one] => Ok(Some(*one)),
                    [] => Ok(None),
                    many => bail!("{} leaders at once: {many:?}", many.len()),
                }
            }
        })
        .await?;
        let standby = 1 - leader;
        ensure!(!world.operators[standby].is_leader().await, "both lead");
        let (old, new) = (
            world.operators[leader].identity.clone(),
            world.operators[standby].identity.clone(),
        );
        let cell = world.create_cell("lead", ephemeral(1)).await?;
        let name = cell.name_any();
        world
            .wait_cell(&name, "its status", observed_current)
            .await?;

        world.operators[leader].kill().await;
        let (killed, killed_at) = (Instant::now(), SystemTime::now());
        let patch = json!({"spec": {"capacity": {"maxTenants": 500}}});
        world
            .cells_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // Until the standby leads: the killed leader's last renewal as the Lease records it (a
        // renewal it sent just before dying may land after the kill).
        let leases: Api<Lease> = Api::namespaced(world.client.clone(), &world.system.name);
        let bound = LEASE + RELEASE_WAIT + API_SLACK;
        let mut last_renewal: Option<(SystemTime, i32)> = None;
        let took_over = loop {
            let spec = leases.get(LEASE_NAME).await?.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() == Some(old.as_str())
                && let (Some(renewed), Some(secs)) =
                    (spec.renew_time.as_ref(), spec.lease_duration_seconds)
            {
                let renewed = SystemTime::from(renewed.0);
                if last_renewal.is_none_or(|(r, _)| renewed > r) {
                    last_renewal = Some((renewed, secs));
                }
            }
            if world.operators[standby].is_leader().await {
                break killed.elapsed();
            }
            // Past the bound, keep looking a while, so a failure reports the time it took.
            ensure!(
                killed.elapsed() < bound + Duration::from_secs(20),
                "the standby did not lead within {:?} of the kill; Lease: {spec:?}",
                bound + Duration::from_secs(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (renewed, secs) = last_renewal.context("the Lease never named the killed leader")?;
        ensure!(
            u64::try_from(secs).ok() == Some(LEASE.as_secs()),
            "the Lease lasts {secs} s, not the {LEASE:?} this test assumes"
        );
        let expiry = renewed + LEASE;
        let lease = leases.get(LEASE_NAME).await?.spec.unwrap_or_default();
        ensure!(
            lease.holder_identity.as_deref() == Some(new.as_str()),
            "the standby leads, but the Lease names {:?}",
            lease.holder_identity
        );
        let acquired = SystemTime::from(
            lease
                .acquire_time
                .context("the standby's Lease has no acquireTime")?
                .0,
        );
        let after_expiry = acquired.duration_since(expiry).map_err(|e| {
            anyhow::anyhow!(
                "the standby took the Lease {:?} before the killed leader's expired",
                e.duration()
            )
        })?;
        let expired_after_kill = expiry.duration_since(killed_at).unwrap_or_default();
        eprintln!(
            "the killed leader's Lease expired {expired_after_kill:?} after the kill; the standby \
             took it {after_expiry:?} after that and led {took_over:?} after the kill"
        );
        ensure!(
            after_expiry <= RELEASE_WAIT + API_SLACK,
            "the standby took the Lease {after_expiry:?} after it expired (bound {:?})",
            RELEASE_WAIT + API_SLACK
        );
        ensure!(
            took_over <= bound,
            "the standby led {took_over:?} after the kill (bound {bound:?})"
        );
        world
            .wait_cell(
                &name,
                "the new generation observed by the new leader",
                observed_current,
            )
            .await?;

        // A graceful stop releases the Lease rather than leaving it to expire.
        let exit = world.operators[standby].terminate().await?;
        ensure!(exit.success(), "SIGTERM ended the operator with {exit}");
        let lease = leases.get(LEASE_NAME).await?;
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        ensure!(
            holder.is_empty(),
            "the Lease is still held by {holder:?} after a graceful stop"
        );
        Ok(())
    }
    .await;
    world.finish(result).await.expect("scenario");
}

/// Ready lanes of a cell as a pod watch sees them: a terminating pod no longer counts.
/// What a watch of a cell's lane pods saw during an update.
struct LaneWatch {
    /// For each lane whose deletion the watch saw begin: how many of the other lanes were ready.
    others_ready_at_evictions: Vec<(String, usize)>,
    /// The fewest lanes ready at any moment.
    fewest_ready: usize,
    /// Every change of a lane's readiness or deletion, timed from the start of the watch.
    changes: Vec<String>,
}

impl Default for LaneWatch {
    fn default() -> Self {
        Self {
            others_ready_at_evictions: Vec::new(),
            fewest_ready: usize::MAX,
            changes: Vec::new(),
        }
    }
}

fn counts_as_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && cellstack_testkit::cluster::pod_is_ready(pod)
}

#[tokio::test]
async fn a_new_version_replaces_one_lane_at_a_time_through_the_disruption_budget() {
    let mut world = World::new("op-lanes").await.expect("test world");
    let result = async {
        world.start_operator("a").await?;
        let cell = world.create_cell("lanes", ephemeral(3)).await?;
        let name = cell.name_any();
        let ns = format!("cell-{name}");
        world
            .wait_cell(&name, "Ready with 3 lanes", |c| {
                is_ready(c) && c.status.as_ref().is_some_and(|s| s.ready_lanes == 3)
            })
            .await?;
        let pods: Api<Pod> = Api::namespaced(world.client.clone(), &ns);
        let lanes = ListParams::default().labels("app.kubernetes.io/component=lane");
        let before: BTreeMap<String, String> = pods
            .list(&lanes)
            .await?
            .items
            .iter()
            .map(|p| (p.name_any(), uid_of(p)))
            .collect();
        ensure!(before.len() == 3, "lane pods: {before:?}");

        // Every readiness change of the lane pods, from a watch (in the API server's order):
        // how many of the other lanes were ready when each lane's eviction began, and the fewest
        // ready at any moment (which also counts a kubelet probe that missed on a busy node).
        let seen = Arc::new(Mutex::new(LaneWatch::default()));
        let watch = tokio::spawn({
            let (pods, seen) = (pods.clone(), seen.clone());
            async move {
                let started = Instant::now();
                // name → (ready, being deleted)
                let mut lanes: BTreeMap<String, (bool, bool)> = BTreeMap::new();
                let mut listed = false;
                let cfg = watcher::Config::default().labels("app.kubernetes.io/component=lane");
                let mut events = watcher(pods, cfg).boxed();
                while let Some(event) = events.try_next().await? {
                    let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    match event {
                        watcher::Event::Init => lanes.clear(),
                        watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                            let name = p.name_any();
                            let now =
                                (counts_as_ready(&p), p.metadata.deletion_timestamp.is_some());
                            let before = lanes.insert(name.clone(), now);
                            if listed && before.is_some_and(|(_, deleting)| !deleting) && now.1 {
                                let others = lanes
                                    .iter()
                                    .filter(|(n, (ready, _))| **n != name && *ready)
                                    .count();
                                seen.others_ready_at_evictions.push((name.clone(), others));
                            }
                            if before != Some(now) {
                                let at = started.elapsed().as_secs_f64();
                                seen.changes.push(format!(
                                    "{at:6.1}s {name} ready={} deleting={}",
                                    now.0, now.1
                                ));
                            }
                        }
                        watcher::Event::Delete(p) => {
                            lanes.remove(&p.name_any());
                        }
                        watcher::Event::InitDone => listed = true,
                    }
                    if listed {
                        let ready = lanes.values().filter(|(r, _)| *r).count();
                        seen.fewest_ready = seen.fewest_ready.min(ready);
                    }
                }
                anyhow::Ok(())
            }
        });

        world
            .cells_api()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"version": "v2"}})),
            )
            .await?;

        // While the operator replaces a lane, a node drain's eviction of another is refused: the
        // operator's own eviction counts against the lanes' budget.
        let (going, other) = poll("a lane being replaced", common::WAIT, || async {
            let list = pods.list(&lanes).await?;
            let going = list
                .items
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_some());
            let other = list.items.iter().find(|p| counts_as_ready(p));
            Ok(going.zip(other).map(|(g, o)| (g.name_any(), o.name_any())))
        })
        .await?;
        // kube's client retries a 429 until the budget allows it; a drain tool's client that
        // reports the refusal is what this checks.
        let mut config = kube::Config::infer().await?;
        config.default_retry = false;
        let no_retry: Api<Pod> = Api::namespaced(kube::Client::try_from(config)?, &ns);
        let drain = no_retry.evict(&other, &EvictParams::default()).await;
        match drain {
            Err(kube::Error::Api(e)) if e.code == 429 => {}
            other_result => bail!(
                "evicting {other} while {going} is being replaced should be refused by the \
                 PodDisruptionBudget (429), got {other_result:?}"
            ),
        }

        world
            .wait_cell(&name, "Ready again with every lane on v2", |c| {
                is_ready(c)
                    && observed_current(c)
                    && c.status.as_ref().is_some_and(|s| s.ready_lanes == 3)
            })
            .await?;
        let after = pods.list(&lanes).await?;
        ensure!(
            after.items.iter().all(|p| {
                p.labels().get("cellstack.dev/version").map(String::as_str) == Some("v2")
                    && before.get(&p.name_any()) != Some(&uid_of(p))
            }),
            "every lane pod is new and on v2: {:?}",
            after
                .items
                .iter()
                .map(|p| (
                    p.name_any(),
                    p.labels().get("cellstack.dev/version").cloned()
                ))
                .collect::<Vec<_>>()
        );
        watch.abort();
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let timeline = seen.changes.join("\n");
        eprintln!(
            "fewest ready lanes during the update: {} of 3; other lanes ready when each \
             eviction began: {:?}",
            seen.fewest_ready, seen.others_ready_at_evictions
        );
        ensure!(
            seen.others_ready_at_evictions.len() >= 3,
            "every lane is evicted once, seen by the watch: {:?}\n{timeline}",
            seen.others_ready_at_evictions
        );
        ensure!(
            seen.others_ready_at_evictions
                .iter()
                .all(|(_, others)| *others == 2),
            "lanes must be replaced one at a time: a lane was evicted while another was not \
             ready: {:?}\n{timeline}",
            seen.others_ready_at_evictions
        );
        ensure!(
            seen.fewest_ready >= 1,
            "some lane must be ready throughout the update\n{timeline}"
        );
        Ok(())
    }
    .await;
    world.finish(result).await.expect("scenario");
}
