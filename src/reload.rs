//! Live reload (DESIGN §9): a new config becomes a new generation without dropping a
//! connection. `SIGHUP` and `--watch` (the file's content hash, every 2 s, so a ConfigMap's
//! symlink swap is seen) call [`Reloader::reload_from`].
//!
//! - The new file is validated in full first; an invalid one changes nothing and is logged
//!   with every problem. A change to a restart-only key refuses the whole reload, naming it.
//! - An issuer whose key source is unchanged (name, `iss`, JWKS or discovery URL, CA file)
//!   keeps its keys and refresh task, whatever else of it changed; a new one gets a key set
//!   of its own (503 `keys_unavailable` for its tokens until the first fetch — the
//!   reload does not wait); a removed one's refresh task stops.
//! - The new generation gets its own authenticator: a verdict cached under another
//!   generation is a miss, the per-connection repeat included.
//! - `[revocation]` settings swap at once; the list survives; a raised
//!   `max_token_lifetime_s` keeps the old bound for older tokens (§4).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::admin::IssuerList;
use crate::auth::{AuthMetrics, Authenticator};
use crate::clock::Clock;
use crate::config::{Config, ConfigError, ConfigErrors, IssuerConfig};
use crate::jwks::{IssuerKeys, JwksMetrics};
use crate::metrics::{Labeled, Metrics};
use crate::proxy::Proxy;
use crate::revocation::Revocation;

/// How often `--watch` hashes the config file.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The `result` label of `jwtgate_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    Error,
}

impl ReloadResult {
    const ALL: [ReloadResult; 2] = [ReloadResult::Ok, ReloadResult::Error];

    fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
    }
}

/// Reads the config again, as at start (the same file, environment and command-line
/// overrides).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// One issuer's key set and its refresh task.
struct KeyEntry {
    cfg: IssuerConfig,
    keys: Arc<IssuerKeys>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Configured at start (and kept since): readiness waits for it.
    gating: bool,
}

