//! Effective rate-limit policy per tenant. Ensures every tenant gets exactly one effective
//! RateLimitPolicy — never an undefined one — by the documented precedence, that ties are
//! reported as conflicts, and that cells and routers receive the same numbers: the cell's
//! [`CellPolicies`] file and the routing table's [`EdgeLimit`]s are both derived from one
//! [`Resolution`].
//!
//! # Precedence
//!
//! Of the policies whose selector selects a tenant, the winner is the one with
//! 1. the highest `priority`, then
//! 2. the most specific *match for that tenant*: the tenant's id listed in `tenantIds`, then
//!    `matchLabels` all carried by the tenant, then the tenant's tier listed in `tiers`, then
//!    `allTenants`. A selector listing several criteria matches a tenant at the most specific
//!    criterion that tenant satisfies. Label selectors are equally specific however many labels
//!    they name; an empty `matchLabels` selects nobody.
//! 3. then the name, first in byte order.
//!
//! A **tie** (a conflict) is two or more policies selecting a tenant with the same highest
//! priority and the same highest specificity: the precedence rules cannot tell them apart, only
//! the name does. The policy whose name sorts first is enforced anyway, so enforcement is never
//! undefined, and the tie is reported ([`Conflict`], winner first) so a person can set
//! priorities. Policies tied *below* the winner are not a conflict: they do not apply.
//!
//! Policy names are unique (RateLimitPolicy is cluster-scoped) and so are tenant ids; the
//! result then depends only on the sets of tenants and policies, never on their order.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hasher,
    io,
    sync::Arc,
};

use cellstack_api::{
    policy::{CellPolicies, EffectiveLimit, EffectivePolicy},
    routing::EdgeLimit,
    tenant::{TenantId, TenantIdError},
    v1alpha1::{PolicyConflict, RateLimitPolicy, RateLimitPolicySpec, TenantSelector},
};
use kube::ResourceExt;

use crate::cached_tenant::{CachedTenant, Labels};

/// What policy resolution needs to know about a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantView {
    /// The tenant id.
    pub id: TenantId,
    /// `spec.tier` of its TenantAssignment (shared with the cache).
    pub tier: Arc<str>,
    /// Labels of its TenantAssignment, shared with the cache (a view is made of every tenant
    /// on every routing-table compile).
    pub labels: Labels,
}

impl TenantView {
    /// A tenant of tier `standard` without labels.
    pub fn new(id: TenantId) -> Self {
        Self {
            id,
            tier: "standard".into(),
            labels: Labels::default(),
        }
    }

    /// The view of a TenantAssignment's tenant; fails on an invalid tenant id (the API server
    /// refuses those, but an object written before validation existed may still carry one).
    pub fn from_assignment(ta: &CachedTenant) -> Result<Self, TenantIdError> {
        Ok(Self {
            id: TenantId::parse(ta.tenant_id())?,
            tier: ta.spec.tier.clone(),
            labels: ta.labels().clone(),
        })
    }
}

/// What resolution needs to know about a RateLimitPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyView {
    /// The policy's name.
    pub name: String,
    /// `spec.priority`.
    pub priority: i32,
    /// `spec.selector`.
    pub selector: TenantSelector,
    /// The limits in the form enforcers read, named after this policy.
    pub effective: EffectivePolicy,
}

impl PolicyView {
    /// The view of a RateLimitPolicy object.
    pub fn from_policy(policy: &RateLimitPolicy) -> Self {
        Self::from_spec(policy.name_any(), &policy.spec)
    }

    /// The view of the policy `name` with `spec`.
    pub fn from_spec(name: impl Into<String>, spec: &RateLimitPolicySpec) -> Self {
        let name = name.into();
        Self {
            effective: effective_policy(&name, spec),
            name,
            priority: spec.priority,
            selector: spec.selector.clone(),
        }
    }
}

/// The limits of `spec` in the units cells and routers use: periods in milliseconds, burst
/// defaulting to `requests`, methods sorted and deduplicated.
pub fn effective_policy(name: &str, spec: &RateLimitPolicySpec) -> EffectivePolicy {
    EffectivePolicy {
        policy: name.to_owned(),
        fail_mode: spec.fail_mode,
        shadow: spec.shadow,
        request_priority: spec.request_priority,
        limits: spec
            .limits
            .iter()
            .map(|l| {
                let mut methods = l
                    .match_
                    .as_ref()
                    .map_or_else(Vec::new, |m| m.methods.clone());
                methods.sort_unstable();
                methods.dedup();
                EffectiveLimit {
                    name: l.name.clone(),
                    algorithm: l.algorithm,
                    requests: l.requests,
                    period_ms: u64::from(l.period_seconds) * 1000,
                    burst: l.burst.unwrap_or(l.requests),
                    methods,
                    path_prefix: l.match_.as_ref().and_then(|m| m.path_prefix.clone()),
                }
            })
            .collect(),
    }
}

