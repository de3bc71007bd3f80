//! The operator's decisions as pure functions: objects in, desired objects or verdicts out. No
//! module here talks to the API server or a cell; [`crate::controllers`] gather the inputs and
//! act on the answers, so everything here is tested without a cluster (unit and property tests).

pub mod backoff;
pub mod blast_radius;
pub mod cell;
pub mod conditions;
pub mod data_marker;
pub mod effective;
pub mod kubeconfig;
pub mod member_status;
pub mod move_history;
pub mod move_plan;
pub mod move_progress;
pub mod pki;
pub mod placement;
pub mod pools;
pub mod resolve;
pub mod rollout_gate;
pub mod rollout_plan;
pub mod routing;