struct State {
    config: Arc<Config>,
    generation: u64,
    keys: Vec<KeyEntry>,
    /// Set once the background work runs: new refresh tasks follow it.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

pub struct Reloader {
    /// One reload at a time, from reading the file to installing it: a SIGHUP and a
    /// `--watch` change cannot interleave and leave the older content in force.
    serial: Mutex<()>,
    state: Mutex<State>,
    proxy: Arc<Proxy>,
    revocation: Option<Arc<Revocation>>,
    clock: Arc<dyn Clock>,
    jwks_metrics: JwksMetrics,
    auth_metrics: AuthMetrics,
    /// Every issuer (admin's `POST /jwks/refresh`) and the ones readiness waits for.
    all_issuers: IssuerList,
    gating_issuers: IssuerList,
    reloads: Labeled<ReloadResult>,
    last_success: prometheus::IntGauge,
}

/// What a reload needs from the app as built.
pub struct Parts {
    pub config: Arc<Config>,
    pub keys: Vec<Arc<IssuerKeys>>,
    pub proxy: Arc<Proxy>,
    pub revocation: Option<Arc<Revocation>>,
    pub clock: Arc<dyn Clock>,
    pub jwks_metrics: JwksMetrics,
    pub auth_metrics: AuthMetrics,
    pub all_issuers: IssuerList,
    pub gating_issuers: IssuerList,
}

impl Reloader {
    pub fn new(parts: Parts, metrics: &Metrics) -> Reloader {
        let keys = parts
            .config
            .issuers
            .iter()
            .zip(parts.keys)
            .map(|(cfg, keys)| KeyEntry {
                cfg: cfg.clone(),
                keys,
                task: None,
                gating: true,
            })
            .collect();
        Reloader {
            serial: Mutex::new(()),
            state: Mutex::new(State {
                config: parts.config,
                generation: 1,
                keys,
                stop: None,
            }),
            proxy: parts.proxy,
            revocation: parts.revocation,
            clock: parts.clock,
            jwks_metrics: parts.jwks_metrics,
            auth_metrics: parts.auth_metrics,
            all_issuers: parts.all_issuers,
            gating_issuers: parts.gating_issuers,
            reloads: metrics.labeled(
                "jwtgate_config_reloads_total",
                "Config reloads by result (an error changes nothing).",
                "result",
                &ReloadResult::ALL,
                ReloadResult::label,
            ),
            last_success: metrics.gauge(
                "jwtgate_config_last_reload_success_timestamp_seconds",
                "When the config in force was loaded (start or last successful reload).",
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts every issuer's key refresh; they and the ones later reloads add stop with
    /// `stop`.
    pub fn start(&self, stop: tokio::sync::watch::Receiver<bool>) {
        self.last_success.set(crate::clock::unix_now());
        let mut state = self.lock();
        for e in &mut state.keys {
            e.task = Some(e.keys.clone().spawn_refresh(stop.clone()));
        }
        state.stop = Some(stop);
    }

    /// The refresh tasks, for the shutdown to wait on.
    pub fn take_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.lock()
            .keys
            .iter_mut()
            .filter_map(|e| e.task.take())
            .collect()
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Loads with `loader` and applies the result; counts and logs the outcome either way.
    pub fn reload_from(&self, loader: &Loader, why: &str) -> Result<u64, ConfigErrors> {
        let _serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let result = loader()
            .and_then(|c| c.check_host().map(|()| c))
            .and_then(|c| self.apply(c));
        match &result {
            Ok(generation) => tracing::info!(generation, trigger = why, "config reloaded"),
            Err(errors) => {
                self.reloads.inc(ReloadResult::Error);
                for e in &errors.0 {
                    tracing::error!(key = %e.key, trigger = why, "config reload refused: {e}");
                }
            }
        }
        result
    }

    /// Applies a validated config as the next generation, or refuses it whole (restart-only
    /// keys changed, or a new issuer's or feed's client cannot be built). Refusals are not
    /// counted here (see [`Reloader::reload_from`]).
    pub fn reload(&self, next: Config) -> Result<u64, ConfigErrors> {
        let _serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        self.apply(next)
    }

    /// Everything that can fail comes first (restart-only keys, new issuers' clients, the
    /// revocation feed's client); only then is anything changed.
    fn apply(&self, next: Config) -> Result<u64, ConfigErrors> {
        let mut state = self.lock();
        let problems = restart_only_changes(&state.config, &next);
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let fresh = self.fresh_keys(&state, &next)?;
        if let (Some(rev), Some(cfg)) = (&self.revocation, &next.revocation) {
            // Builds the new poller before changing anything: an error leaves it as it was.
            rev.reload(cfg.clone(), next.max_leeway_s())
                .map_err(|e| one("revocation.feed_url", e))?;
        }
        let entries = self.key_entries(&mut state, &next, fresh);
        let generation = state.generation + 1;
        let keys: Vec<Arc<IssuerKeys>> = entries.iter().map(|e| e.keys.clone()).collect();
        let auth = Arc::new(Authenticator::for_generation(
            &next,
            &keys,
            self.clock.clone(),
            self.auth_metrics.clone(),
            generation,
        ));
        self.proxy
            .install(self.proxy.generation(generation, &next, auth));
        self.all_issuers.store(Arc::new(keys));
        self.gating_issuers.store(Arc::new(
            entries
                .iter()
                .filter(|e| e.gating)
                .map(|e| e.keys.clone())
                .collect(),
        ));
        // Issuers no longer configured stop refreshing; their series go unless a new
        // entry (same name, other key source) reports under the name again.
        for old in std::mem::replace(&mut state.keys, entries) {
            if let Some(task) = old.task {
                task.abort();
            }
            if !state.keys.iter().any(|e| e.cfg.name == old.cfg.name) {
                self.jwks_metrics.forget(&old.cfg.name);
            }
        }
        state.config = Arc::new(next);
        state.generation = generation;
        self.reloads.inc(ReloadResult::Ok);
        self.last_success.set(crate::clock::unix_now());
        Ok(generation)
    }

    /// Key sets for `next`'s issuers that no current entry can serve (not started yet).
    fn fresh_keys(
        &self,
        state: &State,
        next: &Config,
    ) -> Result<Vec<(IssuerConfig, Arc<IssuerKeys>)>, ConfigErrors> {
        let mut fresh = Vec::new();
        for (i, cfg) in next.issuers.iter().enumerate() {
            if state.keys.iter().any(|e| same_keys(&e.cfg, cfg)) {
                continue;
            }
            let keys = IssuerKeys::new(
                cfg,
                &next.jwks,
                self.jwks_metrics.issuer(&cfg.name),
                self.clock.clone(),
            )
            .map_err(|e| one(format!("issuers[{i}]"), e))?;
            fresh.push((cfg.clone(), Arc::new(keys)));
        }
        Ok(fresh)
    }

    /// The key sets of `next`'s issuers: an unchanged issuer's entry moves over; a new one
    /// takes its fresh key set and starts refreshing. Old entries not taken stay in
    /// `state` (the caller stops them). Cannot fail.
    fn key_entries(
        &self,
        state: &mut State,
        next: &Config,
        mut fresh: Vec<(IssuerConfig, Arc<IssuerKeys>)>,
    ) -> Vec<KeyEntry> {
        let mut entries = Vec::new();
        for cfg in &next.issuers {
            if let Some(pos) = state.keys.iter().position(|e| same_keys(&e.cfg, cfg)) {
                let mut entry = state.keys.remove(pos);
                entry.cfg = cfg.clone();
                entries.push(entry);
                continue;
            }
            let Some(pos) = fresh.iter().position(|(c, _)| c == cfg) else {
                continue;
            };
            let (cfg, keys) = fresh.remove(pos);
            let task = state
                .stop
                .as_ref()
                .map(|stop| keys.clone().spawn_refresh(stop.clone()));
            entries.push(KeyEntry {
                cfg,
                keys,
                task,
                gating: false,
            });
        }
        entries
    }
}

/// Two issuer configs share a key set when what the key set is made of is the same: the
/// name (its metric label), the `iss` value, where the keys come from and the CA file.
/// Audiences, algorithms, `typ`, leeway and profile are checked per token, so changing them
/// keeps the keys.
fn same_keys(a: &IssuerConfig, b: &IssuerConfig) -> bool {
    a.name == b.name && a.issuer == b.issuer && a.keys == b.keys && a.ca_file == b.ca_file
}

fn one(key: impl Into<String>, message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        message: message.into(),
    }])
}

/// The restart-only keys (DESIGN §9) that differ, each named. The listeners, the upstream,
/// the snapshot path and whether revocation is on at all; also `[jwks]` and the connection
/// limits, which shape tasks and listeners made at start, and `[access_log]` / `[tracing]`.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<ConfigError> {
    let restart = "restart-only: the reload was refused as a whole; restart jwtgate to change it";
    let mut out = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            out.push(ConfigError {
                key: key.to_owned(),
                message: restart.to_owned(),
            });
        }
    };
    let (o, n) = (&old.server, &new.server);
    check("server.listen", o.listen == n.listen);
    check("server.admin_listen", o.admin_listen == n.admin_listen);
    // The files' contents are re-read as they change; which files is fixed at start.
    check(
        "server.admin_tls_cert",
        o.admin_tls_cert == n.admin_tls_cert,
    );
    check("server.admin_tls_key", o.admin_tls_key == n.admin_tls_key);
    check(
        "server.shutdown_delay_s",
        o.shutdown_delay == n.shutdown_delay,
    );
    check("server.drain_timeout_s", o.drain_timeout == n.drain_timeout);
    check("upstream", old.upstream == new.upstream);
    check("jwks", old.jwks == new.jwks);
    // Their writer threads, keys and exporter are made at start.
    check("access_log", old.access_log == new.access_log);
    check("tracing", old.tracing == new.tracing);
    let (o, n) = (&old.limits, &new.limits);
    check(
        "limits.max_header_bytes",
        o.max_header_bytes == n.max_header_bytes,
    );
    check(
        "limits.header_read_timeout_ms",
        o.header_read_timeout == n.header_read_timeout,
    );
    check("limits.idle_timeout_ms", o.idle_timeout == n.idle_timeout);
    check(
        "limits.max_connections",
        o.max_connections == n.max_connections,
    );
    check(
        "limits.h2_max_concurrent_streams",
        o.h2_max_concurrent_streams == n.h2_max_concurrent_streams,
    );
    match (&old.revocation, &new.revocation) {
        (Some(o), Some(n)) => {
            check(
                "revocation.snapshot_path",
                o.snapshot_path == n.snapshot_path,
            );
            // The follower's connection and cursor are made at start.
            check("revocation.stream", o.stream == n.stream);
        }
        (None, None) => {}
        _ => check("revocation", false),
    }
    out
}

/// `--watch`: reloads when the file's content changes (a hash every [`WATCH_EVERY`], so a
/// ConfigMap's symlink swap is seen whatever the timestamps say) until `stop`.
pub async fn watch_file(
    reloader: Arc<Reloader>,
    path: std::path::PathBuf,
    loader: Arc<Loader>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let hash = |p: &std::path::Path| {
        std::fs::read(p).ok().map(|b| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b)
                .as_ref()
                .to_vec()
        })
    };
    let mut last = hash(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = stop.changed() => return,
        }
        let now = hash(&path);
        if now.is_some() && now != last {
            last = now;
            let _ = reloader.reload_from(&loader, "watch");
        }
    }
}
