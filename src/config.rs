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

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::jose::{Algorithm, normalize_typ};
use http::header::HeaderName;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
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

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// `http://host:port`, no path: the request's own path and query are appended.
    #[serde(serialize_with = "ser_display")]
    pub url: http::Uri,
    #[serde(serialize_with = "ser_millis")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_millis")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct JwksConfig {
    #[serde(serialize_with = "ser_secs")]
    pub refresh_interval: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub min_refetch_interval: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub max_stale: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheConfig {
    pub max_entries: u64,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct ForwardConfig {
    #[serde(serialize_with = "ser_display")]
    pub claims_header: HeaderName,
    pub strip_authorization: bool,
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct NotifyConfig {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize)]
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
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}
fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}
fn ser_display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

// ---------------------------------------------------------------------------------------
// Raw, as-written form. Every section denies unknown keys; defaults live here.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_delay_s: Option<u64>,
    drain_timeout_s: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    url: Option<String>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawIssuer {
    name: Option<String>,
    issuer: Option<String>,
    jwks_uri: Option<String>,
    discovery_url: Option<String>,
    ca_file: Option<String>,
    audiences: Option<Vec<String>>,
    skip_audience_check: bool,
    algorithms: Option<Vec<String>>,
    leeway_s: Option<u64>,
    typ: Option<Vec<String>>,
    profile: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawJwks {
    refresh_interval_s: Option<u64>,
    min_refetch_interval_s: Option<u64>,
    max_stale_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    max_entries: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_token_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
    h2_max_concurrent_streams: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawForward {
    claims_header: Option<String>,
    strip_authorization: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRevocation {
    feed_url: Option<String>,
    feed_format: Option<String>,
    feed_username: Option<String>,
    feed_password: Option<String>,
    ca_file: Option<String>,
    poll_interval_s: Option<u64>,
    snapshot_path: Option<String>,
    push_token: Option<String>,
    notify_username: Option<String>,
    notify_password: Option<String>,
    max_token_lifetime_s: Option<u64>,
    max_sync_age_s: Option<u64>,
    on_stale: Option<String>,
    require_jti: Option<bool>,
}

const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "issuers",
    "jwks",
    "cache",
    "limits",
    "forward",
    "revocation",
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
        let forward: RawForward = section(&root, "forward", &mut p);
        let revocation: Option<RawRevocation> = root
            .contains_key("revocation")
            .then(|| section(&root, "revocation", &mut p));
        let issuers: Vec<RawIssuer> = match root.get("issuers") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| typed(v.clone(), &format!("issuers[{i}]"), &mut p))
                .collect(),
            Some(_) => {
                p.push("issuers", "must be an array of tables: write [[issuers]]");
                Vec::new()
            }
        };

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
        };
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
        if p.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(p.0))
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
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(p.0))
        }
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
        {
            w.push(
                "revocation.feed_url: not set (push-only): a pod never learns revocations made \
                 before it started unless its snapshot holds them"
                    .to_owned(),
            );
        }
        w
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

fn section<T: for<'de> Deserialize<'de> + Default>(
    root: &toml::Table,
    name: &str,
    p: &mut Problems,
) -> T {
    match root.get(name) {
        None => T::default(),
        Some(v @ toml::Value::Table(_)) => typed(v.clone(), name, p),
        Some(_) => {
            p.push(name, format!("must be a table: write [{name}]"));
            T::default()
        }
    }
}

fn typed<T: for<'de> Deserialize<'de> + Default>(
    value: toml::Value,
    prefix: &str,
    p: &mut Problems,
) -> T {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{path}")
            };
            p.push(key, e.into_inner().to_string());
            T::default()
        }
    }
}

