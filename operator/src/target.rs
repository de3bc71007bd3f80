//! The cluster a cell's stack lives in: the client that reaches it and the settings that
//! differ per cluster (the namespace of its routers, its monitoring namespace, where its lanes
//! export spans). Every call on a cell's own objects (namespace, Secrets, StatefulSets, pods…)
//! goes through a [`Target`]; calls on the management cluster's objects (Cells, tenants,
//! Events, the routing table) keep [`Context::client`].
//!
//! A Cell without `spec.cluster` targets the cluster the operator runs in ([`Target::local`]);
//! one naming a MemberCluster targets that member, as the MemberCluster controller last found it
//! ([`MemberTargets`], docs/multicluster.md).

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock, RwLock},
};

use futures::Stream;
use tokio::sync::mpsc;
use tracing::warn;

use cellstack_api::v1alpha1::{MemberCluster, NodeAddressType};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Client,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

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
    cross_cluster: Option<NodeAddressType>,
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
            cross_cluster: ctx.cross_cluster,
        }
    }

    /// A member cluster, reached with `client`; its lanes reached from other clusters by nodes'
    /// addresses of type `cross_cluster` (with `--multicluster` only).
    pub fn member(
        cluster: &str,
        client: Client,
        system_namespace: String,
        otlp_endpoint: Option<String>,
        cross_cluster: Option<NodeAddressType>,
    ) -> Self {
        Self {
            cluster: Some(cluster.to_owned()),
            client,
            system_namespace,
            // The management cluster's monitoring namespace means nothing in a member.
            monitoring_namespace: None,
            otlp_endpoint,
            cross_cluster,
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

    /// With `--multicluster`, which node address other clusters reach this cluster's lanes by
    /// (docs/multicluster.md, D7); `None`: the lanes are reached only inside the cluster.
    pub fn cross_cluster(&self) -> Option<NodeAddressType> {
        self.cross_cluster
    }
}

/// What the MemberCluster controller last found of one member.
#[derive(Clone)]
pub enum MemberState {
    /// Its API server answers: cells there are reached through this target.
    Reachable(Target),
    /// Its API server does not answer (the member's `Reachable` is not `True`).
    Unreachable {
        /// When it last answered, if ever.
        last_contact: Option<Time>,
        /// The member's `Reachable` message.
        message: String,
    },
    /// It has no usable credentials: its Secret or kubeconfig (its `CredentialsValid` message).
    Unusable { message: String },
}

/// Whether a member cluster can be acted in, for a cell that names it.
#[derive(Clone)]
pub enum Reach {
    Reachable(Target),
    Unreachable {
        last_contact: Option<Time>,
        message: String,
    },
    Unusable {
        message: String,
    },
    /// No MemberCluster of that name exists.
    NotFound,
    /// Not known yet: the MemberClusters are not listed, or this one not yet probed.
    Pending,
}

/// Member events not yet taken by the cell controller. A change of reachability that finds the
/// buffer full is dropped with a warning (its cells are looked at on their next requeue); a
/// watch of a member's objects waits for room instead.
const CHANGES_BUFFER: usize = 256;

/// What brings cells in member clusters back to the cell controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// Member cluster `0` turned reachable or not: every cell in it.
    Reachability(String),
    /// An object of cell `0`'s stack in its member changed or went.
    Child(String),
    /// The nodes of cluster `0` (`None`: the operator's own) changed in what its cells'
    /// cross-cluster addresses depend on: every cell in it.
    Nodes(Option<String>),
}

/// Every member cluster's last known state, written by the MemberCluster controller and read by
/// whatever acts on a cell's objects ([`Context::target_of`]). A member turning reachable or not,
/// and a change of a cell's objects in a member, are announced ([`MemberTargets::changes`]), so
/// those cells are looked at at once.
pub struct MemberTargets {
    /// The MemberClusters, once their first list has arrived (until then every member is
    /// [`Reach::Pending`], never [`Reach::NotFound`]).
    listed: OnceLock<Store<DeserializeGuard<MemberCluster>>>,
    states: RwLock<HashMap<String, MemberState>>,
    changed: mpsc::Sender<MemberEvent>,
    changes: Mutex<Option<mpsc::Receiver<MemberEvent>>>,
}

impl Default for MemberTargets {
    fn default() -> Self {
        let (changed, changes) = mpsc::channel(CHANGES_BUFFER);
        Self {
            listed: OnceLock::new(),
            states: RwLock::new(HashMap::new()),
            changed,
            changes: Mutex::new(Some(changes)),
        }
    }
}

impl MemberState {
    /// Reachable, unreachable or unusable: what a cell in the member makes of it.
    fn kind(&self) -> u8 {
        match self {
            Self::Reachable(_) => 0,
            Self::Unreachable { .. } => 1,
            Self::Unusable { .. } => 2,
        }
    }
}

impl MemberTargets {
    /// Takes the MemberCluster controller's store once it has been listed.
    pub fn listed(&self, store: Store<DeserializeGuard<MemberCluster>>) {
        let _ = self.listed.set(store);
    }

