//! A Cell's stack and status as pure functions: [`desired`] builds every object of the stack
//! (the managed datastore's in [`datastore`], where the pods may run in [`scheduling`]),
//! [`status`] computes the status from what was observed, [`tenants`] says which tenants a cell
//! holds, [`ownership`] which Cell an object of a stack belongs to (an owner reference in the
//! Cell's cluster, labels in a member), [`exposure`] where other clusters reach its lanes.

pub mod datastore;
pub mod desired;
pub mod exposure;
pub mod lane_tls;
pub mod ownership;
pub mod scheduling;
pub mod status;
pub mod tenants;
