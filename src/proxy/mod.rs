//! The proxy listener and the request pipeline.
//!
//! Per request, top to bottom, one function per phase (the list is in `lib.rs`):
//! [`Proxy::prepare`] runs shape → path → route → extract → verify → revocation →
//! requirements → identity → rewrite under the request's [`Generation`], then
//! [`Proxy::handle`] forwards with the body streamed and cleans the response. A
//! rejection is answered before any upstream I/O and before the request body is read.

pub mod headers;
pub mod listener;
pub mod metrics;
pub mod upstream;

use std::borrow::Cow;
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

use crate::auth::{
    Authenticator, Fresh, LastToken, NoTrace, TokenHash, Trace, Verified, step, token,
};
use crate::config::{AuthMode, Cidr, Config, IssuerConfig, Profile, UpstreamProtocol};
use crate::jose::Algorithm;
use crate::metrics::Metrics;
use crate::observe::{Observers, Record, Subjects, Who};
use crate::policy::{Policy, RouteId, sources};
use crate::reject::{Reason, Reject};
use crate::revocation::Revocation;
use crate::revocation::{Facts, LifetimeBound, RevocationList, TokenFingerprints};
pub use metrics::{Outcome, ProxyMetrics, RouteMetrics, UpstreamErrorKind};
use upstream::{H2Upstream, Upstream, UpstreamBody, UpstreamError, UpstreamPool};

pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// The request body as forwarded: streamed as is, with jwtgate's own header removed from
/// any trailers the client sends.
pub struct ForwardBody {
    inner: Incoming,
    /// The headers jwtgate sets (claims header, claim headers): never taken from a client.
    strip: Arc<[HeaderName]>,
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
                        for name in this.strip.iter() {
                            if trailers.remove(name).is_some() {
                                tracing::debug!(header = %name, "client-sent identity header dropped from trailers");
                            }
                            headers::remove_spellings_of(&mut trailers, name);
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
    /// The identity header of the last verdict, made once per verdict.
    last_identity: LastIdentity,
}

/// A verdict and the identity header made for it. A verdict (`Arc<Verified>`) is made for
/// one token and handed out only for that token (the cache is keyed by its SHA-256, the
/// connection's repeat by its bytes), so the same verdict means the same payload; the memo
/// holds the verdict, so its address cannot be reused meanwhile.
#[derive(Default)]
struct LastIdentity(std::sync::Mutex<Option<(Arc<Verified>, HeaderValue)>>);

impl std::fmt::Debug for LastIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the payload.
        f.write_str("LastIdentity(..)")
    }
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            forwarded_for,
            last_token: LastToken::default(),
            last_identity: LastIdentity::default(),
        }
    }

    /// The identity header for `token`, whose verdict is `v`: the one made for the same
    /// verdict on this connection's previous request (no split, no per-byte check, no
    /// copy of the payload), or a new one.
    fn identity(
        &self,
        token: &str,
        v: &Arc<Verified>,
    ) -> Result<HeaderValue, (Reject, Option<String>)> {
        let mut memo = self
            .last_identity
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, value)) = memo.as_ref()
            && Arc::ptr_eq(seen, v)
        {
            return Ok(value.clone());
        }
        let value = identity(token)?;
        *memo = Some((v.clone(), value.clone()));
        Ok(value)
    }
}

/// A request that passed every check, rewritten for the upstream.
pub struct Prepared<B> {
    pub request: Request<B>,
    /// A validated WebSocket handshake: the client's key and its side of the upgrade.
    websocket: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The verdict the request was admitted on (a tunnel is re-checked against it);
    /// `None` on a public route, or an optional one without a token.
    verified: Option<Arc<Verified>>,
    /// The `route` label index.
    route: usize,
    /// The generation that decided it (its counters count the outcome).
    generation: Arc<Generation>,
    /// For an upgrade: what to decide again under a later generation.
    again: Option<Decision>,
    /// A gRPC call: failures are answered in gRPC form.
    grpc: bool,
}

impl<B> std::fmt::Debug for Prepared<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("uri", self.request.uri())
            .field("route", &self.route)
            .field("generation", &self.generation.id)
            .finish_non_exhaustive()
    }
}

/// What an open tunnel needs to be decided again under a later config generation: the
/// request's method, normalized path and token.
struct Decision {
    method: http::Method,
    path: String,
    token: Option<String>,
}

pub struct Proxy {
    /// The generation new requests take (swapped whole by a reload).
    current: arc_swap::ArcSwap<Generation>,
    revocation: Option<Arc<Revocation>>,
    upstream: Upstream,
    request_timeout: std::time::Duration,
    /// Open WebSocket tunnels, at most `max_connections` (an upgraded connection leaves
    /// the listener's count).
    tunnels: Arc<tokio::sync::Semaphore>,
    metrics: Arc<ProxyMetrics>,
    /// `jwtgate_claim_headers_unset_total`, shared by every generation's policy.
    claim_unset: prometheus::IntCounterVec,
    /// The access log and tracing (restart-only).
    observers: Arc<Observers>,
}

