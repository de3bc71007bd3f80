//! The routing-table snapshot and its encoding.
//!
//! Encoding: `b"CSRT"`, the format version as a little-endian `u16`, then the table in
//! [postcard](https://docs.rs/postcard) (varint integers, length-prefixed strings and sequences).
//! The table is canonical before it is encoded — cells sorted by name, tenants by id, edge limits
//! deduplicated and sorted — so equal tables always encode to equal bytes, and the digest of the
//! bytes identifies the content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    shard::{self, LaneSet, ShardParams},
    tenant::TenantId,
};

/// Magic bytes at the start of an encoded table.
pub const MAGIC: &[u8; 4] = b"CSRT";
/// Version of the encoding. Readers refuse versions they do not know.
pub const FORMAT_VERSION: u16 = 1;

/// Whether a cell takes new tenants and keeps its current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CellState {
    /// Serves its tenants and takes new ones.
    Active,
    /// Serves its tenants; placement sends it no new ones.
    Cordoned,
    /// Serves its tenants while they are moved away one by one.
    Draining,
}

/// One cell as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRoute {
    pub name: String,
    pub zone: Option<String>,
    pub state: CellState,
    /// Address (`host:port`) of each lane, indexed by lane number. Its length is N.
    pub lanes: Vec<String>,
    /// k: lanes per tenant in this cell.
    pub shard_size: u32,
    /// Seed of the shard function for this cell.
    pub shard_seed: u32,
}

impl CellRoute {
    pub fn shard_params(&self) -> Result<ShardParams, shard::ShardParamsError> {
        ShardParams::new(self.lanes.len() as u32, self.shard_size, self.shard_seed)
    }
}

/// A per-tenant limit the router applies before forwarding (the cell enforces the same policy
/// authoritatively).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeLimit {
    /// Requests allowed per period.
    pub requests: u32,
    pub period_ms: u32,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: u32,
}

/// One tenant's route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRoute {
    pub id: TenantId,
    /// Index into [`RoutingTable::cells`].
    pub cell: u32,
    /// The tenant's epoch; bumps on every move.
    pub epoch: u64,
    /// Which of the tenant's candidate shards placement chose (0 by default).
    pub shard_variant: u32,
    /// Index into [`RoutingTable::edge_limits`], if the tenant has an edge limit.
    pub edge_limit: Option<u32>,
}

/// A complete, versioned routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Increases with every publication; routers never move to a lower one.
    pub version: u64,
    /// When the operator compiled it (Unix milliseconds).
    pub created_unix_ms: u64,
    pub cells: Vec<CellRoute>,
    pub edge_limits: Vec<EdgeLimit>,
    pub tenants: Vec<TenantRoute>,
}

/// A table that breaks its own invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("cell {0:?} appears more than once")]
    DuplicateCell(String),
    #[error("tenant {0:?} appears more than once")]
    DuplicateTenant(String),
    #[error("tenant {tenant:?} routes to cell #{cell}, but the table has {cells} cells")]
    UnknownCell {
        tenant: String,
        cell: u32,
        cells: usize,
    },
    #[error("tenant {tenant:?} names edge limit #{limit}, but the table has {limits}")]
    UnknownEdgeLimit {
        tenant: String,
        limit: u32,
        limits: usize,
    },
    #[error("cell {cell:?} has invalid sharding: {source}")]
    Shard {
        cell: String,
        source: shard::ShardParamsError,
    },
    #[error("edge limit #{0} has a zero rate, period or burst")]
    EmptyEdgeLimit(usize),
    #[error("the table is not in canonical order ({0}); build it with RoutingTable::canonical")]
    NotCanonical(&'static str),
    #[error("the table cannot be encoded: {0}")]
    Encode(String),
}

