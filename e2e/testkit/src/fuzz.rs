//! The time each fuzz target runs for in the test command (`router/tests/fuzz.rs`,
//! `cell/tests/fuzz.rs`): bolero replays the target's corpus (`tests/__fuzz__/<target>/corpus`,
//! kept in the repository) and then feeds it generated inputs until this time is up. A panic is
//! a failing test, and bolero prints the input (and the seed to replay it).

use std::time::Duration;

/// Seconds per target in the default tier.
pub const DEFAULT_SECS: u64 = 5;
/// Seconds per target with `e2e/test-all --full`.
pub const FULL_SECS: u64 = 60;

/// `CELLSTACK_FUZZ_SECS` when set, else [`FULL_SECS`] in the full tier (`CELLSTACK_TEST_TIER`
/// `full`) and [`DEFAULT_SECS`] otherwise.
pub fn time_per_target() -> Duration {
    let secs = std::env::var("CELLSTACK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(
            if std::env::var("CELLSTACK_TEST_TIER").is_ok_and(|t| t == "full") {
                FULL_SECS
            } else {
                DEFAULT_SECS
            },
        );
    Duration::from_secs(secs)
}
