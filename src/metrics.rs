//! The registry every component registers its own metric families on, and the text
//! exposition. Families live with the component that counts them (`proxy`, `auth`, `jwks`,
//! `revocation`, `admin`); this module knows none of them.
//!
//! Rules for every family (vector's conventions): names `jwtgate_<name>_<unit>[_total]` in
//! base units; label values from closed sets only — enums whose labels come from an
//! exhaustive `match`, or configured names — never a value read from a token or a request.
//! Children are resolved once at start, so the request path touches atomics only.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The process's metric registry: passed down to each component, never global.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Registers a family. Names are fixed in the code and each family is registered by
    /// one component once, so a clash is a programming error caught by every test run.
    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric family names are unique and registered once");
        c
    }

    /// A counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("static metric definition"))
    }

    /// A gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("static metric definition"))
    }

    /// A counter family with the given label names.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"),
        )
    }

    /// A gauge family with the given label names.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition"),
        )
    }

    /// A histogram with the given buckets (seconds).
    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("static metric definition"),
        )
    }

    /// A counter family with one label whose values are the variants of `K`, every child
    /// resolved now (so each shows as 0 before it first counts).
    pub fn labeled<K: Copy + PartialEq>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        all: &[K],
        label_of: fn(K) -> &'static str,
    ) -> Labeled<K> {
        let family = self.counter_vec(name, help, &[label]);
        Labeled {
            children: all
                .iter()
                .map(|k| (*k, family.with_label_values(&[label_of(*k)])))
                .collect(),
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The children of a one-label counter family, by enum value (no index arithmetic: a
/// reordered enum cannot mislabel a series).
pub struct Labeled<K> {
    children: Vec<(K, IntCounter)>,
}

impl<K: Copy + PartialEq> Labeled<K> {
    /// The child for `k` (every variant was resolved at registration).
    pub fn get(&self, k: K) -> Option<&IntCounter> {
        self.children.iter().find(|(x, _)| *x == k).map(|(_, c)| c)
    }

    /// Adds `n` to the child for `k`.
    pub fn inc_by(&self, k: K, n: u64) {
        if let Some(c) = self.get(k) {
            c.inc_by(n);
        }
    }

    /// Adds one to the child for `k`.
    pub fn inc(&self, k: K) {
        self.inc_by(k, 1);
    }

    /// The current count for `k`.
    pub fn value(&self, k: K) -> u64 {
        self.get(k).map_or(0, IntCounter::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Color {
        Red,
        Blue,
    }

    fn label(c: Color) -> &'static str {
        match c {
            Color::Red => "red",
            Color::Blue => "blue",
        }
    }

    #[test]
    fn labeled_children_follow_the_enum_not_an_index() {
        let m = Metrics::new();
        let l = m.labeled(
            "jwtgate_test_total",
            "test",
            "color",
            &[Color::Blue, Color::Red],
            label,
        );
        l.inc(Color::Red);
        l.inc_by(Color::Blue, 3);
        let text = m.render();
        assert!(
            text.contains("jwtgate_test_total{color=\"red\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jwtgate_test_total{color=\"blue\"} 3"),
            "{text}"
        );
        assert_eq!(l.value(Color::Red), 1);
    }
}
