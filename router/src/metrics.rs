//! Prometheus metrics of the router, on the admin listener's `/metrics`.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of a request. Built per request without allocating: the cell name is shared with the
/// snapshot, and an absent cell or lane encodes as `""`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cell: Option<Arc<str>>,
    pub lane: Option<u32>,
    pub code: u16,
}

impl RequestLabels {
    /// A request refused before a cell was chosen.
    pub fn refused(code: u16) -> Self {
        Self {
            cell: None,
            lane: None,
            code,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub retries: Family<RetryLabels, Counter>,
    pub budget_exhausted: Counter,
    pub fence_outlasted: Counter,
    pub edge_limited: Counter,
    pub table_version: Gauge,
    pub table_age_seconds: Gauge,
    pub table_refused: Family<SourceLabels, Counter>,
    pub lanes_ejected: Gauge,
    pub upstream_connections: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            retries: Family::default(),
            budget_exhausted: Counter::default(),
            fence_outlasted: Counter::default(),
            edge_limited: Counter::default(),
            table_version: Gauge::default(),
            table_age_seconds: Gauge::default(),
            table_refused: Family::default(),
            lanes_ejected: Gauge::default(),
            upstream_connections: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("cellstack_router");
        r.register(
            "requests",
            "Requests by cell, lane and status code",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request latency through the router",
            m.duration.clone(),
        );
        r.register("retries", "Retries by reason", m.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            m.budget_exhausted.clone(),
        );
        r.register(
            "fence_outlasted",
            "Fenced writes answered 503 because the fence outlasted the deadline or the wait limit",
            m.fence_outlasted.clone(),
        );
        r.register(
            "edge_limited",
            "Requests refused by the edge pre-limit",
            m.edge_limited.clone(),
        );
        r.register(
            "table_version",
            "Version of the routing table being served",
            m.table_version.clone(),
        );
        r.register(
            "table_age_seconds",
            "Age of the routing table being served",
            m.table_age_seconds.clone(),
        );
        r.register(
            "table_refused",
            "Routing tables refused (corrupt, invalid or older), by source",
            m.table_refused.clone(),
        );
        r.register(
            "lanes_ejected",
            "Lanes currently ejected by outlier detection",
            m.lanes_ejected.clone(),
        );
        r.register(
            "upstream_connections",
            "Connections opened to lanes",
            m.upstream_connections.clone(),
        );
        m
    }
}
