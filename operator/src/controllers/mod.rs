//! What every controller of the operator does the same way: watch through the optional label
//! selector, time and bound each reconcile, back off per object after transient errors, write
//! status, publish Events. One place, so the controllers differ only in what they decide.

pub mod cell;
pub mod heartbeat;
pub mod internal_ca;
pub mod member_cluster;
pub mod moves;
pub mod nodes;
pub mod policy_status;
pub mod pool_status;
pub mod publish;
pub mod rollout;
pub mod tables;
pub mod tenant;

use std::{future::Future, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use crate::{
    context::Context,
    error::{Error, Result},
    names::FIELD_MANAGER,
};

/// What one controller decides; [`run`] does the rest the same way for every controller:
/// bounds each reconcile, records its duration and outcome, backs off per object after a
/// failure (or waits for a change when only one can help) and logs what failed.
pub trait Reconciler: Send + Sync + 'static {
    /// The kind reconciled.
    type Kind: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    /// The `controller` label of its metrics, and the prefix of its objects' keys in logs and
    /// in the backoff table.
    const NAME: &'static str;
    /// How many API timeouts one reconcile may take in all (besides each call's own timeout, so
    /// nothing can hold a worker forever).
    const API_TIMEOUTS: u32 = 3;

    fn context(&self) -> &Context;

    /// One reconcile of the object behind `guard` (see [`object_of`]).
    fn reconcile(
        &self,
        guard: &DeserializeGuard<Self::Kind>,
    ) -> impl Future<Output = Result<Action>> + Send;

    /// What follows a failed reconcile of object `key`: by default [`retry`].
    fn after_error(&self, key: &str, error: &Error) -> Action {
        retry(self.context(), key, error)
    }
}

/// Runs `controller` (configured by the caller: triggers, concurrency, debounce) with
/// `reconciler` until `stop`, then finishes the reconciles in flight. Yields once per finished
/// reconcile.
pub fn run<R: Reconciler>(
    controller: Controller<DeserializeGuard<R::Kind>>,
    reconciler: Arc<R>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let key = |guard: &DeserializeGuard<R::Kind>| format!("{}/{}", R::NAME, guard.name_any());
    controller
        .graceful_shutdown_on(stop)
        .run(
            move |guard, reconciler: Arc<R>| async move {
                let ctx = reconciler.context();
                let deadline = ctx.api_timeout * R::API_TIMEOUTS;
                instrumented(
                    ctx,
                    R::NAME,
                    &key(&guard),
                    deadline,
                    reconciler.reconcile(&guard),
                )
                .await
            },
            move |guard, error, reconciler: Arc<R>| reconciler.after_error(&key(&guard), error),
            reconciler,
        )
        .map(|result| match result {
            Ok((object, _)) => debug!(controller = R::NAME, object = %object.name, "reconciled"),
            Err(controller::Error::ReconcilerFailed(error, object)) => {
                warn!(controller = R::NAME, object = %object.name, %error, "reconcile failed");
            }
            // A child or tenant event naming a cell outside this operator's selection (another
            // operator's, in a sharded install) or one already deleted: nothing to do, and not
            // worth a warning per event.
            Err(controller::Error::ObjectNotFound(object)) => debug!(
                controller = R::NAME,
                object = %object.name,
                "an event named an object not in this operator's cache; skipped"
            ),
            Err(error) => warn!(controller = R::NAME, %error, "controller"),
        })
}

/// The object behind a controller's `guard`, or [`Error::Unreadable`] naming its kind and name
/// when this operator version cannot read it.
pub fn object_of<K: Resource<DynamicType = ()>>(guard: &DeserializeGuard<K>) -> Result<&K> {
    guard.0.as_ref().map_err(|invalid| Error::Unreadable {
        kind: K::kind(&()).into_owned(),
        name: invalid.metadata.name.clone().unwrap_or_default(),
        reason: invalid.error.clone(),
    })
}

/// A watch of every object, or of those matching `selector` (empty: all).
pub fn selected(selector: &str) -> watcher::Config {
    let cfg = watcher::Config::default().any_semantic();
    if selector.is_empty() {
        cfg
    } else {
        cfg.labels(selector)
    }
}

