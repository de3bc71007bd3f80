//! The traffic listener: one acceptor and N single-threaded event loops ("workers"), each
//! owning its client connections and its own connections to lanes, with hyper calling
//! [`proxy::handle`] directly.
//!
//! Why not one work-stealing runtime and axum: a proxy's request is two short socket exchanges,
//! and with work stealing a request's wakeups hop between threads (futexes, cache misses, task
//! reference counting), while axum's router, handler extraction and upgrade-capable connection
//! wrapper do nothing for a port where every request goes to the proxy. Workers that own their
//! connections — the model of nginx's worker processes and of Pingora's no-steal runtimes —
//! spend less CPU per request (`bench/router.sh` prints the router's). The admin port keeps
//! axum on the control runtime, which also runs the table sources and the acceptor, so a table
//! swap never stalls traffic.
//!
//! Contract:
//! - each worker is an OS thread running a current-thread tokio runtime; a connection stays on
//!   the worker it was handed to, which is the one with the fewest open connections;
//! - each port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told apart by the
//!   connection preface, like the cell; with [`Settings::tls`] the traffic port speaks them
//!   over TLS only (ALPN `h2` or `http/1.1`, [`cellstack_runtime::tls`]), the handshake bounded like a
//!   request head;
//! - accepted connections get `TCP_NODELAY` (answers are small and written whole);
//! - connections are served as on every cellstack port
//!   ([`cellstack_runtime::listener::connection_builder`]): a client that half-closes its side
//!   after a complete request gets its answer, a client has [`Settings::header_read`] to send a
//!   request head (slow-loris clients are dropped), and an h2 client answers keep-alive pings or
//!   is dropped;
//! - one client address has at most [`Settings::max_per_client`] connections open
//!   ([`crate::client_limit`]); one more is closed at once and counted;
//! - at most [`PENDING_PER_WORKER`] accepted connections wait for a busy worker; past that a new
//!   connection is closed at once (and logged) rather than queued without bound; a worker that
//!   stopped (only a bug does that) gets no more connections;
//! - a failed `accept` (say, out of file descriptors) is logged and retried after
//!   [`ACCEPT_BACKOFF`], never ends the listener;
//! - on `stop`, the listener closes at once, idle connections are closed, and requests in
//!   flight finish (HTTP/1.1 connections close after their current answer; h2 ones get a
//!   GOAWAY); [`Traffic::serve`] resolves once every worker has drained. The caller bounds that wait
//!   ([`cellstack_runtime::Shutdown::run`]).

use std::{
    convert::Infallible,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::body::Body;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    client_limit::{ClientLimit, ClientSlot},
    metrics::Metrics,
    proxy::{self, Proxy, WorkerState},
};

use cellstack_runtime::listener::ACCEPT_BACKOFF;

/// Accepted connections that may wait for one worker to take them.
pub const PENDING_PER_WORKER: usize = 1024;

/// How the traffic port treats clients.
#[derive(Clone)]
pub struct Settings {
    /// How long a client may take to send a request's head (and, with TLS, to complete its
    /// handshake).
    pub header_read: Duration,
    /// Most open connections from one client address; 0: no bound.
    pub max_per_client: usize,
    /// TLS on the traffic port; `None`: plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// An accepted connection on its way to a worker, with its place among its client's.
type Accepted = (std::net::TcpStream, ClientSlot);

/// A worker as the acceptor sees it.
struct Worker {
    connections: mpsc::Sender<Accepted>,
    /// Connections handed to it and not yet ended.
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

/// What one worker's requests share.
struct Local {
    proxy: Arc<Proxy>,
    state: WorkerState,
}

/// The traffic workers, started and waiting for connections.
pub struct Traffic {
    workers: Vec<Worker>,
    clients: Arc<ClientLimit>,
    metrics: Arc<Metrics>,
}

impl Traffic {
    /// Starts `workers` event loops (at least one), which run until `stop` turns true. Fails
    /// if a worker's runtime or thread cannot start, so the router does not start half-way.
    pub fn start(
        proxy: &Arc<Proxy>,
        workers: usize,
        settings: Settings,
        stop: &watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let n = workers.max(1);
        let workers = (0..n)
            .map(|i| start_worker(i, n, proxy.clone(), settings.clone(), stop.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            workers,
            clients: ClientLimit::new(settings.max_per_client),
            metrics: proxy.metrics.clone(),
        })
    }

