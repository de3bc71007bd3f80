//! The authoritative rate-limit checks of concurrent requests, coalesced into one script call.
//!
//! Every admitted request under a limit needs one atomic check in the cell's Redis. One call
//! each costs Redis a command per request (read, parse, dispatch, reply, a write syscall), which
//! is most of its work for a check this small. So the checks that arrive while calls are out
//! wait, and go together in the next call: one `EVALSHA` for up to `max_batch` checks
//! ([`crate::scripts::RATE_LIMIT`]), evaluated one after another inside the script. Each decision
//! is exactly the one the same check alone would have got at that point, so batching grants
//! nothing extra under contention; and when the cell is quiet a check goes alone, at once.
//!
//! The batching is [`cellstack_runtime::batch`]'s. Bounded: at most `in_flight` calls out at once
//! (each under the store's timeout and breaker), at most `queue` checks waiting; a check that
//! finds the queue full, or waits past `deadline`, is answered [`LimitError`], and the limiter
//! applies the policy's fail mode as it does when Redis is down.
//!
//! The multiplexed connection already pipelines concurrent calls; what pipelining cannot do is
//! share a command, and the command is what costs Redis here. (Envoy's ratelimit service
//! pipelines on a short window, still one command per check; Limitador's cached Redis storage
//! counts locally and flushes in bulk, trading accuracy. This keeps every check authoritative.)

use std::{sync::Arc, time::Duration};

pub use cellstack_runtime::batch::BatchSettings;
use cellstack_runtime::batch::{BatchError, Batcher};

use crate::{
    metrics::Metrics,
    store::{LimitCheck, LimitDecision, Store, StoreError},
};

/// Why a check got no decision from Redis.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    #[error("rate-limit check failed: {0}")]
    Store(Arc<StoreError>),
    #[error("more than {0} rate-limit checks are waiting for redis")]
    QueueFull(usize),
    #[error("no rate-limit decision within {0:?}")]
    Deadline(Duration),
    #[error("the rate-limit batcher has stopped")]
    Stopped,
}

impl From<BatchError<StoreError>> for LimitError {
    fn from(e: BatchError<StoreError>) -> Self {
        match e {
            BatchError::Call(e) => Self::Store(e),
            BatchError::QueueFull(n) => Self::QueueFull(n),
            BatchError::Deadline(d) => Self::Deadline(d),
            BatchError::Stopped => Self::Stopped,
            // `Store::rate_limit` answers one decision per check or an error.
            BatchError::Short { asked, answered } => Self::Store(Arc::new(StoreError::BadReply(
                format!("the rate-limit script answered {answered} of {asked} checks"),
            ))),
        }
    }
}

/// The sending side; the batching task ends when the last clone is dropped.
#[derive(Clone)]
pub struct LimitBatcher {
    inner: Batcher<LimitCheck, LimitDecision, StoreError>,
}

impl LimitBatcher {
    /// Starts the task that sends `store` the checks in batches.
    pub fn spawn(store: Arc<Store>, settings: BatchSettings, metrics: Arc<Metrics>) -> Self {
        let inner = Batcher::spawn(
            settings,
            move |checks: Vec<LimitCheck>| {
                let store = store.clone();
                async move { store.rate_limit(&checks).await }
            },
            move |n| metrics.limit_batch_checks.observe(n as f64),
        );
        Self { inner }
    }

    /// Checks waiting for a script call.
    pub fn waiting(&self) -> usize {
        self.inner.waiting()
    }

    /// The decision on one request's check.
    pub async fn check(&self, check: LimitCheck) -> Result<LimitDecision, LimitError> {
        Ok(self.inner.call(check).await?)
    }
}