/// An open WebSocket tunnel is re-checked this often (time window, key, revocation) and
/// closed when its credential no longer holds.
pub const TUNNEL_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl Proxy {
    /// The proxy with `config` as generation 1.
    pub fn new(
        config: &Config,
        auth: Arc<Authenticator>,
        revocation: Option<Arc<Revocation>>,
        metrics: &Metrics,
        observers: Arc<Observers>,
    ) -> Proxy {
        let families = Arc::new(ProxyMetrics::register(metrics));
        let claim_unset = crate::policy::claims::Selector::register_family(metrics);
        let first = build_generation(
            1,
            config,
            auth,
            &revocation,
            (&families, &claim_unset),
            observers.subjects().cloned(),
        );
        Proxy {
            current: arc_swap::ArcSwap::from_pointee(first),
            revocation,
            upstream: match config.upstream.protocol {
                UpstreamProtocol::Http1 => Upstream::Http1(UpstreamPool::new(
                    &config.upstream.url,
                    config.upstream.connect_timeout,
                    std::time::Duration::from_secs(90),
                    256,
                )),
                UpstreamProtocol::H2c => Upstream::H2c(H2Upstream::new(
                    &config.upstream.url,
                    config.upstream.connect_timeout,
                )),
            },
            request_timeout: config.upstream.request_timeout,
            tunnels: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
            metrics: families,
            claim_unset,
            observers,
        }
    }

    /// A generation of `config` (already checked for restart-only changes) with its own
    /// authenticator; nothing changes until [`Proxy::install`].
    pub fn generation(&self, id: u64, config: &Config, auth: Arc<Authenticator>) -> Generation {
        build_generation(
            id,
            config,
            auth,
            &self.revocation,
            (&self.metrics, &self.claim_unset),
            self.observers.subjects().cloned(),
        )
    }

    /// Makes `next` the generation new requests take; requests under way finish under
    /// theirs. Series of routes that no longer exist are dropped.
    pub fn install(&self, next: Generation) {
        let new_labels = next.policy.labels();
        let old = self.current.swap(Arc::new(next));
        old.metrics.requests.retire();
        old.metrics.rejections.retire();
        let gone: Vec<String> = old
            .policy
            .labels()
            .into_iter()
            .filter(|l| !new_labels.contains(l))
            .collect();
        self.metrics.forget_routes(&gone);
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The access log and tracing.
    pub fn observers(&self) -> &Arc<Observers> {
        &self.observers
    }

    /// The request metric families (the rejection summary reads them).
    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
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
                let peer = Arc::new(Peer::new(addr));
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
        let watch = self
            .observers
            .watch(&req, peer.addr, start, || self.current.load().trusts(peer));
        let mut record = Record::default();
        let mut response = match self.prepare(req, peer).await {
            Ok(mut prepared) => {
                if let Some(w) = &watch {
                    w.propagate(prepared.request.headers_mut());
                    record.route = Some(prepared.generation.route_names[prepared.route].clone());
                    record.who = prepared.verified.as_ref().and_then(|v| v.who.clone());
                }
                self.forward(prepared, watch.is_some().then_some(&mut record))
                    .await
            }
            Err(rejected) => rejected,
        };
        let elapsed = start.elapsed();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if let Some(w) = watch {
            if let Some(r) = response.extensions_mut().remove::<Record>() {
                record = r;
            }
            self.observers
                .finish(w, response.status().as_u16(), record, elapsed);
        }
        response
    }

    /// Everything a request goes through before upstream I/O, one phase per step in the
    /// order `lib.rs` lists them (a test holds the two together). A rejection comes back as
    /// the finished response (metrics counted, reason logged). Generic over the body so the
    /// whole decision can be benchmarked without sockets.
    pub async fn prepare<B: Body>(
        &self,
        req: Request<B>,
        peer: &Peer,
    ) -> Result<Prepared<B>, Response<ResponseBody>> {
        let current = self.current.load_full();
        let g = &*current;
        let mut cx = Pending {
            req,
            peer,
            route: RouteId::None,
            who: None,
        };
        // phase: shape
        let scan = g.shape(&cx).map_err(|r| g.refuse(r, &cx))?;
        // phase: path (normalized before matching; the upstream receives this form)
        let path = g
            .policy
            .normalize(cx.req.uri().path())
            .map_err(|r| g.refuse((r, None), &cx))?;
        // phase: route
        cx.route = g.policy.route(cx.req.method().as_str(), &path.matching);
        let new_path = match path.forward {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        };
        // phase: extract (token sources; two tokens 400; a public route reads none)
        let (found, route) = g
            .extract(&cx.req, cx.route)
            .map_err(|r| g.refuse((r, None), &cx))?;
        cx.route = route;
        let token = found.as_ref().map(|f| &*f.token);
        // phase: verify (connection repeat, cache, or keys + signature + claims; a token
        // seen for the first time also passes token policy and gets its fingerprints)
        let verified = match token {
            Some(t) => Some(g.verify(t, peer).await.map_err(|r| g.refuse(r, &cx))?),
            None => None,
        };
        cx.who = verified.as_ref().and_then(|v| v.who.clone());
        if let (Some(t), Some(v)) = (token, &verified) {
            // phase: revocation
            g.revocation_check(t, v).map_err(|r| g.refuse(r, &cx))?;
            // phase: requirements (the route's issuers, scopes, claims)
            g.policy
                .requirements(cx.route, v)
                .map_err(|r| g.refuse((r, Some(TokenHash::of(t).fingerprint())), &cx))?;
        }
        // phase: identity (a token always has its verdict here)
        let identity = match (token, &verified) {
            (Some(t), Some(v)) => Some(peer.identity(t, v).map_err(|r| g.refuse(r, &cx))?),
            _ => None,
        };
        // A WebSocket tunnel keeps what it needs to be decided again under a later
        // generation (DESIGN §9); a plain request keeps nothing.
        let again = (cx.req.headers().contains_key(header::UPGRADE)).then(|| Decision {
            method: cx.req.method().clone(),
            // As sent: a later generation normalizes it with its own policy.
            path: cx.req.uri().path().to_owned(),
            token: token.map(str::to_owned),
        });
        let source = found.map(|f| f.source);
        // phase: rewrite
        let target = Target { new_path, source };
        let grpc = is_grpc(&cx.req);
        let mut prepared = g.rewrite(cx, scan, target, identity, verified, current.clone());
        prepared.again = again;
        prepared.grpc = grpc;
        Ok(prepared)
    }

    /// Sends an admitted request upstream; `record` (when the request is watched) gets the
    /// outcome and the upstream's time to the response head.
    async fn forward(
        self: &Arc<Self>,
        prepared: Prepared<Incoming>,
        mut record: Option<&mut Record>,
    ) -> Response<ResponseBody> {
        let Prepared {
            request,
            websocket,
            verified,
            route,
            generation: g,
            again,
            grpc,
        } = prepared;
        if websocket.is_some() && self.upstream.is_h2c() {
            tracing::warn!("WebSocket handshake refused: the upstream speaks HTTP/2 (h2c)");
            return self.upstream_failed(&g, UpstreamErrorKind::Other, route, grpc);
        }
        let upstream_req = request.map(|inner| ForwardBody {
            inner,
            strip: g.owned_headers.clone(),
        });
        if let Some(r) = record.as_deref_mut() {
            r.outcome = Outcome::UpstreamError.label();
            // One clock reading: the time to the response head follows from the request's.
            r.sent = Some(Instant::now());
        }

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
                return self.upstream_failed(&g, kind, route, grpc);
            }
            Err(_) => {
                tracing::warn!("upstream did not answer within request_timeout_ms");
                return self.upstream_failed(&g, UpstreamErrorKind::Timeout, route, grpc);
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let credential = Credential {
                generation: g.clone(),
                verified,
                again,
            };
            if let Err(why) = self.open_tunnel(&mut resp, websocket, credential) {
                tracing::warn!("{why}");
                return self.upstream_failed(&g, UpstreamErrorKind::Other, route, grpc);
            }
        } else {
            headers::strip_hop_by_hop(resp.headers_mut(), false);
        }
        g.metrics.requests.inc(Outcome::Forwarded, route);
        if let Some(r) = record {
            r.outcome = Outcome::Forwarded.label();
        }
        resp.map(Either::Left)
    }

    /// An upstream `101`: tunnelled only as the answer to the client's WebSocket handshake
    /// (its key answered) and within `max_connections` tunnels; otherwise the reason it is
    /// refused, and the upstream connection is dropped.
    fn open_tunnel(
        self: &Arc<Self>,
        resp: &mut Response<UpstreamBody>,
        websocket: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        credential: Credential,
    ) -> Result<(), &'static str> {
        let Some((key, client_upgrade)) = websocket else {
            return Err("upstream switched protocols without a WebSocket handshake; refused");
        };
        if !headers::websocket_accepted(resp.headers(), &key) {
            return Err("upstream 101 does not complete the WebSocket handshake; refused");
        }
        let Ok(permit) = self.tunnels.clone().try_acquire_owned() else {
            return Err("max_connections tunnels already open; handshake refused");
        };
        headers::strip_hop_by_hop(resp.headers_mut(), true);
        let upstream_upgrade = hyper::upgrade::on(resp);
        let tunnel = self
            .clone()
            .tunnel(client_upgrade, upstream_upgrade, credential);
        tokio::spawn(async move {
            tunnel.await;
            drop(permit);
        });
        Ok(())
    }

    /// Copies both ways until either side closes, re-checking the credential every
    /// [`TUNNEL_RECHECK`]: no tunnel outlives its token.
    async fn tunnel(
        self: Arc<Self>,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        mut credential: Credential,
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
                    if let Err(reject) = self.recheck_tunnel(&mut credential).await {
                        tracing::info!(reason = reject.reason.label(), "tunnel closed: {}", reject.description);
                        return;
                    }
                }
            }
        }
    }

    /// A tunnel's credential under the generation in force: the cache-hit rule and
    /// revocation under its own generation; under a newer one, the request is decided
    /// again (route, token, requirements) and the tunnel adopts the new verdict.
    async fn recheck_tunnel(&self, c: &mut Credential) -> Result<(), Reject> {
        let now = self.current();
        if now.id == c.generation.id {
            // A tunnel opened without a token has no credential to outlive.
            return match &c.verified {
                Some(v) => now.recheck(v),
                None => Ok(()),
            };
        }
        let Some(again) = &c.again else {
            return Ok(());
        };
        c.verified = now.decide_again(again).await?;
        c.generation = now;
        Ok(())
    }

    fn upstream_failed(
        &self,
        g: &Generation,
        kind: UpstreamErrorKind,
        route: usize,
        grpc: bool,
    ) -> Response<ResponseBody> {
        g.metrics.requests.inc(Outcome::UpstreamError, route);
        self.metrics.upstream_errors.inc(kind);
        let (status, error, description) = match kind {
            UpstreamErrorKind::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream could not be reached",
            ),
        };
        let resp = json_response(status, error, description);
        if grpc {
            grpc_form(resp, description)
        } else {
            resp
        }
    }
}

