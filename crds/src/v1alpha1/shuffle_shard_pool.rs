//! `ShuffleShardPool`: noisy-neighbour isolation inside cells. Each selected cell runs N lanes
//! and every tenant is served by a deterministic k of them (see [`crate::shard`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_LABEL_CEL, conditions_schema, immutable, match_labels_schema, rule, rule_at,
};

/// Shuffle sharding for the cells it selects: N lanes per cell, k lanes per tenant, so a tenant
/// that breaks its lanes touches only tenants sharing them. With N=8 and k=2 there are 28
/// distinct lane pairs: a poison-pill tenant takes down 2 lanes and fully affects only the
/// tenants on exactly that pair.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cellstack.dev",
    version = "v1alpha1",
    kind = "ShuffleShardPool",
    doc = "Shuffle sharding for the selected cells: N lanes per cell and k lanes per tenant, so a noisy or poisonous tenant touches only the tenants sharing its lanes.",
    plural = "shuffleshardpools",
    shortname = "ssp",
    category = "cellstack",
    status = "ShuffleShardPoolStatus",
    derive = "PartialEq",
    cel,
    printcolumn(
        name = "Lanes",
        type_ = "integer",
        json_path = ".spec.lanes",
        description = "Lanes per cell (N)"
    ),
    printcolumn(
        name = "ShardSize",
        type_ = "integer",
        json_path = ".spec.shardSize",
        description = "Lanes per tenant (k)"
    ),
    printcolumn(
        name = "Combinations",
        type_ = "integer",
        json_path = ".status.combinations",
        description = "Distinct lane sets, C(N,k)"
    ),
    printcolumn(
        name = "WorstOverlap",
        type_ = "integer",
        json_path = ".status.worstOverlap",
        description = "Most lanes two tenants share"
    ),
    printcolumn(
        name = "Tenants",
        type_ = "integer",
        json_path = ".status.tenants",
        description = "Tenants in the pool's cells"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.lanesHealthySummary",
        description = "Healthy lanes / lanes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_at(
        "self.shardSize <= self.lanes",
        ".shardSize",
        "shardSize (k) must not exceed lanes (N): each tenant is served by k of the cell's N lanes; lower shardSize or raise lanes",
    ),
    validation = rule_at(
        "!has(self.maxOverlap) || self.maxOverlap < self.shardSize",
        ".maxOverlap",
        "maxOverlap must be below shardSize: two tenants sharing all k lanes is no isolation at all; lower maxOverlap",
    ),
)]
pub struct ShuffleShardPoolSpec {
    /// Which cells are sharded this way.
    pub cells: CellSelector,
    /// N: lanes in each selected cell.
    #[schemars(range(min = 1, max = 64))]
    pub lanes: u32,
    /// k: lanes serving each tenant.
    #[schemars(range(min = 1, max = 64))]
    pub shard_size: u32,
    /// Optional bound on the lanes any two tenants of a cell may share; placement picks another
    /// candidate shard for a tenant that would exceed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 63))]
    pub max_overlap: Option<u32>,
    /// Seed of the shard function. Cannot change: a new seed would reshuffle every tenant.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    #[x_kube(validation = immutable("seed cannot change: it would move every tenant to new lanes at once; create a new pool instead"))]
    pub seed: u32,
}

/// Selects cells by name or label; a cell matching either is selected.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule(
    "(has(self.names) && size(self.names) > 0) || (has(self.matchLabels) && size(self.matchLabels) > 0)",
    "the cell selector selects no cell: list names or set matchLabels",
))]
pub struct CellSelector {
    /// Cells selected by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 40)))]
    #[x_kube(validation = rule(
        format!("self.all(n, n.{})", DNS_LABEL_CEL.trim_start_matches("self.")),
        "every entry of names must be a Cell name: lowercase letters, digits and '-'",
    ))]
    pub names: Vec<String>,
    /// Cells carrying all of these labels (at most 16; label keys and values, as on any
    /// Kubernetes object).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
}

impl CellSelector {
    /// Whether the cell named `name` with `labels` is selected: by name, or by carrying every
    /// one of `matchLabels`.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.names.iter().any(|n| n == name)
            || (!self.match_labels.is_empty()
                && self
                    .match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// Observed state of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShuffleShardPoolStatus {
    /// `Ready`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// C(N,k): how many distinct lane sets exist.
    #[serde(default)]
    pub combinations: u64,
    /// Most lanes any two tenants of one cell share.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub worst_overlap: u32,
    /// Tenants in the pool's cells.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub tenants: u32,
    /// Healthy lanes across the pool's cells.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub lanes_healthy: u32,
    /// Lanes across the pool's cells.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub lanes_total: u32,
    /// `healthy/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes_healthy_summary: Option<String>,
    /// Blast radius per cell: the tenants a failure of each lane would touch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub cells: Vec<PoolCellStatus>,
}

/// Blast radius of one cell's lanes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolCellStatus {
    /// The cell.
    pub name: String,
    /// Tenants on the cell.
    #[schemars(range(max = u32::MAX))]
    pub tenants: u32,
    /// Tenants served by each lane, by lane number.
    #[schemars(length(max = 64), inner(range(max = u32::MAX)))]
    pub tenants_per_lane: Vec<u32>,
    /// Lanes whose pods are ready.
    #[schemars(range(max = u32::MAX))]
    pub lanes_healthy: u32,
}
