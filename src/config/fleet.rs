//! The fleet stream (DESIGN §10): `[revocation.stream]` in a sidecar's config, and the
//! relay's own file (`[relay]`, `[relay.stream]`) read by `jwtgate relay`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::{RawRevocation, section};
use super::validate::validate_revocation;
use super::{ConfigErrors, FeedConfig, NotifyConfig, Problems, Secret, SocketAddr, expand_env};

/// Default stream name.
pub const DEFAULT_STREAM: &str = "JWTGATE_REV";

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStream {
    urls: Option<Vec<String>>,
    name: Option<String>,
    creds_file: Option<String>,
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<String>,
    /// Relay only (`[relay.stream]`).
    replicas: Option<u64>,
}

/// How to reach the fleet stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamConfig {
    /// `nats://` or `tls://` server URLs, tried in turn.
    pub urls: Vec<String>,
    pub name: String,
    /// A NATS user JWT and nkey seed (`.creds`).
    pub creds_file: Option<PathBuf>,
    pub token: Option<Secret>,
    /// A NATS user and password (both or neither).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra trust roots for TLS to the servers.
    pub ca_file: Option<PathBuf>,
}

/// Reads `[…stream]` under `prefix` (`revocation.stream` or `relay.stream`).
pub(super) fn validate_stream(raw: RawStream, prefix: &str, p: &mut Problems) -> StreamConfig {
    let k = |f: &str| format!("{prefix}.{f}");
    let urls = raw.urls.unwrap_or_default();
    if urls.is_empty() {
        p.push(
            k("urls"),
            "name at least one NATS server (nats://host:4222)",
        );
    }
    for (i, u) in urls.iter().enumerate() {
        match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "nats" | "tls") && url.host().is_some() => {
                if !url.username().is_empty() || url.password().is_some() {
                    p.push(
                        format!("{prefix}.urls[{i}]"),
                        "no credentials in the URL: use token or creds_file",
                    );
                }
            }
            Ok(_) => p.push(
                format!("{prefix}.urls[{i}]"),
                "must be nats://host:port or tls://host:port",
            ),
            Err(e) => p.push(format!("{prefix}.urls[{i}]"), format!("not a URL ({e})")),
        }
    }
    let name = raw.name.unwrap_or_else(|| DEFAULT_STREAM.to_owned());
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        p.push(
            k("name"),
            "1 to 64 characters of A-Z, a-z, 0-9, '_' and '-' (a JetStream stream name)",
        );
    }
    let ways = [
        raw.creds_file.is_some(),
        raw.token.is_some(),
        raw.username.is_some() || raw.password.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() > 1 {
        p.push(
            k("token"),
            "set one of creds_file, token, or username and password",
        );
    }
    if raw.username.is_some() != raw.password.is_some() {
        p.push(k("password"), "set both username and password, or neither");
    }
    if raw.token.as_deref().is_some_and(str::is_empty) {
        p.push(k("token"), "is empty");
    }
    StreamConfig {
        urls,
        name,
        creds_file: raw.creds_file.map(PathBuf::from),
        token: raw.token.map(Secret),
        username: raw.username,
        password: raw.password.map(Secret),
        ca_file: raw.ca_file.map(PathBuf::from),
    }
}

/// Files a stream config names must be readable (a host check, like the CA files).
pub(super) fn check_stream_files(s: &StreamConfig, prefix: &str, p: &mut Problems) {
    if let Some(path) = &s.ca_file {
        super::validate::check_ca_file(&format!("{prefix}.ca_file"), path, p);
    }
    if let Some(path) = &s.creds_file
        && let Err(e) = std::fs::read(path)
    {
        p.push(
            format!("{prefix}.creds_file"),
            format!("cannot read {}: {e}", path.display()),
        );
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRelay {
    listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    push_token: Option<String>,
    notify_username: Option<String>,
    notify_password: Option<String>,
    feed_url: Option<String>,
    feed_format: Option<String>,
    feed_username: Option<String>,
    feed_password: Option<String>,
    ca_file: Option<String>,
    poll_interval_s: Option<u64>,
    max_token_lifetime_s: Option<u64>,
    leeway_s: Option<u64>,
    stream: Option<RawStream>,
}

/// `jwtgate relay`'s config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub push_token: Option<Secret>,
    pub notify: Option<NotifyConfig>,
    pub feed: Option<FeedConfig>,
    pub max_token_lifetime_s: u64,
    pub leeway_s: u64,
    pub stream: StreamConfig,
    /// JetStream replicas when the relay creates the stream.
    pub replicas: usize,
}

impl RelayConfig {
    /// The stream keeps every record at least this long.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_token_lifetime_s + self.leeway_s)
    }

    /// Reads a relay config file; `env` resolves `${NAME}`.
    pub fn load(
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RelayConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        RelayConfig::from_toml_str(&text, env)
    }

    /// Parses and validates a relay config, returning every problem at once (files named
    /// by the config are checked too: the relay runs where it is checked).
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RelayConfig, ConfigErrors> {
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors::one("(file)", super::syntax_message(&e)))?;
        let mut p = Problems::default();
        for key in root.keys() {
            if key != "relay" {
                p.push(key.clone(), "unknown section, expected: relay");
            }
        }
        for (key, value) in root.iter_mut() {
            expand_env(key, value, env, &mut p);
        }
        if !root.contains_key("relay") {
            p.push("relay", "missing: a relay config is a [relay] table");
        }
        let raw: RawRelay = section(&root, "relay", &mut p);
        let config = validate_relay(raw, &mut p);
        if p.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(p.0))
        }
    }
}

