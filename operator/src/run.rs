//! Startup, leader election and shutdown.
//!
//! Every replica serves `/metrics` and health at once and campaigns for the Lease; only the
//! holder runs the controllers (so only it writes). On SIGTERM the leader stops taking new
//! work, lets reconciles in flight finish, and releases the Lease so a standby takes over at
//! once instead of after it expires. A leader that loses the Lease stops and exits non-zero, so
//! it rejoins the election from a clean start.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use cellstack_api::v1alpha1::{RateLimitPolicy, ShuffleShardPool};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{PredicateConfig, WatchStreamExt, events::Reporter, predicates, reflector, watcher},
};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    cached_tenant::CachedTenant,
    config::Config,
    context::Context,
    controllers::{
        self, cell, internal_ca, member_cluster, policy_status, pool_status, rollout,
        tables::{self, Caches, Destination, Mirrors, Sources},
        tenant,
    },
    crd_check,
    logic::{
        backoff::{Backoff, Failures},
        cell::desired::Images,
    },
    metrics::Metrics,
    names::FIELD_MANAGER,
    server::{self, ServerState},
    target::MemberTargets,
};

/// TenantAssignment events buffered for the tenant controller's subscription.
const TENANT_EVENT_BUFFER: usize = 1024;
/// Placement Events waiting to be published before a placement waits for the queue.
const EVENT_QUEUE: usize = 4096;
/// Events published at once from that queue.
const EVENT_PUBLISHERS: usize = 8;
/// How long reconciles in flight get to finish after the stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let client = client().await?;
    crd_check::ensure_installed(&client, config.api_timeout()).await?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_listen))?;
    let app = server::router(ServerState {
        registry: Arc::new(registry),
        draining: draining.clone(),
    });
    let server = tokio::spawn(cellstack_runtime::listener::serve(
        listener,
        app,
        cellstack_runtime::listener::Limits::default(),
        None,
        stopped(stop_rx.clone()),
    ));
    info!(listen = %config.metrics_listen, "serving /metrics, /livez and /readyz");

    let identity = config
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("cellstack-operator-{:016x}", rand::random::<u64>()));
    let lease_seconds = config.lease_seconds.max(3);
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&identity)
        .with_duration(lease_seconds)
        // Renew a third of the lease before it runs out.
        .with_grace((lease_seconds / 3).max(1))
        .with_field_manager(format!("{FIELD_MANAGER}-lease"))
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot set up the leader Lease {}/{} (does the namespace exist?)",
                config.namespace, config.lease_name
            )
        })?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(%identity, lease = %config.lease_name, namespace = %config.namespace, "campaigning for the leader Lease");

    let became_leader = tokio::select! {
        r = leader.wait_for(|is_leader| *is_leader) => r.is_ok(),
        () = cellstack_runtime::shutdown_signal() => false,
    };
    let mut lost = false;
    if became_leader {
        info!(%identity, "became leader; starting controllers");
        metrics.leader.set(1);
        lost = lead(
            &config,
            client,
            metrics.clone(),
            &identity,
            &mut leader,
            stop_rx.clone(),
        )
        .await;
        metrics.leader.set(0);
    }

    draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    // Dropping the receiver makes the lease task release the Lease and end.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader Lease"),
        Ok(Ok(Err(e))) => {
            warn!(error = %e, "could not release the leader Lease; it expires on its own")
        }
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("releasing the leader Lease timed out; it expires on its own"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if lost {
        anyhow::bail!(
            "lost the leader Lease; exiting so this replica rejoins the election from a clean start"
        );
    }
    info!("stopped");
    Ok(())
}

