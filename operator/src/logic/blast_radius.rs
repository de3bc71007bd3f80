//! Shuffle-shard pool figures and blast radius. Ensures a ShuffleShardPool's status reports the
//! numbers the `crds/` shard functions give — C(N,k), the worst overlap between two tenants of
//! one cell, and for each cell and lane the tenants a failure there would touch — computed from
//! each tenant's published shard variant, in one pass over the tenants.
//!
//! Tenants of different cells never share a lane (each cell runs its own lanes), so overlap is
//! measured per cell and the pool's worst overlap is the largest of its cells'.

use std::collections::{BTreeMap, HashMap};

use cellstack_api::{
    shard::{self, LaneSet, ShardParams, ShardParamsError},
    v1alpha1::{PoolCellStatus, ShuffleShardPoolSpec},
};

/// The shard parameters of a pool: its N, k and seed.
pub fn params_of(spec: &ShuffleShardPoolSpec) -> Result<ShardParams, ShardParamsError> {
    ShardParams::new(spec.lanes, spec.shard_size, spec.seed)
}

/// A cell the pool selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCell {
    /// The Cell's name.
    pub name: String,
    /// Lanes whose pods are ready (`status.readyLanes` of the Cell).
    pub lanes_healthy: u32,
}

/// A tenant served by a cell, with the shard variant published for it in the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTenant<'a> {
    /// The tenant id.
    pub id: &'a str,
    /// The cell serving it.
    pub cell: &'a str,
    /// `TenantRoute::shard_variant`.
    pub shard_variant: u32,
}

/// Blast radius of one cell's lanes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellFigures {
    /// The cell.
    pub name: String,
    /// Tenants on the cell.
    pub tenants: u32,
    /// Tenants served by each lane, by lane number (N entries): what a failure of that lane
    /// touches.
    pub tenants_per_lane: Vec<u32>,
    /// Most lanes two tenants of the cell share.
    pub worst_overlap: u32,
    /// Lanes whose pods are ready, at most N.
    pub lanes_healthy: u32,
}

impl From<&CellFigures> for PoolCellStatus {
    fn from(c: &CellFigures) -> Self {
        Self {
            name: c.name.clone(),
            tenants: c.tenants,
            tenants_per_lane: c.tenants_per_lane.clone(),
            lanes_healthy: c.lanes_healthy,
        }
    }
}

/// What a pool's status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFigures {
    /// C(N,k): distinct lane sets.
    pub combinations: u64,
    /// Most lanes any two tenants of one cell share.
    pub worst_overlap: u32,
    /// Tenants on the pool's cells.
    pub tenants: u32,
    /// Ready lanes across the pool's cells.
    pub lanes_healthy: u32,
    /// Lanes across the pool's cells (cells × N).
    pub lanes_total: u32,
    /// Each cell's figures, sorted by name.
    pub cells: Vec<CellFigures>,
}

impl PoolFigures {
    /// `healthy/total`, for `kubectl get`.
    pub fn lanes_healthy_summary(&self) -> String {
        format!("{}/{}", self.lanes_healthy, self.lanes_total)
    }

    /// The per-cell blast radius as the status lists it.
    pub fn status_cells(&self) -> Vec<PoolCellStatus> {
        self.cells.iter().map(PoolCellStatus::from).collect()
    }
}

