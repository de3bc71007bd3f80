//! Joins the caches to [`crate::resolve`]: the effective policies of a cell's tenants and the
//! edge limits of every tenant, from the TenantAssignments and RateLimitPolicies as they are.

use cellstack_api::{
    policy::CellPolicies,
    v1alpha1::{RateLimitPolicy, TenantAssignment},
};

use crate::resolve::{self, PolicyView, Resolution, TenantView};

/// The policies as resolution reads them.
pub fn policy_views(policies: &[RateLimitPolicy]) -> Vec<PolicyView> {
    policies.iter().map(PolicyView::from_policy).collect()
}

/// Resolves `tenants` (invalid ids are skipped: the API server admits none) under `policies`.
pub fn resolve<'a>(
    tenants: impl IntoIterator<Item = &'a TenantAssignment>,
    policies: &[PolicyView],
) -> Resolution {
    let views: Vec<TenantView> = tenants
        .into_iter()
        .filter_map(|ta| TenantView::from_assignment(ta).ok())
        .collect();
    resolve::resolve(&views, policies)
}

/// The effective-policy file of a cell holding `tenants`.
pub fn cell_file<'a>(
    tenants: impl IntoIterator<Item = &'a TenantAssignment> + Clone,
    policies: &[PolicyView],
) -> Result<CellPolicies, serde_json::Error> {
    let resolution = resolve(tenants.clone(), policies);
    let ids: Vec<_> = tenants
        .into_iter()
        .filter_map(|ta| TenantView::from_assignment(ta).ok().map(|v| v.id))
        .collect();
    resolve::cell_policies(&resolution, ids.iter())
}
