//! A Cell's status, computed from what the reconcile observed and applied: pure, with the time
//! passed in, so every phase and condition is tested without a cluster.

use std::collections::BTreeMap;

use cellstack_api::v1alpha1::{Cell, CellPhase, CellStatus, condition_type};
use k8s_openapi::{api::apps::v1::StatefulSet, apimachinery::pkg::apis::meta::v1::Time};

use crate::logic::conditions::{self, Desired};

/// Condition reasons (PascalCase, stable: alerts and tests match on them).
pub mod reason {
    pub const ALL_LANES_READY: &str = "AllLanesReady";
    pub const LANES_NOT_READY: &str = "LanesNotReady";
    pub const DATASTORE_NOT_READY: &str = "DatastoreNotReady";
    pub const SERVING: &str = "Serving";
    pub const NO_LANE_READY: &str = "NoLaneReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const PROVISIONING: &str = "Provisioning";
    pub const COMPLETE: &str = "Complete";
    pub const HEALTHY: &str = "Healthy";
    pub const LANES_UNAVAILABLE: &str = "LanesUnavailable";
    pub const DATASTORE_UNAVAILABLE: &str = "DatastoreUnavailable";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const EXTERNAL_SECRET: &str = "ExternalSecretUnavailable";
    /// The cell's namespace in its member cluster is another Cell's or nobody's it knows.
    pub const NAMESPACE_OWNED_ELSEWHERE: &str = "NamespaceOwnedElsewhere";
    /// The cell's member cluster does not answer: its stack is neither changed nor checked.
    pub const CLUSTER_UNREACHABLE: &str = "ClusterUnreachable";
    /// The cell's member cluster has no usable credentials (its Secret or kubeconfig).
    pub const MEMBER_CLUSTER_UNUSABLE: &str = "MemberClusterUnusable";
    /// `spec.cluster` names no MemberCluster.
    pub const MEMBER_CLUSTER_NOT_FOUND: &str = "MemberClusterNotFound";
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    pub const NOT_DRAINING: &str = "NotDraining";
    pub const DRAINING: &str = "Draining";
    pub const DRAINED: &str = "Drained";
    pub const TENANT_DATA_LOST: &str = "TenantDataLost";
    pub const NO_DATA_LOST: &str = "NoDataLost";
}

/// What a StatefulSet reports, reduced to what the status needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Replicas the spec asks for.
    pub desired: u32,
    /// Pods that exist (more than desired while scaling down).
    pub replicas: u32,
    pub ready: u32,
    pub updated: u32,
    /// The StatefulSet controller has seen the latest spec.
    pub observed: bool,
    /// Every pod runs the latest revision.
    pub revisions_match: bool,
}

impl Rollout {
    pub fn of(sts: &StatefulSet) -> Self {
        let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let desired = count(sts.spec.as_ref().and_then(|s| s.replicas));
        let Some(status) = &sts.status else {
            return Self {
                desired,
                ..Self::default()
            };
        };
        Self {
            desired,
            replicas: count(Some(status.replicas)),
            ready: count(status.ready_replicas),
            updated: count(status.updated_replicas),
            observed: status.observed_generation.is_some()
                && status.observed_generation >= sts.metadata.generation,
            // `currentRevision` only advances under RollingUpdate; under OnDelete (the lanes)
            // every pod on the update revision is what says the update is through.
            revisions_match: status.update_revision.is_some()
                && (status.current_revision == status.update_revision
                    || count(status.updated_replicas) >= count(Some(status.replicas))),
        }
    }

    /// The latest spec runs on exactly the desired pods.
    pub fn done(&self) -> bool {
        self.observed
            && self.revisions_match
            && self.updated >= self.desired
            && self.replicas == self.desired
    }

    pub fn all_ready(&self) -> bool {
        self.ready >= self.desired
    }
}