fn validate_relay(raw: RawRelay, p: &mut Problems) -> RelayConfig {
    let listen = raw.listen.as_deref().unwrap_or("0.0.0.0:9902");
    let listen = listen.parse().unwrap_or_else(|_| {
        p.push("relay.listen", "must be host:port, e.g. 0.0.0.0:9902");
        SocketAddr::from(([0, 0, 0, 0], 9902))
    });
    if raw.tls_cert.is_some() != raw.tls_key.is_some() {
        p.push("relay.tls_key", "set both tls_cert and tls_key, or neither");
    }
    if raw.push_token.is_none() && raw.notify_username.is_none() && raw.feed_url.is_none() {
        p.push(
            "relay.push_token",
            "the relay has no source: set push_token, notify_username/notify_password or feed_url",
        );
    }
    // The source keys mean what they mean under [revocation]: validated by the same code,
    // with the problems renamed to this file's keys.
    let mut sub = Problems::default();
    let revocation = validate_revocation(
        RawRevocation {
            feed_url: raw.feed_url,
            feed_format: raw.feed_format,
            feed_username: raw.feed_username,
            feed_password: raw.feed_password,
            ca_file: raw.ca_file,
            poll_interval_s: raw.poll_interval_s,
            push_token: raw.push_token,
            notify_username: raw.notify_username,
            notify_password: raw.notify_password,
            max_token_lifetime_s: raw.max_token_lifetime_s,
            ..RawRevocation::default()
        },
        &mut sub,
    );
    for e in sub.0 {
        let key = e.key.replacen("revocation.", "relay.", 1);
        p.push(key, e.message.replace("revocation.", "relay."));
    }
    let stream = validate_stream(raw.stream.clone().unwrap_or_default(), "relay.stream", p);
    let replicas = raw.stream.and_then(|s| s.replicas).unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        p.push("relay.stream.replicas", "must be 1 to 5");
    }
    let mut files = Problems::default();
    check_stream_files(&stream, "relay.stream", &mut files);
    if let Some(path) = revocation.feed.as_ref().and_then(|f| f.ca_file.as_ref()) {
        super::validate::check_ca_file("relay.ca_file", path, &mut files);
    }
    p.0.extend(files.0);
    RelayConfig {
        listen,
        tls_cert: raw.tls_cert.map(PathBuf::from),
        tls_key: raw.tls_key.map(PathBuf::from),
        push_token: revocation.push_token,
        notify: revocation.notify,
        feed: revocation.feed,
        max_token_lifetime_s: revocation.max_token_lifetime_s,
        leeway_s: raw.leeway_s.unwrap_or(30),
        stream,
        replicas: replicas.clamp(1, 5) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match RelayConfig::from_toml_str(text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn relay_config_reads_and_every_mistake_names_its_key() {
        let ok = RelayConfig::from_toml_str(
            r#"
[relay]
listen = "127.0.0.1:9902"
push_token = "0123456789abcdef0123"
max_token_lifetime_s = 3600
[relay.stream]
urls = ["nats://127.0.0.1:4222"]
replicas = 3
"#,
            &|_| None,
        )
        .unwrap();
        assert_eq!(ok.stream.name, DEFAULT_STREAM);
        assert_eq!(ok.replicas, 3);
        assert_eq!(ok.max_age(), Duration::from_secs(3630));

        let e = errors(
            r#"
[relay]
push_token = "short"
feed_format = "wso2"
tls_cert = "/x"
[relay.stream]
urls = ["http://x", "nats://u:p@h:1"]
name = "a.b"
token = "t"
creds_file = "/c"
replicas = 9
"#,
        );
        for key in [
            "relay.push_token",
            "relay.feed_format",
            "relay.tls_key",
            "relay.stream.urls[0]",
            "relay.stream.urls[1]",
            "relay.stream.name",
            "relay.stream.token",
            "relay.stream.replicas",
            "relay.stream.creds_file",
        ] {
            assert!(
                e.iter().any(|l| l.starts_with(&format!("{key}:"))),
                "{key} not named in {e:#?}"
            );
        }
        assert!(!e.iter().any(|l| l.contains("revocation.")), "{e:#?}");
        assert!(
            errors("[relay]\n[relay.stream]\nurls=[\"nats://h:1\"]\n")[0].contains("no source")
        );
        assert!(errors("[server]\n")[0].starts_with("server:"));
    }
}
