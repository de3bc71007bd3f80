//! Every `cellstack_operator_*` metric the docs name is on a running operator's `/metrics` page,
//! and every family the page declares is named in the docs: a doc and the registry cannot drift
//! apart. Series whose labels are known in advance exist from the start (at zero); those of an
//! object appear once the operator has handled one: here a Cell, a CellRollout that takes it
//! to a new version through one gate reading, and a MemberCluster (whose Secret does not exist,
//! so nothing is contacted).

mod common;

use std::path::Path;

use anyhow::Context as _;
use cellstack_api::v1alpha1::{CellRollout, MemberCluster, RolloutPhase, member_condition};
use cellstack_testkit::cluster::poll;
use common::{TEST_LABEL, WAIT, World, is_ready};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_name_exactly_the_metrics_a_running_operator_serves() -> anyhow::Result<()> {
    let mut world = World::new("op-metrics").await?;
    let name = cellstack_testkit::unique_name("metrics");
    let rollouts: Api<CellRollout> = Api::all(world.client.clone());
    let result = async {
        let op = world.start_operator("m0").await?;
        let cell = world
            .create_cell(
                "metrics",
                json!({ "lanes": 1, "datastore": { "managed": { "storage": "Ephemeral" } } }),
            )
            .await?;
        let cell = cell.metadata.name.context("the created Cell has a name")?;
        world.wait_cell(&cell, "Ready", is_ready).await?;
        // One wave, the shortest bake, and no minimum of requests: the gate reads the idle cell
        // once and passes it.
        let rollout: CellRollout = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1",
            "kind": "CellRollout",
            "metadata": { "name": name, "labels": { TEST_LABEL: world.id } },
            "spec": {
                "cells": { "names": [cell] },
                "version": "v2",
                "strategy": { "firstWave": 1, "bakeSeconds": 5 },
                "gate": { "minRequests": 0 },
            },
        }))
        .context("building the test CellRollout")?;
        rollouts.create(&PostParams::default(), &rollout).await?;
        poll("the rollout to complete", WAIT, || async {
            let phase = rollouts.get(&name).await?.status.map(|s| s.phase);
            Ok((phase == Some(RolloutPhase::Complete)).then_some(()))
        })
        .await?;

        // A MemberCluster the operator has judged, so its gauge has a series.
        let members: Api<MemberCluster> = Api::all(world.client.clone());
        let member: MemberCluster = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1",
            "kind": "MemberCluster",
            "metadata": { "name": name, "labels": { TEST_LABEL: world.id } },
            "spec": { "kubeconfigSecretRef": { "name": format!("{name}-absent") } },
        }))
        .context("building the test MemberCluster")?;
        members.create(&PostParams::default(), &member).await?;
        poll("the MemberCluster to be judged", WAIT, || async {
            let judged = members.get(&name).await?.status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == member_condition::CREDENTIALS_VALID)
            });
            Ok(judged.then_some(()))
        })
        .await?;

        let page = world.operators[op].scrape().await?;
        let docs = cellstack_runtime::metrics::documentation(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        )?;
        let wrong = cellstack_runtime::metrics::disagreements(&docs, &page, "cellstack_operator_");
        anyhow::ensure!(
            wrong.is_empty(),
            "docs and /metrics disagree: {wrong:#?}\npage:\n{page}"
        );
        Ok(())
    }
    .await;
    let _ = rollouts.delete(&name, &DeleteParams::default()).await;
    world.finish(result).await
}
