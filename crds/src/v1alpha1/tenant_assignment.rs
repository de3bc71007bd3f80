//! `TenantAssignment`: where one tenant lives, and the record of its moves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    cell::CELL_NAME_MAX_LEN,
    common::{DNS_LABEL_CEL, LABEL_VALUE_CEL, conditions_schema, immutable, rule, tenant_id_rule},
};

/// Maps one tenant to its home cell: a named cell, or automatic placement on the least-utilized
/// eligible cell. Changing the target moves the tenant, without losing a write.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cellstack.dev",
    version = "v1alpha1",
    kind = "TenantAssignment",
    doc = "Where one tenant lives: a named cell or automatic placement. Changing the target moves the tenant between cells without losing a write.",
    plural = "tenantassignments",
    shortname = "ta",
    category = "cellstack",
    status = "TenantAssignmentStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId", description = "Tenant id"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier", description = "Tenant tier"),
    printcolumn(name = "Cell", type_ = "string", json_path = ".status.cell", description = "Cell serving the tenant"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch", description = "Bumps on every move"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Placement phase"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.move.step", description = "Current step of a move"),
    printcolumn(name = "Data-Lost", type_ = "string", json_path = ".status.dataLoss.marker", description = "Marker of lost data (set spec.acceptDataLossOf to it, or restore)", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // A root rule cannot carry a fieldPath into metadata, so the message names the field.
    validation = rule(
        "self.metadata.name == self.spec.tenantId",
        "metadata.name must equal spec.tenantId: each tenant has exactly one TenantAssignment, named after it",
    ),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule(
    "has(self.cell) != has(self.automatic)",
    "set exactly one of spec.cell (pin the tenant to a named cell) or spec.automatic (let the operator choose the least-utilized eligible cell)",
))]
pub struct TenantAssignmentSpec {
    /// The tenant's id: 1-40 lowercase letters, digits and '-'. Cannot change; a tenant with a
    /// new id is a new tenant.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(
        validation = tenant_id_rule(),
        validation = immutable("tenantId cannot change: create a TenantAssignment for the new id instead"),
    )]
    pub tenant_id: String,

    /// The tenant's tier, which RateLimitPolicies can select (default `standard`).
    #[serde(default = "default_tier")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = rule(DNS_LABEL_CEL, "tier must be lowercase letters, digits and '-', such as 'premium'"))]
    pub tier: String,

    /// Pin the tenant to this cell. Changing it moves the tenant there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = CELL_NAME_MAX_LEN))]
    #[x_kube(validation = rule(DNS_LABEL_CEL, "cell must be the name of a Cell: lowercase letters, digits and '-'"))]
    pub cell: Option<String>,

    /// Let the operator place the tenant on the least-utilized eligible cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<AutomaticPlacement>,

    /// Accept the loss of the tenant's data named by this marker (`status.dataLoss.marker`, the
    /// one the `DataLost` condition names): the operator then serves the tenant again, empty,
    /// under a new marker. It names one loss on purpose: a value left here never accepts a
    /// later one. Restoring from a backup is the other way out (docs/durability.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 16, max = 64))]
    #[x_kube(validation = rule(
        "self.matches('^[0-9a-f]+$')",
        "acceptDataLossOf must be the data marker the DataLost condition names (lowercase hex), copied from status.dataLoss.marker",
    ))]
    pub accept_data_loss_of: Option<String>,
}

fn default_tier() -> String {
    "standard".to_owned()
}

/// Constraints on automatic placement. Empty lists mean any.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutomaticPlacement {
    /// Only cells in one of these zones are eligible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = rule(
        format!("self.all(z, z.{})", LABEL_VALUE_CEL.trim_start_matches("self.")),
        "each zone must be a Kubernetes label value, such as 'eu-west-1a'",
    ))]
    pub zones: Vec<String>,
    /// Only cells in one of these regions are eligible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = rule(
        format!("self.all(r, r.{})", LABEL_VALUE_CEL.trim_start_matches("self.")),
        "each region must be a Kubernetes label value, such as 'eu-west-1'",
    ))]
    pub regions: Vec<String>,
}

/// Placement phase of a tenant.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TenantPhase {
    /// Not yet placed.
    #[default]
    Pending,
    /// Served by `status.cell`.
    Placed,
    /// Moving between cells; `status.move` tells the step.
    Moving,
    /// No cell satisfies the constraints; the `Placed` condition says which failed.
    Unschedulable,
    /// Its cell's datastore lost the tenant's data; `status.dataLoss` and the `DataLost`
    /// condition say what and how to recover. Its requests are answered `503 data_unavailable`.
    DataLost,
}

