//! What brings a tenant back besides its own events: a new object or a new generation of its
//! spec (not the operator's own status patches), and the cells that drain or came back.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use cellstack_api::v1alpha1::{Cell, TenantAssignment, condition_type};
use futures::{Stream, StreamExt};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};
use tracing::info;

use crate::{context::readable, names::CELL_LABEL};

/// How often the tenants of draining cells are looked for.
const DRAIN_SCAN: Duration = Duration::from_secs(2);
/// A tenant of a draining cell is triggered at most this often by the scan (a throttled one
/// requeues itself meanwhile).
const DRAIN_TRIGGER_EVERY: Duration = Duration::from_secs(30);

/// The TenantAssignment events worth a reconcile: a new object, or a new generation of its
/// spec. The operator's own status patches (one per placement) would otherwise bring every
/// tenant back once more for nothing; moves drive themselves by requeueing. Keyed by uid, so a
/// tenant deleted and created again under its name is new. The memory of uids is dropped when
/// it holds twice the tenants the store does (everything then passes once).
pub fn spec_changes(
    events: impl Stream<Item = Arc<DeserializeGuard<TenantAssignment>>> + Send + 'static,
    store: Store<DeserializeGuard<TenantAssignment>>,
) -> impl Stream<Item = Arc<DeserializeGuard<TenantAssignment>>> + Send + 'static {
    let mut seen: HashMap<String, i64> = HashMap::new();
    events.filter(move |guard| {
        let (uid, generation) = (guard.meta().uid.clone(), guard.meta().generation);
        let pass = match (uid, generation) {
            (Some(uid), Some(generation)) => {
                if seen.len() > 2 * store.len() + 1024 {
                    seen.clear();
                }
                seen.insert(uid, generation) != Some(generation)
            }
            // Without a uid or generation there is nothing to compare: reconcile.
            _ => true,
        };
        std::future::ready(pass)
    })
}

/// What a cell is serving from, as far as its tenants' records go: since when it is Ready, and
/// which pod runs its managed datastore (a new pod of an `Ephemeral` datastore starts empty).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incarnation {
    ready_since: Time,
    datastore: Option<String>,
}

/// A cell's incarnation, when it is Ready.
fn incarnation(cell: &Cell, datastores: &HashMap<String, String>) -> Option<Incarnation> {
    let ready_since = cell
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY && c.status == "True")
        .map(|c| c.last_transition_time.clone())?;
    Some(Incarnation {
        ready_since,
        datastore: datastores.get(&cell.name_any()).cloned(),
    })
}

/// Cell name → uid of the Ready pod of its managed datastore.
fn ready_datastores(pods: &Store<Pod>) -> HashMap<String, String> {
    pods.state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.labels().get(CELL_LABEL)?.clone(), p.uid()?)))
        .collect()
}

/// The cells Ready now whose incarnation changed since the last look: not Ready then, Ready
/// since another time (a flip and back between two looks), or on another datastore pod. The
/// first sight of a cell is no news: the controller's start reconciles every tenant anyway.
fn revived<T: PartialEq>(
    before: &HashMap<String, Option<T>>,
    now: &HashMap<String, Option<T>>,
) -> HashSet<String> {
    now.iter()
        .filter(|(name, since)| {
            since.is_some() && before.get(*name).is_some_and(|was| was != *since)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Every [`DRAIN_SCAN`], looks at the cached Cells and triggers:
/// - the tenants that live in a draining cell and were not triggered in the last
///   [`DRAIN_TRIGGER_EVERY`]: so setting `draining: true` starts the drain within seconds, and
///   after a restart too;
/// - every tenant of a cell that became Ready again or whose datastore pod was replaced (see
///   [`revived`]): an `Ephemeral` datastore comes back empty, and the reconcile provisions the
///   tenant's record again at once instead of at the next resync, while it answered 404. (A
///   restart can be too quick for the cell's Ready condition to show; the pod's uid cannot.)
///
/// Bounded: one reference per such tenant per period, deduplicated by the controller's queue.
pub fn cell_triggers(
    cells: Store<DeserializeGuard<Cell>>,
    datastores: Store<Pod>,
    tenants: Store<DeserializeGuard<TenantAssignment>>,
) -> impl Stream<Item = ObjectRef<DeserializeGuard<TenantAssignment>>> + Send + 'static {
    let ticks = futures::stream::unfold(tokio::time::interval(DRAIN_SCAN), |mut every| async {
        every.tick().await;
        Some(((), every))
    });
    let mut triggered: HashMap<String, Instant> = HashMap::new();
    let mut ready: HashMap<String, Option<Incarnation>> = HashMap::new();
    ticks.flat_map(move |_| {
        let cells = readable(&cells);
        let draining: HashSet<String> = cells
            .iter()
            .filter(|c| c.spec.draining)
            .map(|c| c.name_any())
            .collect();
        let pods = ready_datastores(&datastores);
        let now: HashMap<String, Option<Incarnation>> = cells
            .iter()
            .map(|c| (c.name_any(), incarnation(c, &pods)))
            .collect();
        let revived = revived(&ready, &now);
        ready = now;
        for cell in &revived {
            info!(%cell, "cell became Ready again or has a new datastore; checking its tenants are provisioned");
        }
        triggered.retain(|_, at| at.elapsed() < DRAIN_TRIGGER_EVERY);
        let mut due = Vec::new();
        if !draining.is_empty() || !revived.is_empty() {
            for guard in tenants.state() {
                let Ok(ta) = &guard.0 else { continue };
                let Some(home) = ta.status.as_ref().and_then(|s| s.cell.as_deref()) else {
                    continue;
                };
                let name = ta.name_any();
                if revived.contains(home) {
                    due.push(ObjectRef::new(&name));
                } else if draining.contains(home) && !triggered.contains_key(&name) {
                    triggered.insert(name.clone(), Instant::now());
                    due.push(ObjectRef::new(&name));
                }
            }
        }
        futures::stream::iter(due)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn a_cell_that_becomes_ready_again_has_its_tenants_checked() {
        let t = |secs: i64| {
            Some(Time(
                Timestamp::from_second(secs).expect("a valid timestamp"),
            ))
        };
        let map = |pairs: &[(&str, Option<Time>)]| -> HashMap<String, Option<Time>> {
            pairs
                .iter()
                .map(|(n, s)| ((*n).to_owned(), s.clone()))
                .collect()
        };
        // First sight: nothing to do.
        assert!(revived(&map(&[]), &map(&[("a", t(1))])).is_empty());
        // Not Ready, then Ready.
        let r = revived(&map(&[("a", None)]), &map(&[("a", t(2))]));
        assert_eq!(r, HashSet::from(["a".to_owned()]));
        // Flipped and back between two looks: Ready since another time.
        let r = revived(&map(&[("a", t(1))]), &map(&[("a", t(5))]));
        assert_eq!(r, HashSet::from(["a".to_owned()]));
        // Unchanged, or not Ready now.
        assert!(revived(&map(&[("a", t(1))]), &map(&[("a", t(1))])).is_empty());
        assert!(revived(&map(&[("a", t(1))]), &map(&[("a", None)])).is_empty());
    }
}
