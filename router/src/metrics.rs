//! Prometheus metrics of the router, on the admin listener's `/metrics`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
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

pub use cellstack_runtime::reload::{ResultLabels, count_reloads};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabels {
    pub cell: String,
}

/// Upper bounds (seconds) of the request-latency buckets; `+Inf` follows.
pub const LATENCY_BOUNDS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The request-latency histogram, with one shard per worker: a worker records into its own
/// shard (two relaxed atomic adds, on cache lines no other worker writes) and a scrape sums
/// the shards. prometheus-client's `Histogram` takes a write lock per observation, which the
/// workers would take turns on for every request.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    shards: Arc<[LatencyShard]>,
}

/// One worker's counts, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LatencyShard {
    /// Per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram written by `shards` workers (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| LatencyShard::default())
                .collect(),
        }
    }

    /// Records one request's latency in `shard` (taken modulo the shard count).
    pub fn observe(&self, shard: usize, latency: Duration) {
        let s = &self.shards[shard % self.shards.len()];
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        s.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sum (seconds), count and per-bucket counts over all shards, as the encoder wants them.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .map(|bound| (bound, 0))
            .collect();
        let mut nanos = 0u128;
        for s in self.shards.iter() {
            for (total, count) in buckets.iter_mut().zip(&s.buckets) {
                total.1 += count.load(Ordering::Relaxed);
            }
            nanos += u128::from(s.sum_nanos.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        (nanos as f64 / 1e9, count, buckets)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: LatencyHistogram,
    pub retries: Family<RetryLabels, Counter>,
    pub budget_exhausted: Family<CellLabels, Counter>,
    pub fence_outlasted: Counter,
    pub edge_limited: Counter,
    pub table_version: Gauge,
    pub table_age_seconds: Gauge,
    pub table_confirmed_age_seconds: Gauge<f64, AtomicU64>,
    pub table_stale: Gauge,
    pub table_refused: Family<SourceLabels, Counter>,
    pub lanes_ejected: Gauge,
    pub in_flight: Gauge,
    pub upstream_connections: Counter,
    pub connections_refused: Counter,
    pub jwks_keys: Gauge,
    pub jwks_reloads: Family<ResultLabels, Counter>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub upstream_ca_reloads: Family<ResultLabels, Counter>,
    pub upstream_client_cert_reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// The router's metrics, for `workers` workers, registered in `registry`.
    pub fn new(registry: &mut Registry, workers: usize) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: LatencyHistogram::new(workers),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            fence_outlasted: Counter::default(),
            edge_limited: Counter::default(),
            table_version: Gauge::default(),
            table_age_seconds: Gauge::default(),
            table_confirmed_age_seconds: Gauge::default(),
            table_stale: Gauge::default(),
            table_refused: Family::default(),
            lanes_ejected: Gauge::default(),
            in_flight: Gauge::default(),
            upstream_connections: Counter::default(),
            connections_refused: Counter::default(),
            jwks_keys: Gauge::default(),
            jwks_reloads: Family::default(),
            tls_reloads: Family::default(),
            tls_handshake_failures: Counter::default(),
            upstream_ca_reloads: Family::default(),
            upstream_client_cert_reloads: Family::default(),
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
            "Retries refused because the cell's retry budget was spent, by cell",
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
            "Seconds since the operator built the routing table being served (grows in a quiet system: an unchanged table is not rebuilt; see table_confirmed_age_seconds)",
            m.table_age_seconds.clone(),
        );
        r.register(
            "table_confirmed_age_seconds",
            "Seconds since this router last confirmed its routing table current (an operator heartbeat naming its version, a new table, or the table file read again); since start if never",
            m.table_confirmed_age_seconds.clone(),
        );
        r.register(
            "table_stale",
            "1 while the routing table has not been confirmed current within --table-stale-after (still served)",
            m.table_stale.clone(),
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
            "in_flight",
            "Requests in flight (past --max-in-flight the router answers 503)",
            m.in_flight.clone(),
        );
        r.register(
            "upstream_connections",
            "Connections opened to lanes",
            m.upstream_connections.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at once: their address already had --max-connections-per-client open",
            m.connections_refused.clone(),
        );
        r.register(
            "jwks_keys",
            "Signing keys in force for --tenant-from jwt (0 with another tenant source)",
            m.jwks_keys.clone(),
        );
        r.register(
            "jwks_reloads",
            "Changes of the JWKS file: loaded (put in force) or refused (the keys in force stay)",
            m.jwks_reloads.clone(),
        );
        r.register(
            "tls_reloads",
            "Changes of the traffic port's certificate files: loaded (used for new connections) or refused (the pair in force stays)",
            m.tls_reloads.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes on the traffic port that failed or did not complete within --header-read-timeout-ms",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "upstream_ca_reloads",
            "Changes of the CA bundle lanes are verified against (--upstream-ca-file): loaded or refused (the CAs in force stay)",
            m.upstream_ca_reloads.clone(),
        );
        r.register(
            "upstream_client_cert_reloads",
            "Changes of the client certificate presented to lanes (--upstream-client-cert-file): loaded (used for new connections) or refused (the pair in force stays)",
            m.upstream_client_cert_reloads.clone(),
        );
        m.initialize_known_series();
        m
    }

    /// Creates every series whose labels are known at start, at zero: an absent series is not
    /// a zero to `rate()` or to an alert. (The per-cell budget series start with the table:
    /// [`Self::initialize_cells`].)
    fn initialize_known_series(&self) {
        for reason in crate::proxy::retry::RetryReason::ALL {
            self.retries.get_or_create_owned(&RetryLabels {
                reason: reason.as_str(),
            });
        }
        for result in cellstack_runtime::reload::Reload::ALL {
            self.jwks_reloads.get_or_create_owned(&ResultLabels {
                result: result.as_str(),
            });
            self.tls_reloads.get_or_create_owned(&ResultLabels {
                result: result.as_str(),
            });
            self.upstream_ca_reloads.get_or_create_owned(&ResultLabels {
                result: result.as_str(),
            });
            self.upstream_client_cert_reloads
                .get_or_create_owned(&ResultLabels {
                    result: result.as_str(),
                });
        }
        for source in ["file", "kubernetes", "disk"] {
            self.table_refused
                .get_or_create_owned(&SourceLabels { source });
        }
    }

    /// Creates the per-cell series of `cells` (the table being served) at zero.
    pub fn initialize_cells<'a>(&self, cells: impl IntoIterator<Item = &'a str>) {
        for cell in cells {
            self.budget_exhausted.get_or_create_owned(&CellLabels {
                cell: cell.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sharded_histogram_encodes_the_sum_of_its_shards() {
        let mut registry = Registry::default();
        let h = LatencyHistogram::new(2);
        registry.register("latency", "Latency", h.clone());
        h.observe(0, Duration::from_micros(300)); // le 0.0005
        h.observe(1, Duration::from_millis(2)); // le 0.0025
        h.observe(1, Duration::from_millis(2));
        h.observe(0, Duration::from_secs(9)); // +Inf only
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("latency_count"), "4");
        assert_eq!(line("latency_sum").parse::<f64>().unwrap(), 9.0043);
        assert_eq!(line("latency_bucket{le=\"0.0005\"}"), "1");
        assert_eq!(line("latency_bucket{le=\"0.001\"}"), "1");
        assert_eq!(line("latency_bucket{le=\"0.0025\"}"), "3");
        assert_eq!(line("latency_bucket{le=\"5.0\"}"), "3");
        assert_eq!(line("latency_bucket{le=\"+Inf\"}"), "4");
    }
}
