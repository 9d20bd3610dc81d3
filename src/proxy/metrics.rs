//! The request families of the proxy listener.

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter, IntCounterVec};

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
/// and `jwtgate_request_duration_seconds`: registered once; each config generation takes
/// its own [`RouteMetrics`] view for its route names.
pub struct ProxyMetrics {
    requests: IntCounterVec,
    rejections: IntCounterVec,
    pub upstream_errors: Labeled<UpstreamErrorKind>,
    pub request_duration: Histogram,
}

/// The request and rejection counters of one generation, by its `route` label values
/// (configured names, `default`, `preflight`, `none`). Every request series starts at 0,
/// and so does every rejection series of the `default` route; other rejection series
/// appear when they first count (reasons × routes would be thousands of zeros).
pub struct RouteMetrics {
    pub requests: ByRoute<Outcome>,
    pub rejections: ByRoute<Reason>,
}

impl ProxyMetrics {
    /// Registers the families.
    pub fn register(m: &Metrics) -> ProxyMetrics {
        ProxyMetrics {
            requests: m.counter_vec(
                "jwtgate_requests_total",
                "Requests on the proxy listener by outcome and route.",
                &["outcome", "route"],
            ),
            rejections: m.counter_vec(
                "jwtgate_rejections_total",
                "Rejected requests by reason and route.",
                &["reason", "route"],
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

    /// The counters of a generation whose routes have these label values.
    pub fn for_routes(&self, routes: Vec<String>) -> RouteMetrics {
        RouteMetrics {
            requests: ByRoute::new(
                self.requests.clone(),
                &Outcome::ALL,
                Outcome::label,
                routes.clone(),
                Eager::All,
            ),
            rejections: ByRoute::new(
                self.rejections.clone(),
                &Reason::ALL,
                Reason::label,
                routes,
                Eager::Route("default"),
            ),
        }
    }

    /// Drops the series of routes a reload removed, so the label set stays bounded by the
    /// routes configured now (a request still in flight on the old generation counts into
    /// a detached child: one count may be lost, never a series kept forever).
    pub fn forget_routes(&self, gone: &[String]) {
        for route in gone {
            for o in Outcome::ALL {
                let _ = self.requests.remove_label_values(&[o.label(), route]);
            }
            for r in Reason::ALL {
                let _ = self.rejections.remove_label_values(&[r.label(), route]);
            }
        }
    }

    /// Rejections so far by reason, over every route (the periodic summary log).
    pub fn rejected_by_reason(&self) -> Vec<(Reason, u64)> {
        let families = prometheus::core::Collector::collect(&self.rejections);
        Reason::ALL
            .iter()
            .map(|r| {
                let n = families
                    .iter()
                    .flat_map(|f| f.get_metric())
                    .filter(|m| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == "reason" && l.value() == r.label())
                    })
                    .map(|m| m.get_counter().get_value() as u64)
                    .sum();
                (*r, n)
            })
            .collect()
    }
}

/// Which children exist (at 0) from the start.
#[derive(Debug, Clone, Copy)]
enum Eager {
    All,
    Route(&'static str),
}

/// A counter family labelled by `K` and `route` (a bounded set: the configured route names
/// and three fixed values), children by index so the hot path formats no label.
pub struct ByRoute<K> {
    family: IntCounterVec,
    keys: Vec<K>,
    label_of: fn(K) -> &'static str,
    routes: Vec<String>,
    cells: Box<[OnceLock<IntCounter>]>,
    /// Set when a reload replaced the generation: no new series is created from here on
    /// (a removed route's series must not come back after `forget_routes`).
    retired: std::sync::atomic::AtomicBool,
}

impl<K: Copy + PartialEq> ByRoute<K> {
    fn new(
        family: IntCounterVec,
        all: &[K],
        label_of: fn(K) -> &'static str,
        routes: Vec<String>,
        eager: Eager,
    ) -> ByRoute<K> {
        let cells = (0..all.len() * routes.len())
            .map(|_| OnceLock::new())
            .collect();
        let by = ByRoute {
            family,
            keys: all.to_vec(),
            label_of,
            routes,
            cells,
            retired: std::sync::atomic::AtomicBool::new(false),
        };
        for k in 0..by.keys.len() {
            for r in 0..by.routes.len() {
                if match eager {
                    Eager::All => true,
                    Eager::Route(name) => by.routes[r] == name,
                } {
                    by.cell(k, r);
                }
            }
        }
        by
    }

    fn cell(&self, k: usize, route: usize) -> Option<&IntCounter> {
        let cell = self.cells.get(k * self.routes.len() + route)?;
        if cell.get().is_none() && self.retired.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        Some(cell.get_or_init(|| {
            self.family
                .with_label_values(&[(self.label_of)(self.keys[k]), &self.routes[route]])
        }))
    }

    /// Adds one for `k` on the route with label index `route`.
    pub fn inc(&self, k: K, route: usize) {
        if let Some(i) = self.keys.iter().position(|x| *x == k)
            && let Some(c) = self.cell(i, route)
        {
            c.inc();
        }
    }

    /// Stops creating series (the generation was replaced).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The count for `k` over every route.
    pub fn value(&self, k: K) -> u64 {
        let Some(i) = self.keys.iter().position(|x| *x == k) else {
            return 0;
        };
        let n = self.routes.len();
        self.cells[i * n..(i + 1) * n]
            .iter()
            .filter_map(OnceLock::get)
            .map(IntCounter::get)
            .sum()
    }
}
