//! Tenant moves between cells with zero lost writes: the state machine of docs/moves.md
//! (Prepare, Copy, Fence, Catch up + Verify, Flip, Drain + Clean up), recorded step by step in
//! the TenantAssignment status so that an operator killed at any point resumes and finishes, or
//! rolls back if the move had not flipped. [`plan`] decides (pure); [`steps`] acts through the
//! cells' admin APIs; [`pause`] holds a move at one step for tests; [`progress`] keeps the
//! moves-in-progress gauges current. The operator orchestrates
//! and never carries tenant traffic.

pub mod pause;
pub mod progress;
pub mod steps;

pub use crate::logic::move_plan::Settings;
pub use steps::{Mover, Outcome};