/// The figures of a pool sharded by `params` over `cells`, for `tenants`. Tenants of cells the
/// pool does not select are not the pool's and are left out. Tenant ids are expected to be
/// unique.
pub fn figures<'a>(
    params: ShardParams,
    cells: &[PoolCell],
    tenants: impl IntoIterator<Item = PoolTenant<'a>>,
) -> PoolFigures {
    let by_name: BTreeMap<&str, &PoolCell> = cells.iter().map(|c| (c.name.as_str(), c)).collect();
    let index: HashMap<&str, usize> = by_name.keys().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut sets: Vec<Vec<LaneSet>> = vec![Vec::new(); by_name.len()];
    for t in tenants {
        if let Some(&i) = index.get(t.cell) {
            sets[i].push(shard::lanes_for(t.id, t.shard_variant, params));
        }
    }
    let cells: Vec<CellFigures> = by_name
        .values()
        .zip(&sets)
        .map(|(cell, sets)| {
            let mut tenants_per_lane = vec![0u32; params.lanes as usize];
            for set in sets {
                for lane in set.iter() {
                    if let Some(count) = tenants_per_lane.get_mut(lane as usize) {
                        *count += 1;
                    }
                }
            }
            CellFigures {
                name: cell.name.clone(),
                tenants: count(sets.len()),
                tenants_per_lane,
                worst_overlap: shard::worst_overlap(sets),
                lanes_healthy: cell.lanes_healthy.min(params.lanes),
            }
        })
        .collect();
    PoolFigures {
        combinations: params.combinations(),
        worst_overlap: cells.iter().map(|c| c.worst_overlap).max().unwrap_or(0),
        tenants: cells.iter().map(|c| c.tenants).fold(0, u32::saturating_add),
        lanes_healthy: cells
            .iter()
            .map(|c| c.lanes_healthy)
            .fold(0, u32::saturating_add),
        lanes_total: count(cells.len()).saturating_mul(params.lanes),
        cells,
    }
}

/// The tenants a failure of `lane` in `cell` would touch, sorted: what the CLI lists.
pub fn tenants_on_lane<'a>(
    params: ShardParams,
    cell: &str,
    lane: u32,
    tenants: impl IntoIterator<Item = PoolTenant<'a>>,
) -> Vec<&'a str> {
    let mut ids: Vec<&str> = tenants
        .into_iter()
        .filter(|t| {
            t.cell == cell && shard::lanes_for(t.id, t.shard_variant, params).contains(lane)
        })
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// When the lanes `failed` of `cell` fail together: the tenants with at least one of them, and
/// those whose every lane is among them (they lose service), each sorted.
pub fn tenants_losing<'a>(
    params: ShardParams,
    cell: &str,
    failed: &[u32],
    tenants: impl IntoIterator<Item = PoolTenant<'a>>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut touched = Vec::new();
    let mut lose = Vec::new();
    for t in tenants.into_iter().filter(|t| t.cell == cell) {
        let lanes = shard::lanes_for(t.id, t.shard_variant, params);
        let hit = lanes.iter().filter(|l| failed.contains(l)).count();
        if hit > 0 {
            touched.push(t.id);
        }
        if hit > 0 && hit == lanes.iter().count() {
            lose.push(t.id);
        }
    }
    touched.sort_unstable();
    lose.sort_unstable();
    (touched, lose)
}

