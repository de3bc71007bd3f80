//! The routing heartbeat against the cluster in `KUBECONFIG`: while nothing changes, the leading
//! operator renews the Lease `cellstack-routing-heartbeat` at its interval, as its identity,
//! naming the table version the pointer names — and leaves the published table objects alone.

mod common;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use cellstack_api::routing::{
    Manifest,
    publication::{HEARTBEAT_NAME, HEARTBEAT_VERSION_ANNOTATION, POINTER_KEY, POINTER_NAME},
};
use cellstack_testkit::cluster::poll;
use common::{WAIT, World};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap};
use kube::{Api, ResourceExt};

/// The version the pointer names, and the pointer's resourceVersion.
async fn pointer(api: &Api<ConfigMap>) -> anyhow::Result<Option<(u64, String)>> {
    let Some(cm) = api.get_opt(POINTER_NAME).await? else {
        return Ok(None);
    };
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get(POINTER_KEY))
        .context("the pointer has no manifest")?;
    let manifest: Manifest = serde_json::from_str(json)?;
    Ok(Some((
        manifest.table_version,
        cm.resource_version().unwrap_or_default(),
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_renews_the_heartbeat_with_the_published_version_while_nothing_changes()
-> anyhow::Result<()> {
    let mut world = World::new("op-heartbeat").await?;
    let result = async {
        let op = world
            .start_operator_with("hb0", &[("CELLSTACK_ROUTING_HEARTBEAT_SECS", "1")])
            .await?;
        let configmaps: Api<ConfigMap> = world.system.api();
        let leases: Api<Lease> = world.system.api();
        // The first table (no cells selected: an empty one) is published once the caches list.
        let (version, pointer_rv) = poll("the first routing table", WAIT, || async {
            pointer(&configmaps).await
        })
        .await?;

        // Three distinct renewals (the renewTime advances at least twice), each by the leader
        // and naming the published version.
        let renewals = Arc::new(Mutex::new(BTreeSet::new()));
        poll("three heartbeat renewals", WAIT, || {
            let leases = leases.clone();
            let renewals = renewals.clone();
            async move {
                let Some(lease) = leases.get_opt(HEARTBEAT_NAME).await? else {
                    return Ok(None);
                };
                let spec = lease.spec.as_ref().context("the heartbeat has no spec")?;
                anyhow::ensure!(
                    spec.holder_identity.as_deref() == Some("hb0"),
                    "held by {:?}, not the operator",
                    spec.holder_identity
                );
                let named = lease.annotations().get(HEARTBEAT_VERSION_ANNOTATION).cloned();
                anyhow::ensure!(
                    named == Some(version.to_string()),
                    "the heartbeat names version {named:?}, the pointer {version}"
                );
                let renewed = spec
                    .renew_time
                    .as_ref()
                    .context("the heartbeat has no renewTime")?
                    .0;
                let mut renewals = renewals.lock().unwrap();
                renewals.insert(renewed);
                Ok((renewals.len() >= 3).then_some(()))
            }
        })
        .await?;

        // Nothing changed, so nothing was republished: the pointer is the same object.
        let (now_version, now_rv) = pointer(&configmaps)
            .await?
            .context("the pointer disappeared")?;
        anyhow::ensure!(
            (now_version, &now_rv) == (version, &pointer_rv),
            "the pointer changed from version {version} ({pointer_rv}) to {now_version} ({now_rv}) while nothing changed"
        );
        let operator = &world.operators[op];
        poll("three renewals counted", WAIT, || async {
            let renewed = operator
                .metric("cellstack_operator_routing_heartbeats_total")
                .await?;
            Ok(renewed.is_some_and(|n| n >= 3.0).then_some(()))
        })
        .await?;
        let failed = world.operators[op]
            .metric("cellstack_operator_routing_heartbeat_failures_total")
            .await?;
        anyhow::ensure!(failed == Some(0.0), "{failed:?} renewals failed");
        Ok(())
    }
    .await;
    world.finish(result).await
}
