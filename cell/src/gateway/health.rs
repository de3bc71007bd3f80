//! Health checks of the services behind the runtime: every [`INTERVAL`], each is checked
//! ([`super::Gateway::check`]) and the result kept for `/readyz` (a lane with a failing service
//! is not ready, so the kubelet reports it and the router stops sending it requests) and the
//! `cellstack_cell_service_up` gauge. A change is logged once.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::Gateway;
use crate::metrics::{Metrics, ServiceLabels};

/// How often each service is checked.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How long one check may take.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Checks every service now and then every [`INTERVAL`] until `stop` turns true.
pub async fn watch(gateway: Arc<Gateway>, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    // Every series whose labels are known now exists from the start, at zero.
    for up in &gateway.upstreams {
        let service = up.spec.name.clone();
        for kind in ["refused", "timeout", "bad_answer"] {
            let _ = metrics
                .service_errors
                .get_or_create(&crate::metrics::ServiceErrorLabels {
                    service: service.clone(),
                    kind,
                });
        }
        let _ = metrics.service_duration.get_or_create(&ServiceLabels {
            service: service.clone(),
        });
        metrics
            .service_up
            .get_or_create(&ServiceLabels { service })
            .set(0);
    }
    loop {
        let results = futures::future::join_all(
            gateway
                .upstreams
                .iter()
                .map(|up| gateway.check(up, TIMEOUT)),
        )
        .await;
        for (up, result) in gateway.upstreams.iter().zip(&results) {
            if gateway.record(up, result) {
                match result {
                    Ok(()) => tracing::info!(service = %up.spec.name, "service is healthy"),
                    Err(problem) => {
                        tracing::warn!(service = %up.spec.name, %problem, "service is unhealthy: the lane is not ready")
                    }
                }
            }
            metrics
                .service_up
                .get_or_create(&ServiceLabels {
                    service: up.spec.name.clone(),
                })
                .set(i64::from(result.is_ok()));
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
