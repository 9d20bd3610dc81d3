//! Every metric family in one place. Label values come from closed sets only: outcomes,
//! rejection reasons, upstream error kinds, fetch results, and the configured issuer names
//! (never a value read from a token). Children are resolved once at start, so the request
//! path touches atomics only.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::auth::Reason;
use crate::revocation::Kind;

/// Where revocation records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationSource {
    NativePoll,
    Wso2Poll,
    Push,
    Notify,
}

impl RevocationSource {
    const ALL: [RevocationSource; 4] = [
        RevocationSource::NativePoll,
        RevocationSource::Wso2Poll,
        RevocationSource::Push,
        RevocationSource::Notify,
    ];
    fn label(self) -> &'static str {
        match self {
            RevocationSource::NativePoll => "native_poll",
            RevocationSource::Wso2Poll => "wso2_poll",
            RevocationSource::Push => "push",
            RevocationSource::Notify => "notify",
        }
    }
}

/// What became of revocation records or events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Applied,
    Rejected,
    Ignored,
    Unauthorized,
}

impl EventResult {
    const ALL: [EventResult; 4] = [
        EventResult::Applied,
        EventResult::Rejected,
        EventResult::Ignored,
        EventResult::Unauthorized,
    ];
    fn label(self) -> &'static str {
        match self {
            EventResult::Applied => "applied",
            EventResult::Rejected => "rejected",
            EventResult::Ignored => "ignored",
            EventResult::Unauthorized => "unauthorized",
        }
    }
}

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
    fn label(self) -> &'static str {
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
    fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// Result of one JWKS (or discovery) fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    Ok,
    NotModified,
    Error,
}

impl FetchResult {
    fn label(self) -> &'static str {
        match self {
            FetchResult::Ok => "ok",
            FetchResult::NotModified => "not_modified",
            FetchResult::Error => "error",
        }
    }
}

/// Per-issuer metric children, resolved at start.
#[derive(Clone)]
pub struct IssuerMetrics {
    pub fetch_ok: IntCounter,
    pub fetch_not_modified: IntCounter,
    pub fetch_error: IntCounter,
    pub keys: IntGauge,
    pub last_success: IntGauge,
}

