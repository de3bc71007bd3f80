//! Process plumbing every cellstack binary shares, so each gets it the same way: logs and traces set
//! up from `CELLSTACK_LOG` and the standard `OTEL_*` variables ([`telemetry`]), a shutdown that fails readiness first, drains, then stops, and the
//! `/metrics` page.
#![forbid(unsafe_code)]

pub mod batch;
pub mod listener;
pub mod metrics;
pub mod reload;
pub mod telemetry;
pub mod tls;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The shutdown sequence of a server process.
///
/// Background tasks and servers subscribe; [`Shutdown::run`] waits for a signal, sets the
/// `draining` flag (readiness fails at once), keeps serving for `drain_delay` so load balancers
/// stop sending, then tells everyone to stop and gives servers `timeout` to finish in-flight
/// requests.
pub struct Shutdown {
    tx: watch::Sender<bool>,
    pub draining: Arc<AtomicBool>,
    limits: listener::Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
            draining: Arc::new(AtomicBool::new(false)),
            limits: listener::Limits::default(),
            tls: None,
        }
    }

    /// The time limits of the ports it serves (default: [`listener::Limits::default`]).
    pub fn with_limits(mut self, limits: listener::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves its ports over TLS with `tls` (none: plain HTTP).
    pub fn with_tls(mut self, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        self.tls = tls;
        self
    }

    /// A receiver that turns `true` when everything should stop.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// A future for `axum::serve(..).with_graceful_shutdown(..)`.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Serves every `(listener, router)` pair until a signal, then drains and stops them all
    /// ([`listener::serve`]: h1 and h2c, half-closed requests answered, bounded head and body
    /// reads).
    pub async fn serve(
        self,
        servers: Vec<(tokio::net::TcpListener, axum::Router)>,
        drain_delay: Duration,
        timeout: Duration,
    ) {
        let handles = servers
            .into_iter()
            .map(|(listener, router)| self.spawn(listener, router))
            .collect();
        self.run(drain_delay, timeout, handles).await;
    }

    /// Starts serving one port now, as [`Self::serve`] does, until everything stops; pass the
    /// handle to [`Self::run`].
    pub fn spawn(
        &self,
        listener: tokio::net::TcpListener,
        router: axum::Router,
    ) -> JoinHandle<std::io::Result<()>> {
        let stop = self.stopped();
        let (limits, tls) = (self.limits, self.tls.clone());
        tokio::spawn(async move {
            listener::serve(listener, router, limits, tls, stop).await;
            Ok(())
        })
    }

    /// As [`Self::spawn`], in plain HTTP whatever [`Self::with_tls`] set: for a loopback-only
    /// port that only the pod's own containers reach.
    pub fn spawn_plain(
        &self,
        listener: tokio::net::TcpListener,
        router: axum::Router,
    ) -> JoinHandle<std::io::Result<()>> {
        self.spawn_with(listener, router, None)
    }

    /// As [`Self::spawn`], with this port's own TLS acceptor whatever [`Self::with_tls`] set
    /// (say, one that asks its clients for certificates; none: plain HTTP).
    pub fn spawn_with(
        &self,
        listener: tokio::net::TcpListener,
        router: axum::Router,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> JoinHandle<std::io::Result<()>> {
        let stop = self.stopped();
        let limits = self.limits;
        tokio::spawn(async move {
            listener::serve(listener, router, limits, tls, stop).await;
            Ok(())
        })
    }

    /// Waits for a signal, then drains and stops `servers`.
    pub async fn run<E: Send + 'static>(
        self,
        drain_delay: Duration,
        timeout: Duration,
        servers: Vec<JoinHandle<Result<(), E>>>,
    ) {
        shutdown_signal().await;
        tracing::info!(
            delay_secs = drain_delay.as_secs(),
            "shutdown requested: failing readiness and draining"
        );
        self.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(drain_delay).await;
        let _ = self.tx.send(true);
        let all = async {
            for s in servers {
                let _ = s.await;
            }
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!(
                ?timeout,
                "in-flight requests did not finish in time; exiting anyway"
            ),
        }
    }
}
