//! What every reconcile shares: the client, the event recorder, metrics, caches and settings.

use std::{future::Future, sync::Arc, time::Duration};

use cellstack_api::{
    admin::PolicyOverride,
    v1alpha1::{Cell, RateLimitPolicy, ShuffleShardPool},
};
use kube::{
    Client, ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

use crate::{
    cached_tenant::CachedTenant,
    error::{Error, Result},
    logic::{
        backoff::{Backoff, Failures},
        cell::desired::Images,
        effective,
    },
    metrics::Metrics,
    target::{MemberTargets, Reach, Target},
};

/// Handles every reconcile gets, as `Arc<Context>`.
#[derive(Clone)]
pub struct Context {
    /// The cluster the operator runs in: Cells, tenants, Events, the routing table. A cell's own
    /// objects are reached through its [`Target`] ([`Context::target_of`]).
    pub client: Client,
    pub recorder: crate::recorder::Recorder,
    pub metrics: Arc<Metrics>,
    /// Every TenantAssignment, kept current by a reflector.
    pub tenants: Store<DeserializeGuard<CachedTenant>>,
    /// Every ShuffleShardPool, kept current by a reflector.
    pub pools: Store<DeserializeGuard<ShuffleShardPool>>,
    /// Every RateLimitPolicy, kept current by a reflector.
    pub policies: Store<DeserializeGuard<RateLimitPolicy>>,
    pub images: Images,
    /// How lanes' admin ports are reached: plain, or HTTPS trusting the internal CA bundle.
    pub lanes: crate::lane_client::LaneClient,
    /// The internal CA, with `--internal-tls`.
    pub internal_ca: Option<Arc<crate::controllers::internal_ca::InternalCa>>,
    /// Where the lanes export their spans (`--lane-otlp-endpoint`).
    pub lane_otlp_endpoint: Option<String>,
    pub system_namespace: String,
    /// Admitted to the lanes' metrics port (`--monitoring-namespace`); `None`: nobody.
    pub monitoring_namespace: Option<String>,
    /// With `--multicluster`, which address of this cluster's nodes other clusters reach its
    /// lanes by (`--node-address-type`); `None`: lanes are reached only inside their cluster.
    pub cross_cluster: Option<cellstack_api::v1alpha1::NodeAddressType>,
    /// With `--multicluster`, where other clusters' traffic to the lanes comes from
    /// (`--cross-cluster-sources`).
    pub cross_cluster_sources: Vec<ipnet::IpNet>,
    pub api_timeout: Duration,
    pub resync: Duration,
    pub backoff: Backoff,
    /// Consecutive failures per object, for the requeue backoff.
    pub failures: Arc<Failures>,
    /// Every member cluster's last known state (written by the MemberCluster controller).
    pub members: Arc<MemberTargets>,
    /// Taken for writing by a move for its write pause, from before the fence until the flip
    /// (or the rollback), so moves pause one at a time; the other moves' bulk copies take it for
    /// reading, call by call. A tenant whose writes are paused then has the cells and this
    /// operator to its move alone, however many move at once (`--drain-concurrency`). One lock
    /// for all of the context's clones.
    pub fence_gate: Arc<tokio::sync::RwLock<()>>,
}

impl Context {
    /// The cluster `cell`'s stack lives in: the operator's own ([`Target::local`]), or the
    /// member cluster `spec.cluster` names while it can be acted in — otherwise an error
    /// ([`Error::MemberUnavailable`], retried): nothing is done in a member that does not answer.
    pub fn target_of(&self, cell: &Cell) -> Result<Target> {
        let Some(member) = &cell.spec.cluster else {
            return Ok(Target::local(self));
        };
        let why = match self.members.reach(member) {
            Reach::Reachable(target) => return Ok(target),
            Reach::Unreachable { message, .. } => {
                format!("its API server does not answer: {message}")
            }
            Reach::Unusable { message } => format!("it has no usable credentials: {message}"),
            Reach::NotFound => format!("no MemberCluster {member} exists"),
            Reach::Pending => "it has not been probed yet".to_owned(),
        };
        Err(Error::MemberUnavailable {
            cell: cell.name_any(),
            member: member.clone(),
            why,
        })
    }

    /// Whether `cell`'s cluster can be acted in now ([`MemberTargets::reach`]); the operator's
    /// own always can.
    pub fn reach_of(&self, cell: &Cell) -> Reach {
        match &cell.spec.cluster {
            None => Reach::Reachable(Target::local(self)),
            Some(member) => self.members.reach(member),
        }
    }

    /// Runs one API call with the configured timeout, naming `action` in the error.
    pub async fn call<T>(
        &self,
        action: impl Into<String>,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.api_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::kube(action, e)),
            Err(_) => Err(Error::Timeout {
                action: action.into(),
                timeout: self.api_timeout,
            }),
        }
    }

    /// [`effective::policy_override`] for a move (or first placement) of `tenant` to `cell`,
    /// from the caches: the policy the target must enforce before the tenant's traffic arrives.
    pub fn policy_override(
        &self,
        tenant: &CachedTenant,
        cell: &str,
    ) -> Result<Option<PolicyOverride>> {
        let views = effective::policy_views(&readable(&self.policies));
        // Most tenants are on the default policy: no need to build the cell's whole file.
        if !effective::has_own_policy(tenant, &views) {
            return Ok(None);
        }
        let cached = self.tenants.state();
        let others = cached.iter().filter_map(|g| g.0.as_ref().ok());
        effective::policy_override(tenant, cell, others, &views).map_err(|source| Error::Encode {
            what: format!(
                "the policy of tenant {} for cell {cell}",
                tenant.tenant_id()
            ),
            source,
        })
    }
}

/// The readable objects of a reflector store (unreadable ones are reported by their own
/// controllers and otherwise ignored).
pub fn readable<K>(store: &Store<DeserializeGuard<K>>) -> Vec<K>
where
    K: Clone + kube::Resource + serde::de::DeserializeOwned,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect()
}

/// `read` of the readable object `name` of a reflector store of a cluster-scoped kind, in
/// place: a look-up, where [`readable`] copies every object. For what a reconcile of one tenant
/// needs of one cell.
pub fn with_readable<K, T>(
    store: &Store<DeserializeGuard<K>>,
    name: &str,
    read: impl FnOnce(&K) -> T,
) -> Option<T>
where
    K: Clone + kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let guard = store.get(&ObjectRef::new(name))?;
    guard.0.as_ref().ok().map(read)
}
