//! Concurrent requests coalesced into one call: the requests that arrive while calls are out
//! wait, and go together in the next call, up to `max_batch` at once. When things are quiet a
//! request goes alone, at once; under load each call carries many.
//!
//! Used where one remote call can carry many requests and the call itself is the cost: the
//! cell's rate-limit checks (one Redis script call for many checks) and the operator's new
//! tenants (one admin call, one durable write, for many records).
//!
//! Bounded: at most `in_flight` calls out at once, at most `queue` requests waiting; a request
//! that finds the queue full, or waits past `deadline` for its answer, gets a [`BatchError`]
//! saying which. The call itself must bound its own time (a timeout on its remote call).
//!
//! Hand-written (about 100 lines): the batching crates on crates.io either flush on a timer (a
//! quiet system pays the window on every request) or run the handler inline; this one sends at
//! once when a call slot is free and never waits for a batch to fill.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// How requests are coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most requests in one call.
    pub max_batch: usize,
    /// Most calls out at once.
    pub in_flight: usize,
    /// Most requests waiting for a call.
    pub queue: usize,
    /// Longest a request waits for its answer, queueing included.
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

/// Why a request got no answer from a call. `E` is the call's error, shared by every request
/// of the failed call.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    #[error(transparent)]
    Call(Arc<E>),
    #[error("more than {0} requests are waiting for a call")]
    QueueFull(usize),
    #[error("no answer within {0:?}")]
    Deadline(Duration),
    #[error("the batcher has stopped")]
    Stopped,
    /// The call answered fewer items than it was given (a bug in the call).
    #[error("the call answered {answered} of {asked} requests")]
    Short { asked: usize, answered: usize },
}

impl<E> Clone for BatchError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Call(e) => Self::Call(e.clone()),
            Self::QueueFull(n) => Self::QueueFull(*n),
            Self::Deadline(d) => Self::Deadline(*d),
            Self::Stopped => Self::Stopped,
            Self::Short { asked, answered } => Self::Short {
                asked: *asked,
                answered: *answered,
            },
        }
    }
}

type Reply<T, E> = oneshot::Sender<Result<T, BatchError<E>>>;

/// The sending side; the batching task ends when the last clone is dropped.
pub struct Batcher<Req, Resp, E> {
    tx: mpsc::Sender<(Req, Reply<Resp, E>)>,
    settings: BatchSettings,
}

impl<Req, Resp, E> Clone for Batcher<Req, Resp, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            settings: self.settings,
        }
    }
}

impl<Req, Resp, E> Batcher<Req, Resp, E>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Starts the task that hands `call` the requests in batches. `call` answers one item per
    /// request, in order; `observe` sees each batch's size before its call (a metric).
    pub fn spawn<F, Fut>(
        settings: BatchSettings,
        call: F,
        observe: impl Fn(usize) + Send + 'static,
    ) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>, E>> + Send + 'static,
    {
        let settings = BatchSettings {
            max_batch: settings.max_batch.max(1),
            in_flight: settings.in_flight.max(1),
            queue: settings.queue.max(1),
            ..settings
        };
        let (tx, rx) = mpsc::channel(settings.queue);
        tokio::spawn(batch_loop(rx, settings, call, observe));
        Self { tx, settings }
    }

    /// Requests waiting for a call.
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The answer to one request.
    pub async fn call(&self, request: Req) -> Result<Resp, BatchError<E>> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((request, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BatchError::QueueFull(self.settings.queue),
            mpsc::error::TrySendError::Closed(_) => BatchError::Stopped,
        })?;
        match tokio::time::timeout(self.settings.deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(BatchError::Stopped),
            Err(_) => Err(BatchError::Deadline(self.settings.deadline)),
        }
    }
}

async fn batch_loop<Req, Resp, E, F, Fut>(
    mut rx: mpsc::Receiver<(Req, Reply<Resp, E>)>,
    settings: BatchSettings,
    call: F,
    observe: impl Fn(usize),
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    E: Send + Sync + 'static,
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<Resp>, E>> + Send + 'static,
{
    let calls = Arc::new(Semaphore::new(settings.in_flight));
    let mut batch = Vec::with_capacity(settings.max_batch);
    loop {
        // A free call slot first: while every slot is out, requests gather for the next call.
        let Ok(slot) = calls.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, settings.max_batch).await == 0 {
            return; // every sender is gone
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(settings.max_batch));
        observe(taken.len());
        let (requests, replies): (Vec<_>, Vec<_>) = taken.into_iter().unzip();
        let asked = requests.len();
        let pending = call(requests);
        tokio::spawn(async move {
            match pending.await {
                Ok(answers) if answers.len() == asked => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let e = BatchError::Short {
                        asked,
                        answered: answers.len(),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for reply in replies {
                        let _ = reply.send(Err(BatchError::Call(e.clone())));
                    }
                }
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Requests sent while the one call slot is taken go together in the next call, in order,
    /// and each gets its own answer.
    #[tokio::test]
    async fn requests_waiting_for_a_slot_share_the_next_call() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let batcher = Batcher::spawn(
            BatchSettings {
                in_flight: 1,
                ..BatchSettings::default()
            },
            move |reqs: Vec<u32>| {
                let mut release = release_rx.clone();
                async move {
                    // The first call holds the only slot until released.
                    if reqs == [0] {
                        release.wait_for(|r| *r).await.map_err(|_| "closed")?;
                    }
                    Ok::<_, &'static str>(reqs.into_iter().map(|r| r * 10).collect())
                }
            },
            {
                let sizes = sizes.clone();
                move |n| sizes.lock().unwrap_or_else(|e| e.into_inner()).push(n)
            },
        );
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(0).await }
        });
        // The first request has been taken into its call once nothing waits.
        while batcher.waiting() > 0 || sizes.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=5)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        while batcher.waiting() < 5 {
            tokio::task::yield_now().await;
        }
        release_tx.send_replace(true);
        assert_eq!(first.await.ok().and_then(|r| r.ok()), Some(0));
        for (i, task) in (1..=5).zip(rest) {
            assert_eq!(task.await.ok().and_then(|r| r.ok()), Some(i * 10));
        }
        assert_eq!(*sizes.lock().unwrap_or_else(|e| e.into_inner()), vec![1, 5]);
    }

    /// A failed call fails each of its requests with the call's error; a call that answers too
    /// few items fails them as `Short`.
    #[tokio::test]
    async fn a_failed_or_short_call_fails_each_of_its_requests() {
        let failing = Batcher::spawn(
            BatchSettings::default(),
            |_: Vec<u32>| async { Err::<Vec<u32>, _>("redis down") },
            |_| {},
        );
        match failing.call(1).await {
            Err(BatchError::Call(e)) => assert_eq!(*e, "redis down"),
            other => panic!("expected the call's error, got {other:?}"),
        }
        let short = Batcher::spawn(
            BatchSettings::default(),
            |_: Vec<u32>| async { Ok::<Vec<u32>, &str>(Vec::new()) },
            |_| {},
        );
        assert!(matches!(
            short.call(1).await,
            Err(BatchError::Short {
                asked: 1,
                answered: 0
            })
        ));
    }
}
