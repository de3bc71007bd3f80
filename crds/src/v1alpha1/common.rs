//! Pieces shared by the resources: status conditions, the CEL snippets for names, and the
//! syntaxes (label keys and values, image references, URL paths, quantities) a value must have
//! before the operator, a Pod, a URL or a header can use it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{Schema, SchemaGenerator, json_schema};

/// CEL: a lowercase RFC 1123 label (what Kubernetes accepts as a namespace or Service name).
pub(crate) const DNS_LABEL_CEL: &str = "self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')";

/// CEL: a Kubernetes label value that is not empty.
pub(crate) const LABEL_VALUE_CEL: &str =
    "self.matches('^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$')";

/// RE2: a Kubernetes label key — an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 letters, digits, `-`, `_` and `.` that starts and ends with a letter or digit. (The prefix's
/// own bound, 253 characters, is checked next to it: see [`label_key_cel`].)
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// RE2: a Kubernetes label value, empty allowed (its 63-character bound is the schema's
/// `maxLength`).
pub const LABEL_VALUE_OR_EMPTY_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// RE2: a container image reference, in the grammar of `github.com/distribution/reference`: an
/// optional registry host (and port), a lowercase repository path, then an optional `:tag` and an
/// optional `@algorithm:hex` digest. A `:` or `@` with nothing after it does not match.
pub const IMAGE_REFERENCE_PATTERN: &str = concat!(
    "^",
    // registry host[:port]/
    r"(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(\.([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(:[0-9]+)?/)?",
    // repository path: lowercase components joined by '/'
    r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*",
    // :tag
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    // @digest
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    "$",
);

/// RE2: what a request path can start with on the wire (RFC 3986 `path-absolute`): `/`, then
/// unreserved characters, sub-delimiters, `:`, `@`, `/` and `%XX` escapes. No space, control
/// character, `?`, `#` or raw non-ASCII character can be in a request path, so a prefix holding
/// one would never match.
pub const URL_PATH_PATTERN: &str = r"^/([A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*$";

/// RE2: a Kubernetes quantity without a sign (a size cannot be negative): a decimal number with
/// an optional binary (`Ki`..`Ei`), decimal (`m`, `k`..`E`) or exponent suffix. The same
/// grammar as `resource.Quantity`, as controller-gen writes it into CRDs.
pub const QUANTITY_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// CEL: whether the string `var` is a label key (see [`LABEL_KEY_PATTERN`]).
pub(crate) fn label_key_cel(var: &str) -> String {
    format!("{var}.matches(r'{LABEL_KEY_PATTERN}') && {var}.indexOf('/') <= 253")
}

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
    /// TenantAssignment: its cell's datastore lost the tenant's data. Cell: some of its tenants'.
    pub const DATA_LOST: &str = "DataLost";
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

/// CEL: the string `value` as a message shows it — quoted when at most 64 characters without a
/// control character, described otherwise (the API server drops a message holding a line break,
/// and would print "failed rule" instead). No `string(size(...))`: the API server cannot bound
/// the length of a number turned into a string, and refuses the rule as too costly.
pub(crate) fn shown(value: &str) -> String {
    format!(
        "({value}.matches(r'^\\P{{Cc}}{{0,64}}$') ? \"'\" + {value} + \"'\" \
         : {value}.matches(r'\\p{{Cc}}') ? 'a value with a control character (such as a tab or a line break)' \
         : 'a value longer than 64 characters')"
    )
}

/// A CEL literal holding `text`.
fn cel_literal(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Like [`rule`], with a message that ends by showing the refused value: `"<message>; got
/// '<value>'"`. `value` is a CEL expression of the offending string (`self` for the field the
/// rule sits on).
pub(crate) fn rule_showing(
    expr: impl Into<String>,
    message: &str,
    value: &str,
) -> kube::core::Rule {
    kube::core::Rule::new(expr)
        .message(kube::core::Message::Expression(format!(
            "{} + '; got ' + {}",
            cel_literal(message),
            shown(value)
        )))
        .reason(kube::core::Reason::FieldValueInvalid)
}

/// Schema of a `matchLabels` map: at most 16 labels, each key a label key and each value a label
/// value (empty allowed), so a selector never names a label no object can carry.
pub(crate) fn match_labels_schema(_: &mut SchemaGenerator) -> Schema {
    let key_ok = label_key_cel("k");
    let key_rule = rule_showing(
        format!("self.all(k, {key_ok})"),
        "every matchLabels key must be a label key: an optional DNS-subdomain prefix of at most 253 characters and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, such as 'cellstack.dev/pool'",
        &format!("self.filter(k, !({key_ok}))[0]"),
    );
    let value_rule = rule_showing(
        format!("self.matches(r'{LABEL_VALUE_OR_EMPTY_PATTERN}')"),
        "a matchLabels value must be a label value: empty, or letters, digits, '-', '_' and '.', starting and ending with a letter or digit, such as 'standard'",
        "self",
    );
    json_schema!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "x-kubernetes-validations": [rule_json(value_rule)],
        },
        "x-kubernetes-validations": [rule_json(key_rule)],
    })
}

/// A rule as the schema holds it.
fn rule_json(rule: kube::core::Rule) -> serde_json::Value {
    // A Rule is strings and enums: serializing it cannot fail.
    serde_json::to_value(rule).expect("a CEL rule serializes to JSON")
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