/// How specifically a selector matches one tenant, least specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Specificity {
    /// `allTenants: true`.
    AllTenants,
    /// The tenant's tier is in `tiers`.
    Tier,
    /// The tenant carries every label of `matchLabels`.
    Labels,
    /// The tenant's id is in `tenantIds`.
    TenantId,
}

/// How specifically `selector` selects `tenant`, or `None` when it does not.
pub fn specificity(selector: &TenantSelector, tenant: &TenantView) -> Option<Specificity> {
    let id_listed = selector
        .tenant_ids
        .iter()
        .any(|id| id == tenant.id.as_str());
    let tier_listed = selector.tiers.iter().any(|t| *t == *tenant.tier);
    level(selector, tenant, id_listed, tier_listed)
}

/// The most specific criterion of `selector` that `tenant` satisfies, given whether its id and
/// tier are listed.
fn level(
    selector: &TenantSelector,
    tenant: &TenantView,
    id_listed: bool,
    tier_listed: bool,
) -> Option<Specificity> {
    if id_listed {
        Some(Specificity::TenantId)
    } else if labels_match(&selector.match_labels, &tenant.labels) {
        Some(Specificity::Labels)
    } else if tier_listed {
        Some(Specificity::Tier)
    } else if selector.all_tenants {
        Some(Specificity::AllTenants)
    } else {
        None
    }
}

/// A non-empty `wanted` all carried by `labels`.
fn labels_match(wanted: &BTreeMap<String, String>, labels: &Labels) -> bool {
    !wanted.is_empty()
        && wanted
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
}

/// A selector prepared for many tenants: id and tier lookups in hash sets.
struct Compiled<'a> {
    policy: &'a PolicyView,
    ids: HashSet<&'a str>,
    tiers: HashSet<&'a str>,
}

impl Compiled<'_> {
    fn specificity(&self, tenant: &TenantView) -> Option<Specificity> {
        level(
            &self.policy.selector,
            tenant,
            self.ids.contains(tenant.id.as_str()),
            self.tiers.contains(&*tenant.tier),
        )
    }
}

/// Policies of equal precedence selecting one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The tenant.
    pub tenant: TenantId,
    /// The priority the tied policies share.
    pub priority: i32,
    /// The specificity at which they all select the tenant.
    pub specificity: Specificity,
    /// The tied policies sorted by name; the first is enforced.
    pub policies: Vec<String>,
}

impl From<&Conflict> for PolicyConflict {
    fn from(c: &Conflict) -> Self {
        Self {
            tenant: c.tenant.to_string(),
            policies: c.policies.clone(),
        }
    }
}

/// The effective policy of every tenant, and what each policy's status reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Each selected tenant's winning policy, by name. Tenants no policy selects are absent.
    pub per_tenant: BTreeMap<TenantId, String>,
    /// The effective form of every policy, by name.
    pub policies: BTreeMap<String, EffectivePolicy>,
    /// For every policy, the tenants it is the effective policy of (0 when none).
    pub matched_per_policy: BTreeMap<String, u32>,
    /// Tenants selected by tied policies, sorted by tenant.
    pub conflicts: Vec<Conflict>,
    /// The policy a tenant selected only by `allTenants` policies gets: the cells' default.
    pub default: Option<String>,
}

impl Resolution {
    /// The effective policy of `tenant`, if any policy selects it.
    pub fn effective(&self, tenant: &str) -> Option<&EffectivePolicy> {
        self.per_tenant
            .get(tenant)
            .and_then(|name| self.policies.get(name))
    }

    /// The effective policy of tenants selected only by `allTenants` policies.
    pub fn default_policy(&self) -> Option<&EffectivePolicy> {
        self.default
            .as_ref()
            .and_then(|name| self.policies.get(name))
    }

    /// The conflicts `policy` is part of (as winner or loser), for its status.
    pub fn conflicts_of<'a>(&'a self, policy: &'a str) -> impl Iterator<Item = &'a Conflict> {
        self.conflicts
            .iter()
            .filter(move |c| c.policies.iter().any(|p| p == policy))
    }
}

