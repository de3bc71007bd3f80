//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Instant;

use crate::error::Error;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The `controller` label of each controller.
pub const CONTROLLERS: [&str; 6] = [
    "cell",
    "tenant",
    "ratelimitpolicy",
    "shuffleshardpool",
    "cellrollout",
    "membercluster",
];

/// The `step` label of each timed move step (`moves::steps::step_label`).
pub const MOVE_STEPS: [&str; 7] = [
    "prepare",
    "copy",
    "fence",
    "catch_up",
    "flip",
    "cleanup",
    "rolling_back",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabels {
    pub cell: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub member_cluster: String,
}

fn member_labels(member: &str) -> MemberLabels {
    MemberLabels {
        member_cluster: member.to_owned(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoveResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoveStepLabels {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutCellLabels {
    pub rollout: String,
    pub cell: String,
}

pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub status_patches: Family<ControllerLabels, Counter>,
    pub children_applied: Family<ControllerLabels, Counter>,
    pub orphans_deleted: Family<ControllerLabels, Counter>,
    pub leader: Gauge,
    pub cell_ready_lanes: Family<CellLabels, Gauge>,
    pub cell_tenants: Family<CellLabels, Gauge>,
    pub cell_ready: Family<CellLabels, Gauge>,
    pub cell_data_lost_tenants: Family<CellLabels, Gauge>,
    pub table_publish_seconds: Histogram,
    pub table_change_to_publish_seconds: Histogram,
    pub table_version: Gauge,
    pub table_tenants: Gauge,
    pub table_publish_failures: Counter,
    pub routing_heartbeats: Counter,
    pub routing_heartbeat_failures: Counter,
    pub policy_ack_age_seconds: Family<CellLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub moves: Family<MoveResultLabels, Counter>,
    pub move_step_seconds: Family<MoveStepLabels, Histogram>,
    pub move_write_pause_seconds: Histogram,
    pub move_keys_copied: Counter,
    pub moves_in_progress: Gauge,
    pub move_longest_step_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tenants_provisioned: Counter,
    pub new_tenant_records_per_call: Histogram,
    pub events_dropped: Counter,
    pub tenant_data_losses: Counter,
    pub tenant_data_losses_accepted: Counter,
    pub internal_ca_trusted: Gauge,
    pub internal_ca_expiry_seconds: Gauge,
    pub internal_ca_rotations: Counter,
    pub lane_certificates_issued: Counter,
    pub lane_client_certificates_issued: Counter,
    pub rollout_wave: Family<RolloutLabels, Gauge>,
    pub rollout_cells_done: Family<RolloutLabels, Gauge>,
    pub rollout_cells_total: Family<RolloutLabels, Gauge>,
    pub rollout_halted: Family<RolloutLabels, Gauge>,
    pub rollout_halts: Family<RolloutLabels, Counter>,
    pub rollout_gate_error_ratio:
        Family<RolloutCellLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub rollout_gate_p99_seconds:
        Family<RolloutCellLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub member_cluster_reachable: Family<MemberLabels, Gauge>,
    pub member_table_version: Family<MemberLabels, Gauge>,
    pub member_table_publish_failures: Family<MemberLabels, Counter>,
    pub member_routing_heartbeats: Family<MemberLabels, Counter>,
    pub member_routing_heartbeat_failures: Family<MemberLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
            }),
            status_patches: Family::default(),
            children_applied: Family::default(),
            orphans_deleted: Family::default(),
            leader: Gauge::default(),
            cell_ready_lanes: Family::default(),
            cell_tenants: Family::default(),
            cell_ready: Family::default(),
            cell_data_lost_tenants: Family::default(),
            table_publish_seconds: Histogram::new([
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            table_change_to_publish_seconds: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
            ]),
            table_version: Gauge::default(),
            table_tenants: Gauge::default(),
            table_publish_failures: Counter::default(),
            routing_heartbeats: Counter::default(),
            routing_heartbeat_failures: Counter::default(),
            policy_ack_age_seconds: Family::default(),
            moves: Family::default(),
            move_step_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
            }),
            move_write_pause_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            move_keys_copied: Counter::default(),
            moves_in_progress: Gauge::default(),
            move_longest_step_seconds: Gauge::default(),
            tenants_provisioned: Counter::default(),
            new_tenant_records_per_call: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0,
            ]),
            events_dropped: Counter::default(),
            tenant_data_losses: Counter::default(),
            tenant_data_losses_accepted: Counter::default(),
            internal_ca_trusted: Gauge::default(),
            internal_ca_expiry_seconds: Gauge::default(),
            internal_ca_rotations: Counter::default(),
            lane_certificates_issued: Counter::default(),
            lane_client_certificates_issued: Counter::default(),
            rollout_wave: Family::default(),
            rollout_cells_done: Family::default(),
            rollout_cells_total: Family::default(),
            rollout_halted: Family::default(),
            rollout_halts: Family::default(),
            rollout_gate_error_ratio: Family::default(),
            rollout_gate_p99_seconds: Family::default(),
            member_cluster_reachable: Family::default(),
            member_table_version: Family::default(),
            member_table_publish_failures: Family::default(),
            member_routing_heartbeats: Family::default(),
            member_routing_heartbeat_failures: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("cellstack_operator");
        r.register(
            "reconciles",
            "Reconciles finished, by controller and result (ok, error)",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles, by controller and error kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            m.reconcile_duration.clone(),
        );
        r.register(
            "status_patches",
            "Status patches sent (none when nothing changed)",
            m.status_patches.clone(),
        );
        r.register(
            "children_applied",
            "Child objects server-side applied",
            m.children_applied.clone(),
        );
        r.register(
            "orphans_deleted",
            "Child objects deleted because the spec no longer wants them",
            m.orphans_deleted.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            m.leader.clone(),
        );
        r.register(
            "cell_ready_lanes",
            "Ready lanes of each cell",
            m.cell_ready_lanes.clone(),
        );
        r.register(
            "cell_tenants",
            "Tenants each cell holds",
            m.cell_tenants.clone(),
        );
        r.register(
            "cell_ready",
            "1 while the cell's Ready condition is True, 0 otherwise",
            m.cell_ready.clone(),
        );
        r.register(
            "cell_data_lost_tenants",
            "Tenants whose data the cell's datastore lost, not yet restored or accepted",
            m.cell_data_lost_tenants.clone(),
        );
        r.register(
            "routing_table_publish_seconds",
            "Time one routing-table publication took (chunks written, pointer switched)",
            m.table_publish_seconds.clone(),
        );
        r.register(
            "routing_table_change_to_publish_seconds",
            "Time from the first change a published table includes to its publication",
            m.table_change_to_publish_seconds.clone(),
        );
        r.register(
            "routing_table_version",
            "Version of the routing table last published",
            m.table_version.clone(),
        );
        r.register(
            "routing_table_tenants",
            "Tenants in the routing table last published",
            m.table_tenants.clone(),
        );
        r.register(
            "routing_table_publish_failures",
            "Routing-table publications that failed (retried)",
            m.table_publish_failures.clone(),
        );
        r.register(
            "routing_heartbeats",
            "Renewals of the routing heartbeat Lease (the published table version, confirmed to routers)",
            m.routing_heartbeats.clone(),
        );
        r.register(
            "routing_heartbeat_failures",
            "Renewals of the routing heartbeat Lease that failed or timed out (retried every interval)",
            m.routing_heartbeat_failures.clone(),
        );
        r.register(
            "policy_ack_age_seconds",
            "Seconds since every lane of a cell last acknowledged the version of its current policy file (0 while they all do)",
            m.policy_ack_age_seconds.clone(),
        );
        r.register(
            "moves",
            "Tenant moves finished, by result (done, rolled_back)",
            m.moves.clone(),
        );
        r.register(
            "move_step_seconds",
            "Time each step of a tenant move took",
            m.move_step_seconds.clone(),
        );
        r.register(
            "move_write_pause_seconds",
            "How long a moved tenant's writes were refused (Fence to Flip)",
            m.move_write_pause_seconds.clone(),
        );
        r.register(
            "move_keys_copied",
            "Keys copied between cells by tenant moves (bulk copy and catch-up)",
            m.move_keys_copied.clone(),
        );
        r.register(
            "moves_in_progress",
            "Tenant moves neither done nor rolled back (0 on a replica that does not lead)",
            m.moves_in_progress.clone(),
        );
        r.register(
            "move_longest_step_seconds",
            "Seconds the move in progress longest in its current step has been in it (0 with none)",
            m.move_longest_step_seconds.clone(),
        );
        r.register(
            "tenants_provisioned",
            "Tenant records created in cells for tenants that never had one (new placements)",
            m.tenants_provisioned.clone(),
        );
        r.register(
            "new_tenant_records_per_call",
            "New placements' records created in one admin call to a cell (placements that arrive together share a call)",
            m.new_tenant_records_per_call.clone(),
        );
        r.register(
            "events_dropped",
            "Normal Events (routine placements) dropped because the event queue was full; Warnings are never dropped",
            m.events_dropped.clone(),
        );
        r.register(
            "tenant_data_losses",
            "Tenants whose data a cell's datastore no longer held (marked lost there, condition DataLost)",
            m.tenant_data_losses.clone(),
        );
        r.register(
            "tenant_data_losses_accepted",
            "Data losses accepted through spec.acceptDataLossOf (the tenant served again, empty)",
            m.tenant_data_losses_accepted.clone(),
        );
        r.register(
            "internal_ca_trusted",
            "CA certificates in the internal trust bundle: 1, or 2 while the CA rotates (0 with internal TLS off)",
            m.internal_ca_trusted.clone(),
        );
        r.register(
            "internal_ca_expiry_seconds",
            "When the issuing internal CA expires, Unix seconds (0 with internal TLS off)",
            m.internal_ca_expiry_seconds.clone(),
        );
        r.register(
            "internal_ca_rotations",
            "Internal CA rotations started (the new CA added to the trust bundle)",
            m.internal_ca_rotations.clone(),
        );
        r.register(
            "lane_certificates_issued",
            "Cell certificates issued by the internal CA (first issue, renewal, new CA or new lane addresses)",
            m.lane_certificates_issued.clone(),
        );
        r.register(
            "lane_client_certificates_issued",
            "Client certificates the routers and the operator present to lanes, issued by the internal CA (first issue, renewal, or the new CA once every lane trusts it)",
            m.lane_client_certificates_issued.clone(),
        );
        r.register(
            "rollout_wave",
            "The wave each CellRollout is on (from 1)",
            m.rollout_wave.clone(),
        );
        r.register(
            "rollout_cells_done",
            "Cells each CellRollout has taken to its version and through its gate",
            m.rollout_cells_done.clone(),
        );
        r.register(
            "rollout_cells_total",
            "Cells each CellRollout selects",
            m.rollout_cells_total.clone(),
        );
        r.register(
            "rollout_halted",
            "1 while a CellRollout is halted by its gate or progress deadline",
            m.rollout_halted.clone(),
        );
        r.register(
            "rollout_halts",
            "Waves halted and rolled back, by CellRollout",
            m.rollout_halts.clone(),
        );
        r.register(
            "rollout_gate_error_ratio",
            "Share of 5xx answers of a cell over its wave's bake, as the gate last read it",
            m.rollout_gate_error_ratio.clone(),
        );
        r.register(
            "rollout_gate_p99_seconds",
            "p99 latency of a cell over its wave's bake, as the gate last read it",
            m.rollout_gate_p99_seconds.clone(),
        );
        r.register(
            "member_cluster_reachable",
            "1 while a MemberCluster's API server answered its last probe (GET /version), 0 otherwise",
            m.member_cluster_reachable.clone(),
        );
        r.register(
            "member_routing_table_version",
            "Version of the routing table last mirrored into a member cluster (its routers' view)",
            m.member_table_version.clone(),
        );
        r.register(
            "member_routing_table_publish_failures",
            "Mirrorings of the routing table into a member cluster that failed (retried with backoff, that member alone)",
            m.member_table_publish_failures.clone(),
        );
        r.register(
            "member_routing_heartbeats",
            "Renewals of the routing heartbeat Lease in a member cluster",
            m.member_routing_heartbeats.clone(),
        );
        r.register(
            "member_routing_heartbeat_failures",
            "Renewals of the routing heartbeat Lease in a member cluster that failed or timed out (retried every interval)",
            m.member_routing_heartbeat_failures.clone(),
        );
        m.initialize_known_series();
        m
    }

    /// A routing table published (`member` `None`: into the operator's own namespace; else
    /// mirrored into that member cluster): its version and, for the operator's own, its tenants.
    pub fn table_published(&self, member: Option<&str>, version: u64, tenants: usize) {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        match member {
            None => {
                self.table_version.set(version);
                self.table_tenants
                    .set(i64::try_from(tenants).unwrap_or(i64::MAX));
            }
            Some(member) => {
                self.member_table_version
                    .get_or_create(&member_labels(member))
                    .set(version);
            }
        }
    }

    /// A publication into the operator's own namespace (`None`) or a member's that failed.
    pub fn table_publish_failed(&self, member: Option<&str>) {
        match member {
            None => self.table_publish_failures.inc(),
            Some(member) => self
                .member_table_publish_failures
                .get_or_create(&member_labels(member))
                .inc(),
        };
    }

    /// A renewal of the routing heartbeat in the operator's own namespace (`None`) or a
    /// member's, `renewed` or failed.
    pub fn heartbeat_renewed(&self, member: Option<&str>, renewed: bool) {
        match (member, renewed) {
            (None, true) => self.routing_heartbeats.inc(),
            (None, false) => self.routing_heartbeat_failures.inc(),
            (Some(member), true) => self
                .member_routing_heartbeats
                .get_or_create(&member_labels(member))
                .inc(),
            (Some(member), false) => self
                .member_routing_heartbeat_failures
                .get_or_create(&member_labels(member))
                .inc(),
        };
    }

    /// Starts the routing-table series of a member cluster the operator has seen, at zero, so
    /// `rate()` and alerts see them before its first publication or failure.
    pub fn member_seen(&self, member: &str) {
        let labels = member_labels(member);
        self.member_table_version.get_or_create_owned(&labels);
        self.member_table_publish_failures
            .get_or_create_owned(&labels);
        self.member_routing_heartbeats.get_or_create_owned(&labels);
        self.member_routing_heartbeat_failures
            .get_or_create_owned(&labels);
    }

    /// Drops the series of a member cluster that was deleted.
    pub fn forget_member(&self, member: &str) {
        let labels = member_labels(member);
        self.member_cluster_reachable.remove(&labels);
        self.member_table_version.remove(&labels);
        self.member_table_publish_failures.remove(&labels);
        self.member_routing_heartbeats.remove(&labels);
        self.member_routing_heartbeat_failures.remove(&labels);
    }

    /// Creates every series whose labels are known in advance, at zero: an absent series is not
    /// a zero to `rate()` or to an alert, and the page then lists every family from the start.
    /// Series of objects (a cell, a rollout) start when their controller first sees the object.
    fn initialize_known_series(&self) {
        for controller in CONTROLLERS {
            for result in ["ok", "error"] {
                self.reconciles
                    .get_or_create_owned(&ResultLabels { controller, result });
            }
            for error in Error::METRIC_LABELS {
                self.reconcile_errors
                    .get_or_create_owned(&ErrorLabels { controller, error });
            }
            let labels = ControllerLabels { controller };
            self.reconcile_duration.get_or_create_owned(&labels);
            self.status_patches.get_or_create_owned(&labels);
            self.children_applied.get_or_create_owned(&labels);
            self.orphans_deleted.get_or_create_owned(&labels);
        }
        for result in ["done", "rolled_back"] {
            self.moves.get_or_create_owned(&MoveResultLabels { result });
        }
        for step in MOVE_STEPS {
            self.move_step_seconds
                .get_or_create_owned(&MoveStepLabels { step });
        }
    }

    /// Starts timing a reconcile; the duration is recorded when the timer drops.
    pub fn reconcile_timer(&self, controller: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    pub fn reconciled(&self, controller: &'static str, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&ResultLabels { controller, result })
            .inc();
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { controller, error })
                .inc();
        }
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}
