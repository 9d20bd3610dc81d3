//! Revocation without token persistence: one list merged from every source (native poll,
//! WSO2 poll, native push, WSO2 notify), checked on every request — verified-cache hits
//! included — kept in a durable snapshot, and pruned once nothing it matches can be alive.
//!
//! Invariants:
//! - records only accumulate until pruned; `reset: true` from a feed merges, never deletes;
//! - the snapshot is restored before the first request is served; a corrupt one is moved
//!   aside and the list is not ready until a source has synced;
//! - readers never block: see [`list`];
//! - staleness counts poll sources and the fleet stream only; a push-only configuration
//!   is never stale;
//! - in a relay, accepted records go to an [`Outlet`] (the fleet stream) instead of the
//!   local list, and count as applied only once it took them.

pub mod feed;
pub mod list;
pub mod record;
pub mod snapshot;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tracing::Instrument as _;

use crate::clock::Clock;
use crate::config::{OnStale, RevocationConfig};
use crate::metrics::{Labeled, Metrics};
use crate::reject::{Reason, Reject};
pub use list::{Facts, RevocationList, TokenFingerprints};
pub use record::{Kind, Record};

/// Where revocation records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationSource {
    NativePoll,
    Wso2Poll,
    Push,
    Notify,
    /// The fleet stream (DESIGN §10).
    Stream,
}

impl RevocationSource {
    /// Every source, for registering the metric children.
    pub const ALL: [RevocationSource; 5] = [
        RevocationSource::NativePoll,
        RevocationSource::Wso2Poll,
        RevocationSource::Push,
        RevocationSource::Notify,
        RevocationSource::Stream,
    ];

    /// The `source` label.
    pub fn label(self) -> &'static str {
        match self {
            RevocationSource::NativePoll => "native_poll",
            RevocationSource::Wso2Poll => "wso2_poll",
            RevocationSource::Push => "push",
            RevocationSource::Notify => "notify",
            RevocationSource::Stream => "stream",
        }
    }
}

/// What became of revocation records or events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Applied,
    Rejected,
    Ignored,
    Unauthorized,
}

impl EventResult {
    /// Every result, for registering the metric children.
    pub const ALL: [EventResult; 4] = [
        EventResult::Applied,
        EventResult::Rejected,
        EventResult::Ignored,
        EventResult::Unauthorized,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            EventResult::Applied => "applied",
            EventResult::Rejected => "rejected",
            EventResult::Ignored => "ignored",
            EventResult::Unauthorized => "unauthorized",
        }
    }
}

/// The revocation families (see README "Metrics").
pub struct RevocationMetrics {
    held: prometheus::IntGaugeVec,
    pruned: Labeled<Kind>,
    syncs: prometheus::IntCounterVec,
    events: prometheus::IntCounterVec,
    last_sync: prometheus::IntGauge,
    stale: prometheus::IntGauge,
}

impl RevocationMetrics {
    /// Registers the families, every child at 0.
    pub fn register(m: &Metrics) -> RevocationMetrics {
        let held = m.gauge_vec(
            "jwtgate_revocations",
            "Revocation records held, by kind.",
            &["kind"],
        );
        for k in Kind::ALL {
            held.with_label_values(&[k.label()]).set(0);
        }
        let syncs = m.counter_vec(
            "jwtgate_revocation_syncs_total",
            "Revocation feed polls by source and result.",
            &["source", "result"],
        );
        for s in [
            RevocationSource::NativePoll,
            RevocationSource::Wso2Poll,
            RevocationSource::Stream,
        ] {
            for result in ["ok", "error"] {
                syncs.with_label_values(&[s.label(), result]);
            }
        }
        let events = m.counter_vec(
            "jwtgate_revocation_events_total",
            "Revocation records and events received, by source and what became of them.",
            &["source", "result"],
        );
        for s in RevocationSource::ALL {
            for e in EventResult::ALL {
                events.with_label_values(&[s.label(), e.label()]);
            }
        }
        RevocationMetrics {
            held,
            pruned: m.labeled(
                "jwtgate_revocations_pruned_total",
                "Revocation records pruned because nothing they match can still be valid.",
                "kind",
                &Kind::ALL,
                Kind::label,
            ),
            syncs,
            events,
            last_sync: m.gauge(
                "jwtgate_revocation_last_sync_timestamp_seconds",
                "Unix time of the last successful revocation feed poll (0 = never).",
            ),
            stale: m.gauge(
                "jwtgate_revocation_stale",
                "1 while the list is stale: never restored or synced, or every poll source failing for longer than max_sync_age_s.",
            ),
        }
    }

