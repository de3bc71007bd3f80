//! Phase 5's transport: connections to lanes, reused without a hop between tasks.
//!
//! **HTTP/1.1** (the default): each lane keeps a bounded LIFO stack of idle connections
//! (`hyper::client::conn::http1`). A request takes one and drives it from its own task: while
//! waiting for the response head, then — through [`UpstreamBody`] — while the client's
//! connection streams the response body. When the body has ended the connection goes back on its
//! lane's stack. Nothing is spawned per request or per connection, and no request or body crosses
//! tasks (the legacy pooled client runs every connection as a task fed through a channel, and
//! spawns a task per response to put the connection back).
//!
//! **h2** (prior knowledge, h2c; `--upstream-protocol h2`): each lane keeps one multiplexed
//! connection (`hyper::client::conn::http2`), driven by its own task; requests are streams on it.
//!
//! **TLS** (`--upstream-ca-file`): every connection to a lane is TLS, the lane's certificate
//! verified against the CA bundle in force for the lane's host name (or IP address), ALPN
//! `http/1.1` or `h2` as the protocol says. A lane that does not speak TLS or presents a
//! certificate of another CA fails the handshake: nothing was sent, so the request may go to
//! another lane. The bundle is re-read when it changes ([`cellstack_runtime::tls::TrustStore`]);
//! connections already open keep working across a CA rotation.
//!
//! Contract of [`Upstreams::send`]: one try of one request against one lane, within the caller's
//! timeout (dropping the future closes an HTTP/1.1 connection mid-request, never reuses it). An
//! idle connection found closed when the request was not written yet is replaced silently; an
//! error says whether nothing was sent ([`UpstreamError::nothing_sent`]), which makes any request
//! safe to retry.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::{Body, Bytes, HttpBody};
use cellstack_runtime::tls::TrustStore;
use dashmap::DashMap;
use http::{
    HeaderValue, Request, Response, Uri,
    uri::{Authority, Scheme},
};
use hyper::{
    body::{Frame, Incoming, SizeHint},
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// A connection to a lane: plain TCP, or TLS over it.
type LaneStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// The protocol the router speaks to lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c): the cell's server accepts both on one port.
    H2,
}

/// Idle HTTP/1.1 connections kept per lane (more are closed when they come back).
pub const MAX_IDLE_PER_LANE: usize = 64;
/// An idle connection unused this long is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most lanes (addresses) with connection state; past it the state is dropped and rebuilt.
const MAX_LANES: usize = 10_000;
/// Idle connections tried before a new one is opened, when they turn out closed.
const STALE_TRIES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("lane address {0:?} is not host:port")]
    Address(String),
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connection handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("TLS handshake with the lane failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("the connection closed before the request was sent")]
    NotSent,
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// Nothing of the request reached the lane, so any request may be retried.
    pub fn nothing_sent(&self) -> bool {
        !matches!(self, Self::Request(_))
    }
}

type H1Connection = http1::Connection<TokioIo<LaneStream>, Body>;

/// An HTTP/1.1 connection and its driver, owned by whichever request uses it.
struct H1Conn {
    tx: http1::SendRequest<Body>,
    conn: Pin<Box<H1Connection>>,
    /// The connection future has completed: the connection is closed.
    ended: bool,
}

impl H1Conn {
    /// Lets the connection make progress (read, write, go idle); false once it has closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended && self.conn.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
        !self.ended
    }
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// Connection state of one lane address.
struct Lane {
    /// `Host` of HTTP/1.1 requests, `:authority` of h2 ones.
    host: HeaderValue,
    authority: Authority,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// One h2 connect at a time per lane.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl Lane {
    fn checkout(&self) -> Option<H1Conn> {
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            if idle.since.elapsed() < IDLE_TIMEOUT && !idle.conn.ended && !idle.conn.tx.is_closed()
            {
                return Some(idle.conn);
            }
        }
    }

    /// Keeps `conn` for the next request if it is ready for one.
    fn checkin(&self, conn: H1Conn) {
        if conn.ended || !conn.tx.is_ready() {
            return;
        }
        let now = Instant::now();
        let stale = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            // The bottom of the stack is the longest idle: expire it here, since LIFO reuse
            // never reaches it while traffic is low.
            let stale = idle
                .first()
                .is_some_and(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
                .then(|| idle.remove(0));
            if idle.len() < MAX_IDLE_PER_LANE {
                idle.push(Idle { conn, since: now });
            }
            stale
        };
        // Closed outside the lock.
        drop(stale);
    }

    fn h2_sender(&self) -> Option<http2::SendRequest<Body>> {
        let mut h2 = self.h2.lock().ok()?;
        if h2.as_ref().is_some_and(|tx| tx.is_closed()) {
            *h2 = None;
        }
        h2.clone()
    }
}

/// Connections to every lane, by address.
pub struct Upstreams {
    protocol: Protocol,
    /// TLS to lanes, with the CAs their certificates must chain to.
    tls: Option<Arc<TrustStore>>,
    lanes: DashMap<String, Arc<Lane>>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    connects: Counter,
}

