//! Harness for the operator's integration tests: real `cellstack-operator` processes against the
//! cluster in `KUBECONFIG` (e2e/cluster: API server, controller-manager for garbage collection,
//! a kubelet that runs the cells' pods).
//!
//! Each test gets its own system namespace (for its Lease) and its own label: its operators
//! reconcile only the Cells carrying that label, so tests run side by side without touching each
//! other's cells.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod members;
pub mod objects;
pub mod router_tls;
pub mod traffic;

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use cellstack_api::v1alpha1::{
    Cell, CellRollout, MemberCluster, RateLimitPolicy, ShuffleShardPool, TenantAssignment,
};
use cellstack_testkit::cluster::{TestNamespace, image, poll, require_cluster};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::process::{Child, Command};

pub const WAIT: Duration = Duration::from_secs(120);
pub const TEST_LABEL: &str = "cellstack.dev/test";

/// One test's world: a client, a namespace for the operator's Lease, a label for its cells.
pub struct World {
    pub client: Client,
    pub system: TestNamespace,
    pub id: String,
    pub cells: Vec<String>,
    pub operators: Vec<Operator>,
    /// Extra environment of the operators this world starts (their flags' `env` names).
    pub operator_env: Vec<(String, String)>,
}

impl World {
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let client = require_cluster().await?;
        cellstack_testkit::ensure_crds(&client).await?;
        let system = TestNamespace::create(&client, prefix).await?;
        let id = system.name.clone();
        Ok(Self {
            client,
            system,
            id,
            cells: Vec::new(),
            operators: Vec::new(),
            operator_env: Vec::new(),
        })
    }

    pub fn cells_api(&self) -> Api<Cell> {
        Api::all(self.client.clone())
    }

    /// Starts an operator reconciling this world's cells, with `identity` in the Lease.
    pub async fn start_operator(&mut self, identity: &str) -> anyhow::Result<usize> {
        let op = Operator::start(&self.system.name, &self.id, identity, &self.operator_env).await?;
        self.operators.push(op);
        Ok(self.operators.len() - 1)
    }

    /// Starts an operator like [`World::start_operator`], with `extra` added to (and taking
    /// precedence over) the world's operator environment, for this operator only.
    pub async fn start_operator_with(
        &mut self,
        identity: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<usize> {
        let mut env = self.operator_env.clone();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let op = Operator::start(&self.system.name, &self.id, identity, &env).await?;
        self.operators.push(op);
        Ok(self.operators.len() - 1)
    }

    /// A cell name unique to this test (`<prefix>-<id suffix>`), registered for cleanup.
    pub fn cell_name(&mut self, prefix: &str) -> String {
        let name = cellstack_testkit::unique_name(prefix);
        self.cells.push(name.clone());
        name
    }

    /// Creates a Cell labelled for this world's operators; `spec` is merged over the default.
    pub async fn create_cell(
        &mut self,
        prefix: &str,
        spec: serde_json::Value,
    ) -> anyhow::Result<Cell> {
        let name = self.cell_name(prefix);
        let cell: Cell = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1",
            "kind": "Cell",
            "metadata": { "name": name, "labels": { TEST_LABEL: self.id } },
            "spec": spec,
        }))
        .context("building the test Cell")?;
        self.cells_api()
            .create(&PostParams::default(), &cell)
            .await
            .with_context(|| format!("creating Cell {name}"))
    }

    /// Sets `spec.draining` on cell `name`: the operator moves its automatic tenants away.
    pub async fn drain_cell(&self, name: &str) -> anyhow::Result<()> {
        self.cells_api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"draining": true}})),
            )
            .await
            .with_context(|| format!("draining Cell {name}"))?;
        Ok(())
    }

    /// Waits until `check` accepts cell `name`, showing the cell's status on timeout.
    pub async fn wait_cell(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Cell) -> bool,
    ) -> anyhow::Result<Cell> {
        let api = self.cells_api();
        poll(&format!("cell {name}: {what}"), WAIT, || {
            let api = api.clone();
            let check = &check;
            async move {
                let cell = api.get(name).await?;
                if check(&cell) {
                    Ok(Some(cell))
                } else {
                    bail!(
                        "status is {}",
                        serde_json::to_string(&cell.status).unwrap_or_default()
                    )
                }
            }
        })
        .await
    }

    /// Ends a test: on failure adds the operators' logs and the cells' state to the error; then
    /// deletes the cells (while an operator still runs to release them), the operators and the
    /// namespace.
    pub async fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut dump = String::new();
                for name in &self.cells {
                    if let Ok(Some(cell)) = self.cells_api().get_opt(name).await {
                        dump.push_str(&format!(
                            "cell {name}: {}\n",
                            serde_json::to_string(&cell.status).unwrap_or_default()
                        ));
                        let ns = TestNamespace {
                            client: self.client.clone(),
                            name: format!("cell-{name}"),
                        };
                        dump.push_str(&ns.dump().await);
                    }
                }
                for op in &self.operators {
                    dump.push_str(&op.log_tail(60));
                }
                Err(e.context(dump))
            }
        };
        // Every cluster-scoped object this world labelled goes, whether the test deleted it or
        // not: a policy left behind conflicts with the next user's (the demo's `default` had 28
        // conflicts from one leaked test policy). Tenants first, since they hold the cells.
        self.delete_labelled::<TenantAssignment>().await;
        if let Err(e) = self.delete_cells().await {
            eprintln!("warning: cleaning up cells: {e:#}");
        }
        self.delete_labelled::<RateLimitPolicy>().await;
        self.delete_labelled::<ShuffleShardPool>().await;
        self.delete_labelled::<CellRollout>().await;
        if let Err(e) = self.delete_members().await {
            eprintln!("warning: cleaning up member clusters: {e:#}");
        }
        for op in &mut self.operators {
            op.kill().await;
        }
        // Kept for a failed test (their tails are in the error above); a passed one leaves none.
        if result.is_ok() {
            remove_temp_files(&self.id);
        }
        let system = std::mem::replace(
            &mut self.system,
            TestNamespace {
                client: self.client.clone(),
                name: String::new(),
            },
        );
        system.finish(result).await
    }

    /// Deletes every `K` labelled with this world's id; a failure is a warning (the test's own
    /// result stands).
    async fn delete_labelled<K>(&self)
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let selector = ListParams::default().labels(&format!("{TEST_LABEL}={}", self.id));
        if let Err(e) = api
            .delete_collection(&DeleteParams::background(), &selector)
            .await
        {
            eprintln!("warning: deleting this test's {}s: {e:#}", K::kind(&()));
        }
    }

    /// Deletes this world's MemberClusters and waits for an operator to release them (their
    /// finalizer); with none left alive, or after 30 s, drops the finalizer so nothing leaks.
    async fn delete_members(&mut self) -> anyhow::Result<()> {
        self.delete_labelled::<MemberCluster>().await;
        let api: Api<MemberCluster> = Api::all(self.client.clone());
        let selector = ListParams::default().labels(&format!("{TEST_LABEL}={}", self.id));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = api.list(&selector).await?.items;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline || self.operators.iter_mut().all(|o| !o.alive()) {
                let patch = json!({"metadata": {"finalizers": null}});
                for member in left {
                    let _ = api
                        .patch(
                            &member.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await;
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn delete_cells(&mut self) -> anyhow::Result<()> {
        let api = self.cells_api();
        // Tenants this world created would hold the cells; tests remove theirs, but a failed
        // test may not have.
        for name in &self.cells {
            let _ = api.delete(name, &DeleteParams::background()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in &self.cells {
            while api.get_opt(name).await?.is_some() {
                if Instant::now() > deadline || self.operators.iter_mut().all(|o| !o.alive()) {
                    // No operator left to release it: drop the finalizer so the cluster is clean.
                    let patch = json!({"metadata": {"finalizers": null}});
                    let _ = api
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }
}

/// Removes what world `id`'s processes left in the temporary directory: every entry named
/// `{id}-…` (the operators' logs, the routers' directories with their logs and last-known-good
/// tables, the routers' certificate files).
fn remove_temp_files(id: &str) {
    let prefix = format!("{id}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            eprintln!("warning: removing {}: {e}", path.display());
        }
    }
}

/// A running `cellstack-operator` process, killed on drop.
pub struct Operator {
    pub identity: String,
    pub metrics: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Operator {
    async fn start(
        system_namespace: &str,
        id: &str,
        identity: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let port = cellstack_testkit::ports::free_port();
        let log = std::env::temp_dir().join(format!("{id}-{identity}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let cell_image = image("CELLSTACK_E2E_CELL_IMAGE")?;
        let redis_image = image("CELLSTACK_E2E_REDIS_IMAGE")?;
        // `BENCH_OPERATOR_BIN`: another build's operator, for a benchmark's A/B of two builds.
        let exe = std::env::var_os("BENCH_OPERATOR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cellstack-operator").into());
        let child = Command::new(exe)
            .args(["--namespace", system_namespace])
            .args(["--identity", identity])
            .args(["--lease-seconds", "6"])
            .args(["--selector", &format!("{TEST_LABEL}={id}")])
            .args(["--cell-image", &cell_image])
            .args(["--redis-image", &redis_image])
            .args(["--image-pull-policy", "Never"])
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .env("CELLSTACK_LOG", "info,cellstack_operator=debug")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .context("starting cellstack-operator")?;
        let mut op = Self {
            identity: identity.to_owned(),
            metrics: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log,
        };
        let url = format!("{}/readyz", op.metrics);
        let started = poll(
            &format!("operator {identity} to serve /readyz"),
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let resp = reqwest::get(&url).await?;
                    Ok(resp.status().is_success().then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = started {
            let tail = op.log_tail(40);
            op.kill().await;
            return Err(e.context(tail));
        }
        Ok(op)
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: the process gets no chance to release its Lease.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("operator already stopped")?;
        let pid = child.id().context("operator has no pid")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(tokio::time::timeout(Duration::from_secs(40), child.wait()).await??)
    }

    pub async fn scrape(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.metrics))
            .await?
            .text()
            .await?)
    }

    /// Value of the metric line starting with `prefix` (name plus labels), if present.
    pub async fn metric(&self, prefix: &str) -> anyhow::Result<Option<f64>> {
        let text = self.scrape().await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }

    pub async fn is_leader(&self) -> bool {
        matches!(self.metric("cellstack_operator_leader").await, Ok(Some(v)) if v == 1.0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- log of operator {} ---\n{}\n",
            self.identity,
            all[from..].join("\n")
        )
    }
}

/// The condition `type_` of a cell, as (status, reason).
pub fn condition(cell: &Cell, type_: &str) -> Option<(String, String)> {
    cell.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn is_ready(cell: &Cell) -> bool {
    condition(cell, "Ready").is_some_and(|(s, _)| s == "True")
        && cell.status.as_ref().and_then(|s| s.observed_generation) == cell.metadata.generation
}

pub fn observed_current(cell: &Cell) -> bool {
    cell.status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some()
        && cell.status.as_ref().and_then(|s| s.observed_generation) == cell.metadata.generation
}

pub fn uid_of<K: ResourceExt>(obj: &K) -> String {
    obj.uid().unwrap_or_default()
}