    /// Counts `n` records or events from `source` with `result`.
    pub fn event(&self, source: RevocationSource, result: EventResult, n: u64) {
        self.events
            .with_label_values(&[source.label(), result.label()])
            .inc_by(n);
    }

    fn sync(&self, source: RevocationSource, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.syncs
            .with_label_values(&[source.label(), result])
            .inc();
    }
}

/// Where a relay sends the records its sources accept (DESIGN §10): the fleet stream. A
/// push is answered, and a poll counts as synced, only once the outlet took its records.
pub trait Outlet: Send + Sync {
    /// Takes records from `source`; `Ok` is how many were new to the outlet.
    fn deliver(
        &self,
        source: RevocationSource,
        records: Vec<Record>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, String>> + Send + '_>>;

    /// Counts `n` records from `source` refused before they reached the outlet.
    fn rejected(&self, source: RevocationSource, n: u64);
}

/// How often the cleanup sweep runs.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// How long changes are batched before the snapshot is written.
const SNAPSHOT_DEBOUNCE: Duration = Duration::from_millis(200);
/// How often a failed snapshot write is retried.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);

/// The `max_token_lifetime_s` in force, and a lower one still owed to older tokens
/// (DESIGN §4). Rules are pruned `max + leeway` after they were made, which is safe only
/// because no token lives longer than the bound. After the bound is raised, a token issued
/// before the raise is still held to the old bound: rules pruned under it cannot come back
/// to life. Kept in the snapshot, so a raise across a restart counts too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifetimeBound {
    /// `max_token_lifetime_s` in force.
    pub max: i64,
    /// Since when (Unix seconds).
    pub since: i64,
    /// `(old bound, raised_at)`: tokens issued before `raised_at` may not live longer than
    /// the old bound.
    pub earlier: Option<(i64, i64)>,
}

impl LifetimeBound {
    /// The bound in force now, given the one stored (if any) and the one configured. A
    /// raise keeps the lower bound for tokens issued before it (two raises in a row keep
    /// the lowest, from the latest raise on: stricter, never looser); an earlier bound is
    /// forgotten once every token it covered has expired.
    pub fn carry(
        stored: Option<LifetimeBound>,
        configured: i64,
        now: i64,
        leeway: i64,
    ) -> LifetimeBound {
        let Some(s) = stored else {
            return LifetimeBound {
                max: configured,
                since: now,
                earlier: None,
            };
        };
        let earlier = s
            .earlier
            .filter(|(old, raised)| raised.saturating_add(*old).saturating_add(leeway) >= now);
        if configured > s.max {
            let old = earlier.map_or(s.max, |(o, _)| o.min(s.max));
            LifetimeBound {
                max: configured,
                since: now,
                earlier: Some((old, now)),
            }
        } else {
            LifetimeBound {
                max: configured,
                since: if configured == s.max { s.since } else { now },
                earlier: earlier.filter(|(old, _)| *old < configured),
            }
        }
    }

    /// A token issued at `iat` and expiring at `exp` is within the bound.
    pub fn allows(&self, iat: i64, exp: i64) -> bool {
        let lifetime = exp.saturating_sub(iat);
        lifetime <= self.max
            && self
                .earlier
                .is_none_or(|(old, raised)| iat >= raised || lifetime <= old)
    }
}

/// The revocation config in force and the lifetime bound it implies: replaced as a whole
/// by a reload (DESIGN §9), read per request without a lock.
#[derive(Debug)]
pub struct Settings {
    pub cfg: RevocationConfig,
    pub bound: LifetimeBound,
}

pub struct Revocation {
    /// Shared with the snapshot writer, which streams it shard by shard.
    list: Arc<RevocationList>,
    settings: arc_swap::ArcSwap<Settings>,
    /// The feed poll task, replaced when a reload changes the feed.
    poll_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The shutdown signal the background tasks follow (set by `spawn_tasks`).
    stop: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    clock: Arc<dyn Clock>,
    metrics: RevocationMetrics,
    /// Largest `leeway_s` of any issuer: pruning waits this much longer (a reload sets it).
    leeway: AtomicI64,
    cursor: Mutex<Option<String>>,
    /// Restored from a snapshot, or synced once from any source.
    ready: AtomicBool,
    started_at: i64,
    /// Clock time of the last successful poll (0 = none yet).
    last_poll_ok: AtomicI64,
    stale: AtomicBool,
    dirty: AtomicBool,
    dirty_signal: tokio::sync::Notify,
    /// A snapshot was restored at start.
    restored: bool,
    /// Set in a relay: accepted records go there instead of into `list`.
    outlet: std::sync::OnceLock<Arc<dyn Outlet>>,
}

