//! A cell's datastore that comes back without a tenant's data, on the real cluster with real
//! cells and a real router: the loss is loud, never an empty tenant.
//!
//! An `Ephemeral` cell's Redis pod is deleted after the tenant wrote items. The operator then
//! finds the tenant's record missing while the TenantAssignment's status still names the marker
//! of its data, and:
//! - marks the tenant lost in the cell: through the router its reads and writes are answered
//!   `503 data_unavailable` (not `404`, not an empty tenant); from the pod's deletion until the
//!   loss is reported, every answer is a refusal (5xx): the empty datastore carries no
//!   confirmation, so the cell never answers the tenant as unknown;
//! - reports it: the TenantAssignment's `status.dataLoss` and `DataLost` condition (with the
//!   field to set to accept the loss), phase `DataLost`, a Warning Event, the Cell's own
//!   `DataLost` condition naming the tenant, and `cellstack_operator_tenant_data_losses_total`;
//! - once `spec.acceptDataLossOf` names the lost marker, serves the tenant again, empty, under a
//!   new marker, and clears both conditions;
//! - a second tenant of the same cell, backed up with `cellstack backup` before the loss (alone,
//!   and with the whole cell: `--cell`; a `cellstack restore` then is refused: it lost nothing)
//!   and restored with `cellstack restore --cell` after it (which takes only the tenants still
//!   DataLost), is found intact again: the loss is cleared with a `DataRestored` Event and every
//!   item reads back with the same checksum.

mod common;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use cellstack_api::{
    admin::{Checksum, PREFIX},
    v1alpha1::{Cell, TenantAssignment, TenantPhase, condition_type},
    wire::{ErrorCode, header},
};
use cellstack_operator::names::{ADMIN_PORT, ADMIN_TOKEN, ADMIN_TOKEN_KEY};
use cellstack_testkit::cluster::poll;
use common::{
    World,
    traffic::{Router, setup},
};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use reqwest::StatusCode;
use serde_json::json;

/// Items the tenant writes before its cell's Redis is lost.
const ITEMS: usize = 20;

