//! Typed configuration: TOML in, a validated [`Config`] out.
//!
//! Invariants a [`Config`] holds once built:
//! - every key in the file was known (unknown keys are errors);
//! - every `${NAME}` inside a string was replaced from the environment, and an unset
//!   variable was reported against the key that used it (never with its value);
//! - cross-field rules (unique issuer names, audiences or an explicit opt-out, one key
//!   source per issuer, parseable addresses and URLs) passed.
//!
//! Every problem is collected, so `jwtgate check` prints all of them at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::jose::{Algorithm, normalize_typ};

mod env;
mod fleet;
mod policy;
mod raw;
mod validate;

use env::expand_env;
use http::header::HeaderName;
use raw::*;
use serde::Serialize;
use validate::*;

pub use fleet::{DEFAULT_STREAM, RelayConfig, StreamConfig};
pub use policy::{
    AuthMode, ClaimHeader, ClaimPath, ClaimRule, CorsPreflight, PathMatch, PolicyConfig,
    RouteConfig, TokenConfig, TokenSource, methods_take,
};

/// One problem in the config, named by the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            message: message.into(),
        }])
    }
}

/// Claim names and revocation formats an issuer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Generic,
    Wso2,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    JwksUri(#[serde(serialize_with = "ser_display")] reqwest::Url),
    DiscoveryUrl(#[serde(serialize_with = "ser_display")] reqwest::Url),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub issuers: Vec<IssuerConfig>,
    pub jwks: JwksConfig,
    pub cache: CacheConfig,
    pub limits: LimitsConfig,
    pub forward: ForwardConfig,
    /// `None` when the file has no `[revocation]` section: revocation is off.
    pub revocation: Option<RevocationConfig>,
    pub policy: PolicyConfig,
    /// In match order: the first route that matches decides.
    pub routes: Vec<RouteConfig>,
    pub token: TokenConfig,
    pub access_log: AccessLogConfig,
    /// `None` without `tracing.otlp_endpoint`: no spans, no `traceparent` rewriting.
    pub tracing: Option<TracingConfig>,
}

/// `[access_log]` (DESIGN §11): one JSON line per request on stdout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// `sub` in clear; otherwise only `sub_fp`, an HMAC of it.
    pub include_subject: bool,
    /// The HMAC key for `sub_fp`; `None`: a random key per process.
    pub subject_key: Option<Secret>,
    /// Only rejected requests get a line.
    pub rejected_only: bool,
}

/// `[tracing]` (DESIGN §11): a server span per request, exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    /// Where spans are POSTed: the base URL with `/v1/traces` appended.
    #[serde(serialize_with = "ser_display")]
    pub traces_url: reqwest::Url,
    /// For a request without a trusted parent: the share of new traces sampled.
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// HTTPS on the admin listener: certificate and key PEM files (both or neither),
    /// re-read when they change.
    pub admin_tls_cert: Option<std::path::PathBuf>,
    pub admin_tls_key: Option<std::path::PathBuf>,
    #[serde(serialize_with = "ser_secs")]
    pub shutdown_delay: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub drain_timeout: Duration,
    /// Peers whose `Forwarded` / `X-Forwarded-*` / `X-Real-IP` are kept (DESIGN §6).
    pub trusted_proxies: Vec<Cidr>,
}

