//! The proxy listener and the request pipeline.
//!
//! Per request, top to bottom: extract the bearer token → authenticate (cache, keys,
//! claims) → header hygiene → forward with the body streamed → response hygiene. A
//! rejection is answered before any upstream I/O and before the request body is read.

pub mod headers;
pub mod listener;
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
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, LastToken, Reason, Reject, TokenHash, Verified};
use crate::config::{Cidr, Config};
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
    /// The peer is in `server.trusted_proxies`: its forwarding headers are kept.
    trusted: bool,
    /// The last token this connection presented (skips hashing a repeated token).
    last_token: LastToken,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted_proxies: &[Cidr]) -> Peer {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            forwarded_for,
            trusted: trusted_proxies.iter().any(|c| c.contains(addr.ip())),
            last_token: LastToken::default(),
        }
    }
}

/// A request that passed every check, rewritten for the upstream.
#[derive(Debug)]
pub struct Prepared<B> {
    pub request: Request<B>,
    /// A validated WebSocket handshake: the client's key and its side of the upgrade.
    websocket: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The verdict the request was admitted on (a tunnel is re-checked against it).
    verified: Arc<Verified>,
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
    trusted_proxies: Vec<Cidr>,
    retry_after: HeaderValue,
    metrics: Arc<Metrics>,
}

