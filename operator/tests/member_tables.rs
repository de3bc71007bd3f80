//! The routing table mirrored into a member cluster, with a real `cellstack-operator` on the
//! cluster in `KUBECONFIG` and a second control plane of the test's own (`e2e/control-plane`,
//! its own etcd and API server, no nodes) as the member:
//!
//! - each cluster holds its own view: the member's table (in its `systemNamespace`, written with
//!   the member's client) routes the member's cell at its ClusterIP and leaves out the
//!   management cluster's cell (no `--multicluster`: it has no address reachable from there);
//!   the management cluster's table the other way round;
//! - the member's heartbeat Lease names the member's table version and is renewed, and the
//!   operator reports that version as `cellstack_operator_member_routing_table_version`;
//! - with `--internal-tls`, the member holds the same trust bundle and lanes' client certificate
//!   as the management cluster;
//! - the member's API server stopped (SIGSTOP): a change reaches the management cluster's table
//!   and its heartbeat goes on, while the member's publications fail and are counted; a CA
//!   rotation asked for then widens the management cluster's bundle but is not promoted while
//!   the member cannot hold the new CA (checked 15 s after widening, with a 3 s propagation
//!   time); continued: the member holds the widened bundle and then the new CA is promoted; the
//!   member's table catches up with the change made while it was stopped, at a higher version,
//!   and its heartbeat names that version.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use cellstack_api::{
    routing::{
        RoutingTable,
        publication::{HEARTBEAT_NAME, HEARTBEAT_VERSION_ANNOTATION},
        table::CellState,
    },
    v1alpha1::{
        Cell, INTERNAL_CA_BUNDLE, INTERNAL_CA_BUNDLE_KEY, INTERNAL_CA_SECRET, LANE_CLIENT_SECRET,
    },
};
use cellstack_operator::controllers::publish::read_published;
use cellstack_testkit::{cluster::poll, control_plane::ControlPlane};
use common::{
    World,
    members::{Stopped, register_member, with_member_control_plane},
};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ConfigMap, Secret},
    },
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// The member's routers' namespace, as its MemberCluster names it.
const MEMBER_SYSTEM_NAMESPACE: &str = "cellstack-edge";
/// Every API call of the test's reads.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after widening the CA must still be at `Widened` while the member is stopped: the
/// 3 s propagation time, one 10 s look of the CA and a margin.
const HOLD_WINDOW: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_gets_its_own_view_and_bundle_and_a_stopped_member_holds_back_its_table_and_the_ca_promotion()
-> anyhow::Result<()> {
    let world = World::new("op-mtables").await?;
    with_member_control_plane(world, scenario).await
}

