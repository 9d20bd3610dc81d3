//! One way to serve a listener, for every listener of the process (proxy, admin, webhook).
//!
//! Every connection is bounded (DESIGN §6):
//! - at most `max_connections` are served at once; more wait in the kernel's accept queue;
//! - the first bytes (protocol detection, the HTTP/2 preface, a TLS handshake) and the
//!   first request head must arrive within `header_read_timeout` of the connection's start
//!   (so an HTTP/2 HEADERS frame never followed by its CONTINUATION is cut off); on
//!   HTTP/1.1 every later head too, counted from its first byte (a head trickled a byte at
//!   a time is cut off);
//! - a connection with no request in flight is closed `idle_timeout` after its last
//!   request ended;
//! - HTTP/2: `h2_max_concurrent_streams` streams per connection, and a connection whose
//!   client resets streams faster than the server accepts them (Rapid Reset,
//!   CVE-2023-44487) or sends an endless header block (CONTINUATION flood) is closed by the
//!   `h2` limits configured here.
//!
//! The watchdog is a per-connection timer over two clocks kept by the connection itself: a
//! wrapper around the socket notes when bytes arrive, and a wrapper around the service
//! counts requests in flight (a request is in flight from the call until its response body
//! is dropped). An upgraded connection (a WebSocket tunnel) leaves the watchdog: the tunnel
//! has its own re-check (see `proxy`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Connection bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub max_header_bytes: usize,
}

impl ConnLimits {
    /// The proxy listener: the `[limits]` section.
    pub fn proxy(limits: &crate::config::LimitsConfig) -> ConnLimits {
        ConnLimits {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.max_connections,
            h2_max_concurrent_streams: limits.h2_max_concurrent_streams,
            max_header_bytes: limits.max_header_bytes,
        }
    }

    /// Admin and webhook listeners: 1,024 connections, small heads, short idle.
    pub fn internal(header_read_timeout: Duration) -> ConnLimits {
        ConnLimits {
            header_read_timeout,
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            h2_max_concurrent_streams: 100,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Streams reset by the client before they were accepted, tolerated at once (h2's
/// Rapid Reset guard); beyond it the connection gets GOAWAY.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server had to reset for protocol errors before it closes the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// After a timeout's graceful close, how long a peer gets before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// `pending_since` value meaning "nothing pending".
const NONE: u64 = u64::MAX;

/// What the watchdog knows about one connection. Times are milliseconds since `base`.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection started).
    last_end: AtomicU64,
    /// First byte received since the last request started or ended (`NONE`: none).
    pending_since: AtomicU64,
    /// The connection speaks HTTP/2. Its clients send frames of their own between
    /// requests (WINDOW_UPDATE, PING, SETTINGS acks), so after the first request only
    /// `idle_timeout` applies; a header block left unfinished then lasts that long at most.
    h2: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            // The connection's first bytes are pending from the start.
            pending_since: AtomicU64::new(0),
            h2: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn bytes_read(&self) {
        if self.pending_since.load(Ordering::Relaxed) == NONE && !self.h2.load(Ordering::Relaxed) {
            let _ = self.pending_since.compare_exchange(
                NONE,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.pending_since.store(NONE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection must be closed if nothing changes, or `None` while a request is
    /// in flight.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = match self.pending_since.load(Ordering::Relaxed) {
            NONE => {
                Duration::from_millis(self.last_end.load(Ordering::Relaxed)) + limits.idle_timeout
            }
            since => Duration::from_millis(since) + limits.header_read_timeout,
        };
        Some(self.base + at)
    }
}

/// A request in flight; dropped with its response body (or with the call, if cancelled).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_end.store(a.now_ms(), Ordering::Relaxed);
        a.pending_since.store(NONE, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// The socket, noting when bytes arrive (and whether they open with the HTTP/2
    /// preface).
    struct Watched<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
        prefix: [u8; 3],
        prefix_len: usize,
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if *this.prefix_len < 3 {
                let take = new.len().min(3 - *this.prefix_len);
                this.prefix[*this.prefix_len..*this.prefix_len + take]
                    .copy_from_slice(&new[..take]);
                *this.prefix_len += take;
                if *this.prefix == *b"PRI" {
                    this.activity.h2.store(true, Ordering::Relaxed);
                }
            }
            this.activity.bytes_read();
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The service, counting requests in flight.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(resp)) => {
                let guard = this.guard.take();
                Poll::Ready(Ok(resp.map(|inner| TrackedBody {
                    inner,
                    _guard: guard,
                })))
            }
            Poll::Ready(Err(e)) => match e {},
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What [`serve`] needs of a connection's service: answers every request (never fails),
/// cloneable and sendable across the runtime's threads.
pub trait ConnService<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// What [`serve`] needs of a response body.
pub trait ConnBody:
    Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> ConnBody for B where
    B: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

/// Serves `listener` until `stop` resolves, then lets connections finish their in-flight
/// requests for at most `drain`.
///
/// `handshake` turns an accepted socket into the stream HTTP is spoken on (identity for
/// plain listeners, TLS for the webhook); it must finish within `header_read_timeout`.
/// `make_service` builds the service of one connection from the peer's address.
pub async fn serve<H, HF, IO, M, S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnLimits,
    handshake: H,
    make_service: M,
    stop: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(TcpStream) -> HF + Send + Sync + 'static,
    HF: Future<Output = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Fn(SocketAddr) -> S,
    S: ConnService<B>,
    B: ConnBody,
{
    let builder = Arc::new(http_builder(&limits));
    let handshake = Arc::new(handshake);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            next = accept(name, &listener, &permits, &mut backoff) => next,
            _ = &mut stop => break,
        };
        let Some((permit, tcp, peer)) = next else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: make_service(peer),
            activity: activity.clone(),
        };
        let (builder, handshake, drain_rx) = (builder.clone(), handshake.clone(), drain_rx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let io = match tokio::time::timeout(limits.header_read_timeout, handshake(tcp)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(listener = name, %peer, error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "handshake timed out");
                    return;
                }
            };
            drive(
                name, peer, &builder, io, service, activity, limits, drain_rx,
            )
            .await;
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        "listener closed; draining in-flight requests"
    );
    let _ = drain_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain timeout reached; remaining connections are dropped"
        );
    }
}

