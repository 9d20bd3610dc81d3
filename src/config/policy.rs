//! Route policy, token sources and claim headers as configured (DESIGN §8): the typed
//! form and one validator per section, every problem named by its key
//! (`routes[2].path_regex`, `token.sources[1].cookie`, `forward.claim_headers.x-user`).

use std::collections::HashSet;

use http::header::HeaderName;
use serde::Serialize;

use super::raw::{RawPolicy, RawRoute, RawTokenSource};
use super::validate::{choice, label_safe};
use super::{IssuerConfig, Problems, ser_display};

/// What a route needs from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is needed.
    Required,
    /// A token, when one is present, must be valid; without one the request goes on
    /// without identity.
    Optional,
    /// No token is read; what the sources would yield is removed before forwarding.
    Public,
}

impl AuthMode {
    pub fn label(self) -> &'static str {
        match self {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::Public => "public",
        }
    }
}

/// `policy.cors_preflight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CorsPreflight {
    /// A preflight is an ordinary request (it needs a token where its route does).
    Reject,
    /// A preflight is forwarded without a token and without identity headers.
    Forward,
}

/// A route's path matcher (exactly one per route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// Segment-aware: `/api` matches `/api` and `/api/x`, never `/apix`. Stored without a
    /// trailing `/` (except `/` itself, which matches every path).
    PathPrefix(String),
    PathExact(String),
    /// Matched against the whole normalized path, as `^(?:…)$`.
    PathRegex(String),
}

impl PathMatch {
    /// The segment-aware prefix rule (also `jwtgate check`'s shadowing warning).
    pub fn prefix_matches(prefix: &str, path: &str) -> bool {
        prefix == "/"
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The anchored regex a `path_regex` compiles to.
    pub fn anchored(regex: &str) -> String {
        format!("^(?:{regex})$")
    }
}

/// A dotted claim path: `realm_access.roles`; `["https://example.com/ns"].tenant` holds a
/// literal key with dots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimPath {
    pub text: String,
    pub segments: Vec<String>,
}

impl ClaimPath {
    pub fn parse(text: &str) -> Result<ClaimPath, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        loop {
            let (seg, after) = if let Some(lit) = rest.strip_prefix("[\"") {
                let end = lit
                    .find("\"]")
                    .ok_or_else(|| format!("{text:?}: [\" without a closing \"]"))?;
                (&lit[..end], &lit[end + 2..])
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if seg.is_empty() {
                return Err(format!("{text:?} has an empty segment"));
            }
            segments.push(seg.to_owned());
            if after.is_empty() {
                break;
            }
            rest = match after.strip_prefix('.') {
                Some(r) => r,
                None if after.starts_with("[\"") => after,
                None => return Err(format!("{text:?}: expected . or [\" after {seg:?}")),
            };
        }
        Ok(ClaimPath {
            text: text.to_owned(),
            segments,
        })
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `claims = { "tenant" = "acme" }`: the claim must equal (or, an array claim, contain)
/// one of the values.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    pub path: ClaimPath,
    /// JSON strings, numbers and booleans.
    pub values: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: String,
    #[serde(flatten)]
    pub path: PathMatch,
    /// `None`: every method. `GET` also matches `HEAD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    pub auth: AuthMode,
    /// Issuer names; `issuer_indices` holds their positions in `issuers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    #[serde(skip)]
    pub issuer_indices: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_all: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_any: Vec<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "ser_claim_rules"
    )]
    pub claims: Vec<ClaimRule>,
    pub forward_credentials: bool,
}

impl RouteConfig {
    /// A route with requirements beyond a valid token.
    pub fn has_requirements(&self) -> bool {
        !self.issuers.is_empty()
            || !self.scopes_all.is_empty()
            || !self.scopes_any.is_empty()
            || !self.claims.is_empty()
    }

    /// The route takes requests of `method` (`GET` also takes `HEAD`).
    pub fn takes_method(&self, method: &str) -> bool {
        methods_take(self.methods.as_deref(), method)
    }
}