async fn scenario(world: &mut World, member_cp: &ControlPlane) -> anyhow::Result<()> {
    let operator = world
        .start_operator_with(
            "mtab",
            &[
                ("CELLSTACK_ROUTING_HEARTBEAT_SECS", "1"),
                ("CELLSTACK_INTERNAL_TLS", "true"),
                ("CELLSTACK_INTERNAL_CA_PROPAGATION_SECS", "3"),
            ],
        )
        .await?;
    let member_client = member_cp.client().await?;
    let member = register_member(
        world,
        &member_client,
        &member_cp.kubeconfig(),
        MEMBER_SYSTEM_NAMESPACE,
        false,
    )
    .await?;

    let ephemeral = json!({ "managed": { "storage": "Ephemeral" } });
    let remote = world
        .create_cell(
            "remote",
            json!({ "cluster": member, "lanes": 1, "datastore": ephemeral }),
        )
        .await?
        .name_any();
    let near = world
        .create_cell("near", json!({ "lanes": 1, "datastore": ephemeral }))
        .await?
        .name_any();
    let mut endpoints = Vec::new();
    for name in [&remote, &near] {
        let cell = world
            .wait_cell(name, "with endpoints", |c| {
                c.status.as_ref().is_some_and(|s| !s.endpoints.is_empty())
            })
            .await?;
        endpoints.push(cell.status.map(|s| s.endpoints).unwrap_or_default());
    }
    let (remote_lanes, near_lanes) = (endpoints[0].clone(), endpoints[1].clone());

    let member_tables: Api<ConfigMap> =
        Api::namespaced(member_client.clone(), MEMBER_SYSTEM_NAMESPACE);
    let local_tables: Api<ConfigMap> = Api::namespaced(world.client.clone(), &world.system.name);
    // Each cluster's view: its own cell at its ClusterIPs, the other cluster's left out.
    let in_member = poll(
        "the member's table routes the member's cell, not the management cluster's",
        common::WAIT,
        || async {
            let table = table_in(&member_tables).await?;
            Ok(table.filter(|t| {
                lanes_of(t, &remote) == Some(&remote_lanes) && lanes_of(t, &near).is_none()
            }))
        },
    )
    .await?;
    poll(
        "the management cluster's table routes its own cell, not the member's",
        common::WAIT,
        || async {
            let table = table_in(&local_tables).await?;
            Ok(table
                .filter(|t| {
                    lanes_of(t, &near) == Some(&near_lanes) && lanes_of(t, &remote).is_none()
                })
                .map(|_| ()))
        },
    )
    .await?;
    eprintln!(
        "member {member}: table version {} with cell {remote} at {remote_lanes:?}",
        in_member.version
    );

    // The member's heartbeat: renewed (twice seen, renewTime moving) naming the member's table.
    let member_leases: Api<Lease> = Api::namespaced(member_client.clone(), MEMBER_SYSTEM_NAMESPACE);
    let first = poll("the member's heartbeat Lease", common::WAIT, || async {
        heartbeat_of(&member_leases).await
    })
    .await?;
    let renewed = poll(
        "the member's heartbeat renewed, naming the member's table",
        Duration::from_secs(30),
        || async {
            Ok(heartbeat_of(&member_leases)
                .await?
                .filter(|(version, at)| *version >= in_member.version && *at > first.1))
        },
    )
    .await?;
    eprintln!(
        "member heartbeat: version {} renewed at {}",
        renewed.0, renewed.1
    );
    let gauge =
        format!("cellstack_operator_member_routing_table_version{{member_cluster=\"{member}\"}}");
    let reported = world.operators[operator]
        .metric(&gauge)
        .await?
        .with_context(|| format!("the operator serves no {gauge}"))?;
    ensure!(
        reported >= in_member.version as f64,
        "{gauge} is {reported}, below the member's table version {}",
        in_member.version
    );
    let failures_metric = format!(
        "cellstack_operator_member_routing_table_publish_failures_total{{member_cluster=\"{member}\"}}"
    );
    let failures_before = world.operators[operator]
        .metric(&failures_metric)
        .await?
        .unwrap_or(0.0);
    let member_maps = member_tables.clone();
    let bundle_before = poll(
        "the member to hold the management cluster's trust bundle",
        common::WAIT,
        || async {
            let local = bundle_in(&local_tables).await?;
            let mirrored = bundle_in(&member_maps).await?;
            Ok((local.is_some() && local == mirrored).then_some(local))
        },
    )
    .await?
    .unwrap_or_default();
    ensure!(
        certificates_in(&bundle_before) == 1,
        "one CA before the rotation: {bundle_before}"
    );
    // The lanes' client certificate the member's routers mount is the management cluster's.
    let client_cert = |client: kube::Client, namespace: String| async move {
        let secret = Api::<Secret>::namespaced(client, &namespace)
            .get_opt(LANE_CLIENT_SECRET)
            .await?;
        anyhow::Ok(secret.and_then(|s| s.data?.get("tls.crt").cloned()))
    };
    poll(
        "the member to hold the lanes' client certificate",
        common::WAIT,
        || async {
            let local = client_cert(world.client.clone(), world.system.name.clone()).await?;
            let mirrored =
                client_cert(member_client.clone(), MEMBER_SYSTEM_NAMESPACE.into()).await?;
            Ok((local.is_some() && local == mirrored).then_some(()))
        },
    )
    .await?;

    // The member's API server stopped: a change to both cells. The management cluster's table
    // takes its own at once and its heartbeat goes on; the member's publications fail.
    let local_leases: Api<Lease> = Api::namespaced(world.client.clone(), &world.system.name);
    let stopped = Stopped::stop(member_cp.apiserver_pid()?)?;
    let stopped_at = Instant::now();
    let stopped_ts = Timestamp::now();
    let while_stopped = async {
        for name in [&remote, &near] {
            cordon(&world.cells_api(), name).await?;
        }
        poll(
            "the management cluster's table shows its cell cordoned while the member is stopped",
            Duration::from_secs(30),
            || async {
                let table = table_in(&local_tables).await?;
                Ok(table
                    .filter(|t| state_of(t, &near) == Some(CellState::Cordoned))
                    .map(|_| ()))
            },
        )
        .await?;
        eprintln!(
            "member stopped: the management table took the change after {:.1}s",
            stopped_at.elapsed().as_secs_f64()
        );
        poll(
            "the management cluster's heartbeat renewed while the member is stopped",
            Duration::from_secs(30),
            || async {
                Ok(heartbeat_of(&local_leases)
                    .await?
                    .filter(|(_, at)| *at > stopped_ts)
                    .map(|_| ()))
            },
        )
        .await?;
        // A CA rotation: the bundle widens here, but the new CA must not issue while the
        // member's routers cannot have it.
        let cas: Api<Secret> = Api::namespaced(world.client.clone(), &world.system.name);
        cas.patch(
            INTERNAL_CA_SECRET,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"cellstack.dev/rotate": "now"}}})),
        )
        .await?;
        poll(
            "the management cluster's bundle widened to two CAs",
            common::WAIT,
            || async {
                let bundle = bundle_in(&local_tables).await?.unwrap_or_default();
                Ok((certificates_in(&bundle) == 2).then_some(()))
            },
        )
        .await?;
        let widened_at = Instant::now();
        // Each attempt waits for the API timeout (10 s) before it counts as failed.
        let failures = poll(
            "a failed publication into the stopped member counted",
            Duration::from_secs(60),
            || async {
                let failures = world.operators[operator]
                    .metric(&failures_metric)
                    .await?
                    .unwrap_or(0.0);
                Ok((failures > failures_before).then_some(failures))
            },
        )
        .await?;
        // A negative check, so a fixed window: without the member the new CA would issue 3 s
        // after widening (the propagation time) at the CA's next look (every 10 s at most).
        tokio::time::sleep_until((widened_at + HOLD_WINDOW).into()).await;
        let step = rotation_step(&cas).await?;
        ensure!(
            step == "Widened",
            "the CA left the Widened step ({step}) while the member could not hold the new CA"
        );
        eprintln!(
            "member stopped: the CA rotation held at Widened for {:.0}s after widening",
            widened_at.elapsed().as_secs_f64()
        );
        Ok(failures)
    }
    .await;
    let failures = match while_stopped {
        Ok(failures) => failures,
        Err(e) => {
            stopped.resume()?;
            return Err(e);
        }
    };
    eprintln!(
        "member stopped: {} failed publications into it counted after {:.1}s",
        failures - failures_before,
        stopped_at.elapsed().as_secs_f64()
    );
    stopped.resume()?;
    let resumed_at = Instant::now();

    // Continued: the member takes the widened bundle, and then the new CA issues.
    let cas: Api<Secret> = Api::namespaced(world.client.clone(), &world.system.name);
    poll(
        "the member to hold the widened bundle",
        common::WAIT,
        || async {
            let mirrored = bundle_in(&member_maps).await?.unwrap_or_default();
            Ok((certificates_in(&mirrored) == 2).then_some(()))
        },
    )
    .await?;
    let member_widened_at = Instant::now();
    poll(
        "the new CA promoted once the member holds it",
        common::WAIT,
        || async { Ok((rotation_step(&cas).await? != "Widened").then_some(())) },
    )
    .await?;
    eprintln!(
        "member continued: it held the widened bundle after {:.1}s; the new CA issued {:.1}s later",
        member_widened_at.duration_since(resumed_at).as_secs_f64(),
        member_widened_at.elapsed().as_secs_f64()
    );

    // Continued: the member's table catches up, at a higher version, and its heartbeat names it.
    let caught_up = poll(
        "the member's table shows its cell cordoned once the member answers",
        common::WAIT,
        || async {
            let table = table_in(&member_tables).await?;
            Ok(table.filter(|t| state_of(t, &remote) == Some(CellState::Cordoned)))
        },
    )
    .await?;
    ensure!(
        caught_up.version > in_member.version,
        "the member's table went from version {} to {}",
        in_member.version,
        caught_up.version
    );
    eprintln!(
        "member continued: its table took the change after {:.1}s (version {} → {})",
        resumed_at.elapsed().as_secs_f64(),
        in_member.version,
        caught_up.version
    );
    poll(
        "the member's heartbeat names the caught-up table",
        Duration::from_secs(30),
        || async {
            Ok(heartbeat_of(&member_leases)
                .await?
                .filter(|(version, _)| *version >= caught_up.version)
                .map(|_| ()))
        },
    )
    .await?;
    Ok(())
}

