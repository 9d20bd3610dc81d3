//! Per-issuer key sets: fetched at start, refreshed in the background, refetched once for an
//! unknown `kid`, and served stale while the key manager is unreachable.
//!
//! Invariants:
//! - the request path reads the current set through an `ArcSwap` load: no lock, no await,
//!   unless the token's `kid` is unknown;
//! - every fetch of one issuer goes through one async mutex (single flight), and fetches
//!   triggered by unknown kids happen at most once per `min_refetch_interval`; a kid still
//!   missing after a fetch is remembered (negative cache) for that long;
//! - a failed fetch never replaces the last good set; that set is used until it is older
//!   than `max_stale`, after which the issuer's keys count as unavailable (503, not 401).

pub mod keyset;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header;
use tracing::Instrument as _;

use crate::clock::{Clock, unix_now};
use crate::config::{IssuerConfig, JwksConfig, KeySource};
use crate::metrics::Metrics;
pub use keyset::{KeySet, VerifyKey};

/// Result of one JWKS (or discovery) fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    Ok,
    NotModified,
    Error,
}

impl FetchResult {
    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            FetchResult::Ok => "ok",
            FetchResult::NotModified => "not_modified",
            FetchResult::Error => "error",
        }
    }
}

/// The JWKS families, shared by every issuer (label `issuer`: a configured name).
pub struct JwksMetrics {
    fetches: prometheus::IntCounterVec,
    keys: prometheus::IntGaugeVec,
    last_success: prometheus::IntGaugeVec,
}

impl JwksMetrics {
    /// Registers the families.
    pub fn register(m: &Metrics) -> JwksMetrics {
        JwksMetrics {
            fetches: m.counter_vec(
                "jwtgate_jwks_fetches_total",
                "JWKS fetches by issuer and result.",
                &["issuer", "result"],
            ),
            keys: m.gauge_vec(
                "jwtgate_jwks_keys",
                "Usable keys in the issuer's current key set.",
                &["issuer"],
            ),
            last_success: m.gauge_vec(
                "jwtgate_jwks_last_success_timestamp_seconds",
                "Unix time of the issuer's last successful JWKS fetch (0 = never).",
                &["issuer"],
            ),
        }
    }

    /// The children of one configured issuer.
    pub fn issuer(&self, name: &str) -> IssuerMetrics {
        let fetch = |r: FetchResult| self.fetches.with_label_values(&[name, r.label()]);
        IssuerMetrics {
            fetch_ok: fetch(FetchResult::Ok),
            fetch_not_modified: fetch(FetchResult::NotModified),
            fetch_error: fetch(FetchResult::Error),
            keys: self.keys.with_label_values(&[name]),
            last_success: self.last_success.with_label_values(&[name]),
        }
    }

    /// Drops the series of an issuer a reload removed (a frozen `last_success` would keep
    /// alerting about an issuer that is no longer configured).
    pub fn forget(&self, name: &str) {
        for r in [
            FetchResult::Ok,
            FetchResult::NotModified,
            FetchResult::Error,
        ] {
            let _ = self.fetches.remove_label_values(&[name, r.label()]);
        }
        let _ = self.keys.remove_label_values(&[name]);
        let _ = self.last_success.remove_label_values(&[name]);
    }
}

/// One issuer's metric children, resolved at start.
#[derive(Clone)]
pub struct IssuerMetrics {
    fetch_ok: prometheus::IntCounter,
    fetch_not_modified: prometheus::IntCounter,
    fetch_error: prometheus::IntCounter,
    keys: prometheus::IntGauge,
    last_success: prometheus::IntGauge,
}

impl IssuerMetrics {
    fn fetch(&self, result: FetchResult) {
        match result {
            FetchResult::Ok => self.fetch_ok.inc(),
            FetchResult::NotModified => self.fetch_not_modified.inc(),
            FetchResult::Error => self.fetch_error.inc(),
        }
    }
}

