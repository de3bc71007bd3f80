//! The cellstack cell runtime: what runs in every lane of every cell.
//!
//! A request for a tenant passes admission in explicit phases ([`api`]) — identify, tenant state
//! and epoch ([`tenant_state`]), rate limits ([`limiter`]), load shedding ([`shed`]) — before the
//! reference tenant service handles it against the cell's Redis ([`store`]). The admin listener
//! ([`admin`]) serves health, metrics and the tenant admin API that moves tenants.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod breaker;
pub mod config;
pub mod datastore_init;
pub mod error;
pub mod gateway;
pub mod limit_batch;
pub mod limiter;
pub mod metrics;
pub mod policy_file;
pub mod run;
pub mod scripts;
pub mod shed;
pub mod store;
pub mod tenant_metrics;
pub mod tenant_state;
