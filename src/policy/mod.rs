//! Route policy (DESIGN §8): which path needs what, where a token comes from, what the
//! upstream learns of it. Knows nothing of the HTTP server: it takes paths, methods,
//! header maps and verdicts.
//!
//! - [`Policy::normalize`] puts the path in canonical form or refuses it (`bad_path`);
//! - [`Policy::route`] picks the first matching route (or the default);
//! - [`sources`] reads the one token of a request and strips credentials;
//! - [`Policy::requirements`] checks a verified token against the route (`issuers`,
//!   scopes, claims), reading only what [`claims::Selector`] selected when the token was
//!   first seen.

pub mod claims;
pub mod sources;

use http::HeaderMap;
use http::header::{self, HeaderName};

use crate::auth::Verified;
use crate::config::{AuthMode, Config, CorsPreflight, PathMatch, TokenSource};
use crate::metrics::Metrics;
use crate::path::{self, Normalized};
use crate::reject::{Reason, Reject};

/// The route a request was decided under; also the `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    /// A configured route, by index.
    Configured(usize),
    /// No route matched: `policy.default_auth`.
    Default,
    /// A CORS preflight forwarded without a token (`cors_preflight = "forward"`).
    Preflight,
    /// Refused before a route was chosen.
    None,
}

/// A configured route, compiled.
struct Route {
    name: String,
    matcher: Matcher,
    methods: Option<Vec<String>>,
    auth: AuthMode,
    issuers: Vec<usize>,
    scopes_all: Vec<String>,
    scopes_any: Vec<String>,
    /// Claim rules by selector slot.
    claims: Vec<(usize, Vec<serde_json::Value>)>,
    forward_credentials: bool,
    /// The 403 challenge's `scope` attribute: `scopes_all` then `scopes_any`.
    challenge_scope: String,
}

enum Matcher {
    Prefix(String),
    Exact(String),
    /// Index into the policy's regex set.
    Regex(usize),
}

pub struct Policy {
    routes: Vec<Route>,
    /// Every `path_regex`, in route order: one pass decides them all.
    regexes: regex::RegexSet,
    default_auth: AuthMode,
    preflight: CorsPreflight,
    allowed_origins: Vec<String>,
    allow_semicolons: bool,
    sources: Vec<TokenSource>,
    query_source: bool,
    selector: claims::Selector,
}

impl Policy {
    /// Compiles the routes of a validated config, registering its metric family.
    pub fn new(config: &Config, metrics: &Metrics) -> Policy {
        Policy::with_family(config, &claims::Selector::register_family(metrics))
    }

