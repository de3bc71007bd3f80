//! A decoded routing table laid out for a reader that keeps it whole and looks tenants up in it:
//! the router.
//!
//! [`RoutingTable`] holds a `String` per tenant id, so decoding a 1M-tenant table makes a million
//! allocations and freeing it a million more, on a router whose CPU its requests are waiting for
//! (docs/router.md, "A 1M-tenant table swapped in under load"). A [`PackedTable`] decodes the same
//! bytes into one buffer holding every id and one array of fixed-size entries, and checks the
//! same invariants through the same functions: both decoders accept exactly the same inputs (a
//! property test here and the router's fuzz target compare them).

use std::fmt;

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, Deserializer as _, SeqAccess, Visitor},
};

use super::table::{
    self, CellRoute, DecodeError, EdgeLimit, RoutingTable, TableError, TenantRoute,
};
use crate::{
    shard::{self, LaneSet},
    tenant,
};

/// A tenant's route without its id: what a reader needs once it has found the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantEntry {
    /// Index into [`PackedTable::cells`].
    pub cell: u32,
    /// The tenant's epoch; bumps on every move.
    pub epoch: u64,
    /// Which of the tenant's candidate shards placement chose.
    pub shard_variant: u32,
    /// Index into [`PackedTable::edge_limits`], if the tenant has an edge limit.
    pub edge_limit: Option<u32>,
}

impl From<&TenantRoute> for TenantEntry {
    fn from(t: &TenantRoute) -> Self {
        Self {
            cell: t.cell,
            epoch: t.epoch,
            shard_variant: t.shard_variant,
            edge_limit: t.edge_limit,
        }
    }
}

/// One tenant: where its id is in the table's buffer of ids, and its entry. 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    id_start: u32,
    /// At most [`tenant::TENANT_ID_MAX_LEN`] (40): checked when decoded.
    id_len: u8,
    entry: TenantEntry,
}

/// A valid routing table, decoded with every tenant id in one buffer. Built only by
/// [`PackedTable::decode`], so it cannot break an invariant: every entry's cell and edge limit
/// exist, tenants are sorted by id and unique, every id is a valid tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedTable {
    version: u64,
    created_unix_ms: u64,
    cells: Vec<CellRoute>,
    edge_limits: Vec<EdgeLimit>,
    /// Every tenant's id, one after the other, in the tenants' order.
    ids: String,
    /// Sorted by id.
    tenants: Vec<Packed>,
}

/// The fewest bytes one tenant takes in the encoding: a one-byte id and its length, then the
/// cell, epoch, shard variant and the edge limit's tag, one byte each. Bounds what a sequence's
/// declared length may make the decoder reserve.
const MIN_ENCODED_TENANT: usize = 6;

impl PackedTable {
    /// Decodes and validates an encoded table (the bytes [`RoutingTable::encode`] makes). Accepts
    /// and refuses exactly what [`RoutingTable::decode`] does.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let body = table::body(bytes)?;
        let mut de = postcard::Deserializer::from_bytes(body);
        let table = (&mut de).deserialize_struct(
            "RoutingTable",
            &[
                "version",
                "created_unix_ms",
                "cells",
                "edge_limits",
                "tenants",
            ],
            TableVisitor {
                body_len: body.len(),
            },
        )?;
        table.validate()?;
        Ok(table)
    }

    fn validate(&self) -> Result<(), TableError> {
        table::validate_cells_and_limits(&self.cells, &self.edge_limits)?;
        let mut previous = None;
        for (id, e) in self.iter() {
            table::validate_tenant(
                previous,
                id,
                e.cell,
                e.edge_limit,
                &self.cells,
                &self.edge_limits,
            )?;
            previous = Some(id);
        }
        Ok(())
    }

    /// Increases with every publication.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the operator compiled the table (Unix milliseconds).
    pub fn created_unix_ms(&self) -> u64 {
        self.created_unix_ms
    }

    /// Sorted by name.
    pub fn cells(&self) -> &[CellRoute] {
        &self.cells
    }

    pub fn edge_limits(&self) -> &[EdgeLimit] {
        &self.edge_limits
    }

    /// How many tenants.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The id and entry of the tenant at `position` in the table's order (by id).
    pub fn get(&self, position: usize) -> Option<(&str, &TenantEntry)> {
        let p = self.tenants.get(position)?;
        Some((self.id_of(p)?, &p.entry))
    }

    /// The id of the tenant at `position`.
    pub fn id(&self, position: usize) -> Option<&str> {
        self.id_of(self.tenants.get(position)?)
    }

    fn id_of(&self, p: &Packed) -> Option<&str> {
        let start = p.id_start as usize;
        self.ids.get(start..start + usize::from(p.id_len))
    }

    /// Every tenant's id and entry, sorted by id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &TenantEntry)> + '_ {
        self.tenants
            .iter()
            .map(|p| (self.id_of(p).unwrap_or_default(), &p.entry))
    }

    /// The entry of `tenant`, by binary search over the sorted ids. (The router indexes the
    /// table by hash instead; this is for tools and tests.)
    pub fn tenant(&self, tenant: &str) -> Option<&TenantEntry> {
        let position = self
            .tenants
            .binary_search_by(|p| self.id_of(p).unwrap_or_default().cmp(tenant))
            .ok()?;
        self.tenants.get(position).map(|p| &p.entry)
    }

    /// The cell `entry` routes to.
    pub fn cell(&self, entry: &TenantEntry) -> Option<&CellRoute> {
        self.cells.get(entry.cell as usize)
    }

    /// The edge limit `entry` names, if any.
    pub fn edge_limit(&self, entry: &TenantEntry) -> Option<&EdgeLimit> {
        self.edge_limits.get(entry.edge_limit? as usize)
    }

    /// The lanes of tenant `id`'s cell that serve it (`entry` is its entry).
    pub fn lanes(&self, id: &str, entry: &TenantEntry) -> LaneSet {
        match self.cell(entry).map(CellRoute::shard_params) {
            Some(Ok(params)) => shard::lanes_for(id, entry.shard_variant, params),
            // Unreachable for a validated table.
            _ => LaneSet::default(),
        }
    }
}

