//! The admin listener (loopback by default).
//!
//! Read-only and unauthenticated: `GET /healthz`, `GET /readyz`, `GET /metrics`. Everything
//! that changes state is a POST and authenticated: `/revocations` and `/jwks/refresh` with
//! the revocation `push_token` (bearer, constant-time comparison), `/internal/data/v1/notify`
//! with the WSO2 notify Basic credentials. An endpoint whose credential is not configured
//! answers 404.
//!
//! `/readyz` is 200 once every issuer has loaded a key set and the revocation list has been
//! restored or synced (latches: key-manager outages later do not flap it), until shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::proxy::listener::ConnLimits;

use crate::jwks::{IssuerKeys, ManualRefresh};
use crate::metrics::Metrics;
use crate::revocation::{EventResult, RevocationSource};
use crate::revocation::{Revocation, record};

/// Largest push body (`POST /revocations`).
const MAX_PUSH_BYTES: usize = 16 * 1024 * 1024;
/// Largest WSO2 notify event.
const MAX_NOTIFY_BYTES: usize = 1024 * 1024;

/// Readiness inputs shared by the admin listener and the shutdown sequence.
/// A list of issuers' key sets that a reload replaces whole.
pub type IssuerList = Arc<arc_swap::ArcSwap<Vec<Arc<IssuerKeys>>>>;

pub struct Lifecycle {
    shutting_down: AtomicBool,
    /// The issuers readiness waits for: those configured at start that a reload kept (an
    /// issuer a reload adds answers 503 for its own tokens until its first fetch, and never
    /// takes the pod out of rotation).
    issuers: IssuerList,
    revocation: Option<Arc<Revocation>>,
    /// `jwtgate_ready`: 1 while `/readyz` answers 200.
    ready: prometheus::IntGauge,
    /// One more condition (a relay: its stream exists and its index is rebuilt).
    gate: Option<Arc<AtomicBool>>,
}

impl Lifecycle {
    pub fn new(
        issuers: IssuerList,
        revocation: Option<Arc<Revocation>>,
        metrics: &Metrics,
    ) -> Lifecycle {
        Lifecycle {
            shutting_down: AtomicBool::new(false),
            issuers,
            revocation,
            ready: metrics.gauge(
                "jwtgate_ready",
                "1 while /readyz answers 200: every issuer has keys and no shutdown is under way.",
            ),
            gate: None,
        }
    }

    /// Ready only while `gate` is set too.
    pub fn with_gate(mut self, gate: Arc<AtomicBool>) -> Lifecycle {
        self.gate = Some(gate);
        self
    }

    pub fn ready(&self) -> bool {
        let ready = !self.shutting_down.load(Ordering::Acquire)
            && self.issuers.load().iter().all(|i| i.has_keys())
            && self.revocation.as_ref().is_none_or(|r| r.is_ready())
            && self.gate.as_ref().is_none_or(|g| g.load(Ordering::Acquire));
        self.ready.set(i64::from(ready));
        ready
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.ready.set(0);
    }
}

pub struct Admin {
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    /// Every configured issuer (`POST /jwks/refresh`), as of the last reload.
    pub issuers: IssuerList,
    pub revocation: Option<Arc<Revocation>>,
}

/// Serves the admin listener until `stop` changes (bounded like every listener: see
/// `proxy::listener`), over HTTPS when `tls` is given (then a plain-HTTP client gets no
/// answer: its bytes fail the handshake).
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let service = move |_peer| {
        let admin = admin.clone();
        hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.route(req).await) }
        })
    };
    let stopped = async move {
        let _ = stop.changed().await;
    };
    let limits = ConnLimits::internal(ADMIN_HEAD_TIMEOUT);
    let grace = std::time::Duration::from_secs(1);
    use crate::proxy::listener::serve;
    match tls {
        Some(acceptor) => {
            let accept = move |tcp| acceptor.accept(tcp);
            serve("admin", listener, limits, accept, service, stopped, grace).await
        }
        None => {
            let accept = |tcp| async move { Ok(tcp) };
            serve("admin", listener, limits, accept, service, stopped, grace).await
        }
    }
}