/// An open WebSocket tunnel is re-checked this often (time window, key, revocation) and
/// closed when its credential no longer holds.
pub const TUNNEL_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

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
            trusted_proxies: config.server.trusted_proxies.clone(),
            retry_after: HeaderValue::from(config.jwks.min_refetch_interval.as_secs().clamp(1, 60)),
            metrics,
        }
    }

    /// Serves the proxy listener until `stop` fires, then drains in-flight connections
    /// for at most `drain_timeout_s` (connection bounds: see [`listener`]).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        config: &Config,
        stop: impl std::future::Future<Output = ()>,
    ) {
        listener::serve(
            "proxy",
            listener,
            listener::ConnLimits::proxy(&config.limits),
            |tcp| async move { Ok(tcp) },
            move |addr| {
                let proxy = self.clone();
                let peer = Arc::new(Peer::new(addr, &proxy.trusted_proxies));
                hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, &peer).await) }
                })
            },
            stop,
            config.server.drain_timeout,
        )
        .await;
    }

    /// One request, start to finish.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ResponseBody> {
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

    /// Everything a request goes through before upstream I/O, in order: the request's own
    /// shape (method, Host, override headers), the token (authenticated, then
    /// revocation-checked), the upgrade decision, then the headers rewritten and the URI
    /// pointed upstream. A rejection comes back as the finished response (metrics counted,
    /// reason logged). Generic over the body so the whole decision can be benchmarked
    /// without sockets.
    pub async fn prepare<B>(
        &self,
        mut req: Request<B>,
        peer: &Peer,
    ) -> Result<Prepared<B>, Response<ResponseBody>> {
        if req.method() == http::Method::CONNECT {
            // No tunnel to anywhere, whatever the token (HTTP/2 extended CONNECT included).
            self.count_rejection(Reject::new(Reason::BadRequest, "CONNECT"), None, peer);
            let mut resp = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "CONNECT is not supported",
            );
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Err(resp);
        }
        let scan = headers::scan(req.headers());
        if let Err(reject) = check_shape(&req, &scan) {
            self.count_rejection(reject, None, peer);
            return Err(self.reject(reject));
        }
        let (claims, verified) = match self.admit(req.headers(), peer).await {
            Ok(admitted) => admitted,
            Err((reject, fingerprint)) => {
                self.count_rejection(reject, fingerprint.as_deref(), peer);
                return Err(self.reject(reject));
            }
        };

        // Only a WebSocket handshake keeps its upgrade; any other (h2c, TLS, …) is dropped
        // with the hop-by-hop headers and the request goes on as a plain one.
        let websocket = req
            .headers()
            .contains_key(header::UPGRADE)
            .then(|| headers::websocket_key(req.method(), req.version(), req.headers()))
            .flatten()
            .map(|key| (key, hyper::upgrade::on(&mut req)));

        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h, websocket.is_some());
        if scan.underscore {
            headers::remove_spellings_of(h, &self.claims_header);
        }
        if scan.forwarding && !peer.trusted {
            headers::remove_forwarding(h);
        }
        // `insert` replaces every client copy of the claims header.
        if h.insert(self.claims_header.clone(), claims).is_some() {
            tracing::debug!(peer = %peer.addr, "client-sent claims header dropped");
        }
        if self.strip_authorization {
            h.remove(header::AUTHORIZATION);
        }
        // Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1): an absolute-form target or HTTP/2's
        // `:authority` decides; else the one `Host` header; else (HTTP/1.0) the upstream's.
        let host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => h.get(header::HOST).cloned(),
        };
        match host {
            Some(host) => {
                if !peer.trusted || !h.contains_key(headers::X_FORWARDED_HOST) {
                    h.insert(headers::X_FORWARDED_HOST, host.clone());
                }
                h.insert(header::HOST, host);
            }
            None => {
                h.insert(header::HOST, self.upstream_host.clone());
            }
        }
        if !peer.trusted || !h.contains_key(headers::X_FORWARDED_PROTO) {
            h.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
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
            websocket,
            verified,
        })
    }

    fn count_rejection(&self, reject: Reject, fingerprint: Option<&str>, peer: &Peer) {
        self.metrics.request(Outcome::Rejected);
        self.metrics.rejection(reject.reason);
        tracing::debug!(
            reason = reject.reason.label(),
            token = fingerprint.unwrap_or("-"),
            peer = %peer.addr,
            "request rejected: {}",
            reject.description
        );
    }

    /// Extracts and authenticates the token; on success returns the claims header value
    /// and the verdict.
    async fn admit(
        &self,
        headers: &http::HeaderMap,
        peer: &Peer,
    ) -> Result<(HeaderValue, Arc<Verified>), (Reject, Option<String>)> {
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
        let claims = HeaderValue::from_str(payload).map_err(|_| {
            (
                Reject::new(Reason::Malformed, "token payload is not a header value"),
                fingerprint(),
            )
        })?;
        Ok((claims, v))
    }

    /// A tunnel's credential still holds: the cache-hit rule (time window, key still
    /// published), then revocation and `on_stale`.
    fn recheck(&self, v: &Verified) -> Result<(), Reject> {
        if !self.auth.still_valid(v) {
            return Err(Reject::new(
                Reason::Expired,
                "token expired or its key was withdrawn",
            ));
        }
        if let (Some(rev), Some(fps)) = (&self.revocation, &v.revocation_fps) {
            rev.check(fps, v.iat)?;
        }
        Ok(())
    }

    async fn forward(self: &Arc<Self>, prepared: Prepared<Incoming>) -> Response<ResponseBody> {
        let Prepared {
            request,
            websocket,
            verified,
        } = prepared;
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

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A switch the client did not ask for as a WebSocket handshake, or one that does
            // not answer its key, is never tunnelled: the upstream connection is dropped.
            let Some((key, client_upgrade)) = websocket else {
                tracing::warn!(
                    "upstream switched protocols without a WebSocket handshake; refused"
                );
                return self.upstream_failed(UpstreamErrorKind::Other);
            };
            if !headers::websocket_accepted(resp.headers(), &key) {
                tracing::warn!("upstream 101 does not complete the WebSocket handshake; refused");
                return self.upstream_failed(UpstreamErrorKind::Other);
            }
            headers::strip_hop_by_hop(resp.headers_mut(), true);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(
                self.clone()
                    .tunnel(client_upgrade, upstream_upgrade, verified),
            );
        } else {
            headers::strip_hop_by_hop(resp.headers_mut(), false);
        }
        self.metrics.request(Outcome::Forwarded);
        resp.map(Either::Left)
    }

    /// Copies both ways until either side closes, re-checking the credential every
    /// [`TUNNEL_RECHECK`]: no tunnel outlives its token.
    async fn tunnel(
        self: Arc<Self>,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        verified: Arc<Verified>,
    ) {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let start = tokio::time::Instant::now() + TUNNEL_RECHECK;
        let mut every = tokio::time::interval_at(start, TUNNEL_RECHECK);
        loop {
            tokio::select! {
                _ = &mut copy => return,
                _ = every.tick() => {
                    if let Err(reject) = self.recheck(&verified) {
                        tracing::info!(reason = reject.reason.label(), "tunnel closed: {}", reject.description);
                        return;
                    }
                }
            }
        }
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

/// The request's own shape, before any token is read (DESIGN §6): 400 `bad_request` for a
/// method that is not upper-case, two `Host` headers, or a method/URL override header.
fn check_shape<B>(req: &Request<B>, scan: &headers::Scan) -> Result<(), Reject> {
    if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(Reject::new(Reason::BadRequest, "method must be upper-case"));
    }
    if scan.override_header {
        return Err(Reject::new(
            Reason::BadRequest,
            "method and URL override headers are not accepted",
        ));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(Reject::new(Reason::BadRequest, "more than one Host header"));
    }
    Ok(())
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
