//! `CellRollout`: a new version of the service set, taken to the cells it selects one wave at a
//! time and stopped by a health gate read from the cells' own metrics.
//!
//! The rollout owns the `version` and `services` fields of the cells it selects, the way a
//! HorizontalPodAutoscaler owns a Deployment's `replicas`: it writes them with its own
//! server-side-apply field manager, so manifests of selected cells leave them out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    CellSelector, CellService,
    common::{LABEL_VALUE_CEL, conditions_schema, rule},
};

/// Most cells one rollout may select (its status lists each).
pub const ROLLOUT_MAX_CELLS: usize = 256;

/// A new version of the service set for the cells it selects, rolled out cell by cell in
/// growing waves. Each wave bakes, then its cells' error rate and p99 (from their own metrics)
/// are compared with the cells not yet updated; a wave that is worse stops the rollout and is
/// rolled back.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cellstack.dev",
    version = "v1alpha1",
    kind = "CellRollout",
    doc = "A new version of the service set for the selected cells, rolled out cell by cell in growing waves, each gated on the updated cells' error rate and p99 compared with the cells not yet updated; a failing wave halts the rollout and is rolled back.",
    plural = "cellrollouts",
    shortname = "cro",
    category = "cellstack",
    status = "CellRolloutStatus",
    derive = "PartialEq",
    cel,
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "Version being rolled out"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Progressing, Paused, Halted, Aborted or Complete"
    ),
    printcolumn(
        name = "Wave",
        type_ = "string",
        json_path = ".status.waveSummary",
        description = "Current wave / waves"
    ),
    printcolumn(
        name = "Cells",
        type_ = "string",
        json_path = ".status.cellsSummary",
        description = "Cells on the new version / cells selected"
    ),
    printcolumn(
        name = "Gate",
        type_ = "string",
        json_path = ".status.lastGate",
        description = "The health gate's last reading"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CellRolloutSpec {
    /// The cells this rollout updates. A cell should be selected by one rollout only; a cell
    /// selected by several follows the first by name, and the others report it.
    pub cells: CellSelector,

    /// The version to roll out: it becomes each cell's `spec.version` (and its pods'
    /// `cellstack.dev/version` label). Changing it starts a new rollout from the first wave.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(LABEL_VALUE_CEL, "version must be a Kubernetes label value, such as 'v1.4.2'"))]
    pub version: String,

    /// The service set of that version, as in a Cell's `spec.services`. Empty: cellstack's
    /// reference tenant service behind the cell runtime.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[x_kube(
        validation = rule(
            "self.all(s, self.filter(t, t.name == s.name).size() == 1)",
            "service names must be unique within a cell; rename one of the services",
        ),
        validation = rule(
            "self.all(s, self.filter(t, t.port == s.port).size() == 1)",
            "service ports must be unique within a cell: a lane's containers share one network namespace, so two cannot listen on one port; give each service its own port",
        ),
    )]
    pub services: Vec<CellService>,

    /// How the cells are grouped into waves and how long each wave bakes.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// When a wave counts as healthy.
    #[serde(default)]
    pub gate: HealthGate,

    /// `Proceed` (default), `Pause` (no further cell is started; a wave in progress is still
    /// judged, and halted if it fails) or `Abort` (every cell this rollout updated goes back to
    /// what it ran before).
    #[serde(default)]
    pub action: RolloutAction,

    /// Raise to retry a halted rollout from the wave that failed (when the failure was not the
    /// version's fault). A new version or service set also ends a halt, starting over.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub attempt: u32,
}

/// Waves and bake time.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Cells in the first wave.
    #[serde(default = "default_first_wave")]
    #[schemars(range(min = 1, max = 1000))]
    pub first_wave: u32,
    /// Each wave after the first has this many times the cells of the one before (1: waves of
    /// equal size).
    #[serde(default = "default_wave_growth")]
    #[schemars(range(min = 1, max = 10))]
    pub wave_growth: u32,
    /// How long a wave runs on the new version, every lane ready, before its gate is read.
    #[serde(default = "default_bake_seconds")]
    #[schemars(range(min = 5, max = 86400))]
    pub bake_seconds: u32,
    /// A cell of the wave not running the new version with every lane ready this long after it
    /// was started fails the wave (a version that crash-loops or never turns ready).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub progress_deadline_seconds: u32,
}

fn default_first_wave() -> u32 {
    1
}
fn default_wave_growth() -> u32 {
    2
}
fn default_bake_seconds() -> u32 {
    60
}
fn default_progress_deadline() -> u32 {
    600
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            first_wave: default_first_wave(),
            wave_growth: default_wave_growth(),
            bake_seconds: default_bake_seconds(),
            progress_deadline_seconds: default_progress_deadline(),
        }
    }
}