/// Runs the controllers until a signal (returns false) or until leadership is lost (true).
async fn lead(
    config: &Config,
    client: Client,
    metrics: Arc<Metrics>,
    identity: &str,
    leader: &mut watch::Receiver<bool>,
    stop_rx: watch::Receiver<bool>,
) -> bool {
    // Every kind is watched through the same optional label selector.
    let selected = || {
        let cfg = watcher::Config::default().any_semantic();
        if config.selector.is_empty() {
            cfg
        } else {
            cfg.labels(&config.selector)
        }
    };
    // Bumped on every change a routing table may reflect; the publisher waits on it.
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let changed_tx = Arc::new(changed_tx);
    let bump = {
        let tx = changed_tx.clone();
        move || tx.send_modify(|n| *n = n.wrapping_add(1))
    };

    // Whether each cache the routing table is built from has had its first list.
    let listed = Caches::default();

    // One watch of every TenantAssignment, in one store shared by every controller: the cell
    // controller counts tenants from it and its events (deletions included) bring the cells
    // they name back; the tenant controller is fed through a subscription to it. Each object
    // is packed as it arrives ([`CachedTenant`]): what the operator never reads is dropped.
    let (tenants, tenant_writer) =
        reflector::store_shared::<DeserializeGuard<CachedTenant>>(TENANT_EVENT_BUFFER);
    let Some(tenant_subscription) = tenant_writer.subscribe() else {
        error!("the TenantAssignment store cannot be shared; not leading");
        return false;
    };
    let tenant_events = {
        let bump = bump.clone();
        reflector(
            tenant_writer,
            watcher(
                Api::<DeserializeGuard<CachedTenant>>::all(client.clone()),
                selected(),
            ),
        )
        .default_backoff()
        .inspect(listed.tenants.mark())
        .touched_objects()
        .inspect(move |_| bump())
    };
    let (pools, pool_writer) = reflector::store::<DeserializeGuard<ShuffleShardPool>>();
    let pool_events = {
        let bump = bump.clone();
        reflector(
            pool_writer,
            watcher(
                Api::<DeserializeGuard<ShuffleShardPool>>::all(client.clone()),
                selected(),
            ),
        )
        .default_backoff()
        .inspect(listed.pools.mark())
        .touched_objects()
        .filter_map(|r| async move { r.ok() })
        .map(move |_| bump())
    };
    let (policies, policy_writer) = reflector::store::<DeserializeGuard<RateLimitPolicy>>();
    let policy_events = {
        let bump = bump.clone();
        reflector(
            policy_writer,
            watcher(
                Api::<DeserializeGuard<RateLimitPolicy>>::all(client.clone()),
                selected(),
            ),
        )
        .default_backoff()
        .inspect(listed.policies.mark())
        .touched_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default())
        .filter_map(|r| async move { r.ok() })
        .map(move |_| bump())
    };
    // The managed datastores' pods (only their identity and readiness are kept): a replaced
    // one of an Ephemeral datastore starts empty, and the tenant controller provisions the
    // cell's tenants again (tenant::cell_triggers).
    let (datastores, datastore_writer) = reflector::store::<Pod>();
    let datastore_events = reflector(
        datastore_writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&format!(
                "{},{}={}",
                crate::names::MANAGED_SELECTOR,
                crate::names::COMPONENT_LABEL,
                crate::names::REDIS
            )),
        )
        .modify(|pod| {
            pod.managed_fields_mut().clear();
            pod.spec = None;
        }),
    )
    .default_backoff()
    .for_each(|_| async {});
    let datastore_watch = tokio::spawn(datastore_events);
    // How the lanes' admin ports are reached, and the internal CA behind it (docs/security.md).
    let lanes = if config.internal_tls {
        match crate::lane_client::LaneClient::tls_pending() {
            Ok(lanes) => lanes,
            Err(e) => {
                error!(error = %e, "cannot build the lanes' HTTPS client; not leading");
                return false;
            }
        }
    } else {
        crate::lane_client::LaneClient::plain()
    };
    let internal_ca = config.internal_tls.then(|| {
        Arc::new(internal_ca::InternalCa::new(internal_ca::Settings {
            propagation: Duration::from_secs(config.internal_ca_propagation_secs),
        }))
    });
    // A new issuing CA brings every cell back, to reissue its certificate.
    let ca_changes = match &internal_ca {
        Some(ca) => changes(ca.changes()).left_stream(),
        None => futures::stream::pending().right_stream(),
    };
    // A pool or a policy may concern any cell: either brings every cell back.
    let reconcile_all = futures::stream::select(
        futures::stream::select(pool_events, policy_events),
        ca_changes,
    );
    let controller = cell::controller(&client, &config.selector, &listed.cells);
    let cells = controller.store();
    let ctx = Arc::new(Context {
        recorder: crate::recorder::Recorder::new(
            client.clone(),
            Reporter {
                controller: "cellstack-operator".into(),
                instance: Some(identity.to_owned()),
            },
        ),
        client: client.clone(),
        metrics: metrics.clone(),
        tenants: tenants.clone(),
        pools: pools.clone(),
        policies: policies.clone(),
        images: Images {
            cell: config.cell_image.clone(),
            redis: config.redis_image.clone(),
            pull_policy: config.image_pull_policy.clone(),
        },
        lanes,
        internal_ca: internal_ca.clone(),
        lane_otlp_endpoint: config
            .lane_otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty()),
        system_namespace: config.namespace.clone(),
        monitoring_namespace: Some(config.monitoring_namespace.trim().to_owned())
            .filter(|ns| !ns.is_empty()),
        cross_cluster: config.multicluster.then_some(config.node_address_type),
        cross_cluster_sources: config.cross_cluster_sources.clone(),
        api_timeout: config.api_timeout(),
        resync: Duration::from_secs(config.resync_secs.max(10)),
        backoff: Backoff::default(),
        failures: Arc::new(Failures::default()),
        members: Arc::new(MemberTargets::default()),
        fence_gate: Arc::new(tokio::sync::RwLock::new(())),
    });

    let (controller_stop_tx, controller_stop_rx) = watch::channel(false);
    // The CA exists and its bundle is published before the first cell reconcile needs them.
    if let Some(ca) = &internal_ca
        && let Err(e) = internal_ca::ensure(&ctx, ca).await
    {
        error!(error = %e, "the internal CA is not ready; retrying");
    }
    let ca_task = internal_ca.map(|ca| {
        tokio::spawn(internal_ca::run(
            ctx.clone(),
            ca,
            cells.clone(),
            listed.cells.clone(),
            controller_stop_rx.clone(),
        ))
    });
    let (tenant_events_queue, event_pump) =
        controllers::EventQueue::start(ctx.clone(), EVENT_QUEUE, EVENT_PUBLISHERS);
    let tenant_controller = tokio::spawn(
        tenant::run(
            tenant::controller(
                tenant::spec_changes(tenant_subscription, tenants.clone()),
                tenants.clone(),
                cells.clone(),
                datastores,
                ctx.resync,
            ),
            Arc::new(tenant::Tenants {
                ctx: ctx.clone(),
                cells: cells.clone(),
                placement: tokio::sync::Mutex::new(tenant::PlacementState::default()),
                moves: config.moves(),
                drain_concurrency: usize::from(config.drain_concurrency.max(1)),
                admins: tokio::sync::Mutex::new(std::collections::HashMap::new()),
                new_records: tenant::NewRecords::default(),
                events: tenant_events_queue,
                handovers: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            }),
            config.tenant_concurrency.max(1),
            stopped(controller_stop_rx.clone()),
        )
        .for_each(|()| async {}),
    );
    let policy_shared = Arc::new(policy_status::Policies {
        ctx: ctx.clone(),
        cells: cells.clone(),
    });
    // The moves in progress, for the stuck-move alert (docs/alerts.md).
    let move_progress = tokio::spawn(crate::controllers::moves::progress::run(
        tenants.clone(),
        metrics.clone(),
        controller_stop_rx.clone(),
    ));
    // The heap a burst of changes freed (parsed objects, tables built and encoded), given back
    // to the system once the caches changed, at most every heap::TRIM_INTERVAL.
    let heap_trim = tokio::spawn(crate::heap::trim_after_changes(
        changed_rx.clone(),
        crate::heap::TRIM_INTERVAL,
        stopped(controller_stop_rx.clone()),
    ));
    // Every cell's acknowledgement of its policy file, asked on a fixed interval.
    let policy_acks = tokio::spawn(policy_status::watch_acknowledgements(
        policy_shared.clone(),
        controller_stop_rx.clone(),
    ));
    let policy_controller = tokio::spawn(
        policy_status::run(
            policy_status::controller(&client, &config.selector),
            policy_shared,
            changes(changed_rx.clone()),
            stopped(controller_stop_rx.clone()),
        )
        .for_each(|()| async {}),
    );
    let pool_controller = tokio::spawn(
        pool_status::run(
            pool_status::controller(&client, &config.selector),
            Arc::new(pool_status::Pools {
                ctx: ctx.clone(),
                cells: cells.clone(),
            }),
            changes(changed_rx.clone()),
            stopped(controller_stop_rx.clone()),
        )
        .for_each(|()| async {}),
    );
    // Routing tables: the sources every cluster's view is compiled from.
    let mirrors = Arc::new(Mirrors {
        sources: Arc::new(Sources {
            cells: cells.clone(),
            pools: pools.clone(),
            policies: policies.clone(),
            tenants: tenants.clone(),
            listed: listed.clone(),
            changes: changed_rx.clone(),
        }),
        metrics: metrics.clone(),
        identity: identity.to_owned(),
        heartbeat_interval: config.routing_heartbeat(),
        table_compression: config.routing_table_compression,
        api_timeout: config.api_timeout(),
        stop: controller_stop_rx.clone(),
    });
    // Member clusters: their credentials checked and their API servers probed (observe and
    // report only; docs/member-clusters.md).
    let member_controller = {
        let listed = controllers::Listed::default();
        let controller =
            member_cluster::controller(&client, &config.selector, &config.namespace, &listed);
        let store = controller.store();
        // Until the MemberClusters are listed, a cell's member is "not yet known", never
        // "not found".
        tokio::spawn({
            let (store, members) = (store.clone(), ctx.members.clone());
            async move {
                listed.wait().await;
                debug!("member clusters listed");
                members.listed(store);
            }
        });
        tokio::spawn(
            member_cluster::run(
                controller,
                Arc::new(member_cluster::Members::new(
                    ctx.clone(),
                    store,
                    mirrors.clone(),
                )),
                stopped(controller_stop_rx.clone()),
            )
            .for_each(|()| async {}),
        )
    };
    let (rollout_controller, rollout_forgetter) = {
        let controller = rollout::controller(&client, &config.selector);
        let store = controller.store();
        let shared = Arc::new(rollout::Rollouts::new(ctx.clone(), cells.clone(), store));
        (
            tokio::spawn(
                rollout::run(
                    controller,
                    shared.clone(),
                    stopped(controller_stop_rx.clone()),
                )
                .for_each(|()| async {}),
            ),
            tokio::spawn(rollout::forget::run(
                client.clone(),
                config.selector.clone(),
                shared,
                stopped(controller_stop_rx.clone()),
            )),
        )
    };
    let member_changes = match ctx.members.changes() {
        Some(changes) => changes.left_stream(),
        None => futures::stream::pending().right_stream(),
    };
    // With `--multicluster`, a change of this cluster's nodes brings back the cells here (their
    // lanes' cross-cluster addresses and node sources follow the nodes).
    let local_nodes = match ctx.cross_cluster {
        Some(_) => controllers::nodes::changes(Api::all(client.clone()), "local".into())
            .map(|()| crate::target::MemberEvent::Nodes(None))
            .left_stream(),
        None => futures::stream::pending().right_stream(),
    };
    let member_changes = futures::stream::select(member_changes, local_nodes);
    let cell_controller = tokio::spawn(
        cell::run(
            controller,
            ctx.clone(),
            tenant_events,
            reconcile_all,
            member_changes,
            config.concurrency.max(1),
            stopped(controller_stop_rx.clone()),
        )
        .for_each(move |()| {
            bump();
            async {}
        }),
    );
    // The management cluster's view, in the operator's own namespace (each member's is
    // started by the MemberCluster controller with the member's client).
    let tables::Pair {
        publisher,
        heartbeat,
    } = mirrors.spawn(Destination::Local, client, &config.namespace);

    let lost = tokio::select! {
        () = cellstack_runtime::shutdown_signal() => {
            info!("shutdown requested: finishing reconciles in flight");
            false
        }
        r = leader.wait_for(|is_leader| !*is_leader) => {
            if r.is_ok() {
                error!("lost the leader Lease: stopping controllers");
            }
            true
        }
        () = stopped(stop_rx) => false,
    };
    let _ = controller_stop_tx.send(true);
    let both = async {
        let _ = cell_controller.await;
        let _ = tenant_controller.await;
        let _ = policy_controller.await;
        let _ = pool_controller.await;
        let _ = member_controller.await;
        let _ = rollout_controller.await;
        let _ = rollout_forgetter.await;
        // The tenant controller is gone, so the queue has no sender left: this drains it.
        let _ = event_pump.await;
        let _ = publisher.await;
        let _ = heartbeat.await;
        let _ = policy_acks.await;
        let _ = heap_trim.await;
        let _ = move_progress.await;
        if let Some(task) = ca_task {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, both).await.is_err() {
        warn!(timeout = ?STOP_TIMEOUT, "reconciles in flight did not finish in time");
    }
    datastore_watch.abort();
    lost
}

/// A stream yielding once per change signalled on `rx`.
fn changes(rx: watch::Receiver<u64>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A client from the pod's service account in a cluster, or `KUBECONFIG` outside one, with a
/// connect timeout (watches need the default long read timeout; each call has its own).
async fn client() -> anyhow::Result<Client> {
    let mut config = kube::Config::infer()
        .await
        .context("cannot find a Kubernetes configuration: run in a pod or set KUBECONFIG")?;
    config.connect_timeout = Some(Duration::from_secs(5));
    Client::try_from(config).context("cannot build a Kubernetes client")
}