    /// Hands the connections `listener` accepts to the workers until `stop` turns true, then
    /// waits for the workers to drain (see the module docs).
    pub async fn serve(self, listener: TcpListener, stop: watch::Receiver<bool>) {
        accept(listener, self, stop).await;
    }
}

async fn accept(listener: TcpListener, traffic: Traffic, mut stop: watch::Receiver<bool>) {
    let Traffic {
        mut workers,
        clients,
        metrics,
    } = traffic;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, slot) = match accepted {
            Ok((tcp, peer)) => match clients.admit(peer.ip()) {
                Some(slot) => (tcp, slot),
                None => {
                    // Closed at once: dropping it sends the client a FIN before any byte.
                    metrics.connections_refused.inc();
                    tracing::debug!(client = %peer.ip(), "closing a connection: its address has --max-connections-per-client open");
                    continue;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        // Leaves this runtime's reactor; the worker registers it with its own.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a connection to a worker");
                continue;
            }
        };
        let Some((i, worker)) = workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
        else {
            break;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        match worker.connections.try_send((tcp, slot)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                worker.open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(
                    "the least busy worker has {PENDING_PER_WORKER} connections waiting; closing a new one"
                );
            }
            // Only a bug ends a worker's loop early (a connection's panic ends its own task).
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(
                    worker = i,
                    "a traffic worker has stopped; no more connections for it"
                );
                workers.swap_remove(i);
                if workers.is_empty() {
                    tracing::error!("every traffic worker has stopped; not accepting connections");
                    break;
                }
            }
        }
    }
    // No new connections; the workers finish what they are doing.
    drop(listener);
    for worker in workers {
        drop(worker.connections);
        let _ = worker.done.await;
    }
}

/// Starts worker `index` on a thread of its own.
fn start_worker(
    index: usize,
    workers: usize,
    proxy: Arc<Proxy>,
    settings: Settings,
    stop: watch::Receiver<bool>,
) -> io::Result<Worker> {
    // Built here, so a runtime that cannot start fails the router's start, not one worker.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (connections, accepted) = mpsc::channel(PENDING_PER_WORKER);
    let open = Arc::new(AtomicUsize::new(0));
    let (finished, done) = oneshot::channel();
    let counted = open.clone();
    std::thread::Builder::new()
        .name(format!("router-worker-{index}"))
        .spawn(move || {
            let state = WorkerState::new(&proxy, index, workers);
            runtime.block_on(work(accepted, proxy, state, counted, settings, stop));
            let _ = finished.send(());
        })?;
    Ok(Worker {
        connections,
        open,
        done,
    })
}

/// One worker's loop: serves the connections it is handed, until `stop` or the acceptor is
/// gone, then drains them.
async fn work(
    mut accepted: mpsc::Receiver<Accepted>,
    proxy: Arc<Proxy>,
    state: WorkerState,
    open: Arc<AtomicUsize>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    // This worker's state, used only from this thread (so an idle connection to a lane is
    // always driven by the reactor that registered it), behind a reference count of its own
    // (cloned per request without touching a cache line the other workers write).
    let local = Arc::new(Local { proxy, state });
    let builder = cellstack_runtime::listener::connection_builder(settings.header_read);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, slot) = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            tcp = accepted.recv() => match tcp {
                Some(tcp) => tcp,
                None => break,
            },
        };
        let tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(error) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%error, "a worker cannot take over a connection");
                continue;
            }
        };
        let conn_local = local.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let local = conn_local.clone();
            async move {
                let response = proxy::handle(&local.proxy, &local.state, req.map(Body::new)).await;
                Ok::<_, Infallible>(response)
            }
        });
        let open = open.clone();
        let Some(acceptor) = settings.tls.clone() else {
            let connection = graceful.watch(
                builder
                    .serve_connection(TokioIo::new(tcp), service)
                    .into_owned(),
            );
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                open.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
            continue;
        };
        // TLS: the handshake runs in the connection's own task, bounded like a request head;
        // the connection joins the graceful shutdown once it is established.
        let (builder, watcher, metrics) = (
            builder.clone(),
            graceful.watcher(),
            local.proxy.metrics.clone(),
        );
        tokio::spawn(async move {
            match cellstack_runtime::tls::accept(&acceptor, tcp, settings.header_read).await {
                Ok(tls) => {
                    let connection = watcher.watch(
                        builder
                            .serve_connection(TokioIo::new(tls), service)
                            .into_owned(),
                    );
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "client connection ended with an error");
                    }
                }
                Err(error) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%error, "no TLS connection");
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    // Connections handed over but not taken are closed; the ones taken finish.
    drop(accepted);
    graceful.shutdown().await;
}
