//! Request traces (DESIGN §11): one server span per request, exported over OTLP/HTTP.
//!
//! An incoming W3C `traceparent` is the parent only from a trusted proxy; otherwise the
//! request starts a trace of its own. Sampling is parent-based with `sample_ratio` for
//! new traces. The upstream always receives jwtgate's own `traceparent` (its span as
//! the parent), never the client's as sent.
//!
//! Export is off the request path: an ended span is offered to a bounded queue (full →
//! dropped and counted) and a dedicated thread sends batches; an unreachable collector
//! costs a log line a minute, never a request's time.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use http::HeaderValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter as _, SpanProcessor,
};

use crate::config::TracingConfig;
use crate::metrics::Metrics;

use super::queue::{self, Batches, Queue};

/// Ended spans waiting for export, at most.
pub const QUEUE_SPANS: usize = 2048;
/// Spans per export request, at most.
const BATCH_SPANS: usize = 512;
/// The export thread sends what is queued every 500 ms (1 s when idle).
const TICKS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(1));
/// One export request, at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Export failures are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The tracer, and the queue its spans leave by.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// `sample_ratio`, for new traces.
    ratio: f64,
    queue: std::sync::Arc<Queue<SpanData>>,
}

/// What a finished request adds to its span.
pub struct Finish<'a> {
    pub status: u16,
    pub route: &'a str,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

/// One request's span.
pub struct RequestSpan {
    /// The SDK's span, only when sampled: an unsampled request never enters the SDK.
    span: Option<Box<Span>>,
    context: SpanContext,
    /// The parent came from a trusted proxy: its `tracestate` goes on.
    continued: bool,
}

impl Tracing {
    /// The tracer and its export thread.
    pub fn start(cfg: &TracingConfig, metrics: &Metrics) -> Result<Tracing, String> {
        let exported = metrics.counter(
            "jwtgate_trace_spans_exported_total",
            "Spans accepted by the OTLP endpoint.",
        );
        let dropped = metrics.counter_vec(
            "jwtgate_trace_spans_dropped_total",
            "Spans dropped: the export queue was full, or the OTLP endpoint refused or did not answer.",
            &["cause"],
        );
        let failed = dropped.with_label_values(&["export_failed"]);
        let (queue, batches) =
            queue::bounded(QUEUE_SPANS, dropped.with_label_values(&["queue_full"]));
        let queue = std::sync::Arc::new(queue);
        let http = crate::fetch::client(None, EXPORT_TIMEOUT).map_err(|e| e.to_string())?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http)
            .with_endpoint(cfg.traces_url.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "jwtgate".into());
        let resource = Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);
        let endpoint = cfg.traces_url.to_string();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export(&batches, exporter, &endpoint, &exported, &failed))
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
        let provider = SdkTracerProvider::builder()
            // Only sampled requests reach the SDK (see `begin`, which decides).
            .with_sampler(Sampler::AlwaysOn)
            .with_span_processor(Offer(queue.clone()))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("jwtgate");
        Ok(Tracing {
            provider,
            tracer,
            ratio: cfg.sample_ratio,
            queue,
        })
    }

    /// Starts a request's span. `trusted`: the peer is a trusted proxy, whose
    /// `traceparent` (and its sampled flag) is the parent; otherwise a new trace starts.
    pub fn begin(
        &self,
        headers: &http::HeaderMap,
        trusted: bool,
        method: &http::Method,
    ) -> RequestSpan {
        let parent = if trusted { parent_of(headers) } else { None };
        let continued = parent.is_some();
        // Parent-based: a trusted parent's flag decides, else `sample_ratio`.
        let sampled = match &parent {
            Some(p) => p.is_sampled(),
            None => coin(self.ratio),
        };
        if !sampled {
            // Ids and flags for the upstream's traceparent; nothing is recorded.
            let ids = RandomIdGenerator::default();
            let (trace_id, state) = match parent {
                Some(p) => (p.trace_id(), p.trace_state().clone()),
                None => (ids.new_trace_id(), TraceState::default()),
            };
            let context = SpanContext::new(
                trace_id,
                ids.new_span_id(),
                TraceFlags::default(),
                false,
                state,
            );
            return RequestSpan {
                span: None,
                context,
                continued,
            };
        }
        let parent = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        let context = span.span_context().clone();
        RequestSpan {
            span: Some(Box::new(span)),
            context,
            continued,
        }
    }

    /// Waits (at most `timeout`) until the spans ended so far are exported: at shutdown.
    pub fn flush(&self, timeout: Duration) {
        self.queue.flush(timeout);
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

impl RequestSpan {
    /// Sampled: the span is exported when it ends.
    pub fn is_recording(&self) -> bool {
        self.span.is_some()
    }

    /// The span's trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.context.trace_id().to_bytes()
    }

    /// Sets the forwarded request's trace context: this span as the parent; the client's
    /// `tracestate` only when its `traceparent` was honoured.
    pub fn propagate(&self, h: &mut http::HeaderMap) {
        let c = &self.context;
        // `00-{trace id}-{span id}-{flags}`, hex by table (no formatter on the hot path).
        let mut v = [b'-'; 55];
        v[..2].copy_from_slice(b"00");
        hex_into(&mut v[3..35], &c.trace_id().to_bytes());
        hex_into(&mut v[36..52], &c.span_id().to_bytes());
        hex_into(&mut v[53..55], &[c.trace_flags().to_u8()]);
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            h.insert(TRACEPARENT, v);
        }
        if !self.continued {
            h.remove(TRACESTATE);
        }
    }

    /// Ends the span with the request's outcome (attributes only on a sampled span).
    pub fn finish(
        self,
        f: Finish<'_>,
        method: &http::Method,
        client: std::net::IpAddr,
        path: &str,
    ) {
        let Some(mut span) = self.span else {
            return;
        };
        span.update_name(format!("{method} {}", f.route));
        let mut attrs = vec![
            KeyValue::new("http.request.method", method_name(method)),
            KeyValue::new("url.path", path.to_owned()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
            KeyValue::new("client.address", client.to_string()),
            KeyValue::new("jwtgate.route", f.route.to_owned()),
            KeyValue::new("jwtgate.outcome", f.outcome.to_owned()),
        ];
        if let Some(r) = f.reason {
            attrs.push(KeyValue::new("jwtgate.reason", r.to_owned()));
        }
        if let Some(i) = f.issuer {
            attrs.push(KeyValue::new("jwtgate.issuer", i.to_owned()));
        }
        span.set_attributes(attrs);
        if f.status >= 500 {
            span.set_status(Status::error(f.outcome.to_owned()));
        }
        span.end();
    }
}

