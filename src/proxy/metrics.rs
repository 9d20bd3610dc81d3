//! The request families of the proxy listener.

use prometheus::Histogram;

use crate::metrics::{Labeled, Metrics};
use crate::reject::Reason;

/// What happened to a request on the proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Rejected,
    UpstreamError,
}

impl Outcome {
    const ALL: [Outcome; 3] = [
        Outcome::Forwarded,
        Outcome::Rejected,
        Outcome::UpstreamError,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// Why forwarding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Other,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 3] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Other,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// `jwtgate_requests_total`, `jwtgate_rejections_total`, `jwtgate_upstream_errors_total`
/// and `jwtgate_request_duration_seconds`.
pub struct ProxyMetrics {
    pub requests: Labeled<Outcome>,
    pub rejections: Labeled<Reason>,
    pub upstream_errors: Labeled<UpstreamErrorKind>,
    pub request_duration: Histogram,
}

impl ProxyMetrics {
    /// Registers the families, every child at 0.
    pub fn register(m: &Metrics) -> ProxyMetrics {
        ProxyMetrics {
            requests: m.labeled(
                "jwtgate_requests_total",
                "Requests on the proxy listener by outcome.",
                "outcome",
                &Outcome::ALL,
                Outcome::label,
            ),
            rejections: m.labeled(
                "jwtgate_rejections_total",
                "Rejected requests by reason.",
                "reason",
                &Reason::ALL,
                Reason::label,
            ),
            upstream_errors: m.labeled(
                "jwtgate_upstream_errors_total",
                "Requests that passed validation but could not be forwarded, by kind.",
                "kind",
                &UpstreamErrorKind::ALL,
                UpstreamErrorKind::label,
            ),
            request_duration: m.histogram(
                "jwtgate_request_duration_seconds",
                "Time from request head to response head, including the upstream.",
                vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
        }
    }
}
