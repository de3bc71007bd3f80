//! The MemberCluster controller: for each member, reads the kubeconfig Secret it names from the
//! operator's own namespace, refuses kubeconfigs that are not self-contained
//! ([`crate::logic::kubeconfig`]), keeps one client per (MemberCluster uid, Secret
//! resourceVersion), and probes the member's API server (`GET /version`, 5 s) every 10 s. It
//! reports `CredentialsValid`, `Reachable` (a reachable member turns unreachable after three
//! failed probes in a row), the version and the last contact
//! ([`crate::logic::member_status`]), Events on transitions only, and the
//! `cellstack_operator_member_cluster_reachable` gauge.
//!
//! It observes and reports, nothing more: an unreachable member changes nothing anywhere.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use cellstack_api::v1alpha1::{Cell, MemberCluster, MemberClusterStatus, member_condition};
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Namespace, Secret, Service},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        finalizer::{self, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{
    context::Context,
    controllers::{
        self, internal_ca,
        tables::{Destination, Mirrors},
    },
    error::{Error, Result},
    logic::{
        cell::ownership,
        conditions, kubeconfig,
        member_status::{self, Observed, reason},
    },
    metrics::MemberLabels,
    names::MANAGED_SELECTOR,
    target::{MemberEvent, MemberState, Target},
};

const CONTROLLER: &str = "membercluster";
/// Holds a MemberCluster while a Cell names it: its cells' stacks are reached through it.
pub const FINALIZER: &str = "cellstack.dev/member-cluster-protection";
/// How often a deleted member that Cells still name is looked at again.
const IN_USE_RECHECK: Duration = Duration::from_secs(30);
/// Between two probes of a member (and two reconciles of it).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for a member's API server: to connect, and for one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client built for one member from one version of its Secret, the watches of the member's
/// cellstack objects made with it, and the routing-table mirror writing with it into the
/// member's system namespace (all stopped when it is dropped).
struct Cached {
    uid: String,
    secret_version: String,
    client: Client,
    _watches: Tasks,
    /// The namespace the mirror writes into, and its publisher and heartbeat.
    mirror: Option<(String, Tasks)>,
}

/// Tasks working with one member's client; aborted when dropped (the member's client was
/// replaced, or the member forgotten).
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Watches the objects of cells' stacks in `member` (through the operator's label; their
/// metadata only) and sends the cell each belongs to, by its labels, to the cell controller;
/// with `nodes` (`--multicluster`) the member's Nodes too, announcing a change that moves its
/// cells' cross-cluster addresses ([`controllers::nodes::changes`]). A watch that fails backs
/// off and lists again; the member's reachability is the probe's to judge, not the watches'.
fn watch_children(
    member: &str,
    client: &Client,
    cells: &mpsc::Sender<MemberEvent>,
    nodes: bool,
) -> Tasks {
    let config = watcher::Config::default()
        .labels(MANAGED_SELECTOR)
        .any_semantic();
    let mut tasks = Vec::new();
    macro_rules! watch {
        ($($kind:ty),*) => {$(
            tasks.push(
                tokio::spawn(forward_cells(
                    Api::<PartialObjectMeta<$kind>>::all(client.clone()),
                    config.clone(),
                    cells.clone(),
                    member.to_owned(),
                ))
                .abort_handle(),
            );
        )*};
    }
    watch!(
        Namespace,
        StatefulSet,
        Service,
        ConfigMap,
        Secret,
        PodDisruptionBudget,
        NetworkPolicy
    );
    if nodes {
        let (sender, member) = (cells.clone(), member.to_owned());
        let changes = controllers::nodes::changes(Api::all(client.clone()), member.clone());
        tasks.push(
            tokio::spawn(async move {
                let mut changes = std::pin::pin!(changes);
                while changes.next().await.is_some() {
                    if sender
                        .send(MemberEvent::Nodes(Some(member.clone())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .abort_handle(),
        );
    }
    Tasks(tasks)
}

async fn forward_cells<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    cells: mpsc::Sender<MemberEvent>,
    member: String,
) where
    K: k8s_openapi::Resource
        + Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + 'static,
    PartialObjectMeta<K>: DeserializeOwned,
{
    let mut events = watcher(api, config)
        .default_backoff()
        .touched_objects()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(object) => {
                let Some(cell) = ownership::cell_of(&object.metadata) else {
                    continue;
                };
                if cells
                    .send(MemberEvent::Child(cell.to_owned()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                debug!(member_cluster = %member, kind = K::KIND, error = %e, "watch of the member's objects failed; backing off");
            }
        }
    }
}

/// The controller's state: the context, its store of MemberClusters, a client per member, the
/// members with a gauge series, and what a member's routing-table mirror is started from.
pub struct Members {
    pub ctx: Arc<Context>,
    store: Store<DeserializeGuard<MemberCluster>>,
    mirrors: Arc<Mirrors>,
    clients: Mutex<HashMap<String, Cached>>,
    /// Failed probes in a row, per member (reset by an answer or a new client).
    failures: Mutex<HashMap<String, u32>>,
    gauged: Mutex<HashSet<String>>,
}

impl Members {
    pub fn new(
        ctx: Arc<Context>,
        store: Store<DeserializeGuard<MemberCluster>>,
        mirrors: Arc<Mirrors>,
    ) -> Self {
        Self {
            ctx,
            store,
            mirrors,
            clients: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            gauged: Mutex::new(HashSet::new()),
        }
    }
}

/// The controller: every MemberCluster (through `selector`), and the Secrets of the operator's
/// namespace (`system_namespace`), each bringing back the members that name it, so a rotated
/// kubeconfig is used at once.
pub fn controller(
    client: &Client,
    selector: &str,
    system_namespace: &str,
    listed: &controllers::Listed,
) -> Controller<DeserializeGuard<MemberCluster>> {
    // The reflector is built here rather than by `Controller::new`, so `listed` tells when its
    // first list has arrived (a cell's member is "not yet known" until then, not "not found").
    let (store, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher(
            Api::<DeserializeGuard<MemberCluster>>::all(client.clone()),
            controllers::selected(selector),
        ),
    )
    .default_backoff()
    .inspect(listed.mark())
    .applied_objects();
    let controller = Controller::for_stream(events, store);
    let members = controller.store();
    controller.watches(
        Api::<Secret>::namespaced(client.clone(), system_namespace),
        watcher::Config::default().any_semantic(),
        move |secret: Secret| {
            let name = secret.name_any();
            members
                .state()
                .iter()
                .filter_map(|guard| guard.0.as_ref().ok())
                .filter(|m| m.spec.kubeconfig_secret_ref.name == name)
                .map(|m| ObjectRef::new(&m.name_any()))
                .collect::<Vec<_>>()
        },
    )
}

/// Runs until `stop`.
pub fn run(
    controller: Controller<DeserializeGuard<MemberCluster>>,
    members: Arc<Members>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let controller = controller.with_config(controller::Config::default().concurrency(4));
    controllers::run(controller, members, stop)
}

impl controllers::Reconciler for Members {
    type Kind = MemberCluster;
    const NAME: &'static str = CONTROLLER;
    /// The Secret read, the status patch and up to two Events, plus the probe's own 5 s.
    const API_TIMEOUTS: u32 = 5;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, guard: &DeserializeGuard<MemberCluster>) -> Result<Action> {
        self.forget_deleted();
        let member = controllers::object_of(guard)?;
        let name = member.name_any();
        let api: Api<MemberCluster> = Api::all(self.ctx.client.clone());
        finalizer(&api, FINALIZER, Arc::new(member.clone()), |event| async {
            match event {
                finalizer::Event::Apply(member) => self.apply(&member).await,
                finalizer::Event::Cleanup(member) => self.cleanup(&member).await,
            }
        })
        .await
        .map_err(|e| match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer {
                kind: "MemberCluster",
                name,
                message: other.to_string(),
            },
        })
    }

    fn after_error(&self, key: &str, error: &Error) -> Action {
        if let Error::MemberInUse { .. } = error {
            // Not a failure: the member waits for its cells to go; this is only a recheck.
            return Action::requeue(IN_USE_RECHECK);
        }
        controllers::retry(&self.ctx, key, error)
    }
}

impl Members {
    /// Deletion: refused (an Event, an error) while a Cell names the member; otherwise its
    /// client, watches and gauge are dropped and the finalizer released. The member's stacks
    /// were deleted with their cells; the member itself is not touched.
    async fn cleanup(&self, member: &MemberCluster) -> Result<Action> {
        let name = member.name_any();
        // Every Cell, not only this operator's selection: a cell another operator reconciles
        // through this member needs it as much.
        let cells: Api<Cell> = Api::all(self.ctx.client.clone());
        let cells = self
            .ctx
            .call(
                format!("list the Cells that may name MemberCluster {name}"),
                cells.list(&Default::default()),
            )
            .await?;
        let mut naming: Vec<String> = cells
            .items
            .iter()
            .filter(|c| c.spec.cluster.as_deref() == Some(name.as_str()))
            .map(ResourceExt::name_any)
            .collect();
        if !naming.is_empty() {
            naming.sort();
            let error = Error::MemberInUse {
                member: name.clone(),
                cells: naming.join(", "),
            };
            controllers::publish(
                &self.ctx,
                &member.object_ref(&()),
                EventType::Warning,
                "DeletionBlocked",
                error.to_string(),
            )
            .await;
            return Err(error);
        }
        self.forget(&name);
        self.ctx.members.remove(&name);
        info!(member_cluster = %name, "member cluster deleted");
        Ok(Action::await_change())
    }

    async fn apply(&self, member: &MemberCluster) -> Result<Action> {
        let name = member.name_any();
        let (observed, client) = self.observe(member).await?;
        let ctx = &self.ctx;
        if client.is_some() {
            self.mirror(&name, &system_namespace_of(ctx, member));
        }
        let previous = member.status.clone().unwrap_or_default();
        let status = member_status::compute(
            &previous,
            &observed,
            member.metadata.generation,
            &Time(Timestamp::now()),
        );
        ctx.members
            .set(&name, state_of(ctx, member, &status, client));
        self.gauged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        ctx.metrics.member_seen(&name);
        ctx.metrics
            .member_cluster_reachable
            .get_or_create(&MemberLabels {
                member_cluster: name.clone(),
            })
            .set(i64::from(conditions::is_true(
                &status.conditions,
                member_condition::REACHABLE,
            )));
        if member.status.as_ref() != Some(&status) {
            controllers::apply_status::<MemberCluster>(ctx, &name, &status).await?;
            ctx.metrics
                .status_patches
                .get_or_create(&crate::metrics::ControllerLabels {
                    controller: CONTROLLER,
                })
                .inc();
        }
        let reference = member.object_ref(&());
        for changed in conditions::changed(&previous.conditions, &status.conditions) {
            let Some(warning) = member_status::event_of(changed) else {
                continue;
            };
            info!(member_cluster = %name, condition = %changed.type_, status = %changed.status, reason = %changed.reason, "member cluster condition changed");
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            controllers::publish(
                ctx,
                &reference,
                type_,
                &changed.reason,
                format!("{}: {}", changed.type_, changed.message),
            )
            .await;
        }
        Ok(Action::requeue(PROBE_INTERVAL))
    }

    /// Reads the member's Secret, builds (or reuses) its client and probes it. An error is a
    /// failure to read the Secret from the management cluster (retried with backoff); what is
    /// wrong with the Secret's content or the member is an [`Observed`]. The client, when the
    /// kubeconfig gave one.
    async fn observe(&self, member: &MemberCluster) -> Result<(Observed, Option<Client>)> {
        let ctx = &self.ctx;
        let name = member.name_any();
        let uid = member
            .uid()
            .ok_or(Error::MissingObjectKey(".metadata.uid"))?;
        let secret_ref = &member.spec.kubeconfig_secret_ref;
        let namespace = &ctx.system_namespace;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let secret = ctx
            .call(
                format!(
                    "read Secret {namespace}/{} named by MemberCluster {name}",
                    secret_ref.name
                ),
                secrets.get_opt(&secret_ref.name),
            )
            .await?;
        let Some(secret) = secret else {
            self.forget(&name);
            let invalid = Observed::CredentialsInvalid {
                reason: reason::SECRET_NOT_FOUND,
                message: format!(
                    "Secret {namespace}/{} does not exist; create it with the member's kubeconfig under key '{}'",
                    secret_ref.name, secret_ref.key
                ),
            };
            return Ok((invalid, None));
        };
        let Some(data) = secret.data.as_ref().and_then(|d| d.get(&secret_ref.key)) else {
            self.forget(&name);
            let invalid = Observed::CredentialsInvalid {
                reason: reason::KEY_NOT_FOUND,
                message: format!(
                    "Secret {namespace}/{} has no key '{}'; put the member's kubeconfig there or set spec.kubeconfigSecretRef.key",
                    secret_ref.name, secret_ref.key
                ),
            };
            return Ok((invalid, None));
        };
        let secret_version = secret.resource_version().unwrap_or_default();
        let client = match self.cached(&name, &uid, &secret_version) {
            Some(client) => client,
            None => match build_client(&data.0).await {
                Ok(client) => {
                    debug!(member_cluster = %name, secret_version, "built a client for the member");
                    self.remember(&name, uid, secret_version, client.clone());
                    client
                }
                Err(invalid) => {
                    self.forget(&name);
                    return Ok((invalid, None));
                }
            },
        };
        let observed = probe(&client).await;
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let observed = match observed {
            Ok(version) => {
                failures.remove(&name);
                Observed::Contacted { version }
            }
            Err(error) => {
                let in_a_row = failures.entry(name).or_default();
                *in_a_row = in_a_row.saturating_add(1);
                Observed::Unreachable {
                    error,
                    in_a_row: *in_a_row,
                }
            }
        };
        Ok((observed, Some(client)))
    }

    fn cached(&self, name: &str, uid: &str, secret_version: &str) -> Option<Client> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .get(name)
            .filter(|c| c.uid == uid && c.secret_version == secret_version)
            .map(|c| c.client.clone())
    }

    /// Keeps `client` for the member and watches its cellstack objects with it; failures counted
    /// with an older client are forgotten (and its watches stopped).
    fn remember(&self, name: &str, uid: String, secret_version: String, client: Client) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let watches = watch_children(
            name,
            &client,
            &self.ctx.members.sender(),
            self.ctx.cross_cluster.is_some(),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.insert(
            name.to_owned(),
            Cached {
                uid,
                secret_version,
                client,
                _watches: watches,
                mirror: None,
            },
        );
    }

    /// Mirrors the routing table (and, with internal TLS, the trust bundle) into `namespace` of
    /// member `name` with its cached client:
    /// started with the client, restarted when the namespace changes, stopped with the client.
    /// It keeps trying (backing off) while the member does not answer: the member's own
    /// reachability is the probe's to judge, and its routers want the table the moment it
    /// answers again.
    fn mirror(&self, name: &str, namespace: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cached) = clients.get_mut(name) else {
            return;
        };
        if cached
            .mirror
            .as_ref()
            .is_some_and(|(ns, _)| ns == namespace)
        {
            return;
        }
        // Another namespace (systemNamespace changed): the routers there have held nothing yet,
        // so a CA rotation waits for the new copy as for a new member.
        if cached.mirror.is_some()
            && let Some(ca) = &self.ctx.internal_ca
        {
            ca.forget_member(name);
        }
        let pair = self.mirrors.spawn(
            Destination::Member(name.to_owned()),
            cached.client.clone(),
            namespace,
        );
        let mut tasks = vec![pair.publisher.abort_handle(), pair.heartbeat.abort_handle()];
        // With internal TLS, the routers there trust the lanes through the mirrored bundle.
        if let Some(ca) = &self.ctx.internal_ca {
            tasks.push(
                tokio::spawn(internal_ca::mirror_bundle(
                    self.ctx.clone(),
                    ca.clone(),
                    name.to_owned(),
                    cached.client.clone(),
                    namespace.to_owned(),
                    self.mirrors.stop.clone(),
                ))
                .abort_handle(),
            );
        }
        info!(member_cluster = %name, namespace, "mirroring the routing table into the member");
        cached.mirror = Some((namespace.to_owned(), Tasks(tasks)));
    }

    fn forget(&self, name: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.remove(name);
        drop(clients);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Drops the clients and gauge series of members no longer in the store (deleted).
    fn forget_deleted(&self) {
        let present: HashSet<String> = self
            .store
            .state()
            .iter()
            .map(|guard| guard.name_any())
            .collect();
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| {
                let keep = present.contains(name);
                if !keep {
                    self.ctx.members.remove(name);
                }
                keep
            });
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| present.contains(name));
        let gone: Vec<String> = {
            let mut gauged = self.gauged.lock().unwrap_or_else(|p| p.into_inner());
            let gone = gauged
                .iter()
                .filter(|name| !present.contains(*name))
                .cloned()
                .collect();
            gauged.retain(|name| present.contains(name));
            gone
        };
        for name in gone {
            self.ctx.metrics.forget_member(&name);
            if let Some(ca) = &self.ctx.internal_ca {
                ca.forget_member(&name);
            }
        }
    }
}

