//! Kubernetes Events (`events.k8s.io/v1`) published the way kube-runtime's `Recorder` does — a
//! repeat of the same event on the same object within 6 minutes becomes a `series` patch of the
//! first one — but remembering at most [`CACHE_ENTRIES`] events (least recently seen dropped
//! first), as client-go's correlator does with its 4,096-entry LRU.
//!
//! kube-runtime's `Recorder` keeps every event it published for 6 minutes and scans that whole
//! cache on every publish: placing 100k tenants kept tens of thousands of Events (a megabyte per
//! few hundred) in memory and made each publish O(events). It has no bound to set, hence this
//! module.

use std::{num::NonZeroUsize, sync::Mutex};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};
use serde_json::json;

/// How many distinct events (object, type, reason, action) are remembered for series.
pub const CACHE_ENTRIES: usize = 4096;
/// How long after its last occurrence a repeat still joins an event's series (kube-runtime's and
/// client-go's 6 minutes).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two events the same one, repeated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    action: String,
    reason: String,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl Key {
    fn of(ev: &Event, regarding: &ObjectReference) -> Self {
        Self {
            warning: ev.type_ == EventType::Warning,
            action: ev.action.clone(),
            reason: ev.reason.clone(),
            kind: regarding.kind.clone(),
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            uid: regarding.uid.clone(),
        }
    }
}

/// The Event object a key was last published as.
#[derive(Debug, Clone)]
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events with series from a bounded cache; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: std::sync::Arc<Mutex<lru::LruCache<Key, Published>>>,
}

impl Recorder {
    /// A recorder that remembers [`CACHE_ENTRIES`] events.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self::with_capacity(client, reporter, CACHE_ENTRIES)
    }

    /// A recorder that remembers `entries` events (at least one).
    pub fn with_capacity(client: Client, reporter: Reporter, entries: usize) -> Self {
        let entries = NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN);
        Self {
            client,
            reporter,
            cache: std::sync::Arc::new(Mutex::new(lru::LruCache::new(entries))),
        }
    }

    /// Publishes `ev` about `regarding`: a new Event, or, when the same event was published
    /// within [`SERIES_WINDOW`], a patch of that Event's `series` (count and last time). A series
    /// whose Event is gone (the API server's event TTL) starts a new Event.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = Key::of(ev, regarding);
        let repeat = {
            let mut cache = self.lock();
            cache.get(&key).cloned()
        }
        .filter(|p| p.last + SERIES_WINDOW > now);
        if let Some(p) = repeat {
            let count = p.count.saturating_add(1);
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &p.namespace);
            let patch = Patch::Merge(json!({ "series": series }));
            match api.patch(&p.name, &PatchParams::default(), &patch).await {
                Ok(_) => {
                    self.lock().put(
                        key,
                        Published {
                            count,
                            last: now,
                            ..p
                        },
                    );
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {} // expired: a new one below
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(ev, regarding, now);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created
            .metadata
            .name
            .or(event.metadata.name)
            .unwrap_or_default();
        self.lock().put(
            key,
            Published {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Key, Published>> {
        // A panic while holding the lock leaves a cache that is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Event as kube-runtime's `Recorder` builds it; a cluster-scoped object's Events go to
    /// `default`.
    fn new_event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace),
                name: Some(format!(
                    "{}.{:x}",
                    regarding
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            related: ev.secondary.clone(),
            ..K8sEvent::default()
        }
    }
}
