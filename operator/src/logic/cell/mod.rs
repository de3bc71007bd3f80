//! A Cell's stack and status as pure functions: [`desired`] builds every object of the stack
//! (the managed datastore's in [`datastore`], where the pods may run in [`scheduling`]),
//! [`status`] computes the status from what was observed, [`tenants`] says which tenants a cell
//! holds.

pub mod datastore;
pub mod desired;
pub mod lane_tls;
pub mod scheduling;
pub mod status;
pub mod tenants;
