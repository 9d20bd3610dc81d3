//! The admin listener (loopback by default): `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! `/readyz` is 200 once every issuer has loaded a key set (a latch: key-manager outages
//! later do not flap it) and until shutdown begins. Nothing here changes state: the
//! authenticated POSTs (`/jwks/refresh`, revocation push) need the push token of the
//! revocation config and answer 404 until it exists.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::jwks::IssuerKeys;
use crate::metrics::Metrics;

/// Readiness inputs shared by the admin listener and the shutdown sequence.
pub struct Lifecycle {
    shutting_down: AtomicBool,
    issuers: Vec<Arc<IssuerKeys>>,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    pub fn new(issuers: Vec<Arc<IssuerKeys>>, metrics: Arc<Metrics>) -> Lifecycle {
        Lifecycle {
            shutting_down: AtomicBool::new(false),
            issuers,
            metrics,
        }
    }

    pub fn ready(&self) -> bool {
        let ready = !self.shutting_down.load(Ordering::Acquire)
            && self.issuers.iter().all(|i| i.has_keys());
        self.metrics.ready.set(i64::from(ready));
        ready
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.metrics.ready.set(0);
    }
}

pub async fn serve(
    listener: TcpListener,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let lifecycle = lifecycle.clone();
        let metrics = metrics.clone();
        let svc = hyper::service::service_fn(move |req| {
            let resp = route(&req, &lifecycle, &metrics);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn route(
    req: &Request<Incoming>,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if lifecycle.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            lifecycle.ready();
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
