//! The proxy listener and the request pipeline.
//!
//! Per request, top to bottom: extract the bearer token → authenticate (cache, keys,
//! claims) → header hygiene → forward with the body streamed → response hygiene. A
//! rejection is answered before any upstream I/O and before the request body is read.

pub mod headers;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::auth::{Authenticator, LastToken, Reason, Reject, TokenHash};
use crate::config::Config;
use crate::metrics::{Metrics, Outcome, UpstreamErrorKind};
use crate::revocation::Revocation;
use upstream::{UpstreamBody, UpstreamError, UpstreamPool};

pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// The request body as forwarded: streamed as is, with jwtgate's own header removed from
/// any trailers the client sends.
pub struct ForwardBody {
    inner: Incoming,
    strip: HeaderName,
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        if trailers.remove(&this.strip).is_some() {
                            tracing::debug!("client-sent claims header dropped from trailers");
                        }
                        headers::strip_hop_by_hop(&mut trailers, false);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client end of a connection, with its `X-Forwarded-For` entry rendered once.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
    /// The last token this connection presented (skips hashing a repeated token).
    last_token: LastToken,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            forwarded_for,
            last_token: LastToken::default(),
        }
    }
}

/// A request that passed every check, rewritten for the upstream.
#[derive(Debug)]
pub struct Prepared<B> {
    pub request: Request<B>,
    /// The client side of a validated `Upgrade` handshake.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

pub struct Proxy {
    auth: Arc<Authenticator>,
    revocation: Option<Arc<Revocation>>,
    upstream: Arc<UpstreamPool>,
    /// `Host` for requests that arrive without one (HTTP/1.0).
    upstream_host: HeaderValue,
    request_timeout: std::time::Duration,
    claims_header: HeaderName,
    strip_authorization: bool,
    retry_after: HeaderValue,
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        auth: Arc<Authenticator>,
        revocation: Option<Arc<Revocation>>,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        let uri = &config.upstream.url;
        Proxy {
            auth,
            revocation,
            upstream: UpstreamPool::new(
                &config.upstream.url,
                config.upstream.connect_timeout,
                std::time::Duration::from_secs(90),
                256,
            ),
            upstream_host: uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or_else(|| HeaderValue::from_static("127.0.0.1")),
            request_timeout: config.upstream.request_timeout,
            claims_header: config.forward.claims_header.clone(),
            strip_authorization: config.forward.strip_authorization,
            retry_after: HeaderValue::from(config.jwks.min_refetch_interval.as_secs().clamp(1, 60)),
            metrics,
        }
    }

    /// Serves the proxy listener until `stop` fires, then drains in-flight connections
    /// for at most `drain`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        config: &Config,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.limits.header_read_timeout)
            .max_buf_size(config.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(config.limits.max_header_bytes as u32);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let proxy = self.clone();
                    let peer = Arc::new(Peer::new(peer));
                    let svc = hyper::service::service_fn(move |req| {
                        let proxy = proxy.clone();
                        let peer = peer.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(req, &peer).await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                _ = &mut stop => break,
            }
        }
        drop(listener);
        tracing::info!("proxy listener closed; draining in-flight requests");
        if tokio::time::timeout(config.server.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; remaining connections are dropped");
        }
    }