/// Something that kept the reconcile from applying the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// What the reconcile saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub namespace: Option<String>,
    /// The lanes' StatefulSet, once applied.
    pub lanes: Option<Rollout>,
    /// The datastore is ready: enough of the managed Redis' pods to take acknowledged writes
    /// (see `datastore::Plan::ready_enough`), or the external URL was read.
    pub datastore_ready: bool,
    /// Lane addresses by lane number.
    pub endpoints: Vec<String>,
    /// Where other clusters reach the lanes (with `--multicluster`; empty otherwise, or until
    /// every lane has an address).
    pub cross_cluster: super::exposure::LaneAddresses,
    /// How many tenants the cell holds.
    pub tenants: u32,
    /// Tenants whose data this cell's datastore lost, not yet restored or accepted (sorted ids).
    pub data_lost: Vec<String>,
    pub problem: Option<Problem>,
    /// The cell's cluster could not be looked at, and why ([`reason::CLUSTER_UNREACHABLE`] and
    /// its kin): what was last seen of the stack is kept and its conditions are `Unknown`.
    pub unseen: Option<Problem>,
    /// Where the cell's pods run ([`runs_in`]); `None`: not looked at this time (kept as it was).
    pub runs_in: Option<String>,
}

/// Where a cell's pods run, by zone: `zone:count` for each zone in name order, then
/// `pending:count` for pods on no node yet. A pod on a node without a zone label counts under
/// `no-zone`. `pods` holds each pod's node; `zone_of` each node's zone.
pub fn runs_in<'a>(
    pods: impl IntoIterator<Item = Option<&'a str>>,
    zone_of: &BTreeMap<String, String>,
) -> String {
    let mut zones: BTreeMap<&str, u32> = BTreeMap::new();
    let mut pending = 0u32;
    for node in pods {
        match node {
            Some(node) => {
                *zones
                    .entry(zone_of.get(node).map_or("no-zone", String::as_str))
                    .or_default() += 1;
            }
            None => pending += 1,
        }
    }
    zones
        .into_iter()
        .map(|(zone, n)| format!("{zone}:{n}"))
        .chain((pending > 0).then(|| format!("pending:{pending}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The status to publish for `cell`, given what was observed, at `now`.
pub fn compute(cell: &Cell, observed: &Observed, now: &Time) -> CellStatus {
    if let Some(unseen) = &observed.unseen {
        return unseen_status(cell, observed, unseen, now);
    }
    let previous = cell.status.clone().unwrap_or_default();
    let generation = cell.metadata.generation;
    let lanes = observed.lanes.unwrap_or_default();
    let desired_lanes = lanes.desired;
    let ready_lanes = lanes.ready.min(desired_lanes);
    let datastore = observed.datastore_ready;
    let available = datastore && ready_lanes >= 1;
    let healthy = datastore && lanes.all_ready() && lanes.done() && observed.lanes.is_some();
    // Once a cell has been Available, missing lanes are a degradation, not provisioning.
    let was_available = conditions::is_true(&previous.conditions, condition_type::AVAILABLE)
        || conditions::is_true(&previous.conditions, condition_type::DEGRADED);
    let lane_summary = format!(
        "{ready_lanes}/{desired_lanes} lanes ready, {}/{desired_lanes} updated; datastore {}",
        lanes.updated.min(desired_lanes),
        if datastore { "ready" } else { "not ready" }
    );

    let ready = match (&observed.problem, healthy) {
        (Some(p), _) => Desired::new(condition_type::READY, false, p.reason, p.message.clone()),
        (None, true) => Desired::new(
            condition_type::READY,
            true,
            reason::ALL_LANES_READY,
            lane_summary.clone(),
        ),
        (None, false) if !datastore => Desired::new(
            condition_type::READY,
            false,
            reason::DATASTORE_NOT_READY,
            lane_summary.clone(),
        ),
        (None, false) => Desired::new(
            condition_type::READY,
            false,
            reason::LANES_NOT_READY,
            lane_summary.clone(),
        ),
    };
    let available_c = if available {
        Desired::new(
            condition_type::AVAILABLE,
            true,
            reason::SERVING,
            lane_summary.clone(),
        )
    } else if !datastore {
        Desired::new(
            condition_type::AVAILABLE,
            false,
            reason::DATASTORE_NOT_READY,
            lane_summary.clone(),
        )
    } else {
        Desired::new(
            condition_type::AVAILABLE,
            false,
            reason::NO_LANE_READY,
            lane_summary.clone(),
        )
    };
    let rolling = observed.lanes.is_some() && !lanes.done();
    let (progressing, degraded) = if let Some(p) = &observed.problem {
        (
            Desired::new(
                condition_type::PROGRESSING,
                false,
                p.reason,
                p.message.clone(),
            ),
            Desired::new(condition_type::DEGRADED, true, p.reason, p.message.clone()),
        )
    } else if healthy {
        (
            Desired::new(
                condition_type::PROGRESSING,
                false,
                reason::COMPLETE,
                lane_summary.clone(),
            ),
            Desired::new(
                condition_type::DEGRADED,
                false,
                reason::HEALTHY,
                lane_summary.clone(),
            ),
        )
    } else if rolling {
        (
            Desired::new(
                condition_type::PROGRESSING,
                true,
                reason::ROLLING_OUT,
                lane_summary.clone(),
            ),
            Desired::new(
                condition_type::DEGRADED,
                false,
                reason::ROLLING_OUT,
                lane_summary.clone(),
            ),
        )
    } else if !was_available {
        (
            Desired::new(
                condition_type::PROGRESSING,
                true,
                reason::PROVISIONING,
                lane_summary.clone(),
            ),
            Desired::new(
                condition_type::DEGRADED,
                false,
                reason::PROVISIONING,
                lane_summary.clone(),
            ),
        )
    } else {
        let why = if datastore {
            reason::LANES_UNAVAILABLE
        } else {
            reason::DATASTORE_UNAVAILABLE
        };
        (
            Desired::new(
                condition_type::PROGRESSING,
                false,
                why,
                lane_summary.clone(),
            ),
            Desired::new(condition_type::DEGRADED, true, why, lane_summary.clone()),
        )
    };
    let tenant_count = observed.tenants;
    let drained = drained_condition(cell.spec.draining, tenant_count);
    let desired = [
        ready,
        available_c,
        progressing,
        degraded,
        drained,
        data_lost_condition(&observed.data_lost),
    ];
    let conditions = conditions::merge(&previous.conditions, &desired, generation, now);

    let phase = if cell.metadata.deletion_timestamp.is_some() {
        CellPhase::Terminating
    } else if cell.spec.draining {
        CellPhase::Draining
    } else if healthy && observed.problem.is_none() {
        CellPhase::Ready
    } else if conditions::is_true(&conditions, condition_type::DEGRADED) {
        CellPhase::Degraded
    } else if observed.lanes.is_some() {
        CellPhase::Provisioning
    } else {
        CellPhase::Pending
    };

    CellStatus {
        phase,
        conditions,
        observed_generation: generation,
        namespace: observed.namespace.clone().or(previous.namespace),
        lanes: desired_lanes,
        ready_lanes,
        endpoints: observed.endpoints.clone(),
        cross_cluster_endpoints: observed.cross_cluster.tenant.clone(),
        cross_cluster_admin_endpoints: observed.cross_cluster.admin.clone(),
        tenant_count,
        utilization_percent: utilization(tenant_count, cell.spec.capacity.max_tenants),
        datastore_replicas: super::datastore::Plan::of_cell(cell).map_or(0, |p| p.replicas),
        runs_in: observed.runs_in.clone().unwrap_or(previous.runs_in),
    }
}

/// The status of a cell whose cluster could not be looked at (`unseen` says why): the stack's
/// last known state (lanes, endpoints and cross-cluster endpoints, namespace, where it runs) is
/// kept, so the routing table and the routers keep it; `Ready`, `Available`, `Progressing` and
/// `Degraded` are `Unknown`, so placement, moves and rollouts wait; the phase is `Unknown`
/// (`Terminating` while deleted).
fn unseen_status(cell: &Cell, observed: &Observed, unseen: &Problem, now: &Time) -> CellStatus {
    let previous = cell.status.clone().unwrap_or_default();
    let tenant_count = observed.tenants;
    let mut desired: Vec<Desired> = [
        condition_type::READY,
        condition_type::AVAILABLE,
        condition_type::PROGRESSING,
        condition_type::DEGRADED,
    ]
    .into_iter()
    .map(|type_| Desired::unknown(type_, unseen.reason, unseen.message.clone()))
    .collect();
    desired.push(drained_condition(cell.spec.draining, tenant_count));
    desired.push(data_lost_condition(&observed.data_lost));
    CellStatus {
        phase: if cell.metadata.deletion_timestamp.is_some() {
            CellPhase::Terminating
        } else {
            CellPhase::Unknown
        },
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            cell.metadata.generation,
            now,
        ),
        observed_generation: cell.metadata.generation,
        tenant_count,
        utilization_percent: utilization(tenant_count, cell.spec.capacity.max_tenants),
        ..previous
    }
}

/// Whether the cell's datastore lost data of tenants it holds, and whose.
fn data_lost_condition(lost: &[String]) -> Desired {
    if lost.is_empty() {
        return Desired::new(
            condition_type::DATA_LOST,
            false,
            reason::NO_DATA_LOST,
            "every tenant's data is where its marker says".to_owned(),
        );
    }
    Desired::new(
        condition_type::DATA_LOST,
        true,
        reason::TENANT_DATA_LOST,
        format!(
            "this cell's datastore lost the data of {} tenant(s): {}; their requests are answered 503 data_unavailable until each is restored or its loss accepted (see each TenantAssignment's DataLost condition)",
            lost.len(),
            super::tenants::first_few(lost, 10)
        ),
    )
}

/// Drain progress: how many tenants are still to move away, and when the cell can go.
fn drained_condition(draining: bool, tenants: u32) -> Desired {
    match (draining, tenants) {
        (false, _) => Desired::new(
            condition_type::DRAINED,
            false,
            reason::NOT_DRAINING,
            "spec.draining is false: the cell takes and keeps tenants".to_owned(),
        ),
        (true, 0) => Desired::new(
            condition_type::DRAINED,
            true,
            reason::DRAINED,
            "no tenants left: the cell can be deleted".to_owned(),
        ),
        (true, n) => Desired::new(
            condition_type::DRAINED,
            false,
            reason::DRAINING,
            format!(
                "{n} tenant(s) left to move to other cells, a few at a time (operator --drain-concurrency)"
            ),
        ),
    }
}

/// The status of a deleted cell whose deletion waits (for `tenants` to leave, or for what
/// `reason` says): `Progressing=True` with `reason` and `message`, the rest as it was.
pub fn deletion_blocked(
    cell: &Cell,
    tenants: &[String],
    reason: &'static str,
    message: String,
    now: &Time,
) -> CellStatus {
    let previous = cell.status.clone().unwrap_or_default();
    let mut desired: Vec<Desired> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != condition_type::PROGRESSING)
        .filter_map(|c| {
            let type_ = [
                condition_type::READY,
                condition_type::AVAILABLE,
                condition_type::DEGRADED,
            ]
            .into_iter()
            .find(|t| *t == c.type_)?;
            let reason = known_reason(&c.reason);
            let status = match c.status.as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            };
            Some(Desired {
                type_,
                status,
                reason,
                message: c.message.clone(),
            })
        })
        .collect();
    desired.push(Desired::new(
        condition_type::PROGRESSING,
        true,
        reason,
        message,
    ));
    let tenant_count = u32::try_from(tenants.len()).unwrap_or(u32::MAX);
    CellStatus {
        phase: CellPhase::Terminating,
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            cell.metadata.generation,
            now,
        ),
        observed_generation: cell.metadata.generation,
        tenant_count,
        utilization_percent: utilization(tenant_count, cell.spec.capacity.max_tenants),
        ..previous
    }
}