/// What a start finds on disk.
struct Start {
    list: RevocationList,
    cursor: Option<String>,
    stored_bound: Option<LifetimeBound>,
    /// Restored, or nothing to wait for (push only, nothing ever held).
    ready: bool,
    restored: bool,
}

/// Restores the snapshot, if any. A corrupt one is moved aside and the list starts empty,
/// not ready until a source has synced.
fn restore(cfg: &RevocationConfig, now: i64) -> Start {
    let fresh = |ready| Start {
        list: RevocationList::new(),
        cursor: None,
        stored_bound: None,
        ready,
        restored: false,
    };
    // With nothing to wait for (push only), ready at once. The stream's follower decides
    // for itself (DESIGN §10), so a restored snapshot does not make a follower ready.
    let nothing_to_sync = cfg.feed.is_none() && cfg.stream.is_none();
    match cfg.snapshot_path.as_deref().map(snapshot::load) {
        None => fresh(nothing_to_sync),
        Some(Ok(None)) => {
            tracing::info!("no revocation snapshot yet; waiting for a first sync");
            // Nothing was ever held here: with only push as a source, nothing to wait for.
            fresh(nothing_to_sync)
        }
        Some(Ok(Some(restored))) => {
            tracing::info!(
                records = restored.list.len(),
                "revocation snapshot restored"
            );
            Start {
                list: restored.list,
                cursor: restored.cursor,
                stored_bound: restored.bound,
                ready: cfg.stream.is_none(),
                restored: true,
            }
        }
        Some(Err(e)) => {
            let aside = cfg
                .snapshot_path
                .as_deref()
                .and_then(|p| snapshot::move_aside(p, now));
            tracing::error!(
                error = %e,
                moved_to = ?aside,
                "revocation snapshot unusable; moved aside, not ready until a source syncs"
            );
            fresh(false)
        }
    }
}

impl Revocation {
    /// Restores the snapshot (if any) and returns the service, ready or not.
    pub fn open(
        cfg: RevocationConfig,
        clock: Arc<dyn Clock>,
        metrics: &Metrics,
        leeway: i64,
    ) -> Revocation {
        let now = clock.now();
        let Start {
            list,
            cursor,
            stored_bound,
            ready,
            restored,
        } = restore(&cfg, now);
        let bound =
            LifetimeBound::carry(stored_bound, cfg.max_token_lifetime_s as i64, now, leeway);
        if let Some((old, raised_at)) = bound.earlier {
            tracing::info!(
                old_max_token_lifetime_s = old,
                raised_at,
                "max_token_lifetime_s was raised: tokens issued before the raise keep the old bound"
            );
        }
        let bound_changed = stored_bound != Some(bound);
        let r = Revocation {
            list: Arc::new(list),
            settings: arc_swap::ArcSwap::from_pointee(Settings { cfg, bound }),
            poll_task: Mutex::new(None),
            stop: Mutex::new(None),
            clock,
            metrics: RevocationMetrics::register(metrics),
            leeway: AtomicI64::new(leeway),
            cursor: Mutex::new(cursor),
            ready: AtomicBool::new(ready),
            started_at: now,
            last_poll_ok: AtomicI64::new(0),
            stale: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            dirty_signal: tokio::sync::Notify::new(),
            restored,
            outlet: std::sync::OnceLock::new(),
        };
        r.update_gauges();
        if bound_changed {
            r.mark_dirty();
        }
        if !ready {
            // Until restored or synced, the list is stale: the proxy answers 503 under
            // `on_stale = "reject"`, not only `/readyz`. A cold start is routine (the first
            // poll follows at once): info, not a warning.
            r.stale.store(true, Ordering::Release);
            r.metrics.stale.set(1);
            tracing::info!(
                on_stale = ?r.settings().cfg.on_stale,
                "revocation list not restored or synced yet: stale until a source syncs"
            );
        }
        r
    }

    /// The revocation metric families (push and notify are counted by `admin`).
    pub fn metrics(&self) -> &RevocationMetrics {
        &self.metrics
    }