/// A `methods` list takes `method` (`None`: every method; `GET` also takes `HEAD`): the one
/// rule for matching requests and for `jwtgate check`'s shadowing warning.
pub fn methods_take(methods: Option<&[String]>, method: &str) -> bool {
    methods.is_none_or(|ms| {
        ms.iter()
            .any(|m| m == method || (m == "GET" && method == "HEAD"))
    })
}

fn ser_claim_rules<S: serde::Serializer>(rules: &[ClaimRule], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(rules.len()))?;
    for r in rules {
        if r.values.len() == 1 {
            map.serialize_entry(&r.path.text, &r.values[0])?;
        } else {
            map.serialize_entry(&r.path.text, &r.values)?;
        }
    }
    map.end()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    pub default_auth: AuthMode,
    pub cors_preflight: CorsPreflight,
    /// Origins (`scheme://host[:port]`, lower-case) allowed to use a cookie token on an
    /// unsafe method.
    pub allowed_origins: Vec<String>,
    pub allow_path_semicolons: bool,
}

/// Where a token may come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TokenSource {
    /// A request header: after `scheme` (case-insensitive, then a space), after `prefix`
    /// (case-sensitive), or the whole value.
    Header {
        #[serde(serialize_with = "ser_display")]
        header: HeaderName,
        #[serde(skip_serializing_if = "Option::is_none")]
        scheme: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    Cookie {
        cookie: String,
    },
    /// Always removed from the URI forwarded upstream.
    Query {
        query: String,
    },
}