/// Replaces `${NAME}` inside every string, recursively; problems name the key.
fn expand_env(
    key: &str,
    value: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) {
    match value {
        toml::Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(msg) => p.push(key, msg),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(&format!("{key}[{i}]"), item, env, p);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_env(&format!("{key}.{k}"), v, env, p);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${ in value".to_owned())?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid environment variable name in ${{{name}}}: use letters, digits and _"
            ));
        }
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn addr(key: &str, value: Option<String>, default: &str, p: &mut Problems) -> SocketAddr {
    let text = value.unwrap_or_else(|| default.to_owned());
    match text.parse() {
        Ok(a) => a,
        Err(_) => {
            p.push(
                key,
                format!("not a socket address (expected IP:PORT such as {default})"),
            );
            // Placeholder so validation can go on; never used: errors abort the load.
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn validate_server(raw: RawServer, p: &mut Problems) -> ServerConfig {
    ServerConfig {
        listen: addr("server.listen", raw.listen, "0.0.0.0:8080", p),
        admin_listen: addr("server.admin_listen", raw.admin_listen, "127.0.0.1:9901", p),
        shutdown_delay: Duration::from_secs(raw.shutdown_delay_s.unwrap_or(5)),
        drain_timeout: Duration::from_secs(raw.drain_timeout_s.unwrap_or(30)),
        trusted_proxies: raw
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                text.parse::<Cidr>()
                    .map_err(|e| p.push(format!("server.trusted_proxies[{i}]"), e))
                    .ok()
            })
            .collect(),
    }
}

fn validate_upstream(raw: RawUpstream, p: &mut Problems) -> UpstreamConfig {
    let url = match raw.url {
        None => {
            p.push(
                "upstream.url",
                "required (for example \"http://127.0.0.1:8081\")",
            );
            http::Uri::from_static("http://127.0.0.1:0")
        }
        Some(text) => match text.parse::<http::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && uri.authority().is_some()
                    && uri.path_and_query().is_none_or(|pq| pq.as_str() == "/") =>
            {
                uri
            }
            Ok(uri) if uri.scheme_str() == Some("https") => {
                p.push(
                    "upstream.url",
                    "https upstreams are not supported: the app runs beside jwtgate on loopback",
                );
                uri
            }
            _ => {
                p.push(
                    "upstream.url",
                    "must be http://HOST:PORT with no path (the request's path is appended)",
                );
                http::Uri::from_static("http://127.0.0.1:0")
            }
        },
    };
    let connect_ms = raw.connect_timeout_ms.unwrap_or(2000);
    let request_ms = raw.request_timeout_ms.unwrap_or(30_000);
    if connect_ms == 0 {
        p.push("upstream.connect_timeout_ms", "must be greater than 0");
    }
    if request_ms == 0 {
        p.push("upstream.request_timeout_ms", "must be greater than 0");
    }
    UpstreamConfig {
        url,
        connect_timeout: Duration::from_millis(connect_ms),
        request_timeout: Duration::from_millis(request_ms),
    }
}

fn http_url(key: &str, text: &str, p: &mut Problems) -> Option<reqwest::Url> {
    match reqwest::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            p.push(key, "must be an http:// or https:// URL with a host");
            None
        }
        Err(e) => {
            p.push(key, format!("not a URL: {e}"));
            None
        }
    }
}