impl Upstreams {
    /// `connects` counts the connections opened; with `tls`, every connection is TLS.
    pub fn new(protocol: Protocol, connects: Counter, tls: Option<Arc<TrustStore>>) -> Self {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        Self {
            protocol,
            tls,
            lanes: DashMap::new(),
            h1: http1::Builder::new(),
            h2,
            connects,
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn lane(&self, addr: &str) -> Result<Arc<Lane>, UpstreamError> {
        if let Some(lane) = self.lanes.get(addr) {
            return Ok(lane.clone());
        }
        let authority: Authority = addr
            .parse()
            .map_err(|_| UpstreamError::Address(addr.to_owned()))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamError::Address(addr.to_owned()))?;
        if self.lanes.len() >= MAX_LANES {
            self.lanes.clear();
        }
        Ok(self
            .lanes
            .entry(addr.to_owned())
            .or_insert_with(|| {
                Arc::new(Lane {
                    host,
                    authority,
                    idle: Mutex::default(),
                    h2: Mutex::default(),
                    h2_connecting: tokio::sync::Mutex::new(()),
                })
            })
            .clone())
    }

    /// Sends `req` (origin-form URI, no `Host`) to the lane at `addr`; one try.
    pub async fn send(
        &self,
        addr: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let lane = self.lane(addr)?;
        match self.protocol {
            Protocol::Http1 => self.send_h1(lane, addr, req).await,
            Protocol::H2 => self.send_h2(&lane, addr, req).await,
        }
    }

    async fn connect(&self, lane: &Lane, addr: &str) -> Result<TokioIo<LaneStream>, UpstreamError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(UpstreamError::Connect)?;
        // Requests and answers are small: never wait to coalesce them.
        tcp.set_nodelay(true).map_err(UpstreamError::Connect)?;
        self.connects.inc();
        let Some(trust) = &self.tls else {
            return Ok(TokioIo::new(Either::Left(tcp)));
        };
        let host = lane.authority.host();
        // An IPv6 literal comes bracketed in an authority; a server name does not have them.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| UpstreamError::Address(addr.to_owned()))?;
        let stream = trust
            .connector()
            .connect(name, tcp)
            .await
            .map_err(UpstreamError::Tls)?;
        Ok(TokioIo::new(Either::Right(stream)))
    }

    async fn send_h1(
        &self,
        lane: Arc<Lane>,
        addr: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        req.headers_mut()
            .insert(http::header::HOST, lane.host.clone());
        for tries in 0..=STALE_TRIES {
            let conn = match lane.checkout().filter(|_| tries < STALE_TRIES) {
                Some(c) => c,
                None => {
                    let io = self.connect(&lane, addr).await?;
                    let (tx, conn) = self
                        .h1
                        .handshake(io)
                        .await
                        .map_err(UpstreamError::Handshake)?;
                    H1Conn {
                        tx,
                        conn: Box::pin(conn),
                        ended: false,
                    }
                }
            };
            match round_trip(conn, req, &lane).await {
                Ok(res) => return Ok(res),
                Err(mut e) => match e.take_message() {
                    // The connection had closed while idle: the request never left.
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
        Err(UpstreamError::NotSent)
    }

    async fn send_h2(
        &self,
        lane: &Lane,
        addr: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(lane.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|_| UpstreamError::Address(addr.to_owned()))?;
        for _ in 0..=STALE_TRIES {
            let mut tx = match lane.h2_sender() {
                Some(tx) => tx,
                None => self.connect_h2(lane, addr).await?,
            };
            match tx.try_send_request(req).await {
                Ok(res) => return Ok(res.map(Body::new)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
        Err(UpstreamError::NotSent)
    }

    /// The lane's h2 connection, opened if it has none (one connect at a time).
    async fn connect_h2(
        &self,
        lane: &Lane,
        addr: &str,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let _one = lane.h2_connecting.lock().await;
        if let Some(tx) = lane.h2_sender() {
            return Ok(tx);
        }
        let io = self.connect(lane, addr).await?;
        let (tx, conn) = self
            .h2
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "h2 connection to a lane ended");
            }
        });
        if let Ok(mut h2) = lane.h2.lock() {
            *h2 = Some(tx.clone());
        }
        Ok(tx)
    }
}

/// One request on an HTTP/1.1 connection, driven from this task until the response head; the
/// body then drives the connection while it is read, and returns it to `lane` at its end.
async fn round_trip(
    mut conn: H1Conn,
    req: Request<Body>,
    lane: &Arc<Lane>,
) -> Result<Response<Body>, TrySendError<Request<Body>>> {
    let mut sent = std::pin::pin!(conn.tx.try_send_request(req));
    let head = poll_fn(|cx| {
        let open = conn.drive(cx);
        match sent.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if open => Poll::Pending,
            Poll::Pending => Poll::Ready(None),
        }
    })
    .await;
    let Some(res) = head else {
        // The connection ended without answering: dropping it hands the request back or
        // fails it, and the request future says which.
        drop(conn);
        return sent.await.map(|res| res.map(Body::new));
    };
    let res = res?;
    let (parts, incoming) = res.into_parts();
    if incoming.is_end_stream() {
        // No body to read: let the connection go idle, and keep it.
        poll_fn(|cx| Poll::Ready(conn.drive(cx))).await;
        lane.checkin(conn);
        return Ok(Response::from_parts(parts, Body::new(incoming)));
    }
    let body = UpstreamBody {
        inner: incoming,
        lease: Some((conn, lane.clone())),
    };
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A lane's response body that drives its HTTP/1.1 connection while it is read, and gives the
/// connection back to its lane once the body has ended. Dropped before its end, it closes the
/// connection (HTTP/1.1 cannot abandon a response and reuse the connection).
struct UpstreamBody {
    inner: Incoming,
    lease: Option<(H1Conn, Arc<Lane>)>,
}

impl UpstreamBody {
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some((mut conn, lane)) = self.lease.take()
            && conn.drive(cx)
        {
            lane.checkin(conn);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some((conn, _)) = &mut this.lease {
            // Reads what the body is waiting for; its end or failure reaches the body.
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(cx),
            Poll::Ready(None) => this.release(cx),
            // A failed body: the connection is not reused.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
