//! Traffic and move helpers shared by the move tests and the move benchmark: a real
//! `cellstack-router` process, the checker client (`cellstack_testkit::traffic`) writing
//! sequence-numbered items through it, and readers of a tenant's items and move record.

use std::{collections::BTreeSet, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, bail, ensure};
use cellstack_api::{
    v1alpha1::{MoveStatus, MoveStep, TenantAssignment},
    wire::header,
};
use cellstack_testkit::cluster::poll;
#[allow(unused_imports)] // each test binary uses a different part of the harness
pub use cellstack_testkit::traffic::{Ack, Checker, percentile};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::process::{Child, Command};

use super::{TEST_LABEL, WAIT, World, is_ready};

/// Items written before a move, so the bulk copy has something to do.
pub const PRELOAD: u64 = 2000;

/// A `cellstack-router` process serving the table the world's operator publishes.
pub struct Router {
    pub url: String,
    /// Its admin listener (`/readyz`, `/status`).
    pub admin: String,
    pub log: PathBuf,
    /// Killed on drop.
    pub _child: Child,
}

impl Router {
    pub async fn start(world: &World) -> anyhow::Result<Self> {
        Self::start_with(world, &[]).await
    }

    /// [`Router::start`] with more command-line arguments.
    pub async fn start_with(world: &World, extra: &[String]) -> anyhow::Result<Self> {
        Self::start_reading(world, "router", None, &world.system.name, extra).await
    }

    /// A router reading the table published in `namespace` of the cluster `kubeconfig` names
    /// (`None`: the test's own), keeping its last-known-good copy and its log in a directory
    /// named after the world and `name`: a router started again under the same name starts
    /// from the copy the last one kept (a container restart).
    pub async fn start_reading(
        world: &World,
        name: &str,
        kubeconfig: Option<&std::path::Path>,
        namespace: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        // The router is another package's binary: the workspace build the test command runs
        // puts it beside this test's own.
        let exe = std::env::current_exe()?
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("cellstack-router"))
            .context("locating the target directory")?;
        ensure!(
            exe.exists(),
            "{} is missing: build it first (cargo build -p cellstack-router)",
            exe.display()
        );
        let port = cellstack_testkit::ports::free_port();
        let admin = cellstack_testkit::ports::free_port();
        let dir = std::env::temp_dir().join(format!("{}-{name}", world.id));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("router.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(exe);
        if let Some(kubeconfig) = kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--tenant-from", "header"])
            .args(["--kubernetes", "--namespace", namespace])
            .arg("--last-known-good")
            .arg(dir.join("table.bin"))
            .args(["--deadline-ms", "5000", "--worker-threads", "2"])
            .args(extra)
            .env("CELLSTACK_LOG", "info")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .context("starting cellstack-router")?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin}"),
            log,
            _child: child,
        })
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- router log ---\n{}\n",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// The item names a cell holds for `tenant`, read through its admin API.
pub async fn items_in(world: &World, cell: &str, tenant: &str) -> anyhow::Result<BTreeSet<String>> {
    cellstack_testkit::traffic::items_in(&world.client, cell, tenant).await
}

/// Two Ready cells and a tenant pinned to the first, provisioned and reachable through a
/// router: (alpha, bravo, tenant, router).
pub async fn setup(world: &mut World) -> anyhow::Result<(String, String, String, Router)> {
    // On this small machine a move may roll back on the pause bound; it is then tried again
    // after 2 s (not 5 minutes), so tests and the benchmark still see it end on the target.
    world
        .operator_env
        .push(("CELLSTACK_MOVE_RETRY_SECS".into(), "2".into()));
    world.start_operator("a").await?;
    let spec = json!({"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}});
    let alpha = world.create_cell("alpha", spec.clone()).await?.name_any();
    let bravo = world.create_cell("bravo", spec).await?.name_any();
    world.wait_cell(&alpha, "Ready", is_ready).await?;
    world.wait_cell(&bravo, "Ready", is_ready).await?;
    let tenant = format!("{}-t", world.id);
    let ta: TenantAssignment = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
        "metadata": {"name": tenant, "labels": {TEST_LABEL: world.id}},
        "spec": {"tenantId": tenant, "cell": alpha},
    }))?;
    Api::<TenantAssignment>::all(world.client.clone())
        .create(&PostParams::default(), &ta)
        .await?;
    let router = Router::start(world).await?;
    first_write(&router, &tenant).await?;
    Ok((alpha, bravo, tenant, router))
}

/// Waits until a write for `tenant` through `router` is acknowledged: the table names the
/// tenant, and its cell has its record.
pub async fn first_write(router: &Router, tenant: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/items/probe", router.url);
    poll("a first write through the router", WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let res = http
                .put(&url)
                .header(header::TENANT, tenant)
                .body("1")
                .send()
                .await?;
            if res.status().is_success() {
                Ok(Some(()))
            } else {
                bail!("{}: {}", res.status(), res.text().await.unwrap_or_default())
            }
        }
    })
    .await
    .map_err(|e| e.context(router.log_tail()))
}

pub async fn preload(router: &Router, tenant: &str) -> anyhow::Result<()> {
    let mut checker = Checker::start(&router.url, tenant, "pre", 16, Duration::ZERO);
    poll("the preload", WAIT, || {
        let n = checker.acked();
        async move { Ok((n as u64 >= PRELOAD).then_some(())) }
    })
    .await?;
    checker.stop().await;
    let why = checker.refusal_messages();
    let (_, refused) = checker.finish().await;
    ensure!(
        refused.is_empty(),
        "preload writes refused: {refused:?}; what they said: {why:#?}\n{}",
        router.log_tail()
    );
    Ok(())
}

/// Points the tenant at `cell`.
pub async fn retarget(world: &World, tenant: &str, cell: &str) -> anyhow::Result<()> {
    Api::<TenantAssignment>::all(world.client.clone())
        .patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cell": cell}})),
        )
        .await?;
    Ok(())
}

pub async fn move_of(world: &World, tenant: &str) -> anyhow::Result<Option<MoveStatus>> {
    Ok(Api::<TenantAssignment>::all(world.client.clone())
        .get(tenant)
        .await?
        .status
        .and_then(|s| s.move_)
        .map(|m| *m))
}

/// Waits for the move to `to` to end (Done or RolledBack); with `started`, that move only.
pub async fn finished(
    world: &World,
    tenant: &str,
    to: &str,
    started: Option<&Time>,
) -> anyhow::Result<MoveStatus> {
    poll(
        &format!("the move of {tenant} to {to} to end"),
        WAIT,
        || async {
            let mv = move_of(world, tenant).await?;
            Ok(mv.filter(|m| {
                m.to == to
                    && started.is_none_or(|s| m.started_at.as_ref() == Some(s))
                    && matches!(m.step, MoveStep::Done | MoveStep::RolledBack)
            }))
        },
    )
    .await
}

/// Every acknowledged write is in `home` (where the tenant lives after the move).
pub async fn no_write_lost(
    world: &World,
    home: &str,
    tenant: &str,
    acks: &[Ack],
) -> anyhow::Result<()> {
    let lost = cellstack_testkit::traffic::lost_writes(&world.client, home, tenant, acks).await?;
    ensure!(
        lost.is_empty(),
        "acknowledged writes missing from {home} (first {}): {lost:?}",
        lost.len()
    );
    Ok(())
}