/// The next connection, once a permit is free (over the cap, connections wait in the
/// kernel's accept queue). `None` after an accept error, which backs off (out of file
/// descriptors and the like) instead of spinning.
async fn accept(
    name: &'static str,
    listener: &TcpListener,
    permits: &Arc<tokio::sync::Semaphore>,
    backoff: &mut Duration,
) -> Option<(tokio::sync::OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, peer)) => {
            *backoff = Duration::from_millis(10);
            Some((permit, tcp, peer))
        }
        Err(e) => {
            tracing::warn!(listener = name, error = %e, "accept failed");
            tokio::time::sleep(*backoff).await;
            *backoff = (*backoff * 2).min(Duration::from_secs(1));
            None
        }
    }
}

/// HTTP/1.1 and HTTP/2 with this listener's limits.
fn http_builder(limits: &ConnLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog below bounds heads and idle time for both protocols.
        .header_read_timeout(None)
        // One flattened buffer, one write(2): a response head and a small body cost less
        // copied than gathered (A/B in BENCHMARKS.md).
        .writev(false)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    builder
}

/// Serves one connection under its watchdog until it ends, times out, or is drained.
#[allow(clippy::too_many_arguments)]
async fn drive<IO, S, B>(
    name: &'static str,
    peer: SocketAddr,
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: IO,
    service: Tracked<S>,
    activity: Arc<Activity>,
    limits: ConnLimits,
    mut drain_rx: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnService<B>,
    B: ConnBody,
{
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
        prefix: [0; 3],
        prefix_len: 0,
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        // Requests starting and ending move the deadline without waking this task (no
        // per-request cost): it looks again at least every `step`, so a deadline is met at
        // most one step late.
        let step = Instant::now() + limits.header_read_timeout.min(limits.idle_timeout);
        let wake = activity.deadline(&limits).map_or(step, |d| d.min(step));
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake), if !closing => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(listener = name, %peer, "connection timed out (head or idle)");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                    return;
                }
            }
            changed = drain_rx.changed(), if !closing => {
                if changed.is_ok() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
