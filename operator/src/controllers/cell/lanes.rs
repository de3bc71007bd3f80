//! Replacing a cell's lanes after its spec changed (a new version, new arguments): one lane at
//! a time, and only while every other lane is ready.
//!
//! The lanes' StatefulSet uses the `OnDelete` strategy and the operator evicts outdated lanes
//! through the Eviction API, highest ordinal first, the StatefulSet controller recreating each
//! from the new revision. The StatefulSet controller's own RollingUpdate deletes pods directly and
//! so ignores the PodDisruptionBudget; an eviction is refused (429) while the budget allows no
//! disruption, so a node drain and an update never take two lanes of one cell down together.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{EvictParams, ListParams},
};
use tracing::info;

use crate::{
    context::Context,
    error::{Error, Result},
    target::Target,
};

/// Label the StatefulSet controller puts on each pod: the revision it was made from.
const REVISION_LABEL: &str = "controller-revision-hash";
/// How soon to look again while a lane is being replaced (besides the StatefulSet's events).
const RECHECK: Duration = Duration::from_secs(2);
/// How soon to ask again after the disruption budget refused an eviction.
const BUDGET_RECHECK: Duration = Duration::from_secs(5);

/// What the roller needs of one lane pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanePod {
    pub name: String,
    pub ordinal: u32,
    pub revision: Option<String>,
    pub ready: bool,
    pub terminating: bool,
}

/// The roller's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Every lane runs the update revision.
    Done,
    /// A lane is missing, starting or going away: wait for it.
    Wait(String),
    /// Replace this lane.
    Evict(String),
}

/// One step of the update: with every lane present and ready, the outdated lane of highest
/// ordinal goes; otherwise wait.
pub fn next(desired: u32, update_revision: &str, pods: &[LanePod]) -> Next {
    let outdated = pods
        .iter()
        .filter(|p| p.revision.as_deref() != Some(update_revision) && !p.terminating)
        .max_by_key(|p| p.ordinal);
    let Some(victim) = outdated else {
        return Next::Done;
    };
    if let Some(p) = pods.iter().find(|p| p.terminating) {
        return Next::Wait(format!("lane pod {} is terminating", p.name));
    }
    if let Some(p) = pods.iter().find(|p| !p.ready) {
        return Next::Wait(format!("lane pod {} is not ready", p.name));
    }
    let present = pods.iter().filter(|p| p.ordinal < desired).count();
    if present < desired as usize {
        return Next::Wait(format!("{present} of {desired} lane pods exist"));
    }
    Next::Evict(victim.name.clone())
}

impl LanePod {
    fn of(pod: &Pod) -> Option<Self> {
        let name = pod.name_any();
        let ordinal = name.rsplit_once('-')?.1.parse().ok()?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Some(Self {
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            name,
            ordinal,
            ready,
        })
    }
}

/// Moves the update of `lanes` (as applied in `namespace` of `target`) one step on;
/// `Some(delay)` while it is not through.
pub async fn roll(
    ctx: &Context,
    target: &Target,
    namespace: &str,
    lanes: &StatefulSet,
) -> Result<Option<Duration>> {
    let Some(status) = &lanes.status else {
        return Ok(Some(RECHECK));
    };
    if status.observed_generation < lanes.metadata.generation {
        // The StatefulSet controller has not computed the new revision yet.
        return Ok(Some(RECHECK));
    }
    let Some(update) = status.update_revision.clone() else {
        return Ok(Some(RECHECK));
    };
    let desired = lanes
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let selector = lanes
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(target.client().clone(), namespace);
    let pods = ctx
        .call(
            format!("list the lane pods of {namespace}"),
            api.list(&ListParams::default().labels(&selector)),
        )
        .await?;
    let pods: Vec<LanePod> = pods.items.iter().filter_map(LanePod::of).collect();
    match next(desired, &update, &pods) {
        Next::Done => Ok(None),
        Next::Wait(why) => {
            tracing::debug!(%namespace, %why, "lane update waits");
            Ok(Some(RECHECK))
        }
        Next::Evict(pod) => {
            let evicted =
                tokio::time::timeout(ctx.api_timeout, api.evict(&pod, &EvictParams::default()))
                    .await;
            match evicted {
                Ok(Ok(_)) => {
                    info!(%namespace, %pod, revision = %update, "evicted an outdated lane");
                    Ok(Some(RECHECK))
                }
                // The client retries a 429 itself (honouring Retry-After) until the call's
                // timeout: either way the budget allows no disruption now (a node drain holds
                // it), so look again shortly instead of failing the reconcile.
                Ok(Err(kube::Error::Api(e))) if e.code == 429 => {
                    info!(%namespace, %pod, "the lanes' PodDisruptionBudget allows no eviction now; waiting");
                    Ok(Some(BUDGET_RECHECK))
                }
                Err(_) => {
                    info!(%namespace, %pod, timeout = ?ctx.api_timeout, "the eviction was not granted in time (the lanes' PodDisruptionBudget allows no disruption); waiting");
                    Ok(Some(BUDGET_RECHECK))
                }
                Ok(Err(e)) => Err(Error::kube(format!("evict lane pod {namespace}/{pod}"), e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: u32, revision: &str, ready: bool) -> LanePod {
        LanePod {
            name: format!("lane-{ordinal}"),
            ordinal,
            revision: Some(revision.into()),
            ready,
            terminating: false,
        }
    }

    #[test]
    fn the_highest_outdated_lane_goes_first_and_only_while_all_are_ready() {
        let pods = [
            pod(0, "old", true),
            pod(1, "old", true),
            pod(2, "new", true),
        ];
        assert_eq!(next(3, "new", &pods), Next::Evict("lane-1".into()));

        let starting = [pod(0, "old", true), pod(1, "new", false)];
        assert!(matches!(next(2, "new", &starting), Next::Wait(w) if w.contains("lane-1")));

        let mut going = pod(1, "old", true);
        going.terminating = true;
        assert!(matches!(
            next(2, "new", &[pod(0, "old", true), going]),
            Next::Wait(_)
        ));

        let missing = [pod(0, "old", true)];
        assert!(matches!(next(2, "new", &missing), Next::Wait(w) if w.contains("1 of 2")));
    }

    #[test]
    fn lanes_all_on_the_update_revision_are_done() {
        let pods = [pod(0, "new", true), pod(1, "new", false)];
        assert_eq!(next(2, "new", &pods), Next::Done);
        assert_eq!(next(0, "new", &[]), Next::Done);
    }
}
