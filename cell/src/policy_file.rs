//! The effective policies a lane enforces: the file the operator's ConfigMap mounts, reloaded
//! without a restart, and the per-tenant overrides a move hands over ahead of that file. Readers
//! on the request path load `Arc` snapshots (`arc-swap`): no lock, and no Redis read for policy.
//!
//! The file is polled (content compared, not just mtime): ConfigMap volumes update by swapping a
//! symlink, which inotify-based watchers miss unless they watch the parent directory, and a poll
//! every couple of seconds costs nothing. A file that does not parse keeps the previous policies
//! and is reported (log + metric).
//!
//! An override ([`cellstack_api::admin::PolicyOverride`]) lives in the tenant's record in the
//! cell's Redis (the `policy` field of its meta hash); the record's `policyVersion` field, read
//! with the tenant's state on every request anyway, names it. A lane reads the override itself
//! only when that name changes ([`PolicySet::sync`]), so every lane — one started later
//! included — enforces it from the first request after the operator stored it. It applies until
//! the lane's file carries it ([`Override::carried_by`]) or it expires.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::{ArcSwap, Guard};
use cellstack_api::{
    admin::{PolicyInForce, PolicyOverride, PolicySource},
    keys::TenantKeys,
    policy::{CellPolicies, EffectivePolicy},
};
use serde::{Deserialize, Serialize};

use crate::{
    metrics::{Metrics, ResultLabels},
    store::Store,
};

/// Most tenants with an override a lane remembers; past this the map is cleared (each tenant's
/// next request reads its override again: one Redis read each, then none).
const MAX_OVERRIDES: usize = 100_000;

pub type Policies = Arc<PolicySet>;

/// A tenant's policy override as a cell keeps it (JSON in the tenant's meta hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// `version` of the cell's policy file that carries this policy.
    pub version: String,
    pub policy: EffectivePolicy,
    /// Wall-clock time (milliseconds since the UNIX epoch) from which it no longer applies.
    pub expires_at_ms: u64,
}

impl Override {
    /// The override as received at `now_ms`.
    pub fn received(handed: PolicyOverride, now_ms: u64) -> Self {
        Self {
            version: handed.version,
            policy: handed.policy,
            expires_at_ms: now_ms.saturating_add(handed.ttl_ms),
        }
    }

    /// What the tenant's record names this override by: unique per hand-over (the expiry is
    /// in milliseconds), so a lane never mistakes a new hand-over for one it already read.
    pub fn token(&self) -> String {
        format!("{}@{}", self.version, self.expires_at_ms)
    }

    /// Whether `file` carries this override, so the file applies: it is the version the
    /// operator computed with the tenant in it, or it names the tenant. A cell's file names a
    /// tenant with a policy of its own only from when the operator wrote it knowing the tenant
    /// is (moving) here, so such a file is at least as new as the override.
    pub fn carried_by(&self, file: &CellPolicies, tenant: &str) -> bool {
        file.version == self.version || file.tenants.contains_key(tenant)
    }

    /// Whether the override, rather than `file`, holds `tenant` at `now_ms`.
    pub fn in_force(&self, file: &CellPolicies, tenant: &str, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms && !self.carried_by(file, tenant)
    }
}

/// What a lane knows of one tenant's override: the token the tenant's record carried when the
/// lane read it, and the override (none when the stored value could not be parsed).
#[derive(Debug)]
struct Known {
    token: String,
    value: Option<Override>,
}

/// The file and the overrides, each swapped whole.
pub struct PolicySet {
    file: ArcSwap<CellPolicies>,
    overrides: ArcSwap<HashMap<String, Arc<Known>>>,
}

/// One consistent view of the policies, for one request.
pub struct Snapshot {
    file: Guard<Arc<CellPolicies>>,
    overrides: Guard<Arc<HashMap<String, Arc<Known>>>>,
}

