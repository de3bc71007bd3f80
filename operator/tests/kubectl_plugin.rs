//! `kubectl cellstack` against the real API server: `status` and `tenant` (golden tables and
//! parsed JSON/YAML), and `move`, `drain` and `rollout status` with `--watch` following real
//! watches to their end. No operator runs: the test writes the objects' status itself, step by
//! step, as the operator would, so every figure on screen is one the test chose.

mod common;

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, ensure};
use cellstack_api::{
    routing::{CellRoute, CellState, RoutingTable, TenantRoute},
    tenant::TenantId,
    v1alpha1::{Cell, CellRollout, RateLimitPolicy, TenantAssignment},
};
use cellstack_operator::controllers::publish::Publisher;
use cellstack_testkit::cluster::{TestNamespace, require_cluster};
use common::{
    TEST_LABEL,
    objects::{condition, create, fixed_id, set_status},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-cellstack");

async fn plugin(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let run = Command::new(PLUGIN)
        .args(args)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("kubectl-cellstack did not finish within 60 s")?
        .context("running kubectl-cellstack")
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's objects, named with its id, removed at the end.
struct Objects {
    client: Client,
    /// The test's namespace (its routing table goes there).
    namespace: String,
    id: String,
    cells: Vec<String>,
    tenants: Vec<String>,
    rollouts: Vec<String>,
    policies: Vec<String>,
}

impl Objects {
    fn name(&self, what: &str) -> String {
        format!("{what}-{}", self.id)
    }

    async fn cleanup(&self) {
        let dp = DeleteParams::default();
        let unblock = json!({"metadata": {"finalizers": null}});
        for n in &self.tenants {
            let _ = Api::<TenantAssignment>::all(self.client.clone())
                .delete(n, &dp)
                .await;
        }
        for n in &self.policies {
            let _ = Api::<RateLimitPolicy>::all(self.client.clone())
                .delete(n, &dp)
                .await;
        }
        for n in &self.rollouts {
            let _ = Api::<CellRollout>::all(self.client.clone())
                .delete(n, &dp)
                .await;
        }
        let cells = Api::<Cell>::all(self.client.clone());
        for n in &self.cells {
            let _ = cells
                .patch(n, &PatchParams::default(), &Patch::Merge(&unblock))
                .await;
            let _ = cells.delete(n, &dp).await;
        }
    }
}

fn redact(text: &str, id: &str) -> String {
    text.replace(id, "XXXXXXXX")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tenant_move_drain_rollout_and_completion_work_against_real_objects() {
    let client = require_cluster().await.expect("cluster");
    cellstack_testkit::ensure_crds(&client).await.expect("CRDs");
    // A namespace only for its unique name (the objects are cluster-scoped).
    let ns = TestNamespace::create(&client, "plugin")
        .await
        .expect("namespace");
    // A fixed-length id, so the golden tables keep their alignment once it is redacted.
    let id = fixed_id(&ns.name);
    let mut objects = Objects {
        client: client.clone(),
        namespace: ns.name.clone(),
        id,
        cells: Vec::new(),
        tenants: Vec::new(),
        rollouts: Vec::new(),
        policies: Vec::new(),
    };
    let result = run(&mut objects).await;
    objects.cleanup().await;
    ns.finish(result).await.expect("kubectl cellstack");
}

async fn run(o: &mut Objects) -> anyhow::Result<()> {
    let cells: Api<Cell> = Api::all(o.client.clone());
    let tenants: Api<TenantAssignment> = Api::all(o.client.clone());
    let rollouts: Api<CellRollout> = Api::all(o.client.clone());
    let labels = json!({ TEST_LABEL: o.id });
    let selector = format!("{TEST_LABEL}={}", o.id);
    let (alpha, bravo) = (o.name("alpha"), o.name("bravo"));
    for (name, zone) in [(&alpha, "zone-a"), (&bravo, "zone-b")] {
        create(
            &cells,
            json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell",
                "metadata": { "name": name, "labels": labels },
                "spec": { "zone": zone, "lanes": 2, "version": "v1",
                          "datastore": { "managed": { "storage": "Ephemeral" } } },
            }),
        )
        .await?;
        o.cells.push(name.clone());
    }
    set_status(
        &cells,
        &alpha,
        json!({ "phase": "Ready", "lanes": 2, "readyLanes": 2, "tenantCount": 2,
                "utilizationPercent": 40, "datastoreReplicas": 1,
                "conditions": [condition("Ready", "True", "AllLanesReady", "2/2 lanes ready")] }),
    )
    .await?;
    set_status(
        &cells,
        &bravo,
        json!({ "phase": "Degraded", "lanes": 2, "readyLanes": 1, "tenantCount": 0,
                "utilizationPercent": 0, "datastoreReplicas": 1,
                "conditions": [condition("Ready", "False", "LanesNotReady", "1/2 lanes ready"),
                               condition("Degraded", "True", "LanesNotReady", "lane-1 is not ready")] }),
    )
    .await?;
    // t1's id (and so its name) is fixed: the lanes the shard function gives it are in the
    // golden table. One a failed run left behind goes first.
    let t1 = "plugin-golden-tenant".to_owned();
    let t1_id = t1.as_str();
    let t2 = o.name("t2");
    if tenants.get_opt(&t1).await?.is_some() {
        tenants.delete(&t1, &DeleteParams::default()).await?;
        let gone = cellstack_testkit::cluster::poll(
            "a leftover t1 to go",
            Duration::from_secs(20),
            || async { Ok(tenants.get_opt(&t1).await?.is_none().then_some(())) },
        );
        gone.await?;
    }
    for t in [&t1, &t2] {
        create(
            &tenants,
            json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
                "metadata": { "name": t, "labels": labels },
                "spec": { "tenantId": t, "cell": alpha },
            }),
        )
        .await?;
        o.tenants.push(t.clone());
    }
    set_status(
        &tenants,
        &t1,
        json!({ "phase": "Placed", "cell": alpha, "epoch": 3,
                "conditions": [condition("Placed", "True", "Placed", "served by its cell")],
                "recentMoves": [
                    { "from": bravo, "to": alpha, "result": "Done", "keysCopied": 1200,
                      "writePauseMillis": 14, "finishedAt": "2026-12-04T10:00:00Z" },
                    { "from": bravo, "to": alpha, "result": "RolledBack", "keysCopied": 300,
                      "finishedAt": "2026-12-04T09:00:00Z",
                      "message": "the write pause would pass 1000 ms" } ] }),
    )
    .await?;
    set_status(
        &tenants,
        &t2,
        json!({ "phase": "Moving", "cell": alpha, "epoch": 1,
                "move": { "from": alpha, "to": bravo, "step": "Copy",
                          "keysCopied": 250, "keysTotal": 1000 } }),
    )
    .await?;
    // The limits `tenant` shows: this policy outranks any other (priority 1000, the most).
    let policy = o.name("gold");
    create(
        &Api::<RateLimitPolicy>::all(o.client.clone()),
        json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": { "name": policy, "labels": labels },
            "spec": { "selector": { "tenantIds": [t1_id] }, "priority": 1000, "failMode": "Closed",
                      "requestPriority": "high",
                      "limits": [{ "name": "writes", "requests": 50, "periodSeconds": 1, "burst": 100,
                                   "match": { "methods": ["PUT", "POST"], "pathPrefix": "/v1/items" } }] },
        }),
    )
    .await?;
    o.policies.push(policy);
    let rollout = o.name("v2");
    create(
        &rollouts,
        json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "CellRollout",
            "metadata": { "name": rollout, "labels": labels },
            "spec": { "cells": { "names": [alpha, bravo] }, "version": "v2",
                      "strategy": { "firstWave": 1, "bakeSeconds": 5 } },
        }),
    )
    .await?;
    o.rollouts.push(rollout.clone());
    set_status(
        &rollouts,
        &rollout,
        json!({ "phase": "Progressing", "wave": 1, "waves": 2, "cellsDone": 1, "cellsTotal": 2 }),
    )
    .await?;

    // status: a golden table, and JSON and YAML that parse to the same figures.
    let out = plugin(&["status", "-l", &selector]).await?;
    ensure!(out.status.success(), "status: {out:?}");
    insta::assert_snapshot!("status_table", redact(&text(&out), &o.id));
    for format in ["json", "yaml"] {
        let out = plugin(&["status", "-l", &selector, "-o", format]).await?;
        ensure!(out.status.success(), "status -o {format}: {out:?}");
        let doc: Value = if format == "json" {
            serde_json::from_slice(&out.stdout)?
        } else {
            serde_yaml::from_slice(&out.stdout)?
        };
        ensure!(doc["cells"].as_array().map(Vec::len) == Some(2), "{doc}");
        ensure!(
            doc["tenants"]["moving"] == 1 && doc["tenants"]["placed"] == 1,
            "{doc}"
        );
        ensure!(doc["moves"][0]["keysCopied"] == 250, "{doc}");
        ensure!(doc["rollouts"][0]["wave"] == 1, "{doc}");
        let problems: Vec<&str> = doc["problems"]
            .as_array()
            .context("problems")?
            .iter()
            .filter_map(|p| p["condition"].as_str())
            .collect();
        ensure!(problems == ["Degraded", "Ready"], "problems: {problems:?}");
    }

    // A routing table in the test's namespace, as the operator publishes it: alpha with 4
    // lanes, 2 per tenant, and t1 in it.
    let mut publisher = Publisher::new(o.client.clone(), &o.namespace, Duration::from_secs(10));
    let version = publisher.next_version().await?;
    let table = RoutingTable::canonical(
        version,
        1_700_000_000_000,
        vec![CellRoute {
            name: alpha.clone(),
            zone: Some("zone-a".into()),
            state: CellState::Active,
            lanes: (0..4).map(|i| format!("10.96.0.{}:8080", 10 + i)).collect(),
            shard_size: 2,
            shard_seed: 7,
        }],
        vec![],
        vec![TenantRoute {
            id: TenantId::parse(t1_id)?,
            cell: 0,
            epoch: 3,
            shard_variant: 0,
            edge_limit: None,
        }],
    )?;
    publisher.publish(table.clone()).await?;
    let lanes: Vec<u32> = table.lanes(&table.tenants[0]).iter().collect();

    // tenant: golden table and JSON.
    let out = plugin(&["tenant", &t1, "-n", &o.namespace]).await?;
    ensure!(out.status.success(), "tenant: {out:?}");
    insta::assert_snapshot!("tenant_table", redact(&text(&out), &o.id));
    let out = plugin(&["tenant", &t1, "-n", &o.namespace, "-o", "json"]).await?;
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        doc["epoch"] == 3 && doc["cell"] == alpha.as_str() && doc["zone"] == "zone-a",
        "{doc}"
    );
    let shown: Vec<u64> = doc["lanes"]
        .as_array()
        .context("lanes")?
        .iter()
        .filter_map(|l| l["lane"].as_u64())
        .collect();
    ensure!(
        shown == lanes.iter().map(|l| u64::from(*l)).collect::<Vec<_>>(),
        "the router's shard function puts t1 on lanes {lanes:?}; the plugin shows {doc}"
    );
    ensure!(doc["limits"]["requestPriority"] == "high", "{doc}");
    ensure!(
        doc["recentMoves"][1]["result"] == "RolledBack"
            && doc["recentMoves"][0]["writePauseMillis"] == 14,
        "{doc}"
    );
    let missing = plugin(&["tenant", "no-such-tenant"]).await?;
    ensure!(
        !missing.status.success()
            && String::from_utf8_lossy(&missing.stderr)
                .contains("TenantAssignment no-such-tenant does not exist"),
        "{missing:?}"
    );

    // move --watch: the test plays the operator, one step at a time.
    let mut follow = Follower::start(&[
        "move",
        &t1,
        "--to",
        &bravo,
        "--watch",
        "--timeout-secs",
        "60",
    ])?;
    // Its first line says it watches: every change from here on reaches it.
    follow.until("following").await?;
    ensure!(tenants.get(&t1).await?.spec.cell.as_deref() == Some(bravo.as_str()));
    for (step, copied) in [("Prepare", 0), ("Copy", 400), ("Copy", 800), ("Flip", 800)] {
        set_status(
            &tenants,
            &t1,
            json!({ "phase": "Moving", "move": { "from": alpha, "to": bravo, "step": step,
                    "startedAt": "2025-06-01T00:00:00Z", "keysCopied": copied, "keysTotal": 800 } }),
        )
        .await?;
    }
    set_status(
        &tenants,
        &t1,
        json!({ "phase": "Placed", "cell": bravo, "epoch": 4,
                "move": { "from": alpha, "to": bravo, "step": "Done", "startedAt": "2025-06-01T00:00:00Z",
                          "keysCopied": 800, "keysTotal": 800, "writePauseMillis": 12 } }),
    )
    .await?;
    let out = follow.finish().await?;
    ensure!(out.0, "move --watch failed: {}", out.1);
    ensure!(
        out.1.contains("Copy: 400/800 keys copied")
            && out.1.contains(&format!(
                "moved TenantAssignment {t1} to cell {bravo}: 800 keys, writes paused 12 ms"
            )),
        "move --watch printed: {}",
        out.1
    );
    let draining_target = plugin(&["move", &t2, "--to", "no-such-cell"]).await?;
    ensure!(
        String::from_utf8_lossy(&draining_target.stderr)
            .contains("Cell no-such-cell does not exist"),
        "{draining_target:?}"
    );

    // drain --watch: tenants leave; done once none is left and the cell says Drained.
    let mut follow = Follower::start(&[
        "drain",
        &alpha,
        "--watch",
        "-o",
        "json",
        "--timeout-secs",
        "60",
    ])?;
    // The first document is the cell as the watch began.
    follow.until("\"tenantsLeft\":2").await?;
    ensure!(
        cells.get(&alpha).await?.spec.draining,
        "spec.draining was not set"
    );
    // t2's move (under way since before the drain) goes on and ends; t1's move away from
    // alpha ended long before the drain and is not part of it.
    let t2_move = |step: &str, copied: u64| json!({ "from": alpha, "to": bravo, "step": step, "keysCopied": copied, "keysTotal": 1000 });
    set_status(&tenants, &t2, json!({ "move": t2_move("Copy", 600) })).await?;
    follow.until("\"keysCopied\":600").await?;
    set_status(&cells, &alpha, json!({ "tenantCount": 1 })).await?;
    let mut done = t2_move("Done", 1000);
    done["writePauseMillis"] = json!(9);
    set_status(
        &tenants,
        &t2,
        json!({ "phase": "Placed", "cell": bravo, "move": done }),
    )
    .await?;
    set_status(
        &cells,
        &alpha,
        json!({ "tenantCount": 0,
                "conditions": [condition("Drained", "True", "Drained", "no tenant left")] }),
    )
    .await?;
    let (ok, printed) = follow.finish().await?;
    ensure!(ok, "drain --watch failed: {printed}");
    let lines: Vec<Value> = printed
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let t2_steps: Vec<(String, u64)> = lines
        .iter()
        .filter_map(|d| d["moves"].as_array())
        .flatten()
        .filter(|m| m["tenant"] == t2.as_str())
        .filter_map(|m| Some((m["step"].as_str()?.to_owned(), m["keysCopied"].as_u64()?)))
        .collect();
    ensure!(
        lines.iter().any(|d| d["tenantsLeft"] == 1)
            && t2_steps.contains(&("Copy".into(), 600))
            && t2_steps.last() == Some(&("Done".into(), 1000))
            && lines
                .last()
                .is_some_and(|d| d["drained"] == true && d["worstWritePauseMillis"] == 9)
            && !printed.contains(t1.as_str()),
        "drain -o json printed (t2's steps {t2_steps:?}): {printed}"
    );

    // rollout status --watch: a halted rollout ends it with a failure and the gate's reason.
    let mut follow = Follower::start(&[
        "rollout",
        "status",
        &rollout,
        "--watch",
        "--timeout-secs",
        "60",
    ])?;
    follow.until("Progressing wave 1/2: 1/2 cells").await?;
    set_status(
        &rollouts,
        &rollout,
        json!({ "phase": "Halted",
                "conditions": [condition("Halted", "True", "GateFailed", "bravo: errors 7.5% above 1%")] }),
    )
    .await?;
    let (ok, printed) = follow.finish().await?;
    ensure!(!ok, "a halted rollout must exit non-zero: {printed}");
    ensure!(printed.contains("bravo: errors 7.5% above 1%"), "{printed}");

    // Completion scripts name the binary.
    let out = plugin(&["completion", "bash"]).await?;
    ensure!(
        out.status.success() && text(&out).contains("kubectl-cellstack"),
        "{out:?}"
    );
    Ok(())
}

/// A plugin following a change, its stdout read line by line.
struct Follower {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: String,
}

impl Follower {
    fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(PLUGIN)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: String::new(),
        })
    }

    /// Reads lines until one contains `needle`.
    async fn until(&mut self, needle: &str) -> anyhow::Result<()> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .with_context(|| {
                    format!("no line with {needle:?} within 30 s; so far: {}", self.seen)
                })??
                .with_context(|| {
                    format!("the plugin ended before printing {needle:?}: {}", self.seen)
                })?;
            self.seen.push_str(&line);
            self.seen.push('\n');
            if line.contains(needle) {
                return Ok(());
            }
        }
    }

    /// Waits for it to exit: whether it succeeded, and everything it printed (stdout, then
    /// stderr).
    async fn finish(mut self) -> anyhow::Result<(bool, String)> {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the plugin did not stop following within 60 s")??;
        while let Some(line) = self.lines.next_line().await? {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut self.seen).await?;
        }
        Ok((status.success(), self.seen))
    }
}
