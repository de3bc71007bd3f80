//! Automatic tenant placement. Ensures a tenant placed automatically lands on an *eligible* cell —
//! ready, not cordoned, not draining, below `capacity.maxTenants`, in one of the requested zones
//! and regions, and (when a ShuffleShardPool bounds overlap) on lanes that share at most
//! `maxOverlap` lanes with every tenant already there — choosing the least utilized one by
//! weight, deterministically; and that a tenant no cell can take gets a message naming which
//! constraint eliminated which cell.
//!
//! Pure: no client, no clock. The controller builds [`CellView`]s and [`Request`]s from the
//! objects it watches and turns a [`Placement`] into status and an Event, an [`Unschedulable`]
//! into a `Placed=False` condition.
//!
//! Utilization is `tenants / weight`, compared exactly by cross-multiplication: a cell of weight
//! 200 counts as twice as roomy as one of 100. Equal utilization goes to the cell whose name sorts
//! first. [`place_all`] places tenants in tenant-id order and counts each placement before the
//! next, so a batch spreads by weight and never overfills a cell, whatever the input order.
//!
//! The overlap bound is checked incrementally per cell: two lane sets share more than `m` lanes
//! iff they share an `(m+1)`-lane subset, so each cell keeps the set of `(m+1)`-subsets of its
//! tenants' lanes and a candidate costs `C(k, m+1)` lookups, independent of how many tenants the
//! cell holds. When `C(k, m+1)` is large the cell falls back to comparing distinct lane sets.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashSet},
    fmt,
};

use cellstack_api::{
    shard::{self, LaneSet, ShardParams},
    v1alpha1::{AutomaticPlacement, Cell, condition_type},
};
use kube::ResourceExt;

use crate::cached_tenant::CachedTenant;

/// Candidate shards (variants `0..SHARD_CANDIDATES` of [`shard::lanes_for`]) tried per cell to
/// honour an overlap bound. Variant 0 is every tenant's default shard.
pub const SHARD_CANDIDATES: u32 = 16;

/// Largest `C(k, m+1)` for which a cell indexes lane subsets; above it, a candidate is compared
/// with each distinct lane set of the cell instead.
const SUBSET_INDEX_LIMIT: u64 = 4096;

/// Cells listed one by one in an [`Unschedulable`] message before the rest are counted.
const MESSAGE_CELLS: usize = 10;

/// What placement needs to know about one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellView {
    /// The Cell's name.
    pub name: String,
    /// `spec.zone`.
    pub zone: Option<String>,
    /// `spec.region`.
    pub region: Option<String>,
    /// `spec.cordoned`: serves its tenants, takes no new ones.
    pub cordoned: bool,
    /// `spec.draining`: moving its tenants away.
    pub draining: bool,
    /// Ready to take tenants: the `Ready` condition is true and the cell is not being deleted.
    pub ready: bool,
    /// `spec.capacity.maxTenants`.
    pub max_tenants: u32,
    /// `spec.capacity.weight` (a weight of 0 counts as 1).
    pub weight: u32,
    /// Tenants the cell holds now.
    pub tenants: u32,
    /// The overlap bound of the ShuffleShardPool selecting the cell, if it sets `maxOverlap`.
    pub overlap: Option<OverlapBound>,
}

/// A pool's bound on the lanes any two tenants of one cell may share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlapBound {
    /// The cell's sharding (the pool's N, k and seed).
    pub params: ShardParams,
    /// `spec.maxOverlap` of the pool.
    pub max_overlap: u32,
    /// Lane sets of the tenants already on the cell (`shard::lanes_for` of each tenant with its
    /// published shard variant).
    pub occupied: Vec<LaneSet>,
}

impl CellView {
    /// A ready, empty cell with the default capacity (1000 tenants, weight 100) and no zone.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            zone: None,
            region: None,
            cordoned: false,
            draining: false,
            ready: true,
            max_tenants: 1000,
            weight: 100,
            tenants: 0,
            overlap: None,
        }
    }

    /// The view of `cell`, which holds `tenants` tenants now (the controller counts them from
    /// the TenantAssignments). A cell is ready when its `Ready` condition is true and it has no
    /// deletion timestamp.
    pub fn from_cell(cell: &Cell, tenants: u32) -> Self {
        let ready = cell.metadata.deletion_timestamp.is_none()
            && cell.status.as_ref().is_some_and(|s| {
                crate::logic::conditions::is_true(&s.conditions, condition_type::READY)
            });
        Self {
            name: cell.name_any(),
            zone: cell.spec.zone.clone(),
            region: cell.spec.region.clone(),
            cordoned: cell.spec.cordoned,
            draining: cell.spec.draining,
            ready,
            max_tenants: cell.spec.capacity.max_tenants,
            weight: cell.spec.capacity.weight,
            tenants,
            overlap: None,
        }
    }

    /// This view with a pool's overlap bound; `occupied` are the lane sets of the cell's
    /// tenants.
    pub fn with_overlap_bound(
        mut self,
        params: ShardParams,
        max_overlap: u32,
        occupied: Vec<LaneSet>,
    ) -> Self {
        self.overlap = Some(OverlapBound {
            params,
            max_overlap,
            occupied,
        });
        self
    }

    /// Why the cell cannot take a tenant asking for `request`, ignoring the overlap bound.
    fn static_check(&self, request: &Request) -> Option<Ineligible> {
        if !request.zones.is_empty()
            && !self
                .zone
                .as_ref()
                .is_some_and(|z| request.zones.contains(z))
        {
            return Some(Ineligible::OutOfZone {
                zone: self.zone.clone(),
            });
        }
        if !request.regions.is_empty()
            && !self
                .region
                .as_ref()
                .is_some_and(|r| request.regions.contains(r))
        {
            return Some(Ineligible::OutOfRegion {
                region: self.region.clone(),
            });
        }
        if self.cordoned {
            return Some(Ineligible::Cordoned);
        }
        if self.draining {
            return Some(Ineligible::Draining);
        }
        if !self.ready {
            return Some(Ineligible::NotReady);
        }
        if self.tenants >= self.max_tenants {
            return Some(Ineligible::AtCapacity {
                tenants: self.tenants,
                max_tenants: self.max_tenants,
            });
        }
        None
    }

    /// Orders cells by utilization (`tenants / weight`, exact), then by name.
    fn cmp_utilization(&self, other: &Self) -> Ordering {
        let mine = u64::from(self.tenants) * u64::from(other.weight.max(1));
        let theirs = u64::from(other.tenants) * u64::from(self.weight.max(1));
        mine.cmp(&theirs).then_with(|| self.name.cmp(&other.name))
    }
}