/// The table published in `api`'s namespace, read the way a router reads it; `None` before the
/// first publication or while the API server does not answer in time.
async fn table_in(api: &Api<ConfigMap>) -> anyhow::Result<Option<RoutingTable>> {
    Ok(read_published(api, READ_TIMEOUT).await?)
}

fn lanes_of<'a>(table: &'a RoutingTable, cell: &str) -> Option<&'a Vec<String>> {
    table
        .cells
        .iter()
        .find(|c| c.name == cell)
        .map(|c| &c.lanes)
}

fn state_of(table: &RoutingTable, cell: &str) -> Option<CellState> {
    table.cells.iter().find(|c| c.name == cell).map(|c| c.state)
}

/// The trust bundle (PEM) published in `api`'s namespace, if any.
async fn bundle_in(api: &Api<ConfigMap>) -> anyhow::Result<Option<String>> {
    Ok(api
        .get_opt(INTERNAL_CA_BUNDLE)
        .await?
        .and_then(|m| m.data?.get(INTERNAL_CA_BUNDLE_KEY).cloned()))
}

fn certificates_in(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

/// The rotation step the internal CA's Secret records.
async fn rotation_step(cas: &Api<Secret>) -> anyhow::Result<String> {
    Ok(cas
        .get(INTERNAL_CA_SECRET)
        .await?
        .annotations()
        .get("cellstack.dev/rotation-step")
        .cloned()
        .unwrap_or_default())
}

/// The heartbeat Lease in `api`'s namespace: the version it names and when it was renewed.
async fn heartbeat_of(api: &Api<Lease>) -> anyhow::Result<Option<(u64, Timestamp)>> {
    let Some(lease) = api.get_opt(HEARTBEAT_NAME).await? else {
        return Ok(None);
    };
    let version = lease
        .annotations()
        .get(HEARTBEAT_VERSION_ANNOTATION)
        .and_then(|v| v.parse().ok());
    let renewed = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
    Ok(version.zip(renewed))
}

async fn cordon(cells: &Api<Cell>, name: &str) -> anyhow::Result<()> {
    cells
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "cordoned": true } })),
        )
        .await
        .with_context(|| format!("cordoning cell {name}"))?;
    Ok(())
}
