//! `cellstack-operator`: the control plane of cellstack. One kube-runtime controller per kind,
//! leader election through a Lease, metrics and health on one listener.
//!
//! The folders show the split: [`logic`] decides (pure functions of the objects, no API calls,
//! tested without a cluster); [`controllers`] read the caches, call [`logic`], and act through
//! the API server and the cells' admin APIs ([`cell_admin`]). [`run`] wires them together;
//! [`names`] owns every name, label, port and field manager the operator writes; a [`target`] is
//! the cluster a cell's own objects live in.
// `deny`, not `forbid`: one audited call may allow it (`heap::release`, a C function).
#![deny(unsafe_code)]

pub mod backup;
pub mod cached_tenant;
pub mod cell_admin;
pub mod cli;
pub mod config;
pub mod context;
pub mod controllers;
pub mod crd_check;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod heap;
pub mod identity;
pub mod lane_client;
pub mod logic;
pub mod metrics;
pub mod names;
pub mod recorder;
pub mod run;
pub mod server;
pub mod target;
