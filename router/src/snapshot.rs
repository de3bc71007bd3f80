//! An immutable, indexed view of one routing table: what the request path reads. Built off the
//! request path when a table arrives; a lookup is one hash probe and no allocation.
//!
//! Decoding a table and building this view of it is what a table swap costs the router's CPU,
//! and on a busy router that CPU is taken from requests (docs/router.md, "A 1M-tenant table
//! swapped in under load"). So the table is a [`PackedTable`] (every id in one buffer, not a
//! `String` each), the index holds only positions into its tenants (one allocation for the whole
//! index), and a tenant's lanes are computed when it is routed rather than for every tenant of
//! the table up front.

use std::{sync::Arc, time::SystemTime};

use ahash::RandomState;
use cellstack_api::{
    routing::{CellRoute, EdgeLimit, PackedTable, TenantEntry},
    shard::LaneSet,
};
use hashbrown::HashTable;

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
    pub tenant: &'a TenantEntry,
    pub cell: &'a CellRoute,
    /// The tenant's k lanes in its cell.
    pub lanes: LaneSet,
    pub edge_limit: Option<&'a EdgeLimit>,
}

/// A table the router cannot index.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Positions in the index are `u32`, like the table's own cell and edge-limit references.
    /// Not reachable in practice (that many tenants take hundreds of GiB), but not a panic.
    #[error("routing table has {0} tenants, more than a router indexes ({max})", max = u32::MAX)]
    TooManyTenants(usize),
}

#[derive(Debug)]
pub struct Snapshot {
    table: PackedTable,
    /// Positions of the table's tenants, found by the hash of the tenant id they point at.
    index: HashTable<u32>,
    /// Hashes ids for `index`. aHash is fast, not cryptographic; what keeps it safe here is its
    /// key: random (from the OS, through `getrandom`) and different for every snapshot, and
    /// never shown outside the process. Only the operator's ids are inserted; requests, whose
    /// ids anyone can choose, only look up, so they cannot lengthen a probe sequence, and
    /// without the key nobody can pick tenant ids in advance that collide in the index.
    hasher: RandomState,
    /// Cell names, shared with metric labels so the request path does not copy them.
    cell_names: Vec<Arc<str>>,
    pub origin: Origin,
    pub received: SystemTime,
}

impl Snapshot {
    /// Indexes a table (valid: a [`PackedTable`] is only made by decoding and validating one).
    pub fn new(
        table: PackedTable,
        origin: Origin,
        received: SystemTime,
    ) -> Result<Self, SnapshotError> {
        if u32::try_from(table.len()).is_err() {
            return Err(SnapshotError::TooManyTenants(table.len()));
        }
        let hasher = RandomState::new();
        let hash = |position: &u32| {
            table
                .id(*position as usize)
                .map_or(0, |id| hasher.hash_one(id))
        };
        // Room for every tenant up front, so building never rehashes (`hash` is then unused).
        let mut index = HashTable::with_capacity(table.len());
        for (position, (id, _)) in (0u32..).zip(table.iter()) {
            // A validated table's ids are unique (sorted strictly), so no id is looked for first.
            index.insert_unique(hasher.hash_one(id), position, hash);
        }
        let cell_names = table
            .cells()
            .iter()
            .map(|c| Arc::from(c.name.as_str()))
            .collect();
        Ok(Self {
            table,
            index,
            hasher,
            cell_names,
            origin,
            received,
        })
    }

    pub fn version(&self) -> u64 {
        self.table.version()
    }

    pub fn table(&self) -> &PackedTable {
        &self.table
    }

    /// The name of cell number `i`, shared.
    pub fn cell_name(&self, i: usize) -> Option<&Arc<str>> {
        self.cell_names.get(i)
    }

    pub fn tenants(&self) -> usize {
        self.table.len()
    }

    /// The route of `tenant`, if the table knows it. Its lanes are computed here, for this one
    /// tenant: about 0.2 µs in a cell of 8 lanes and 0.7 µs in one of 64, the most a cell has
    /// (`cargo bench -p cellstack-router --bench table` prints both), against about 0.2 s of
    /// CPU to compute them for every tenant of a 1M table each time one is swapped in.
    pub fn route(&self, tenant: &str) -> Option<Route<'_>> {
        let table = &self.table;
        let position = self.index.find(self.hasher.hash_one(tenant), |&i| {
            table.id(i as usize) == Some(tenant)
        })?;
        let (id, entry) = table.get(*position as usize)?;
        Some(Route {
            tenant: entry,
            cell: table.cell(entry)?,
            lanes: table.lanes(id, entry),
            edge_limit: table.edge_limit(entry),
        })
    }

    /// How long since the operator built the table, by the operator's clock when it compiled it.
    /// Not a staleness: an unchanged table is never rebuilt, so this grows in a quiet, healthy
    /// system (see [`crate::freshness`] for what is).
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        let created =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.table.created_unix_ms());
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
    use cellstack_api::routing::RoutingTable;
    use proptest::prelude::*;

    fn snapshot(table: &RoutingTable) -> Snapshot {
        let packed = PackedTable::decode(&table.encode().unwrap()).unwrap();
        Snapshot::new(packed, Origin::File, SystemTime::now()).unwrap()
    }

    #[test]
    fn every_tenant_resolves_to_its_cell_and_lanes() {
        let table = fixtures::table(1, 5000);
        let snap = snapshot(&table);
        for t in &table.tenants {
            let route = snap.route(t.id.as_str()).unwrap();
            assert_eq!(*route.tenant, TenantEntry::from(t));
            assert_eq!(route.cell.name, table.cell(t).name);
            assert_eq!(route.lanes, table.lanes(t));
            assert_eq!(route.lanes.len(), route.cell.shard_size);
            assert_eq!(
                route.edge_limit,
                t.edge_limit.map(|l| &table.edge_limits[l as usize])
            );
        }
        assert_eq!(snap.tenants(), 5000);
    }

    #[test]
    fn unknown_tenants_have_no_route() {
        let snap = snapshot(&fixtures::table(1, 50));
        for unknown in ["nobody", "t50", "t", "t1 ", "T1", "", "t0-"] {
            assert!(snap.route(unknown).is_none(), "{unknown:?}");
        }
        let empty = snapshot(&fixtures::table(1, 0));
        assert!(empty.route("t0").is_none());
        assert_eq!(empty.tenants(), 0);
    }

    #[test]
    fn age_follows_the_compile_time() {
        let snap = snapshot(&fixtures::table(1, 1));
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_060_000);
        assert_eq!(snap.age(later), std::time::Duration::from_secs(60));
    }

    proptest! {
        /// The index finds exactly what a binary search over the sorted tenants finds, for any
        /// id a request may carry.
        #[test]
        fn the_index_agrees_with_a_search_of_the_table(ids in proptest::collection::vec("t[0-9]{1,4}|[a-z0-9-]{0,12}", 1..50)) {
            let table = fixtures::table(1, 1000);
            let snap = snapshot(&table);
            for id in &ids {
                prop_assert_eq!(
                    snap.route(id).map(|r| *r.tenant),
                    table.tenant(id).map(TenantEntry::from)
                );
            }
        }
    }
}