    /// The config in force and its lifetime bound (swapped whole by a reload).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn list(&self) -> &RevocationList {
        &self.list
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The list cannot be trusted to hold every revocation (DESIGN §5): it was neither
    /// restored nor synced yet (cold start with the feed down, a corrupt snapshot moved
    /// aside), or every poll source has failed for longer than `max_sync_age_s`.
    pub fn is_stale(&self) -> bool {
        if !self.is_ready() {
            return true;
        }
        let settings = self.settings.load();
        if settings.cfg.feed.is_none() && settings.cfg.stream.is_none() {
            return false;
        }
        let last = self
            .last_poll_ok
            .load(Ordering::Acquire)
            .max(self.started_at);
        self.clock.now() - last > settings.cfg.max_sync_age.as_secs() as i64
    }

    /// Refuses a record that reaches too far into the future (DESIGN §4): a `revoked_at`
    /// past now + leeway, or a `jti` record whose `exp` is past now + the lifetime bound.
    /// A seconds/milliseconds slip upstream must not lock a user out for good.
    pub fn screen(&self, index: usize, record: &Record) -> Result<(), record::RecordError> {
        let now = self.clock.now();
        let problem = match record {
            Record::Rule { revoked_at, .. }
                if *revoked_at > now.saturating_add(self.leeway.load(Ordering::Relaxed)) =>
            {
                "revoked_at is in the future (seconds, not milliseconds?)"
            }
            Record::Id { exp, .. }
                if *exp
                    > now.saturating_add(self.settings.load().cfg.max_token_lifetime_s as i64) =>
            {
                "exp is later than now + max_token_lifetime_s (seconds, not milliseconds?)"
            }
            _ => return Ok(()),
        };
        Err(record::RecordError {
            index,
            message: problem.to_owned(),
        })
    }

