//! Per-tenant request counts for chargeback: `cellstack_cell_tenant_requests_total{tenant,
//! outcome}`, where the outcome is what admission decided (`admitted`, `limited` by a rate limit,
//! `shed` under overload, `refused` for any other reason).
//!
//! Cardinality is bounded: the first `--tenant-metrics-max` tenants a lane sees get their own
//! series (at most four each); every later one is counted under `tenant="_other"` (an id no
//! tenant can have: tenant ids are lowercase letters, digits and dashes). A lane serves the
//! tenants of its cell's shuffle shard, so the cap is per lane; `0` turns per-tenant series off.

use std::sync::Arc;

use cellstack_api::tenant::TenantId;
use dashmap::DashMap;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// The label of tenants past the cap.
pub const OTHER: &str = "_other";

/// What admission decided for a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    Limited,
    Shed,
    Refused,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let s = match self {
            Self::Admitted => "admitted",
            Self::Limited => "limited",
            Self::Shed => "shed",
            Self::Refused => "refused",
        };
        EncodeLabelValue::encode(&s, encoder)
    }
}

/// A tenant id as a label value, shared by every request of the tenant (no allocation per
/// request).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TenantLabel(Arc<str>);

impl EncodeLabelValue for TenantLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: TenantLabel,
    pub outcome: Outcome,
}

/// The per-tenant counters and the tenants that have their own series.
pub struct TenantMetrics {
    requests: Family<TenantLabels, Counter>,
    tracked: DashMap<Box<str>, TenantLabel>,
    cap: usize,
    other: TenantLabel,
}

impl TenantMetrics {
    /// Registers `cellstack_cell_tenant_requests_total` in `registry` (under its `cellstack_cell`
    /// prefix), with own series for at most `cap` tenants.
    pub fn new(cap: usize, registry: &mut Registry) -> Self {
        let m = Self::unregistered(cap);
        registry
            .sub_registry_with_prefix(cellstack_api::health::METRIC_PREFIX)
            .register(
            "tenant_requests",
                "Requests per tenant by admission outcome (admitted, limited, shed, refused); tenants past --tenant-metrics-max are counted as _other",
                m.requests.clone(),
            );
        m
    }

    fn unregistered(cap: usize) -> Self {
        Self {
            requests: Family::default(),
            tracked: DashMap::new(),
            cap,
            other: TenantLabel(Arc::from(OTHER)),
        }
    }

    /// Counts one request of `tenant`.
    pub fn count(&self, tenant: &TenantId, outcome: Outcome) {
        let tenant = self.label(tenant.as_str());
        self.requests
            .get_or_create(&TenantLabels { tenant, outcome })
            .inc();
    }

    /// The label `tenant` is counted under: its own while fewer than `cap` tenants have one.
    fn label(&self, tenant: &str) -> TenantLabel {
        if let Some(label) = self.tracked.get(tenant) {
            return label.clone();
        }
        // Two new tenants at once may both pass this check: the cap can be exceeded by the
        // number of requests racing, never by more.
        if self.tracked.len() >= self.cap {
            return self.other.clone();
        }
        self.tracked
            .entry(tenant.into())
            .or_insert_with(|| TenantLabel(Arc::from(tenant)))
            .clone()
    }

    /// Tenants with their own series.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn value(m: &TenantMetrics, tenant: &str, outcome: Outcome) -> u64 {
        m.requests
            .get_or_create(&TenantLabels {
                tenant: TenantLabel(Arc::from(tenant)),
                outcome,
            })
            .get()
    }

    #[test]
    fn tenants_past_the_cap_are_counted_together_as_other() {
        let m = TenantMetrics::unregistered(2);
        for t in ["a", "b", "c", "d"] {
            m.count(&id(t), Outcome::Admitted);
        }
        m.count(&id("a"), Outcome::Limited);
        m.count(&id("c"), Outcome::Limited);
        assert_eq!(m.tracked(), 2);
        assert_eq!(value(&m, "a", Outcome::Admitted), 1);
        assert_eq!(value(&m, "a", Outcome::Limited), 1);
        assert_eq!(value(&m, "b", Outcome::Admitted), 1);
        assert_eq!(value(&m, OTHER, Outcome::Admitted), 2, "c and d");
        assert_eq!(value(&m, OTHER, Outcome::Limited), 1, "c");
    }

    #[test]
    fn a_cap_of_zero_counts_everyone_as_other() {
        let m = TenantMetrics::unregistered(0);
        m.count(&id("a"), Outcome::Shed);
        assert_eq!((m.tracked(), value(&m, OTHER, Outcome::Shed)), (0, 1));
    }

    #[test]
    fn other_is_not_a_tenant_id() {
        assert!(TenantId::parse(OTHER).is_err());
    }
}