/// Everything a config reload replaces (DESIGN §9). A request takes the generation in
/// force when it starts and keeps it to the end; its phases are this type's methods.
pub struct Generation {
    /// 1 at start, then one more per accepted reload.
    pub id: u64,
    auth: Arc<Authenticator>,
    revocation: Option<Arc<Revocation>>,
    policy: Policy,
    metrics: RouteMetrics,
    claims_header: HeaderName,
    /// Every header jwtgate sets from a token: the claims header, then the claim headers.
    owned_headers: Arc<[HeaderName]>,
    strip_authorization: bool,
    trusted_proxies: Vec<Cidr>,
    /// `Host` for requests that arrive without one (HTTP/1.0).
    upstream_host: HeaderValue,
    retry_after: HeaderValue,
    /// The `route` label of each label index (the access log and spans name routes).
    route_names: Arc<[Arc<str>]>,
    /// Names a verified token's holder, when the access log or tracing is on.
    subjects: Option<Arc<Subjects>>,
}

impl Generation {
    /// Phase `extract`: the one token of the request from the configured sources. A public
    /// route reads none; a CORS preflight (when forwarded) has none and becomes the
    /// `preflight` route; a required route without one is a 401; a cookie token on an
    /// unsafe method needs an allowed origin.
    fn extract<'r, B: Body>(
        &self,
        req: &'r Request<B>,
        route: RouteId,
    ) -> Result<(Option<sources::Found<'r>>, RouteId), Reject> {
        if self.policy.auth(route) == AuthMode::Public {
            return Ok((None, route));
        }
        let found = sources::extract(self.policy.sources(), req.headers(), req.uri().query())?;
        match &found {
            None if self.policy.is_preflight(
                req.method(),
                req.headers(),
                req.body().is_end_stream(),
            ) =>
            {
                return Ok((None, RouteId::Preflight));
            }
            None if self.policy.auth(route) == AuthMode::Required => {
                return Err(Reject::new(Reason::Missing, "no bearer token"));
            }
            None => {}
            Some(f) => self.policy.csrf(
                f.source,
                req.method(),
                req.headers(),
                req.headers().contains_key(header::UPGRADE),
            )?,
        }
        Ok((found, route))
    }

    /// Answers a rejection: counted, logged at debug with the token's fingerprint.
    fn refuse<B>(
        &self,
        (reject, fingerprint): (Reject, Option<String>),
        cx: &Pending<'_, B>,
    ) -> Response<ResponseBody> {
        self.count_rejection(reject, fingerprint.as_deref(), cx.peer, cx.route);
        let mut resp = self.rejection_response(reject, cx);
        if self.subjects.is_some() {
            resp.extensions_mut().insert(Record {
                route: Some(self.route_names[self.policy.label_index(cx.route)].clone()),
                outcome: Outcome::Rejected.label(),
                reason: Some(reject.reason.label()),
                who: cx.who.clone(),
                token_fp: fingerprint,
                sent: None,
            });
        }
        resp
    }

    /// The answer to a rejection: a 405 for `CONNECT`, the RFC 6750 form (with the route's
    /// scopes on `insufficient_scope`), in gRPC form for a gRPC call.
    fn rejection_response<B>(&self, reject: Reject, cx: &Pending<'_, B>) -> Response<ResponseBody> {
        if reject.reason == Reason::BadRequest && cx.req.method() == http::Method::CONNECT {
            let mut resp = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "CONNECT is not supported",
            );
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return resp;
        }
        let scope = match reject.reason {
            Reason::InsufficientScope => self.policy.challenge_scope(cx.route),
            _ => None,
        };
        let resp = self.reject(reject, scope);
        if is_grpc(&cx.req) {
            grpc_form(resp, reject.description)
        } else {
            resp
        }
    }

    /// Phase `shape`: the request's own form, before any token is read (DESIGN §6).
    /// `CONNECT` (HTTP/2 extended CONNECT included) opens no tunnel to anywhere, whatever
    /// the token; a method that is not upper-case, two `Host` headers or a method/URL
    /// override header in any spelling is a 400.
    fn shape<B>(&self, cx: &Pending<'_, B>) -> Result<headers::Scan, (Reject, Option<String>)> {
        let req = &cx.req;
        let bad = |d| Err((Reject::new(Reason::BadRequest, d), None));
        if req.method() == http::Method::CONNECT {
            return bad("CONNECT is not supported");
        }
        if req
            .method()
            .as_str()
            .bytes()
            .any(|b| b.is_ascii_lowercase())
        {
            return bad("method must be upper-case");
        }
        let scan = headers::scan(req.headers());
        if scan.override_header {
            return bad("method and URL override headers are not accepted");
        }
        let mut hosts = req.headers().get_all(header::HOST).iter();
        if hosts.next().is_some() && hosts.next().is_some() {
            return bad("more than one Host header");
        }
        Ok(scan)
    }

    /// Phase `verify`: the connection's last verdict if it repeats that token, else the
    /// shared cache, else a full verification — which, the first time a token is seen, is
    /// followed by token policy and the revocation fingerprints before the verdict is
    /// kept. A cached verdict always passed all three.
    async fn verify(
        &self,
        token: &str,
        peer: &Peer,
    ) -> Result<Arc<Verified>, (Reject, Option<String>)> {
        if let Some(v) = self.auth.repeat(token, &peer.last_token) {
            return Ok(v);
        }
        self.auth.check_size(token).map_err(|r| (r, None))?;
        let hash = TokenHash::of(token);
        if let Some(v) = self.auth.cached(&hash) {
            self.auth.remember(token, &v, &peer.last_token);
            return Ok(v);
        }
        let verified = self.verify_in_full(token, &hash).await?;
        self.auth.keep(token, &hash, &verified, &peer.last_token);
        Ok(verified)
    }

    /// A token seen for the first time: verified, then token policy; it gets its
    /// revocation fingerprints and the claims route policy reads.
    async fn verify_in_full(
        &self,
        token: &str,
        hash: &TokenHash,
    ) -> Result<Arc<Verified>, (Reject, Option<String>)> {
        let refused = |r| (r, Some(hash.fingerprint()));
        let fresh = self.auth.verify(token).await.map_err(refused)?;
        let settings = self.revocation.as_ref().map(|r| r.settings());
        let bound = settings.as_ref().map(|s| (&s.bound, s.cfg.require_jti));
        token_policy(bound, &fresh, &mut NoTrace).map_err(refused)?;
        let fps = self
            .revocation
            .as_ref()
            .map(|rev| fingerprints(rev.list(), self.auth.issuer(fresh.verified.issuer), &fresh));
        let mut verified = fresh.verified;
        verified.revocation_fps = fps;
        verified.selected = self
            .policy
            .selector()
            .select(token.split('.').nth(1).unwrap_or_default());
        verified.who = self.subjects.as_ref().map(|s| {
            let c = &fresh.claims;
            Arc::new(s.who(
                &self.auth.issuer(verified.issuer).name,
                c.sub.as_deref(),
                c.client_id.as_deref().or(c.azp.as_deref()),
                hash.fingerprint(),
            ))
        });
        Ok(Arc::new(verified))
    }

    /// An open tunnel's request decided again under this generation: its route, then the
    /// token in full, revocation and the route's requirements. `Ok(None)`: this generation
    /// lets the request through without a token.
    async fn decide_again(&self, d: &Decision) -> Result<Option<Arc<Verified>>, Reject> {
        let path = self.policy.normalize(&d.path)?;
        let route = self.policy.route(d.method.as_str(), &path.matching);
        let token = match (self.policy.auth(route), &d.token) {
            (AuthMode::Public, _) | (AuthMode::Optional, None) => return Ok(None),
            (AuthMode::Required, None) => {
                return Err(Reject::new(Reason::Missing, "no bearer token"));
            }
            (_, Some(t)) => t,
        };
        self.auth.check_size(token)?;
        let v = self
            .verify_in_full(token, &TokenHash::of(token))
            .await
            .map_err(|(r, _)| r)?;
        self.revocation_check(token, &v).map_err(|(r, _)| r)?;
        self.policy.requirements(route, &v)?;
        Ok(Some(v))
    }

    /// Phase `revocation`: every request, cache hits included (a handful of lock-free
    /// probes), and `on_stale`.
    fn revocation_check(&self, token: &str, v: &Verified) -> Result<(), (Reject, Option<String>)> {
        if let (Some(rev), Some(fps)) = (&self.revocation, &v.revocation_fps) {
            // The fingerprint is for the log line of a rejection only: the hot path never
            // hashes a repeated token.
            rev.check(fps, v.iat)
                .map_err(|r| (r, Some(TokenHash::of(token).fingerprint())))?;
        }
        Ok(())
    }

    /// Phase `rewrite`: the upgrade decision, header hygiene, credentials a route must not
    /// forward, jwtgate's own headers, Host and the origin-form URI with the normalized
    /// path. Nothing here can fail.
    fn rewrite<B>(
        &self,
        cx: Pending<'_, B>,
        scan: headers::Scan,
        target: Target,
        identity: Option<HeaderValue>,
        verified: Option<Arc<Verified>>,
        generation: Arc<Generation>,
    ) -> Prepared<B> {
        let Pending {
            mut req,
            peer,
            route,
            who: _,
        } = cx;
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
        for name in self.owned_headers.iter() {
            if scan.underscore {
                headers::remove_spellings_of(h, name);
            }
            if h.remove(name).is_some() {
                tracing::debug!(peer = %peer.addr, header = %name, "client-sent identity header dropped");
            }
        }
        // Trust is decided per request, by this generation's list.
        let trusted = self.trusts(peer);
        if scan.forwarding && !trusted {
            headers::remove_forwarding(h);
        }
        self.strip_credentials(h, route, target.source);
        if let (Some(identity), Some(v)) = (identity, &verified) {
            h.insert(self.claims_header.clone(), identity);
            if let Some(selected) = &v.selected {
                for (name, value) in self.policy.selector().headers(selected) {
                    h.insert(name.clone(), value.clone());
                }
            }
        }
        set_host(h, &parts.uri, trusted, &self.upstream_host);
        if !trusted || !h.contains_key(headers::X_FORWARDED_PROTO) {
            h.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        headers::append_forwarded_for(h, &peer.forwarded_for);
        parts.uri = self.origin_form(&parts.uri, target.new_path);
        parts.version = http::Version::HTTP_11;
        Prepared {
            request: Request::from_parts(parts, body),
            websocket,
            verified,
            route: self.policy.label_index(route),
            generation,
            again: None,
            grpc: false,
        }
    }

    /// The peer is in this generation's `server.trusted_proxies`: its forwarding headers
    /// are kept.
    fn trusts(&self, peer: &Peer) -> bool {
        !self.trusted_proxies.is_empty()
            && self
                .trusted_proxies
                .iter()
                .any(|c| c.contains(peer.addr.ip()))
    }

    /// What the upstream must not receive: on a public route, whatever the token sources
    /// would yield (unless `forward_credentials`); with `strip_authorization`, the token
    /// from wherever it came. (A `query` source's parameter goes in [`Self::origin_form`].)
    fn strip_credentials(&self, h: &mut http::HeaderMap, route: RouteId, source: Option<usize>) {
        let sources = self.policy.sources();
        if self.policy.auth(route) == AuthMode::Public && !self.policy.forwards_credentials(route) {
            for s in sources {
                sources::strip(h, s);
            }
        } else if self.strip_authorization
            && let Some(s) = source.and_then(|i| sources.get(i))
        {
            sources::strip(h, s);
        }
    }

    /// Origin form (RFC 9112 §3.2.1): the normalized path, and the query as sent less a
    /// `query` source's parameter.
    fn origin_form(&self, uri: &http::Uri, new_path: Option<String>) -> http::Uri {
        let query = uri.query();
        let stripped = match query {
            Some(q) if self.policy.has_query_source() => {
                Some(sources::strip_query(self.policy.sources(), q))
            }
            _ => None,
        };
        if new_path.is_none() && stripped.is_none() {
            return http::Uri::from(
                uri.path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
        }
        let path = new_path.as_deref().unwrap_or(uri.path());
        let query = match &stripped {
            Some(q) => q.as_deref(),
            None => query,
        };
        let text = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        // The parts come from a parsed URI (path normalized to visible ASCII), so this
        // parses; `/` is the fallback that can never be reached.
        http::Uri::try_from(text).unwrap_or_else(|_| http::Uri::from_static("/"))
    }

    fn count_rejection(
        &self,
        reject: Reject,
        fingerprint: Option<&str>,
        peer: &Peer,
        route: RouteId,
    ) {
        let idx = self.policy.label_index(route);
        self.metrics.requests.inc(Outcome::Rejected, idx);
        self.metrics.rejections.inc(reject.reason, idx);
        tracing::debug!(
            reason = reject.reason.label(),
            token = fingerprint.unwrap_or("-"),
            route = self.policy.name(route),
            peer = %peer.addr,
            "request rejected: {}",
            reject.description
        );
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

    /// The response of a rejection; `scope` is the route's required scopes for the 403
    /// `insufficient_scope` challenge.
    fn reject(&self, reject: Reject, scope: Option<&str>) -> Response<ResponseBody> {
        let status = reject.reason.status();
        let code = reject.reason.error_code();
        let mut resp = match code {
            Some(code) => json_response(status, code, reject.description),
            None => json_response(status, "unauthorized", "a bearer token is required"),
        };
        let h = resp.headers_mut();
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN
        ) {
            let value = match code {
                None => r#"Bearer realm="jwtgate""#.to_owned(),
                Some(code) => format!(
                    r#"Bearer realm="jwtgate", error="{code}", error_description="{}"{}"#,
                    reject.description,
                    scope.map_or(String::new(), |s| format!(r#", scope="{s}""#))
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

/// Token policy, for a token seen for the first time: a token bound to a key (`cnf`) is
/// not a bearer token; while revocation is on (`bound` holds its lifetime bound and
/// `require_jti`), the lifetime must be bounded (`iat` present, `exp − iat` within the
/// bound) and a `jti` present if required — without these, pruning a rule could revive a
/// token it revoked.
pub fn token_policy<T: Trace>(
    bound: Option<(&LifetimeBound, bool)>,
    fresh: &Fresh<'_>,
    t: &mut T,
) -> Result<(), Reject> {
    let bound_to_key = if fresh.claims.cnf.is_some_and(|c| c.0 > 0) {
        // Bound to a DPoP key or a client certificate (RFC 9449 / RFC 8705): jwtgate does
        // not check the binding, so it must not accept the token as a bearer token.
        Err(Reject::new(
            Reason::BoundToken,
            "token is bound to a key (cnf) and cannot be used as a bearer token",
        ))
    } else {
        Ok(())
    };
    step(t, "cnf", bound_to_key, |_| "not bound to a key".into())?;
    let Some((bound, require_jti)) = bound else {
        return Ok(());
    };
    let exp = fresh.verified.window.exp;
    let lifetime = match fresh.verified.iat {
        None => Err(Reject::new(
            Reason::Lifetime,
            "token has no iat, so its lifetime cannot be bounded",
        )),
        Some(iat) if !bound.allows(iat, exp) => Err(Reject::new(
            Reason::Lifetime,
            "token lifetime exceeds max_token_lifetime_s",
        )),
        Some(_) => Ok(()),
    };
    if lifetime.is_err() {
        t.detail(|| {
            format!(
                "at most {} s (exp − iat){}",
                bound.max,
                bound.earlier.map_or(String::new(), |(old, at)| format!(
                    ", {old} s for tokens issued before {at}"
                ))
            )
        });
    }
    step(t, "lifetime", lifetime, |_| {
        format!(
            "exp − iat = {} s, bound {} s",
            exp - fresh.verified.iat.unwrap_or(exp),
            bound.max
        )
    })?;
    let jti = if require_jti && fresh.claims.jti.is_none() {
        Err(Reject::new(Reason::MissingJti, "token has no jti"))
    } else {
        Ok(())
    };
    step(t, "jti", jti, |_| {
        if fresh.claims.jti.is_some() {
            "present".into()
        } else {
            "absent (require_jti = false)".into()
        }
    })
}

/// Every fingerprint the revocation list can match the token by (computed once, when the
/// token is first seen).
pub fn fingerprints(
    list: &RevocationList,
    issuer: &IssuerConfig,
    fresh: &Fresh<'_>,
) -> TokenFingerprints {
    let wso2 = issuer.profile == Profile::Wso2;
    let twin = if wso2 {
        ecdsa_twin_of(fresh.alg, fresh.signature)
    } else {
        None
    };
    list.fingerprints(&Facts {
        iss: &issuer.issuer,
        wso2,
        jti: fresh.claims.jti.as_deref(),
        sub: fresh.claims.sub.as_deref(),
        client: fresh
            .claims
            .client_id
            .as_deref()
            .or(fresh.claims.azp.as_deref()),
        entity_id: fresh.claims.entity_id.as_deref(),
        signature: fresh.signature,
        signature_twin: twin.as_deref(),
        iat: fresh.verified.iat,
    })
}

/// One request on its way through the phases.
struct Pending<'p, B> {
    req: Request<B>,
    peer: &'p Peer,
    /// The route it is decided under (`None` until one is chosen).
    route: RouteId,
    /// The holder of its token, once verified (for the access log and spans).
    who: Option<Arc<Who>>,
}

/// What an open tunnel is held to.
struct Credential {
    generation: Arc<Generation>,
    verified: Option<Arc<Verified>>,
    again: Option<Decision>,
}

/// A generation of `config`.
fn build_generation(
    id: u64,
    config: &Config,
    auth: Arc<Authenticator>,
    revocation: &Option<Arc<Revocation>>,
    (families, claim_unset): (&ProxyMetrics, &prometheus::IntCounterVec),
    subjects: Option<Arc<Subjects>>,
) -> Generation {
    let policy = Policy::with_family(config, claim_unset);
    let route_names = policy.labels().into_iter().map(Arc::from).collect();
    let mut owned_headers = vec![config.forward.claims_header.clone()];
    owned_headers.extend(policy.claim_header_names());
    Generation {
        id,
        auth,
        revocation: revocation.clone(),
        metrics: families.for_routes(policy.labels()),
        policy,
        claims_header: config.forward.claims_header.clone(),
        owned_headers: owned_headers.into(),
        strip_authorization: config.forward.strip_authorization,
        trusted_proxies: config.server.trusted_proxies.clone(),
        upstream_host: config
            .upstream
            .url
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("127.0.0.1")),
        retry_after: HeaderValue::from(config.jwks.min_refetch_interval.as_secs().clamp(1, 60)),
        route_names,
        subjects,
    }
}

/// What the rewrite needs from the earlier phases.
struct Target {
    /// The normalized path, when it differs from the one sent.
    new_path: Option<String>,
    /// The token source the token came from.
    source: Option<usize>,
}

/// Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1): an absolute-form target or HTTP/2's
/// `:authority` decides; else the one `Host` header; else (HTTP/1.0) the upstream's.
fn set_host(h: &mut http::HeaderMap, uri: &http::Uri, trusted: bool, upstream_host: &HeaderValue) {
    let host = match uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => h.get(header::HOST).cloned(),
    };
    match host {
        Some(host) => {
            if !trusted || !h.contains_key(headers::X_FORWARDED_HOST) {
                h.insert(headers::X_FORWARDED_HOST, host.clone());
            }
            h.insert(header::HOST, host);
        }
        None => {
            h.insert(header::HOST, upstream_host.clone());
        }
    }
}

/// Phase `identity`: the claims header value, the verified payload as sent. The token
/// passed the structure check, so the payload segment is base64url and always a valid
/// header value. Copied per request rather than kept in the cache entry: cache memory
/// matters more than ~250 bytes of memcpy.
fn identity(token: &str) -> Result<HeaderValue, (Reject, Option<String>)> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    HeaderValue::from_str(payload).map_err(|_| {
        (
            Reject::new(Reason::Malformed, "token payload is not a header value"),
            Some(TokenHash::of(token).fingerprint()),
        )
    })
}

/// WSO2 may revoke a jti-less token by its signature segment. An ECDSA signature has a twin
/// encoding, `(r, n − s)`, that verifies too: both must be caught.
fn ecdsa_twin_of(alg: Algorithm, signature: &str) -> Option<String> {
    match alg {
        Algorithm::ES256 => token::ecdsa_twin(signature, token::EcOrder::P256),
        Algorithm::ES384 => token::ecdsa_twin(signature, token::EcOrder::P384),
        _ => None,
    }
}

/// A gRPC call (DESIGN §11): HTTP/2 with `content-type` `application/grpc`, alone or
/// followed by `+…` or `;…` (grpc-web is plain HTTP and gets plain answers).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// The gRPC status for an HTTP answer jwtgate makes itself (DESIGN §3, §11).
fn grpc_status(status: StatusCode) -> u8 {
    match status {
        StatusCode::UNAUTHORIZED => 16, // UNAUTHENTICATED
        StatusCode::FORBIDDEN => 7,     // PERMISSION_DENIED
        StatusCode::BAD_REQUEST => 3,   // INVALID_ARGUMENT
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => 14, // UNAVAILABLE
        StatusCode::GATEWAY_TIMEOUT => 4, // DEADLINE_EXCEEDED
        StatusCode::METHOD_NOT_ALLOWED => 12, // UNIMPLEMENTED
        _ => 2,                         // UNKNOWN
    }
}

/// `grpc-message`: percent-encoded, every byte outside 0x20–0x7E and `%` itself (gRPC
/// over HTTP/2, "Responses").
fn grpc_message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

/// A response jwtgate made itself, in gRPC form: HTTP 200, trailers-only (one HEADERS
/// frame that ends the stream) with `grpc-status` and `grpc-message`; `WWW-Authenticate`
/// and `Retry-After` are kept.
fn grpc_form(resp: Response<ResponseBody>, description: &str) -> Response<ResponseBody> {
    let status = resp.status();
    let mut out = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(grpc_status(status))),
    );
    h.insert(
        HeaderName::from_static("grpc-message"),
        grpc_message(description),
    );
    for keep in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&keep) {
            h.insert(keep, v.clone());
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_detection_and_message_encoding() {
        let req = |version, ct: &str| {
            Request::builder()
                .version(version)
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        let h2 = http::Version::HTTP_2;
        assert!(is_grpc(&req(h2, "application/grpc")));
        assert!(is_grpc(&req(h2, "application/grpc+proto")));
        assert!(is_grpc(&req(h2, "application/grpc;charset=utf-8")));
        assert!(!is_grpc(&req(h2, "application/grpc-web")));
        assert!(!is_grpc(&req(h2, "application/grpcx")));
        assert!(!is_grpc(&req(http::Version::HTTP_11, "application/grpc")));
        assert_eq!(grpc_message("100% ok\n"), "100%25 ok%0A");
        assert_eq!(grpc_status(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_status(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_status(StatusCode::GATEWAY_TIMEOUT), 4);
    }
}