/// Bytes that are not an encoded routing table.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a cellstack routing table (missing CSRT header)")]
    BadMagic,
    #[error(
        "routing table format {found} is not supported by this binary (it reads format {FORMAT_VERSION}); upgrade the router"
    )]
    UnsupportedFormat { found: u16 },
    #[error("routing table body does not decode: {0}")]
    Body(#[from] postcard::Error),
    #[error("routing table decodes but is invalid: {0}")]
    Invalid(#[from] TableError),
}

impl RoutingTable {
    /// Builds a canonical table: cells sorted by name (tenant cell indices remapped), edge limits
    /// deduplicated and sorted, tenants sorted by id. Invariants are checked.
    pub fn canonical(
        version: u64,
        created_unix_ms: u64,
        cells: Vec<CellRoute>,
        edge_limits: Vec<EdgeLimit>,
        tenants: Vec<TenantRoute>,
    ) -> Result<Self, TableError> {
        // Sort cells by name, remembering where each came from to remap tenant indices.
        let cell_count = cells.len();
        let mut indexed: Vec<(usize, CellRoute)> = cells.into_iter().enumerate().collect();
        indexed.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        let mut cell_index = vec![0u32; cell_count];
        for (new, (old, _)) in indexed.iter().enumerate() {
            cell_index[*old] = new as u32;
        }
        let mut limit_set: Vec<EdgeLimit> = edge_limits.clone();
        limit_set.sort_unstable();
        limit_set.dedup();
        let limit_index: BTreeMap<EdgeLimit, u32> = limit_set
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, i as u32))
            .collect();

        let mut remapped = Vec::with_capacity(tenants.len());
        for mut t in tenants {
            let cell = cell_index.get(t.cell as usize).copied().ok_or_else(|| {
                TableError::UnknownCell {
                    tenant: t.id.to_string(),
                    cell: t.cell,
                    cells: cell_count,
                }
            })?;
            t.cell = cell;
            if let Some(l) = t.edge_limit {
                let limit =
                    edge_limits
                        .get(l as usize)
                        .ok_or_else(|| TableError::UnknownEdgeLimit {
                            tenant: t.id.to_string(),
                            limit: l,
                            limits: edge_limits.len(),
                        })?;
                t.edge_limit = Some(limit_index[limit]);
            }
            remapped.push(t);
        }
        remapped.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let cells = indexed.into_iter().map(|(_, cell)| cell).collect();
        let table = Self {
            version,
            created_unix_ms,
            cells,
            edge_limits: limit_set,
            tenants: remapped,
        };
        table.validate()?;
        Ok(table)
    }

    /// Checks every invariant a reader relies on.
    pub fn validate(&self) -> Result<(), TableError> {
        validate_cells_and_limits(&self.cells, &self.edge_limits)?;
        let mut previous = None;
        for t in &self.tenants {
            let id = t.id.as_str();
            validate_tenant(
                previous,
                id,
                t.cell,
                t.edge_limit,
                &self.cells,
                &self.edge_limits,
            )?;
            previous = Some(id);
        }
        Ok(())
    }

    /// Deterministic encoding of a valid table.
    pub fn encode(&self) -> Result<Vec<u8>, TableError> {
        self.validate()?;
        let mut out = Vec::with_capacity(16 + self.tenants.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // postcard's Vec flavor cannot fail on types without maps of non-string keys.
        let body =
            postcard::to_allocvec(self).map_err(|_| TableError::NotCanonical("unencodable"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes and validates; never returns a table that breaks an invariant.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let table: Self = postcard::from_bytes(body(bytes)?)?;
        table.validate()?;
        Ok(table)
    }

    /// The route of `tenant`, by binary search over the sorted tenants.
    pub fn tenant(&self, tenant: &str) -> Option<&TenantRoute> {
        self.tenants
            .binary_search_by(|t| t.id.as_str().cmp(tenant))
            .ok()
            .map(|i| &self.tenants[i])
    }

    pub fn cell(&self, route: &TenantRoute) -> &CellRoute {
        &self.cells[route.cell as usize]
    }

    /// The lanes of `route`'s cell that serve the tenant.
    pub fn lanes(&self, route: &TenantRoute) -> LaneSet {
        let cell = self.cell(route);
        match cell.shard_params() {
            Ok(params) => shard::lanes_for(route.id.as_str(), route.shard_variant, params),
            // Unreachable for a validated table.
            Err(_) => LaneSet::default(),
        }
    }
}

/// The encoded table's body: what follows a valid header of a format this binary reads.
pub(crate) fn body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(DecodeError::BadMagic)?;
    let (format, body) = rest.split_at_checked(2).ok_or(DecodeError::BadMagic)?;
    let found = u16::from_le_bytes([format[0], format[1]]);
    if found != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedFormat { found });
    }
    Ok(body)
}