/// A tenant asking for automatic placement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Request {
    /// The tenant id.
    pub tenant: String,
    /// Eligible zones; empty means any.
    pub zones: Vec<String>,
    /// Eligible regions; empty means any.
    pub regions: Vec<String>,
}

impl Request {
    /// A request of `tenant` with no zone or region constraint.
    pub fn new(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            zones: Vec::new(),
            regions: Vec::new(),
        }
    }

    /// A request of `tenant` under `constraints`.
    pub fn automatic(tenant: impl Into<String>, constraints: &AutomaticPlacement) -> Self {
        Self {
            tenant: tenant.into(),
            zones: constraints.zones.clone(),
            regions: constraints.regions.clone(),
        }
    }

    /// The request of a TenantAssignment that asks for automatic placement; `None` when it
    /// pins its tenant to a named cell.
    pub fn from_assignment(ta: &CachedTenant) -> Option<Self> {
        match (&ta.spec.cell, &ta.spec.automatic) {
            (None, Some(constraints)) => Some(Self::automatic(ta.tenant_id(), constraints)),
            _ => None,
        }
    }

    /// Only cells in `zones`.
    pub fn in_zones<S: Into<String>>(mut self, zones: impl IntoIterator<Item = S>) -> Self {
        self.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    /// Only cells in `regions`.
    pub fn in_regions<S: Into<String>>(mut self, regions: impl IntoIterator<Item = S>) -> Self {
        self.regions = regions.into_iter().map(Into::into).collect();
        self
    }

    /// " in zones [a, b] and regions [r]", or "" without constraints.
    fn scope(&self) -> String {
        let mut parts = Vec::new();
        if !self.zones.is_empty() {
            parts.push(format!("zones [{}]", self.zones.join(", ")));
        }
        if !self.regions.is_empty() {
            parts.push(format!("regions [{}]", self.regions.join(", ")));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" in {}", parts.join(" and "))
        }
    }
}

/// Where a tenant was placed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The tenant id.
    pub tenant: String,
    /// The chosen cell.
    pub cell: String,
    /// Which of the tenant's candidate shards to publish (0 unless an overlap bound needed
    /// another).
    pub shard_variant: u32,
    /// Cells that passed every constraint except the overlap bound.
    pub eligible: usize,
    /// One sentence for an Event, such as "placed on alpha: least utilized of 3 eligible cells
    /// (12/1000 tenants, weight 100)".
    pub explanation: String,
    /// The same without the counts of the moment ("placed on alpha: least utilized of 3
    /// eligible cells (weight 100)"), for the tenant's `Placed` condition: every tenant placed
    /// the same way carries the same message, which the operator's cache then holds once
    /// instead of once per tenant.
    pub summary: String,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

/// Why one cell cannot take a tenant. Variants are in the order they are checked; a cell is
/// reported with the first that applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    /// The cell's zone is not one the tenant asks for.
    OutOfZone { zone: Option<String> },
    /// The cell's region is not one the tenant asks for.
    OutOfRegion { region: Option<String> },
    /// The cell is cordoned.
    Cordoned,
    /// The cell is draining.
    Draining,
    /// The cell is not ready (or is being deleted).
    NotReady,
    /// The cell holds `max_tenants` tenants already.
    AtCapacity { tenants: u32, max_tenants: u32 },
    /// None of the tenant's candidate shards stays within the pool's overlap bound.
    OverlapBound { max_overlap: u32, candidates: u32 },
}

impl Ineligible {
    /// Position in the order of checks, which is also the order of an explanation.
    fn rank(&self) -> u8 {
        match self {
            Self::OutOfZone { .. } => 0,
            Self::OutOfRegion { .. } => 1,
            Self::Cordoned => 2,
            Self::Draining => 3,
            Self::NotReady => 4,
            Self::AtCapacity { .. } => 5,
            Self::OverlapBound { .. } => 6,
        }
    }

    /// Whether the cell is outside the zones or regions asked for (not something to fix on the
    /// cell).
    fn out_of_scope(&self) -> bool {
        matches!(self, Self::OutOfZone { .. } | Self::OutOfRegion { .. })
    }

