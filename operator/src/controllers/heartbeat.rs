//! The routing heartbeat: while it leads, the operator renews the Lease
//! [`HEARTBEAT_NAME`](cellstack_api::routing::publication::HEARTBEAT_NAME) in its namespace at a
//! fixed interval, changed or not, naming the routing-table version it has published and
//! believes current. Routers count each renewal not above the version they serve as a
//! confirmation that their table is current, so their staleness means something in a quiet
//! system (an unchanged table is never republished, and the table objects are not touched for
//! this: GitOps re-apply checks of them stay quiet).
//!
//! The version comes from the publisher ([`super::publish::run`]) through a watch channel: it
//! is set only after the caches have listed and a round has published the table or found it
//! unchanged, and cleared while a round fails, so a heartbeat never vouches for a table the
//! publisher cannot keep current. Renewals run in a task of their own, each bounded by the API
//! timeout: a slow or failing renewal is counted and logged, and never delays a publication.
//! When the publisher task ends, so do the renewals.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use cellstack_api::routing::publication::{HEARTBEAT_NAME, HEARTBEAT_VERSION_ANNOTATION};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{metrics::Metrics, names::FIELD_MANAGER};

/// Renews the heartbeat Lease of one namespace.
pub struct Heartbeat {
    api: Api<Lease>,
    identity: String,
    interval: Duration,
    timeout: Duration,
}

impl Heartbeat {
    /// Renewals every `interval` (at least one second) as `identity`, each call bounded by
    /// `timeout`.
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
            interval: interval.max(Duration::from_secs(1)),
            timeout,
        }
    }

    /// Writes one renewal naming `version` (server-side apply: the first one creates the Lease).
    pub async fn renew(&self, version: u64) -> Result<(), String> {
        let lease = lease(&self.identity, version, self.interval, Timestamp::now());
        let params = PatchParams::apply(&format!("{FIELD_MANAGER}-heartbeat")).force();
        let patch = Patch::Apply(&lease);
        let call = self.api.patch(HEARTBEAT_NAME, &params, &patch);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("renewing the Lease {HEARTBEAT_NAME} failed: {e}")),
            Err(_) => Err(format!(
                "renewing the Lease {HEARTBEAT_NAME} got no answer within {:?}",
                self.timeout
            )),
        }
    }
}

/// The heartbeat Lease as one renewal applies it: held by `identity`, renewed `now`, for
/// `interval` (rounded up to whole seconds), annotated with `version`.
pub fn lease(identity: &str, version: u64, interval: Duration, now: Timestamp) -> Lease {
    let seconds = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
    Lease {
        metadata: ObjectMeta {
            name: Some(HEARTBEAT_NAME.to_owned()),
            annotations: Some(BTreeMap::from([(
                HEARTBEAT_VERSION_ANNOTATION.to_owned(),
                version.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)),
            ..LeaseSpec::default()
        }),
    }
}

/// Renews `heartbeat` every interval with the version `published` holds, skipping the ticks
/// when it holds none; ends on `stop` or when the publisher is gone (its sender dropped).
/// `member` names the member cluster it renews in (`None`: the operator's own).
pub async fn run(
    heartbeat: Heartbeat,
    member: Option<String>,
    mut published: watch::Receiver<Option<u64>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(heartbeat.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the last renewal failed, so a run of failures is logged at its start and end
    // rather than at every tick.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            r = published.changed() => {
                // A closed channel: the publisher has ended, and nobody keeps the version true.
                if r.is_err() {
                    return;
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(version) = *published.borrow_and_update() else {
            continue;
        };
        let renewed = tokio::select! {
            r = heartbeat.renew(version) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match renewed {
            Ok(()) => {
                metrics.heartbeat_renewed(member.as_deref(), true);
                if failing {
                    warn!(version, "routing heartbeat renewed again");
                } else {
                    debug!(version, "routing heartbeat renewed");
                }
                failing = false;
            }
            Err(error) => {
                metrics.heartbeat_renewed(member.as_deref(), false);
                if failing {
                    debug!(%error, version, "routing heartbeat still failing");
                } else {
                    warn!(%error, version, interval = ?heartbeat.interval, "routing heartbeat failed; routers will report their table stale if this lasts; retrying every interval");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_names_the_holder_the_time_and_the_published_version() {
        let now: Timestamp = "2026-01-02T03:04:05.678901Z".parse().unwrap();
        let lease = lease("op-0", 42, Duration::from_millis(2500), now);
        assert_eq!(lease.metadata.name.as_deref(), Some(HEARTBEAT_NAME));
        assert_eq!(
            lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HEARTBEAT_VERSION_ANNOTATION))
                .map(String::as_str),
            Some("42")
        );
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("op-0"));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_duration_seconds, Some(3), "rounded up");
    }
}