fn label_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_issuers(raw: Vec<RawIssuer>, p: &mut Problems) -> Vec<IssuerConfig> {
    if raw.is_empty() {
        p.push(
            "issuers",
            "at least one [[issuers]] table is required: jwtgate trusts no issuer by default",
        );
    }
    let mut names = HashSet::new();
    let mut issuer_values = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let k = |field: &str| format!("issuers[{i}].{field}");
        let issuer = match r.issuer {
            Some(s) if !s.is_empty() => s,
            _ => {
                p.push(k("issuer"), "required: the exact `iss` value of its tokens");
                String::new()
            }
        };
        if !issuer.is_empty() && !issuer_values.insert(issuer.clone()) {
            p.push(
                k("issuer"),
                "another issuer table has the same `issuer` value",
            );
        }
        let keys = key_source(&k, r.jwks_uri, r.discovery_url, p);
        let name = match r.name {
            Some(n) => n,
            None => reqwest::Url::parse(&issuer)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| issuer.clone()),
        };
        if !label_safe(&name) {
            p.push(
                k("name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.' (it is a metric label)",
            );
        } else if !names.insert(name.clone()) {
            p.push(k("name"), format!("duplicate issuer name {name:?}"));
        }
        let audiences = r.audiences.unwrap_or_default();
        if audiences.is_empty() && !r.skip_audience_check {
            p.push(
                k("audiences"),
                "required unless skip_audience_check = true (WSO2 puts the client id in aud)",
            );
        }
        let algorithms = algorithms(&k("algorithms"), r.algorithms, p);
        let leeway_s = r.leeway_s.unwrap_or(30);
        if leeway_s > 300 {
            p.push(k("leeway_s"), "must be at most 300 seconds");
        }
        let typ = typ_list(&k("typ"), r.typ, p);
        let profile = choice(
            &k("profile"),
            r.profile.as_deref(),
            &[("generic", Profile::Generic), ("wso2", Profile::Wso2)],
            p,
        );
        let ca_file = r.ca_file.map(PathBuf::from);
        if let Some(keys) = keys {
            out.push(IssuerConfig {
                name,
                issuer,
                keys,
                ca_file,
                audiences,
                skip_audience_check: r.skip_audience_check,
                algorithms,
                leeway_s,
                typ,
                profile,
            });
        }
    }
    out
}

/// The poll source, when `feed_url` is set; the feed keys without it are mistakes.
fn feed(
    raw: &RawRevocation,
    format: FeedFormat,
    ca_file: Option<PathBuf>,
    poll_interval_s: u64,
    p: &mut Problems,
) -> Option<FeedConfig> {
    let k = |f: &str| format!("revocation.{f}");
    match raw.feed_url.clone() {
        None => {
            for (set, key) in [
                (raw.feed_username.is_some(), "feed_username"),
                (raw.feed_password.is_some(), "feed_password"),
                (raw.feed_format.is_some(), "feed_format"),
            ] {
                if set {
                    p.push(k(key), "has no effect without revocation.feed_url");
                }
            }
            None
        }
        Some(url) => http_url(&k("feed_url"), &url, p).map(|url| {
            if format == FeedFormat::Wso2
                && (raw.feed_username.is_none() || raw.feed_password.is_none())
            {
                p.push(
                    k("feed_username"),
                    "feed_format = \"wso2\" needs feed_username and feed_password (Basic auth)",
                );
            }
            if raw.feed_username.is_some() != raw.feed_password.is_some() {
                p.push(
                    k("feed_password"),
                    "set both feed_username and feed_password, or neither",
                );
            }
            FeedConfig {
                url,
                format,
                username: raw.feed_username.clone(),
                password: raw.feed_password.clone().map(Secret),
                ca_file,
                poll_interval: Duration::from_secs(poll_interval_s),
            }
        }),
    }
}

/// An extra trust root must be a readable file holding at least one PEM certificate
/// (a host check: see [`Config::check_host`]).
fn check_ca_file(key: &str, path: &std::path::Path, p: &mut Problems) {
    match std::fs::read(path) {
        // An empty bundle parses: a file with no certificate in it is refused here.
        Ok(pem) if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) => {}
        Ok(_) => p.push(key, format!("{} holds no PEM certificate", path.display())),
        Err(e) => p.push(key, format!("cannot read {}: {e}", path.display())),
    }
}

/// The snapshot's directory must exist, and the path must not be a directory itself.
fn check_snapshot_dir(path: &std::path::Path, p: &mut Problems) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        p.push(
            "revocation.snapshot_path",
            format!("directory {} does not exist", dir.display()),
        );
    } else if path.is_dir() {
        p.push(
            "revocation.snapshot_path",
            "is a directory; name a file in it",
        );
    }
}

/// One of a closed set of words; the first is the default. A wrong word names the choices.
fn choice<T: Copy>(key: &str, value: Option<&str>, choices: &[(&str, T)], p: &mut Problems) -> T {
    let default = choices[0].1;
    let Some(value) = value else {
        return default;
    };
    match choices.iter().find(|(word, _)| *word == value) {
        Some((_, v)) => *v,
        None => {
            let words: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
            p.push(key, format!("must be {}", words.join(" or ")));
            default
        }
    }
}