impl TokenSource {
    /// `Authorization: Bearer`, the source when none is configured.
    pub fn bearer() -> TokenSource {
        TokenSource::Header {
            header: http::header::AUTHORIZATION,
            scheme: Some("Bearer".to_owned()),
            prefix: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenConfig {
    pub sources: Vec<TokenSource>,
}

/// `[forward.claim_headers]`: upstream header ← claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub name: HeaderName,
    pub claim: ClaimPath,
}

pub(super) fn ser_claim_headers<S: serde::Serializer>(
    headers: &[ClaimHeader],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(headers.len()))?;
    for h in headers {
        map.serialize_entry(h.name.as_str(), &h.claim.text)?;
    }
    map.end()
}

const AUTH_CHOICES: [(&str, AuthMode); 3] = [
    ("required", AuthMode::Required),
    ("optional", AuthMode::Optional),
    ("public", AuthMode::Public),
];

pub(super) fn validate_policy(raw: RawPolicy, p: &mut Problems) -> PolicyConfig {
    let origins = raw
        .allowed_origins
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, o)| {
            origin(&o)
                .map_err(|m| p.push(format!("policy.allowed_origins[{i}]"), m))
                .ok()
        })
        .collect();
    PolicyConfig {
        default_auth: choice(
            "policy.default_auth",
            raw.default_auth.as_deref(),
            &AUTH_CHOICES,
            p,
        ),
        cors_preflight: choice(
            "policy.cors_preflight",
            raw.cors_preflight.as_deref(),
            &[
                ("reject", CorsPreflight::Reject),
                ("forward", CorsPreflight::Forward),
            ],
            p,
        ),
        allowed_origins: origins,
        allow_path_semicolons: raw.allow_path_semicolons,
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after; compared
/// lower-case.
fn origin(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not an origin: write scheme://host[:port], no path");
    let uri: http::Uri = text.parse().map_err(|_| bad())?;
    let ok = matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && !text.ends_with('/')
        && uri.path_and_query().is_none_or(|pq| pq.as_str() == "/");
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

/// Route names with a meaning of their own in the `route` metric label.
const RESERVED_ROUTE_NAMES: [&str; 3] = ["default", "preflight", "none"];

/// Exactly one matcher; config paths must already be normalized.
fn path_match(k: &dyn Fn(&str) -> String, r: &mut RawRoute, p: &mut Problems) -> PathMatch {
    let given: Vec<(&str, String)> = [
        ("path_prefix", r.path_prefix.take()),
        ("path_exact", r.path_exact.take()),
        ("path_regex", r.path_regex.take()),
    ]
    .into_iter()
    .filter_map(|(key, v)| v.map(|v| (key, v)))
    .collect();
    let (key, value) = match given.as_slice() {
        [one] => one.clone(),
        [] => {
            p.push(
                k("path_prefix"),
                "a route needs exactly one of path_prefix, path_exact, path_regex",
            );
            return PathMatch::PathExact("/".into());
        }
        [_, second, ..] => {
            p.push(
                k(second.0),
                "a route takes exactly one of path_prefix, path_exact, path_regex",
            );
            return PathMatch::PathExact("/".into());
        }
    };
    if key == "path_regex" {
        if let Err(e) = regex::Regex::new(&PathMatch::anchored(&value)) {
            let first = e.to_string().lines().last().unwrap_or_default().to_owned();
            p.push(k(key), format!("invalid regex: {first}"));
        }
        return PathMatch::PathRegex(value);
    }
    match crate::path::normalize(&value, false) {
        Ok(n) if n.forward == value.as_str() => {}
        Ok(n) => p.push(
            k(key),
            format!(
                "{value:?} is not normalized (requests are matched after normalization): write {:?}",
                n.forward
            ),
        ),
        Err(e) => p.push(k(key), format!("{value:?} can never match: {}", e.0)),
    }
    if key == "path_exact" {
        return PathMatch::PathExact(value);
    }
    let trimmed = match value.trim_end_matches('/') {
        "" => "/".to_owned(),
        t => t.to_owned(),
    };
    PathMatch::PathPrefix(trimmed)
}

fn methods(key: &str, raw: Option<Vec<String>>, p: &mut Problems) -> Option<Vec<String>> {
    let list = raw?;
    if list.is_empty() {
        p.push(
            key,
            "an empty list matches no request: remove the key to match every method",
        );
    }
    for (j, m) in list.iter().enumerate() {
        let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
        if !ok {
            p.push(
                format!("{key}[{j}]"),
                format!("{m:?} is not an upper-case method name (methods are case-sensitive)"),
            );
        }
    }
    Some(list)
}

fn scopes(key: &str, raw: Option<Vec<String>>, p: &mut Problems) -> Vec<String> {
    let Some(list) = raw else {
        return Vec::new();
    };
    if list.is_empty() {
        p.push(key, "an empty scope list requires nothing: remove the key");
    }
    for (j, s) in list.iter().enumerate() {
        if s.is_empty()
            || s.bytes()
                .any(|b| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'\\')
        {
            p.push(
                format!("{key}[{j}]"),
                "a scope is one or more visible ASCII characters, no quote or backslash (RFC 6749 §3.3)",
            );
        }
    }
    list
}

fn claim_rules(key: &str, raw: Option<toml::Table>, p: &mut Problems) -> Vec<ClaimRule> {
    let Some(table) = raw else {
        return Vec::new();
    };
    if table.is_empty() {
        p.push(
            key,
            "an empty claims table requires nothing: remove the key",
        );
    }
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(serde_json::Value::from(s.clone())),
        toml::Value::Integer(i) => Some(serde_json::Value::from(*i)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number),
        toml::Value::Boolean(b) => Some(serde_json::Value::from(*b)),
        _ => None,
    };
    let mut out = Vec::new();
    for (path, value) in table {
        let k = format!("{key}.{path:?}");
        let path = match ClaimPath::parse(&path) {
            Ok(c) => c,
            Err(m) => {
                p.push(k, m);
                continue;
            }
        };
        let values: Option<Vec<_>> = match &value {
            toml::Value::Array(items) if !items.is_empty() => items.iter().map(scalar).collect(),
            toml::Value::Array(_) => None,
            v => scalar(v).map(|s| vec![s]),
        };
        match values {
            Some(values) => out.push(ClaimRule { path, values }),
            None => p.push(
                k,
                "must be a string, number or boolean, or a non-empty list of them",
            ),
        }
    }
    out
}

// long-function: one check per key of a route, in the order DESIGN §8 lists them
pub(super) fn validate_routes(
    raw: Vec<RawRoute>,
    issuers: &[IssuerConfig],
    p: &mut Problems,
) -> Vec<RouteConfig> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, mut r) in raw.into_iter().enumerate() {
        let k = |field: &str| format!("routes[{i}].{field}");
        let name = match r.name.take() {
            Some(n) if !label_safe(&n) => {
                p.push(
                    k("name"),
                    "1-64 characters of A-Z a-z 0-9 - _ . (it is a metric label)",
                );
                n
            }
            Some(n) if RESERVED_ROUTE_NAMES.contains(&n.as_str()) => {
                p.push(
                    k("name"),
                    format!("{n:?} is reserved (the route label of requests no route matched or refused before routing)"),
                );
                n
            }
            Some(n) => n,
            None => {
                p.push(
                    k("name"),
                    "required: the route's name (metric label `route`)",
                );
                format!("route{i}")
            }
        };
        if !names.insert(name.clone()) {
            p.push(k("name"), format!("duplicate route name {name:?}"));
        }
        let path = path_match(&k, &mut r, p);
        let methods = methods(&k("methods"), r.methods.take(), p);
        let auth = choice(&k("auth"), r.auth.as_deref(), &AUTH_CHOICES, p);
        let mut issuer_indices = Vec::new();
        let issuers_given = r.issuers.is_some();
        let issuer_names = r.issuers.take().unwrap_or_default();
        if issuers_given && issuer_names.is_empty() {
            p.push(
                k("issuers"),
                "an empty list admits no token: remove the key to admit every issuer",
            );
        }
        for (j, n) in issuer_names.iter().enumerate() {
            match issuers.iter().position(|c| &c.name == n) {
                Some(idx) => issuer_indices.push(idx),
                None => p.push(
                    format!("routes[{i}].issuers[{j}]"),
                    format!("no [[issuers]] is named {n:?}"),
                ),
            }
        }
        let route = RouteConfig {
            name,
            path,
            methods,
            auth,
            issuers: issuer_names,
            issuer_indices,
            scopes_all: scopes(&k("scopes_all"), r.scopes_all.take(), p),
            scopes_any: scopes(&k("scopes_any"), r.scopes_any.take(), p),
            claims: claim_rules(&k("claims"), r.claims.take(), p),
            forward_credentials: r.forward_credentials,
        };
        if auth == AuthMode::Public && route.has_requirements() {
            p.push(
                k("auth"),
                "a public route reads no token, so it cannot have issuers, scopes_all, scopes_any or claims",
            );
        }
        if auth != AuthMode::Public && route.forward_credentials {
            p.push(
                k("forward_credentials"),
                "applies to auth = \"public\" only (other routes forward the checked token)",
            );
        }
        out.push(route);
    }
    let patterns: Vec<String> = out
        .iter()
        .filter_map(|r| match &r.path {
            PathMatch::PathRegex(re) => Some(PathMatch::anchored(re)),
            _ => None,
        })
        .collect();
    if regex::RegexSet::new(&patterns).is_err()
        && patterns.iter().all(|p| regex::Regex::new(p).is_ok())
    {
        p.push(
            "routes",
            "the path_regex patterns together exceed the regex size limit: simplify or merge them",
        );
    }
    out
}

