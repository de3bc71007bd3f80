//! Pieces shared by the resources: status conditions and the CEL snippets for names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{Schema, SchemaGenerator, json_schema};

/// CEL: a lowercase RFC 1123 label (what Kubernetes accepts as a namespace or Service name).
pub(crate) const DNS_LABEL_CEL: &str = "self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')";

/// CEL: a Kubernetes label value that is not empty.
pub(crate) const LABEL_VALUE_CEL: &str =
    "self.matches('^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$')";

/// Condition types used across the resources.
pub mod condition_type {
    pub const READY: &str = "Ready";
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    /// TenantAssignment: the tenant has a cell.
    pub const PLACED: &str = "Placed";
    /// Cell: `spec.draining` is set and every tenant has moved away; the cell can be deleted.
    pub const DRAINED: &str = "Drained";
    /// RateLimitPolicy: every target cell enforces the current version.
    pub const ACKNOWLEDGED: &str = "Acknowledged";
    /// RateLimitPolicy: no tenant matches two policies of equal precedence.
    pub const CONFLICT_FREE: &str = "ConflictFree";
}

/// Schema of a `conditions` list: Kubernetes' `Condition`, keyed by `type` so server-side apply
/// merges conditions one by one.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "description": "Conditions of the resource's latest observed state; `observedGeneration` says which spec they describe.",
        "items": item,
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// A CEL rule whose failure is reported as an invalid value of the field it sits on, with a
/// message for a person.
pub(crate) fn rule(expr: impl Into<String>, message: &str) -> kube::core::Rule {
    kube::core::Rule::new(expr)
        .message(message)
        .reason(kube::core::Reason::FieldValueInvalid)
}

/// A cross-field rule reported against one field (`field_path` is relative, like `.shardSize`).
pub(crate) fn rule_at(
    expr: impl Into<String>,
    field_path: &str,
    message: &str,
) -> kube::core::Rule {
    rule(expr, message).field_path(field_path)
}

/// A rule that keeps a field from changing once set.
pub(crate) fn immutable(message: &str) -> kube::core::Rule {
    kube::core::Rule::new("self == oldSelf")
        .message(message)
        .reason(kube::core::Reason::FieldValueForbidden)
}

/// The tenant-id rule from [`crate::tenant`], as CEL.
pub(crate) fn tenant_id_rule() -> kube::core::Rule {
    rule(
        format!("self.matches('{}')", crate::tenant::TENANT_ID_PATTERN),
        crate::tenant::TENANT_ID_RULE,
    )
}