/// Whether a reflector's first list has reached its store: set by [`Listed::mark`] on the
/// watcher's `InitDone` (seen after the reflector applied it), and never cleared (a relist
/// replaces the store's contents atomically, so an earlier list stays a complete view).
///
/// kube-runtime's `Store::wait_until_ready` cannot serve a second waiter: its `DelayedInit`
/// keeps one waker, so of several tasks waiting on one store only the last to poll is woken,
/// and the controllers already wait on theirs. The publisher waits on these instead.
#[derive(Clone, Debug)]
pub struct Listed(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Listed {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Listed {
    /// A callback for `Stream::inspect` on a reflector's stream.
    pub fn mark<K>(&self) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K> {
        let tx = self.0.clone();
        move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tx.send_if_modified(|listed| !std::mem::replace(listed, true));
            }
        }
    }

    /// Resolves once the first list has reached the store.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|listed| *listed).await;
    }
}

/// Runs one reconcile of object `key` of `controller` within `deadline` (besides each call's
/// own timeout, so nothing can hold a worker forever), recording its duration and outcome, and
/// clearing the object's failure count when it succeeds.
pub async fn instrumented(
    ctx: &Context,
    controller: &'static str,
    key: &str,
    deadline: Duration,
    reconcile: impl Future<Output = Result<Action>>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(controller);
    let result = match tokio::time::timeout(deadline, reconcile).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            action: format!("reconcile {key}"),
            timeout: deadline,
        }),
    };
    ctx.metrics
        .reconciled(controller, result.as_ref().err().map(Error::metric_label));
    if result.is_ok() {
        ctx.failures.clear(key);
    }
    result
}

/// After a failed reconcile of `key`: wait for a change when only one can help, otherwise
/// retry with exponential backoff and jitter.
pub fn retry(ctx: &Context, key: &str, error: &Error) -> Action {
    if error.is_permanent() {
        warn!(object = key, %error, "waiting for the object to change");
        return Action::await_change();
    }
    let attempt = ctx.failures.record(key);
    let delay = ctx.backoff.delay(attempt, rand::random::<f64>());
    info!(object = key, attempt, delay_ms = delay.as_millis() as u64, %error, "retrying after backoff");
    Action::requeue(delay)
}

/// Server-side applies `status` to cluster-scoped object `name` of kind `K`.
pub async fn apply_status<K>(ctx: &Context, name: &str, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    ctx.call(
        format!("patch status of {} {name}", K::kind(&())),
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        ),
    )
    .await?;
    Ok(())
}

/// Publishes an Event; a failure to do so is logged, never fails the reconcile.
pub async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match tokio::time::timeout(ctx.api_timeout, ctx.recorder.publish(&event, reference)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, reason, "cannot publish event"),
        Err(_) => warn!(reason, "publishing an event timed out"),
    }
}

/// An Event waiting in an [`EventQueue`].
struct QueuedEvent {
    reference: ObjectReference,
    type_: EventType,
    reason: &'static str,
    note: String,
}

/// Events published off the reconcile path: a bounded queue drained by a few publishers, so a
/// burst of placements waits for the API server once (its status patch), not twice. When the
/// queue is full, a `Normal` Event (a routine placement; the object's status says the same) is
/// dropped and counted (`cellstack_operator_events_dropped_total`), as client-go's broadcaster
/// drops when its channel is full: placing 10k tenants is then bound by status writes, not by
/// 10k Event creates. A `Warning` waits for room and is never dropped. Events still queued when
/// the operator stops are lost, as Events may be.
#[derive(Clone)]
pub struct EventQueue {
    tx: tokio::sync::mpsc::Sender<QueuedEvent>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl EventQueue {
    /// The queue (at most `capacity` waiting) and the task publishing from it, `concurrency` at
    /// a time; the task ends when every sender is gone and the queue is empty.
    pub fn start(
        ctx: std::sync::Arc<Context>,
        capacity: usize,
        concurrency: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        use futures::StreamExt as _;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<QueuedEvent>(capacity.max(1));
        let dropped = ctx.metrics.events_dropped.clone();
        let pump = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).for_each_concurrent(
            concurrency.max(1),
            move |e| {
                let ctx = ctx.clone();
                async move { publish(&ctx, &e.reference, e.type_, e.reason, e.note).await }
            },
        );
        (Self { tx, dropped }, tokio::spawn(pump))
    }

    /// Queues an Event; a `Warning` waits while the queue is full, a `Normal` one is dropped.
    pub async fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
        let event = QueuedEvent {
            reference,
            type_,
            reason,
            note,
        };
        let event = match self.tx.try_send(event) {
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                warn!(reason, "the event queue is closed; event not published");
                return;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => event,
        };
        if event.type_ == EventType::Normal {
            self.dropped.inc();
            return;
        }
        if self.tx.send(event).await.is_err() {
            warn!(reason, "the event queue is closed; event not published");
        }
    }
}
