//! Keeps the moves-in-progress gauges current while this replica leads: from the shared
//! TenantAssignment store, on a fixed interval (a stuck move changes nothing a watch would see).

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{core::DeserializeGuard, runtime::reflector::Store};
use tokio::sync::watch;

use crate::{cached_tenant::CachedTenant, logic::move_progress, metrics::Metrics};

/// How often the gauges are recomputed.
pub const EVERY: Duration = Duration::from_secs(10);

/// Sets the gauges every [`EVERY`] until `stop`, then zeroes them (a replica that stops leading
/// reports no moves: the new leader does).
pub async fn run(
    tenants: Store<DeserializeGuard<CachedTenant>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let state = tenants.state();
        let now = move_progress::of(
            state.iter().filter_map(|g| g.0.as_ref().ok()),
            Timestamp::now(),
        );
        metrics.moves_in_progress.set(now.count as i64);
        metrics
            .move_longest_step_seconds
            .set(now.longest_step_seconds);
    }
    metrics.moves_in_progress.set(0);
    metrics.move_longest_step_seconds.set(0.0);
}