/// Milliseconds since the UNIX epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Snapshot {
    /// The policy file this lane has loaded.
    pub fn file(&self) -> &CellPolicies {
        &self.file
    }

    /// The policy that applies to `tenant` now.
    pub fn for_tenant(&self, tenant: &str) -> Option<&EffectivePolicy> {
        self.for_tenant_at(tenant, now_ms())
    }

    /// The policy that applies to `tenant` at `now_ms`: its override while in force, else the
    /// file's.
    pub fn for_tenant_at(&self, tenant: &str, now_ms: u64) -> Option<&EffectivePolicy> {
        match self.override_of(tenant) {
            Some(o) if o.in_force(&self.file, tenant, now_ms) => Some(&o.policy),
            _ => self.file.for_tenant(tenant),
        }
    }

    fn override_of(&self, tenant: &str) -> Option<&Override> {
        self.overrides.get(tenant).and_then(|k| k.value.as_ref())
    }

    /// What this lane enforces for `tenant`, and why (the admin API's answer).
    pub fn in_force(&self, tenant: &str) -> PolicyInForce {
        let now = now_ms();
        let from_override = self
            .override_of(tenant)
            .is_some_and(|o| o.in_force(&self.file, tenant, now));
        PolicyInForce {
            policy: self.for_tenant_at(tenant, now).cloned(),
            source: if from_override {
                PolicySource::Override
            } else {
                PolicySource::File
            },
            file_version: self.file.version.clone(),
            override_version: self.override_of(tenant).map(|o| o.version.clone()),
        }
    }
}

impl PolicySet {
    pub fn new(file: CellPolicies) -> Self {
        Self {
            file: ArcSwap::from_pointee(file),
            overrides: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub fn load(&self) -> Snapshot {
        Snapshot {
            file: self.file.load(),
            overrides: self.overrides.load(),
        }
    }

    /// Swaps in a new policy file.
    pub fn store_file(&self, file: CellPolicies) {
        let overrides = self.overrides.load();
        for (tenant, known) in overrides.iter() {
            if let Some(o) = &known.value
                && o.carried_by(&file, tenant)
                && !o.carried_by(&self.file.load(), tenant)
            {
                tracing::info!(%tenant, version = %file.version, "the policy file now carries the tenant's policy override");
            }
        }
        self.file.store(Arc::new(file));
    }

    /// Remembers `known` (or forgets, with `None`) as `tenant`'s override.
    fn remember(&self, tenant: &str, known: Option<Known>) {
        let known = known.map(Arc::new);
        self.overrides.rcu(|current| {
            let mut next = HashMap::clone(current);
            match &known {
                Some(k) => {
                    if next.len() >= MAX_OVERRIDES && !next.contains_key(tenant) {
                        next.clear();
                    }
                    next.insert(tenant.to_owned(), k.clone());
                }
                None => {
                    next.remove(tenant);
                }
            }
            next
        });
    }

    /// Takes `handed` as `tenant`'s override at once (the lane that stored it).
    pub fn take(&self, tenant: &str, handed: &Override) {
        self.remember(
            tenant,
            Some(Known {
                token: handed.token(),
                value: Some(handed.clone()),
            }),
        );
    }

    /// Brings this lane's override of `tenant` in line with `token`, the one its record carries
    /// (read with the tenant's state). Reads the override from Redis only when the token is new
    /// to this lane; a failed read is tried again on the next request (the file applies
    /// meanwhile).
    pub async fn sync(&self, store: &Store, keys: &TenantKeys, tenant: &str, token: Option<&str>) {
        // Compared in place: this runs on every request, and almost always finds nothing to do.
        let (known, current) = {
            let overrides = self.overrides.load();
            let known = overrides.get(tenant);
            (
                known.is_some(),
                known.is_some_and(|k| Some(k.token.as_str()) == token),
            )
        };
        match token {
            None if known => self.remember(tenant, None),
            None => {}
            Some(_) if current => {}
            Some(token) => match store.policy_override(keys).await {
                Ok(stored) => {
                    let value = stored.and_then(|json| {
                        serde_json::from_str::<Override>(&json)
                            .inspect_err(|error| {
                                tracing::error!(%tenant, %error, "the tenant's stored policy override is invalid; the policy file applies");
                            })
                            .ok()
                    });
                    tracing::info!(%tenant, token, "policy override loaded");
                    self.remember(
                        tenant,
                        Some(Known {
                            token: token.to_owned(),
                            value,
                        }),
                    );
                }
                Err(error) => {
                    tracing::warn!(%tenant, %error, "cannot read the tenant's policy override; the policy file applies until the next request reads it");
                }
            },
        }
    }
}

/// Reads and parses the policy file.
pub fn load(path: &std::path::Path) -> anyhow::Result<CellPolicies> {
    let text = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read policy file {}: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("policy file {} is not valid: {e}", path.display()))
}

/// Polls `path` every `every` and swaps in new content; stops when `shutdown` fires.
pub async fn watch(
    path: PathBuf,
    every: Duration,
    policies: Policies,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<Vec<u8>> = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        match serde_json::from_slice::<CellPolicies>(&bytes) {
            Ok(new) => {
                tracing::info!(version = %new.version, tenants = new.tenants.len(), "policies reloaded");
                policies.store_file(new);
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "policy file is invalid; keeping the previous policies");
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "invalid" })
                    .inc();
            }
        }
        last = Some(bytes);
    }
}

