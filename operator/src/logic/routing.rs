//! Compiling the routing table from Cells, pools and TenantAssignments: pure, so what routers
//! will read is decided (and tested) without an API server.
//!
//! A cell is routable once every one of its N lanes has an address; a tenant is routed once it
//! has a cell (`status.cell`) that is routable. Everything else is left out and counted, never
//! guessed.
//!
//! Each cluster's routers read a table of their own, a *view* (docs/multicluster.md, D6): the
//! same cells, tenants, epochs, shard parameters and edge limits, but a cell's lanes at the
//! addresses the readers can reach — `status.endpoints` (ClusterIPs) for a cell in the readers'
//! own cluster, `status.crossClusterEndpoints` (node ports) for a cell in another. A cell without
//! a complete list for a view is left out of that view only.

use std::collections::BTreeMap;

use cellstack_api::{
    routing::{CellRoute, CellState, EdgeLimit, RoutingTable, TableError, TenantRoute},
    tenant::TenantId,
    v1alpha1::{Cell, ShuffleShardPool},
};
use kube::ResourceExt;

use crate::{cached_tenant::CachedTenant, logic::pools};

/// What the table left out, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Cells whose lanes do not all have an address (reachable from this view's cluster) yet.
    pub cells_not_routable: Vec<String>,
    /// Tenants not placed yet.
    pub tenants_unplaced: usize,
    /// Tenants placed on a cell that is missing or not routable.
    pub tenants_on_unroutable_cells: usize,
    /// Tenants whose id the table refuses (cannot happen for objects the API server admitted).
    pub tenants_invalid: usize,
}

/// The compiled table and what it left out.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub table: RoutingTable,
    pub skipped: Skipped,
}

/// Builds the canonical table `version` from the current objects, as routers in cluster `view`
/// (`None`: the operator's own) reach the lanes. `edge_limit` gives a tenant's edge limit, if any
/// (from the effective rate-limit policies).
pub fn compile<'a>(
    view: Option<&str>,
    version: u64,
    created_unix_ms: u64,
    cells: impl IntoIterator<Item = &'a Cell>,
    pools: &[ShuffleShardPool],
    tenants: impl IntoIterator<Item = &'a CachedTenant>,
    edge_limit: impl Fn(&str) -> Option<EdgeLimit>,
) -> Result<Compiled, TableError> {
    let mut skipped = Skipped::default();
    let mut routes = Vec::new();
    for cell in cells {
        match route_of(cell, pools, view) {
            Some(route) => routes.push(route),
            None => skipped.cells_not_routable.push(cell.name_any()),
        }
    }
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    skipped.cells_not_routable.sort();
    let index: BTreeMap<&str, u32> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();

    let mut limits: Vec<EdgeLimit> = Vec::new();
    let mut limit_index: BTreeMap<EdgeLimit, u32> = BTreeMap::new();
    let mut tenant_routes = Vec::new();
    for ta in tenants {
        let status = ta.status.as_ref();
        let Some(cell) = status.and_then(|s| s.cell.as_deref()) else {
            skipped.tenants_unplaced += 1;
            continue;
        };
        let Some(&cell_index) = index.get(cell) else {
            skipped.tenants_on_unroutable_cells += 1;
            continue;
        };
        let Ok(id) = TenantId::parse(ta.tenant_id()) else {
            skipped.tenants_invalid += 1;
            continue;
        };
        let edge = edge_limit(id.as_str()).map(|l| {
            *limit_index.entry(l).or_insert_with(|| {
                limits.push(l);
                u32::try_from(limits.len() - 1).unwrap_or(u32::MAX)
            })
        });
        tenant_routes.push(TenantRoute {
            id,
            cell: cell_index,
            epoch: status.map_or(0, |s| s.epoch),
            shard_variant: status.map_or(0, |s| s.shard_variant),
            edge_limit: edge,
        });
    }
    let table = RoutingTable::canonical(version, created_unix_ms, routes, limits, tenant_routes)?;
    Ok(Compiled { table, skipped })
}