    /// One request, start to finish.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<ResponseBody> {
        let start = Instant::now();
        let response = match self.prepare(req, peer).await {
            Ok(prepared) => self.forward(prepared).await,
            Err(rejected) => rejected,
        };
        self.metrics
            .request_duration
            .observe(start.elapsed().as_secs_f64());
        response
    }

    /// Everything a request goes through before upstream I/O: the token is authenticated
    /// and revocation-checked, then the headers are cleaned and the URI pointed upstream.
    /// A rejection comes back as the finished response (metrics counted, reason logged).
    /// Generic over the body so the whole decision can be benchmarked without sockets.
    pub async fn prepare<B>(
        &self,
        mut req: Request<B>,
        peer: &Peer,
    ) -> Result<Prepared<B>, Response<ResponseBody>> {
        let claims = match self.admit(req.headers(), peer).await {
            Ok(claims) => claims,
            Err((reject, fingerprint)) => {
                self.metrics.request(Outcome::Rejected);
                self.metrics.rejection(reject.reason);
                tracing::debug!(
                    reason = reject.reason.label(),
                    token = fingerprint.as_deref().unwrap_or("-"),
                    peer = %peer.addr,
                    "request rejected: {}",
                    reject.description
                );
                return Err(self.reject(reject));
            }
        };

        let upgrade = req.version() == http::Version::HTTP_11
            && req.headers().contains_key(header::UPGRADE)
            && headers::connection_has(req.headers(), "upgrade");
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h, upgrade);
        // `insert` replaces every client copy of the claims header.
        if h.insert(self.claims_header.clone(), claims).is_some() {
            tracing::debug!(peer = %peer.addr, "client-sent claims header dropped");
        }
        if self.strip_authorization {
            h.remove(header::AUTHORIZATION);
        }
        if let Some(host) = h.get(header::HOST).cloned() {
            h.insert(headers::X_FORWARDED_HOST, host);
        } else if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            h.insert(headers::X_FORWARDED_HOST, host.clone());
            h.insert(header::HOST, host);
        } else {
            h.remove(headers::X_FORWARDED_HOST);
            h.insert(header::HOST, self.upstream_host.clone());
        }
        h.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        headers::append_forwarded_for(h, &peer.forwarded_for);

        // Origin form (RFC 9112 §3.2.1): the upstream sees the path and query only.
        parts.uri = http::Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        parts.version = http::Version::HTTP_11;
        Ok(Prepared {
            request: Request::from_parts(parts, body),
            client_upgrade,
        })
    }

    /// Extracts and authenticates the token; on success returns the claims header value.
    async fn admit(
        &self,
        headers: &http::HeaderMap,
        peer: &Peer,
    ) -> Result<HeaderValue, (Reject, Option<String>)> {
        let token = bearer(headers).map_err(|r| (r, None))?;
        // For the log line of a rejection only: the hot path never hashes a repeated token.
        let fingerprint = || Some(TokenHash::of(token).fingerprint());
        let v = match self.auth.repeat(token, &peer.last_token) {
            Some(v) => v,
            None => {
                let hash = TokenHash::of(token);
                let v = self
                    .auth
                    .authenticate(token, &hash)
                    .await
                    .map_err(|r| (r, Some(hash.fingerprint())))?;
                self.auth.remember(token, &v, &peer.last_token);
                v
            }
        };
        if let (Some(rev), Some(fps)) = (&self.revocation, &v.revocation_fps) {
            rev.check(fps, v.iat).map_err(|r| (r, fingerprint()))?;
        }
        // The token passed the structure check: the payload segment is base64url, always a
        // valid header value. Copied per request rather than kept in the cache entry: cache
        // memory matters more than ~250 bytes of memcpy.
        let payload = token.split('.').nth(1).unwrap_or_default();
        HeaderValue::from_str(payload).map_err(|_| {
            (
                Reject::new(Reason::Malformed, "token payload is not a header value"),
                fingerprint(),
            )
        })
    }

    async fn forward(&self, prepared: Prepared<Incoming>) -> Response<ResponseBody> {
        let Prepared {
            request,
            client_upgrade,
        } = prepared;
        let upgrade = client_upgrade.is_some();
        let upstream_req = request.map(|inner| ForwardBody {
            inner,
            strip: self.claims_header.clone(),
        });

        let mut resp = match tokio::time::timeout(
            self.request_timeout,
            self.upstream.send(upstream_req),
        )
        .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let kind = match e {
                    UpstreamError::Connect(_) => UpstreamErrorKind::Connect,
                    UpstreamError::Exchange(_) => UpstreamErrorKind::Other,
                };
                tracing::warn!(error = %e, "upstream request failed");
                return self.upstream_failed(kind);
            }
            Err(_) => {
                tracing::warn!("upstream did not answer within request_timeout_ms");
                return self.upstream_failed(UpstreamErrorKind::Timeout);
            }
        };

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        if switching && let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        self.metrics.request(Outcome::Forwarded);
        resp.map(Either::Left)
    }

    fn upstream_failed(&self, kind: UpstreamErrorKind) -> Response<ResponseBody> {
        self.metrics.request(Outcome::UpstreamError);
        self.metrics.upstream_error(kind);
        let (status, error) = match kind {
            UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        };
        json_response(status, error, "the upstream could not be reached")
    }

    fn reject(&self, reject: Reject) -> Response<ResponseBody> {
        let status = reject.reason.status();
        let code = reject.reason.error_code();
        let mut resp = match code {
            Some(code) => json_response(status, code, reject.description),
            None => json_response(status, "unauthorized", "a bearer token is required"),
        };
        let h = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            let value = match code {
                None => r#"Bearer realm="jwtgate""#.to_owned(),
                Some(code) => format!(
                    r#"Bearer realm="jwtgate", error="{code}", error_description="{}""#,
                    reject.description
                ),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, self.retry_after.clone());
        }
        resp
    }
}

fn json_response(status: StatusCode, error: &str, description: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The bearer token of a request (RFC 6750 §2.1): exactly one `Authorization` header,
/// scheme `Bearer` in any case, then the token.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str, Reject> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or(Reject::new(Reason::Missing, "no bearer token"))?;
    if values.next().is_some() {
        return Err(Reject::new(
            Reason::DuplicateCredentials,
            "more than one Authorization header",
        ));
    }
    let value = value.to_str().map_err(|_| {
        Reject::new(
            Reason::Malformed,
            "Authorization header is not visible ASCII",
        )
    })?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reject::new(Reason::Missing, "no bearer token"));
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(Reject::new(Reason::Malformed, "empty bearer token"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(&auth(&["Bearer a.b.c"])).unwrap(), "a.b.c");
        assert_eq!(bearer(&auth(&["bEaReR   a.b.c"])).unwrap(), "a.b.c");
        assert_eq!(bearer(&auth(&[])).unwrap_err().reason, Reason::Missing);
        assert_eq!(
            bearer(&auth(&["Basic xyz"])).unwrap_err().reason,
            Reason::Missing
        );
        assert_eq!(
            bearer(&auth(&["Bearer"])).unwrap_err().reason,
            Reason::Malformed
        );
        assert_eq!(
            bearer(&auth(&["Bearer a.b.c", "Bearer d.e.f"]))
                .unwrap_err()
                .reason,
            Reason::DuplicateCredentials
        );
    }
}
