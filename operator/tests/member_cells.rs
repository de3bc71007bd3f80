//! A Cell in a member cluster, with a real `cellstack-operator` on the cluster in `KUBECONFIG`
//! and a second control plane of the test's own (`e2e/control-plane`, its own etcd and API
//! server, no nodes) as the member:
//!
//! - the cell's stack is applied in the member, each object labelled with the cell's uid and
//!   the member's name and none with an owner reference; nothing of it in the management cluster;
//!   its NetworkPolicy admits the member's `systemNamespace`; one of its objects deleted there
//!   is re-created within seconds (the member's objects are watched);
//! - a Cell naming a MemberCluster that does not exist is `Ready=False/MemberClusterNotFound`,
//!   and deleted at once (nothing of it exists anywhere);
//! - the member's API server stopped (SIGSTOP): the cell goes `Unknown`
//!   (`Ready=Unknown/ClusterUnreachable`) keeping its endpoints, with a Warning Event; continued:
//!   the cell leaves `Unknown`, and every object of its stack in the member has the uid it had
//!   (nothing was deleted or re-created);
//! - the MemberCluster deleted while the cell names it stays (a Warning Event names the cell);
//! - the deleted cell's namespace in the member is deleted, and then the MemberCluster goes.

mod common;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{Cell, CellPhase, MemberCluster};
use cellstack_operator::names::MEMBER_CLUSTER_LABEL;
use cellstack_testkit::{cluster::poll, control_plane::ControlPlane};
use common::{
    World,
    members::{Stopped, register_member, stack_in, wait_warning, with_member_control_plane},
};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::json;

/// The member's routers' namespace, as its MemberCluster names it.
const MEMBER_SYSTEM_NAMESPACE: &str = "cellstack-edge";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_in_a_member_cluster_lives_there_and_goes_unknown_while_its_api_server_is_stopped()
-> anyhow::Result<()> {
    let world = World::new("op-mcells").await?;
    with_member_control_plane(world, scenario).await
}