pub(super) fn validate_sources(
    raw: Option<Vec<RawTokenSource>>,
    p: &mut Problems,
) -> Vec<TokenSource> {
    let Some(raw) = raw else {
        return vec![TokenSource::bearer()];
    };
    if raw.is_empty() {
        p.push(
            "token.sources",
            "an empty list reads no token: remove it for the default (Authorization: Bearer)",
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("token.sources[{i}].{f}");
        let Some(source) = token_source(&k, r, p) else {
            continue;
        };
        let (kind, name) = match &source {
            TokenSource::Header { header, .. } => ("header", header.as_str()),
            TokenSource::Cookie { cookie } => ("cookie", cookie.as_str()),
            TokenSource::Query { query } => ("query", query.as_str()),
        };
        if !seen.insert(format!("{kind} {name}")) {
            p.push(k(kind), format!("{kind} {name:?} is already a source"));
        }
        out.push(source);
    }
    out
}

/// RFC 7230 token characters (schemes, cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b))
}

/// One `[[token.sources]]` entry: exactly one of header, cookie, query.
fn token_source(
    k: &dyn Fn(&str) -> String,
    r: RawTokenSource,
    p: &mut Problems,
) -> Option<TokenSource> {
    let kinds = [r.header.is_some(), r.cookie.is_some(), r.query.is_some()];
    if kinds.iter().filter(|x| **x).count() != 1 {
        p.push(
            k("header"),
            "a source is exactly one of header, cookie, query",
        );
        return None;
    }
    if r.header.is_none() && (r.scheme.is_some() || r.prefix.is_some()) {
        p.push(
            k("scheme"),
            "scheme and prefix apply to a header source only",
        );
    }
    if let Some(c) = r.cookie {
        if !is_token(&c) {
            p.push(k("cookie"), "not a cookie name (RFC 6265 token characters)");
        }
        return Some(TokenSource::Cookie { cookie: c });
    }
    if let Some(q) = r.query {
        if q.is_empty() || q.contains(['&', '=', '#']) {
            p.push(k("query"), "a query parameter name: non-empty, no & = #");
        }
        return Some(TokenSource::Query { query: q });
    }
    let h = r.header.unwrap_or_default();
    let header = match HeaderName::from_bytes(h.as_bytes()) {
        Ok(n) if n == http::header::COOKIE => {
            p.push(k("header"), "write cookie = \"NAME\" for a cookie source");
            return None;
        }
        Ok(n) if n != http::header::AUTHORIZATION && crate::hop::is_reserved(&n) => {
            p.push(
                k("header"),
                "a hop-by-hop, Host, Content-* or forwarding header cannot carry a token",
            );
            return None;
        }
        Ok(n) => n,
        Err(_) => {
            p.push(k("header"), format!("{h:?} is not a valid header name"));
            return None;
        }
    };
    if r.scheme.is_some() && r.prefix.is_some() {
        p.push(
            k("prefix"),
            "a header source takes scheme or prefix, not both",
        );
    }
    if r.scheme.as_deref().is_some_and(|s| !is_token(s)) {
        p.push(
            k("scheme"),
            "an authentication scheme is one token, such as Bearer",
        );
    }
    if r.prefix.as_deref().is_some_and(str::is_empty) {
        p.push(
            k("prefix"),
            "must not be empty (remove it to take the whole value)",
        );
    }
    Some(TokenSource::Header {
        header,
        scheme: r.scheme,
        prefix: r.prefix,
    })
}