/// An IP network, `ADDR/PREFIX` (a bare address is a /32 or /128). IPv4-mapped IPv6 peers
/// are matched as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How requests go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 keep-alive connections (the default).
    Http1,
    /// HTTP/2 with prior knowledge (gRPC services), DESIGN §11.
    H2c,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamConfig {
    pub protocol: UpstreamProtocol,
    /// `http://host:port`, no path: the request's own path and query are appended.
    #[serde(serialize_with = "ser_display")]
    pub url: http::Uri,
    #[serde(serialize_with = "ser_millis")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_millis")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuerConfig {
    pub name: String,
    pub issuer: String,
    pub keys: KeySource,
    pub ca_file: Option<PathBuf>,
    pub audiences: Vec<String>,
    pub skip_audience_check: bool,
    pub algorithms: Vec<Algorithm>,
    pub leeway_s: u64,
    /// Normalised: lowercase, `application/` prefix removed.
    pub typ: Vec<String>,
    pub profile: Profile,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwksConfig {
    #[serde(serialize_with = "ser_secs")]
    pub refresh_interval: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub min_refetch_interval: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub max_stale: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheConfig {
    pub max_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitsConfig {
    pub max_token_bytes: usize,
    pub max_header_bytes: usize,
    #[serde(serialize_with = "ser_millis")]
    pub header_read_timeout: Duration,
    /// An idle keep-alive or HTTP/2 connection is closed after this.
    #[serde(serialize_with = "ser_millis")]
    pub idle_timeout: Duration,
    /// Connections served at once on the proxy listener; more wait in the accept queue.
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardConfig {
    #[serde(serialize_with = "ser_display")]
    pub claims_header: HeaderName,
    pub strip_authorization: bool,
    /// Upstream header ← claim, in config order.
    #[serde(serialize_with = "policy::ser_claim_headers")]
    pub claim_headers: Vec<ClaimHeader>,
}

/// A secret string: never printed, never in `Debug`, redacted by `jwtgate check`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    Jwtgate,
    Wso2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    Reject,
    Allow,
}

/// A poll source of revocation records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedConfig {
    #[serde(serialize_with = "ser_display")]
    pub url: reqwest::Url,
    pub format: FeedFormat,
    /// Basic auth (required for `wso2`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    #[serde(serialize_with = "ser_secs")]
    pub poll_interval: Duration,
}

/// Basic-auth credentials of the WSO2 key manager's notify events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotifyConfig {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevocationConfig {
    pub feed: Option<FeedConfig>,
    pub snapshot_path: Option<PathBuf>,
    pub push_token: Option<Secret>,
    pub notify: Option<NotifyConfig>,
    pub max_token_lifetime_s: u64,
    #[serde(serialize_with = "ser_secs")]
    pub max_sync_age: Duration,
    pub on_stale: OnStale,
    pub require_jti: bool,
    /// `[revocation.stream]`: follow the fleet stream (DESIGN §10) instead of a feed.
    pub stream: Option<StreamConfig>,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}
fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}
pub(crate) fn ser_display<T: fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

// ---------------------------------------------------------------------------------------
const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "issuers",
    "jwks",
    "cache",
    "limits",
    "forward",
    "revocation",
    "policy",
    "routes",
    "token",
    "access_log",
    "tracing",
];

