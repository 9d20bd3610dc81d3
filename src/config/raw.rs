//! The config as written: one serde struct per section, every key optional, unknown keys
//! refused. Nothing is defaulted or checked here (see `validate`); a type error names the
//! key it happened at.

use serde::Deserialize;

use super::Problems;

// Raw, as-written form. Every section denies unknown keys; defaults live here.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) admin_tls_cert: Option<String>,
    pub(super) admin_tls_key: Option<String>,
    pub(super) shutdown_delay_s: Option<u64>,
    pub(super) drain_timeout_s: Option<u64>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) url: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) request_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIssuer {
    pub(super) name: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) jwks_uri: Option<String>,
    pub(super) discovery_url: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) skip_audience_check: bool,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) leeway_s: Option<u64>,
    pub(super) typ: Option<Vec<String>>,
    pub(super) profile: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawJwks {
    pub(super) refresh_interval_s: Option<u64>,
    pub(super) min_refetch_interval_s: Option<u64>,
    pub(super) max_stale_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    pub(super) max_entries: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) max_token_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<u64>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) h2_max_concurrent_streams: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawForward {
    pub(super) claims_header: Option<String>,
    pub(super) strip_authorization: bool,
    pub(super) claim_headers: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) path_exact: Option<String>,
    pub(super) path_regex: Option<String>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) auth: Option<String>,
    pub(super) issuers: Option<Vec<String>>,
    pub(super) scopes_all: Option<Vec<String>>,
    pub(super) scopes_any: Option<Vec<String>>,
    pub(super) claims: Option<toml::Table>,
    pub(super) forward_credentials: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPolicy {
    pub(super) default_auth: Option<String>,
    pub(super) cors_preflight: Option<String>,
    pub(super) allowed_origins: Option<Vec<String>>,
    pub(super) allow_path_semicolons: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawToken {
    pub(super) sources: Option<Vec<RawTokenSource>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTokenSource {
    pub(super) header: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) cookie: Option<String>,
    pub(super) query: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRevocation {
    pub(super) feed_url: Option<String>,
    pub(super) feed_format: Option<String>,
    pub(super) feed_username: Option<String>,
    pub(super) feed_password: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) poll_interval_s: Option<u64>,
    pub(super) snapshot_path: Option<String>,
    pub(super) push_token: Option<String>,
    pub(super) notify_username: Option<String>,
    pub(super) notify_password: Option<String>,
    pub(super) max_token_lifetime_s: Option<u64>,
    pub(super) max_sync_age_s: Option<u64>,
    pub(super) on_stale: Option<String>,
    pub(super) require_jti: Option<bool>,
    pub(super) stream: Option<super::fleet::RawStream>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAccessLog {
    pub(super) enabled: bool,
    pub(super) include_subject: bool,
    pub(super) subject_key: Option<String>,
    pub(super) rejected_only: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTracing {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) sample_ratio: Option<f64>,
}

pub(super) fn section<T: for<'de> Deserialize<'de> + Default>(
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

/// An array of tables (`[[issuers]]`, `[[routes]]`), each typed on its own so a problem
/// names its index.
pub(super) fn tables<T: for<'de> Deserialize<'de> + Default>(
    root: &toml::Table,
    name: &str,
    p: &mut Problems,
) -> Vec<T> {
    match root.get(name) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| typed(v.clone(), &format!("{name}[{i}]"), p))
            .collect(),
        Some(_) => {
            p.push(
                name,
                format!("must be an array of tables: write [[{name}]]"),
            );
            Vec::new()
        }
    }
}

pub(super) fn typed<T: for<'de> Deserialize<'de> + Default>(
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