/// The namespace of cellstack's routers in `member` (default: the operator's own).
fn system_namespace_of(ctx: &Context, member: &MemberCluster) -> String {
    member
        .spec
        .system_namespace
        .clone()
        .unwrap_or_else(|| ctx.system_namespace.clone())
}

/// What cells in `member` can do, from the status just computed: act through `client` while the
/// member is `Reachable`, nothing otherwise.
fn state_of(
    ctx: &Context,
    member: &MemberCluster,
    status: &MemberClusterStatus,
    client: Option<Client>,
) -> MemberState {
    let condition = |type_| status.conditions.iter().find(|c| c.type_ == type_);
    let message = |type_| {
        condition(type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if !conditions::is_true(&status.conditions, member_condition::CREDENTIALS_VALID) {
        return MemberState::Unusable {
            message: message(member_condition::CREDENTIALS_VALID),
        };
    }
    match client {
        Some(client) if conditions::is_true(&status.conditions, member_condition::REACHABLE) => {
            MemberState::Reachable(Target::member(
                &member.name_any(),
                client,
                system_namespace_of(ctx, member),
                member.spec.lane_otlp_endpoint.clone(),
                ctx.cross_cluster.map(|_| {
                    member
                        .spec
                        .network
                        .as_ref()
                        .map(|n| n.node_address_type)
                        .unwrap_or_default()
                }),
            ))
        }
        _ => MemberState::Unreachable {
            last_contact: status.last_contact.clone(),
            message: message(member_condition::REACHABLE),
        },
    }
}

/// A client for the kubeconfig in `bytes`, or why there is none. Nothing is contacted here.
async fn build_client(bytes: &[u8]) -> Result<Client, Observed> {
    let invalid = |reason, message: String| Observed::CredentialsInvalid { reason, message };
    let text = std::str::from_utf8(bytes).map_err(|_| {
        invalid(
            reason::INVALID_KUBECONFIG,
            "the kubeconfig is not UTF-8 text".to_owned(),
        )
    })?;
    let parsed = Kubeconfig::from_yaml(text).map_err(|e| {
        invalid(
            reason::INVALID_KUBECONFIG,
            format!("the kubeconfig cannot be read: {e}"),
        )
    })?;
    kubeconfig::check(&parsed)
        .map_err(|e| invalid(reason::UNSUPPORTED_KUBECONFIG, e.to_string()))?;
    // With no file or command left, this only decodes what is inline.
    let config = tokio::time::timeout(
        PROBE_TIMEOUT,
        kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default()),
    )
    .await
    .map_err(|_| {
        invalid(
            reason::INVALID_KUBECONFIG,
            "loading the kubeconfig timed out".to_owned(),
        )
    })?
    .map_err(|e| {
        invalid(
            reason::INVALID_KUBECONFIG,
            format!("the kubeconfig cannot be used: {e}"),
        )
    })?;
    let mut config = config;
    config.connect_timeout = Some(PROBE_TIMEOUT);
    Client::try_from(config).map_err(|e| {
        invalid(
            reason::INVALID_KUBECONFIG,
            format!("no client can be built from the kubeconfig: {e}"),
        )
    })
}

/// `GET /version` on the member, within [`PROBE_TIMEOUT`]: its `gitVersion`, or how it failed.
async fn probe(client: &Client) -> Result<String, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => Ok(info.git_version),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// `e` and its sources, `: `-joined (a connection error's cause is several levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