/// Observed state of a tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantAssignmentStatus {
    /// Placement phase.
    #[serde(default)]
    pub phase: TenantPhase,
    /// The cell serving the tenant now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    /// Monotonic epoch; bumps on every move and fences writers that still hold an older one.
    #[serde(default)]
    #[x_kube(validation = rule("self >= oldSelf", "epoch never decreases: it fences writers that hold an older one"))]
    pub epoch: u64,
    /// Which of the tenant's candidate lane sets the routing table uses: 0, unless the overlap
    /// bound of the pool sharding its cell needed another when the tenant was placed.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub shard_variant: u32,
    /// `Placed`, `Progressing` (a move), `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    // Boxed, like `data_loss`: most tenants have neither, and the operator caches every tenant
    // (this record is 208 bytes inline, the data-loss one 120, even when absent).
    /// The move in progress, or the last one.
    #[serde(default, rename = "move", skip_serializing_if = "Option::is_none")]
    pub move_: Option<Box<MoveStatus>>,
    /// The tenant's last moves that ended, newest first (at most [`RECENT_MOVES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub recent_moves: Vec<FinishedMove>,
    /// The marker of the tenant's data: a random token given to the data when its record was
    /// created in its cell, stored there with it and carried on every move. Kept here, outside
    /// the datastore, so a datastore that comes back without the data is told apart from a
    /// tenant that never had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 16, max = 64))]
    pub data_marker: Option<String>,
    /// The loss of the tenant's data, while it is not resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss: Option<Box<DataLoss>>,
}

/// A loss of a tenant's data the operator found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataLoss {
    /// The marker of the data that was lost (what `spec.acceptDataLossOf` names to accept it).
    #[schemars(length(min = 16, max = 64))]
    pub marker: String,
    /// The cell whose datastore lost it.
    #[schemars(length(min = 1, max = CELL_NAME_MAX_LEN))]
    pub cell: String,
    /// When the operator found the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<Time>,
    /// What the cell holds for the tenant now, for a person.
    pub found: String,
    /// The tenant's last verified key count and digest before the loss (from its last move or
    /// data check), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known: Option<String>,
}

/// A step of the move state machine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// The target cell is ready; the tenant is created there in importing state.
    Prepare,
    /// Bulk copy while the source keeps serving.
    Copy,
    /// The source refuses the tenant's writes.
    Fence,
    /// Copy what changed since the bulk copy, then compare counts and checksums.
    CatchUp,
    /// Epoch bumped, target activated, route published.
    Flip,
    /// In-flight requests finish; the source copy is purged after a grace period.
    Cleanup,
    /// The move finished.
    Done,
    /// The move is being undone (the target failed before Flip, or the pause bound was hit).
    RollingBack,
    /// The move was undone; the tenant stays on the source.
    RolledBack,
}

/// Progress of a move.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MoveStatus {
    /// Cell the tenant is moving from.
    pub from: String,
    /// Cell the tenant is moving to.
    pub to: String,
    /// Current step.
    pub step: MoveStep,
    /// When the move started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Keys copied so far.
    #[serde(default)]
    pub keys_copied: u64,
    /// Keys to copy, as counted at the start of the copy.
    #[serde(default)]
    pub keys_total: u64,
    /// When the source started refusing the tenant's writes (the Fence step began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
    /// How long the tenant's writes were paused (Fence to Flip), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_pause_millis: Option<u64>,
    /// Duration of each finished step, in milliseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub step_millis: Vec<StepDuration>,
    /// Why the move rolled back or is stuck, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How many ended moves a TenantAssignment's status keeps (`status.recentMoves`).
pub const RECENT_MOVES: usize = 5;

/// A move that ended, as `status.recentMoves` keeps it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FinishedMove {
    /// Cell the tenant moved (or tried to move) from.
    pub from: String,
    /// Cell it moved (or tried to move) to.
    pub to: String,
    /// `Done` or `RolledBack`.
    pub result: MoveStep,
    /// When the move started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Keys copied.
    #[serde(default)]
    pub keys_copied: u64,
    /// How long the tenant's writes were paused, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_pause_millis: Option<u64>,
    /// Why it rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How long one step took.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepDuration {
    /// The step.
    pub step: MoveStep,
    /// How long it took, in milliseconds.
    pub millis: u64,
}