/// True with probability `ratio` (a new trace is sampled).
fn coin(ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    // 53 random bits as a uniform number in [0, 1).
    let bits = u64::from_be_bytes(RandomIdGenerator::default().new_span_id().to_bytes());
    ((bits >> 11) as f64 / (1u64 << 53) as f64) < ratio
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// The parent a trusted proxy sent: one `traceparent` in the exact W3C form (version 00:
/// `00-` 32 lower-case hex `-` 16 lower-case hex `-` 2 hex, nothing after; a later
/// version may append `-…`; version `ff`, an all-zero id or anything else is no parent),
/// with its `tracestate` when that parses.
fn parent_of(headers: &http::HeaderMap) -> Option<SpanContext> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let value = all.next()?.as_bytes();
    if all.next().is_some() {
        return None;
    }
    let field = |range: std::ops::Range<usize>| {
        let b = value.get(range)?;
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .then(|| std::str::from_utf8(b).ok())
            .flatten()
    };
    let version = field(0..2)?;
    let exact = value.len() == 55;
    let extended = value.len() > 55 && value[55] == b'-';
    if version == "ff" || !(exact || (version != "00" && extended)) {
        return None;
    }
    if [2, 35, 52].iter().any(|&i| value[i] != b'-') {
        return None;
    }
    let trace_id = TraceId::from_hex(field(3..35)?).ok()?;
    let span_id = SpanId::from_hex(field(36..52)?).ok()?;
    let flags = u8::from_str_radix(field(53..55)?, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// A method as a span name or attribute, without an allocation for the usual ones.
fn method_name(m: &http::Method) -> Cow<'static, str> {
    Cow::Borrowed(match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        other => return Cow::Owned(other.to_owned()),
    })
}

/// The span processor: an ended span is offered to the export queue.
#[derive(Debug)]
struct Offer(std::sync::Arc<Queue<SpanData>>);

impl SpanProcessor for Offer {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.offer(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(EXPORT_TIMEOUT);
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.flush(timeout);
        Ok(())
    }
}

/// The export thread: batches of spans, one OTLP/HTTP request each, on a runtime of its
/// own so a slow collector never holds a request worker.
fn export(
    batches: &Batches<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    endpoint: &str,
    exported: &prometheus::IntCounter,
    failed: &prometheus::IntCounter,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "tracing: cannot start the export runtime; spans are dropped");
            return;
        }
    };
    let mut last_warning: Option<Instant> = None;
    batches.run(TICKS, BATCH_SPANS, |batch| {
        let items = std::mem::take(batch);
        let n = items.len() as u64;
        let result = rt.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(items)).await
        });
        let error = match result {
            Ok(Ok(())) => {
                exported.inc_by(n);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        failed.inc_by(n);
        if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            last_warning = Some(Instant::now());
            tracing::warn!(%endpoint, %error, dropped = n, "tracing: span export failed (logged at most once a minute; see jwtgate_trace_spans_dropped_total)");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(tp: &[&str]) -> Option<SpanContext> {
        let mut h = http::HeaderMap::new();
        for v in tp {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        parent_of(&h)
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        assert!((0..1000).all(|_| coin(1.0)));
        assert!(!(0..1000).any(|_| coin(0.0)));
        let hits = (0..20_000).filter(|_| coin(0.25)).count();
        // 0.25 ± 0.05 is more than ten standard deviations.
        assert!((4_000..=6_000).contains(&hits), "{hits}");
    }

    #[test]
    fn only_an_exact_w3c_traceparent_is_a_parent() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parent(&[good]).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        // Unknown flags are dropped, the sampled bit kept.
        let sc = parent(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe"]).unwrap();
        assert!(!sc.is_sampled());
        // A later version may carry more fields.
        assert!(parent(&["01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"]).is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(parent(&[bad]).is_none(), "{bad:?}");
        }
        assert!(parent(&[good, good]).is_none(), "two traceparent headers");
    }
}