/// Resolves the effective policy of every tenant (see the module doc for the precedence).
pub fn resolve(tenants: &[TenantView], policies: &[PolicyView]) -> Resolution {
    let mut ordered: Vec<&PolicyView> = policies.iter().collect();
    // By name, so the first of tied policies met below is the one whose name sorts first.
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    let compiled: Vec<Compiled> = ordered
        .iter()
        .map(|p| Compiled {
            policy: p,
            ids: p.selector.tenant_ids.iter().map(String::as_str).collect(),
            tiers: p.selector.tiers.iter().map(String::as_str).collect(),
        })
        .collect();

    let mut resolution = Resolution {
        policies: ordered
            .iter()
            .map(|p| (p.name.clone(), p.effective.clone()))
            .collect(),
        matched_per_policy: ordered.iter().map(|p| (p.name.clone(), 0)).collect(),
        default: ordered
            .iter()
            .filter(|p| p.selector.all_tenants)
            // Highest priority; `min_by` keeps the first (by name) of equal ones.
            .min_by(|a, b| b.priority.cmp(&a.priority))
            .map(|p| p.name.clone()),
        ..Resolution::default()
    };

    let mut tied: Vec<&str> = Vec::new();
    for tenant in tenants {
        let mut best: Option<(i32, Specificity)> = None;
        tied.clear();
        for c in &compiled {
            let Some(specificity) = c.specificity(tenant) else {
                continue;
            };
            let key = (c.policy.priority, specificity);
            if best.is_none_or(|b| key > b) {
                best = Some(key);
                tied.clear();
            }
            if best == Some(key) {
                tied.push(&c.policy.name);
            }
        }
        let (Some((priority, specificity)), Some(winner)) = (best, tied.first()) else {
            continue;
        };
        resolution
            .per_tenant
            .insert(tenant.id.clone(), (*winner).to_owned());
        if let Some(count) = resolution.matched_per_policy.get_mut(*winner) {
            *count += 1;
        }
        if tied.len() > 1 {
            resolution.conflicts.push(Conflict {
                tenant: tenant.id.clone(),
                priority,
                specificity,
                policies: tied.iter().map(|p| (*p).to_owned()).collect(),
            });
        }
    }
    resolution.conflicts.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    resolution
}

/// The policy file of one cell: the default policy, and every tenant of the cell whose effective
/// policy differs from it (readers fall back to the default, so listing the others would only
/// grow the ConfigMap). `version` is a stable hash of the content, so a cell can report which
/// content it enforces and equal content always has the same version.
pub fn cell_policies<'a>(
    resolution: &Resolution,
    tenants_of_cell: impl IntoIterator<Item = &'a TenantId>,
) -> Result<CellPolicies, serde_json::Error> {
    let default_name = resolution.default.as_deref();
    let tenants = tenants_of_cell
        .into_iter()
        .filter_map(|id| {
            let name = resolution.per_tenant.get(id)?;
            if Some(name.as_str()) == default_name {
                return None;
            }
            let policy = resolution.policies.get(name)?;
            Some((id.clone(), policy.clone()))
        })
        .collect();
    let mut policies = CellPolicies {
        version: String::new(),
        default: resolution.default_policy().cloned(),
        tenants,
    };
    policies.version = content_version(&policies)?;
    Ok(policies)
}