    /// "bravo cordoned", "charlie at capacity 1000/1000", ...
    fn phrase(&self, cell: &str) -> String {
        match self {
            Self::OutOfZone { zone: Some(z) } => format!("{cell} in zone {z}"),
            Self::OutOfZone { zone: None } => format!("{cell} has no zone"),
            Self::OutOfRegion { region: Some(r) } => format!("{cell} in region {r}"),
            Self::OutOfRegion { region: None } => format!("{cell} has no region"),
            Self::Cordoned => format!("{cell} cordoned"),
            Self::Draining => format!("{cell} draining"),
            Self::NotReady => format!("{cell} not ready"),
            Self::AtCapacity {
                tenants,
                max_tenants,
            } => format!("{cell} at capacity {tenants}/{max_tenants}"),
            Self::OverlapBound {
                max_overlap,
                candidates,
            } => format!(
                "{cell} has no shard within maxOverlap {max_overlap} ({candidates} candidates tried)"
            ),
        }
    }
}

/// No cell can take the tenant. The message names, for each cell, the constraint that
/// eliminated it, cells a person can fix (cordoned, full, ...) first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Unschedulable {
    /// What was asked.
    pub request: Request,
    /// Every cell, with why it cannot take the tenant, sorted by reason then name.
    pub rejected: Vec<(String, Ineligible)>,
}

impl Unschedulable {
    /// For example "no cell in zones [eu-1a] can take tenant acme: bravo cordoned, charlie at
    /// capacity 1000/1000; 2 cells outside the zones and regions asked for (delta in zone eu-1b,
    /// echo has no zone)".
    pub fn message(&self) -> String {
        let head = format!(
            "no cell{} can take tenant {}",
            self.request.scope(),
            self.request.tenant
        );
        if self.rejected.is_empty() {
            return format!("{head}: there are no cells");
        }
        let (outside, inside): (Vec<_>, Vec<_>) = self
            .rejected
            .iter()
            .partition(|(_, why)| why.out_of_scope());
        let mut parts = Vec::new();
        if !inside.is_empty() {
            parts.push(listed(&inside));
        }
        if !outside.is_empty() {
            let plural = if outside.len() == 1 { "" } else { "s" };
            parts.push(format!(
                "{} cell{plural} outside the zones and regions asked for ({})",
                outside.len(),
                listed(&outside)
            ));
        }
        format!("{head}: {}", parts.join("; "))
    }
}