/// Longest a request may wait for an unknown-kid refetch.
const REFETCH_WAIT: Duration = Duration::from_secs(5);
/// Floor for a refresh interval shortened by `Cache-Control: max-age`.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Bound on remembered missing kids per issuer.
const NEGATIVE_CACHE_ENTRIES: u64 = 10_000;

/// The set in use, and when it was last confirmed by the key manager.
struct Loaded {
    set: Arc<KeySet>,
    /// Clock seconds when the key manager last confirmed the set (`max_stale` counts from
    /// here; the injectable clock lets tests cross it without sleeping).
    confirmed_at: i64,
}

/// Why a key could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The issuer's key set holds no key with this kid (after a refetch, or throttled).
    UnknownKid,
    /// No usable set: never loaded, older than `max_stale`, or the refetch failed.
    Unavailable,
}

/// Result of `POST /jwks/refresh` for one issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualRefresh {
    Refreshed,
    Throttled,
    Failed,
}

impl ManualRefresh {
    pub fn label(self) -> &'static str {
        match self {
            ManualRefresh::Refreshed => "refreshed",
            ManualRefresh::Throttled => "throttled",
            ManualRefresh::Failed => "failed",
        }
    }
}

struct RefetchState {
    /// Last fetch triggered by an unknown kid (only these are throttled).
    last_kid_fetch: Option<Instant>,
    /// Whether the last fetch of any kind failed.
    last_failed: bool,
    etag: Option<String>,
    jwks_uri: Option<reqwest::Url>,
}

pub struct IssuerKeys {
    pub name: String,
    issuer: String,
    source: KeySource,
    cfg: JwksConfig,
    client: reqwest::Client,
    current: ArcSwapOption<Loaded>,
    ever_loaded: AtomicBool,
    fetch_lock: tokio::sync::Mutex<RefetchState>,
    /// Kids known to be missing, by a keyed 64-bit hash: an entry costs the same whatever
    /// the kid's length, so attacker-chosen kids buy no memory.
    missing_kids: moka::sync::Cache<u64, ()>,
    missing_kid_hasher: std::collections::hash_map::RandomState,
    metrics: IssuerMetrics,
    clock: Arc<dyn Clock>,
}

impl IssuerKeys {
    pub fn new(
        issuer: &IssuerConfig,
        cfg: &JwksConfig,
        metrics: IssuerMetrics,
        clock: Arc<dyn Clock>,
    ) -> Result<IssuerKeys, String> {
        let client = crate::fetch::client(issuer.ca_file.as_deref(), Duration::from_secs(10))
            .map_err(|e| format!("HTTP client for issuer {}: {e}", issuer.name))?;
        Ok(IssuerKeys {
            name: issuer.name.clone(),
            issuer: issuer.issuer.clone(),
            source: issuer.keys.clone(),
            cfg: cfg.clone(),
            client,
            current: ArcSwapOption::empty(),
            ever_loaded: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(RefetchState {
                last_kid_fetch: None,
                last_failed: false,
                etag: None,
                jwks_uri: match &issuer.keys {
                    KeySource::JwksUri(u) => Some(u.clone()),
                    KeySource::DiscoveryUrl(_) => None,
                },
            }),
            missing_kids: moka::sync::Cache::builder()
                .max_capacity(NEGATIVE_CACHE_ENTRIES)
                .time_to_live(cfg.min_refetch_interval)
                .build(),
            missing_kid_hasher: std::collections::hash_map::RandomState::new(),
            metrics,
            clock,
        })
    }

