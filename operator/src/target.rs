//! The cluster a cell's stack lives in: the client that reaches it and the settings that
//! differ per cluster (the namespace of its routers, its monitoring namespace, where its lanes
//! export spans). Every call on a cell's own objects (namespace, Secrets, StatefulSets, pods…)
//! goes through a [`Target`]; calls on the management cluster's objects (Cells, tenants,
//! Events, the routing table) keep [`Context::client`].
//!
//! Today every target is the cluster the operator runs in ([`Target::local`]); cells in member
//! clusters are designed in docs/multicluster.md.

use kube::Client;

use crate::context::Context;

/// One cluster a cell's stack lives in, as [`Context::target_of`] finds it for a Cell.
///
/// Owned rather than borrowed from the [`Context`], so a member cluster's target can later be
/// handed out of a cache behind a lock; building one costs a reference count and a few short
/// strings.
#[derive(Clone)]
pub struct Target {
    cluster: Option<String>,
    client: Client,
    system_namespace: String,
    monitoring_namespace: Option<String>,
    otlp_endpoint: Option<String>,
}

impl Target {
    /// The cluster the operator runs in, with the operator's own settings.
    pub fn local(ctx: &Context) -> Self {
        Self {
            cluster: None,
            client: ctx.client.clone(),
            system_namespace: ctx.system_namespace.clone(),
            monitoring_namespace: ctx.monitoring_namespace.clone(),
            otlp_endpoint: ctx.lane_otlp_endpoint.clone(),
        }
    }

    /// The member cluster's name; `None` for the cluster the operator runs in.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// The client of this cluster's API server.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The namespace of cellstack's operator and routers in this cluster, admitted to the lanes
    /// by their NetworkPolicy.
    pub fn system_namespace(&self) -> &str {
        &self.system_namespace
    }

    /// The namespace admitted to the lanes' metrics port in this cluster; `None`: nobody.
    pub fn monitoring_namespace(&self) -> Option<&str> {
        self.monitoring_namespace.as_deref()
    }

    /// Where the lanes in this cluster export their spans; `None`: their traces are off.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint.as_deref()
    }
}
