//! The upstream side: a small pool of HTTP/1.1 keep-alive connections to the one upstream.
//!
//! Why not hyper-util's legacy `Client`: per request it builds a lazy connect future, looks
//! the pool up by (scheme, authority) under a lock, and spawns a task that waits for the
//! connection to become idle again. jwtgate has one upstream and HTTP/1.1 only, so a
//! connection goes back to the pool when its response body ends (or is dropped after its
//! end): no lookup, no extra task.
//!
//! A request that a pooled connection refused before sending anything (the upstream closed
//! it while idle) is retried once on a fresh connection; nothing is ever sent twice.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::ForwardBody;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the upstream failed: {0}")]
    Connect(String),
    #[error("the upstream exchange failed: {0}")]
    Exchange(#[from] hyper::Error),
}

struct Idle {
    sender: SendRequest<ForwardBody>,
    since: Instant,
}

/// Keep-alive connections to the upstream, shared by every request of the process.
pub struct UpstreamPool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl UpstreamPool {
    pub fn new(
        uri: &http::Uri,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<UpstreamPool> {
        let (host, port) = host_port(uri);
        Arc::new(UpstreamPool {
            host,
            port,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one request and returns the response head; the body streams from the
    /// connection, which rejoins the pool when the body has ended.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let give_back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, self.clone()));
                    return Ok(resp.map(|inner| UpstreamBody {
                        inner,
                        ended: false,
                        give_back,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written, and the connection was an idle one the upstream may
                    // have closed meanwhile: safe to send on the next one.
                    Some(back) if reused => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection refused the request; retrying");
                        req = back;
                    }
                    _ => return Err(UpstreamError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// An idle connection that is still open and ready, if any.
    async fn checkout(&self) -> Option<SendRequest<ForwardBody>> {
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            if idle.sender.is_closed() || idle.since.elapsed() > self.idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, sender: SendRequest<ForwardBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<ForwardBody>, UpstreamError> {
        let tcp = dial(&self.host, self.port, self.connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            // As the listener: one flattened buffer per write (A/B in BENCHMARKS.md).
            .writev(false)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The host (without IPv6 brackets) and port to dial for `upstream.url`.
fn host_port(uri: &http::Uri) -> (String, u16) {
    let host = uri
        .host()
        .unwrap_or("127.0.0.1")
        .trim_start_matches('[')
        .trim_end_matches(']');
    (host.to_owned(), uri.port_u16().unwrap_or(80))
}

/// A TCP connection to the upstream within `timeout` (every resolved address tried).
async fn dial(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let connect = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| UpstreamError::Connect(format!("resolving {host}: {e}")))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(UpstreamError::Connect(match last {
            Some(e) => e.to_string(),
            None => format!("{host} resolved to no address"),
        }))
    };
    let tcp = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| UpstreamError::Connect("connect timeout".to_owned()))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

type H2Sender = hyper::client::conn::http2::SendRequest<ForwardBody>;

/// HTTP/2 with prior knowledge to the upstream (`upstream.protocol = "h2c"`, for gRPC):
/// one multiplexed connection, shared by every request, made again when it closes. Streams,
/// flow control and trailers are hyper's HTTP/2 client's.
pub struct H2Upstream {
    host: String,
    port: u16,
    /// `:authority` when the request has no `Host`.
    authority: http::uri::Authority,
    connect_timeout: Duration,
    current: arc_swap::ArcSwapOption<H2Sender>,
    /// One connect at a time: requests arriving meanwhile wait for it instead of opening
    /// connections of their own (the only lock held across an await, and it guards no data).
    connecting: tokio::sync::Mutex<()>,
    /// When and why the last connect failed.
    last_failure: arc_swap::ArcSwapOption<(Instant, String)>,
}

impl H2Upstream {
    pub fn new(uri: &http::Uri, connect_timeout: Duration) -> Arc<H2Upstream> {
        let (host, port) = host_port(uri);
        Arc::new(H2Upstream {
            host,
            port,
            authority: uri
                .authority()
                .cloned()
                .unwrap_or_else(|| http::uri::Authority::from_static("127.0.0.1")),
            connect_timeout,
            current: arc_swap::ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// Sends one request as an HTTP/2 stream: `:scheme` http, `:authority` from `Host`.
    pub async fn send(
        &self,
        req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let authority = parts
            .headers
            .remove(http::header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| UpstreamError::Connect(format!("request URI: {e}")))?;
        // `TE: trailers` survived the hop-by-hop strip (gRPC servers require it).
        parts.version = http::Version::HTTP_2;
        let mut req = Request::from_parts(parts, body);
        // A connection the upstream is closing (GOAWAY) refuses new streams before sending
        // anything: such a request is sent once more, on a new connection.
        let mut retried = false;
        loop {
            let (mut sender, conn) = self.sender().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|inner| UpstreamBody {
                        inner,
                        ended: false,
                        give_back: None,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        tracing::debug!(error = %e.error(), "upstream HTTP/2 connection refused the stream; retrying on a new one");
                        self.forget(&conn);
                        retried = true;
                        req = back;
                    }
                    _ => return Err(UpstreamError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// Drops `conn` as the current connection (if it still is).
    fn forget(&self, conn: &Arc<H2Sender>) {
        let current = self.current.load_full();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.current
                .compare_and_swap(&current, None::<Arc<H2Sender>>);
        }
    }

    /// The shared connection (a clone of its sender, and the connection itself).
    async fn sender(&self) -> Result<(H2Sender, Arc<H2Sender>), UpstreamError> {
        let usable = |s: &Option<Arc<H2Sender>>| {
            s.as_ref()
                .filter(|s| !s.is_closed())
                .map(|s| ((**s).clone(), s.clone()))
        };
        if let Some(s) = usable(&self.current.load_full()) {
            return Ok(s);
        }
        let waited_from = Instant::now();
        let _gate = self.connecting.lock().await;
        if let Some(s) = usable(&self.current.load_full()) {
            return Ok(s);
        }
        // A connect that failed while this request waited for the gate answers it too:
        // with the upstream unreachable, waiters fail fast instead of dialling in turn.
        if let Some(failed) = self.last_failure.load_full()
            && failed.0 >= waited_from
        {
            return Err(UpstreamError::Connect(failed.1.clone()));
        }
        let connected = self.connect().await;
        if let Err(UpstreamError::Connect(why)) = &connected {
            self.last_failure
                .store(Some(Arc::new((Instant::now(), why.clone()))));
        }
        connected
    }

    async fn connect(&self) -> Result<(H2Sender, Arc<H2Sender>), UpstreamError> {
        let tcp = dial(&self.host, self.port, self.connect_timeout).await?;
        // Flow control: a stream may buffer 256 KiB, the connection 16 MiB, so a few
        // clients that stop reading their streams cannot stall every other call.
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .adaptive_window(false)
                .initial_stream_window_size(256 * 1024)
                .initial_connection_window_size(16 * 1024 * 1024)
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        let shared = Arc::new(sender.clone());
        self.current.store(Some(shared.clone()));
        Ok((sender, shared))
    }
}

/// The upstream as configured (`upstream.protocol`).
pub enum Upstream {
    Http1(Arc<UpstreamPool>),
    H2c(Arc<H2Upstream>),
}

impl Upstream {
    pub async fn send(
        &self,
        req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self {
            Upstream::Http1(pool) => pool.send(req).await,
            Upstream::H2c(h2) => h2.send(req).await,
        }
    }

    pub fn is_h2c(&self) -> bool {
        matches!(self, Upstream::H2c(_))
    }
}

/// A response body from the upstream. When it has been read to its end, its connection
/// goes back to the pool; dropped before its end, the connection is closed.
pub struct UpstreamBody {
    inner: Incoming,
    ended: bool,
    give_back: Option<(SendRequest<ForwardBody>, Arc<UpstreamPool>)>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.give_back.take()
            && (self.ended || self.inner.is_end_stream())
        {
            pool.checkin(sender);
        }
    }
}
