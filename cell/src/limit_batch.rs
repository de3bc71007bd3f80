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
//! Bounded: at most `in_flight` calls out at once (each under the store's timeout and breaker),
//! at most `queue` checks waiting; a check that finds the queue full, or waits past `deadline`,
//! is answered [`LimitError`], and the limiter applies the policy's fail mode as it does when
//! Redis is down.
//!
//! The multiplexed connection already pipelines concurrent calls; what pipelining cannot do is
//! share a command, and the command is what costs Redis here. (Envoy's ratelimit service
//! pipelines on a short window, still one command per check; Limitador's cached Redis storage
//! counts locally and flushes in bulk, trading accuracy. This keeps every check authoritative.)

use std::{sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    metrics::Metrics,
    store::{LimitCheck, LimitDecision, Store, StoreError},
};

/// How checks are coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most checks in one script call.
    pub max_batch: usize,
    /// Most script calls out at once.
    pub in_flight: usize,
    /// Most checks waiting for a call.
    pub queue: usize,
    /// Longest a check waits for its decision, queueing included.
    pub deadline: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_batch: 64,
            in_flight: 2,
            queue: 4096,
            deadline: Duration::from_millis(1000),
        }
    }
}

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

struct Pending {
    check: LimitCheck,
    reply: oneshot::Sender<Result<LimitDecision, LimitError>>,
}

/// The sending side; the batching task ends when the last clone is dropped.
#[derive(Clone)]
pub struct LimitBatcher {
    tx: mpsc::Sender<Pending>,
    settings: BatchSettings,
}

impl LimitBatcher {
    /// Starts the task that sends `store` the checks in batches.
    pub fn spawn(store: Arc<Store>, settings: BatchSettings, metrics: Arc<Metrics>) -> Self {
        let settings = BatchSettings {
            max_batch: settings.max_batch.max(1),
            in_flight: settings.in_flight.max(1),
            queue: settings.queue.max(1),
            ..settings
        };
        let (tx, rx) = mpsc::channel(settings.queue);
        tokio::spawn(batch_loop(store, rx, settings, metrics));
        Self { tx, settings }
    }

    /// Checks waiting for a script call.
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The decision on one request's check.
    pub async fn check(&self, check: LimitCheck) -> Result<LimitDecision, LimitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Pending { check, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LimitError::QueueFull(self.settings.queue),
                mpsc::error::TrySendError::Closed(_) => LimitError::Stopped,
            })?;
        match tokio::time::timeout(self.settings.deadline, answer).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(_)) => Err(LimitError::Stopped),
            Err(_) => Err(LimitError::Deadline(self.settings.deadline)),
        }
    }
}

async fn batch_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Pending>,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
) {
    let calls = Arc::new(Semaphore::new(settings.in_flight));
    let mut batch = Vec::with_capacity(settings.max_batch);
    loop {
        // A free call slot first: while every slot is out, checks gather for the next call.
        let Ok(slot) = calls.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, settings.max_batch).await == 0 {
            return; // every sender is gone
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(settings.max_batch));
        metrics.limit_batch_checks.observe(taken.len() as f64);
        let store = store.clone();
        tokio::spawn(async move {
            let (checks, replies): (Vec<_>, Vec<_>) =
                taken.into_iter().map(|p| (p.check, p.reply)).unzip();
            match store.rate_limit(&checks).await {
                Ok(decisions) => {
                    for (reply, decision) in replies.into_iter().zip(decisions) {
                        let _ = reply.send(Ok(decision));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for reply in replies {
                        let _ = reply.send(Err(LimitError::Store(e.clone())));
                    }
                }
            }
            drop(slot);
        });
    }
}
