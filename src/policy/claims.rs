//! Claims as route policy reads them (DESIGN §8): selected once per token, when it is first
//! verified; matched against route requirements and rendered as claim headers from there.

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{HeaderName, HeaderValue};
use prometheus::{IntCounter, IntCounterVec};
use serde_json::Value;

use crate::auth::{ClaimHeaderValue, Selected};
use crate::config::{ClaimHeader, ClaimPath};
use crate::metrics::Metrics;

/// Longest claim header value; a longer claim sets no header.
pub const MAX_CLAIM_HEADER_BYTES: usize = 1024;

/// What to select from a token: the scopes (when a route needs them), every claim path a
/// route or claim header uses, the rendered claim headers.
pub struct Selector {
    wants_scopes: bool,
    /// Claim paths by slot; route rules and headers refer to slots.
    paths: Vec<ClaimPath>,
    headers: Vec<(HeaderName, usize)>,
    /// Per claim header: requests that went without it because the claim's value cannot
    /// be a header value, and whether that was logged yet.
    unset: Vec<(IntCounter, AtomicBool)>,
}

impl Selector {
    /// `jwtgate_claim_headers_unset_total`, registered once for every generation.
    pub fn register_family(metrics: &Metrics) -> IntCounterVec {
        metrics.counter_vec(
            "jwtgate_claim_headers_unset_total",
            "Requests forwarded without a claim header because the claim's value cannot be a header value.",
            &["header"],
        )
    }

    pub fn new(wants_scopes: bool, headers: &[ClaimHeader], family: &IntCounterVec) -> Selector {
        let mut s = Selector {
            wants_scopes,
            paths: Vec::new(),
            headers: Vec::new(),
            unset: Vec::new(),
        };
        for h in headers {
            let slot = s.slot(&h.claim);
            s.headers.push((h.name.clone(), slot));
            s.unset.push((
                family.with_label_values(&[h.name.as_str()]),
                AtomicBool::new(false),
            ));
        }
        s
    }

    /// The slot of a claim path, added if new.
    pub fn slot(&mut self, path: &ClaimPath) -> usize {
        match self.paths.iter().position(|p| p == path) {
            Some(i) => i,
            None => {
                self.paths.push(path.clone());
                self.paths.len() - 1
            }
        }
    }

    pub fn set_wants_scopes(&mut self) {
        self.wants_scopes = true;
    }

    /// Nothing to select: tokens carry no `Selected` at all.
    pub fn is_empty(&self) -> bool {
        !self.wants_scopes && self.paths.is_empty()
    }

    /// The claim header names (client copies of them are removed in every spelling).
    pub fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter().map(|(n, _)| n)
    }

    /// Selects from a verified token's payload segment (base64url JSON: it passed the
    /// structure check already, so a failure here selects nothing).
    pub fn select(&self, payload: &str) -> Option<Box<Selected>> {
        if self.is_empty() {
            return None;
        }
        let claims: Value = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let values: Vec<Option<Value>> = self
            .paths
            .iter()
            .map(|p| lookup(&claims, p).cloned())
            .collect();
        let headers = self
            .headers
            .iter()
            .map(|(_, slot)| match &values[*slot] {
                None => ClaimHeaderValue::Missing,
                Some(v) => render(v).map_or(ClaimHeaderValue::Unset, ClaimHeaderValue::Set),
            })
            .collect();
        Some(Box::new(Selected {
            scopes: if self.wants_scopes {
                scopes(&claims)
            } else {
                Box::default()
            },
            claims: values.into(),
            headers,
        }))
    }

    /// The claim headers to set for a token (an unset one is counted, and logged once per
    /// header name).
    pub fn headers<'s>(
        &'s self,
        selected: &'s Selected,
    ) -> impl Iterator<Item = (&'s HeaderName, &'s HeaderValue)> {
        self.headers
            .iter()
            .zip(selected.headers.iter())
            .zip(self.unset.iter())
            .filter_map(|(((name, slot), value), (count, logged))| match value {
                ClaimHeaderValue::Set(v) => Some((name, v)),
                ClaimHeaderValue::Missing => None,
                ClaimHeaderValue::Unset => {
                    count.inc();
                    if !logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            header = %name,
                            claim = %self.paths[*slot],
                            "claim header not set: the claim's value cannot be a header value (logged once)"
                        );
                    }
                    None
                }
            })
    }
}

