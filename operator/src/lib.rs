//! `cellstack-operator`: the control plane of cellstack. One kube-runtime controller per kind,
//! leader election through a Lease, metrics and health on one listener.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod blast_radius;
pub mod cell;
pub mod cell_admin;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controllers;
pub mod crd_check;
pub mod effective;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod metrics;
pub mod moves;
pub mod names;
pub mod placement;
pub mod policy_status;
pub mod pool_status;
pub mod pools;
pub mod publish;
pub mod resolve;
pub mod rollout;
pub mod routing;
pub mod run;
pub mod server;
pub mod tenant;
