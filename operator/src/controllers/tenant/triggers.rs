//! What brings a tenant back besides its own events: a new object or a new generation of its
//! spec (not the operator's own status patches), the cells that drain or came back, and the
//! resync sweep.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use cellstack_api::v1alpha1::{Cell, condition_type};
use futures::{Stream, StreamExt};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};
use tracing::info;

use crate::{cached_tenant::CachedTenant, context::readable, identity::Uid, names::CELL_LABEL};

/// How often the tenants of draining cells are looked for.
const DRAIN_SCAN: Duration = Duration::from_secs(2);
/// A tenant of a draining cell is triggered at most this often by the scan (a throttled one
/// requeues itself meanwhile).
const DRAIN_TRIGGER_EVERY: Duration = Duration::from_secs(30);

/// How often the resync sweep triggers its next share of the tenants.
const SWEEP_TICK: Duration = Duration::from_secs(5);

/// The TenantAssignment events worth a reconcile: a new object, or a new generation of its
/// spec. The operator's own status patches (one per placement) would otherwise bring every
/// tenant back once more for nothing; moves drive themselves by requeueing. Keyed by uid, so a
/// tenant deleted and created again under its name is new. The memory of uids is dropped when
/// it holds twice the tenants the store does (everything then passes once).
pub fn spec_changes(
    events: impl Stream<Item = Arc<DeserializeGuard<CachedTenant>>> + Send + 'static,
    store: Store<DeserializeGuard<CachedTenant>>,
) -> impl Stream<Item = Arc<DeserializeGuard<CachedTenant>>> + Send + 'static {
    let mut seen: HashMap<Uid, i64> = HashMap::new();
    events.filter(move |guard| {
        let (uid, generation) = match &guard.0 {
            Ok(ta) => (ta.uid_key().cloned(), ta.metadata.generation),
            Err(invalid) => (
                invalid.metadata.uid.as_deref().map(Uid::parse),
                invalid.metadata.generation,
            ),
        };
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
    tenants: Store<DeserializeGuard<CachedTenant>>,
) -> impl Stream<Item = ObjectRef<DeserializeGuard<CachedTenant>>> + Send + 'static {
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

/// The resync of healthy tenants: every [`SWEEP_TICK`] one of `period / SWEEP_TICK` shares of
/// the cached tenants (by a hash of the name) is triggered, so each tenant is reconciled again
/// about once per `period` and the work is spread evenly over it. Nothing is kept per tenant
/// between ticks — a requeue per tenant would hold an entry in the controller's scheduler for
/// every healthy tenant (about 1 KiB each, 100 MiB at 100k tenants) for the whole period.
pub fn resync_sweep(
    tenants: Store<DeserializeGuard<CachedTenant>>,
    period: Duration,
) -> impl Stream<Item = ObjectRef<DeserializeGuard<CachedTenant>>> + Send + 'static {
    let shares = sweep_shares(period);
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_TICK, SWEEP_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks = futures::stream::unfold((every, 0u64), |(mut every, n)| async move {
        every.tick().await;
        Some((n, (every, n.wrapping_add(1))))
    });
    ticks.flat_map(move |n| {
        let share = n % shares;
        let due: Vec<_> = tenants
            .state()
            .iter()
            .map(|guard| guard.name_any())
            .filter(|name| share_of(name, shares) == share)
            .map(|name| ObjectRef::new(&name))
            .collect();
        futures::stream::iter(due)
    })
}

/// Into how many shares the sweep splits the tenants so it goes round once per `period`.
fn sweep_shares(period: Duration) -> u64 {
    (period.as_secs() / SWEEP_TICK.as_secs()).max(1)
}

/// Which of `shares` shares the tenant `name` is swept in (stable for the process).
fn share_of(name: &str, shares: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish() % shares
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

    #[test]
    fn the_sweep_goes_round_the_tenants_once_per_resync_in_even_shares() {
        let shares = sweep_shares(Duration::from_secs(300));
        assert_eq!(shares, 60, "one share every 5 s");
        let mut sizes = vec![0u32; shares as usize];
        for i in 0..60_000 {
            let name = format!("tenant-{i}");
            let share = share_of(&name, shares);
            assert_eq!(share, share_of(&name, shares), "stable");
            sizes[share as usize] += 1;
        }
        let (least, most) = (sizes.iter().min(), sizes.iter().max());
        // 1,000 a share on average: a fair hash keeps every share within a few percent of it.
        assert!(
            least >= Some(&900) && most <= Some(&1100),
            "uneven shares: {least:?}..{most:?}"
        );
    }

    #[test]
    fn a_resync_shorter_than_a_tick_sweeps_everything_every_tick() {
        assert_eq!(sweep_shares(Duration::from_secs(1)), 1);
        assert_eq!(share_of("any", 1), 0);
    }
}