/// The first few rejections as phrases, with how many more there are.
fn listed(rejected: &[&(String, Ineligible)]) -> String {
    let shown: Vec<String> = rejected
        .iter()
        .take(MESSAGE_CELLS)
        .map(|(cell, why)| why.phrase(cell))
        .collect();
    let more = rejected.len().saturating_sub(MESSAGE_CELLS);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The lane subsets a cell's tenants occupy, for the overlap check.
#[derive(Debug, Clone)]
struct LaneIndex {
    max_overlap: u32,
    /// Every `(max_overlap + 1)`-lane subset of an occupied lane set, when that is cheap.
    subsets: Option<HashSet<u64>>,
    /// Distinct occupied lane sets, used when `subsets` is `None`.
    sets: HashSet<LaneSet>,
}

impl LaneIndex {
    fn new(bound: &OverlapBound) -> Self {
        let width = bound.max_overlap + 1;
        let cheap = shard::combinations(bound.params.shard_size, width) <= SUBSET_INDEX_LIMIT;
        let mut index = Self {
            max_overlap: bound.max_overlap,
            subsets: cheap.then(HashSet::new),
            sets: HashSet::new(),
        };
        for set in &bound.occupied {
            index.insert(*set);
        }
        index
    }

    /// Whether `set` shares more than `max_overlap` lanes with an occupied set.
    fn conflicts(&self, set: LaneSet) -> bool {
        if set.len() <= self.max_overlap {
            return false;
        }
        match &self.subsets {
            Some(subsets) => {
                let mut hit = false;
                for_each_subset(set, self.max_overlap + 1, &mut |s| {
                    hit |= subsets.contains(&s);
                });
                hit
            }
            None => self
                .sets
                .iter()
                .any(|other| other.overlap(set) > self.max_overlap),
        }
    }

    fn insert(&mut self, set: LaneSet) {
        match &mut self.subsets {
            Some(subsets) => {
                if set.len() > self.max_overlap {
                    for_each_subset(set, self.max_overlap + 1, &mut |s| {
                        subsets.insert(s);
                    });
                }
            }
            None => {
                self.sets.insert(set);
            }
        }
    }
}

/// Calls `f` with every `j`-lane subset of `set`, as a bitmask.
fn for_each_subset(set: LaneSet, j: u32, f: &mut impl FnMut(u64)) {
    fn go(lanes: &[u32], j: u32, acc: u64, f: &mut impl FnMut(u64)) {
        if j == 0 {
            f(acc);
            return;
        }
        for (i, lane) in lanes.iter().enumerate() {
            if lanes.len() - i < j as usize {
                break;
            }
            go(&lanes[i + 1..], j - 1, acc | 1 << lane, f);
        }
    }
    let lanes: Vec<u32> = set.iter().collect();
    go(&lanes, j, 0, f);
}

/// One cell with its running count and, once needed, its lane index.
#[derive(Debug, Clone)]
struct Slot {
    view: CellView,
    index: Option<LaneIndex>,
}

impl Slot {
    /// The first candidate shard of `tenant` within the cell's overlap bound (variant 0 when
    /// the cell has none), or `None`.
    fn shard_variant(&mut self, tenant: &str) -> Option<u32> {
        let Some(bound) = &self.view.overlap else {
            return Some(0);
        };
        let params = bound.params;
        let index = self.index.get_or_insert_with(|| LaneIndex::new(bound));
        (0..SHARD_CANDIDATES).find(|&v| !index.conflicts(shard::lanes_for(tenant, v, params)))
    }

    fn take(&mut self, tenant: &str, variant: u32) {
        self.view.tenants = self.view.tenants.saturating_add(1);
        if let (Some(bound), Some(index)) = (&self.view.overlap, &mut self.index) {
            index.insert(shard::lanes_for(tenant, variant, bound.params));
        }
    }
}

/// Places tenants one after another, counting each placement before the next.
#[derive(Debug, Clone)]
pub struct Placer {
    /// Sorted by name, so the first of equally utilized cells is the one whose name sorts first.
    slots: Vec<Slot>,
}

impl Placer {
    /// A placer over `cells`. Cell names are expected to be unique (they are object names).
    pub fn new(cells: impl IntoIterator<Item = CellView>) -> Self {
        let mut slots: Vec<Slot> = cells
            .into_iter()
            .map(|view| Slot { view, index: None })
            .collect();
        slots.sort_by(|a, b| a.view.name.cmp(&b.view.name));
        Self { slots }
    }

    /// The cells with their counts so far, sorted by name.
    pub fn cells(&self) -> impl Iterator<Item = &CellView> {
        self.slots.iter().map(|s| &s.view)
    }

    /// Places `request` on the least utilized eligible cell and counts it there.
    pub fn place(&mut self, request: &Request) -> Result<Placement, Unschedulable> {
        let mut rejected = Vec::new();
        let mut eligible = Vec::new();
        let mut best: Option<usize> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.view.static_check(request) {
                Some(why) => rejected.push((i, why)),
                None => {
                    eligible.push(i);
                    if best.is_none_or(|b| {
                        slot.view.cmp_utilization(&self.slots[b].view) == Ordering::Less
                    }) {
                        best = Some(i);
                    }
                }
            }
        }
        // The usual case: the least utilized cell has no bound, or honours it.
        if let Some(b) = best
            && let Some(variant) = self.slots[b].shard_variant(&request.tenant)
        {
            return Ok(self.commit(request, b, variant, eligible.len(), &[]));
        }
        // The overlap bound eliminated the best cell: try the others, least utilized first.
        eligible.sort_by(|&a, &b| self.slots[a].view.cmp_utilization(&self.slots[b].view));
        let mut skipped = Vec::new();
        for &i in &eligible {
            if let Some(variant) = self.slots[i].shard_variant(&request.tenant) {
                return Ok(self.commit(request, i, variant, eligible.len(), &skipped));
            }
            skipped.push(i);
        }
        for i in skipped {
            let max_overlap = self.slots[i]
                .view
                .overlap
                .as_ref()
                .map_or(0, |b| b.max_overlap);
            rejected.push((
                i,
                Ineligible::OverlapBound {
                    max_overlap,
                    candidates: SHARD_CANDIDATES,
                },
            ));
        }
        let mut rejected: Vec<(String, Ineligible)> = rejected
            .into_iter()
            .map(|(i, why)| (self.slots[i].view.name.clone(), why))
            .collect();
        rejected.sort_by(|a, b| a.1.rank().cmp(&b.1.rank()).then_with(|| a.0.cmp(&b.0)));
        Err(Unschedulable {
            request: request.clone(),
            rejected,
        })
    }

    fn commit(
        &mut self,
        request: &Request,
        i: usize,
        variant: u32,
        eligible: usize,
        skipped: &[usize],
    ) -> Placement {
        let slot = &self.slots[i];
        let view = &slot.view;
        let plural = if eligible == 1 { "" } else { "s" };
        let head = format!(
            "placed on {}: least utilized of {eligible} eligible cell{plural}{}",
            view.name,
            request.scope(),
        );
        let mut tail = String::new();
        if let Some(bound) = &view.overlap {
            tail.push_str(&format!(
                ", shard variant {variant} within maxOverlap {}",
                bound.max_overlap
            ));
        }
        if !skipped.is_empty() {
            let names: Vec<&str> = skipped
                .iter()
                .map(|&s| self.slots[s].view.name.as_str())
                .collect();
            tail.push_str(&format!(
                "; skipped {} (no shard within the pool's maxOverlap)",
                names.join(", ")
            ));
        }
        let placement = Placement {
            tenant: request.tenant.clone(),
            cell: view.name.clone(),
            shard_variant: variant,
            eligible,
            explanation: format!(
                "{head} ({}/{} tenants, weight {}){tail}",
                view.tenants, view.max_tenants, view.weight
            ),
            summary: format!("{head} (weight {}){tail}", view.weight),
        };
        self.slots[i].take(&request.tenant, variant);
        placement
    }
}

/// Places one tenant on the least utilized eligible cell of `cells`.
pub fn place(request: &Request, cells: &[CellView]) -> Result<Placement, Unschedulable> {
    Placer::new(cells.iter().cloned()).place(request)
}