/// Collects problems while the config is being read.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Reads a config file; `env` resolves `${NAME}` (tests pass a closure, `main` passes
    /// `std::env::var`).
    pub fn load(
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Config::from_toml_str(&text, env)
    }

    /// Reads a config file with command-line overrides (`--listen`, `--upstream`, …)
    /// written into the text before validation, so each is checked and reported under its
    /// key like the file's own value. A reload reads the file the same way.
    pub fn load_with_overrides(
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &[(&str, &str, String)],
    ) -> Result<Config, ConfigErrors> {
        let mut text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        for (section, key, value) in overrides {
            text = override_key(&text, section, key, value);
        }
        Config::from_toml_str(&text, env)
    }

    /// Parses and validates a config, returning every problem at once.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors::one("(file)", syntax_message(&e)))?;
        let mut p = Problems::default();

        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                p.push(
                    key.clone(),
                    format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
                );
            }
        }
        for (key, value) in root.iter_mut() {
            expand_env(key, value, env, &mut p);
        }

        let server: RawServer = section(&root, "server", &mut p);
        let upstream: RawUpstream = section(&root, "upstream", &mut p);
        let jwks: RawJwks = section(&root, "jwks", &mut p);
        let cache: RawCache = section(&root, "cache", &mut p);
        let limits: RawLimits = section(&root, "limits", &mut p);
        let mut forward: RawForward = section(&root, "forward", &mut p);
        let raw_policy: RawPolicy = section(&root, "policy", &mut p);
        let token: RawToken = section(&root, "token", &mut p);
        let access_log: RawAccessLog = section(&root, "access_log", &mut p);
        let tracing: RawTracing = section(&root, "tracing", &mut p);
        let revocation: Option<RawRevocation> = root
            .contains_key("revocation")
            .then(|| section(&root, "revocation", &mut p));
        let issuers: Vec<RawIssuer> = tables(&root, "issuers", &mut p);
        let routes: Vec<RawRoute> = tables(&root, "routes", &mut p);
        let claim_headers = forward.claim_headers.take();

        let config = Config {
            server: validate_server(server, &mut p),
            upstream: validate_upstream(upstream, &mut p),
            issuers: validate_issuers(issuers, &mut p),
            jwks: validate_jwks(jwks, &mut p),
            cache: CacheConfig {
                max_entries: cache.max_entries.unwrap_or(100_000),
            },
            limits: validate_limits(limits, &mut p),
            forward: validate_forward(forward, &mut p),
            revocation: revocation.map(|r| validate_revocation(r, &mut p)),
            policy: policy::validate_policy(raw_policy, &mut p),
            routes: Vec::new(),
            token: TokenConfig {
                sources: policy::validate_sources(token.sources, &mut p),
            },
            access_log: validate_access_log(access_log, &mut p),
            tracing: validate_tracing(tracing, &mut p),
        };
        let mut config = config;
        config.routes = policy::validate_routes(routes, &config.issuers, &mut p);
        config.forward.claim_headers = policy::validate_claim_headers(
            claim_headers,
            &config.forward.claims_header,
            &config.token.sources,
            &mut p,
        );
        config.cross_checks(&mut p);
        if p.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(p.0))
        }
    }

    /// Rules between sections.
    fn cross_checks(&self, p: &mut Problems) {
        let config = self;
        if let Some(r) = &config.revocation {
            if r.notify.is_some() && !config.issuers.iter().any(|i| i.profile == Profile::Wso2) {
                p.push(
                    "revocation.notify_username",
                    "WSO2 notify events apply to profile = \"wso2\" issuers only, and none is configured",
                );
            }
            if r.feed
                .as_ref()
                .is_some_and(|f| f.format == FeedFormat::Wso2)
                && !config.issuers.iter().any(|i| i.profile == Profile::Wso2)
            {
                p.push(
                    "revocation.feed_format",
                    "WSO2 records apply to profile = \"wso2\" issuers only, and none is configured",
                );
            }
        }
    }

    /// The one place for checks that depend on the host jwtgate runs on rather than on
    /// the file: CA files readable and holding a PEM certificate, the snapshot directory
    /// present. `serve` runs them before binding anything (exit 64, every problem named by
    /// its key); `check` does not, so a config can be checked away from the pod.
    pub fn check_host(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems(Vec::new());
        for (i, issuer) in self.issuers.iter().enumerate() {
            if let Some(path) = &issuer.ca_file {
                check_ca_file(&format!("issuers[{i}].ca_file"), path, &mut p);
            }
        }
        if let Some(r) = &self.revocation {
            if let Some(path) = r.feed.as_ref().and_then(|f| f.ca_file.as_ref()) {
                check_ca_file("revocation.ca_file", path, &mut p);
            }
            if let Some(path) = &r.snapshot_path {
                check_snapshot_dir(path, &mut p);
            }
            if let Some(s) = &r.stream {
                fleet::check_stream_files(s, "revocation.stream", &mut p);
            }
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(p.0))
        }
    }

    /// The largest `leeway_s` of any issuer: revocation pruning and records from the
    /// future allow this much clock skew.
    pub fn max_leeway_s(&self) -> i64 {
        self.issuers
            .iter()
            .map(|i| i.leeway_s as i64)
            .max()
            .unwrap_or(0)
    }

    /// Issuers that opted out of the audience check: `serve` warns about each at start.
    pub fn issuers_without_audience_check(&self) -> impl Iterator<Item = &IssuerConfig> {
        self.issuers.iter().filter(|i| i.skip_audience_check)
    }

    /// What is valid but risky, one line each: `check` prints them, `serve` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .issuers_without_audience_check()
            .map(|i| {
                format!(
                    "issuers.{}: skip_audience_check = true: tokens for any audience of this issuer are accepted",
                    i.name
                )
            })
            .collect();
        if let Some(r) = &self.revocation
            && r.feed.is_none()
            && r.stream.is_none()
        {
            w.push(
                "revocation.feed_url: not set (push-only): a pod never learns revocations made \
                 before it started unless its snapshot holds them"
                    .to_owned(),
            );
        }
        if self.policy.default_auth != AuthMode::Required {
            w.push(format!(
                "policy.default_auth = \"{}\": every path no route matches is open; a deny-list of \
                 protected paths is easy to miss (/Admin, /admin/, a new endpoint)",
                self.policy.default_auth.label()
            ));
        }
        w.extend(policy::shadowed_routes(&self.routes));
        w
    }

    /// The routes in match order, one line each, for `jwtgate check` (TOML comments, so
    /// the output stays a valid config).
    pub fn route_summary(&self) -> String {
        let mut out = format!(
            "# routes, in match order (the first match wins; no match: default_auth = \"{}\")\n",
            self.policy.default_auth.label()
        );
        for (i, r) in self.routes.iter().enumerate() {
            let (kind, path) = match &r.path {
                PathMatch::PathPrefix(p) => ("prefix", p),
                PathMatch::PathExact(p) => ("exact", p),
                PathMatch::PathRegex(p) => ("regex", p),
            };
            let methods = r.methods.as_ref().map_or("any method".to_owned(), |ms| {
                let mut ms = ms.clone();
                if ms.iter().any(|m| m == "GET") && !ms.iter().any(|m| m == "HEAD") {
                    ms.push("HEAD".into());
                }
                ms.join(",")
            });
            let mut needs = Vec::new();
            if !r.issuers.is_empty() {
                needs.push(format!("issuers {}", r.issuers.join(",")));
            }
            if !r.scopes_all.is_empty() {
                needs.push(format!("all of {}", r.scopes_all.join(" ")));
            }
            if !r.scopes_any.is_empty() {
                needs.push(format!("any of {}", r.scopes_any.join(" ")));
            }
            for c in &r.claims {
                needs.push(format!("claim {}", c.path));
            }
            out.push_str(&format!(
                "#   {}. {} {kind} {path} {methods} {}{}\n",
                i + 1,
                r.name,
                r.auth.label(),
                if needs.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", needs.join("; "))
                }
            ));
        }
        out
    }

    /// The effective config as TOML, for `jwtgate check`; secrets print as `<redacted>`.
    pub fn to_effective_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Sets `[section] key = value` in a config text (command-line overrides such as
/// `--upstream`), before validation so the value is checked like any other. A text that does
/// not parse is returned unchanged: the load reports the syntax error.
pub fn override_key(text: &str, section: &str, key: &str, value: &str) -> String {
    let Ok(mut root) = text.parse::<toml::Table>() else {
        return text.to_owned();
    };
    let table = root
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = table {
        t.insert(key.to_owned(), toml::Value::String(value.to_owned()));
    }
    root.to_string()
}

fn syntax_message(e: &toml::de::Error) -> String {
    // toml's message already carries line and column; keep it on one line.
    e.to_string().lines().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cidrs_match_their_networks_and_mapped_ipv4() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    use super::*;

    const MINIMAL: &str = r#"
[upstream]
url = "http://127.0.0.1:8081"

[[issuers]]
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "https://km.example.com/oauth2/jwks"
audiences = ["api://orders"]
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn keys_of(err: ConfigErrors) -> Vec<String> {
        err.0.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn host_checks_run_apart_from_validation_and_name_every_key() {
        let dir = std::env::temp_dir().join(format!("jwtgate-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, b"hello").unwrap();
        let text = format!(
            "{MINIMAL}ca_file = \"{}\"\n[revocation]\nfeed_url = \"http://km/rev\"\nca_file = \"/nonexistent/ca.pem\"\nsnapshot_path = \"/nonexistent-dir/s\"\n",
            not_pem.display()
        );
        // The file is valid wherever it is checked ...
        let c = Config::from_toml_str(&text, &no_env).unwrap();
        // ... the host it runs on is checked by `serve`, every problem at once.
        let keys = keys_of(c.check_host().unwrap_err());
        assert_eq!(
            keys,
            [
                "issuers[0].ca_file",
                "revocation.ca_file",
                "revocation.snapshot_path"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            Config::from_toml_str(MINIMAL, &no_env)
                .unwrap()
                .check_host()
                .is_ok()
        );
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(MINIMAL, &no_env).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.server.admin_listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.issuers[0].name, "km.example.com");
        assert_eq!(c.issuers[0].algorithms, vec![Algorithm::RS256]);
        assert_eq!(c.issuers[0].typ, vec!["at+jwt", "jwt"]);
        assert_eq!(c.limits.max_token_bytes, 8192);
        assert_eq!(c.cache.max_entries, 100_000);
        assert_eq!(c.forward.claims_header.as_str(), "x-jwt-payload");
    }

    #[test]
    fn admin_tls_needs_both_files_and_names_the_missing_one() {
        for (line, missing) in [
            ("admin_tls_cert = \"/tls/tls.crt\"", "server.admin_tls_key"),
            ("admin_tls_key = \"/tls/tls.key\"", "server.admin_tls_cert"),
        ] {
            let text = format!("[server]\n{line}\n{MINIMAL}");
            let keys = keys_of(Config::from_toml_str(&text, &no_env).unwrap_err());
            assert_eq!(keys, [missing.to_owned()], "{line}");
        }
        let both = format!(
            "[server]\nadmin_tls_cert = \"/tls/tls.crt\"\nadmin_tls_key = \"/tls/tls.key\"\n{MINIMAL}"
        );
        let c = Config::from_toml_str(&both, &no_env).unwrap();
        assert_eq!(
            c.server.admin_tls_key.as_deref(),
            Some(std::path::Path::new("/tls/tls.key"))
        );
        assert!(
            c.to_effective_toml()
                .contains("admin_tls_cert = \"/tls/tls.crt\"")
        );
    }

    #[test]
    fn unknown_keys_and_sections_are_named() {
        let text = format!("{MINIMAL}\n[server]\nlisten_addr = \"x\"\n[extra]\na = 1\n");
        let keys = keys_of(Config::from_toml_str(&text, &no_env).unwrap_err());
        assert!(keys.contains(&"extra".to_owned()), "{keys:?}");
        assert!(keys.iter().any(|k| k.starts_with("server")), "{keys:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[server]
listen = "nope"
[upstream]
url = "http://127.0.0.1:8081/base"
connect_timeout_ms = "fast"
[[issuers]]
name = "a"
issuer = "https://a"
jwks_uri = "https://a/jwks"
[[issuers]]
name = "a"
issuer = "https://b"
jwks_uri = "https://b/jwks"
audiences = ["x"]
algorithms = ["HS256", "none"]
"#;
        let keys = keys_of(Config::from_toml_str(text, &no_env).unwrap_err());
        for expected in [
            "server.listen",
            "upstream.connect_timeout_ms",
            "upstream.url",
            "issuers[0].audiences",
            "issuers[1].name",
            "issuers[1].algorithms",
        ] {
            assert!(keys.iter().any(|k| k == expected), "{expected} in {keys:?}");
        }
    }

    #[test]
    fn env_expansion_and_unset_variable_names_the_key() {
        let text = MINIMAL.replace("api://orders", "${AUD}-${AUD2}");
        let env = |n: &str| (n == "AUD").then(|| "api://x".to_owned());
        let err = Config::from_toml_str(&text, &env).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "issuers[0].audiences[0]");
        assert!(err.0[0].message.contains("AUD2 is not set"));

        let env = |n: &str| Some(format!("v-{n}"));
        let c = Config::from_toml_str(&text, &env).unwrap();
        assert_eq!(c.issuers[0].audiences, vec!["v-AUD-v-AUD2"]);
    }

    #[test]
    fn skip_audience_check_allows_no_audiences() {
        let text = MINIMAL.replace(
            "audiences = [\"api://orders\"]",
            "skip_audience_check = true",
        );
        let c = Config::from_toml_str(&text, &no_env).unwrap();
        assert_eq!(c.issuers_without_audience_check().count(), 1);
    }

    #[test]
    fn access_log_and_tracing_are_validated_and_the_subject_key_redacted() {
        let bad = format!(
            "{MINIMAL}\n[access_log]\nsubject_key = \"short-key\"\nrejected_only = true\n\
             [tracing]\notlp_endpoint = \"collector:4318\"\nsample_ratio = 1.5\n"
        );
        let err = Config::from_toml_str(&bad, &|_| None).unwrap_err();
        let keys = keys_of(err.clone());
        for key in [
            "access_log.subject_key",
            "access_log.rejected_only",
            "tracing.otlp_endpoint",
            "tracing.sample_ratio",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key} not in {keys:?}");
        }
        assert!(!err.to_string().contains("short-key"), "{err}");
        let full = format!("{MINIMAL}\n[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\n");
        let keys = keys_of(Config::from_toml_str(&full, &|_| None).unwrap_err());
        assert_eq!(keys, ["tracing.otlp_endpoint"]);
        let ratio_alone = format!("{MINIMAL}\n[tracing]\nsample_ratio = 0.5\n");
        let keys = keys_of(Config::from_toml_str(&ratio_alone, &|_| None).unwrap_err());
        assert_eq!(keys, ["tracing.sample_ratio"]);

        let good = format!(
            "{MINIMAL}\n[access_log]\nenabled = true\nsubject_key = \"${{LOG_KEY}}\"\n\
             [tracing]\notlp_endpoint = \"http://collector.obs:4318/otlp/\"\n"
        );
        let env = |_: &str| Some("0123456789abcdef-log-key".to_owned());
        let c = Config::from_toml_str(&good, &env).unwrap();
        assert!(c.access_log.enabled && !c.access_log.include_subject);
        let t = c.tracing.as_ref().unwrap();
        assert_eq!(
            t.traces_url.as_str(),
            "http://collector.obs:4318/otlp/v1/traces"
        );
        assert_eq!(t.sample_ratio, 0.01);
        let shown = c.to_effective_toml();
        assert!(!shown.contains("0123456789abcdef-log-key"), "{shown}");
        assert!(!format!("{c:?}").contains("0123456789abcdef-log-key"));
        assert!(
            Config::from_toml_str(MINIMAL, &|_| None)
                .unwrap()
                .tracing
                .is_none()
        );
    }

    #[test]
    fn revocation_section_is_validated_and_secrets_are_redacted() {
        let text = format!(
            "{MINIMAL}\n[revocation]\nfeed_url = \"http://km/revocations\"\npush_token = \"${{TOKEN}}\"\nnotify_username = \"km\"\n"
        );
        let env = |_: &str| Some("short".to_owned());
        let err = Config::from_toml_str(&text, &env).unwrap_err();
        let keys = keys_of(err.clone());
        assert!(
            keys.contains(&"revocation.push_token".to_owned()),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"revocation.notify_password".to_owned()),
            "{keys:?}"
        );
        assert!(
            !err.to_string().contains("short"),
            "a secret value leaked: {err}"
        );

        let text = format!(
            "{MINIMAL}\n[revocation]\nfeed_url = \"http://km/revocations\"\npush_token = \"${{TOKEN}}\"\n"
        );
        let env = |_: &str| Some("0123456789abcdef-secret".to_owned());
        let c = Config::from_toml_str(&text, &env).unwrap();
        let r = c.revocation.as_ref().unwrap();
        assert_eq!(
            r.push_token.as_ref().unwrap().expose(),
            "0123456789abcdef-secret"
        );
        assert_eq!(r.on_stale, OnStale::Reject);
        assert!(r.require_jti);
        let shown = c.to_effective_toml();
        assert!(!shown.contains("0123456789abcdef-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("0123456789abcdef-secret"));
    }

    #[test]
    fn the_fleet_stream_replaces_the_feed_and_names_every_mistake() {
        let text = format!(
            "{MINIMAL}\n[revocation]\nfeed_url = \"http://km/revocations\"\nmax_sync_age_s = 3\n[revocation.stream]\nurls = [\"http://nats:4222\"]\nname = \"has.dot\"\ntoken = \"${{T}}\"\ncreds_file = \"/c\"\nbogus = 1\n"
        );
        let err = Config::from_toml_str(&text, &|_| Some("sekrit-token".into())).unwrap_err();
        let keys = keys_of(err.clone());
        assert!(
            keys.contains(&"revocation.stream.bogus".to_owned()),
            "{keys:?}"
        );
        let text = format!(
            "{MINIMAL}\n[revocation]\nfeed_url = \"http://km/revocations\"\nmax_sync_age_s = 3\n[revocation.stream]\nurls = [\"http://nats:4222\"]\nname = \"has.dot\"\ntoken = \"${{T}}\"\ncreds_file = \"/c\"\n"
        );
        let err = Config::from_toml_str(&text, &|_| Some("sekrit-token".into())).unwrap_err();
        let keys = keys_of(err.clone());
        for key in [
            "revocation.feed_url",
            "revocation.max_sync_age_s",
            "revocation.stream.urls[0]",
            "revocation.stream.name",
            "revocation.stream.token",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key} missing: {keys:?}");
        }
        assert!(!err.to_string().contains("sekrit-token"));

        let text = format!(
            "{MINIMAL}\n[revocation]\n[revocation.stream]\nurls = [\"nats://a:4222\", \"tls://b:4222\"]\ntoken = \"${{T}}\"\n"
        );
        let c = Config::from_toml_str(&text, &|_| Some("sekrit-token".into())).unwrap();
        let s = c.revocation.as_ref().unwrap().stream.as_ref().unwrap();
        assert_eq!(s.name, "JWTGATE_REV");
        assert_eq!(s.urls.len(), 2);
        assert!(!c.to_effective_toml().contains("sekrit-token"));
        assert!(
            !c.warnings().iter().any(|w| w.contains("push-only")),
            "a follower is not push-only"
        );
    }

    #[test]
    fn wso2_feed_needs_credentials_and_a_wso2_issuer() {
        let text = format!(
            "{MINIMAL}\n[revocation]\nfeed_url = \"https://cp:9443/internal/data/v1/revokedjwt\"\nfeed_format = \"wso2\"\n"
        );
        let keys = keys_of(Config::from_toml_str(&text, &no_env).unwrap_err());
        assert!(
            keys.contains(&"revocation.feed_username".to_owned()),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"revocation.feed_format".to_owned()),
            "{keys:?}"
        );
    }

    #[test]
    fn typ_is_normalised() {
        assert_eq!(normalize_typ("application/AT+JWT"), "at+jwt");
        assert_eq!(normalize_typ("JWT"), "jwt");
    }

    #[test]
    fn algorithm_names_are_case_sensitive() {
        assert_eq!(Algorithm::from_name("RS256"), Some(Algorithm::RS256));
        assert_eq!(Algorithm::from_name("rs256"), None);
        assert_eq!(Algorithm::from_name("none"), None);
        assert_eq!(Algorithm::from_name("HS256"), None);
    }

    #[test]
    fn route_policy_mistakes_name_their_keys() {
        let text = format!(
            r#"{MINIMAL}
[forward.claim_headers]
"x-user" = "sub"
"x-forwarded-user" = "sub"
"authorization" = "sub"
"x-bad" = "a..b"
"x_user" = "sub"

[[token.sources]]
header = "authorization"
scheme = "Bearer"
[[token.sources]]
cookie = "at"
[[token.sources]]
cookie = "at"
[[token.sources]]

[[routes]]
name = "two"
path_prefix = "/a"
path_exact = "/b"

[[routes]]
name = "none"

[[routes]]
name = "re"
path_regex = "(unclosed"

[[routes]]
name = "re"
path_prefix = "/a/../b"
issuers = ["nope"]
scopes_all = []
claims = {{ "realm..roles" = "x" }}

[[routes]]
name = "pub"
path_exact = "/p"
auth = "public"
scopes_any = ["a"]
methods = ["get"]
"#
        );
        let keys = keys_of(Config::from_toml_str(&text, &no_env).unwrap_err());
        for want in [
            "forward.claim_headers.x-forwarded-user",
            "forward.claim_headers.authorization",
            "forward.claim_headers.x-bad",
            "forward.claim_headers.x_user",
            "token.sources[2].cookie",
            "token.sources[3].header",
            "routes[0].path_exact",
            "routes[1].name",
            "routes[1].path_prefix",
            "routes[2].path_regex",
            "routes[3].name",
            "routes[3].path_prefix",
            "routes[3].issuers[0]",
            "routes[3].scopes_all",
            "routes[3].claims.\"realm..roles\"",
            "routes[4].auth",
            "routes[4].methods[0]",
        ] {
            assert!(
                keys.contains(&want.to_owned()),
                "{want} missing from {keys:?}"
            );
        }
        assert!(!keys.iter().any(|k| k.contains("x-user")), "{keys:?}");
    }

    #[test]
    fn routes_default_and_print_in_match_order() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"health\"\npath_prefix = \"/healthz/\"\nauth = \"public\"\n\
             [[routes]]\nname = \"w\"\npath_regex = \"/orders/[0-9]+\"\nmethods = [\"PUT\"]\nscopes_all = [\"orders:write\"]\n\
             claims = {{ tenant = \"acme\", n = [1, 2.5, true] }}\n"
        );
        let c = Config::from_toml_str(&text, &no_env).unwrap();
        assert_eq!(c.routes[0].path, PathMatch::PathPrefix("/healthz".into()));
        assert_eq!(c.token.sources, [TokenSource::bearer()]);
        assert_eq!(c.policy.default_auth, AuthMode::Required);
        assert_eq!(c.policy.cors_preflight, CorsPreflight::Reject);
        let out = c.to_effective_toml();
        let health = out.find("name = \"health\"").expect(&out);
        let w = out.find("name = \"w\"").expect(&out);
        assert!(health < w, "{out}");
        assert!(out.contains("path_regex = \"/orders/[0-9]+\""), "{out}");
    }
}