#[tokio::test]
async fn a_lost_datastore_is_reported_never_served_empty_and_accepting_or_restoring_resolves_it() {
    let mut world = World::new("op-loss").await.expect("test world");
    let result = async {
        let (alpha, _bravo, tenant, router) = setup(&mut world).await?;
        let tenants: Api<TenantAssignment> = Api::all(world.client.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        for i in 0..ITEMS {
            let res = put(&http, &router, &tenant, &format!("i{i}")).await?;
            ensure!(res.is_success(), "write i{i} answered {res}");
        }
        // A second tenant of the same cell, to be restored from an export.
        let restored = format!("{}-r", world.id);
        let ta: TenantAssignment = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": {"name": restored, "labels": {common::TEST_LABEL: world.id}},
            "spec": {"tenantId": restored, "cell": alpha},
        }))?;
        tenants.create(&PostParams::default(), &ta).await?;
        for i in 0..ITEMS {
            let item = format!("r{i}");
            poll("a write of the second tenant", common::WAIT, || async {
                Ok(put(&http, &router, &restored, &item).await?.is_success().then_some(()))
            })
            .await?;
        }
        let admin = Admin::of(&world, &alpha).await?;
        poll("the second tenant's data marker", common::WAIT, || async {
            Ok(tenants.get(&restored).await?.status.and_then(|s| s.data_marker))
        })
        .await?;
        // Backed up with the CLI, as a person would; a restore before any loss is refused.
        let backup = std::env::temp_dir().join(format!("{restored}.backup"));
        let said = cellstack(&["backup", &restored, "-o", &backup.display().to_string()])?;
        ensure!(said.contains(&format!("{ITEMS} keys")), "backup said: {said}");
        let refused = cellstack(&["restore", &restored, "-f", &backup.display().to_string()])
            .expect_err("a restore of a tenant that lost nothing must be refused");
        ensure!(refused.to_string().contains("is not DataLost"), "{refused:#}");
        // And the whole cell, one file per tenant.
        let cell_backup = std::env::temp_dir().join(format!("{}-{alpha}", world.id));
        cellstack(&["backup", "--cell", &alpha, "-o", &cell_backup.display().to_string()])?;
        for name in [&tenant, &restored] {
            let file = cell_backup.join(format!("{name}.backup"));
            ensure!(file.is_file(), "the cell's backup has no {}", file.display());
        }
        let checksum_before = admin.checksum(&restored).await?;
        ensure!(
            checksum_before.keys == ITEMS as u64,
            "the backup holds {} keys, not {ITEMS}",
            checksum_before.keys
        );
        let marker = poll("the tenant's data marker in its status", common::WAIT, || async {
            Ok(tenants
                .get(&tenant)
                .await?
                .status
                .and_then(|s| s.data_marker))
        })
        .await?;

        // The cell's Redis (Ephemeral: an emptyDir) is replaced by an empty one.
        let namespace = format!("cell-{alpha}");
        let pods: Api<Pod> = Api::namespaced(world.client.clone(), &namespace);
        pods.delete("redis-0", &DeleteParams::default())
            .await
            .with_context(|| format!("deleting {namespace}/redis-0"))?;
        // From now until the loss is reported, the tenant is read and written through the
        // router every 100 ms: from the first refusal on (the old pod serves while it
        // terminates), every answer must be a refusal (5xx), never a success or a 404 (an empty
        // or unknown tenant).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = tokio::spawn(probe_until(
            http.clone(),
            router.url.clone(),
            tenant.clone(),
            stop.clone(),
        ));

        let loss = poll("the loss in the tenant's status", Duration::from_secs(120), || async {
            Ok(tenants
                .get(&tenant)
                .await?
                .status
                .filter(|s| s.phase == TenantPhase::DataLost)
                .and_then(|s| s.data_loss.clone().map(|l| (l, s))))
        })
        .await?;
        let (loss, status) = loss;
        ensure!(
            loss.marker == marker && loss.cell == alpha,
            "the loss names marker {} in cell {}, expected {marker} in {alpha}",
            loss.marker,
            loss.cell
        );
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::DATA_LOST)
            .context("no DataLost condition")?;
        ensure!(
            condition.status == "True"
                && condition.message.contains(&format!("spec.acceptDataLossOf to {marker}")),
            "DataLost condition: {condition:?}"
        );

        // Through the router: refused as lost, reads and writes, never 404 or empty.
        let read = http
            .get(format!("{}/v1/items/i0", router.url))
            .header(header::TENANT, &tenant)
            .send()
            .await?;
        let write = put(&http, &router, &tenant, "after-loss").await?;
        let code = read
            .headers()
            .get(header::ERROR)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ensure!(
            read.status() == StatusCode::SERVICE_UNAVAILABLE
                && code.as_deref() == Some(ErrorCode::DataUnavailable.as_str())
                && write == StatusCode::SERVICE_UNAVAILABLE,
            "a lost tenant's read answered {} ({code:?}), its write {write}",
            read.status()
        );

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (before, answers) = probe.await?;
        let total: usize = answers.values().sum();
        eprintln!(
            "    answers while the old pod terminated: {before:?}; from the first refusal to the reported loss: {answers:?}"
        );
        ensure!(
            total >= 10,
            "the probe got only {total} answers after the first refusal: {answers:?}"
        );
        ensure!(
            answers.keys().all(|(status, _)| *status >= 500),
            "once the datastore went away, the tenant got answers that were not a refusal (5xx) before its loss was reported: {answers:?}"
        );
        ensure!(
            answers
                .keys()
                .any(|(_, code)| code == ErrorCode::DataUnavailable.as_str()),
            "no answer said data_unavailable: {answers:?}"
        );

        // The cell says whose data it lost.
        let cells: Api<Cell> = Api::all(world.client.clone());
        poll("the cell's DataLost condition", common::WAIT, || async {
            let cell = cells.get(&alpha).await?;
            Ok(data_lost(&cell).filter(|(status, message)| {
                status == "True" && message.contains(tenant.as_str())
            }))
        })
        .await?;
        // A Warning Event on the tenant, and the loss counted.
        let events: Api<Event> = Api::all(world.client.clone());
        poll("a Warning DataLost Event on the tenant", common::WAIT, || async {
            event(&events, &tenant, "DataLost", "Warning").await
        })
        .await?;
        let losses = world.operators[0]
            .metric("cellstack_operator_tenant_data_losses_total")
            .await?;
        ensure!(
            losses.is_some_and(|n| n >= 1.0),
            "tenant_data_losses_total is {losses:?}"
        );

        // Accept the loss: served again, empty, under a new marker.
        tenants
            .patch(
                &tenant,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"acceptDataLossOf": marker}})),
            )
            .await?;
        let renewed = poll("the accepted loss resolved", common::WAIT, || async {
            Ok(tenants
                .get(&tenant)
                .await?
                .status
                .filter(|s| s.data_loss.is_none() && s.phase == TenantPhase::Placed)
                .and_then(|s| s.data_marker))
        })
        .await?;
        ensure!(renewed != marker, "the marker did not change: {renewed}");
        let write = poll("a write after the accepted loss", common::WAIT, || async {
            let answer = put(&http, &router, &tenant, "after-accept").await?;
            Ok(answer.is_success().then_some(answer))
        })
        .await?;
        let old = http
            .get(format!("{}/v1/items/i0", router.url))
            .header(header::TENANT, &tenant)
            .send()
            .await?
            .status();
        ensure!(
            old == StatusCode::NOT_FOUND,
            "after accepting the loss (write answered {write}), an item written before it answered {old}, not 404"
        );
        // Restore the second tenant under its lost marker: PUT importing, import, activate.
        let lost = poll("the second tenant's loss", Duration::from_secs(120), || async {
            Ok(tenants.get(&restored).await?.status.filter(|s| s.data_loss.is_some()))
        })
        .await?;
        let lost_marker = lost.data_loss.as_ref().map(|l| l.marker.clone());
        // The cell's restore takes the tenants that are DataLost (the other accepted its loss).
        let said = cellstack(&["restore", "--cell", &alpha, "-f", &cell_backup.display().to_string()])?;
        ensure!(
            said.contains(&format!("{ITEMS} keys")) && said.contains(&format!("DataLost tenants of cell {alpha}: {restored}")),
            "restore said: {said}"
        );
        let _ = std::fs::remove_file(&backup);
        let _ = std::fs::remove_dir_all(&cell_backup);
        let admin = Admin::of(&world, &alpha).await?;
        poll("the restored tenant's loss cleared", common::WAIT, || async {
            Ok(tenants
                .get(&restored)
                .await?
                .status
                .filter(|s| {
                    s.data_loss.is_none()
                        && s.phase == TenantPhase::Placed
                        && s.data_marker == lost_marker
                })
                .map(|_| ()))
        })
        .await?;
        ensure!(
            admin.checksum(&restored).await? == checksum_before,
            "the restored tenant's checksum differs from the backup's"
        );
        let back = poll("a read of a restored item", common::WAIT, || async {
            let res = http
                .get(format!("{}/v1/items/r0", router.url))
                .header(header::TENANT, &restored)
                .send()
                .await?;
            Ok(res.status().is_success().then_some(res.text().await?))
        })
        .await?;
        ensure!(back == "v", "a restored item reads {back:?}");
        poll("a DataRestored Event on the restored tenant", common::WAIT, || async {
            event(&events, &restored, "DataRestored", "Normal").await
        })
        .await?;
        poll("the cell's DataLost condition cleared", common::WAIT, || async {
            let cell = cells.get(&alpha).await?;
            Ok(data_lost(&cell).filter(|(status, _)| status == "False"))
        })
        .await?;
        Ok(())
    }
    .await;
    world.finish(result).await.expect("data loss");
}