    /// Splits records into the admissible ones and the errors of the others (feeds).
    pub fn screen_all(&self, records: Vec<Record>) -> (Vec<Record>, Vec<record::RecordError>) {
        let mut errors = Vec::new();
        let kept = records
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| match self.screen(i, &r) {
                Ok(()) => Some(r),
                Err(e) => {
                    errors.push(e);
                    None
                }
            })
            .collect();
        (kept, errors)
    }

    /// The per-request check: revoked → 401; stale with `on_stale = reject` → 503.
    pub fn check(&self, fps: &TokenFingerprints, iat: Option<i64>) -> Result<(), Reject> {
        if self.list.is_revoked_fps(fps, iat) {
            return Err(Reject::new(Reason::Revoked, "token has been revoked"));
        }
        if self.settings.load().cfg.on_stale == OnStale::Reject && self.is_stale() {
            self.note_stale(true);
            return Err(Reject::new(
                Reason::RevocationStale,
                "revocation list is out of date",
            ));
        }
        Ok(())
    }

    /// Merges records from `source` and schedules a snapshot write; the first source to
    /// deliver makes the list ready (the stream's follower uses [`Revocation::merge`]).
    pub fn apply(&self, source: RevocationSource, records: &[Record]) -> usize {
        let new = self.merge(source, records);
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.note_stale(self.is_stale());
        }
        new
    }

    /// Merges records from `source` without touching readiness.
    pub fn merge(&self, source: RevocationSource, records: &[Record]) -> usize {
        let new = self.list.apply(records);
        self.metrics
            .event(source, EventResult::Applied, records.len() as u64);
        if new > 0 {
            self.mark_dirty();
        }
        self.update_gauges();
        new
    }

    /// What a source accepted: into the relay's outlet when one is set (`Err` when it
    /// could not take them: nothing counts as applied), else into the list.
    pub async fn accept(
        &self,
        source: RevocationSource,
        records: Vec<Record>,
    ) -> Result<usize, String> {
        match self.outlet.get() {
            Some(outlet) => outlet.deliver(source, records).await,
            None => Ok(self.apply(source, &records)),
        }
    }

    /// Counts `n` records or events from `source` refused as malformed (and tells the
    /// relay's outlet, which counts them too).
    pub fn rejected(&self, source: RevocationSource, n: u64) {
        self.metrics.event(source, EventResult::Rejected, n);
        if let Some(outlet) = self.outlet.get() {
            outlet.rejected(source, n);
        }
    }

    /// Makes this a relay's source side: see [`Outlet`]. Set once, before any source runs.
    pub fn set_outlet(&self, outlet: Arc<dyn Outlet>) {
        let _ = self.outlet.set(outlet);
    }

    /// Whether a snapshot was restored at start.
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The stream's follower: ready once caught up (or after the grace period with a
    /// restored snapshot and the stream unreachable).
    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.note_stale(self.is_stale());
        }
    }

    /// The stream's follower: every record the source held at `at` (Unix seconds, not
    /// later than now) is applied here.
    pub fn synced_at(&self, source: RevocationSource, at: i64) {
        let at = at.min(self.clock.now());
        self.last_poll_ok.fetch_max(at, Ordering::AcqRel);
        self.metrics
            .last_sync
            .set(self.last_poll_ok.load(Ordering::Acquire));
        self.metrics.sync(source, true);
        self.note_stale(self.is_stale());
    }

    /// Clock time of the last successful sync, if any (a relay's heartbeat carries it).
    pub fn last_sync(&self) -> Option<i64> {
        Some(self.last_poll_ok.load(Ordering::Acquire)).filter(|t| *t > 0)
    }

    /// Re-evaluates staleness now (the gauge and the log line), for a follower's ticks.
    pub fn refresh_stale(&self) {
        self.note_stale(self.is_stale());
    }

    /// Records a successful poll (staleness and readiness).
    pub fn poll_succeeded(&self, source: RevocationSource) {
        self.last_poll_ok.store(self.clock.now(), Ordering::Release);
        self.ready.store(true, Ordering::Release);
        self.metrics.sync(source, true);
        self.metrics.last_sync.set(crate::clock::unix_now());
        self.note_stale(false);
    }

    pub fn poll_failed(&self, source: RevocationSource) {
        self.metrics.sync(source, false);
        self.note_stale(self.is_stale());
    }

    fn note_stale(&self, stale: bool) {
        let was = self.stale.swap(stale, Ordering::AcqRel);
        self.metrics.stale.set(i64::from(stale));
        if stale && !was {
            let settings = self.settings.load();
            tracing::warn!(
                max_sync_age_s = settings.cfg.max_sync_age.as_secs(),
                on_stale = ?settings.cfg.on_stale,
                "revocation list is stale: every poll source has failed for longer than max_sync_age_s"
            );
        } else if !stale && was {
            tracing::info!("revocation list is in sync again");
        }
    }

    pub fn cursor(&self) -> Option<String> {
        self.cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_cursor(&self, cursor: Option<String>) {
        let mut c = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        if *c != cursor {
            *c = cursor;
            drop(c);
            self.mark_dirty();
        }
    }

    fn mark_dirty(&self) {
        if self.settings.load().cfg.snapshot_path.is_some() {
            self.dirty.store(true, Ordering::Release);
            self.dirty_signal.notify_one();
        }
    }

    fn update_gauges(&self) {
        for k in Kind::ALL {
            self.metrics
                .held
                .with_label_values(&[k.label()])
                .set(self.list.count(k));
        }
    }

    /// One cleanup sweep at the clock's current time.
    pub fn prune_now(&self) -> [u64; 3] {
        let pruned = self.list.prune(
            self.clock.now(),
            self.leeway.load(Ordering::Relaxed),
            self.settings.load().cfg.max_token_lifetime_s as i64,
        );
        if pruned.iter().any(|n| *n > 0) {
            for k in Kind::ALL {
                self.metrics.pruned.inc_by(k, pruned[k as usize]);
            }
            tracing::debug!(?pruned, "revocation records pruned");
            self.mark_dirty();
        }
        self.update_gauges();
        pruned
    }

    /// Writes the snapshot now if anything changed since the last write.
    pub async fn flush(&self) {
        let settings = self.settings.load_full();
        let Some(path) = settings.cfg.snapshot_path.clone() else {
            return;
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        // Encoded straight into the file off the runtime, one shard at a time.
        let (list, cursor) = (self.list.clone(), self.cursor());
        let written = tokio::task::spawn_blocking(move || {
            snapshot::save(&path, &list, cursor.as_deref(), &settings.bound)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "revocation snapshot not written; retrying every 5 s");
                self.dirty.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot task failed");
                self.dirty.store(true, Ordering::Release);
            }
        }
    }

    /// The feed poller, if a feed is configured (its HTTP client is built here, so a bad
    /// CA file is a start error, not a silently missing source).
    pub fn poller(self: &Arc<Self>) -> Result<Option<feed::Poller>, String> {
        match &self.settings.load().cfg.feed {
            None => Ok(None),
            Some(feed) => feed::Poller::new(self.clone(), feed.clone()).map(Some),
        }
    }

    /// Applies a reloaded `[revocation]` (DESIGN §9): bounds, `on_stale`, `require_jti`,
    /// push and notify credentials at once; a changed feed restarts the poll task. A raised
    /// `max_token_lifetime_s` keeps the old bound for tokens issued before the reload
    /// (§4), and the snapshot records it. The list itself is untouched. `Err` (a feed
    /// client that cannot be built) changes nothing.
    pub fn reload(self: &Arc<Self>, cfg: RevocationConfig, leeway: i64) -> Result<(), String> {
        let old = self.settings.load_full();
        let feed_changed = old.cfg.feed != cfg.feed;
        let poller = match (&cfg.feed, feed_changed) {
            (Some(feed), true) => Some(feed::Poller::new(self.clone(), feed.clone())?),
            _ => None,
        };
        let bound = LifetimeBound::carry(
            Some(old.bound),
            cfg.max_token_lifetime_s as i64,
            self.clock.now(),
            leeway,
        );
        let bound_changed = bound != old.bound;
        // Pruning follows the new largest leeway at once: a raise keeps records longer,
        // exactly as long as tokens are now accepted past their exp.
        self.leeway.store(leeway, Ordering::Relaxed);
        self.settings.store(Arc::new(Settings { cfg, bound }));
        if bound_changed {
            self.mark_dirty();
        }
        if feed_changed {
            self.start_polling(poller);
        }
        Ok(())
    }

    /// Replaces the poll task (none: push only from now on).
    fn start_polling(self: &Arc<Self>, poller: Option<feed::Poller>) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut task = self.poll_task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = task.take() {
            old.abort();
        }
        if let (Some(poller), Some(stop)) = (poller, stop) {
            *task = Some(tokio::spawn(
                poller
                    .run(stop)
                    .instrument(tracing::info_span!("revocation_feed")),
            ));
        }
    }

    /// Background tasks: the poll loop (given by [`Revocation::poller`]), the snapshot
    /// writer, pruning.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        poller: Option<feed::Poller>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop.clone());
        self.start_polling(poller);
        let me = self.clone();
        let mut s = stop.clone();
        tasks.push(tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = me.dirty_signal.notified() => {
                            tokio::time::sleep(SNAPSHOT_DEBOUNCE).await;
                            me.flush().await;
                        }
                        // A write that failed (disk full, …) is retried without waiting for
                        // the next change.
                        _ = tokio::time::sleep(SNAPSHOT_RETRY) => me.flush().await,
                        _ = s.changed() => {
                            me.flush().await;
                            return;
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("revocation_snapshot")),
        ));
        let me = self.clone();
        let mut s = stop;
        tasks.push(tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(PRUNE_EVERY) => { me.prune_now(); }
                        _ = s.changed() => return,
                    }
                }
            }
            .instrument(tracing::info_span!("revocation_prune")),
        ));
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::LifetimeBound;

    #[test]
    fn a_raised_bound_keeps_the_old_one_for_older_tokens_until_they_expire() {
        let first = LifetimeBound::carry(None, 3600, 1000, 30);
        assert_eq!(first.earlier, None);
        let raised = LifetimeBound::carry(Some(first), 7200, 2000, 30);
        assert_eq!(raised.earlier, Some((3600, 2000)));
        assert!(!raised.allows(1999, 1999 + 5000), "issued before the raise");
        assert!(raised.allows(1999, 1999 + 3600));
        assert!(raised.allows(2000, 2000 + 7200));
        assert!(!raised.allows(2000, 2000 + 7201));
        // A restart soon after keeps it; once everything it covered expired, it goes.
        assert_eq!(
            LifetimeBound::carry(Some(raised), 7200, 3000, 30).earlier,
            Some((3600, 2000))
        );
        assert_eq!(
            LifetimeBound::carry(Some(raised), 7200, 2000 + 3600 + 31, 30).earlier,
            None
        );
        // Raised twice: the lowest bound, from the latest raise.
        let again = LifetimeBound::carry(Some(raised), 9000, 2500, 30);
        assert_eq!(again.earlier, Some((3600, 2500)));
        // Lowered below the earlier bound: the earlier one is moot.
        let lowered = LifetimeBound::carry(Some(raised), 1800, 2600, 30);
        assert_eq!(lowered.earlier, None);
        assert!(!lowered.allows(2600, 2600 + 1801));
    }
}
