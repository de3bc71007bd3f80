//! The routing table: what the operator compiles and publishes and what every router serves from.
//!
//! - [`table`]: the snapshot itself, its canonical form and deterministic binary encoding.
//! - [`packed`]: the same table decoded with every tenant id in one buffer, for the router, which
//!   keeps a whole table and would otherwise allocate (and later free) a `String` per tenant.
//! - [`chunk`]: storing an encoded snapshot (zstd-compressed or as it is) in chunks under a byte
//!   budget and reassembling them with digest checks, so a reader never uses a missing,
//!   reordered or corrupted chunk.
//! - [`publication`]: how the chunks and the pointer to the current version are named and stored
//!   as Kubernetes objects.

pub mod chunk;
pub mod packed;
pub mod publication;
pub mod table;

pub use chunk::{Chunk, ChunkDigest, ChunkError, Compression, Manifest};
pub use packed::{PackedTable, TenantEntry};
pub use table::{
    CellRoute, CellState, DecodeError, EdgeLimit, RoutingTable, TableError, TenantRoute,
};