/// The route of `cell` as seen from cluster `view`, if every lane has an address reachable
/// from there and its shape is valid.
fn route_of(cell: &Cell, pools: &[ShuffleShardPool], view: Option<&str>) -> Option<CellRoute> {
    let status = cell.status.as_ref()?;
    let shape = pools::shape(cell, pools);
    let lanes = if cell.spec.cluster.as_deref() == view {
        &status.endpoints
    } else {
        &status.cross_cluster_endpoints
    };
    if lanes.is_empty() || lanes.len() != shape.lanes as usize {
        return None;
    }
    let state = if cell.spec.draining {
        CellState::Draining
    } else if cell.spec.cordoned {
        CellState::Cordoned
    } else {
        CellState::Active
    };
    let route = CellRoute {
        name: cell.name_any(),
        zone: cell.spec.zone.clone(),
        state,
        lanes: lanes.clone(),
        shard_size: shape.shard_size,
        shard_seed: shape.seed,
    };
    route.shard_params().ok()?;
    Some(route)
}

/// Whether two tables say the same but for their version and creation time: an unchanged
/// table is not published again. Compared in place, not through copies with those two zeroed:
/// a copy holds every tenant's route, and one was made on every compile.
pub fn same_content(a: &RoutingTable, b: &RoutingTable) -> bool {
    // Every field named: a field added to the table must be decided on here.
    let RoutingTable {
        version: _,
        created_unix_ms: _,
        cells,
        edge_limits,
        tenants,
    } = a;
    *cells == b.cells && *edge_limits == b.edge_limits && *tenants == b.tenants
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{CellFixture, PoolFixture, TenantFixture};

    fn cells() -> Vec<Cell> {
        vec![
            Cell::test("bravo")
                .with_lanes(2)
                .serving(&["10.0.0.3:8080", "10.0.0.4:8080"]),
            Cell::test("alpha")
                .with_lanes(2)
                .serving(&["10.0.0.1:8080", "10.0.0.2:8080"]),
            Cell::test("new").with_lanes(2),
        ]
    }

    #[test]
    fn tenants_are_routed_to_their_cell_and_unroutable_ones_are_counted_not_guessed() {
        let tenants = [
            CachedTenant::test("t1").served_by("alpha"),
            CachedTenant::test("t2").served_by("bravo"),
            CachedTenant::test("t3").served_by("new"),
            CachedTenant::test("t4").automatic(),
        ];
        let out = compile(None, 7, 1, &cells(), &[], &tenants, |_| None).expect("compiles");
        let t = &out.table;
        assert_eq!(t.version, 7);
        assert_eq!(
            t.cells.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["alpha", "bravo"]
        );
        assert_eq!(t.cell(t.tenant("t1").expect("t1")).name, "alpha");
        assert_eq!(t.cell(t.tenant("t2").expect("t2")).name, "bravo");
        assert!(t.tenant("t3").is_none() && t.tenant("t4").is_none());
        assert_eq!(out.skipped.cells_not_routable, ["new"]);
        assert_eq!(
            (
                out.skipped.tenants_unplaced,
                out.skipped.tenants_on_unroutable_cells
            ),
            (1, 1)
        );
        // Without a pool every tenant uses every lane.
        assert_eq!(t.cells[0].shard_size, 2);
    }

    #[test]
    fn a_pool_sets_k_and_the_seed_and_a_cell_with_fewer_addresses_than_lanes_waits() {
        let pools = [ShuffleShardPool::test("p", 2, 1).with_cells(&["alpha", "bravo"])];
        let mut cells = cells();
        cells.push(Cell::test("charlie").serving(&["10.0.0.5:8080"]));
        let pools3 = [ShuffleShardPool::test("p", 2, 1).with_cells(&["alpha", "bravo", "charlie"])];
        let out = compile(None, 1, 1, &cells, &pools, &[], |_| None).expect("compiles");
        assert!(
            out.table
                .cells
                .iter()
                .filter(|c| c.name != "charlie")
                .all(|c| c.shard_size == 1)
        );
        let out = compile(None, 1, 1, &cells, &pools3, &[], |_| None).expect("compiles");
        assert!(
            out.skipped
                .cells_not_routable
                .contains(&"charlie".to_owned())
        );
    }

    #[test]
    fn edge_limits_are_shared_between_tenants_with_equal_limits() {
        let tenants = [
            CachedTenant::test("t1").served_by("alpha"),
            CachedTenant::test("t2").served_by("alpha"),
            CachedTenant::test("t3").served_by("bravo"),
        ];
        let limit = EdgeLimit {
            requests: 10,
            period_ms: 1000,
            burst: 10,
        };
        let out = compile(None, 1, 1, &cells(), &[], &tenants, |id| {
            (id != "t3").then_some(limit)
        })
        .expect("compiles");
        assert_eq!(out.table.edge_limits, [limit]);
        assert_eq!(out.table.tenant("t1").and_then(|t| t.edge_limit), Some(0));
        assert_eq!(out.table.tenant("t3").and_then(|t| t.edge_limit), None);
    }

    /// Cells in the management cluster and in member `east`, each with both kinds of address
    /// (ClusterIPs and node ports), and one in `west` with no node ports yet.
    fn cells_in_clusters() -> Vec<Cell> {
        vec![
            Cell::test("alpha")
                .with_lanes(2)
                .serving(&["10.96.0.1:8080", "10.96.0.2:8080"])
                .reachable_across_clusters_at(&["192.168.1.1:30001", "192.168.1.2:30002"]),
            Cell::test("delta")
                .with_lanes(1)
                .in_cluster("east")
                .serving(&["10.97.0.1:8080"])
                .reachable_across_clusters_at(&["192.168.2.1:30101"]),
            Cell::test("west")
                .with_lanes(1)
                .in_cluster("west")
                .serving(&["10.98.0.1:8080"]),
        ]
    }

    #[test]
    fn each_view_routes_the_same_tenants_to_lanes_its_cluster_can_reach() {
        let tenants = [
            CachedTenant::test("t1").served_by("alpha"),
            CachedTenant::test("t2").served_by("delta"),
            CachedTenant::test("t3").served_by("west"),
        ];
        let limit = EdgeLimit {
            requests: 5,
            period_ms: 1000,
            burst: 5,
        };
        let view = |cluster: Option<&str>| {
            compile(cluster, 3, 9, &cells_in_clusters(), &[], &tenants, |id| {
                (id == "t2").then_some(limit)
            })
            .expect("compiles")
        };
        let lanes = |compiled: &Compiled, cell: &str| {
            compiled
                .table
                .cells
                .iter()
                .find(|c| c.name == cell)
                .map(|c| c.lanes.clone())
        };
        let management = view(None);
        let east = view(Some("east"));
        let west = view(Some("west"));
        // Own cluster: ClusterIPs; another: node ports.
        assert_eq!(
            lanes(&management, "alpha"),
            Some(vec!["10.96.0.1:8080".into(), "10.96.0.2:8080".into()])
        );
        assert_eq!(
            lanes(&management, "delta"),
            Some(vec!["192.168.2.1:30101".into()])
        );
        assert_eq!(
            lanes(&east, "alpha"),
            Some(vec!["192.168.1.1:30001".into(), "192.168.1.2:30002".into()])
        );
        assert_eq!(lanes(&east, "delta"), Some(vec!["10.97.0.1:8080".into()]));
        // A cell with no node ports is only in its own cluster's view.
        assert_eq!(lanes(&west, "west"), Some(vec!["10.98.0.1:8080".into()]));
        assert_eq!(lanes(&management, "west"), None);
        assert_eq!(management.skipped.cells_not_routable, ["west"]);
        assert_eq!(management.skipped.tenants_on_unroutable_cells, 1);
        // Everything but the lanes is the same in every view that has the cell.
        let without_lanes = |compiled: &Compiled| {
            let mut table = compiled.table.clone();
            for cell in &mut table.cells {
                cell.lanes.clear();
            }
            table
        };
        assert_eq!(without_lanes(&management), without_lanes(&east));
        assert_eq!(
            management.table.tenant("t2").and_then(|t| t.edge_limit),
            Some(0)
        );
        assert_eq!(west.table.tenant("t3").map(|t| t.epoch), Some(0));
        assert_eq!(
            west.table.tenants.len(),
            3,
            "every cell has ClusterIPs or node ports the west routers reach"
        );
    }

    #[test]
    fn the_same_objects_in_any_order_give_the_same_table() {
        let mut tenants: Vec<_> = (0..50)
            .map(|i| {
                CachedTenant::test(&format!("t{i}")).served_by(if i % 2 == 0 {
                    "alpha"
                } else {
                    "bravo"
                })
            })
            .collect();
        let a = compile(None, 3, 9, &cells(), &[], &tenants, |_| None).expect("compiles");
        tenants.reverse();
        let mut reversed = cells();
        reversed.reverse();
        let b = compile(None, 3, 9, &reversed, &[], &tenants, |_| None).expect("compiles");
        assert_eq!(
            a.table.encode().expect("encodes"),
            b.table.encode().expect("encodes")
        );
        let later = compile(None, 4, 10, &cells(), &[], &tenants, |_| None).expect("compiles");
        assert!(same_content(&a.table, &later.table));
        tenants.pop();
        let fewer = compile(None, 4, 10, &cells(), &[], &tenants, |_| None).expect("compiles");
        assert!(!same_content(&a.table, &fewer.table));
    }
}
