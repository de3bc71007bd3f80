//! cellstack's router: the data-plane edge that sends every tenant's requests to its cell,
//! from a locally cached routing table, without asking the control plane on the request path.
//!
//! Built so far: the indexed snapshot the request path reads ([`snapshot`]) and the table store
//! with forward-only swaps and the last-known-good copy on disk ([`table_store`]). The request
//! path, the sources and the resilience layers follow (issue 6).
#![forbid(unsafe_code)]

pub mod identify;
pub mod lanes;
pub mod snapshot;
pub mod table_store;
