//! Joins the caches to [`crate::logic::resolve`]: the effective policies of a cell's tenants and the
//! edge limits of every tenant, from the TenantAssignments and RateLimitPolicies as they are.

use std::time::Instant;

use cellstack_api::{
    admin::{POLICY_OVERRIDE_TTL_MS, PolicyOverride},
    policy::CellPolicies,
    v1alpha1::RateLimitPolicy,
};
use kube::ResourceExt;

use crate::{
    cached_tenant::CachedTenant,
    logic::resolve::{self, PolicyView, Resolution, TenantView},
};

pub mod hold;

/// The policies as resolution reads them.
pub fn policy_views(policies: &[RateLimitPolicy]) -> Vec<PolicyView> {
    policies.iter().map(PolicyView::from_policy).collect()
}

/// Resolves `tenants` (invalid ids are skipped: the API server admits none) under `policies`.
pub fn resolve<'a>(
    tenants: impl IntoIterator<Item = &'a CachedTenant>,
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
    tenants: impl IntoIterator<Item = &'a CachedTenant> + Clone,
    policies: &[PolicyView],
) -> Result<CellPolicies, serde_json::Error> {
    let resolution = resolve(tenants.clone(), policies);
    let ids: Vec<_> = tenants
        .into_iter()
        .filter_map(|ta| TenantView::from_assignment(ta).ok().map(|v| v.id))
        .collect();
    resolve::cell_policies(&resolution, ids.iter())
}

/// The policy file to write for cell `cell` now: [`cell_file`], unless a test holds this cell's
/// file back ([`hold`]; never outside tests).
pub fn cell_file_of<'a>(
    cell: &str,
    tenants: impl IntoIterator<Item = &'a CachedTenant> + Clone,
    policies: &[PolicyView],
) -> Result<CellPolicies, serde_json::Error> {
    let file = cell_file(tenants, policies)?;
    Ok(hold::apply(cell, file, Instant::now()))
}

/// Whether `tenant` is held to a policy other than the cells' default. Resolution picks each
/// tenant's policy from the policies' selectors and that tenant alone, so this needs no other
/// tenant: [`policy_override`] builds the whole cell's file (for its version) only for the
/// tenants this says have one of their own — at 100k tenants, building it for every new
/// placement cost more than the placement itself.
pub fn has_own_policy(tenant: &CachedTenant, policies: &[PolicyView]) -> bool {
    let Ok(view) = TenantView::from_assignment(tenant) else {
        return false;
    };
    let resolution = resolve::resolve(std::slice::from_ref(&view), policies);
    resolution
        .per_tenant
        .get(&view.id)
        .is_some_and(|name| Some(name.as_str()) != resolution.default.as_deref())
}

/// What a move hands its target `cell` ahead of the cell's policy file: the tenant's effective
/// policy, with the version of the file the cell will get with the tenant in it. `tenant` is
/// the assignment as the mover last read it (its status names the move, so the target holds
/// it); `others` are the cached assignments (the tenant's own cached copy is left out).
///
/// `None` when the file needs no help: the tenant is held to the default policy (which every
/// file carries) or to none.
pub fn policy_override<'a>(
    tenant: &'a CachedTenant,
    cell: &str,
    others: impl IntoIterator<Item = &'a CachedTenant>,
    policies: &[PolicyView],
) -> Result<Option<PolicyOverride>, serde_json::Error> {
    let name = tenant.name_any();
    let held: Vec<&CachedTenant> = others
        .into_iter()
        .filter(|ta| ta.name_any() != name && crate::logic::cell::tenants::holds(cell, ta))
        .chain(std::iter::once(tenant))
        .collect();
    let file = cell_file(held.iter().copied(), policies)?;
    let Ok(id) = TenantView::from_assignment(tenant).map(|v| v.id) else {
        return Ok(None);
    };
    // The file lists exactly the tenants whose policy differs from the default.
    Ok(file.tenants.get(&id).map(|policy| PolicyOverride {
        version: file.version.clone(),
        policy: policy.clone(),
        ttl_ms: POLICY_OVERRIDE_TTL_MS,
    }))
}

#[cfg(test)]
mod tests {
    use cellstack_api::v1alpha1::{
        Algorithm, FailMode, Limit, MoveStep, RateLimitPolicySpec, TenantSelector,
    };

    use super::*;
    use crate::fixtures::TenantFixture;

    fn policy(name: &str, selector: TenantSelector, requests: u32) -> PolicyView {
        PolicyView::from_spec(
            name,
            &RateLimitPolicySpec {
                selector,
                priority: 0,
                limits: vec![Limit {
                    name: "requests".into(),
                    requests,
                    period_seconds: 1,
                    burst: None,
                    algorithm: Algorithm::TokenBucket,
                    match_: None,
                }],
                fail_mode: FailMode::Open,
                shadow: false,
                request_priority: Default::default(),
            },
        )
    }

    fn policies() -> Vec<PolicyView> {
        let all = TenantSelector {
            all_tenants: true,
            ..TenantSelector::default()
        };
        let premium = TenantSelector {
            tenant_ids: vec!["acme".into()],
            ..TenantSelector::default()
        };
        vec![policy("default", all, 100), policy("premium", premium, 500)]
    }

    #[test]
    fn a_move_hands_over_the_tenants_own_policy_with_the_targets_next_file_version() {
        let acme = CachedTenant::test("acme").moving("alpha", "bravo", MoveStep::Prepare);
        let resident = CachedTenant::test("zeta").served_by("bravo");
        // The cache may still show the tenant before its move started.
        let stale_acme = CachedTenant::test("acme").served_by("alpha");
        let views = policies();
        let handed = policy_override(&acme, "bravo", [&resident, &stale_acme], &views)
            .expect("encodes")
            .expect("a policy of its own is handed over");
        assert_eq!(handed.policy.policy, "premium");
        assert_eq!(handed.policy.limits[0].requests, 500);
        // The very file the cell controller writes for bravo once it sees the move.
        let file = cell_file([&resident, &acme], &views).expect("encodes");
        assert_eq!(handed.version, file.version);
        assert!(file.tenants.contains_key("acme"));
        assert_eq!(handed.ttl_ms, POLICY_OVERRIDE_TTL_MS);
    }

    #[test]
    fn a_tenant_on_the_default_policy_needs_no_hand_over() {
        let other = CachedTenant::test("other").moving("alpha", "bravo", MoveStep::Prepare);
        let handed = policy_override(&other, "bravo", [], &policies()).expect("encodes");
        assert_eq!(handed, None);
    }

    /// The check made before building a cell's file gives the answer the file would: acme has
    /// a policy of its own (it gets an override), `other` is on the default (it gets none).
    #[test]
    fn a_tenant_alone_says_whether_it_has_a_policy_of_its_own() {
        let views = policies();
        for (tenant, own) in [("acme", true), ("other", false)] {
            let ta = CachedTenant::test(tenant).moving("alpha", "bravo", MoveStep::Prepare);
            let resident = CachedTenant::test("zeta").served_by("bravo");
            let handed = policy_override(&ta, "bravo", [&resident], &views).expect("encodes");
            assert_eq!(has_own_policy(&ta, &views), own, "{tenant}");
            assert_eq!(handed.is_some(), own, "{tenant}");
        }
    }
}