/// `n` as a status count, saturating.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use cellstack_api::{
        routing::{CellRoute, CellState, RoutingTable, TenantRoute},
        tenant::TenantId,
    };
    use proptest::prelude::*;

    use super::*;

    fn params(n: u32, k: u32) -> ShardParams {
        ShardParams::new(n, k, 11).expect("valid shard params")
    }

    /// `cell("alpha").with_healthy_lanes(3)`.
    fn cell(name: &str) -> PoolCell {
        PoolCell {
            name: name.to_owned(),
            lanes_healthy: u32::MAX,
        }
    }

    impl PoolCell {
        fn with_healthy_lanes(mut self, n: u32) -> Self {
            self.lanes_healthy = n;
            self
        }
    }

    /// Owned tenants `(id, cell, variant)`, borrowed as [`PoolTenant`]s by [`borrowed`].
    fn tenants_on(cell: &str, n: usize) -> Vec<(String, String, u32)> {
        (0..n)
            .map(|i| (format!("{cell}-t{i}"), cell.to_owned(), 0))
            .collect()
    }

    fn borrowed(owned: &[(String, String, u32)]) -> impl Iterator<Item = PoolTenant<'_>> {
        owned.iter().map(|(id, cell, v)| PoolTenant {
            id,
            cell,
            shard_variant: *v,
        })
    }

    #[test]
    fn a_pool_reports_combinations_lanes_and_per_cell_blast_radius() {
        let p = params(8, 2);
        let mut owned = tenants_on("alpha", 10);
        owned.extend(tenants_on("bravo", 3));
        owned.extend(tenants_on("elsewhere", 5));
        let f = figures(
            p,
            &[
                cell("bravo").with_healthy_lanes(6),
                cell("alpha").with_healthy_lanes(8),
            ],
            borrowed(&owned),
        );
        assert_eq!(f.combinations, 28);
        assert_eq!(
            f.tenants, 13,
            "tenants of cells outside the pool are not counted"
        );
        assert_eq!((f.lanes_healthy, f.lanes_total), (14, 16));
        assert_eq!(f.lanes_healthy_summary(), "14/16");
        assert_eq!(
            f.cells.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["alpha", "bravo"]
        );
        for c in &f.cells {
            assert_eq!(c.tenants_per_lane.len(), 8);
            assert_eq!(c.tenants_per_lane.iter().sum::<u32>(), c.tenants * 2);
        }
        let status = f.status_cells();
        assert_eq!(status[1].name, "bravo");
        assert_eq!(status[1].tenants, 3);
        assert_eq!(status[1].lanes_healthy, 6);
    }

    #[test]
    fn an_empty_pool_has_no_overlap_and_no_tenants() {
        let f = figures(params(4, 2), &[cell("alpha")], std::iter::empty());
        assert_eq!(f.worst_overlap, 0);
        assert_eq!(f.tenants, 0);
        assert_eq!(f.cells[0].tenants_per_lane, [0, 0, 0, 0]);
        assert_eq!(
            f.cells[0].lanes_healthy, 4,
            "never more healthy lanes than N"
        );
    }

    #[test]
    fn overlap_is_measured_within_a_cell_not_across_cells() {
        // The same tenant id on two cells gets the same lanes, but they are different lanes.
        let p = params(8, 3);
        let owned = vec![
            ("acme".to_owned(), "alpha".to_owned(), 0),
            ("acme".to_owned(), "bravo".to_owned(), 0),
        ];
        let f = figures(p, &[cell("alpha"), cell("bravo")], borrowed(&owned));
        assert_eq!(f.worst_overlap, 0);
    }

    #[test]
    fn the_lanes_of_a_tenant_lists_who_a_lane_failure_touches() {
        let p = params(6, 2);
        let owned = tenants_on("alpha", 40);
        let f = figures(p, &[cell("alpha")], borrowed(&owned));
        for lane in 0..6 {
            let touched = tenants_on_lane(p, "alpha", lane, borrowed(&owned));
            assert_eq!(
                touched.len() as u32,
                f.cells[0].tenants_per_lane[lane as usize]
            );
            assert!(touched.is_sorted());
        }
        assert!(tenants_on_lane(p, "bravo", 0, borrowed(&owned)).is_empty());
    }

    #[test]
    fn the_lanes_counted_are_the_lanes_the_router_uses() {
        let p = params(8, 2);
        let mut owned = tenants_on("alpha", 30);
        for (i, t) in owned.iter_mut().enumerate() {
            t.2 = (i % 3) as u32;
        }
        let f = figures(p, &[cell("alpha")], borrowed(&owned));
        let route_cell = CellRoute {
            name: "alpha".into(),
            zone: None,
            state: CellState::Active,
            lanes: (0..8).map(|i| format!("alpha-{i}:8080")).collect(),
            shard_size: p.shard_size,
            shard_seed: p.seed,
        };
        let routes = owned
            .iter()
            .map(|(id, _, v)| TenantRoute {
                id: TenantId::parse(id).expect("valid id"),
                cell: 0,
                epoch: 1,
                shard_variant: *v,
                edge_limit: None,
            })
            .collect();
        let table =
            RoutingTable::canonical(1, 0, vec![route_cell], vec![], routes).expect("valid table");
        let mut per_lane = vec![0u32; 8];
        for route in &table.tenants {
            for lane in table.lanes(route).iter() {
                per_lane[lane as usize] += 1;
            }
        }
        assert_eq!(f.cells[0].tenants_per_lane, per_lane);
    }

    #[test]
    fn a_hundred_thousand_tenants_are_counted_in_one_pass() {
        // Speed is a benchmark's business; this shows 100k tenants are handled and add up.
        let p = params(16, 3);
        let cells: Vec<PoolCell> = (0..10).map(|i| cell(&format!("cell-{i}"))).collect();
        let owned: Vec<(String, String, u32)> = (0..100_000)
            .map(|i| (format!("tenant-{i}"), format!("cell-{}", i % 10), 0))
            .collect();
        let f = figures(p, &cells, borrowed(&owned));
        assert_eq!(f.tenants, 100_000);
        assert_eq!(f.combinations, 560);
        // 10,000 tenants per cell over 560 lane sets: some share all k lanes.
        assert_eq!(f.worst_overlap, 3);
        for c in &f.cells {
            assert_eq!(c.tenants, 10_000);
            assert_eq!(c.tenants_per_lane.iter().sum::<u32>(), 30_000);
        }
    }

    proptest! {
        /// Every figure equals what the crds/ functions compute directly.
        #[test]
        fn figures_equal_the_crds_functions(
            n in 1u32..=20, k_frac in 0.0f64..1.0, seed in any::<u32>(),
            tenants in proptest::collection::vec((0u32..500, 0usize..3, 0u32..3), 0..80),
            healthy in proptest::collection::vec(0u32..25, 3),
        ) {
            let k = 1 + ((f64::from(n) - 1.0) * k_frac) as u32;
            let p = ShardParams::new(n, k, seed).expect("valid shard params");
            let names = ["alpha", "bravo", "charlie"];
            let cells: Vec<PoolCell> = names
                .iter()
                .zip(&healthy)
                .map(|(name, h)| cell(name).with_healthy_lanes(*h))
                .collect();
            let mut owned: Vec<(String, String, u32)> = tenants
                .iter()
                .map(|(i, c, v)| (format!("t{i}"), names[*c].to_owned(), *v))
                .collect();
            owned.sort();
            owned.dedup_by(|a, b| a.0 == b.0);
            let f = figures(p, &cells, borrowed(&owned));

            prop_assert_eq!(f.combinations, shard::combinations(n, k));
            let mut worst = 0;
            for (c, name) in f.cells.iter().zip(names) {
                let sets: Vec<LaneSet> = owned
                    .iter()
                    .filter(|t| t.1 == name)
                    .map(|t| shard::lanes_for(&t.0, t.2, p))
                    .collect();
                prop_assert_eq!(c.worst_overlap, shard::worst_overlap_pairwise(&sets));
                prop_assert_eq!(c.tenants as usize, sets.len());
                for lane in 0..n {
                    let on_lane = sets.iter().filter(|s| s.contains(lane)).count() as u32;
                    prop_assert_eq!(c.tenants_per_lane[lane as usize], on_lane);
                }
                worst = worst.max(c.worst_overlap);
            }
            prop_assert_eq!(f.worst_overlap, worst);
            prop_assert_eq!(f.tenants as usize, owned.len());
        }
    }

    #[test]
    fn a_lane_set_takes_down_exactly_the_tenants_whose_lanes_it_covers() {
        let p = params(6, 2);
        let owned = tenants_on("a", 200);
        let mut other = tenants_on("b", 5);
        other.extend(owned.iter().cloned());
        let failed = [0, 3];
        let (touched, lose) = tenants_losing(p, "a", &failed, borrowed(&other));
        for (id, cell, v) in &owned {
            let lanes: Vec<u32> = shard::lanes_for(id, *v, p).iter().collect();
            let all = lanes.iter().all(|l| failed.contains(l));
            let any = lanes.iter().any(|l| failed.contains(l));
            assert_eq!(
                lose.contains(&id.as_str()),
                all,
                "{id} in {cell}: {lanes:?}"
            );
            assert_eq!(touched.contains(&id.as_str()), any, "{id}: {lanes:?}");
        }
        assert!(!lose.is_empty() && lose.len() < touched.len());
        // Every lane failing takes down every tenant of the cell, and none of another cell.
        let (_, everyone) = tenants_losing(p, "a", &[0, 1, 2, 3, 4, 5], borrowed(&other));
        assert_eq!(everyone.len(), owned.len());
    }
}