    /// Compiles the routes of a validated config; `unset` is
    /// `jwtgate_claim_headers_unset_total` (every generation counts into the same family).
    pub fn with_family(config: &Config, unset: &prometheus::IntCounterVec) -> Policy {
        let mut selector = claims::Selector::new(false, &config.forward.claim_headers, unset);
        let mut patterns = Vec::new();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                if !r.scopes_all.is_empty() || !r.scopes_any.is_empty() {
                    selector.set_wants_scopes();
                }
                let matcher = match &r.path {
                    PathMatch::PathPrefix(p) => Matcher::Prefix(p.clone()),
                    PathMatch::PathExact(p) => Matcher::Exact(p.clone()),
                    PathMatch::PathRegex(re) => {
                        patterns.push(PathMatch::anchored(re));
                        Matcher::Regex(patterns.len() - 1)
                    }
                };
                let mut scope = r.scopes_all.clone();
                scope.extend(r.scopes_any.iter().cloned());
                Route {
                    name: r.name.clone(),
                    matcher,
                    methods: r.methods.clone(),
                    auth: r.auth,
                    issuers: r.issuer_indices.clone(),
                    scopes_all: r.scopes_all.clone(),
                    scopes_any: r.scopes_any.clone(),
                    claims: r
                        .claims
                        .iter()
                        .map(|c| (selector.slot(&c.path), c.values.clone()))
                        .collect(),
                    forward_credentials: r.forward_credentials,
                    challenge_scope: scope.join(" "),
                }
            })
            .collect();
        Policy {
            routes,
            // Validation compiled each pattern already.
            regexes: regex::RegexSet::new(&patterns).unwrap_or_else(|_| regex::RegexSet::empty()),
            default_auth: config.policy.default_auth,
            preflight: config.policy.cors_preflight,
            allowed_origins: config.policy.allowed_origins.clone(),
            allow_semicolons: config.policy.allow_path_semicolons,
            query_source: sources::has_query_source(&config.token.sources),
            sources: config.token.sources.clone(),
            selector,
        }
    }

    /// The `route` label values, by [`Policy::label_index`]: route names, then `default`,
    /// `preflight`, `none`.
    pub fn labels(&self) -> Vec<String> {
        let mut out: Vec<String> = self.routes.iter().map(|r| r.name.clone()).collect();
        out.extend(["default", "preflight", "none"].map(String::from));
        out
    }

    pub fn label_index(&self, id: RouteId) -> usize {
        let n = self.routes.len();
        match id {
            RouteId::Configured(i) => i,
            RouteId::Default => n,
            RouteId::Preflight => n + 1,
            RouteId::None => n + 2,
        }
    }

    /// The route's name as `jwtgate inspect` and logs show it.
    pub fn name(&self, id: RouteId) -> &str {
        match id {
            RouteId::Configured(i) => &self.routes[i].name,
            RouteId::Default => "default",
            RouteId::Preflight => "preflight",
            RouteId::None => "none",
        }
    }

    /// Step one: the path in canonical form, or a 400 `bad_path`.
    pub fn normalize<'a>(&self, raw: &'a str) -> Result<Normalized<'a>, Reject> {
        path::normalize(raw, self.allow_semicolons).map_err(|e| Reject::new(Reason::BadPath, e.0))
    }

    /// The first route whose path and method match, else the default.
    pub fn route(&self, method: &str, path: &str) -> RouteId {
        let mut regex_hits: Option<regex::SetMatches> = None;
        for (i, r) in self.routes.iter().enumerate() {
            // The method first: a string compare or two, before any path work.
            if !crate::config::methods_take(r.methods.as_deref(), method) {
                continue;
            }
            let path_ok = match &r.matcher {
                Matcher::Prefix(p) => PathMatch::prefix_matches(p, path),
                Matcher::Exact(p) => p == path,
                Matcher::Regex(k) => regex_hits
                    .get_or_insert_with(|| self.regexes.matches(path))
                    .matched(*k),
            };
            if path_ok {
                return RouteId::Configured(i);
            }
        }
        RouteId::Default
    }

    /// What the route needs: `required`, `optional` or `public`.
    pub fn auth(&self, id: RouteId) -> AuthMode {
        match id {
            RouteId::Configured(i) => self.routes[i].auth,
            RouteId::Default => self.default_auth,
            RouteId::Preflight | RouteId::None => AuthMode::Public,
        }
    }

    /// A public route that forwards whatever credentials came (`forward_credentials`).
    pub fn forwards_credentials(&self, id: RouteId) -> bool {
        matches!(id, RouteId::Configured(i) if self.routes[i].forward_credentials)
    }

    pub fn sources(&self) -> &[TokenSource] {
        &self.sources
    }

    pub fn selector(&self) -> &claims::Selector {
        &self.selector
    }

    /// A `query` source is configured: the forwarded URI loses its parameter.
    pub fn has_query_source(&self) -> bool {
        self.query_source
    }

    /// The 403 challenge's `scope` attribute for a route.
    pub fn challenge_scope(&self, id: RouteId) -> Option<&str> {
        match id {
            RouteId::Configured(i) if !self.routes[i].challenge_scope.is_empty() => {
                Some(&self.routes[i].challenge_scope)
            }
            _ => None,
        }
    }

    /// A CORS preflight to forward without a token (`cors_preflight = "forward"`): an
    /// `OPTIONS` with `Origin` and a valid `Access-Control-Request-Method`, no body
    /// (`no_body`) and no value in any token source (checked by the caller).
    pub fn is_preflight(&self, method: &http::Method, headers: &HeaderMap, no_body: bool) -> bool {
        self.preflight == CorsPreflight::Forward
            && method == http::Method::OPTIONS
            && no_body
            && headers.contains_key(header::ORIGIN)
            && headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|m| {
                    !m.is_empty()
                        && m.len() <= 32
                        && m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
                })
    }

    /// A cookie token on a method other than GET/HEAD/OPTIONS, or on an upgrade, needs
    /// `Origin` (else `Referer`) in `allowed_origins`: a browser sends the cookie on a
    /// cross-site form post too.
    pub fn csrf(
        &self,
        source: usize,
        method: &http::Method,
        headers: &HeaderMap,
        upgrade: bool,
    ) -> Result<(), Reject> {
        let cookie = matches!(self.sources.get(source), Some(TokenSource::Cookie { .. }));
        // A WebSocket handshake is a GET, but a cross-site page can open one with the
        // user's cookie (cross-site WebSocket hijacking): it needs an allowed origin too.
        let safe = !upgrade
            && matches!(
                *method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            );
        if !cookie || safe {
            return Ok(());
        }
        let origin = match headers.get(header::ORIGIN) {
            Some(o) => o.to_str().ok().map(str::to_ascii_lowercase),
            None => headers
                .get(header::REFERER)
                .and_then(|r| r.to_str().ok())
                .and_then(|r| r.parse::<http::Uri>().ok())
                .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
                .map(|o| o.to_ascii_lowercase()),
        };
        match origin {
            Some(o) if self.allowed_origins.contains(&o) => Ok(()),
            _ => Err(Reject::new(
                Reason::Csrf,
                "a cookie token on an unsafe method needs an allowed Origin",
            )),
        }
    }

    /// The route's requirements on a verified token: its issuer, then scopes, then claims.
    pub fn requirements(&self, id: RouteId, v: &Verified) -> Result<(), Reject> {
        let RouteId::Configured(i) = id else {
            return Ok(());
        };
        let r = &self.routes[i];
        if !r.issuers.is_empty() && !r.issuers.contains(&v.issuer) {
            return Err(Reject::new(
                Reason::ClaimMismatch,
                "the route does not accept tokens of this issuer",
            ));
        }
        let empty = crate::auth::Selected::default();
        let selected = v.selected.as_deref().unwrap_or(&empty);
        let has = |s: &String| selected.scopes.iter().any(|t| **t == **s);
        if !r.scopes_all.iter().all(has)
            || (!r.scopes_any.is_empty() && !r.scopes_any.iter().any(has))
        {
            return Err(Reject::new(
                Reason::InsufficientScope,
                "the token lacks a scope the route requires",
            ));
        }
        for (slot, wanted) in &r.claims {
            let claim = selected.claims.get(*slot).and_then(Option::as_ref);
            if !claims::claim_matches(claim, wanted) {
                return Err(Reject::new(
                    Reason::ClaimMismatch,
                    "a claim does not hold a value the route requires",
                ));
            }
        }
        Ok(())
    }

    /// Every header name jwtgate sets from a token, besides the claims header.
    pub fn claim_header_names(&self) -> Vec<HeaderName> {
        self.selector.header_names().cloned().collect()
    }
}