/// `jwks_uri` or `discovery_url`, exactly one.
fn key_source(
    k: &dyn Fn(&str) -> String,
    jwks_uri: Option<String>,
    discovery_url: Option<String>,
    p: &mut Problems,
) -> Option<KeySource> {
    match (jwks_uri, discovery_url) {
        (Some(u), None) => http_url(&k("jwks_uri"), &u, p).map(KeySource::JwksUri),
        (None, Some(u)) => http_url(&k("discovery_url"), &u, p).map(KeySource::DiscoveryUrl),
        (Some(_), Some(_)) => {
            p.push(k("jwks_uri"), "set jwks_uri or discovery_url, not both");
            None
        }
        (None, None) => {
            p.push(k("jwks_uri"), "required (or discovery_url)");
            None
        }
    }
}

/// An issuer's `algorithms` (default `["RS256"]`), every name checked.
fn algorithms(key: &str, list: Option<Vec<String>>, p: &mut Problems) -> Vec<Algorithm> {
    let Some(list) = list else {
        return vec![Algorithm::RS256];
    };
    if list.is_empty() {
        p.push(key, "must list at least one algorithm");
    }
    list.iter()
        .filter_map(|a| {
            let alg = Algorithm::from_name(a);
            if alg.is_none() {
                p.push(
                    key,
                    format!(
                        "unsupported algorithm {a:?}; allowed: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
                    ),
                );
            }
            alg
        })
        .collect()
}

/// An issuer's accepted `typ` values (default `at+jwt`, `JWT`), normalised; never `rt+jwt`.
fn typ_list(key: &str, list: Option<Vec<String>>, p: &mut Problems) -> Vec<String> {
    let typ: Vec<String> = list
        .unwrap_or_else(|| vec!["at+jwt".into(), "JWT".into()])
        .iter()
        .map(|t| normalize_typ(t))
        .collect();
    if typ.iter().any(|t| t == "rt+jwt") {
        p.push(key, "rt+jwt is a refresh token type and is always refused");
    }
    typ
}

/// WSO2 notify credentials: both (non-empty) or neither.
fn notify(
    key: &str,
    username: Option<String>,
    password: Option<String>,
    p: &mut Problems,
) -> Option<NotifyConfig> {
    match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() && !password.is_empty() => {
            Some(NotifyConfig {
                username,
                password: Secret(password),
            })
        }
        (None, None) => None,
        _ => {
            p.push(
                key,
                "set both notify_username and notify_password (non-empty), or neither",
            );
            None
        }
    }
}

fn validate_jwks(raw: RawJwks, p: &mut Problems) -> JwksConfig {
    let refresh = raw.refresh_interval_s.unwrap_or(300);
    let min_refetch = raw.min_refetch_interval_s.unwrap_or(10);
    let max_stale = raw.max_stale_s.unwrap_or(86_400);
    if refresh == 0 {
        p.push("jwks.refresh_interval_s", "must be greater than 0");
    }
    if min_refetch == 0 {
        p.push(
            "jwks.min_refetch_interval_s",
            "must be greater than 0: it bounds how often a token can make jwtgate call the key manager",
        );
    }
    if max_stale < refresh {
        p.push(
            "jwks.max_stale_s",
            "must be at least jwks.refresh_interval_s, or keys would expire between refreshes",
        );
    }
    JwksConfig {
        refresh_interval: Duration::from_secs(refresh),
        min_refetch_interval: Duration::from_secs(min_refetch),
        max_stale: Duration::from_secs(max_stale),
    }
}