/// Runs the `cellstack` CLI with this test's KUBECONFIG: what it printed, or an error with
/// what it said on stderr.
fn cellstack(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-cellstack"))
        .args(args)
        .output()
        .context("running cellstack")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "cellstack {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

async fn put(
    http: &reqwest::Client,
    router: &Router,
    tenant: &str,
    item: &str,
) -> anyhow::Result<StatusCode> {
    Ok(http
        .put(format!("{}/v1/items/{item}", router.url))
        .header(header::TENANT, tenant)
        .body("v")
        .send()
        .await?
        .status())
}

/// Answers counted by status and error code (`-` for none; `transport` when no answer came).
type Answers = std::collections::BTreeMap<(u16, String), usize>;

/// Reads and writes `tenant` through the router every 100 ms until `stop`: the answers before
/// the first refusal (5xx: the deleted pod may serve for a moment while it terminates), and
/// from it on.
async fn probe_until(
    http: reqwest::Client,
    router: String,
    tenant: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Answers, Answers) {
    let (mut before, mut after) = (Answers::new(), Answers::new());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        for req in [
            http.get(format!("{router}/v1/items/i0")),
            http.put(format!("{router}/v1/items/probe")).body("v"),
        ] {
            let key = match req.header(header::TENANT, &tenant).send().await {
                Ok(res) => (
                    res.status().as_u16(),
                    res.headers()
                        .get(header::ERROR)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned(),
                ),
                Err(_) => (0, "transport".to_owned()),
            };
            let refused = key.0 >= 500;
            let tally = if after.is_empty() && !refused {
                &mut before
            } else {
                &mut after
            };
            *tally.entry(key).or_insert(0) += 1;
        }
    }
    (before, after)
}

/// Whether an Event of `reason` and `type_` names `object`.
async fn event(
    events: &Api<Event>,
    object: &str,
    reason: &str,
    type_: &str,
) -> anyhow::Result<Option<()>> {
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={object}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
        .then_some(()))
}

/// A cell's admin API, reached at its first lane's address with its token.
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn of(world: &World, cell: &str) -> anyhow::Result<Self> {
        let secrets: Api<Secret> = Api::namespaced(world.client.clone(), &format!("cell-{cell}"));
        let token = secrets
            .get(ADMIN_TOKEN)
            .await?
            .data
            .and_then(|d| d.get(ADMIN_TOKEN_KEY).cloned())
            .map(|b| String::from_utf8(b.0))
            .transpose()?
            .context("the cell's admin token")?;
        let endpoint = Api::<Cell>::all(world.client.clone())
            .get(cell)
            .await?
            .status
            .and_then(|s| s.endpoints.first().cloned())
            .context("the cell has no lane address")?;
        let host = endpoint.split(':').next().unwrap_or_default();
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            base: format!("http://{host}:{ADMIN_PORT}{PREFIX}"),
            token,
        })
    }

    async fn checksum(&self, tenant: &str) -> anyhow::Result<Checksum> {
        Ok(self
            .http
            .get(format!("{}/{tenant}/checksum", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// The cell's `DataLost` condition, as (status, message).
fn data_lost(cell: &Cell) -> Option<(String, String)> {
    cell.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::DATA_LOST)
        .map(|c| (c.status.clone(), c.message.clone()))
}
