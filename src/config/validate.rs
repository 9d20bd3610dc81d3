//! One validator per section: raw values in, typed config out, every problem pushed with
//! the key it concerns. The defaults are written here, once each, next to the check of the
//! value they stand in for.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;

use super::raw::*;
use super::*;

pub(super) fn addr(
    key: &str,
    value: Option<String>,
    default: &str,
    p: &mut Problems,
) -> SocketAddr {
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

/// `server.admin_tls_<which>`, which needs its partner.
fn admin_tls_file(
    this: &Option<String>,
    partner: &Option<String>,
    which: &str,
    p: &mut Problems,
) -> Option<std::path::PathBuf> {
    let other = if which == "cert" { "key" } else { "cert" };
    match (this, partner) {
        (Some(path), Some(_)) if !path.trim().is_empty() => Some(path.into()),
        (Some(_), Some(_)) => {
            p.push(format!("server.admin_tls_{which}"), "must not be empty");
            None
        }
        (Some(_), None) => {
            p.push(
                format!("server.admin_tls_{other}"),
                format!("required with server.admin_tls_{which}"),
            );
            None
        }
        (None, _) => None,
    }
}

pub(super) fn validate_server(raw: RawServer, p: &mut Problems) -> ServerConfig {
    ServerConfig {
        listen: addr("server.listen", raw.listen, "0.0.0.0:8080", p),
        admin_listen: addr("server.admin_listen", raw.admin_listen, "127.0.0.1:9901", p),
        admin_tls_cert: admin_tls_file(&raw.admin_tls_cert, &raw.admin_tls_key, "cert", p),
        admin_tls_key: admin_tls_file(&raw.admin_tls_key, &raw.admin_tls_cert, "key", p),
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

pub(super) fn validate_upstream(raw: RawUpstream, p: &mut Problems) -> UpstreamConfig {
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
        protocol: choice(
            "upstream.protocol",
            raw.protocol.as_deref(),
            &[
                ("http1", UpstreamProtocol::Http1),
                ("h2c", UpstreamProtocol::H2c),
            ],
            p,
        ),
        url,
        connect_timeout: Duration::from_millis(connect_ms),
        request_timeout: Duration::from_millis(request_ms),
    }
}

pub(super) fn http_url(key: &str, text: &str, p: &mut Problems) -> Option<reqwest::Url> {
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

pub(super) fn label_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn validate_issuers(raw: Vec<RawIssuer>, p: &mut Problems) -> Vec<IssuerConfig> {
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
pub(super) fn feed(
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
pub(super) fn check_ca_file(key: &str, path: &std::path::Path, p: &mut Problems) {
    match std::fs::read(path) {
        // An empty bundle parses: a file with no certificate in it is refused here.
        Ok(pem) if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) => {}
        Ok(_) => p.push(key, format!("{} holds no PEM certificate", path.display())),
        Err(e) => p.push(key, format!("cannot read {}: {e}", path.display())),
    }
}

/// The snapshot's directory must exist, and the path must not be a directory itself.
pub(super) fn check_snapshot_dir(path: &std::path::Path, p: &mut Problems) {
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
pub(super) fn choice<T: Copy>(
    key: &str,
    value: Option<&str>,
    choices: &[(&str, T)],
    p: &mut Problems,
) -> T {
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
pub(super) fn key_source(
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
pub(super) fn algorithms(key: &str, list: Option<Vec<String>>, p: &mut Problems) -> Vec<Algorithm> {
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
pub(super) fn typ_list(key: &str, list: Option<Vec<String>>, p: &mut Problems) -> Vec<String> {
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
pub(super) fn notify(
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

pub(super) fn validate_jwks(raw: RawJwks, p: &mut Problems) -> JwksConfig {
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

pub(super) fn validate_limits(raw: RawLimits, p: &mut Problems) -> LimitsConfig {
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

pub(super) fn validate_revocation(raw: RawRevocation, p: &mut Problems) -> RevocationConfig {
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
    let stream = raw
        .stream
        .map(|s| super::fleet::validate_stream(s, "revocation.stream", p));
    if stream.is_some() && max_sync_age_s < 5 {
        p.push(
            k("max_sync_age_s"),
            "must be at least 5 with [revocation.stream]: the relay's heartbeat comes every 2 s",
        );
    }
    if stream.is_some() && feed.is_some() {
        p.push(
            k("feed_url"),
            "set feed_url or [revocation.stream], not both: with the stream, the relay polls the key manager",
        );
    }
    RevocationConfig {
        feed,
        snapshot_path,
        push_token,
        notify,
        max_token_lifetime_s,
        max_sync_age: Duration::from_secs(max_sync_age_s),
        on_stale,
        require_jti: raw.require_jti.unwrap_or(true),
        stream,
    }
}

pub(super) fn validate_forward(raw: RawForward, p: &mut Problems) -> ForwardConfig {
    let name = raw
        .claims_header
        .unwrap_or_else(|| "x-jwt-payload".to_owned());
    let claims_header = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) if h.as_str().contains('_') => {
            p.push(
                "forward.claims_header",
                "use - instead of _: servers fold both onto one name, so a client could send its own copy",
            );
            HeaderName::from_static("x-jwt-payload")
        }
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
        claim_headers: Vec::new(),
    }
}

pub(super) fn validate_access_log(raw: RawAccessLog, p: &mut Problems) -> AccessLogConfig {
    let subject_key = match raw.subject_key {
        Some(k) if k.len() < 16 => {
            p.push(
                "access_log.subject_key",
                "must be at least 16 bytes: a short key lets anyone with the log test guesses of sub",
            );
            None
        }
        Some(_) if raw.include_subject => {
            p.push(
                "access_log.subject_key",
                "has no effect with include_subject = true (the line carries sub in clear)",
            );
            None
        }
        k => k.map(Secret::new),
    };
    if !raw.enabled {
        for (set, key) in [
            (raw.include_subject, "include_subject"),
            (subject_key.is_some(), "subject_key"),
            (raw.rejected_only, "rejected_only"),
        ] {
            if set {
                p.push(
                    format!("access_log.{key}"),
                    "has no effect without access_log.enabled = true",
                );
            }
        }
    }
    AccessLogConfig {
        enabled: raw.enabled,
        include_subject: raw.include_subject,
        subject_key,
        rejected_only: raw.rejected_only,
    }
}

pub(super) fn validate_tracing(raw: RawTracing, p: &mut Problems) -> Option<TracingConfig> {
    let sample_ratio = raw.sample_ratio.unwrap_or(0.01);
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.push("tracing.sample_ratio", "must be between 0 and 1");
    }
    let Some(endpoint) = raw.otlp_endpoint else {
        if raw.sample_ratio.is_some() {
            p.push(
                "tracing.sample_ratio",
                "has no effect without tracing.otlp_endpoint",
            );
        }
        return None;
    };
    let key = "tracing.otlp_endpoint";
    let base = http_url(key, &endpoint, p)?;
    if base.query().is_some() || base.fragment().is_some() {
        p.push(key, "the base URL takes no query or fragment");
        return None;
    }
    let mut path = base.path().trim_end_matches('/').to_owned();
    if path.ends_with("/v1/traces") {
        p.push(
            key,
            "is the base URL: /v1/traces is appended, write the URL without it",
        );
        return None;
    }
    path.push_str("/v1/traces");
    let mut traces_url = base;
    traces_url.set_path(&path);
    Some(TracingConfig {
        traces_url,
        sample_ratio,
    })
}
