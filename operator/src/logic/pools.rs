//! Which ShuffleShardPool shapes a cell: pure, shared by the Cell controller (a pool's lane
//! count overrides the cell's) and the routing-table compiler (the pool's k and seed).

use cellstack_api::v1alpha1::{Cell, ShuffleShardPool};
use kube::ResourceExt;

/// Whether `pool` selects `cell`: by name, or by carrying every one of its `matchLabels`.
pub fn selects(pool: &ShuffleShardPool, cell: &Cell) -> bool {
    pool.spec.cells.selects(&cell.name_any(), cell.labels())
}

/// The pools selecting `cell`, by name. The first one shapes it; more than one is a conflict the
/// pools' status reports.
pub fn pools_of<'a>(
    cell: &Cell,
    pools: impl IntoIterator<Item = &'a ShuffleShardPool>,
) -> Vec<&'a ShuffleShardPool> {
    let mut selecting: Vec<_> = pools.into_iter().filter(|p| selects(p, cell)).collect();
    selecting.sort_by_key(|p| p.name_any());
    selecting
}

/// How a cell's lanes are shared out: N lanes, k per tenant, the shard seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub lanes: u32,
    pub shard_size: u32,
    pub seed: u32,
}

/// The shape of `cell`: its pool's, or without a pool its own lane count with every tenant on
/// every lane (k = N).
pub fn shape<'a>(cell: &Cell, pools: impl IntoIterator<Item = &'a ShuffleShardPool>) -> Shape {
    match pools_of(cell, pools).first() {
        Some(pool) => Shape {
            lanes: pool.spec.lanes,
            shard_size: pool.spec.shard_size.min(pool.spec.lanes),
            seed: pool.spec.seed,
        },
        None => Shape {
            lanes: cell.spec.lanes,
            shard_size: cell.spec.lanes,
            seed: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{CellFixture, PoolFixture};

    #[test]
    fn a_pool_selects_cells_by_name_or_by_all_of_its_labels() {
        let by_name = ShuffleShardPool::test("a", 8, 2).with_cells(&["alpha"]);
        let by_label =
            ShuffleShardPool::test("b", 8, 2).with_labels(&[("tier", "gold"), ("zone", "a")]);
        let alpha = Cell::test("alpha");
        let gold = Cell::test("gold").labelled(&[("tier", "gold"), ("zone", "a")]);
        let half = Cell::test("half").labelled(&[("tier", "gold")]);
        assert!(selects(&by_name, &alpha));
        assert!(!selects(&by_name, &gold));
        assert!(selects(&by_label, &gold));
        assert!(!selects(&by_label, &half));
    }

    #[test]
    fn the_first_pool_by_name_shapes_the_cell_and_without_one_every_tenant_uses_every_lane() {
        let pools = [
            ShuffleShardPool::test("zeta", 4, 1).with_cells(&["alpha"]),
            ShuffleShardPool::test("beta", 8, 2).with_cells(&["alpha"]),
        ];
        let alpha = Cell::test("alpha");
        assert_eq!(
            shape(&alpha, &pools),
            Shape {
                lanes: 8,
                shard_size: 2,
                seed: 0
            }
        );
        assert_eq!(pools_of(&alpha, &pools).len(), 2);
        let lone = Cell::test("lone").with_lanes(3);
        assert_eq!(
            shape(&lone, &pools),
            Shape {
                lanes: 3,
                shard_size: 3,
                seed: 0
            }
        );
    }
}