impl IssuerMetrics {
    pub fn fetch(&self, result: FetchResult) {
        match result {
            FetchResult::Ok => self.fetch_ok.inc(),
            FetchResult::NotModified => self.fetch_not_modified.inc(),
            FetchResult::Error => self.fetch_error.inc(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: [IntCounter; 3],
    rejections: Vec<IntCounter>,
    upstream_errors: [IntCounter; 3],
    pub request_duration: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub ready: IntGauge,
    fetches: IntCounterVec,
    keys: IntGaugeVec,
    last_success: IntGaugeVec,
    revocations: [IntGauge; 3],
    revocations_pruned: [IntCounter; 3],
    /// `[source][ok=0 / error=1]`
    revocation_syncs: Vec<[IntCounter; 2]>,
    /// `[source][result]`
    revocation_events: Vec<Vec<IntCounter>>,
    pub revocation_last_sync: IntGauge,
    pub revocation_stale: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "jwtgate_requests_total",
                "Requests on the proxy listener by outcome.",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let rejections = IntCounterVec::new(
            Opts::new("jwtgate_rejections_total", "Rejected requests by reason."),
            &["reason"],
        )
        .expect("static metric definition");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "jwtgate_upstream_errors_total",
                "Requests that passed validation but could not be forwarded, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "jwtgate_request_duration_seconds",
                "Time from request head to response head, including the upstream.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("static metric definition");
        let cache_hits = IntCounter::new(
            "jwtgate_token_cache_hits_total",
            "Tokens served from the verified-token cache.",
        )
        .expect("static metric definition");
        let cache_misses = IntCounter::new(
            "jwtgate_token_cache_misses_total",
            "Tokens not in the verified-token cache (verified in full).",
        )
        .expect("static metric definition");
        let ready = IntGauge::new(
            "jwtgate_ready",
            "1 while /readyz answers 200: every issuer has keys and no shutdown is under way.",
        )
        .expect("static metric definition");
        let fetches = IntCounterVec::new(
            Opts::new(
                "jwtgate_jwks_fetches_total",
                "JWKS fetches by issuer and result.",
            ),
            &["issuer", "result"],
        )
        .expect("static metric definition");
        let keys = IntGaugeVec::new(
            Opts::new(
                "jwtgate_jwks_keys",
                "Usable keys in the issuer's current key set.",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        let last_success = IntGaugeVec::new(
            Opts::new(
                "jwtgate_jwks_last_success_timestamp_seconds",
                "Unix time of the issuer's last successful JWKS fetch (0 = never).",
            ),
            &["issuer"],
        )
        .expect("static metric definition");

        let revocations = IntGaugeVec::new(
            Opts::new("jwtgate_revocations", "Revocation records held, by kind."),
            &["kind"],
        )
        .expect("static metric definition");
        let pruned = IntCounterVec::new(
            Opts::new(
                "jwtgate_revocations_pruned_total",
                "Revocation records pruned because nothing they match can still be valid.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let syncs = IntCounterVec::new(
            Opts::new(
                "jwtgate_revocation_syncs_total",
                "Revocation feed polls by source and result.",
            ),
            &["source", "result"],
        )
        .expect("static metric definition");
        let events = IntCounterVec::new(
            Opts::new(
                "jwtgate_revocation_events_total",
                "Revocation records and events received, by source and what became of them.",
            ),
            &["source", "result"],
        )
        .expect("static metric definition");
        let revocation_last_sync = IntGauge::new(
            "jwtgate_revocation_last_sync_timestamp_seconds",
            "Unix time of the last successful revocation feed poll (0 = never).",
        )
        .expect("static metric definition");
        let revocation_stale = IntGauge::new(
            "jwtgate_revocation_stale",
            "1 while every revocation poll source has failed for longer than max_sync_age_s.",
        )
        .expect("static metric definition");

        for c in [
            Box::new(revocations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pruned.clone()),
            Box::new(syncs.clone()),
            Box::new(events.clone()),
            Box::new(revocation_last_sync.clone()),
            Box::new(revocation_stale.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejections.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(request_duration.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(ready.clone()),
            Box::new(fetches.clone()),
            Box::new(keys.clone()),
            Box::new(last_success.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }

        Metrics {
            requests: Outcome::ALL.map(|o| requests.with_label_values(&[o.label()])),
            rejections: Reason::ALL
                .iter()
                .map(|r| rejections.with_label_values(&[r.label()]))
                .collect(),
            upstream_errors: UpstreamErrorKind::ALL
                .map(|k| upstream_errors.with_label_values(&[k.label()])),
            request_duration,
            cache_hits,
            cache_misses,
            ready,
            fetches,
            keys,
            last_success,
            revocations: Kind::ALL.map(|k| revocations.with_label_values(&[k.label()])),
            revocations_pruned: Kind::ALL.map(|k| pruned.with_label_values(&[k.label()])),
            revocation_syncs: RevocationSource::ALL
                .iter()
                .map(|s| ["ok", "error"].map(|r| syncs.with_label_values(&[s.label(), r])))
                .collect(),
            revocation_events: RevocationSource::ALL
                .iter()
                .map(|s| {
                    EventResult::ALL
                        .iter()
                        .map(|r| events.with_label_values(&[s.label(), r.label()]))
                        .collect()
                })
                .collect(),
            revocation_last_sync,
            revocation_stale,
            registry,
        }
    }

    /// Children for one configured issuer (its configured name is the label).
    pub fn issuer(&self, name: &str) -> IssuerMetrics {
        let fetch = |r: FetchResult| self.fetches.with_label_values(&[name, r.label()]);
        IssuerMetrics {
            fetch_ok: fetch(FetchResult::Ok),
            fetch_not_modified: fetch(FetchResult::NotModified),
            fetch_error: fetch(FetchResult::Error),
            keys: self.keys.with_label_values(&[name]),
            last_success: self.last_success.with_label_values(&[name]),
        }
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    pub fn rejection(&self, reason: Reason) {
        self.rejections[reason.index()].inc();
    }

    pub fn rejection_count(&self, reason: Reason) -> u64 {
        self.rejections[reason.index()].get()
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    pub fn revocation_count(&self, kind: Kind, n: i64) {
        self.revocations[kind as usize].set(n);
    }

    pub fn revocation_pruned(&self, kind: Kind, n: u64) {
        self.revocations_pruned[kind as usize].inc_by(n);
    }

    pub fn revocation_sync(&self, source: RevocationSource, ok: bool) {
        self.revocation_syncs[source as usize][usize::from(!ok)].inc();
    }

    pub fn revocation_event(&self, source: RevocationSource, result: EventResult, n: u64) {
        self.revocation_events[source as usize][result as usize].inc_by(n);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