/// The invariants of a table's cells and edge limits. With [`validate_tenant`], the one place
/// the rules live, for every form a decoded table takes ([`RoutingTable`] and
/// [`super::PackedTable`]).
pub(crate) fn validate_cells_and_limits(
    cells: &[CellRoute],
    edge_limits: &[EdgeLimit],
) -> Result<(), TableError> {
    for pair in cells.windows(2) {
        match pair[0].name.cmp(&pair[1].name) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                return Err(TableError::DuplicateCell(pair[0].name.clone()));
            }
            std::cmp::Ordering::Greater => {
                return Err(TableError::NotCanonical("cells not sorted by name"));
            }
        }
    }
    for cell in cells {
        cell.shard_params().map_err(|source| TableError::Shard {
            cell: cell.name.clone(),
            source,
        })?;
    }
    for pair in edge_limits.windows(2) {
        if pair[0] >= pair[1] {
            return Err(TableError::NotCanonical(
                "edge limits not sorted and unique",
            ));
        }
    }
    if let Some(i) = edge_limits
        .iter()
        .position(|l| l.requests == 0 || l.period_ms == 0 || l.burst == 0)
    {
        return Err(TableError::EmptyEdgeLimit(i));
    }
    Ok(())
}

/// The invariants of one tenant's route, given the id of the tenant before it (tenants are
/// sorted by id, each once) and the table's cells and edge limits it refers to.
pub(crate) fn validate_tenant(
    previous: Option<&str>,
    id: &str,
    cell: u32,
    edge_limit: Option<u32>,
    cells: &[CellRoute],
    edge_limits: &[EdgeLimit],
) -> Result<(), TableError> {
    match previous.map(|p| p.cmp(id)) {
        None | Some(std::cmp::Ordering::Less) => {}
        Some(std::cmp::Ordering::Equal) => return Err(TableError::DuplicateTenant(id.to_owned())),
        Some(std::cmp::Ordering::Greater) => {
            return Err(TableError::NotCanonical("tenants not sorted by id"));
        }
    }
    if cell as usize >= cells.len() {
        return Err(TableError::UnknownCell {
            tenant: id.to_owned(),
            cell,
            cells: cells.len(),
        });
    }
    if let Some(l) = edge_limit
        && l as usize >= edge_limits.len()
    {
        return Err(TableError::UnknownEdgeLimit {
            tenant: id.to_owned(),
            limit: l,
            limits: edge_limits.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn cell(name: &str, lanes: usize, k: u32) -> CellRoute {
        CellRoute {
            name: name.to_owned(),
            zone: Some("zone-a".into()),
            state: CellState::Active,
            lanes: (0..lanes)
                .map(|i| format!("{name}-lane-{i}.cells:8080"))
                .collect(),
            shard_size: k,
            shard_seed: 1,
        }
    }

    pub fn tenant(id: &str, cell: u32, epoch: u64) -> TenantRoute {
        TenantRoute {
            id: TenantId::parse(id).unwrap(),
            cell,
            epoch,
            shard_variant: 0,
            edge_limit: None,
        }
    }

    /// A table of `n` tenants over three cells.
    pub fn table(version: u64, n: usize) -> RoutingTable {
        let tenants = (0..n)
            .map(|i| {
                let mut t = tenant(&format!("tenant-{i}"), (i % 3) as u32, i as u64);
                t.edge_limit = (i % 2 == 0).then_some(0);
                t
            })
            .collect();
        let limits = vec![EdgeLimit {
            requests: 100,
            period_ms: 1000,
            burst: 200,
        }];
        RoutingTable::canonical(
            version,
            1_700_000_000_000,
            vec![cell("c", 4, 2), cell("a", 8, 2), cell("b", 1, 1)],
            limits,
            tenants,
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};
    use proptest::prelude::*;

    #[test]
    fn canonical_sorts_cells_and_remaps_tenants() {
        let t = RoutingTable::canonical(
            1,
            0,
            vec![cell("zeta", 2, 1), cell("alpha", 2, 1)],
            vec![],
            vec![tenant("b", 0, 1), tenant("a", 1, 1)],
        )
        .unwrap();
        assert_eq!(t.cells[0].name, "alpha");
        assert_eq!(t.tenants[0].id.as_str(), "a");
        assert_eq!(t.cell(t.tenant("a").unwrap()).name, "alpha");
        assert_eq!(t.cell(t.tenant("b").unwrap()).name, "zeta");
        assert!(t.tenant("c").is_none());
    }

    #[test]
    fn round_trips_and_refuses_broken_input() {
        let table = table(7, 100);
        let bytes = table.encode().unwrap();
        assert_eq!(RoutingTable::decode(&bytes).unwrap(), table);
        assert!(matches!(
            RoutingTable::decode(b"nope"),
            Err(DecodeError::BadMagic)
        ));
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(matches!(
            RoutingTable::decode(&future),
            Err(DecodeError::UnsupportedFormat { found: 9 })
        ));
        assert!(RoutingTable::decode(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn refuses_tables_that_break_invariants() {
        let err =
            RoutingTable::canonical(1, 0, vec![cell("a", 2, 1)], vec![], vec![tenant("x", 3, 0)]);
        assert!(matches!(err, Err(TableError::UnknownCell { cell: 3, .. })));
        let err = RoutingTable::canonical(1, 0, vec![cell("a", 2, 3)], vec![], vec![]);
        assert!(matches!(err, Err(TableError::Shard { .. })));
        let err = RoutingTable::canonical(
            1,
            0,
            vec![cell("a", 2, 1)],
            vec![],
            vec![tenant("x", 0, 0), tenant("x", 0, 1)],
        );
        assert_eq!(err, Err(TableError::DuplicateTenant("x".into())));
        let mut unsorted = table(1, 3);
        unsorted.tenants.swap(0, 1);
        assert!(matches!(
            unsorted.encode(),
            Err(TableError::NotCanonical(_))
        ));
    }

    #[test]
    fn lanes_come_from_the_shard_function() {
        let t = table(1, 10);
        let route = t.tenant("tenant-1").unwrap();
        let cell = t.cell(route);
        assert_eq!(
            t.lanes(route),
            shard::lanes_for("tenant-1", 0, cell.shard_params().unwrap())
        );
    }

    proptest! {
        /// The same content in any input order encodes to the same bytes.
        #[test]
        fn encoding_is_deterministic(n in 0usize..200, seed in any::<u64>()) {
            let a = table(3, n);
            let mut shuffled_cells = a.cells.clone();
            let mut tenants = a.tenants.clone();
            // Deterministic shuffle from the seed.
            let len = tenants.len();
            for i in 0..len {
                let j = ((seed.wrapping_mul(i as u64 + 1)) % len as u64) as usize;
                tenants.swap(i, j);
            }
            shuffled_cells.reverse();
            // Reversing cells changes indices: remap tenants to the reversed order.
            let last = shuffled_cells.len() as u32 - 1;
            for t in &mut tenants {
                t.cell = last - t.cell;
            }
            let b = RoutingTable::canonical(3, a.created_unix_ms, shuffled_cells, a.edge_limits.clone(), tenants).unwrap();
            prop_assert_eq!(a.encode().unwrap(), b.encode().unwrap());
        }
    }
}