/// The same table, whatever form it was decoded into.
impl PartialEq<RoutingTable> for PackedTable {
    fn eq(&self, other: &RoutingTable) -> bool {
        self.version == other.version
            && self.created_unix_ms == other.created_unix_ms
            && self.cells == other.cells
            && self.edge_limits == other.edge_limits
            && self.len() == other.tenants.len()
            && self
                .iter()
                .zip(&other.tenants)
                .all(|((id, e), t)| id == t.id.as_str() && *e == TenantEntry::from(t))
    }
}

/// A tenant's route as encoded, its id borrowed from the bytes. The fields are
/// [`TenantRoute`]'s, in its order (the encoding has no field names).
#[derive(Deserialize)]
struct EncodedTenant<'a> {
    #[serde(borrow)]
    id: &'a str,
    cell: u32,
    epoch: u64,
    shard_variant: u32,
    edge_limit: Option<u32>,
}

/// Reads [`RoutingTable`]'s fields in its order, the tenants with [`TenantsVisitor`].
struct TableVisitor {
    body_len: usize,
}

impl<'de> Visitor<'de> for TableVisitor {
    type Value = PackedTable;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a routing table")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PackedTable, A::Error> {
        let missing = |field: usize| -> A::Error { de::Error::invalid_length(field, &"5 fields") };
        let version = seq.next_element()?.ok_or_else(|| missing(0))?;
        let created_unix_ms = seq.next_element()?.ok_or_else(|| missing(1))?;
        let cells = seq.next_element()?.ok_or_else(|| missing(2))?;
        let edge_limits = seq.next_element()?.ok_or_else(|| missing(3))?;
        let (ids, tenants) = seq
            .next_element_seed(TenantsVisitor {
                body_len: self.body_len,
            })?
            .ok_or_else(|| missing(4))?;
        Ok(PackedTable {
            version,
            created_unix_ms,
            cells,
            edge_limits,
            ids,
            tenants,
        })
    }
}

/// Reads the tenants into one buffer of ids and one array of entries. Each id is checked as
/// [`tenant::TenantId`]'s own `Deserialize` checks it, with the same error.
struct TenantsVisitor {
    body_len: usize,
}

