//! Serving an axum router on a port, with the limits every cellstack listener has (axum::serve
//! has no way to set them):
//!
//! - HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told apart by the connection preface;
//! - a client that half-closes its side after a complete request still gets its answer
//!   (HTTP/1.1 allows it; hyper's default closes the connection on the read side's EOF);
//! - a client has [`Limits::header_read`] to send a request head (slow-loris clients are
//!   dropped) and [`Limits::body_read`] to send a body (the handler then fails to read it: a
//!   `4xx` naming the timeout);
//! - an h2 client answers keep-alive pings or is dropped;
//! - with a TLS acceptor ([`crate::tls`]) the port speaks TLS only, the handshake bounded by
//!   [`Limits::header_read`] too; each request carries a [`crate::tls::TlsPeer`] extension
//!   naming the client certificate its connection presented, if any;
//! - accepted connections get `TCP_NODELAY` (answers are small and written whole); a failed
//!   `accept` (say, out of file descriptors) is logged and retried, never ends the listener;
//! - when `stop` resolves, the listener closes, idle connections are closed and requests in
//!   flight finish (HTTP/1.1 connections close after their answer; h2 ones get a GOAWAY); the
//!   future resolves once every connection is done. The caller bounds that wait.

use std::{future::Future, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower_http::add_extension::AddExtension;

/// How long a client may take to send a request's head, by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body, by default.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed `accept` before the next one.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// An h2 client is pinged after this long without frames...
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and dropped if it does not answer within this.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time limits on what a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read: HEADER_READ_TIMEOUT,
            body_read: BODY_READ_TIMEOUT,
        }
    }
}

/// The connection builder every cellstack listener uses (the router's traffic workers too):
/// h1 and h2c, half-closed requests answered, `header_read` to send a head, h2 keep-alive.
pub fn connection_builder(header_read: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// Serves `router` on `listener` with `limits`, over TLS when `tls` is given, until `stop`
/// resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()> + Send,
) {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read,
    ));
    let builder = connection_builder(limits.header_read);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let Some(acceptor) = tls.clone() else {
            let service =
                TowerToHyperService::new(router.clone().into_service::<hyper::body::Incoming>());
            let connection = graceful.watch(
                builder
                    .serve_connection(TokioIo::new(tcp), service)
                    .into_owned(),
            );
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "client connection ended with an error");
                }
            });
            continue;
        };
        // The handshake runs in the connection's task; the connection joins the drain once up.
        let (builder, watcher, router) = (builder.clone(), graceful.watcher(), router.clone());
        tokio::spawn(async move {
            match crate::tls::accept(&acceptor, tcp, limits.header_read).await {
                Ok(stream) => {
                    let peer = crate::tls::TlsPeer::of(stream.get_ref().1);
                    let service = TowerToHyperService::new(AddExtension::new(
                        router.into_service::<hyper::body::Incoming>(),
                        peer,
                    ));
                    let connection = watcher.watch(
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned(),
                    );
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "client connection ended with an error");
                    }
                }
                Err(error) => tracing::debug!(%error, "no TLS connection"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Why a request body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyReadError {
    /// Longer than the limit the handler read it with.
    TooLarge,
    /// Not received within [`Limits::body_read`].
    TimedOut,
    /// The client went away or sent a malformed body.
    Failed,
}

/// What `error` (from `axum::body::to_bytes`) says about the body.
pub fn body_read_error(error: &axum::Error) -> BodyReadError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return BodyReadError::TooLarge;
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return BodyReadError::TimedOut;
        }
        source = e.source();
    }
    BodyReadError::Failed
}