#[cfg(test)]
mod tests {
    use cellstack_api::{
        policy::EffectiveLimit,
        tenant::TenantId,
        v1alpha1::{Algorithm, FailMode},
    };

    use super::*;

    fn policy(name: &str, requests: u32) -> EffectivePolicy {
        EffectivePolicy {
            policy: name.into(),
            fail_mode: FailMode::Open,
            shadow: false,
            limits: vec![EffectiveLimit {
                name: "requests".into(),
                algorithm: Algorithm::TokenBucket,
                requests,
                period_ms: 1000,
                burst: requests,
                methods: vec![],
                path_prefix: None,
            }],
            request_priority: Default::default(),
        }
    }

    /// A file with the default policy, and `tenants` listed with their own.
    fn file(version: &str, tenants: &[(&str, EffectivePolicy)]) -> CellPolicies {
        CellPolicies {
            version: version.into(),
            default: Some(policy("default", 100)),
            tenants: tenants
                .iter()
                .map(|(t, p)| (TenantId::parse(t).expect("tenant id"), p.clone()))
                .collect(),
        }
    }

    fn handed(version: &str, requests: u32, ttl_ms: u64) -> PolicyOverride {
        PolicyOverride {
            version: version.into(),
            policy: policy("premium", requests),
            ttl_ms,
        }
    }

    fn lane_with(file: CellPolicies, tenant: &str, o: &Override) -> PolicySet {
        let set = PolicySet::new(file);
        set.take(tenant, o);
        set
    }

    #[test]
    fn an_override_holds_the_tenant_while_the_file_does_not_carry_it() {
        let o = Override::received(handed("v2", 500, 60_000), 1_000);
        let set = lane_with(file("v1", &[]), "acme", &o);
        let now = set.load();
        assert_eq!(now.for_tenant_at("acme", 2_000).unwrap().policy, "premium");
        // Other tenants keep the file's default.
        assert_eq!(now.for_tenant_at("other", 2_000).unwrap().policy, "default");
    }

    #[test]
    fn the_file_applies_once_it_carries_the_version_or_names_the_tenant() {
        let o = Override::received(handed("v2", 500, 60_000), 1_000);
        // The very version the operator computed: the file applies (it holds the same policy).
        let set = lane_with(file("v2", &[("acme", policy("premium", 500))]), "acme", &o);
        assert!(
            !set.load()
                .in_force("acme")
                .source
                .eq(&PolicySource::Override)
        );
        // A later version that names the tenant with a newer policy: the newer policy applies.
        let set = lane_with(file("v3", &[("acme", policy("gold", 50))]), "acme", &o);
        assert_eq!(
            set.load().for_tenant_at("acme", 2_000).unwrap().policy,
            "gold"
        );
        // Reloading the file on a lane that had the override in force hands over to the file.
        let set = lane_with(file("v1", &[]), "acme", &o);
        set.store_file(file("v3", &[("acme", policy("gold", 50))]));
        let answer = set.load().in_force("acme");
        assert_eq!(answer.source, PolicySource::File);
        assert_eq!(answer.policy.unwrap().policy, "gold");
        assert_eq!(answer.override_version.as_deref(), Some("v2"));
    }

    #[test]
    fn an_override_the_file_never_carries_expires() {
        let o = Override::received(handed("v2", 500, 60_000), 1_000);
        let set = lane_with(file("v1", &[]), "acme", &o);
        assert_eq!(
            set.load().for_tenant_at("acme", 60_999).unwrap().policy,
            "premium"
        );
        assert_eq!(
            set.load().for_tenant_at("acme", 61_000).unwrap().policy,
            "default"
        );
    }

    #[test]
    fn each_hand_over_has_its_own_token_and_round_trips_as_stored() {
        let a = Override::received(handed("v2", 500, 60_000), 1_000);
        let b = Override::received(handed("v2", 500, 60_000), 1_001);
        assert_ne!(a.token(), b.token());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Override>(&json).unwrap(), a);
    }

    #[test]
    fn forgetting_an_override_returns_the_tenant_to_the_file() {
        let o = Override::received(handed("v2", 500, 60_000), 1_000);
        let set = lane_with(file("v1", &[]), "acme", &o);
        set.remember("acme", None);
        assert_eq!(
            set.load().for_tenant_at("acme", 2_000).unwrap().policy,
            "default"
        );
        assert_eq!(set.load().in_force("acme").override_version, None);
    }
}
