//! An immutable, indexed view of one routing table: what the request path reads. Built off the
//! request path when a table arrives; a lookup is one hash probe and no allocation.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use cellstack_api::{
    routing::{CellRoute, EdgeLimit, RoutingTable, TenantRoute},
    shard::LaneSet,
};

/// Where a table came from, for logs and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The last-known-good copy on local disk, loaded at start.
    Disk,
    /// A plain file (outside Kubernetes, tests).
    File,
    /// The objects the operator publishes.
    Kubernetes,
}

/// One tenant's route, resolved.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub tenant: &'a TenantRoute,
    pub cell: &'a CellRoute,
    /// The tenant's k lanes in its cell.
    pub lanes: LaneSet,
    pub edge_limit: Option<&'a EdgeLimit>,
}

#[derive(Debug)]
pub struct Snapshot {
    table: RoutingTable,
    /// Tenant id → position in `table.tenants`.
    index: HashMap<String, usize>,
    /// Each tenant's lanes, computed once per table rather than per request.
    lanes: Vec<LaneSet>,
    /// Cell names, shared with metric labels so the request path does not copy them.
    cell_names: Vec<Arc<str>>,
    pub origin: Origin,
    pub received: SystemTime,
}

impl Snapshot {
    /// Indexes a validated table (tables come from `RoutingTable::decode`, which validates).
    pub fn new(table: RoutingTable, origin: Origin, received: SystemTime) -> Self {
        let index = table
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str().to_owned(), i))
            .collect();
        let lanes = table.tenants.iter().map(|t| table.lanes(t)).collect();
        let cell_names = table
            .cells
            .iter()
            .map(|c| Arc::from(c.name.as_str()))
            .collect();
        Self {
            table,
            index,
            lanes,
            cell_names,
            origin,
            received,
        }
    }

    pub fn version(&self) -> u64 {
        self.table.version
    }

    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The name of cell number `i`, shared.
    pub fn cell_name(&self, i: usize) -> Option<&Arc<str>> {
        self.cell_names.get(i)
    }

    pub fn tenants(&self) -> usize {
        self.table.tenants.len()
    }

    /// The route of `tenant`, if the table knows it.
    pub fn route(&self, tenant: &str) -> Option<Route<'_>> {
        let i = *self.index.get(tenant)?;
        let t = &self.table.tenants[i];
        Some(Route {
            tenant: t,
            cell: &self.table.cells[t.cell as usize],
            lanes: self.lanes[i],
            edge_limit: t.edge_limit.map(|l| &self.table.edge_limits[l as usize]),
        })
    }

    /// How long since the operator built the table, by the operator's clock when it compiled it.
    /// Not a staleness: an unchanged table is never rebuilt, so this grows in a quiet, healthy
    /// system (see [`crate::freshness`] for what is).
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        let created =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.table.created_unix_ms);
        now.duration_since(created).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use cellstack_api::{
        routing::{CellRoute, CellState, EdgeLimit, RoutingTable, TenantRoute},
        tenant::TenantId,
    };

    /// A table of `n` tenants over two cells (`alpha` with 4 lanes and k = 2, `bravo` with 2
    /// lanes and k = 1); even tenants have an edge limit.
    pub fn table(version: u64, n: usize) -> RoutingTable {
        let cell = |name: &str, lanes: usize, k: u32| CellRoute {
            name: name.into(),
            zone: None,
            state: CellState::Active,
            lanes: (0..lanes)
                .map(|i| format!("127.0.0.1:{}", 9000 + i))
                .collect(),
            shard_size: k,
            shard_seed: 0,
        };
        let tenants = (0..n)
            .map(|i| TenantRoute {
                id: TenantId::parse(&format!("t{i}")).unwrap(),
                cell: (i % 2) as u32,
                epoch: 1,
                shard_variant: 0,
                edge_limit: (i % 2 == 0).then_some(0),
            })
            .collect();
        let limit = EdgeLimit {
            requests: 10,
            period_ms: 1000,
            burst: 10,
        };
        RoutingTable::canonical(
            version,
            1_700_000_000_000,
            vec![cell("alpha", 4, 2), cell("bravo", 2, 1)],
            vec![limit],
            tenants,
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_resolves_to_its_cell_and_lanes() {
        let table = fixtures::table(1, 50);
        let snap = Snapshot::new(table.clone(), Origin::File, SystemTime::now());
        for t in &table.tenants {
            let route = snap.route(t.id.as_str()).unwrap();
            assert_eq!(route.cell.name, table.cell(t).name);
            assert_eq!(route.lanes, table.lanes(t));
            assert_eq!(route.lanes.len(), route.cell.shard_size);
            assert_eq!(route.edge_limit.is_some(), t.edge_limit.is_some());
        }
        assert!(snap.route("nobody").is_none());
        assert_eq!(snap.tenants(), 50);
    }

    #[test]
    fn age_follows_the_compile_time() {
        let snap = Snapshot::new(fixtures::table(1, 1), Origin::Disk, SystemTime::now());
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_060_000);
        assert_eq!(snap.age(later), std::time::Duration::from_secs(60));
    }
}
