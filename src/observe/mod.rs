//! Request-level observability (DESIGN §11): the access log and traces.
//!
//! The proxy opens a [`Watch`] when a request arrives and hands it back with the
//! request's [`Record`] when the response head is ready; both writers work off the
//! request path, behind bounded queues.

pub mod access_log;
pub mod queue;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::metrics::Metrics;

pub use access_log::{AccessLog, Subjects, Who};
pub use trace::Tracing;

/// The access log and the tracer, each when configured.
#[derive(Default)]
pub struct Observers {
    log: Option<AccessLog>,
    tracing: Option<Tracing>,
    subjects: Option<Arc<Subjects>>,
}

/// A request being watched, from its arrival.
pub struct Watch {
    start: Instant,
    method: http::Method,
    path: String,
    client: SocketAddr,
    span: Option<trace::RequestSpan>,
}

/// How a request ended, as the proxy knows it.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// The `route` label.
    pub route: Option<Arc<str>>,
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub who: Option<Arc<Who>>,
    /// A rejected token's fingerprint when it got no verdict.
    pub token_fp: Option<String>,
    /// When it was sent upstream (its upstream time runs from there to the response head).
    pub sent: Option<Instant>,
}

impl Watch {
    /// The request's span (when tracing is on) sets the forwarded trace context.
    pub fn propagate(&self, headers: &mut http::HeaderMap) {
        if let Some(span) = &self.span {
            span.propagate(headers);
        }
    }
}

impl Observers {
    /// Starts the writers `config` asks for.
    pub fn start(config: &Config, metrics: &Metrics) -> Result<Observers, String> {
        let log = match config.access_log.enabled {
            true => Some(
                AccessLog::start(&config.access_log, metrics)
                    .map_err(|e| format!("access_log: cannot start its writer: {e}"))?,
            ),
            false => None,
        };
        let tracing = config
            .tracing
            .as_ref()
            .map(|t| Tracing::start(t, metrics))
            .transpose()?;
        // Spans name the issuer too, so a verdict carries its holder whenever either is on.
        let any = log.is_some() || tracing.is_some();
        let subjects = match any {
            true => Some(Arc::new(Subjects::new(&config.access_log)?)),
            false => None,
        };
        Ok(Observers {
            subjects,
            log,
            tracing,
        })
    }

    /// Whether anything watches requests.
    pub fn any(&self) -> bool {
        self.log.is_some() || self.tracing.is_some()
    }

    /// How a token's holder is named (when anything watches).
    pub fn subjects(&self) -> Option<&Arc<Subjects>> {
        self.subjects.as_ref()
    }

    /// Starts watching a request (`None` when nothing watches). `trusted`: the peer is a
    /// trusted proxy (asked only when tracing is on).
    /// `start`: when the request arrived.
    pub fn watch<B>(
        &self,
        req: &http::Request<B>,
        client: SocketAddr,
        start: Instant,
        trusted: impl FnOnce() -> bool,
    ) -> Option<Watch> {
        if !self.any() {
            return None;
        }
        let span = self
            .tracing
            .as_ref()
            .map(|t| t.begin(req.headers(), trusted(), req.method()));
        // Only the log and a sampled span read the path.
        let path = if self.log.is_some() || span.as_ref().is_some_and(|s| s.is_recording()) {
            access_log::logged_path(req.uri().path())
        } else {
            String::new()
        };
        Some(Watch {
            start,
            method: req.method().clone(),
            path,
            client,
            span,
        })
    }

    /// The request is answered, its response head ready after `duration`: its span ends,
    /// its line is queued.
    pub fn finish(&self, watch: Watch, status: u16, record: Record, duration: Duration) {
        let route = record.route.unwrap_or_else(|| Arc::from("none"));
        let trace_id = watch.span.as_ref().map(|s| s.trace_id());
        if let Some(span) = watch.span {
            span.finish(
                trace::Finish {
                    status,
                    route: &route,
                    outcome: record.outcome,
                    reason: record.reason,
                    issuer: record.who.as_deref().map(|w| &*w.issuer),
                },
                &watch.method,
                watch.client.ip(),
                &watch.path,
            );
        }
        let Some(log) = &self.log else { return };
        if !log.wants(record.reason.is_some()) {
            return;
        }
        log.send(access_log::Line {
            start: watch.start,
            method: watch.method,
            path: watch.path,
            route,
            status,
            outcome: record.outcome,
            reason: record.reason,
            who: record.who,
            token_fp: record.token_fp,
            duration,
            upstream: record
                .sent
                .map(|sent| (watch.start + duration).saturating_duration_since(sent)),
            trace_id,
        });
    }

    /// At shutdown: waits (at most `timeout` each) for queued lines and spans to go out.
    pub fn flush(&self, timeout: Duration) {
        if let Some(log) = &self.log {
            log.flush(timeout);
        }
        if let Some(t) = &self.tracing {
            t.flush(timeout);
        }
    }
}