/// FNV-1a (64-bit) of the JSON encoding of `policies` with an empty version, as 16 hex digits.
/// FNV-1a is fixed by its specification, so the version of equal content never changes across
/// operator builds.
fn content_version(policies: &CellPolicies) -> Result<String, serde_json::Error> {
    let mut hasher = Fnv1a::default();
    if policies.version.is_empty() {
        serde_json::to_writer(&mut hasher, policies)?;
    } else {
        let unversioned = CellPolicies {
            version: String::new(),
            ..policies.clone()
        };
        serde_json::to_writer(&mut hasher, &unversioned)?;
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// The 64-bit FNV-1a hash, fed through `io::Write` so content is hashed without being buffered.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Hasher::write(self, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The router's pre-limit for a tenant held to `policy`, or `None` when the router should not
/// pre-limit: the policy is in shadow mode (it must never reject), or none of its limits counts
/// every request (a limit on some methods or paths cannot be applied to all traffic).
///
/// Of the limits that count every request, the lowest rate wins (compared exactly), then the
/// smaller burst, then the name: a request passing the router's limit may still be refused by
/// another of the cell's limits, which stay authoritative.
pub fn edge_limit(policy: &EffectivePolicy) -> Option<EdgeLimit> {
    if policy.shadow {
        return None;
    }
    policy
        .limits
        .iter()
        .filter(|l| l.methods.is_empty() && l.path_prefix.is_none())
        .filter(|l| l.requests > 0 && l.period_ms > 0 && l.burst > 0)
        .min_by(|a, b| {
            // a.requests / a.period_ms against b.requests / b.period_ms, without division.
            let lhs = u128::from(a.requests) * u128::from(b.period_ms);
            let rhs = u128::from(b.requests) * u128::from(a.period_ms);
            lhs.cmp(&rhs)
                .then(a.burst.cmp(&b.burst))
                .then_with(|| a.name.cmp(&b.name))
        })
        .and_then(|l| {
            Some(EdgeLimit {
                requests: l.requests,
                period_ms: u32::try_from(l.period_ms).ok()?,
                burst: l.burst,
            })
        })
}

/// The routing table's edge-limit section: distinct limits, sorted, and each tenant's index
/// into them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeLimits {
    /// Distinct edge limits in ascending order (as `RoutingTable::canonical` keeps them).
    pub limits: Vec<EdgeLimit>,
    /// Index into `limits` of each tenant that has an edge limit.
    pub per_tenant: BTreeMap<TenantId, u32>,
}

impl EdgeLimits {
    /// The index of `tenant`'s edge limit, for `TenantRoute::edge_limit`.
    pub fn index_of(&self, tenant: &str) -> Option<u32> {
        self.per_tenant.get(tenant).copied()
    }
}

/// Derives every tenant's edge limit from `resolution`, once per policy.
pub fn edge_limits(resolution: &Resolution) -> EdgeLimits {
    let by_policy: BTreeMap<&str, EdgeLimit> = resolution
        .policies
        .iter()
        .filter_map(|(name, p)| Some((name.as_str(), edge_limit(p)?)))
        .collect();
    let mut limits: Vec<EdgeLimit> = by_policy.values().copied().collect();
    limits.sort_unstable();
    limits.dedup();
    let index: BTreeMap<EdgeLimit, u32> = limits
        .iter()
        .enumerate()
        .map(|(i, l)| (*l, i as u32))
        .collect();
    let per_tenant = resolution
        .per_tenant
        .iter()
        .filter_map(|(tenant, policy)| {
            let limit = by_policy.get(policy.as_str())?;
            Some((tenant.clone(), *index.get(limit)?))
        })
        .collect();
    EdgeLimits { limits, per_tenant }
}

#[cfg(test)]
mod tests {
    use cellstack_api::{
        routing::{CellRoute, CellState, RoutingTable, TenantRoute},
        v1alpha1::{Algorithm, FailMode, HttpMethod, Limit, RequestMatch},
    };
    use proptest::prelude::*;

    use super::*;

    fn id(raw: &str) -> TenantId {
        TenantId::parse(raw).expect("valid tenant id")
    }

    /// Fixture builders: `tenant("acme").of_tier("premium").labelled("plan", "gold")`.
    fn tenant(raw: &str) -> TenantView {
        TenantView::new(id(raw))
    }

    impl TenantView {
        fn of_tier(mut self, tier: &str) -> Self {
            self.tier = tier.into();
            self
        }
        fn labelled(mut self, key: &str, value: &str) -> Self {
            let mut labels = self.labels.to_map();
            labels.insert(key.to_owned(), value.to_owned());
            self.labels = labels.into();
            self
        }
    }

    /// `policy("gold").for_tier("premium").at_priority(10).with_limits(vec![limit("all", 100, 1)])`.
    fn policy(name: &str) -> PolicyView {
        PolicyView::from_spec(
            name,
            &RateLimitPolicySpec {
                selector: TenantSelector::default(),
                priority: 0,
                limits: vec![limit("all", 10, 1)],
                fail_mode: FailMode::Open,
                shadow: false,
                request_priority: Default::default(),
            },
        )
    }

    fn limit(name: &str, requests: u32, period_seconds: u32) -> Limit {
        Limit {
            name: name.to_owned(),
            requests,
            period_seconds,
            burst: None,
            algorithm: Algorithm::TokenBucket,
            match_: None,
        }
    }

    impl PolicyView {
        fn for_all(mut self) -> Self {
            self.selector.all_tenants = true;
            self
        }
        fn for_tenant(mut self, tenant: &str) -> Self {
            self.selector.tenant_ids.push(tenant.to_owned());
            self
        }
        fn for_tier(mut self, tier: &str) -> Self {
            self.selector.tiers.push(tier.to_owned());
            self
        }
        fn for_label(mut self, key: &str, value: &str) -> Self {
            self.selector
                .match_labels
                .insert(key.to_owned(), value.to_owned());
            self
        }
        fn at_priority(mut self, priority: i32) -> Self {
            self.priority = priority;
            self
        }
        fn with_limits(mut self, limits: Vec<Limit>) -> Self {
            let spec = RateLimitPolicySpec {
                selector: self.selector.clone(),
                priority: self.priority,
                limits,
                fail_mode: self.effective.fail_mode,
                shadow: self.effective.shadow,
                request_priority: self.effective.request_priority,
            };
            self.effective = effective_policy(&self.name, &spec);
            self
        }
        fn shadow(mut self) -> Self {
            self.effective.shadow = true;
            self
        }
    }

    fn winner<'a>(r: &'a Resolution, tenant: &str) -> Option<&'a str> {
        r.per_tenant.get(tenant).map(String::as_str)
    }

    #[test]
    fn the_policys_request_priority_reaches_the_effective_policy() {
        let mut spec = RateLimitPolicySpec {
            selector: TenantSelector::default(),
            priority: 0,
            limits: vec![limit("all", 10, 1)],
            fail_mode: FailMode::Open,
            shadow: false,
            request_priority: Default::default(),
        };
        assert_eq!(
            effective_policy("p", &spec).request_priority,
            cellstack_api::wire::Priority::Normal,
            "normal unless the policy says otherwise"
        );
        spec.request_priority = cellstack_api::wire::Priority::High;
        assert_eq!(
            effective_policy("p", &spec).request_priority,
            cellstack_api::wire::Priority::High
        );
    }

    #[test]
    fn at_equal_priority_the_most_specific_selector_wins() {
        let policies = [
            policy("everyone").for_all(),
            policy("premium").for_tier("premium"),
            policy("gold").for_label("plan", "gold"),
            policy("acme-only").for_tenant("acme"),
        ];
        let tenants = [
            tenant("acme").of_tier("premium").labelled("plan", "gold"),
            tenant("globex").of_tier("premium").labelled("plan", "gold"),
            tenant("initech").of_tier("premium"),
            tenant("umbrella"),
        ];
        let r = resolve(&tenants, &policies);
        assert_eq!(winner(&r, "acme"), Some("acme-only"));
        assert_eq!(winner(&r, "globex"), Some("gold"));
        assert_eq!(winner(&r, "initech"), Some("premium"));
        assert_eq!(winner(&r, "umbrella"), Some("everyone"));
        assert!(r.conflicts.is_empty());
        assert_eq!(
            r.matched_per_policy.values().copied().collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
    }

    #[test]
    fn a_higher_priority_beats_a_more_specific_selector() {
        let policies = [
            policy("acme-only").for_tenant("acme"),
            policy("emergency").for_all().at_priority(100),
        ];
        let r = resolve(&[tenant("acme")], &policies);
        assert_eq!(winner(&r, "acme"), Some("emergency"));
        assert_eq!(r.matched_per_policy["acme-only"], 0);
    }

    #[test]
    fn a_tie_is_a_conflict_and_the_first_name_is_enforced() {
        let policies = [
            policy("zeta").for_tier("premium"),
            policy("alpha").for_tier("premium"),
            policy("loser").for_tier("premium").at_priority(-1),
        ];
        let r = resolve(&[tenant("acme").of_tier("premium")], &policies);
        assert_eq!(winner(&r, "acme"), Some("alpha"));
        assert_eq!(
            r.conflicts,
            [Conflict {
                tenant: id("acme"),
                priority: 0,
                specificity: Specificity::Tier,
                policies: vec!["alpha".into(), "zeta".into()],
            }]
        );
        assert_eq!(r.conflicts_of("zeta").count(), 1);
        assert_eq!(r.conflicts_of("loser").count(), 0);
        assert_eq!(
            PolicyConflict::from(&r.conflicts[0]),
            PolicyConflict {
                tenant: "acme".into(),
                policies: vec!["alpha".into(), "zeta".into()]
            }
        );
    }

    #[test]
    fn policies_tied_below_the_winner_are_no_conflict() {
        let policies = [
            policy("a").for_all(),
            policy("b").for_all(),
            policy("vip").for_tenant("acme"),
        ];
        let r = resolve(&[tenant("acme")], &policies);
        assert_eq!(winner(&r, "acme"), Some("vip"));
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn a_selector_matches_at_its_most_specific_criterion_for_each_tenant() {
        let both = policy("both").for_tenant("acme").for_tier("premium");
        let tier = policy("tier").for_tier("premium");
        let r = resolve(
            &[
                tenant("acme").of_tier("premium"),
                tenant("globex").of_tier("premium"),
            ],
            &[both, tier],
        );
        assert_eq!(winner(&r, "acme"), Some("both"));
        assert_eq!(r.conflicts.len(), 1, "globex is tied between both and tier");
        assert_eq!(r.conflicts[0].tenant, id("globex"));
    }

    #[test]
    fn labels_select_only_tenants_carrying_all_of_them_and_none_select_nobody() {
        let gold_eu = policy("gold-eu")
            .for_label("plan", "gold")
            .for_label("region", "eu");
        let no_labels = policy("empty");
        let r = resolve(
            &[
                tenant("acme")
                    .labelled("plan", "gold")
                    .labelled("region", "eu"),
                tenant("globex").labelled("plan", "gold"),
            ],
            &[gold_eu, no_labels],
        );
        assert_eq!(winner(&r, "acme"), Some("gold-eu"));
        assert_eq!(winner(&r, "globex"), None);
        assert_eq!(r.matched_per_policy["empty"], 0);
    }

    #[test]
    fn limits_are_converted_to_the_units_enforcers_use() {
        let spec: RateLimitPolicySpec = serde_json::from_value(serde_json::json!({
            "selector": { "allTenants": true },
            "failMode": "Closed",
            "limits": [
                { "name": "reads", "requests": 100, "periodSeconds": 60 },
                { "name": "writes", "requests": 10, "burst": 50,
                  "match": { "methods": ["PUT", "POST", "PUT"], "pathPrefix": "/v1/" } },
                { "name": "window", "requests": 5, "algorithm": "SlidingWindow" },
            ],
        }))
        .expect("spec deserializes");
        let p = effective_policy("default", &spec);
        assert_eq!(p.policy, "default");
        assert_eq!(p.fail_mode, FailMode::Closed);
        assert_eq!(
            p.limits,
            [
                EffectiveLimit {
                    name: "reads".into(),
                    algorithm: Algorithm::TokenBucket,
                    requests: 100,
                    period_ms: 60_000,
                    burst: 100,
                    methods: vec![],
                    path_prefix: None,
                },
                EffectiveLimit {
                    name: "writes".into(),
                    algorithm: Algorithm::TokenBucket,
                    requests: 10,
                    period_ms: 1000,
                    burst: 50,
                    methods: vec![HttpMethod::POST, HttpMethod::PUT],
                    path_prefix: Some("/v1/".into()),
                },
                EffectiveLimit {
                    name: "window".into(),
                    algorithm: Algorithm::SlidingWindow,
                    requests: 5,
                    period_ms: 1000,
                    burst: 5,
                    methods: vec![],
                    path_prefix: None,
                },
            ]
        );
    }

    #[test]
    fn a_tenant_view_reads_the_assignment_tier_and_labels() {
        let ta: CachedTenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": { "name": "acme", "labels": { "plan": "gold" } },
            "spec": { "tenantId": "acme", "tier": "premium", "automatic": {} },
        }))
        .expect("assignment deserializes");
        assert_eq!(
            TenantView::from_assignment(&ta),
            Ok(tenant("acme").of_tier("premium").labelled("plan", "gold"))
        );
        let mut bad = cellstack_api::v1alpha1::TenantAssignment::from(ta);
        bad.spec.tenant_id = "Not_Valid".into();
        assert!(TenantView::from_assignment(&bad.into()).is_err());
    }

    #[test]
    fn a_cell_file_lists_only_tenants_that_differ_from_the_default() {
        let policies = [
            policy("default").for_all(),
            policy("vip").for_tenant("acme").at_priority(5),
        ];
        let tenants = [tenant("acme"), tenant("globex"), tenant("initech")];
        let r = resolve(&tenants, &policies);
        let ids = [id("acme"), id("globex")];
        let file = cell_policies(&r, &ids).expect("encodes");
        assert_eq!(
            file.default.as_ref().map(|p| p.policy.as_str()),
            Some("default")
        );
        assert_eq!(file.tenants.keys().collect::<Vec<_>>(), [&id("acme")]);
        for t in &tenants {
            let listed = ids.contains(&t.id);
            if listed {
                assert_eq!(file.for_tenant(t.id.as_str()), r.effective(t.id.as_str()));
            }
        }
        assert_eq!(file.version.len(), 16);
    }

    #[test]
    fn the_version_changes_with_the_content_and_only_with_it() {
        let base = [
            policy("default").for_all(),
            policy("vip").for_tenant("acme"),
        ];
        let tenants = [tenant("acme"), tenant("globex")];
        let ids = [id("acme"), id("globex")];
        let v = |policies: &[PolicyView]| {
            cell_policies(&resolve(&tenants, policies), &ids)
                .expect("encodes")
                .version
        };
        let reversed = [base[1].clone(), base[0].clone()];
        assert_eq!(v(&base), v(&reversed));
        let changed = [
            base[0].clone(),
            base[1].clone().with_limits(vec![limit("all", 11, 1)]),
        ];
        assert_ne!(v(&base), v(&changed));
        // A cell with no tenants of its own still gets the default, under a stable version.
        let empty = cell_policies(&resolve(&tenants, &base), &[]).expect("encodes");
        assert!(empty.tenants.is_empty());
        assert_eq!(empty.version, content_version(&empty).expect("encodes"));
    }

    #[test]
    fn edge_limits_take_the_strictest_unconditional_limit_and_skip_shadow_policies() {
        let mut writes_only = limit("writes", 1, 1);
        writes_only.match_ = Some(RequestMatch {
            methods: vec![HttpMethod::PUT],
            path_prefix: None,
        });
        let mut bursty = limit("per-minute", 600, 60);
        bursty.burst = Some(900);
        let strict = policy("strict").for_all().with_limits(vec![
            limit("per-second", 20, 1),
            bursty,
            writes_only.clone(),
        ]);
        assert_eq!(
            edge_limit(&strict.effective),
            Some(EdgeLimit {
                requests: 600,
                period_ms: 60_000,
                burst: 900
            }),
            "10/s beats 20/s; the PUT-only limit is not for the edge"
        );
        assert_eq!(edge_limit(&strict.clone().shadow().effective), None);
        let only_conditional = policy("c").with_limits(vec![writes_only]);
        assert_eq!(edge_limit(&only_conditional.effective), None);
    }

    #[test]
    fn identical_edge_limits_share_one_index_that_the_routing_table_accepts() {
        let policies = [
            policy("a")
                .for_tier("t1")
                .with_limits(vec![limit("x", 5, 1)]),
            policy("b")
                .for_tier("t2")
                .with_limits(vec![limit("y", 5, 1)]),
            policy("c")
                .for_tier("t3")
                .with_limits(vec![limit("z", 1, 1)]),
            policy("d").for_tier("t4").shadow(),
        ];
        let tenants = [
            tenant("t-a").of_tier("t1"),
            tenant("t-b").of_tier("t2"),
            tenant("t-c").of_tier("t3"),
            tenant("t-d").of_tier("t4"),
            tenant("t-e"),
        ];
        let edge = edge_limits(&resolve(&tenants, &policies));
        assert_eq!(edge.limits.len(), 2);
        assert_eq!(edge.index_of("t-a"), edge.index_of("t-b"));
        assert_ne!(edge.index_of("t-a"), edge.index_of("t-c"));
        assert_eq!(edge.index_of("t-d"), None);
        assert_eq!(edge.index_of("t-e"), None);

        let cell = CellRoute {
            name: "alpha".into(),
            zone: None,
            state: CellState::Active,
            lanes: vec!["alpha-0:8080".into()],
            shard_size: 1,
            shard_seed: 0,
        };
        let routes = tenants
            .iter()
            .map(|t| TenantRoute {
                id: t.id.clone(),
                cell: 0,
                epoch: 1,
                shard_variant: 0,
                edge_limit: edge.index_of(t.id.as_str()),
            })
            .collect();
        let table = RoutingTable::canonical(1, 0, vec![cell], edge.limits.clone(), routes)
            .expect("a valid table");
        assert_eq!(table.edge_limits, edge.limits, "already canonical");
        let t_c = table.tenant("t-c").expect("routed");
        assert_eq!(
            table.edge_limits[t_c.edge_limit.expect("limited") as usize],
            EdgeLimit {
                requests: 1,
                period_ms: 1000,
                burst: 1
            }
        );
    }

    // --- properties ---

    const TIERS: [&str; 3] = ["free", "standard", "premium"];

    fn arb_tenants() -> impl Strategy<Value = Vec<TenantView>> {
        proptest::collection::btree_map(0u32..40, (0usize..3, 0u8..4), 0..30).prop_map(|m| {
            m.into_iter()
                .map(|(i, (tier, labels))| {
                    let mut t = tenant(&format!("t{i}")).of_tier(TIERS[tier]);
                    if labels & 1 != 0 {
                        t = t.labelled("plan", "gold");
                    }
                    if labels & 2 != 0 {
                        t = t.labelled("region", "eu");
                    }
                    t
                })
                .collect()
        })
    }

    fn arb_policy(name: String) -> impl Strategy<Value = PolicyView> {
        (
            -2i32..3,
            any::<bool>(),
            proptest::collection::vec(0u32..40, 0..3),
            proptest::collection::vec(0usize..3, 0..2),
            0u8..4,
            1u32..5,
        )
            .prop_map(move |(priority, all, ids, tiers, labels, rate)| {
                let mut p = policy(&name)
                    .at_priority(priority)
                    .with_limits(vec![limit("l", rate, 1)]);
                if all {
                    return p.for_all();
                }
                for i in ids {
                    p = p.for_tenant(&format!("t{i}"));
                }
                for t in tiers {
                    p = p.for_tier(TIERS[t]);
                }
                if labels & 1 != 0 {
                    p = p.for_label("plan", "gold");
                }
                if labels & 2 != 0 {
                    p = p.for_label("region", "eu");
                }
                p
            })
    }

    fn arb_policies() -> impl Strategy<Value = Vec<PolicyView>> {
        (0usize..8)
            .prop_flat_map(|n| {
                (0..n)
                    .map(|i| arb_policy(format!("p{}", (i * 7) % 10)))
                    .collect::<Vec<_>>()
            })
            .prop_map(|mut ps| {
                ps.sort_by(|a, b| a.name.cmp(&b.name));
                ps.dedup_by(|a, b| a.name == b.name);
                ps
            })
    }

    proptest! {
        /// The same policies in any order resolve the same way.
        #[test]
        fn resolution_is_independent_of_policy_order(
            tenants in arb_tenants(), policies in arb_policies(), rotate in 0usize..8, reverse in any::<bool>(),
        ) {
            let mut shuffled = policies.clone();
            if !shuffled.is_empty() {
                let n = rotate % shuffled.len();
                shuffled.rotate_left(n);
            }
            if reverse {
                shuffled.reverse();
            }
            let mut tenants_rev = tenants.clone();
            tenants_rev.reverse();
            prop_assert_eq!(resolve(&tenants, &policies), resolve(&tenants_rev, &shuffled));
        }

        /// The winner has the highest priority of the policies selecting the tenant, the most
        /// specific match at that priority, and a conflict is reported exactly for true ties.
        #[test]
        fn the_winner_follows_the_precedence_and_conflicts_are_exactly_the_ties(
            tenants in arb_tenants(), policies in arb_policies(),
        ) {
            let r = resolve(&tenants, &policies);
            for t in &tenants {
                // Reference: every selecting policy with its key, sorted by precedence.
                let mut selecting: Vec<(i32, Specificity, &str)> = policies
                    .iter()
                    .filter_map(|p| Some((p.priority, specificity(&p.selector, t)?, p.name.as_str())))
                    .collect();
                selecting.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
                let Some(&(priority, spec, name)) = selecting.first() else {
                    prop_assert_eq!(winner(&r, t.id.as_str()), None);
                    continue;
                };
                prop_assert_eq!(winner(&r, t.id.as_str()), Some(name));
                prop_assert!(policies.iter().all(|p| specificity(&p.selector, t).is_none() || p.priority <= priority));
                let tied: Vec<String> = selecting
                    .iter()
                    .filter(|s| (s.0, s.1) == (priority, spec))
                    .map(|s| s.2.to_owned())
                    .collect();
                let conflict = r.conflicts.iter().find(|c| c.tenant == t.id);
                if tied.len() > 1 {
                    prop_assert_eq!(conflict.map(|c| &c.policies), Some(&tied));
                } else {
                    prop_assert!(conflict.is_none());
                }
            }
            let total: u32 = r.matched_per_policy.values().sum();
            prop_assert_eq!(total as usize, r.per_tenant.len());
        }

        /// A cell's file gives each of its tenants exactly the resolved policy.
        #[test]
        fn a_cell_file_enforces_the_resolved_policy_for_each_tenant(
            tenants in arb_tenants(), policies in arb_policies(),
        ) {
            let r = resolve(&tenants, &policies);
            let ids: Vec<TenantId> = tenants.iter().map(|t| t.id.clone()).collect();
            let file = cell_policies(&r, &ids).expect("encodes");
            for t in &tenants {
                prop_assert_eq!(file.for_tenant(t.id.as_str()), r.effective(t.id.as_str()));
            }
            let edge = edge_limits(&r);
            for t in &tenants {
                let expected = r.effective(t.id.as_str()).and_then(edge_limit);
                prop_assert_eq!(edge.index_of(t.id.as_str()).map(|i| edge.limits[i as usize]), expected);
            }
        }
    }
}
