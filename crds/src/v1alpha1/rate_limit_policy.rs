//! `RateLimitPolicy`: per-tenant limits, enforced authoritatively by the cells (shared through
//! each cell's Redis) and pre-applied by the routers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_LABEL_CEL, URL_PATH_PATTERN, conditions_schema, match_labels_schema, rule, rule_at,
    rule_showing,
};
use crate::{tenant::TENANT_ID_PATTERN, wire::Priority};

/// Rate limits for the tenants it selects. When several policies select a tenant, the one with
/// the highest `priority` wins, then the most specific selector (tenant id, then labels, then
/// tier, then all tenants), then the name; ties are reported as conflicts.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cellstack.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    doc = "Per-tenant rate limits, enforced by the cells through their Redis and pre-applied by the routers.",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    category = "cellstack",
    status = "RateLimitPolicyStatus",
    derive = "PartialEq",
    cel,
    printcolumn(
        name = "Priority",
        type_ = "integer",
        json_path = ".spec.priority",
        description = "Precedence among policies"
    ),
    printcolumn(
        name = "FailMode",
        type_ = "string",
        json_path = ".spec.failMode",
        description = "Behaviour when the limit store is unreachable"
    ),
    printcolumn(
        name = "Shadow",
        type_ = "boolean",
        json_path = ".spec.shadow",
        description = "Counts but never rejects"
    ),
    printcolumn(
        name = "Tenants",
        type_ = "integer",
        json_path = ".status.tenantsMatched",
        description = "Tenants this policy is effective for"
    ),
    printcolumn(
        name = "Conflicts",
        type_ = "integer",
        json_path = ".status.conflictCount",
        description = "Tenants with an unresolved tie"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// Which tenants the policy applies to.
    pub selector: TenantSelector,

    /// Precedence: of the policies selecting a tenant, the highest priority wins (default 0).
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,

    /// The limits; a request must pass every limit that matches it.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(validation = rule(
        "self.all(l, self.filter(m, m.name == l.name).size() == 1)",
        "limit names must be unique within a policy; rename one of the limits",
    ))]
    pub limits: Vec<Limit>,

    /// What cells do when the limit store (the cell's Redis) is slow or unreachable: `Open`
    /// admits requests (availability first), `Closed` refuses them with 503 (protection first).
    #[serde(default)]
    pub fail_mode: FailMode,

    /// Count what would be limited, in metrics, without rejecting anything.
    #[serde(default)]
    pub shadow: bool,

    /// The priority class of the selected tenants' requests: `high`, `normal` (default) or
    /// `low`. An overloaded cell sheds `low` first and `high` last. A request's
    /// `x-cellstack-priority` header may lower its class, never raise it.
    #[serde(default)]
    pub request_priority: Priority,
}

/// Selects tenants by id, tier or TenantAssignment labels; a tenant matching any listed
/// criterion is selected. `allTenants: true` selects every tenant and excludes the others.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "self.allTenants || (has(self.tenantIds) && size(self.tenantIds) > 0) || (has(self.tiers) && size(self.tiers) > 0) || (has(self.matchLabels) && size(self.matchLabels) > 0)",
        "the selector selects no tenant: set tenantIds, tiers or matchLabels, or allTenants: true",
    ),
    validation = rule_at(
        "!self.allTenants || ((!has(self.tenantIds) || size(self.tenantIds) == 0) && (!has(self.tiers) || size(self.tiers) == 0) && (!has(self.matchLabels) || size(self.matchLabels) == 0))",
        ".allTenants",
        "allTenants: true selects every tenant; remove tenantIds, tiers and matchLabels, or set allTenants: false",
    ),
)]
pub struct TenantSelector {
    /// Select every tenant (a default policy; lowest specificity).
    #[serde(default)]
    pub all_tenants: bool,
    /// Tenants selected by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 40)))]
    #[x_kube(validation = rule(
        format!("self.all(id, id.matches('{TENANT_ID_PATTERN}'))"),
        "every entry of tenantIds must be a tenant id: 1-40 lowercase letters, digits and '-', starting and ending with a letter or digit",
    ))]
    pub tenant_ids: Vec<String>,
    /// Tenants selected by tier (`spec.tier` of their TenantAssignment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 32)))]
    #[x_kube(validation = rule(
        format!("self.all(t, t.{})", DNS_LABEL_CEL.trim_start_matches("self.")),
        "every tier must be lowercase letters, digits and '-', such as 'premium'",
    ))]
    pub tiers: Vec<String>,
    /// Tenants whose TenantAssignment carries all of these labels (at most 16; label keys and
    /// values, as on any Kubernetes object).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
}

/// One limit: `requests` per `periodSeconds`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_at(
        "self.algorithm != 'TokenBucket' || !has(self.burst) || self.burst >= self.requests",
        ".burst",
        "burst must be at least requests: a bucket smaller than one period's allowance can never admit the configured rate; raise burst or lower requests",
    ),
    validation = rule_at(
        "self.algorithm != 'SlidingWindow' || !has(self.burst)",
        ".burst",
        "burst applies to the TokenBucket algorithm only; remove burst or set algorithm: TokenBucket",
    ),
)]
pub struct Limit {
    /// Name of the limit, unique in the policy; names the limiter's state and metrics.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = rule(DNS_LABEL_CEL, "limit name must be lowercase letters, digits and '-', such as 'writes'"))]
    pub name: String,
    /// Requests allowed per period.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests: u32,
    /// Length of the period in seconds (default 1).
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 86_400))]
    pub period_seconds: u32,
    /// TokenBucket only: requests admitted at once after a quiet period (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub burst: Option<u32>,
    /// `TokenBucket` (GCRA: smooth rate with bursts) or `SlidingWindow` (at most `requests` in
    /// any window of `periodSeconds`).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Only requests matching this count against the limit (default: all requests).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RequestMatch>,
}

fn default_period() -> u32 {
    1
}

/// Rate-limiting algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    TokenBucket,
    SlidingWindow,
}

/// Behaviour when the limit store is unreachable.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Admit requests.
    #[default]
    Open,
    /// Refuse requests with 503.
    Closed,
}

/// Which requests a limit counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// HTTP methods counted (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,
    /// Only paths starting with this prefix are counted: a URL path as requests carry it,
    /// `/` then letters, digits, `-._~!$&'()*+,;=:@/` and `%XX` escapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = rule_showing(
        format!("self.matches(r\"{URL_PATH_PATTERN}\")"),
        "pathPrefix must be a URL path as requests carry it: '/' then letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes (percent-encode spaces, control characters, '?', '#' and non-ASCII characters: a request path never holds them raw, so the limit would never apply), such as '/v1/items'",
        "self",
    ))]
    pub path_prefix: Option<String>,
}

/// An HTTP method.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
}

/// Observed state of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicyStatus {
    /// `Ready`, `Acknowledged` (every target cell enforces this version), `ConflictFree`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tenants for which this policy is the effective one.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub tenants_matched: u32,
    /// Tenants selected by this and another policy of equal precedence.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub conflict_count: u32,
    /// The first few conflicts, for a person to resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub conflicts: Vec<PolicyConflict>,
    /// Cells that enforce the current version of this policy.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub cells_acknowledged: u32,
    /// Cells holding tenants this policy applies to.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub cells_total: u32,
}

/// A tenant selected by policies of equal precedence.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConflict {
    /// The tenant.
    pub tenant: String,
    /// The tied policies, the winner (first by name) first.
    pub policies: Vec<String>,
}