    /// Records what a probe of `member` found, announcing a change of its kind.
    pub fn set(&self, member: &str, state: MemberState) {
        let kind = state.kind();
        let previous = self
            .states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(member.to_owned(), state);
        if previous.is_none_or(|p| p.kind() != kind)
            && self
                .changed
                .try_send(MemberEvent::Reachability(member.to_owned()))
                .is_err()
        {
            warn!(member_cluster = %member, "too many member cluster changes at once: its cells are looked at on their next requeue");
        }
    }

    /// Where the watches of a member's objects send the cells they concern.
    pub fn sender(&self) -> mpsc::Sender<MemberEvent> {
        self.changed.clone()
    }

    /// Members whose reachability changed and cells whose objects in a member changed, as they
    /// happen; `None` after the first call (one consumer: the cell controller).
    pub fn changes(&self) -> Option<impl Stream<Item = MemberEvent> + Send + 'static> {
        let receiver = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(futures::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|member| (member, r))
        }))
    }

    /// Forgets `member` (deleted).
    pub fn remove(&self, member: &str) {
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(member);
    }

    /// The names of every MemberCluster, once they are listed (`None` before).
    pub fn names(&self) -> Option<Vec<String>> {
        let store = self.listed.get()?;
        Some(
            store
                .state()
                .iter()
                .filter_map(|guard| guard.0.as_ref().ok().map(kube::ResourceExt::name_any))
                .collect(),
        )
    }

    /// What can be done in `member` now.
    pub fn reach(&self, member: &str) -> Reach {
        let Some(store) = self.listed.get() else {
            return Reach::Pending;
        };
        if store
            .get(&ObjectRef::<DeserializeGuard<MemberCluster>>::new(member))
            .is_none()
        {
            return Reach::NotFound;
        }
        let state = self
            .states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(member)
            .cloned();
        match state {
            Some(MemberState::Reachable(target)) => Reach::Reachable(target),
            Some(MemberState::Unreachable {
                last_contact,
                message,
            }) => Reach::Unreachable {
                last_contact,
                message,
            },
            Some(MemberState::Unusable { message }) => Reach::Unusable { message },
            None => Reach::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher};

    use super::*;

    fn member(name: &str) -> DeserializeGuard<MemberCluster> {
        let member: MemberCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "cellstack.dev/v1alpha1",
            "kind": "MemberCluster",
            "metadata": { "name": name },
            "spec": { "kubeconfigSecretRef": { "name": name } },
        }))
        .expect("a valid MemberCluster");
        DeserializeGuard(Ok(member))
    }

    /// A store listed with `names`.
    fn listed(names: &[&str]) -> Store<DeserializeGuard<MemberCluster>> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for name in names {
            writer.apply_watcher_event(&watcher::Event::InitApply(member(name)));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    /// A target whose client is never used (building one contacts nothing).
    fn reachable(name: &str) -> MemberState {
        let config = kube::Config::new("https://127.0.0.1:1".parse().expect("a URL"));
        let client = Client::try_from(config).expect("a client");
        MemberState::Reachable(Target::member(
            name,
            client,
            "cellstack-system".into(),
            None,
            None,
        ))
    }

    fn unreachable() -> MemberState {
        MemberState::Unreachable {
            last_contact: None,
            message: "no answer within 5s".into(),
        }
    }

    fn kind(reach: &Reach) -> &'static str {
        match reach {
            Reach::Reachable(_) => "reachable",
            Reach::Unreachable { .. } => "unreachable",
            Reach::Unusable { .. } => "unusable",
            Reach::NotFound => "not found",
            Reach::Pending => "pending",
        }
    }

    #[tokio::test]
    async fn a_member_is_pending_until_listed_and_probed_and_not_found_only_once_listed() {
        let targets = MemberTargets::default();
        targets.set("east", reachable("east"));
        assert_eq!(kind(&targets.reach("east")), "pending", "not listed yet");
        assert_eq!(kind(&targets.reach("west")), "pending", "not listed yet");
        targets.listed(listed(&["east", "north"]));
        assert_eq!(kind(&targets.reach("east")), "reachable");
        assert_eq!(
            kind(&targets.reach("north")),
            "pending",
            "listed, not probed"
        );
        assert_eq!(kind(&targets.reach("west")), "not found");
        targets.set("north", unreachable());
        assert_eq!(kind(&targets.reach("north")), "unreachable");
        targets.set(
            "north",
            MemberState::Unusable {
                message: "Secret member-north does not exist".into(),
            },
        );
        assert_eq!(kind(&targets.reach("north")), "unusable");
        // A member gone from the store is not found, whatever was last recorded of it.
        let targets_after_delete = MemberTargets::default();
        targets_after_delete.set("east", reachable("east"));
        targets_after_delete.listed(listed(&[]));
        assert_eq!(kind(&targets_after_delete.reach("east")), "not found");
    }

    #[tokio::test]
    async fn only_a_change_of_reachability_is_announced() {
        let targets = MemberTargets::default();
        let changes = targets.changes().expect("the first taker gets the changes");
        assert!(targets.changes().is_none(), "one consumer only");
        targets.set("east", reachable("east"));
        targets.set("east", reachable("east"));
        targets.set("east", unreachable());
        targets.set("east", unreachable());
        targets.set("east", reachable("east"));
        drop(targets);
        let announced: Vec<MemberEvent> = changes.collect().await;
        assert_eq!(
            announced,
            vec![MemberEvent::Reachability("east".into()); 3],
            "first seen, lost, back"
        );
    }
}