    /// Installs a key set from a JWKS document as if it had been fetched (benchmarks, and
    /// tests that need keys without a key manager). Returns the number of usable keys.
    pub fn load_document(&self, jwks: &[u8]) -> Result<usize, String> {
        let set = KeySet::parse(jwks)?;
        let n = set.len();
        self.metrics.keys.set(n as i64);
        self.current.store(Some(Arc::new(Loaded {
            set: Arc::new(set),
            confirmed_at: self.clock.now(),
        })));
        self.ever_loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// Whether a key set was ever loaded (readiness).
    pub fn has_keys(&self) -> bool {
        self.ever_loaded.load(Ordering::Acquire)
    }

    /// The current usable set, or `Unavailable` if none was loaded or it is too stale.
    pub fn current(&self) -> Result<Arc<KeySet>, KeyError> {
        let guard = self.current.load();
        match guard.as_ref() {
            Some(l) if self.clock.now() - l.confirmed_at <= self.cfg.max_stale.as_secs() as i64 => {
                Ok(l.set.clone())
            }
            _ => Err(KeyError::Unavailable),
        }
    }

    /// The key for `kid`, waiting for one shared, rate-limited refetch if it is unknown.
    pub async fn key_for_unknown_kid(&self, kid: &str) -> Result<Arc<VerifyKey>, KeyError> {
        let kid_hash = std::hash::BuildHasher::hash_one(&self.missing_kid_hasher, kid);
        if self.missing_kids.contains_key(&kid_hash) {
            return Err(KeyError::UnknownKid);
        }
        let wait = async {
            let mut state = self.fetch_lock.lock().await;
            // Someone else's fetch may have brought it while we waited.
            if let Some(k) = self.current()?.get(kid) {
                return Ok(k.clone());
            }
            let throttled = state
                .last_kid_fetch
                .is_some_and(|t| t.elapsed() < self.cfg.min_refetch_interval);
            if !throttled {
                state.last_kid_fetch = Some(Instant::now());
                // The result is reflected in `state.last_failed` and the current set.
                let _ = self.fetch_locked(&mut state, "unknown_kid").await;
            }
            match self.current()?.get(kid) {
                Some(k) => Ok(k.clone()),
                None if state.last_failed => Err(KeyError::Unavailable),
                None => {
                    self.missing_kids.insert(kid_hash, ());
                    Err(KeyError::UnknownKid)
                }
            }
        };
        tokio::time::timeout(REFETCH_WAIT, wait)
            .await
            .unwrap_or(Err(KeyError::Unavailable))
    }

    /// An operator-requested refresh (`POST /jwks/refresh`): shares the unknown-kid
    /// throttle, so it cannot be used to hammer the key manager.
    pub async fn refresh_requested(&self) -> ManualRefresh {
        let mut state = self.fetch_lock.lock().await;
        if state
            .last_kid_fetch
            .is_some_and(|t| t.elapsed() < self.cfg.min_refetch_interval)
        {
            return ManualRefresh::Throttled;
        }
        state.last_kid_fetch = Some(Instant::now());
        match self.fetch_locked(&mut state, "admin").await {
            Ok(_) => ManualRefresh::Refreshed,
            Err(()) => ManualRefresh::Failed,
        }
    }

    /// Background refresh loop: first fetch at once, then every `refresh_interval`
    /// (shortened by `Cache-Control: max-age`), with jittered backoff after failures.
    pub fn spawn_refresh(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("jwks", issuer = %self.name);
        tokio::spawn(
            async move {
                let mut failures: u32 = 0;
                loop {
                    let result = {
                        let mut state = self.fetch_lock.lock().await;
                        self.fetch_locked(&mut state, "refresh").await
                    };
                    let delay = match result {
                        Ok(max_age) => {
                            failures = 0;
                            let base = self.cfg.refresh_interval;
                            max_age.map_or(base, |m| m.clamp(MIN_REFRESH.min(base), base))
                        }
                        Err(()) => {
                            failures = failures.saturating_add(1);
                            crate::fetch::backoff(
                                failures,
                                Duration::from_secs(1),
                                self.cfg.refresh_interval.min(Duration::from_secs(60)),
                            )
                        }
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
            .instrument(span),
        )
    }

    /// One fetch under the lock: updates the set, metrics and logs. Returns the
    /// `Cache-Control: max-age`, if any.
    async fn fetch_locked(
        &self,
        state: &mut RefetchState,
        why: &'static str,
    ) -> Result<Option<Duration>, ()> {
        match self.fetch(state).await {
            Ok((outcome, max_age)) => {
                state.last_failed = false;
                let now = self.clock.now();
                match outcome {
                    Fetched::New(set) => {
                        tracing::info!(why, keys = set.len(), "JWKS loaded");
                        self.metrics.keys.set(set.len() as i64);
                        self.current.store(Some(Arc::new(Loaded {
                            set: Arc::new(set),
                            confirmed_at: now,
                        })));
                        self.metrics.fetch(FetchResult::Ok);
                    }
                    Fetched::NotModified => {
                        if let Some(old) = self.current.load_full() {
                            self.current.store(Some(Arc::new(Loaded {
                                set: old.set.clone(),
                                confirmed_at: now,
                            })));
                        }
                        self.metrics.fetch(FetchResult::NotModified);
                    }
                }
                self.ever_loaded.store(true, Ordering::Release);
                self.metrics.last_success.set(unix_now());
                Ok(max_age)
            }
            Err(error) => {
                state.last_failed = true;
                self.metrics.fetch(FetchResult::Error);
                let held = self.current.load().is_some();
                tracing::warn!(why, %error, keeping_last_good_set = held, "JWKS fetch failed");
                Err(())
            }
        }
    }

    async fn fetch(&self, state: &mut RefetchState) -> Result<(Fetched, Option<Duration>), String> {
        let uri = match &state.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let u = self.discover().await?;
                state.jwks_uri = Some(u.clone());
                u
            }
        };
        let mut req = self.client.get(uri);
        if self.current.load().is_some()
            && let Some(tag) = &state.etag
        {
            req = req.header(header::IF_NONE_MATCH, tag.as_str());
        }
        let resp = crate::fetch::send(req, &[reqwest::StatusCode::NOT_MODIFIED])
            .await
            .map_err(|e| format!("JWKS endpoint: {e}"))?;
        let max_age = max_age(resp.headers());
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            if self.current.load().is_some() {
                return Ok((Fetched::NotModified, max_age));
            }
            return Err("JWKS endpoint: answered 304 with no set held".into());
        }
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = crate::fetch::read_capped(resp, keyset::MAX_JWKS_BYTES)
            .await
            .map_err(|e| format!("JWKS endpoint: {e}"))?;
        let set = KeySet::parse(&body)?;
        if set.is_empty() {
            return Err("JWKS holds no usable key (see debug log for each key)".into());
        }
        state.etag = etag;
        Ok((Fetched::New(set), max_age))
    }

    async fn discover(&self) -> Result<reqwest::Url, String> {
        let KeySource::DiscoveryUrl(url) = &self.source else {
            return Err("no JWKS URI".into());
        };
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let discovery_error = |e: crate::fetch::FetchError| format!("discovery: {e}");
        let resp = crate::fetch::send(self.client.get(url.clone()), &[])
            .await
            .map_err(discovery_error)?;
        let body = crate::fetch::read_capped(resp, keyset::MAX_JWKS_BYTES)
            .await
            .map_err(discovery_error)?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("discovery document unreadable ({e})"))?;
        if doc.issuer != self.issuer {
            return Err("discovery document names a different issuer than the config".into());
        }
        let uri = reqwest::Url::parse(&doc.jwks_uri)
            .map_err(|e| format!("discovery jwks_uri is not a URL ({e})"))?;
        if !matches!(uri.scheme(), "http" | "https") {
            return Err("discovery jwks_uri is not http(s)".into());
        }
        Ok(uri)
    }
}

enum Fetched {
    New(KeySet),
    NotModified,
}

fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').find_map(|d| {
        let d = d.trim();
        let (name, v) = d.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            v.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=120".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }
}
