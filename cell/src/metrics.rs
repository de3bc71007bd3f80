//! Prometheus metrics of the cell runtime, served on the admin listener's `/metrics`.

use cellstack_api::{health, wire::Priority};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `local` (governor pre-limit) or `redis` (authoritative).
    pub tier: &'static str,
    pub shadow: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailModeLabels {
    /// `open` (admitted) or `closed` (refused).
    pub mode: &'static str,
}

pub use cellstack_runtime::reload::{ResultLabels, count_reloads};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabels {
    pub address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `acks_timeout` (`WAIT` answered fewer replicas than required) or `no_replicas` (the
    /// primary refused the write: `NOREPLICAS`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service's name in the Cell's `spec.services`.
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceErrorLabels {
    pub service: String,
    /// `refused` (no connection: nothing reached it), `timeout` (no answer in its
    /// `timeoutSeconds`) or `bad_answer` (not valid HTTP, or too large).
    pub kind: &'static str,
}

/// Buckets of [`Metrics::limit_batch_checks`]: 1 (a check alone) up to the default batch of 64.
const LIMIT_BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Tenant state API calls (loopback), kept apart from the tenant port's figures.
    pub state_requests: Family<RequestLabels, Counter>,
    /// 1 while the service passes its health check.
    pub service_up: Family<ServiceLabels, Gauge>,
    /// Time the service took to answer a forwarded request (answer read whole).
    pub service_duration: Family<ServiceLabels, Histogram>,
    pub service_errors: Family<ServiceErrorLabels, Counter>,
    pub duration: Family<PriorityLabels, Histogram>,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub limiter_unavailable: Family<FailModeLabels, Counter>,
    /// Rate-limit checks per script call (crate::limit_batch).
    pub limit_batch_checks: Histogram,
    pub shed: Family<PriorityLabels, Counter>,
    pub concurrency_limit: Gauge,
    pub in_flight: Gauge,
    pub breaker_open: Gauge,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub client_ca_reloads: Family<ResultLabels, Counter>,
    pub admin_calls: Family<ResultLabels, Counter>,
    /// 1 for the Redis primary the runtime talks to (info-style; the label names it).
    pub redis_primary: Family<AddressLabels, Gauge>,
    pub redis_primary_changes: Counter,
    pub redis_primary_resolutions: Family<ResultLabels, Counter>,
    pub writes_not_durable: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            state_requests: Family::default(),
            service_up: Family::default(),
            service_duration: Family::new_with_constructor(|| {
                Histogram::new(health::DURATION_BUCKETS)
            }),
            service_errors: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(health::DURATION_BUCKETS)),
            rate_limited: Family::default(),
            limiter_unavailable: Family::default(),
            limit_batch_checks: Histogram::new(LIMIT_BATCH_BUCKETS),
            shed: Family::default(),
            concurrency_limit: Gauge::default(),
            in_flight: Gauge::default(),
            breaker_open: Gauge::default(),
            policy_reloads: Family::default(),
            tls_reloads: Family::default(),
            client_ca_reloads: Family::default(),
            admin_calls: Family::default(),
            redis_primary: Family::default(),
            redis_primary_changes: Counter::default(),
            redis_primary_resolutions: Family::default(),
            writes_not_durable: Family::default(),
        };
        let r = registry.sub_registry_with_prefix(health::METRIC_PREFIX);
        r.register(
            health::REQUESTS,
            "Tenant API requests by route and status code",
            m.requests.clone(),
        );
        r.register(
            "state_requests",
            "Tenant state API calls (the cell's services, on loopback) by route and status code",
            m.state_requests.clone(),
        );
        r.register(
            "service_up",
            "1 while the service behind the runtime passes its health check, by service",
            m.service_up.clone(),
        );
        r.register(
            "service_request_duration_seconds",
            "Time the service behind the runtime took to answer a forwarded request, by service",
            m.service_duration.clone(),
        );
        r.register(
            "service_errors",
            "Forwarded requests the service did not answer: refused, timeout or bad_answer, by service",
            m.service_errors.clone(),
        );
        r.register(
            health::REQUEST_DURATION,
            "Tenant API request latency by priority",
            m.duration.clone(),
        );
        r.register(
            "rate_limited",
            "Requests over a tenant's limit (shadow: counted, not refused)",
            m.rate_limited.clone(),
        );
        r.register(
            "limiter_unavailable",
            "Limit decisions taken without Redis, by the policy's fail mode",
            m.limiter_unavailable.clone(),
        );
        r.register(
            "limit_batch_checks",
            "Rate-limit checks sent to Redis in one script call (concurrent checks share a call)",
            m.limit_batch_checks.clone(),
        );
        r.register(
            "shed",
            "Requests shed by the adaptive concurrency limit, by priority",
            m.shed.clone(),
        );
        r.register(
            "concurrency_limit",
            "Current adaptive concurrency limit",
            m.concurrency_limit.clone(),
        );
        r.register(
            "in_flight",
            "Tenant requests being handled",
            m.in_flight.clone(),
        );
        r.register(
            "redis_breaker_open",
            "1 while the Redis breaker is open",
            m.breaker_open.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy file reloads by result",
            m.policy_reloads.clone(),
        );
        r.register(
            "tls_reloads",
            "Changes of the certificate files of --tls-cert-file: loaded (used for new connections) or refused (the pair in force stays)",
            m.tls_reloads.clone(),
        );
        r.register(
            "client_ca_reloads",
            "Changes of the CA bundle of --client-ca-file: loaded (used for new handshakes) or refused (the CAs in force stay)",
            m.client_ca_reloads.clone(),
        );
        r.register(
            "admin_calls",
            "Admin API calls by result",
            m.admin_calls.clone(),
        );
        r.register(
            "redis_primary",
            "1 for the Redis primary this lane talks to (label address)",
            m.redis_primary.clone(),
        );
        r.register(
            "redis_primary_changes",
            "Redis primary changes followed (a failover the sentinels named)",
            m.redis_primary_changes.clone(),
        );
        r.register(
            "redis_primary_resolutions",
            "Asks of the sentinels for the Redis primary, by result",
            m.redis_primary_resolutions.clone(),
        );
        r.register(
            "writes_not_durable",
            "Writes not acknowledged for lack of replica acknowledgements, by reason",
            m.writes_not_durable.clone(),
        );
        m.initialize_known_series();
        m
    }

    /// Creates every series whose labels are known in advance, at zero: an absent series is not
    /// a zero to `rate()` or to an alert, and the page then lists every family from the start.
    fn initialize_known_series(&self) {
        for priority in [Priority::Low, Priority::Normal, Priority::High] {
            let labels = PriorityLabels {
                priority: priority.as_str(),
            };
            self.duration.get_or_create_owned(&labels);
            self.shed.get_or_create_owned(&labels);
        }
        for tier in ["local", "redis"] {
            for shadow in [false, true] {
                self.rate_limited
                    .get_or_create_owned(&LimitLabels { tier, shadow });
            }
        }
        for mode in ["open", "closed"] {
            self.limiter_unavailable
                .get_or_create_owned(&FailModeLabels { mode });
        }
        for result in ["ok", "invalid"] {
            self.policy_reloads
                .get_or_create_owned(&ResultLabels { result });
        }
        for reload in cellstack_runtime::reload::Reload::ALL {
            self.tls_reloads.get_or_create_owned(&ResultLabels {
                result: reload.as_str(),
            });
            self.client_ca_reloads.get_or_create_owned(&ResultLabels {
                result: reload.as_str(),
            });
        }
        for result in ["ok", "failed"] {
            self.redis_primary_resolutions
                .get_or_create_owned(&ResultLabels { result });
        }
        for reason in ["acks_timeout", "no_replicas"] {
            self.writes_not_durable
                .get_or_create_owned(&ReasonLabels { reason });
        }
        for result in [
            "ok",
            "forbidden",
            "unauthenticated",
            "no_client_certificate",
        ] {
            self.admin_calls
                .get_or_create_owned(&ResultLabels { result });
        }
    }

    /// Records `address` as the primary in use (and forgets `previous`).
    pub fn set_primary(&self, previous: Option<&str>, address: &str) {
        if let Some(p) = previous {
            self.redis_primary.remove(&AddressLabels {
                address: p.to_owned(),
            });
        }
        self.redis_primary
            .get_or_create(&AddressLabels {
                address: address.to_owned(),
            })
            .set(1);
    }
}
