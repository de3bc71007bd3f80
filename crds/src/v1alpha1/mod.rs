//! `cellstack.dev/v1alpha1`: the custom resources.
//!
//! Validation lives in the schema, so the API server enforces it for every client: ranges,
//! enums and lengths from the types, and CEL rules (each with a message saying what is wrong and
//! what to do) for everything that crosses fields or needs a pattern.
// kube's `printcolumn(...)` repeats `type_ = "integer"` across columns, which this lint reads
// as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod cell;
mod cell_rollout;
mod common;
mod member_cluster;
mod rate_limit_policy;
mod shuffle_shard_pool;
mod tenant_assignment;

pub use cell::*;
pub use cell_rollout::*;
pub use common::*;
pub use member_cluster::*;
pub use rate_limit_policy::*;
pub use shuffle_shard_pool::*;
pub use tenant_assignment::*;

/// API group of every cellstack resource.
pub const GROUP: &str = "cellstack.dev";
/// API version of this module's resources.
pub const VERSION: &str = "v1alpha1";