async fn scenario(world: &mut World, member_cp: &ControlPlane) -> anyhow::Result<()> {
    world.start_operator("mcell").await?;
    let member_client = member_cp.client().await?;
    let member = register_member(
        world,
        &member_client,
        &member_cp.kubeconfig(),
        MEMBER_SYSTEM_NAMESPACE,
        false,
    )
    .await?;
    let members: Api<MemberCluster> = Api::all(world.client.clone());

    // A Cell naming no existing MemberCluster: not ready, saying so, nothing applied.
    let nowhere = world
        .create_cell(
            "nowhere",
            json!({ "cluster": "no-such-member", "datastore": { "managed": { "storage": "Ephemeral" } } }),
        )
        .await?
        .name_any();
    let lost = world
        .wait_cell(&nowhere, "Ready=False/MemberClusterNotFound", |c| {
            cell_condition(c, "Ready") == Some(("False", "MemberClusterNotFound"))
        })
        .await?;
    ensure!(
        condition_message(&lost, "Ready").contains("no-such-member"),
        "the message names the missing member: {:?}",
        lost.status
    );
    // Nothing was applied anywhere, so its deletion has nothing to wait for.
    world
        .cells_api()
        .delete(&nowhere, &DeleteParams::default())
        .await?;
    let cells = world.cells_api();
    poll(
        "the cell naming no member deleted",
        Duration::from_secs(30),
        || async { Ok(cells.get_opt(&nowhere).await?.is_none().then_some(())) },
    )
    .await?;

    // The cell in the member: its stack there, marked by label, not owned.
    let cell = world
        .create_cell(
            "remote",
            json!({ "cluster": member, "lanes": 2, "datastore": { "managed": { "storage": "Ephemeral" } } }),
        )
        .await?;
    let name = cell.name_any();
    let uid = cell.uid().context("the cell has no uid")?;
    let namespace = format!("cell-{name}");
    let cell = world
        .wait_cell(&name, "provisioned in the member, with endpoints", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.namespace.is_some() && !s.endpoints.is_empty())
        })
        .await?;
    let endpoints = cell.status.as_ref().map(|s| s.endpoints.clone());
    let initial = poll("the cell's stack in the member", common::WAIT, || async {
        let objects = stack_in(&member_client, &uid).await?;
        // Namespace, lanes and datastore StatefulSets, Services, Secrets, policies.
        let kinds: std::collections::BTreeSet<&str> =
            objects.keys().map(|(kind, _)| *kind).collect();
        Ok((kinds.len() >= 7).then_some(objects))
    })
    .await?;
    let namespaces: Api<Namespace> = Api::all(member_client.clone());
    let remote_ns = namespaces.get(&namespace).await?;
    ensure!(
        remote_ns.labels().get(MEMBER_CLUSTER_LABEL) == Some(&member),
        "namespace {namespace} in the member is not marked with the member's name: {:?}",
        remote_ns.labels()
    );
    let local_ns: Api<Namespace> = Api::all(world.client.clone());
    ensure!(
        local_ns.get_opt(&namespace).await?.is_none(),
        "namespace {namespace} exists in the management cluster too"
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(member_client.clone(), &namespace);
    let policies = serde_json::to_string(&policies.list(&ListParams::default()).await?.items)?;
    ensure!(
        policies.contains(MEMBER_SYSTEM_NAMESPACE) && !policies.contains(&world.system.name),
        "the lanes' NetworkPolicy admits the member's system namespace {MEMBER_SYSTEM_NAMESPACE}, not the operator's {}: {policies}",
        world.system.name
    );

    // An object of the stack deleted in the member comes back within seconds: the member's
    // objects are watched (the operator's resync is 300 s and the cell is not rolling, so
    // nothing else would bring the cell back this soon).
    let (config_map, old_uid) = initial
        .iter()
        .find(|((kind, _), _)| *kind == "ConfigMap")
        .map(|((_, name), uid)| (name.clone(), uid.clone()))
        .context("the stack has no ConfigMap")?;
    let config_maps: Api<ConfigMap> = Api::namespaced(member_client.clone(), &namespace);
    config_maps
        .delete(&config_map, &DeleteParams::default())
        .await?;
    let deleted_at = std::time::Instant::now();
    poll(
        &format!("ConfigMap {config_map} re-created in the member"),
        Duration::from_secs(30),
        || async {
            Ok(config_maps
                .get_opt(&config_map)
                .await?
                .filter(|c| c.uid().as_deref() != Some(old_uid.as_str()))
                .map(|_| ()))
        },
    )
    .await?;
    eprintln!(
        "ConfigMap {config_map} deleted in the member: re-created after {:.1}s",
        deleted_at.elapsed().as_secs_f64()
    );
    let before = stack_in(&member_client, &uid).await?;

    // The member's API server stopped: Unknown, endpoints kept, a Warning Event. Three failed
    // probes (each up to 5 s, every 10 s) make the member unreachable, then its cells Unknown:
    // well within `wait_cell`'s bound.
    let pid = member_cp.apiserver_pid()?;
    let stopped = Stopped::stop(pid)?;
    let stopped_at = std::time::Instant::now();
    let unknown = world
        .wait_cell(&name, "Unknown while its member is stopped", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.phase == CellPhase::Unknown)
                && cell_condition(c, "Ready") == Some(("Unknown", "ClusterUnreachable"))
        })
        .await;
    let unknown = match unknown {
        Ok(cell) => {
            eprintln!(
                "member API server stopped: cell Unknown after {:.1}s",
                stopped_at.elapsed().as_secs_f64()
            );
            cell
        }
        Err(e) => {
            stopped.resume()?;
            return Err(e);
        }
    };
    ensure!(
        unknown.status.as_ref().map(|s| s.endpoints.clone()) == endpoints,
        "the endpoints changed while the member was away: {:?} → {:?}",
        endpoints,
        unknown.status
    );
    ensure!(
        condition_message(&unknown, "Ready").contains(&member),
        "the message names the member: {:?}",
        unknown.status
    );
    wait_warning(&world.client, &name, "ClusterUnreachable", None).await?;
    stopped.resume()?;
    let resumed_at = std::time::Instant::now();

    // Back: the cell leaves Unknown; nothing in the member was deleted or re-created.
    world
        .wait_cell(&name, "out of Unknown once its member answers", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.phase != CellPhase::Unknown)
                && cell_condition(c, "Ready").is_some_and(|(status, _)| status != "Unknown")
        })
        .await?;
    eprintln!(
        "member API server continued: cell out of Unknown after {:.1}s",
        resumed_at.elapsed().as_secs_f64()
    );
    let after = stack_in(&member_client, &uid).await?;
    ensure!(
        after == before,
        "the cell's objects in the member changed while it was away:\nbefore {before:#?}\nafter {after:#?}"
    );

    // The MemberCluster deleted while the cell names it: kept, saying which cell holds it.
    members.delete(&member, &DeleteParams::default()).await?;
    wait_warning(&world.client, &member, "DeletionBlocked", Some(&name)).await?;
    ensure!(
        members
            .get_opt(&member)
            .await?
            .is_some_and(|m| m.metadata.deletion_timestamp.is_some()),
        "MemberCluster {member} went while cell {name} names it"
    );

    // The cell deleted (it holds no tenants): its namespace in the member goes, then the member.
    world
        .cells_api()
        .delete(&name, &DeleteParams::default())
        .await?;
    poll(
        "the cell's namespace in the member deleted",
        common::WAIT,
        || async {
            Ok(namespaces
                .get_opt(&namespace)
                .await?
                .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some())
                .then_some(()))
        },
    )
    .await?;
    // The member is looked at again every 30 s while cells name it.
    poll(
        "MemberCluster released once no cell names it",
        Duration::from_secs(90),
        || async { Ok(members.get_opt(&member).await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

fn cell_condition<'a>(cell: &'a Cell, type_: &str) -> Option<(&'a str, &'a str)> {
    cell.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

fn condition_message(cell: &Cell, type_: &str) -> String {
    cell.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}
