//! The effective rate-limit policies of a cell, as the operator writes them (a ConfigMap mounted
//! as a file) and the cell runtime and router read them. One policy per tenant, already resolved:
//! readers never apply precedence rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    tenant::TenantId,
    v1alpha1::{Algorithm, FailMode, HttpMethod},
    wire::Priority,
};

/// Key of the JSON document in the policy ConfigMap.
pub const POLICY_FILE_KEY: &str = "policies.json";

/// Every tenant's effective policy in one cell.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellPolicies {
    /// Changes whenever the content changes; cells report the version they enforce.
    pub version: String,
    /// Policy for tenants not listed in `tenants` (none: such tenants are not limited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<EffectivePolicy>,
    #[serde(default)]
    pub tenants: BTreeMap<TenantId, EffectivePolicy>,
}

impl CellPolicies {
    /// The policy that applies to `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Option<&EffectivePolicy> {
        self.tenants.get(tenant).or(self.default.as_ref())
    }
}

/// The limits one tenant is held to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// The RateLimitPolicy this came from.
    pub policy: String,
    pub fail_mode: FailMode,
    /// Count, never reject.
    #[serde(default)]
    pub shadow: bool,
    pub limits: Vec<EffectiveLimit>,
    /// The class of the tenant's requests; a request may only ask for a lower one.
    #[serde(default)]
    pub request_priority: Priority,
}

/// One limit, in the units the enforcers use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveLimit {
    pub name: String,
    pub algorithm: Algorithm,
    /// Requests per period.
    pub requests: u32,
    pub period_ms: u64,
    /// Token bucket capacity (equals `requests` when the policy gave none).
    pub burst: u32,
    /// Counted methods; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl EffectiveLimit {
    /// Whether a request with `method` and `path` counts against this limit.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok =
            self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == method);
        let path_ok = self
            .path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p));
        method_ok && path_ok
    }
}

impl HttpMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::GET => "GET",
            Self::HEAD => "HEAD",
            Self::POST => "POST",
            Self::PUT => "PUT",
            Self::PATCH => "PATCH",
            Self::DELETE => "DELETE",
            Self::OPTIONS => "OPTIONS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(methods: Vec<HttpMethod>, prefix: Option<&str>) -> EffectiveLimit {
        EffectiveLimit {
            name: "l".into(),
            algorithm: Algorithm::TokenBucket,
            requests: 1,
            period_ms: 1000,
            burst: 1,
            methods,
            path_prefix: prefix.map(str::to_owned),
        }
    }

    #[test]
    fn a_limit_matches_by_method_and_path_prefix() {
        assert!(limit(vec![], None).matches("GET", "/x"));
        let writes = limit(vec![HttpMethod::PUT, HttpMethod::POST], Some("/v1/"));
        assert!(writes.matches("PUT", "/v1/items/a"));
        assert!(!writes.matches("GET", "/v1/items/a"));
        assert!(!writes.matches("PUT", "/admin"));
    }

    #[test]
    fn listed_tenants_get_their_policy_and_others_the_default() {
        let policy = |name: &str| EffectivePolicy {
            policy: name.into(),
            fail_mode: FailMode::Open,
            shadow: false,
            limits: vec![],
            request_priority: Priority::Normal,
        };
        let mut p = CellPolicies {
            version: "1".into(),
            default: Some(policy("default")),
            ..Default::default()
        };
        p.tenants
            .insert(TenantId::parse("acme").unwrap(), policy("acme"));
        assert_eq!(p.for_tenant("acme").unwrap().policy, "acme");
        assert_eq!(p.for_tenant("other").unwrap().policy, "default");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<CellPolicies>(&json).unwrap(), p);
    }
}
