//! A real operator against the cluster's API server: a deleted CellRollout's metric series go
//! with it (rollouts have no finalizer, so the controller itself never sees the deletion).

mod common;

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::CellRollout;
use cellstack_testkit::cluster::poll;
use common::{TEST_LABEL, WAIT, World};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_rollouts_metrics_are_removed() -> anyhow::Result<()> {
    let mut world = World::new("rollout-forget").await?;
    let name = cellstack_testkit::unique_name("forget");
    let rollouts: Api<CellRollout> = Api::all(world.client.clone());
    let result = async {
        world.start_operator("a").await?;
        // A rollout of a cell that does not exist: it reconciles (and exports its progress)
        // without any cell to update.
        let rollout: CellRollout = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1",
            "kind": "CellRollout",
            "metadata": { "name": name, "labels": { TEST_LABEL: world.id } },
            "spec": { "cells": { "names": ["no-such-cell"] }, "version": "v2" },
        }))
        .context("building the test CellRollout")?;
        rollouts.create(&PostParams::default(), &rollout).await?;
        let op = &world.operators[0];
        let series = format!("cellstack_operator_rollout_cells_total{{rollout=\"{name}\"}}");
        poll("the rollout's progress on /metrics", WAIT, || async {
            Ok(op.metric(&series).await?.map(|_| ()))
        })
        .await?;

        rollouts.delete(&name, &DeleteParams::default()).await?;
        poll("the rollout's series to leave /metrics", WAIT, || async {
            let text = op.scrape().await?;
            let left: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&format!("rollout=\"{name}\"")))
                .collect();
            ensure!(left.is_empty(), "still exported: {left:?}");
            Ok(Some(()))
        })
        .await
    }
    .await;
    // Gone already when the test passed; not when it failed part way.
    let _ = rollouts.delete(&name, &DeleteParams::default()).await;
    world.finish(result).await
}