/// Request heads on the admin listener (probes, scrapes, pushes) are small and quick.
const ADMIN_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Admin {
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.lifecycle.ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                self.lifecycle.ready();
                let mut r = text(StatusCode::OK, self.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::POST, "/revocations") => self.push(req).await,
            (&Method::POST, "/internal/data/v1/notify") => self.notify(req).await,
            (&Method::POST, "/jwks/refresh") => self.jwks_refresh(req).await,
            (_, "/healthz" | "/readyz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            (_, "/revocations" | "/internal/data/v1/notify" | "/jwks/refresh") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// The push token, if revocation is configured with one (as of the last reload).
    fn push_token(&self) -> Option<String> {
        self.revocation
            .as_ref()
            .and_then(|r| r.settings().cfg.push_token.clone())
            .map(|t| t.expose().to_owned())
    }

    fn bearer_ok(&self, req: &Request<Incoming>, expected: &str) -> bool {
        credentials(req, "bearer").is_some_and(|token| constant_eq(token, expected))
    }

    async fn push(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (Some(rev), Some(token)) = (&self.revocation, self.push_token()) else {
            return text(
                StatusCode::NOT_FOUND,
                "push is not configured (revocation.push_token)\n",
            );
        };
        if !self.bearer_ok(&req, &token) {
            rev.metrics()
                .event(RevocationSource::Push, EventResult::Unauthorized, 1);
            return unauthorized("Bearer realm=\"jwtgate-admin\"");
        }
        let bytes = match read_body(req, MAX_PUSH_BYTES).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let body: record::PushBody = match record::parse_body(&bytes) {
            Ok(body) => body,
            Err(e) => {
                rev.rejected(RevocationSource::Push, 1);
                return bad_request(match e {
                    record::BodyError::NotJson(_) => "body is not JSON",
                    record::BodyError::Shape(_) => "body must be {\"revocations\": [...]}",
                });
            }
        };
        let screened = record::native_all(&body.revocations).and_then(|records| {
            for (i, r) in records.iter().enumerate() {
                rev.screen(i, r)?;
            }
            Ok(records)
        });
        match screened {
            Ok(records) => {
                let n = records.len();
                match rev.accept(RevocationSource::Push, records).await {
                    Ok(new) => json_resp(StatusCode::ACCEPTED, &json!({"applied": n, "new": new})),
                    Err(e) => unavailable(&e),
                }
            }
            Err(e) => {
                rev.rejected(RevocationSource::Push, 1);
                bad_request(&format!("{e}; nothing from this body was applied"))
            }
        }
    }

    async fn notify(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(rev) = &self.revocation else {
            return text(StatusCode::NOT_FOUND, "notify is not configured\n");
        };
        let settings = rev.settings();
        let Some(creds) = &settings.cfg.notify else {
            return text(
                StatusCode::NOT_FOUND,
                "notify is not configured (revocation.notify_username)\n",
            );
        };
        if !basic_ok(&req, &creds.username, creds.password.expose()) {
            rev.metrics()
                .event(RevocationSource::Notify, EventResult::Unauthorized, 1);
            return unauthorized("Basic realm=\"jwtgate-admin\"");
        }
        let body = match read_json(req, MAX_NOTIFY_BYTES).await {
            Ok(v) => v,
            Err(resp) => return resp,
        };
        let screened = record::wso2_notify(&body).and_then(|n| match n {
            record::Notify::Record(r) => rev.screen(0, &r).map(|()| record::Notify::Record(r)),
            ignored => Ok(ignored),
        });
        match screened {
            Ok(record::Notify::Record(r)) => {
                match rev.accept(RevocationSource::Notify, vec![r]).await {
                    Ok(_) => json_resp(StatusCode::OK, &json!({"applied": 1})),
                    Err(e) => unavailable(&e),
                }
            }
            Ok(record::Notify::Ignored) => {
                rev.metrics()
                    .event(RevocationSource::Notify, EventResult::Ignored, 1);
                json_resp(StatusCode::OK, &json!({"applied": 0}))
            }
            Err(e) => {
                rev.rejected(RevocationSource::Notify, 1);
                bad_request(&format!("{}; nothing stored", e.message))
            }
        }
    }

    async fn jwks_refresh(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(token) = self.push_token() else {
            return text(StatusCode::NOT_FOUND, "needs revocation.push_token\n");
        };
        if !self.bearer_ok(&req, &token) {
            return unauthorized("Bearer realm=\"jwtgate-admin\"");
        }
        let mut results = serde_json::Map::new();
        let mut all_throttled = true;
        let issuers = self.issuers.load_full();
        for keys in issuers.iter() {
            let r = keys.refresh_requested().await;
            all_throttled &= r == ManualRefresh::Throttled;
            results.insert(keys.name.clone(), r.label().into());
        }
        let status = if all_throttled {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::OK
        };
        json_resp(status, &json!({ "issuers": results }))
    }
}

async fn read_json(req: Request<Incoming>, limit: usize) -> Result<Value, Response<Full<Bytes>>> {
    let body = read_body(req, limit).await?;
    serde_json::from_slice(&body).map_err(|_| bad_request("body is not JSON"))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Full<Bytes>>> {
    Ok(Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| {
            json_resp(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "invalid_request", "error_description": "body too large"}),
            )
        })?
        .to_bytes())
}

/// Constant-time equality (the length is not secret).
fn constant_eq(a: &str, b: &str) -> bool {
    #[allow(deprecated)]
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// The credentials of an `Authorization: <scheme> <credentials>` header, scheme
/// case-insensitive.
fn credentials<'a>(req: &'a Request<Incoming>, scheme: &str) -> Option<&'a str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, rest) = v.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn basic_ok(req: &Request<Incoming>, user: &str, pass: &str) -> bool {
    let Some(b64) = credentials(req, "basic") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let (u, p) = decoded.split_once(':').unwrap_or((&decoded, ""));
    // Both compared, always, so timing does not tell which one was wrong.
    constant_eq(u, user) & constant_eq(p, pass)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_resp(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad_request(description: &str) -> Response<Full<Bytes>> {
    json_resp(
        StatusCode::BAD_REQUEST,
        &json!({"error": "invalid_request", "error_description": description}),
    )
}

/// A relay whose stream did not take the records: the sender retries (nothing applied).
fn unavailable(description: &str) -> Response<Full<Bytes>> {
    let mut r = json_resp(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "temporarily_unavailable", "error_description": description}),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn unauthorized(challenge: &'static str) -> Response<Full<Bytes>> {
    let mut r = json_resp(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "unauthorized", "error_description": "missing or wrong credentials"}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}