/// The value at a claim path.
pub fn lookup<'v>(claims: &'v Value, path: &ClaimPath) -> Option<&'v Value> {
    path.segments
        .iter()
        .try_fold(claims, |v, seg| v.as_object()?.get(seg))
}

/// `scope` and `scp`, each a space-separated string or an array of strings: their union.
fn scopes(claims: &Value) -> Box<[Box<str>]> {
    let mut out: Vec<Box<str>> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => {
                out.extend(s.split(' ').filter(|s| !s.is_empty()).map(Into::into))
            }
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str).map(Into::into))
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out.into()
}

/// Scalars compare by type: a string equals only a string, a boolean a boolean, a number
/// an equal number (42 equals 42.0).
fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => false,
    }
}

/// A claim rule holds: a scalar claim equals one of `wanted`; an array claim contains at
/// least one of them; a missing claim (or an object) fails.
pub fn claim_matches(claim: Option<&Value>, wanted: &[Value]) -> bool {
    match claim {
        Some(Value::Array(items)) => items
            .iter()
            .any(|item| wanted.iter().any(|w| scalar_eq(item, w))),
        Some(v) => wanted.iter().any(|w| scalar_eq(v, w)),
        None => false,
    }
}

/// A scalar as a header value: strings as is, numbers and booleans as JSON.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim as a header value (DESIGN §8): a scalar, or an array of scalars joined with `,`
/// (an element holding `,` would be ambiguous); only bytes 0x20–0x7E, at most 1,024 bytes.
pub fn render(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::Array(items) if !items.is_empty() => {
            let parts: Option<Vec<String>> = items.iter().map(scalar_text).collect();
            let parts = parts?;
            if parts.iter().any(|p| p.contains(',')) {
                return None;
            }
            parts.join(",")
        }
        v => scalar_text(v)?,
    };
    if text.len() > MAX_CLAIM_HEADER_BYTES || text.bytes().any(|b| !(0x20..=0x7e).contains(&b)) {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rendering_rules() {
        let r = |v: Value| render(&v).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(r(json!("alice")).as_deref(), Some("alice"));
        assert_eq!(r(json!(42)).as_deref(), Some("42"));
        assert_eq!(r(json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(r(json!(true)).as_deref(), Some("true"));
        assert_eq!(r(json!(["a", 1, false])).as_deref(), Some("a,1,false"));
        for bad in [
            json!({"a": 1}),
            json!(null),
            json!([]),
            json!(["a", null]),
            json!([["a"]]),
            json!([{"a": 1}]),
            json!(["a,b"]),
            json!("tab\there"),
            json!("line\nbreak"),
            json!("é"),
            json!("x".repeat(1025)),
        ] {
            assert_eq!(r(bad.clone()), None, "{bad}");
        }
        assert!(r(json!("x".repeat(1024))).is_some());
    }

    #[test]
    fn matching_rules() {
        assert!(claim_matches(Some(&json!(42.0)), &[json!(42)]));
        assert!(claim_matches(
            Some(&json!("acme")),
            &[json!("x"), json!("acme")]
        ));
        assert!(!claim_matches(Some(&json!("42")), &[json!(42)]));
        assert!(!claim_matches(Some(&json!(true)), &[json!("true")]));
        assert!(claim_matches(
            Some(&json!(["ops", "dev"])),
            &[json!("admin"), json!("ops")]
        ));
        assert!(!claim_matches(Some(&json!(["dev"])), &[json!("ops")]));
        assert!(!claim_matches(Some(&json!({"ops": 1})), &[json!("ops")]));
        assert!(!claim_matches(None, &[json!("ops")]));
        let big = json!(9007199254740993u64);
        assert!(!claim_matches(Some(&big), &[json!(9007199254740992u64)]));
    }

    #[test]
    fn lookups_and_scopes() {
        let c = json!({"realm_access": {"roles": ["a"]}, "https://x.io/ns": {"t": 1},
                       "scope": "a b", "scp": ["c", "a"]});
        let p = |t| ClaimPath::parse(t).unwrap();
        assert_eq!(lookup(&c, &p("realm_access.roles")), Some(&json!(["a"])));
        assert_eq!(lookup(&c, &p("[\"https://x.io/ns\"].t")), Some(&json!(1)));
        assert_eq!(lookup(&c, &p("realm_access.roles.x")), None);
        let all = scopes(&c);
        let s: Vec<&str> = all.iter().map(|s| &**s).collect();
        assert_eq!(s, ["a", "b", "c"]);
    }
}
