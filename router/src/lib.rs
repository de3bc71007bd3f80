//! cellstack's router: the data-plane edge that sends every tenant's requests to its cell,
//! from a locally cached routing table, without asking the control plane on the request path.
//!
//! - [`proxy`]: the request path in explicit phases;
//! - [`upstream`]: connections to lanes (HTTP/1.1 driven from the request's task, or h2);
//! - [`identify`], [`jwt`], [`lanes`]: tenant identification (from a verified token, or a
//!   header, host or path the client sends) and lane choice with outlier ejection;
//! - [`snapshot`], [`table_store`]: the indexed table the request path reads, swapped forward
//!   only and kept on disk as the last-known-good copy;
//! - [`background`]: table work kept out of the request path's way (lower priority, the
//!   replaced table freed on a thread of its own);
//! - [`sources`]: where tables come from (a file, the Kubernetes objects the operator publishes);
//! - [`freshness`]: how long ago the table served was last confirmed current, against a bound;
//! - [`serve`]: the traffic listener, hyper calling [`proxy::handle`] directly.
// One unsafe call, documented where it is: sched_setattr(2) in `background`.
#![deny(unsafe_code)]

pub mod background;
pub mod client_limit;
pub mod config;
pub mod freshness;
pub mod identify;
pub mod jwt;
pub mod lanes;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod serve;
pub mod snapshot;
pub mod sources;
pub mod table_store;
pub mod upstream;
