//! What every reconcile shares: the client, the event recorder, metrics, caches and settings.

use std::{future::Future, sync::Arc, time::Duration};

use cellstack_api::v1alpha1::{RateLimitPolicy, ShuffleShardPool, TenantAssignment};
use kube::{
    Client,
    core::DeserializeGuard,
    runtime::{events::Recorder, reflector::Store},
};

use crate::{
    backoff::{Backoff, Failures},
    cell::desired::Images,
    error::{Error, Result},
    metrics::Metrics,
};

/// Handles every reconcile gets, as `Arc<Context>`.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Every TenantAssignment, kept current by a reflector.
    pub tenants: Store<DeserializeGuard<TenantAssignment>>,
    /// Every ShuffleShardPool, kept current by a reflector.
    pub pools: Store<DeserializeGuard<ShuffleShardPool>>,
    /// Every RateLimitPolicy, kept current by a reflector.
    pub policies: Store<DeserializeGuard<RateLimitPolicy>>,
    pub images: Images,
    pub system_namespace: String,
    pub api_timeout: Duration,
    pub resync: Duration,
    pub backoff: Backoff,
    /// Consecutive failures per object, for the requeue backoff.
    pub failures: Arc<Failures>,
}

impl Context {
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