impl<'de> DeserializeSeed<'de> for TenantsVisitor {
    type Value = (String, Vec<Packed>);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TenantsVisitor {
    type Value = (String, Vec<Packed>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of tenant routes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let declared = seq.size_hint().unwrap_or(0);
        let mut tenants = Vec::with_capacity(declared.min(self.body_len / MIN_ENCODED_TENANT));
        // The ids cannot take more than the bytes they come from; what is not used is never
        // touched (and given back below).
        let mut ids = String::with_capacity(self.body_len);
        while let Some(t) = seq.next_element::<EncodedTenant<'de>>()? {
            tenant::validate(t.id).map_err(de::Error::custom)?;
            let id_start = u32::try_from(ids.len())
                .map_err(|_| de::Error::custom("the tenant ids take more than 4 GiB"))?;
            let id_len = u8::try_from(t.id.len())
                .map_err(|_| de::Error::custom("a tenant id is longer than 255 bytes"))?;
            ids.push_str(t.id);
            tenants.push(Packed {
                id_start,
                id_len,
                entry: TenantEntry {
                    cell: t.cell,
                    epoch: t.epoch,
                    shard_variant: t.shard_variant,
                    edge_limit: t.edge_limit,
                },
            });
        }
        ids.shrink_to_fit();
        tenants.shrink_to_fit();
        Ok((ids, tenants))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::{FORMAT_VERSION, MAGIC, fixtures};
    use proptest::prelude::*;

    fn both(
        bytes: &[u8],
    ) -> (
        Result<RoutingTable, DecodeError>,
        Result<PackedTable, DecodeError>,
    ) {
        (RoutingTable::decode(bytes), PackedTable::decode(bytes))
    }

    #[test]
    fn decodes_what_the_owned_decoder_decodes() {
        let table = fixtures::table(9, 500);
        let packed = PackedTable::decode(&table.encode().unwrap()).unwrap();
        assert_eq!(packed, table);
        assert_eq!(packed.version(), 9);
        assert_eq!(packed.len(), 500);
        for (position, t) in table.tenants.iter().enumerate() {
            let entry = TenantEntry::from(t);
            assert_eq!(packed.get(position), Some((t.id.as_str(), &entry)));
            assert_eq!(packed.tenant(t.id.as_str()), Some(&entry));
            assert_eq!(packed.cell(&entry), Some(table.cell(t)));
            assert_eq!(packed.lanes(t.id.as_str(), &entry), table.lanes(t));
            assert_eq!(
                packed.edge_limit(&entry),
                t.edge_limit.map(|l| &table.edge_limits[l as usize])
            );
        }
        assert_eq!(packed.get(500), None);
        assert_eq!(packed.tenant("tenant-500"), None);
        assert_eq!(packed.tenant(""), None);
    }

    #[test]
    fn an_empty_table_decodes_empty() {
        let packed = PackedTable::decode(&fixtures::table(1, 0).encode().unwrap()).unwrap();
        assert!(packed.is_empty());
        assert_eq!(packed.iter().count(), 0);
        assert_eq!(packed.tenant("a"), None);
    }

    #[test]
    fn refuses_what_the_owned_decoder_refuses() {
        let bytes = fixtures::table(7, 20).encode().unwrap();
        assert!(matches!(
            PackedTable::decode(b"nope"),
            Err(DecodeError::BadMagic)
        ));
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(matches!(
            PackedTable::decode(&future),
            Err(DecodeError::UnsupportedFormat { found: 9 })
        ));
        assert!(matches!(
            PackedTable::decode(&bytes[..bytes.len() - 3]),
            Err(DecodeError::Body(_))
        ));
        // A table whose tenants are out of order, and one with an invalid id: hand-encoded,
        // since `canonical` builds neither.
        let mut unsorted = fixtures::table(1, 3);
        unsorted.tenants.swap(0, 2);
        let (owned, packed) = both(&encode_unchecked(&unsorted));
        assert!(matches!(
            owned,
            Err(DecodeError::Invalid(TableError::NotCanonical(_)))
        ));
        assert!(matches!(
            packed,
            Err(DecodeError::Invalid(TableError::NotCanonical(_)))
        ));
        let mut bad_id = encode_unchecked(&fixtures::table(1, 1));
        let at = bad_id
            .windows(8)
            .position(|w| w == b"tenant-0")
            .expect("the id is in the bytes");
        bad_id[at] = b'T';
        let (owned, packed) = both(&bad_id);
        assert!(matches!(owned, Err(DecodeError::Body(_))));
        assert!(matches!(packed, Err(DecodeError::Body(_))));
    }

    /// The bytes of `table` whether or not it is valid.
    fn encode_unchecked(table: &RoutingTable) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&postcard::to_allocvec(table).unwrap());
        out
    }

    proptest! {
        /// Whatever a table's bytes become — truncated, a byte overwritten, bytes appended — the
        /// two decoders both refuse them or both return the same table.
        #[test]
        fn the_two_decoders_agree(
            n in 0usize..40,
            cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0u8..4,
        ) {
            let mut bytes = fixtures::table(3, n).encode().unwrap();
            match how {
                0 => {}
                1 => bytes.truncate(cut.index(bytes.len() + 1)),
                2 => {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                _ => bytes.push(byte),
            }
            match both(&bytes) {
                (Ok(owned), Ok(packed)) => prop_assert_eq!(packed, owned),
                (Err(_), Err(_)) => {}
                (owned, packed) => prop_assert!(
                    false,
                    "the decoders disagree: owned {:?}, packed {:?}",
                    owned.map(|t| t.version),
                    packed.map(|t| t.version())
                ),
            }
        }
    }
}
