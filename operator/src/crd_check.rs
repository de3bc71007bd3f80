//! Fails fast at start when the cellstack CRDs are not installed, saying how to install them.

use std::time::Duration;

use cellstack_api::v1alpha1::{
    Cell, CellRollout, MemberCluster, RateLimitPolicy, ShuffleShardPool, TenantAssignment,
};
use kube::{Api, Client, Resource, api::ListParams, core::DeserializeGuard};
use serde::de::DeserializeOwned;

/// How to install the CRDs, printed when one is missing.
pub const INSTALL: &str = "install them with `kubectl apply --server-side -f crds/` from a cellstack checkout, or `helm install cellstack charts/cellstack`";

/// Checks that the API server serves every cellstack kind.
pub async fn ensure_installed(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    check::<Cell>(client, timeout).await?;
    check::<TenantAssignment>(client, timeout).await?;
    check::<RateLimitPolicy>(client, timeout).await?;
    check::<ShuffleShardPool>(client, timeout).await?;
    check::<CellRollout>(client, timeout).await?;
    check::<MemberCluster>(client, timeout).await?;
    Ok(())
}

async fn check<K>(client: &Client, timeout: Duration) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
{
    let api: Api<DeserializeGuard<K>> = Api::all(client.clone());
    let crd = format!("{}.{}", K::plural(&()), K::group(&()));
    match tokio::time::timeout(timeout, api.list_metadata(&ListParams::default().limit(1))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
            anyhow::bail!(
                "the CustomResourceDefinition {crd} is not installed in this cluster: {INSTALL}"
            )
        }
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot check that {crd} is installed: {e}")),
        Err(_) => anyhow::bail!(
            "the API server did not answer within {timeout:?} while checking that {crd} is installed"
        ),
    }
}
