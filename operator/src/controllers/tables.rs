//! Routing tables for every cluster routers read from: one view per cluster, compiled from the
//! operator's caches, each published into its own destination by its own publisher and
//! heartbeat (docs/multicluster.md §3, "Mirroring into each member").
//!
//! The operator's own namespace gets the management cluster's view ([`Destination::Local`]);
//! each member cluster's `systemNamespace` gets that member's view, written with the member's
//! client ([`Destination::Member`]). Each pair keeps its own version sequence (read back from
//! what its destination holds) and its own heartbeat Lease, and fails and backs off alone: an
//! unreachable member delays only its own table, and nothing else waits for it.

use std::{sync::Arc, time::Duration};

use cellstack_api::{
    routing::{Compression, RoutingTable},
    v1alpha1::{Cell, RateLimitPolicy, ShuffleShardPool},
};
use kube::{Client, core::DeserializeGuard, runtime::reflector::Store};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{Instrument, error, info_span};

use crate::{
    cached_tenant::CachedTenant,
    context::readable,
    controllers::{
        Listed, heartbeat,
        publish::{self, Publisher},
    },
    logic::{effective, resolve, routing},
    metrics::Metrics,
};

/// The first-list signals of the caches a routing table is built from.
#[derive(Default, Clone)]
pub struct Caches {
    pub cells: Listed,
    pub tenants: Listed,
    pub pools: Listed,
    pub policies: Listed,
}

impl Caches {
    /// Resolves once every cache has had its first list.
    pub fn all(&self) -> impl Future<Output = ()> + Send + 'static {
        let each = [&self.cells, &self.tenants, &self.pools, &self.policies].map(Listed::clone);
        async move {
            futures::future::join_all(each.iter().map(Listed::wait)).await;
        }
    }
}

/// What every view is compiled from, and the signal of a change any of them may reflect.
pub struct Sources {
    pub cells: Store<DeserializeGuard<Cell>>,
    pub pools: Store<DeserializeGuard<ShuffleShardPool>>,
    pub policies: Store<DeserializeGuard<RateLimitPolicy>>,
    pub tenants: Store<DeserializeGuard<CachedTenant>>,
    pub listed: Caches,
    pub changes: watch::Receiver<u64>,
}

impl Sources {
    /// The table of version `version` as routers in cluster `view` (`None`: the operator's own)
    /// see it; `None` when it cannot be compiled (logged: the last one published stays).
    pub fn compile(&self, view: Option<&str>, version: u64) -> Option<RoutingTable> {
        let cells: Vec<Cell> = readable(&self.cells);
        let pools: Vec<ShuffleShardPool> = readable(&self.pools);
        let policy_views = effective::policy_views(&readable(&self.policies));
        let tenants = self.tenants.state();
        let readable_tenants = || tenants.iter().filter_map(|g| g.0.as_ref().ok());
        // The router pre-limits with the same numbers the cells enforce.
        let edge = resolve::edge_limits(&effective::resolve(readable_tenants(), &policy_views));
        let limit_of = |id: &str| {
            edge.index_of(id)
                .and_then(|i| edge.limits.get(i as usize).copied())
        };
        match routing::compile(
            view,
            version,
            publish::unix_ms(),
            &cells,
            &pools,
            readable_tenants(),
            limit_of,
        ) {
            Ok(compiled) => Some(compiled.table),
            Err(e) => {
                error!(member_cluster = view, error = %e, "cannot compile the routing table; keeping the last one");
                None
            }
        }
    }
}

/// Where a pair writes: the operator's own namespace, or a member cluster's system namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Local,
    Member(String),
}

impl Destination {
    /// The member cluster's name; `None` for the operator's own cluster.
    pub fn member(&self) -> Option<&str> {
        match self {
            Self::Local => None,
            Self::Member(name) => Some(name),
        }
    }
}

/// What every pair shares: the sources, the metrics, the leader's identity and timings, and
/// the leader's stop.
pub struct Mirrors {
    pub sources: Arc<Sources>,
    pub metrics: Arc<Metrics>,
    pub identity: String,
    pub heartbeat_interval: Duration,
    /// How published tables' chunks store them.
    pub table_compression: Compression,
    pub api_timeout: Duration,
    pub stop: watch::Receiver<bool>,
}

/// The publisher and heartbeat tasks of one destination.
pub struct Pair {
    pub publisher: JoinHandle<()>,
    pub heartbeat: JoinHandle<()>,
}

impl Mirrors {
    /// Starts publishing `destination`'s view into `namespace` through `client`, and renewing
    /// its heartbeat there; both end at the leader's stop (or when aborted). The first
    /// publication waits for every cache's first list: a table built before would lack the
    /// cells or tenants not listed yet, and routers would answer 404 for them.
    pub fn spawn(&self, destination: Destination, client: Client, namespace: &str) -> Pair {
        let member = destination.member().map(str::to_owned);
        // A root span: the pair outlives whatever reconcile started it.
        let span = info_span!(
            parent: None,
            "routing_table",
            member_cluster = member.as_deref(),
            namespace
        );
        // The version the publisher keeps current, renewed in the heartbeat Lease at a fixed
        // interval so routers can tell a quiet control plane from a dead one.
        let (published_tx, published_rx) = watch::channel(None);
        let heartbeat = tokio::spawn(
            heartbeat::run(
                heartbeat::Heartbeat::new(
                    client.clone(),
                    namespace,
                    &self.identity,
                    self.heartbeat_interval,
                    self.api_timeout,
                ),
                member.clone(),
                published_rx,
                self.metrics.clone(),
                self.stop.clone(),
            )
            .instrument(span.clone()),
        );
        let sources = self.sources.clone();
        let view = member.clone();
        let publisher = tokio::spawn(
            publish::run(
                Publisher::new(client, namespace, self.api_timeout)
                    .with_compression(self.table_compression),
                member,
                self.sources.listed.all(),
                self.sources.changes.clone(),
                self.metrics.clone(),
                move |version| sources.compile(view.as_deref(), version),
                published_tx,
                self.stop.clone(),
            )
            .instrument(span),
        );
        Pair {
            publisher,
            heartbeat,
        }
    }
}