/// `jwtgate check`'s warnings about routes no request can reach: an earlier route takes
/// every method and path a later one would (prefixes and exact paths compared exactly; a
/// regex shadows an exact path it matches; other regex overlaps are not decided).
pub(super) fn shadowed_routes(routes: &[RouteConfig]) -> Vec<String> {
    let mut w = Vec::new();
    for (j, later) in routes.iter().enumerate() {
        let by = routes[..j].iter().position(|earlier| {
            let methods = match (&earlier.methods, &later.methods) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(_), Some(l)) => l.iter().all(|m| earlier.takes_method(m)),
            };
            methods && covers(&earlier.path, &later.path)
        });
        if let Some(i) = by {
            w.push(format!(
                "routes[{j}] ({:?}) is shadowed by routes[{i}] ({:?}): the first match wins, so it never applies",
                later.name, routes[i].name
            ));
        }
    }
    w
}

fn covers(earlier: &PathMatch, later: &PathMatch) -> bool {
    use PathMatch::*;
    match (earlier, later) {
        (PathPrefix(p), PathPrefix(q) | PathExact(q)) => PathMatch::prefix_matches(p, q),
        (PathExact(p), PathExact(q)) => p == q,
        (PathRegex(r), PathExact(q)) => {
            regex::Regex::new(&PathMatch::anchored(r)).is_ok_and(|re| re.is_match(q))
        }
        _ => false,
    }
}

