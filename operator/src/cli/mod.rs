//! `kubectl cellstack`, the kubectl plugin (`operator/src/bin/kubectl-cellstack.rs`): what each
//! verb reads and prints. Reports are built by pure functions from the objects read
//! ([`status`], [`tenant`]), printed by [`output`]; the verbs that change something and follow
//! it are in [`watch`].

pub mod dashboard;
pub mod output;
pub mod status;
pub mod tenant;
pub mod watch;

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use cellstack_api::v1alpha1::{Cell, CellRollout, RateLimitPolicy, TenantAssignment};
use kube::{Api, Client, api::ListParams};

/// Runs `fut` (an API call described by `what`) with `timeout`.
pub async fn bounded<T, E>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what} took longer than {timeout:?} (--api-timeout-secs)"))?
        .with_context(|| format!("cannot {what}"))
}

/// Every object of kind `K` in the cluster (matching `selector`, when not empty).
pub async fn list_all<K>(
    client: &Client,
    what: &str,
    selector: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let params = if selector.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(selector)
    };
    Ok(bounded(&format!("list {what}"), timeout, api.list(&params))
        .await?
        .items)
}

/// The objects `status` reports on: those matching `selector` (all with an empty one).
pub async fn status_report(
    client: &Client,
    selector: &str,
    timeout: Duration,
) -> anyhow::Result<status::StatusReport> {
    let cells: Vec<Cell> = list_all(client, "Cells", selector, timeout).await?;
    let tenants: Vec<TenantAssignment> =
        list_all(client, "TenantAssignments", selector, timeout).await?;
    let rollouts: Vec<CellRollout> = list_all(client, "CellRollouts", selector, timeout).await?;
    Ok(status::StatusReport::build(&cells, &tenants, &rollouts))
}

/// The objects `tenant NAME` reports on; the routing table as published in `namespace`, if
/// it can be read.
pub async fn tenant_report(
    client: &Client,
    name: &str,
    table: Option<&cellstack_api::routing::RoutingTable>,
    timeout: Duration,
) -> anyhow::Result<tenant::TenantReport> {
    let api: Api<TenantAssignment> = Api::all(client.clone());
    let ta = bounded(
        &format!("read TenantAssignment {name}"),
        timeout,
        api.get_opt(name),
    )
    .await?
    .with_context(|| {
        format!("TenantAssignment {name} does not exist (kubectl get tenantassignments)")
    })?;
    let cells: Vec<Cell> = list_all(client, "Cells", "", timeout).await?;
    let policies: Vec<RateLimitPolicy> = list_all(client, "RateLimitPolicies", "", timeout).await?;
    Ok(tenant::TenantReport::build(&ta, &cells, &policies, table))
}
