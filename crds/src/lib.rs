//! cellstack's API: the five custom resources and the small contracts every binary agrees on.
//!
//! This crate does no I/O. It owns, and is the only place that spells:
//! - the CRD types of `cellstack.dev/v1alpha1` and their validation ([`v1alpha1`]);
//! - tenant-id rules ([`tenant`]), header names and the answers a cell gives ([`wire`]);
//! - the tenant key layout in a cell's Redis ([`keys`]);
//! - the shuffle-shard function and its isolation figures ([`shard`]);
//! - the routing-table snapshot, its chunking and publication names ([`routing`]);
//! - the effective-policy file cells and routers read ([`policy`]) and the cell admin API
//!   ([`admin`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod crd;
pub mod health;
pub mod keys;
pub mod policy;
pub mod routing;
pub mod services;
pub mod shard;
pub mod tenant;
pub mod v1alpha1;
pub mod wire;

// Re-exported so the workspace agrees on one version of each.
pub use k8s_openapi;
pub use kube;