/// The health gate of a wave: each of its cells, over the bake, against the cells not yet
/// updated over the same window (the baseline). The last wave has no baseline: only its error
/// rate is judged, against zero.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthGate {
    /// Largest share of 5xx answers a cell may have above the baseline's share (0.01: one
    /// percentage point).
    #[serde(default = "default_max_error_rate_increase")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate_increase: f64,
    /// Largest ratio of a cell's p99 latency to the baseline's p99.
    #[serde(default = "default_max_p99_ratio")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_p99_ratio: f64,
    /// A p99 above the ratio fails only when it is also this many milliseconds above the
    /// baseline's (keeps a 1 ms → 3 ms wobble from halting a rollout).
    #[serde(default = "default_p99_tolerance_ms")]
    #[schemars(range(max = 60000))]
    pub p99_tolerance_ms: u32,
    /// Requests a cell must have answered during the bake for its reading to count; until
    /// then the wave keeps baking. 0 judges cells without traffic as healthy.
    #[serde(default = "default_min_requests")]
    #[schemars(range(max = 1_000_000_000))]
    pub min_requests: u64,
}

fn default_max_error_rate_increase() -> f64 {
    0.01
}
fn default_max_p99_ratio() -> f64 {
    2.0
}
fn default_p99_tolerance_ms() -> u32 {
    25
}
fn default_min_requests() -> u64 {
    20
}

impl Default for HealthGate {
    fn default() -> Self {
        Self {
            max_error_rate_increase: default_max_error_rate_increase(),
            max_p99_ratio: default_max_p99_ratio(),
            p99_tolerance_ms: default_p99_tolerance_ms(),
            min_requests: default_min_requests(),
        }
    }
}

/// What a person wants the rollout to do.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutAction {
    /// Go on, wave after wave.
    #[default]
    Proceed,
    /// Start no further cell.
    Pause,
    /// Put every cell this rollout updated back on what it ran before.
    Abort,
}

/// Where a rollout stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutPhase {
    /// Not yet planned.
    #[default]
    Pending,
    /// Updating or baking a wave.
    Progressing,
    /// `action: Pause`.
    Paused,
    /// A wave failed its gate or its progress deadline and was rolled back; raise `attempt` or
    /// change the spec to go on.
    Halted,
    /// `action: Abort`: the updated cells are back on what they ran before.
    Aborted,
    /// Every selected cell runs the version.
    Complete,
}

/// A cell's step in the rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutCellState {
    /// Not yet started.
    Pending,
    /// Its spec names the new version; its lanes are being replaced one at a time.
    Updating,
    /// Every lane runs the new version and is ready; the wave bakes.
    Baking,
    /// Passed its wave's gate (or already ran the version when the rollout began).
    Done,
    /// Put back on what it ran before (its wave failed, or the rollout was aborted).
    RolledBack,
}

/// A version of the service set: what a rollout writes into a Cell's spec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSetVersion {
    /// The cell's `spec.version` (absent: none was set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The cell's `spec.services`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub services: Vec<CellService>,
}

/// One selected cell's progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCell {
    /// The cell.
    pub name: String,
    /// The wave it belongs to, from 1.
    #[schemars(range(max = u32::MAX))]
    pub wave: u32,
    /// Its step.
    pub state: RolloutCellState,
    /// When it entered that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// What it ran before this rollout changed it (`version`, `services`): what a rollback
    /// restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "recorded_version_schema")]
    pub previous: Option<ServiceSetVersion>,
    /// Its last gate reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<String>,
}

/// Observed state of a rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CellRolloutStatus {
    /// Where the rollout stands.
    #[serde(default)]
    pub phase: RolloutPhase,
    /// `Progressing` (reason `WaveUpdating`, `WaveBaking`, `Paused`, `Halted`, `Aborted`,
    /// `Complete`) and `Degraded` (`GateFailed`, `DeadlineExceeded`, `Healthy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hash of the version and services being rolled out; a new one restarts the waves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The wave in progress, from 1 (0 before the first starts).
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub wave: u32,
    /// Waves in the plan.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub waves: u32,
    /// `wave/waves`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_summary: Option<String>,
    /// Selected cells that run the new version and passed their gate.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub cells_done: u32,
    /// Cells selected.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub cells_total: u32,
    /// `done/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells_summary: Option<String>,
    /// When the current wave started baking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_started_at: Option<Time>,
    /// The health gate's last reading, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gate: Option<String>,
    /// The `attempt` a halt happened at: the rollout stays halted while `spec.attempt` and the
    /// revision are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub halted_attempt: Option<u32>,
    /// Every selected cell, in rollout order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))] // ROLLOUT_MAX_CELLS
    pub cells: Vec<RolloutCell>,
}

/// Schema of a version recorded in status: an object kept as written. Only the operator writes
/// status, from a spec the API server already validated; the Cell's CEL rules repeated for every
/// listed cell would exceed the API server's validation cost budget.
fn recorded_version_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "What the cell ran before this rollout changed it (`version`, `services`): what a rollback restores.",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