fn validate_limits(raw: RawLimits, p: &mut Problems) -> LimitsConfig {
    let max_token = raw.max_token_bytes.unwrap_or(8192);
    let max_header = raw.max_header_bytes.unwrap_or(65_536);
    let timeout = raw.header_read_timeout_ms.unwrap_or(10_000);
    if !(256..=65_536).contains(&max_token) {
        p.push("limits.max_token_bytes", "must be between 256 and 65536");
    }
    if !(8192..=1_048_576).contains(&max_header) {
        p.push(
            "limits.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    if max_token > max_header {
        p.push(
            "limits.max_token_bytes",
            "must not exceed limits.max_header_bytes",
        );
    }
    if timeout == 0 {
        p.push("limits.header_read_timeout_ms", "must be greater than 0");
    }
    let idle = raw.idle_timeout_ms.unwrap_or(60_000);
    if idle == 0 {
        p.push("limits.idle_timeout_ms", "must be greater than 0");
    }
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&max_connections) {
        p.push("limits.max_connections", "must be between 1 and 1000000");
    }
    let streams = raw.h2_max_concurrent_streams.unwrap_or(100);
    if !(1..=10_000).contains(&streams) {
        p.push(
            "limits.h2_max_concurrent_streams",
            "must be between 1 and 10000",
        );
    }
    LimitsConfig {
        max_token_bytes: max_token as usize,
        max_header_bytes: max_header as usize,
        header_read_timeout: Duration::from_millis(timeout),
        idle_timeout: Duration::from_millis(idle),
        max_connections: max_connections as usize,
        h2_max_concurrent_streams: streams as u32,
    }
}

fn validate_revocation(raw: RawRevocation, p: &mut Problems) -> RevocationConfig {
    let k = |f: &str| format!("revocation.{f}");
    let poll_interval_s = raw.poll_interval_s.unwrap_or(10);
    if poll_interval_s == 0 {
        p.push(k("poll_interval_s"), "must be greater than 0");
    }
    let format = choice(
        &k("feed_format"),
        raw.feed_format.as_deref(),
        &[("jwtgate", FeedFormat::Jwtgate), ("wso2", FeedFormat::Wso2)],
        p,
    );
    let ca_file = raw.ca_file.clone().map(PathBuf::from);
    let feed = feed(&raw, format, ca_file, poll_interval_s, p);
    let push_token = raw.push_token.map(Secret);
    if push_token
        .as_ref()
        .is_some_and(|t| t.0.chars().count() < 16)
    {
        p.push(k("push_token"), "must be at least 16 characters");
    }
    let notify = notify(
        &k("notify_password"),
        raw.notify_username,
        raw.notify_password,
        p,
    );
    let max_token_lifetime_s = raw.max_token_lifetime_s.unwrap_or(86_400);
    if max_token_lifetime_s == 0 {
        p.push(k("max_token_lifetime_s"), "must be greater than 0");
    }
    let max_sync_age_s = raw.max_sync_age_s.unwrap_or(300);
    if feed.is_some() && max_sync_age_s <= poll_interval_s {
        p.push(
            k("max_sync_age_s"),
            "must be greater than poll_interval_s, or every pause between polls would count as stale",
        );
    }
    let on_stale = choice(
        &k("on_stale"),
        raw.on_stale.as_deref(),
        &[("reject", OnStale::Reject), ("allow", OnStale::Allow)],
        p,
    );
    let snapshot_path = raw.snapshot_path.map(PathBuf::from);
    RevocationConfig {
        feed,
        snapshot_path,
        push_token,
        notify,
        max_token_lifetime_s,
        max_sync_age: Duration::from_secs(max_sync_age_s),
        on_stale,
        require_jti: raw.require_jti.unwrap_or(true),
    }
}

fn validate_forward(raw: RawForward, p: &mut Problems) -> ForwardConfig {
    let name = raw
        .claims_header
        .unwrap_or_else(|| "x-jwt-payload".to_owned());
    let claims_header = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) if !crate::hop::is_reserved(&h) => h,
        Ok(_) => {
            p.push(
                "forward.claims_header",
                "must not be a hop-by-hop, Host, Authorization or X-Forwarded-* header",
            );
            HeaderName::from_static("x-jwt-payload")
        }
        Err(_) => {
            p.push("forward.claims_header", "not a valid HTTP header name");
            HeaderName::from_static("x-jwt-payload")
        }
    };
    ForwardConfig {
        claims_header,
        strip_authorization: raw.strip_authorization,
    }
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
}