/// Places every request, in tenant-id order, counting each placement before the next. The
/// result depends only on the set of requests and cells, not their order. A tenant requested
/// twice is placed once, with the request that sorts first.
pub fn place_all(
    requests: &[Request],
    cells: &[CellView],
) -> BTreeMap<String, Result<Placement, Unschedulable>> {
    let mut ordered: Vec<&Request> = requests.iter().collect();
    ordered.sort();
    ordered.dedup_by(|a, b| a.tenant == b.tenant);
    let mut placer = Placer::new(cells.iter().cloned());
    ordered
        .into_iter()
        .map(|r| (r.tenant.clone(), placer.place(r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use cellstack_api::v1alpha1::CellStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;

    use super::*;

    /// Fixture builders: `cell("alpha").in_zone("eu-1a").holding(12).cordoned()`.
    fn cell(name: &str) -> CellView {
        CellView::new(name)
    }

    impl CellView {
        fn in_zone(mut self, zone: &str) -> Self {
            self.zone = Some(zone.to_owned());
            self
        }
        fn in_region(mut self, region: &str) -> Self {
            self.region = Some(region.to_owned());
            self
        }
        fn holding(mut self, tenants: u32) -> Self {
            self.tenants = tenants;
            self
        }
        fn with_capacity(mut self, max_tenants: u32) -> Self {
            self.max_tenants = max_tenants;
            self
        }
        fn weighing(mut self, weight: u32) -> Self {
            self.weight = weight;
            self
        }
        fn cordoned(mut self) -> Self {
            self.cordoned = true;
            self
        }
        fn draining(mut self) -> Self {
            self.draining = true;
            self
        }
        fn not_ready(mut self) -> Self {
            self.ready = false;
            self
        }
    }

    fn tenant(id: &str) -> Request {
        Request::new(id)
    }

    fn params(n: u32, k: u32) -> ShardParams {
        ShardParams::new(n, k, 7).expect("valid shard params")
    }

    #[test]
    fn the_least_utilized_cell_is_chosen_and_explained() {
        let cells = [
            cell("alpha").holding(12),
            cell("bravo").holding(40),
            cell("charlie").holding(13),
        ];
        let p = place(&tenant("acme"), &cells).expect("placed");
        assert_eq!(p.cell, "alpha");
        assert_eq!(p.shard_variant, 0);
        assert_eq!(
            p.explanation,
            "placed on alpha: least utilized of 3 eligible cells (12/1000 tenants, weight 100)"
        );
        assert_eq!(
            p.summary,
            "placed on alpha: least utilized of 3 eligible cells (weight 100)"
        );
    }

    #[test]
    fn a_heavier_cell_counts_as_roomier() {
        // 150/200 = 0.75 is below 80/100 = 0.8.
        let cells = [
            cell("alpha").holding(80),
            cell("bravo").holding(150).weighing(200),
        ];
        assert_eq!(
            place(&tenant("acme"), &cells).expect("placed").cell,
            "bravo"
        );
    }

    #[test]
    fn equally_utilized_cells_go_to_the_name_that_sorts_first() {
        let cells = [
            cell("charlie").holding(10),
            cell("bravo").holding(20).weighing(200),
            cell("delta").holding(10),
        ];
        assert_eq!(
            place(&tenant("acme"), &cells).expect("placed").cell,
            "bravo"
        );
    }

    #[test]
    fn cordoned_draining_not_ready_and_full_cells_get_no_tenant() {
        let cells = [
            cell("alpha").cordoned(),
            cell("bravo").draining(),
            cell("charlie").not_ready(),
            cell("delta").holding(5).with_capacity(5),
            cell("echo").holding(999),
        ];
        let p = place(&tenant("acme"), &cells).expect("placed");
        assert_eq!(p.cell, "echo");
        assert_eq!(p.eligible, 1);
    }

    #[test]
    fn zones_and_regions_restrict_the_cells() {
        let cells = [
            cell("alpha").in_zone("eu-1a").in_region("eu-1"),
            cell("bravo").in_zone("eu-1b").in_region("eu-1").holding(5),
            cell("charlie")
                .in_zone("us-1a")
                .in_region("us-1")
                .holding(1),
            cell("delta"),
        ];
        let in_b = tenant("acme").in_zones(["eu-1b"]);
        assert_eq!(place(&in_b, &cells).expect("placed").cell, "bravo");
        let in_eu = tenant("acme").in_regions(["eu-1"]);
        assert_eq!(place(&in_eu, &cells).expect("placed").cell, "alpha");
        let us_or_b = tenant("acme").in_zones(["eu-1b", "us-1a"]);
        assert_eq!(place(&us_or_b, &cells).expect("placed").cell, "charlie");
    }

    #[test]
    fn an_unschedulable_tenant_is_told_which_constraint_eliminated_which_cell() {
        let cells = [
            cell("bravo").in_zone("eu-1a").cordoned(),
            cell("charlie").in_zone("eu-1a").holding(1000),
            cell("delta").in_zone("eu-1b"),
            cell("echo"),
            cell("foxtrot").in_zone("eu-1a").not_ready(),
        ];
        let err = place(&tenant("acme").in_zones(["eu-1a"]), &cells).expect_err("unschedulable");
        assert_eq!(
            err.to_string(),
            "no cell in zones [eu-1a] can take tenant acme: bravo cordoned, foxtrot not ready, \
             charlie at capacity 1000/1000; 2 cells outside the zones and regions asked for \
             (delta in zone eu-1b, echo has no zone)"
        );
        assert_eq!(
            place(&tenant("acme"), &[])
                .expect_err("no cells")
                .to_string(),
            "no cell can take tenant acme: there are no cells"
        );
    }

    #[test]
    fn a_long_list_of_rejected_cells_is_cut_short() {
        let cells: Vec<CellView> = (0..25)
            .map(|i| cell(&format!("c{i:02}")).cordoned())
            .collect();
        let message = place(&tenant("acme"), &cells)
            .expect_err("unschedulable")
            .to_string();
        assert!(message.ends_with("c09 cordoned and 15 more"), "{message}");
    }

    #[test]
    fn a_batch_counts_each_placement_before_the_next() {
        let cells = [
            cell("alpha").with_capacity(2),
            cell("bravo").holding(1).with_capacity(2),
        ];
        let requests: Vec<Request> = ["a", "b", "c", "d"].into_iter().map(tenant).collect();
        let placed = place_all(&requests, &cells);
        let cells_of: Vec<Option<&str>> = placed
            .values()
            .map(|r| r.as_ref().ok().map(|p| p.cell.as_str()))
            .collect();
        assert_eq!(
            cells_of,
            [Some("alpha"), Some("alpha"), Some("bravo"), None]
        );
        let d = placed["d"].as_ref().expect_err("no room left");
        assert_eq!(
            d.rejected,
            [
                (
                    "alpha".to_owned(),
                    Ineligible::AtCapacity {
                        tenants: 2,
                        max_tenants: 2
                    }
                ),
                (
                    "bravo".to_owned(),
                    Ineligible::AtCapacity {
                        tenants: 2,
                        max_tenants: 2
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_tenant_requested_twice_is_placed_once() {
        let requests = [tenant("acme").in_zones(["z"]), tenant("acme")];
        let placed = place_all(&requests, &[cell("alpha").in_zone("z").with_capacity(1)]);
        assert_eq!(placed.len(), 1);
        assert_eq!(placed["acme"].as_ref().expect("placed").cell, "alpha");
    }

    #[test]
    fn a_cell_view_reads_the_cell_and_its_ready_condition() {
        let mut c: Cell = serde_json::from_value(serde_json::json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell",
            "metadata": { "name": "alpha" },
            "spec": { "zone": "eu-1a", "region": "eu-1", "cordoned": true,
                      "capacity": { "maxTenants": 50, "weight": 200 } },
        }))
        .expect("cell deserializes");
        let view = CellView::from_cell(&c, 7);
        assert_eq!(
            view,
            CellView {
                zone: Some("eu-1a".into()),
                region: Some("eu-1".into()),
                cordoned: true,
                ready: false,
                max_tenants: 50,
                weight: 200,
                tenants: 7,
                ..CellView::new("alpha")
            }
        );
        c.status = Some(CellStatus {
            conditions: vec![Condition {
                type_: condition_type::READY.into(),
                status: "True".into(),
                reason: "AllLanesReady".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..CellStatus::default()
        });
        assert!(CellView::from_cell(&c, 0).ready);
        c.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(
            !CellView::from_cell(&c, 0).ready,
            "a cell being deleted takes no tenant"
        );
    }

    #[test]
    fn only_automatic_assignments_make_requests() {
        let automatic: CachedTenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": { "name": "acme" },
            "spec": { "tenantId": "acme", "automatic": { "zones": ["eu-1a"], "regions": ["eu-1"] } },
        }))
        .expect("assignment deserializes");
        assert_eq!(
            Request::from_assignment(&automatic),
            Some(tenant("acme").in_zones(["eu-1a"]).in_regions(["eu-1"]))
        );
        let mut pinned = automatic;
        pinned.spec.automatic = None;
        pinned.spec.cell = Some("alpha".into());
        assert_eq!(Request::from_assignment(&pinned), None);
    }

    #[test]
    fn an_overlap_bound_picks_another_shard_variant() {
        // N=8, k=2, at most 1 shared lane: two tenants on the same pair are refused.
        let p = params(8, 2);
        let taken = shard::lanes_for("acme", 0, p);
        let cells = [cell("alpha")
            .holding(1)
            .with_overlap_bound(p, 1, vec![taken])];
        let placed = place(&tenant("acme"), &cells).expect("placed");
        assert_ne!(placed.shard_variant, 0);
        let lanes = shard::lanes_for("acme", placed.shard_variant, p);
        assert!(lanes.overlap(taken) <= 1);
        assert!(
            placed.explanation.contains("within maxOverlap 1"),
            "{}",
            placed.explanation
        );
    }

    #[test]
    fn a_cell_whose_lanes_are_all_taken_is_skipped_for_the_overlap_bound() {
        // N=2, k=1, no shared lane allowed: two tenants fill the cell's lanes.
        let p = params(2, 1);
        let full = cell("alpha").with_overlap_bound(p, 0, vec![LaneSet(0b01), LaneSet(0b10)]);
        let placed = place(&tenant("acme"), &[full.clone(), cell("bravo").holding(500)])
            .expect("placed on bravo");
        assert_eq!(placed.cell, "bravo");
        assert!(
            placed
                .explanation
                .ends_with("; skipped alpha (no shard within the pool's maxOverlap)")
        );
        let err = place(&tenant("acme"), &[full]).expect_err("unschedulable");
        assert_eq!(
            err.to_string(),
            "no cell can take tenant acme: alpha has no shard within maxOverlap 0 (16 candidates tried)"
        );
    }

    #[test]
    fn the_subset_index_and_the_pairwise_fallback_agree() {
        let p = params(64, 20);
        let occupied: Vec<LaneSet> = (0..30)
            .map(|i| shard::lanes_for(&format!("t{i}"), 0, p))
            .collect();
        for max_overlap in [2, 12] {
            let bound = OverlapBound {
                params: p,
                max_overlap,
                occupied: occupied.clone(),
            };
            let index = LaneIndex::new(&bound);
            // C(20, 3) = 1140 is indexed; C(20, 13) = 77520 is not.
            assert_eq!(index.subsets.is_some(), max_overlap == 2);
            for i in 0..50 {
                let candidate = shard::lanes_for(&format!("new{i}"), 0, p);
                let pairwise = occupied.iter().any(|o| o.overlap(candidate) > max_overlap);
                assert_eq!(index.conflicts(candidate), pairwise);
            }
        }
    }

    #[test]
    fn a_thousand_tenants_spread_within_every_cells_capacity() {
        let cells: Vec<CellView> = (0..8)
            .map(|i| {
                cell(&format!("cell-{i}"))
                    .with_capacity(200)
                    .weighing(100 + 300 * (i % 2))
            })
            .chain([cell("cordoned").cordoned()])
            .collect();
        let requests: Vec<Request> = (0..1000).map(|i| tenant(&format!("tenant-{i}"))).collect();
        let placed = place_all(&requests, &cells);
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for result in placed.values() {
            *counts
                .entry(&result.as_ref().expect("room for all").cell)
                .or_default() += 1;
        }
        assert!(!counts.contains_key("cordoned"));
        assert!(counts.values().all(|&n| n <= 200));
        assert_eq!(counts.values().sum::<u32>(), 1000);
        // Tenants spread in proportion to weight: 200 on each weight 400 cell, 50 on the others.
        for (i, n) in counts.values().enumerate() {
            assert_eq!(*n, if i % 2 == 1 { 200 } else { 50 }, "cell-{i}");
        }
    }

    #[test]
    fn a_hundred_thousand_tenants_spread_over_a_hundred_cells() {
        // Not a timing assertion (that is the benchmark's job): it shows the scale is handled.
        let cells: Vec<CellView> = (0..100)
            .map(|i| {
                cell(&format!("cell-{i:03}"))
                    .with_capacity(1000)
                    .weighing(100 + i % 3)
            })
            .collect();
        let requests: Vec<Request> = (0..100_000).map(|i| tenant(&format!("t{i}"))).collect();
        let placed = place_all(&requests, &cells);
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for p in placed.values() {
            *counts
                .entry(&p.as_ref().expect("exactly enough room").cell)
                .or_default() += 1;
        }
        assert!(counts.values().all(|&n| n == 1000));
    }

    #[test]
    fn ten_thousand_tenants_place_within_an_overlap_bound() {
        // The per-cell subset index makes each check C(4, 3) = 4 lookups, however full the cell.
        let p = params(64, 4);
        let cells: Vec<CellView> = (0..20)
            .map(|i| {
                cell(&format!("cell-{i:02}"))
                    .with_capacity(1000)
                    .with_overlap_bound(p, 2, vec![])
            })
            .collect();
        let requests: Vec<Request> = (0..10_000).map(|i| tenant(&format!("t{i}"))).collect();
        let mut by_cell: BTreeMap<String, Vec<LaneSet>> = BTreeMap::new();
        for placed in place_all(&requests, &cells).into_values() {
            let placed = placed.expect("room for all");
            let lanes = shard::lanes_for(&placed.tenant, placed.shard_variant, p);
            by_cell.entry(placed.cell).or_default().push(lanes);
        }
        for sets in by_cell.values() {
            assert!(shard::worst_overlap(sets) <= 2);
        }
    }

    // --- properties ---

    fn arb_cell(i: usize) -> impl Strategy<Value = CellView> {
        (
            0u32..3,
            proptest::option::of(0u32..2),
            any::<bool>(),
            (0u32..8, 0u32..8, 0u32..8),
            1u32..60,
            1u32..4,
            0u32..30,
        )
            .prop_map(
                move |(zone, region, ready, flags, max, weight, tenants)| CellView {
                    name: format!("cell-{i}"),
                    zone: (zone > 0).then(|| format!("z{zone}")),
                    region: region.map(|r| format!("r{r}")),
                    cordoned: flags.0 == 0,
                    draining: flags.1 == 0,
                    ready: ready || flags.2 > 0,
                    max_tenants: max,
                    weight: weight * 100,
                    tenants: tenants.min(max),
                    overlap: None,
                },
            )
    }

    fn arb_cells() -> impl Strategy<Value = Vec<CellView>> {
        (0usize..8).prop_flat_map(|n| (0..n).map(arb_cell).collect::<Vec<_>>())
    }

    fn arb_requests() -> impl Strategy<Value = Vec<Request>> {
        proptest::collection::vec(
            (
                0u32..200,
                proptest::collection::vec(1u32..3, 0..2),
                proptest::collection::vec(0u32..2, 0..2),
            ),
            0..150,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .map(|(id, zones, regions)| {
                    tenant(&format!("t{id}"))
                        .in_zones(zones.into_iter().map(|z| format!("z{z}")))
                        .in_regions(regions.into_iter().map(|r| format!("r{r}")))
                })
                .collect()
        })
    }

    fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
        let mut out = items.to_vec();
        let len = out.len();
        for i in 0..len {
            let j = (seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64)
                >> 7) as usize
                % len;
            out.swap(i, j);
        }
        out
    }

    proptest! {
        /// Placement never overfills a cell and never uses one the tenant may not go to.
        #[test]
        fn placements_honour_every_constraint(cells in arb_cells(), requests in arb_requests()) {
            let placed = place_all(&requests, &cells);
            let mut counts: BTreeMap<&str, u32> = cells.iter().map(|c| (c.name.as_str(), c.tenants)).collect();
            for (id, result) in &placed {
                let request = requests.iter().filter(|r| &r.tenant == id).min().expect("requested");
                match result {
                    Ok(p) => {
                        let c = cells.iter().find(|c| c.name == p.cell).expect("a known cell");
                        prop_assert!(!c.cordoned && !c.draining && c.ready);
                        prop_assert!(request.zones.is_empty() || c.zone.as_ref().is_some_and(|z| request.zones.contains(z)));
                        prop_assert!(request.regions.is_empty() || c.region.as_ref().is_some_and(|r| request.regions.contains(r)));
                        *counts.get_mut(p.cell.as_str()).expect("counted") += 1;
                    }
                    Err(e) => {
                        prop_assert_eq!(e.rejected.len(), cells.len());
                        prop_assert!(!e.to_string().is_empty());
                    }
                }
            }
            for c in &cells {
                let after = counts[c.name.as_str()];
                prop_assert!(after <= c.max_tenants, "{} holds {after} of {}", c.name, c.max_tenants);
            }
        }

        /// The same requests and cells in any order give the same placements.
        #[test]
        fn placement_is_independent_of_input_order(cells in arb_cells(), requests in arb_requests(), seed in any::<u64>()) {
            let a = place_all(&requests, &cells);
            let b = place_all(&shuffled(&requests, seed), &shuffled(&cells, seed ^ 0x5555));
            prop_assert_eq!(a, b);
        }

        /// Without zone constraints a batch spreads by weight: every cell that got a tenant was,
        /// when it got its last one, no more utilized than any cell still open at the end.
        #[test]
        fn a_batch_is_balanced_by_weight(
            cells in proptest::collection::vec((1u32..5, 0u32..20, 1u32..400), 1..8),
            n in 0usize..400,
        ) {
            let cells: Vec<CellView> = cells.into_iter().enumerate()
                .map(|(i, (w, t, max))| cell(&format!("cell-{i}")).weighing(w * 50).holding(t.min(max)).with_capacity(max))
                .collect();
            let requests: Vec<Request> = (0..n).map(|i| tenant(&format!("t{i}"))).collect();
            let placed = place_all(&requests, &cells);
            let mut got: BTreeMap<&str, u32> = BTreeMap::new();
            for p in placed.values().flatten() {
                *got.entry(p.cell.as_str()).or_default() += 1;
            }
            let end = |c: &CellView| c.tenants + got.get(c.name.as_str()).copied().unwrap_or(0);
            for i in cells.iter().filter(|c| got.contains_key(c.name.as_str())) {
                for j in cells.iter().filter(|c| end(c) < c.max_tenants) {
                    // (t_i - 1) / w_i <= t_j / w_j
                    prop_assert!(
                        u64::from(end(i) - 1) * u64::from(j.weight) <= u64::from(end(j)) * u64::from(i.weight),
                        "{} ended at {}/{}, {} at {}/{}", i.name, end(i), i.weight, j.name, end(j), j.weight
                    );
                }
            }
            // A tenant is refused only when every cell is full.
            if placed.values().any(Result::is_err) {
                prop_assert!(cells.iter().all(|c| end(c) >= c.max_tenants));
            }
        }

    }

    proptest! {
        // Each case may try every candidate shard on every cell: fewer cases keep it quick.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With an overlap bound, every cell's tenants stay within it, as the crds/ function
        /// measures.
        #[test]
        fn placements_stay_within_the_overlap_bound(
            n in 1u32..=12, k_frac in 0.0f64..1.0, m_frac in 0.0f64..1.0, tenants in 0usize..120, cells in 1usize..4,
        ) {
            let k = 1 + ((f64::from(n) - 1.0) * k_frac) as u32;
            let m = ((f64::from(k) - 1.0) * m_frac) as u32;
            let p = params(n, k);
            let views: Vec<CellView> = (0..cells).map(|i| cell(&format!("c{i}")).with_overlap_bound(p, m, vec![])).collect();
            let requests: Vec<Request> = (0..tenants).map(|i| tenant(&format!("t{i}"))).collect();
            let mut by_cell: BTreeMap<String, Vec<LaneSet>> = BTreeMap::new();
            for p_ in place_all(&requests, &views).into_values().flatten() {
                by_cell.entry(p_.cell).or_default().push(shard::lanes_for(&p_.tenant, p_.shard_variant, p));
            }
            for sets in by_cell.values() {
                prop_assert!(shard::worst_overlap_pairwise(sets) <= m);
            }
        }
    }
}