/// The reason constant equal to `s` (conditions are rebuilt from `&'static str` reasons).
fn known_reason(s: &str) -> &'static str {
    use reason::*;
    [
        ALL_LANES_READY,
        LANES_NOT_READY,
        DATASTORE_NOT_READY,
        SERVING,
        NO_LANE_READY,
        ROLLING_OUT,
        PROVISIONING,
        COMPLETE,
        HEALTHY,
        LANES_UNAVAILABLE,
        DATASTORE_UNAVAILABLE,
        INVALID_SPEC,
        APPLY_FAILED,
        EXTERNAL_SECRET,
        NAMESPACE_OWNED_ELSEWHERE,
        CLUSTER_UNREACHABLE,
        MEMBER_CLUSTER_UNUSABLE,
        MEMBER_CLUSTER_NOT_FOUND,
        DELETION_BLOCKED,
    ]
    .into_iter()
    .find(|r| *r == s)
    .unwrap_or(PROVISIONING)
}

/// Tenants as a whole percentage of the capacity, rounded up so a cell with any tenant shows
/// at least 1%.
pub fn utilization(tenants: u32, max_tenants: u32) -> u32 {
    if max_tenants == 0 {
        return 100;
    }
    let pct = (u64::from(tenants) * 100).div_ceil(u64::from(max_tenants));
    u32::try_from(pct).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::fixtures::CellFixture;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    fn rollout(desired: u32, ready: u32) -> Rollout {
        Rollout {
            desired,
            replicas: desired,
            ready,
            updated: desired,
            observed: true,
            revisions_match: true,
        }
    }

    fn observed(lanes: Option<Rollout>, datastore: bool) -> Observed {
        Observed {
            namespace: Some("cell-alpha".into()),
            lanes,
            datastore_ready: datastore,
            endpoints: vec!["10.96.0.10:8080".into(), "10.96.0.11:8080".into()],
            cross_cluster: Default::default(),
            tenants: 1,
            data_lost: Vec::new(),
            problem: None,
            unseen: None,
            runs_in: None,
        }
    }

    #[test]
    fn runs_in_counts_pods_by_zone_in_order_then_the_pending_ones() {
        let zones: BTreeMap<String, String> =
            [("n1", "zone-a"), ("n2", "zone-b"), ("n3", "zone-a")]
                .into_iter()
                .map(|(n, z)| (n.to_owned(), z.to_owned()))
                .collect();
        assert_eq!(
            runs_in(
                [Some("n2"), Some("n1"), Some("n3"), None, Some("n9")],
                &zones
            ),
            "no-zone:1 zone-a:2 zone-b:1 pending:1"
        );
        assert_eq!(runs_in([Some("n1"), Some("n3")], &zones), "zone-a:2");
        assert_eq!(runs_in([], &zones), "");
    }

    fn condition<'a>(
        status: &'a CellStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn a_cell_with_every_lane_and_its_datastore_ready_is_ready() {
        let cell = Cell::test("alpha").with_generation(3);
        let status = compute(&cell, &observed(Some(rollout(2, 2)), true), &at(1));
        assert_eq!(status.phase, CellPhase::Ready);
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Progressing").status, "False");
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(status.observed_generation, Some(3));
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(
            (status.lanes, status.ready_lanes, status.tenant_count),
            (2, 2, 1)
        );
        assert_eq!(status.utilization_percent, 1);
    }

    #[test]
    fn the_status_shows_how_many_redis_pods_the_datastore_runs() {
        let figures =
            |cell: &Cell| compute(cell, &observed(None, false), &at(1)).datastore_replicas;
        assert_eq!(figures(&Cell::test("alpha")), 3);
        assert_eq!(figures(&Cell::test("alpha").ephemeral()), 1);
        let mut external = Cell::test("alpha");
        external.spec.datastore.managed = None;
        external.spec.datastore.external = Some(cellstack_api::v1alpha1::ExternalRedis {
            url_secret_ref: cellstack_api::v1alpha1::SecretKeyRef {
                namespace: "cellstack-system".into(),
                name: "alpha-redis".into(),
                key: "url".into(),
            },
        });
        assert_eq!(figures(&external), 0);
    }

    #[test]
    fn a_new_cell_is_provisioning_not_degraded() {
        let cell = Cell::test("alpha");
        let status = compute(&cell, &observed(Some(rollout(2, 0)), false), &at(1));
        assert_eq!(status.phase, CellPhase::Provisioning);
        assert_eq!(
            condition(&status, "Progressing").reason,
            reason::PROVISIONING
        );
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(
            condition(&status, "Ready").reason,
            reason::DATASTORE_NOT_READY
        );
    }

    #[test]
    fn losing_lanes_after_being_available_is_degraded_but_still_available() {
        let mut cell = Cell::test("alpha");
        cell.status = Some(compute(&cell, &observed(Some(rollout(3, 3)), true), &at(1)));
        let status = compute(&cell, &observed(Some(rollout(3, 1)), true), &at(2));
        assert_eq!(status.phase, CellPhase::Degraded);
        assert_eq!(
            condition(&status, "Degraded").reason,
            reason::LANES_UNAVAILABLE
        );
        assert_eq!(condition(&status, "Available").status, "True");
        assert_eq!(condition(&status, "Ready").last_transition_time, at(2));
        assert_eq!(condition(&status, "Available").last_transition_time, at(1));
    }

    #[test]
    fn a_lane_update_in_flight_is_progressing() {
        let mut cell = Cell::test("alpha");
        cell.status = Some(compute(&cell, &observed(Some(rollout(2, 2)), true), &at(1)));
        let mid = Rollout {
            updated: 1,
            revisions_match: false,
            ..rollout(2, 1)
        };
        let status = compute(&cell, &observed(Some(mid), true), &at(2));
        assert_eq!(
            condition(&status, "Progressing").reason,
            reason::ROLLING_OUT
        );
        assert_eq!(condition(&status, "Progressing").status, "True");
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(condition(&status, "Available").status, "True");
    }

    #[test]
    fn a_problem_is_reported_on_every_condition_it_affects() {
        let cell = Cell::test("alpha");
        let mut seen = observed(None, false);
        seen.problem = Some(Problem {
            reason: reason::INVALID_SPEC,
            message: "bad".into(),
        });
        let status = compute(&cell, &seen, &at(1));
        assert_eq!(status.phase, CellPhase::Degraded);
        assert_eq!(condition(&status, "Degraded").reason, reason::INVALID_SPEC);
        assert_eq!(condition(&status, "Ready").message, "bad");
    }

    #[test]
    fn computing_twice_from_the_same_observation_changes_nothing() {
        let mut cell = Cell::test("alpha");
        let seen = observed(Some(rollout(2, 2)), true);
        let first = compute(&cell, &seen, &at(1));
        cell.status = Some(first.clone());
        assert_eq!(compute(&cell, &seen, &at(99)), first);
    }

    #[test]
    fn the_drained_condition_counts_the_tenants_left() {
        let serving = compute(
            &Cell::test("alpha"),
            &observed(Some(rollout(2, 2)), true),
            &at(1),
        );
        assert_eq!(condition(&serving, "Drained").reason, reason::NOT_DRAINING);
        let cell = Cell::test("alpha").draining();
        let mut seen = observed(Some(rollout(2, 2)), true);
        let left = compute(&cell, &seen, &at(1));
        assert_eq!(condition(&left, "Drained").status, "False");
        assert!(
            condition(&left, "Drained")
                .message
                .starts_with("1 tenant(s) left")
        );
        seen.tenants = 0;
        let done = compute(&cell, &seen, &at(2));
        assert_eq!(condition(&done, "Drained").status, "True");
        assert_eq!(condition(&done, "Drained").reason, reason::DRAINED);
    }

    #[test]
    fn draining_and_deleting_show_in_the_phase() {
        let cell = Cell::test("alpha").draining();
        let status = compute(&cell, &observed(Some(rollout(2, 2)), true), &at(1));
        assert_eq!(status.phase, CellPhase::Draining);
        let mut cell = Cell::test("alpha");
        cell.status = Some(status);
        let blocked = deletion_blocked(
            &cell,
            &["t1".into(), "t2".into()],
            reason::DELETION_BLOCKED,
            "waits for t1, t2".into(),
            &at(5),
        );
        assert_eq!(blocked.phase, CellPhase::Terminating);
        assert_eq!(
            condition(&blocked, "Progressing").reason,
            reason::DELETION_BLOCKED
        );
        assert_eq!(condition(&blocked, "Ready").last_transition_time, at(1));
        assert_eq!(blocked.tenant_count, 2);
    }

    #[test]
    fn utilization_rounds_up() {
        assert_eq!(utilization(0, 1000), 0);
        assert_eq!(utilization(1, 1000), 1);
        assert_eq!(utilization(500, 1000), 50);
        assert_eq!(utilization(1001, 1000), 101);
    }

    #[test]
    fn rollout_is_done_only_when_the_controller_caught_up() {
        let mut r = rollout(2, 2);
        assert!(r.done());
        r.observed = false;
        assert!(!r.done());
        let scaling_down = Rollout {
            replicas: 3,
            ..rollout(2, 2)
        };
        assert!(!scaling_down.done());
    }

    #[test]
    fn a_cell_says_whose_data_its_datastore_lost_and_clears_it_once_resolved() {
        let cell = Cell::test("alpha");
        let mut seen = observed(Some(rollout(2, 2)), true);
        seen.data_lost = vec!["t1".into(), "t2".into()];
        let lost = compute(&cell, &seen, &at(1));
        let c = condition(&lost, condition_type::DATA_LOST);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::TENANT_DATA_LOST)
        );
        assert!(c.message.contains("2 tenant(s): t1, t2"), "{}", c.message);
        seen.data_lost.clear();
        let clear = compute(&cell, &seen, &at(2));
        let c = condition(&clear, condition_type::DATA_LOST);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::NO_DATA_LOST)
        );
    }
    #[test]
    fn an_unseen_cell_keeps_its_stack_and_says_unknown_with_the_reason() {
        let mut cell = Cell::test("delta");
        let seen = Observed {
            cross_cluster: super::super::exposure::LaneAddresses {
                tenant: vec!["10.0.0.1:30001".into(), "10.0.0.2:30003".into()],
                admin: vec!["10.0.0.1:30002".into(), "10.0.0.2:30004".into()],
            },
            ..observed(Some(rollout(2, 2)), true)
        };
        cell.status = Some(compute(&cell, &seen, &at(10)));
        let before = cell.status.clone().expect("a status");
        assert_eq!(before.phase, CellPhase::Ready);
        assert_eq!(before.cross_cluster_endpoints, seen.cross_cluster.tenant);
        assert_eq!(
            before.cross_cluster_admin_endpoints,
            seen.cross_cluster.admin
        );
        let unseen = Observed {
            unseen: Some(Problem {
                reason: reason::CLUSTER_UNREACHABLE,
                message: "member cluster east has not answered since 10:02:11".into(),
            }),
            tenants: 1,
            ..Observed::default()
        };
        let status = compute(&cell, &unseen, &at(20));
        assert_eq!(status.phase, CellPhase::Unknown);
        assert_eq!(
            status.endpoints, before.endpoints,
            "the routing table keeps its lanes"
        );
        assert_eq!(
            (
                &status.cross_cluster_endpoints,
                &status.cross_cluster_admin_endpoints
            ),
            (
                &before.cross_cluster_endpoints,
                &before.cross_cluster_admin_endpoints
            ),
            "other clusters' tables keep them too"
        );
        assert_eq!(status.ready_lanes, before.ready_lanes);
        assert_eq!(status.namespace, before.namespace);
        for type_ in [
            condition_type::READY,
            condition_type::AVAILABLE,
            condition_type::PROGRESSING,
            condition_type::DEGRADED,
        ] {
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .expect(type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("Unknown", reason::CLUSTER_UNREACHABLE),
                "{type_}"
            );
            assert!(c.message.contains("east"), "{}", c.message);
        }
        assert!(!conditions::is_true(
            &status.conditions,
            condition_type::READY
        ));
        // Seen again: Ready, with a new transition time.
        cell.status = Some(status);
        let back = compute(&cell, &observed(Some(rollout(2, 2)), true), &at(30));
        assert_eq!(back.phase, CellPhase::Ready);
        let ready = back
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), &ready.last_transition_time),
            ("True", &at(30))
        );
    }

    #[test]
    fn a_deleted_unseen_cell_is_terminating_and_a_blocked_deletion_keeps_unknown() {
        let mut cell = Cell::test("delta");
        cell.metadata.deletion_timestamp = Some(at(5));
        let unseen = Observed {
            unseen: Some(Problem {
                reason: reason::CLUSTER_UNREACHABLE,
                message: "east does not answer".into(),
            }),
            ..Observed::default()
        };
        let status = compute(&cell, &unseen, &at(10));
        assert_eq!(status.phase, CellPhase::Terminating);
        cell.status = Some(status);
        let blocked = deletion_blocked(
            &cell,
            &["t1".into()],
            reason::DELETION_BLOCKED,
            "waits".into(),
            &at(20),
        );
        let ready = blocked
            .conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("Unknown", reason::CLUSTER_UNREACHABLE)
        );
    }
}