/// A claim header may not be a name jwtgate or the transport owns.
fn reserved_claim_header(
    name: &HeaderName,
    claims_header: &HeaderName,
    sources: &[TokenSource],
) -> bool {
    let n = name.as_str();
    crate::hop::is_reserved(name)
        || n.starts_with("content-")
        || n.starts_with("x-forwarded-")
        || matches!(n, "cookie" | "x-real-ip" | "forwarded")
        || name == claims_header
        || sources
            .iter()
            .any(|s| matches!(s, TokenSource::Header { header, .. } if header == name))
}

pub(super) fn validate_claim_headers(
    raw: Option<toml::Table>,
    claims_header: &HeaderName,
    sources: &[TokenSource],
    p: &mut Problems,
) -> Vec<ClaimHeader> {
    let mut out: Vec<ClaimHeader> = Vec::new();
    for (name, value) in raw.unwrap_or_default() {
        let k = format!("forward.claim_headers.{name}");
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            p.push(k, "not a valid header name");
            continue;
        };
        if header.as_str().contains('_') {
            p.push(
                k,
                "use - instead of _: servers fold both onto one name, so a client could send its own copy",
            );
            continue;
        }
        if reserved_claim_header(&header, claims_header, sources) {
            p.push(
                k,
                "reserved: hop-by-hop, Host, Content-*, Cookie, Authorization, Forwarded, X-Forwarded-*, X-Real-IP, the claims header and token-source headers cannot be claim headers",
            );
            continue;
        }
        if out.iter().any(|h| h.name == header) {
            p.push(k, "named twice (header names are case-insensitive)");
            continue;
        }
        let toml::Value::String(path) = value else {
            p.push(k, "must be a claim path string such as \"sub\"");
            continue;
        };
        match ClaimPath::parse(&path) {
            Ok(claim) => out.push(ClaimHeader {
                name: header,
                claim,
            }),
            Err(m) => p.push(k, m),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_paths() {
        let segs = |t: &str| ClaimPath::parse(t).map(|c| c.segments);
        assert_eq!(segs("sub").unwrap(), ["sub"]);
        assert_eq!(
            segs("realm_access.roles").unwrap(),
            ["realm_access", "roles"]
        );
        assert_eq!(
            segs("[\"https://example.com/ns\"].tenant").unwrap(),
            ["https://example.com/ns", "tenant"]
        );
        assert_eq!(segs("a[\"b.c\"]").unwrap(), ["a", "b.c"]);
        for bad in ["", "a..b", ".a", "a.", "[\"\"]", "[\"x", "a[b]"] {
            assert!(segs(bad).is_err(), "{bad}");
        }
    }

    fn route(name: &str, path: PathMatch, methods: Option<&[&str]>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path,
            methods: methods.map(|ms| ms.iter().map(|m| m.to_string()).collect()),
            auth: AuthMode::Required,
            issuers: vec![],
            issuer_indices: vec![],
            scopes_all: vec![],
            scopes_any: vec![],
            claims: vec![],
            forward_credentials: false,
        }
    }

    #[test]
    fn shadowed_routes_are_found() {
        use PathMatch::*;
        let routes = [
            route("api", PathPrefix("/api".into()), Some(&["GET"])),
            route("api-x", PathExact("/api/x".into()), Some(&["HEAD"])),
            route("api-post", PathPrefix("/api/y".into()), Some(&["POST"])),
            route("apix", PathPrefix("/apix".into()), None),
            route("re", PathRegex("/r/[0-9]+".into()), None),
            route("r1", PathExact("/r/1".into()), None),
        ];
        let w = shadowed_routes(&routes);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("routes[1] (\"api-x\") is shadowed by routes[0]"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("routes[5] (\"r1\") is shadowed by routes[4]"),
            "{w:?}"
        );
    }

    #[test]
    fn segment_aware_prefix() {
        assert!(PathMatch::prefix_matches("/api", "/api"));
        assert!(PathMatch::prefix_matches("/api", "/api/x"));
        assert!(!PathMatch::prefix_matches("/api", "/apix"));
        assert!(PathMatch::prefix_matches("/", "/anything"));
    }
}
