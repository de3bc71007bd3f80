//! The request path's state that belongs to one worker ([`crate::serve`]): its connections to
//! lanes, its share of the retry budgets, its handles on the request metrics (phase 7,
//! *measure*) and its request numbers.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::counter::Counter;

use super::{Proxy, retry::RetryBudgets};
use crate::{
    metrics::{Metrics, RequestLabels},
    upstream::Upstreams,
};

/// Most distinct request label sets a worker caches counters for before the cache is reset.
const MAX_CACHED_COUNTERS: usize = 10_000;

/// One worker's state. Only that worker's thread uses it, so its locks are never contended and
/// no other core writes its cache lines.
pub struct WorkerState {
    /// The worker's number: its shard of the latency histogram.
    pub index: usize,
    pub upstreams: Upstreams,
    pub budgets: RetryBudgets,
    /// Counters of `requests`, by label set, looked up without the family's shared lock.
    counters: Mutex<HashMap<RequestLabels, Counter>>,
    /// Requests this worker has started.
    seq: AtomicU64,
}

impl WorkerState {
    /// The state of worker `index` of `workers`.
    pub fn new(proxy: &Proxy, index: usize, workers: usize) -> Self {
        Self {
            index,
            upstreams: Upstreams::new(
                proxy.config.upstream_protocol,
                proxy.metrics.upstream_connections.clone(),
                proxy.config.upstream_tls.clone(),
            ),
            budgets: RetryBudgets::share(workers),
            counters: Mutex::default(),
            seq: AtomicU64::new(0),
        }
    }

    /// The next request's number in this worker: seeds its request id, lane choice and jitter.
    pub(super) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one answered request in `requests`.
    pub(super) fn count(&self, metrics: &Metrics, labels: RequestLabels) {
        let Ok(mut counters) = self.counters.lock() else {
            metrics.requests.get_or_create(&labels).inc();
            return;
        };
        if let Some(c) = counters.get(&labels) {
            c.inc();
            return;
        }
        if counters.len() >= MAX_CACHED_COUNTERS {
            counters.clear();
        }
        let c = metrics.requests.get_or_create(&labels).clone();
        c.inc();
        counters.insert(labels, c);
    }
}
