//! A Cell's stack and status as pure functions: [`desired`] builds every object of the stack
//! (the managed datastore's in [`datastore`]),
//! [`status`] computes the status from what was observed, [`tenants`] says which tenants a cell
//! holds.

pub mod datastore;
pub mod desired;
pub mod lane_tls;
pub mod status;
pub mod tenants;
