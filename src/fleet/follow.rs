//! A sidecar following the fleet stream (DESIGN §10).
//!
//! RESTORE (the snapshot, with its cursor: stream name, creation time, last applied
//! sequence) → CONNECT and subscribe to the live and heartbeat subjects first, so nothing
//! published meanwhile is missed (a bounded buffer; past it the client drops and says so) →
//! CATCH-UP from the cursor to the stream's last sequence (direct get for short gaps, a
//! short-lived ordered consumer for long ones) → LIVE.
//!
//! Invariants:
//! - nothing is skipped silently: a live message whose predecessor is not the cursor, a
//!   reconnect, a slow-consumer drop, a recreated stream or a heartbeat ahead of the cursor
//!   twice in a row with nothing applied in between sends the follower back to catch-up
//!   (counted by reason);
//! - records apply in any order (the merge is monotonic), so a catch-up may replay;
//! - the cursor is saved only after the records up to it were merged;
//! - a bad message is counted, logged once per cause and skipped: never a stall;
//! - staleness follows the relay's own last source sync as the heartbeat carries it, and
//!   only while this sidecar holds everything the heartbeat says the stream holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;

use super::{Bad, FORMAT_HEADER, HEARTBEAT, Heartbeat, LIVE, PUBLISHED_HEADER, STORED};
use crate::config::StreamConfig;
use crate::metrics::Metrics;
use crate::revocation::{EventResult, Record, Revocation, RevocationSource};

/// Live messages buffered while catching up (past it: a slow-consumer drop → catch-up).
const LIVE_BUFFER: usize = 10_000;
/// Gaps up to this many messages are fetched by direct get; longer ones by a consumer.
const DIRECT_GET_MAX: u64 = 256;
/// Message ids of this many recently applied sequences are kept (conflict detection).
const SEEN: usize = 4_096;
/// Records merged at once during a catch-up.
const APPLY_BATCH: usize = 1_000;
/// With a restored snapshot and the stream out of reach, ready after this long.
const GRACE: Duration = Duration::from_secs(5);
/// A catch-up that hears nothing from the server for this long failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the follower went back to catch-up: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    Sequence,
    Heartbeat,
    Reconnect,
    SlowConsumer,
    Recreated,
    /// A message for a sequence already applied, with another message id: one of the two
    /// was not the stream's (the stream is asked which).
    Conflict,
}

impl Gap {
    const ALL: [Gap; 6] = [
        Gap::Sequence,
        Gap::Heartbeat,
        Gap::Reconnect,
        Gap::SlowConsumer,
        Gap::Recreated,
        Gap::Conflict,
    ];
    fn label(self) -> &'static str {
        match self {
            Gap::Sequence => "sequence",
            Gap::Heartbeat => "heartbeat",
            Gap::Reconnect => "reconnect",
            Gap::SlowConsumer => "slow_consumer",
            Gap::Recreated => "recreated",
            Gap::Conflict => "conflict",
        }
    }
}

/// The stream families (README "Metrics").
#[derive(Clone)]
pub struct StreamMetrics {
    sequence: prometheus::IntGauge,
    gaps: prometheus::IntCounterVec,
    connected: prometheus::IntGauge,
    propagation: prometheus::Histogram,
}

impl StreamMetrics {
    pub fn register(m: &Metrics) -> StreamMetrics {
        let gaps = m.counter_vec(
            "jwtgate_revocation_stream_gaps_total",
            "Times the stream follower went back to catch-up, by reason.",
            &["reason"],
        );
        for g in Gap::ALL {
            gaps.with_label_values(&[g.label()]);
        }
        StreamMetrics {
            sequence: m.gauge(
                "jwtgate_revocation_stream_sequence",
                "Last stream sequence applied to the revocation list.",
            ),
            gaps,
            connected: m.gauge(
                "jwtgate_revocation_stream_connected",
                "1 while connected to the stream's NATS servers.",
            ),
            propagation: m.histogram(
                "jwtgate_revocation_propagation_seconds",
                "Time from the relay's publish to the record applied here (live messages).",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
        }
    }

    /// The last sequence applied (the fan-out bench reads it for each follower).
    pub fn sequence(&self) -> u64 {
        u64::try_from(self.sequence.get()).unwrap_or(0)
    }

    fn gap(&self, g: Gap) {
        self.gaps.with_label_values(&[g.label()]).inc();
    }
}

/// Where the follower is in the stream; kept in the snapshot's cursor field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    stream: String,
    /// The stream's creation time (Unix ns); 0 = none seen yet.
    created: i64,
    seq: u64,
}

const CURSOR_TAG: &str = "nats-stream/1";

impl Cursor {
    /// A cursor the snapshot holds; anything else (a feed's cursor, none) starts over.
    fn parse(s: Option<&str>, stream: &str) -> Cursor {
        let parsed = s.and_then(|s| {
            let mut it = s.split(' ');
            (it.next()? == CURSOR_TAG).then_some(())?;
            let c = Cursor {
                stream: it.next()?.to_owned(),
                created: it.next()?.parse().ok()?,
                seq: it.next()?.parse().ok()?,
            };
            it.next().is_none().then_some(c)
        });
        match parsed {
            Some(c) if c.stream == stream => c,
            _ => Cursor {
                stream: stream.to_owned(),
                created: 0,
                seq: 0,
            },
        }
    }

    fn render(&self) -> String {
        format!("{CURSOR_TAG} {} {} {}", self.stream, self.created, self.seq)
    }
}

/// What ended a session with the server.
enum End {
    Stopped,
    Lost(String),
}

pub struct Follower {
    rev: Arc<Revocation>,
    cfg: StreamConfig,
    metrics: StreamMetrics,
    cursor: Cursor,
    /// `max_token_lifetime_s` + leeway: the stream must keep records at least this long.
    needed_age: Duration,
    /// Causes of bad messages already logged (once each).
    logged: HashSet<&'static str>,
    /// A catch-up is under way (the grace period waits for it).
    catching_up: Arc<AtomicBool>,
    /// (sequence, `Nats-Msg-Id`) of the last [`SEEN`] messages applied, in sequence order.
    seen: std::collections::VecDeque<(u64, Option<String>)>,
    /// Sequences to read again from the stream: a second message claimed them.
    conflicts: Vec<u64>,
}

impl Follower {
    pub fn new(
        rev: Arc<Revocation>,
        cfg: StreamConfig,
        metrics: StreamMetrics,
        leeway_s: i64,
    ) -> Follower {
        let cursor = Cursor::parse(rev.cursor().as_deref(), &cfg.name);
        metrics.sequence.set(cursor.seq as i64);
        let needed = rev.settings().cfg.max_token_lifetime_s + u64::try_from(leeway_s).unwrap_or(0);
        Follower {
            rev,
            cfg,
            metrics,
            cursor,
            needed_age: Duration::from_secs(needed),
            logged: HashSet::new(),
            catching_up: Arc::new(AtomicBool::new(false)),
            seen: std::collections::VecDeque::with_capacity(SEEN),
            conflicts: Vec::new(),
        }
    }

    /// Follows the stream until `stop` changes: connects (retrying with backoff), then
    /// keeps one session, which the client carries across reconnects.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.rev.restored() {
            tokio::spawn(grace(
                self.rev.clone(),
                self.catching_up.clone(),
                stop.clone(),
            ));
        }
        let mut failures = 0u32;
        loop {
            let (tx, events) = tokio::sync::mpsc::channel(64);
            let who = format!("jwtgate {}", env!("CARGO_PKG_VERSION"));
            let end = match super::connect(&self.cfg, &who, LIVE_BUFFER, Some(tx)).await {
                Ok(client) => {
                    failures = 0;
                    tracing::info!(stream = %self.cfg.name, "connected to the revocation stream");
                    self.metrics.connected.set(1);
                    let end = self.session(client, events, &mut stop).await;
                    self.metrics.connected.set(0);
                    end
                }
                Err(e) => End::Lost(e),
            };
            match end {
                End::Stopped => return,
                End::Lost(error) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(%error, failures, "revocation stream unreachable; serving what is held, retrying");
                    }
                }
            }
            self.rev.refresh_stale();
            if super::pause(failures, &mut stop).await {
                return;
            }
        }
    }

    // long-function: the LIVE state's one select loop over live messages, heartbeats,
    // connection events, the staleness tick and stop; splitting it scatters the transitions.
    async fn session(
        &mut self,
        client: async_nats::Client,
        mut events: tokio::sync::mpsc::Receiver<async_nats::Event>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> End {
        // Subscribed before the catch-up reads the stream's last sequence: nothing
        // published in between is missed.
        let (mut live, mut beats) =
            match tokio::try_join!(client.subscribe(LIVE), client.subscribe(HEARTBEAT)) {
                Ok(subs) => subs,
                Err(e) => return End::Lost(format!("subscribe: {e}")),
            };
        let js = async_nats::jetstream::new(client);
        let mut pending: Option<Option<Gap>> = Some(None);
        // The cursor when a heartbeat was last ahead of it (none: the last one was not).
        let mut ahead_at: Option<u64> = None;
        let mut lost = false;
        let mut retries = 0u32;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if let Some(gap) = pending.take() {
                if let Some(g) = gap {
                    self.metrics.gap(g);
                    tracing::info!(
                        reason = g.label(),
                        seq = self.cursor.seq,
                        "revocation stream: catching up"
                    );
                }
                match self.catch_up(&js).await {
                    Ok(()) => {
                        retries = 0;
                        ahead_at = None;
                        self.rev.set_ready();
                    }
                    Err(error) => {
                        retries = retries.saturating_add(1);
                        if retries == 1 || retries.is_power_of_two() {
                            tracing::warn!(%error, "revocation stream catch-up failed; retrying");
                        }
                        if super::pause(retries, stop).await {
                            return End::Stopped;
                        }
                        pending = Some(None);
                        continue;
                    }
                }
            }
            tokio::select! {
                m = live.next() => match m {
                    Some(m) => {
                        if let Some(g) = self.on_live(&m) {
                            pending = Some(Some(g));
                        }
                    }
                    None => return End::Lost("live subscription closed".into()),
                },
                b = beats.next() => match b {
                    Some(b) => {
                        if let Some(g) = self.on_heartbeat(&b.payload, &mut ahead_at) {
                            pending = Some(Some(g));
                        }
                    }
                    None => return End::Lost("heartbeat subscription closed".into()),
                },
                e = events.recv() => match e {
                    // The client reports its first connection too: only a connection
                    // after a loss is a reconnect.
                    Some(async_nats::Event::Connected) if lost => {
                        lost = false;
                        self.metrics.connected.set(1);
                        // Every sidecar reconnects at once after a server restart: spread
                        // their catch-ups.
                        tokio::time::sleep(crate::fetch::jitter(Duration::from_millis(250))).await;
                        pending = Some(Some(Gap::Reconnect));
                    }
                    Some(async_nats::Event::Disconnected) => {
                        lost = true;
                        self.metrics.connected.set(0);
                        tracing::warn!("revocation stream disconnected; the client reconnects");
                    }
                    Some(async_nats::Event::SlowConsumer(_)) => pending = Some(Some(Gap::SlowConsumer)),
                    Some(_) => {}
                    None => return End::Lost("client closed".into()),
                },
                _ = tick.tick() => self.rev.refresh_stale(),
                _ = stop.changed() => return End::Stopped,
            }
        }
    }

    /// A republished record: applied when its predecessor is the cursor; a gap otherwise.
    fn on_live(&mut self, m: &async_nats::Message) -> Option<Gap> {
        let h = m.headers.as_ref();
        let seq = |name| super::last_header(h, name).and_then(|v| v.parse::<u64>().ok());
        let (Some(s), Some(p)) = (seq("Nats-Sequence"), seq("Nats-Last-Sequence")) else {
            // Not a copy the server made of a stored message: never applied.
            self.bad(
                "no_sequence",
                "a live message without stream sequence headers",
            );
            return None;
        };
        if super::last_header(h, "Nats-Stream") != Some(self.cfg.name.as_str()) {
            return None;
        }
        if s <= self.cursor.seq {
            // Normally a copy already applied. But stream messages are not signed: where
            // the NATS permissions are missing, a forged copy of the next sequence could
            // have been applied in the real one's place. Another id for a sequence seen is
            // settled by the stream itself.
            if self.conflicts_with(s, h) {
                self.conflicts.push(s);
                return Some(Gap::Conflict);
            }
            return None;
        }
        if p != self.cursor.seq {
            return Some(Gap::Sequence);
        }
        if let Some(records) = self.records(h, &m.payload) {
            self.rev.merge(RevocationSource::Stream, &records);
            if let Some(ms) =
                super::last_header(h, PUBLISHED_HEADER).and_then(|v| v.parse::<i64>().ok())
            {
                let age = super::now_ms().saturating_sub(ms);
                if age >= 0 {
                    self.metrics.propagation.observe(age as f64 / 1000.0);
                }
            }
        }
        self.remember(s, h);
        self.advance(s);
        None
    }

    /// Keeps the message id applied for `seq`: appended when `seq` is the newest (every
    /// live and catch-up message), replaced when it is held (a settled conflict), else
    /// older than the window and not kept.
    fn remember(&mut self, seq: u64, h: Option<&async_nats::HeaderMap>) {
        let id = super::last_header(h, "Nats-Msg-Id").map(str::to_owned);
        if self.seen.back().is_none_or(|(last, _)| *last < seq) {
            if self.seen.len() == SEEN {
                self.seen.pop_front();
            }
            self.seen.push_back((seq, id));
        } else if let Ok(i) = self.seen.binary_search_by_key(&seq, |(s, _)| *s) {
            self.seen[i].1 = id;
        }
    }

    /// Whether a message for an applied sequence carries another id than the one applied.
    fn conflicts_with(&self, seq: u64, h: Option<&async_nats::HeaderMap>) -> bool {
        let id = super::last_header(h, "Nats-Msg-Id");
        self.seen
            .binary_search_by_key(&seq, |(s, _)| *s)
            .is_ok_and(|i| self.seen[i].1.as_deref() != id)
    }

    /// Reads the conflicting sequences from the stream and applies what it holds there.
    async fn settle_conflicts(
        &mut self,
        stream: &async_nats::jetstream::stream::Stream,
    ) -> Result<(), String> {
        while let Some(&seq) = self.conflicts.last() {
            let m = tokio::time::timeout(FETCH_TIMEOUT, stream.direct_get(seq))
                .await
                .map_err(|_| "direct get timed out".to_owned())?
                .map_err(|e| format!("direct get {seq}: {e}"))?;
            if let Some(records) = self.records(Some(&m.headers), &m.payload) {
                self.rev.merge(RevocationSource::Stream, &records);
            }
            self.remember(seq, Some(&m.headers));
            self.conflicts.pop();
        }
        Ok(())
    }

    /// A heartbeat ahead of the cursor is a gap only when the one before was ahead too and
    /// nothing was applied in between: a follower that is merely behind (live messages
    /// queued after an overload or a stalled server) catches up by itself, and a catch-up
    /// storm of a whole fleet would only slow it down. A lost message followed by others is
    /// caught at once by their predecessor header.
    fn on_heartbeat(&mut self, payload: &[u8], ahead_at: &mut Option<u64>) -> Option<Gap> {
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(payload) else {
            self.bad("heartbeat", "an unreadable heartbeat");
            return None;
        };
        if hb.stream != self.cfg.name {
            return None;
        }
        if hb.created != self.cursor.created {
            return Some(Gap::Recreated);
        }
        if hb.last_seq <= self.cursor.seq {
            *ahead_at = None;
            let now = crate::clock::unix_now();
            self.rev
                .synced_at(RevocationSource::Stream, hb.source_synced_at.unwrap_or(now));
            return None;
        }
        if *ahead_at == Some(self.cursor.seq) {
            return Some(Gap::Heartbeat);
        }
        *ahead_at = Some(self.cursor.seq);
        None
    }

    /// The records of a message, screened like any source's; `None` (counted, logged once
    /// per cause) for a bad one.
    fn records(&mut self, h: Option<&async_nats::HeaderMap>, body: &[u8]) -> Option<Vec<Record>> {
        let decoded =
            super::decode(super::last_header(h, FORMAT_HEADER), body).and_then(|records| {
                for (i, r) in records.iter().enumerate() {
                    self.rev
                        .screen(i, r)
                        .map_err(|e| Bad::Unreadable(e.to_string()))?;
                }
                Ok(records)
            });
        match decoded {
            Ok(records) => Some(records),
            Err(e) => {
                let detail = match &e {
                    Bad::UnknownFormat => format!(
                        "unknown {FORMAT_HEADER} {:?}",
                        super::last_header(h, FORMAT_HEADER).unwrap_or("")
                    ),
                    Bad::Unreadable(why) => why.clone(),
                };
                self.bad(e.cause(), &detail);
                None
            }
        }
    }

    /// Counts a skipped message; the first of each cause is logged.
    fn bad(&mut self, cause: &'static str, detail: &str) {
        self.rev
            .metrics()
            .event(RevocationSource::Stream, EventResult::Rejected, 1);
        if self.logged.insert(cause) {
            tracing::warn!(
                cause,
                detail,
                "revocation stream message skipped (logged once per cause)"
            );
        }
    }

    fn advance(&mut self, seq: u64) {
        self.cursor.seq = seq;
        self.metrics.sequence.set(seq as i64);
        self.rev.set_cursor(Some(self.cursor.render()));
    }

    /// Reads the stream from the cursor to its last sequence.
    async fn catch_up(&mut self, js: &async_nats::jetstream::Context) -> Result<(), String> {
        self.catching_up.store(true, Ordering::Release);
        let r = self.catch_up_inner(js).await;
        self.catching_up.store(false, Ordering::Release);
        r
    }

    async fn catch_up_inner(&mut self, js: &async_nats::jetstream::Context) -> Result<(), String> {
        let name = &self.cfg.name;
        // One API request: the stream's info comes with it.
        let stream = js
            .get_stream(name)
            .await
            .map_err(|e| format!("stream {name}: {e} (is the relay running?)"))?;
        let info = stream.cached_info().clone();
        let max_age = info.config.max_age;
        if !max_age.is_zero() && max_age < self.needed_age {
            return Err(format!(
                "stream {name} keeps records {} s (max_age), less than max_token_lifetime_s + leeway_s = {} s: not ready until it is raised",
                max_age.as_secs(),
                self.needed_age.as_secs()
            ));
        }
        let created = super::created_ns(&info);
        if created != self.cursor.created {
            if self.cursor.created != 0 {
                self.metrics.gap(Gap::Recreated);
                tracing::warn!(stream = %name, "the stream was recreated: replaying it whole (records merge, nothing held is dropped)");
            }
            self.cursor = Cursor {
                stream: name.clone(),
                created,
                seq: 0,
            };
            // Sequence numbers start again: what was seen under the old ones says nothing.
            self.seen.clear();
            self.conflicts.clear();
        }
        // Left in place on failure: read again at the next catch-up.
        self.settle_conflicts(&stream).await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if first > self.cursor.seq + 1 {
            // Aged out: older than every token's lifetime.
            self.cursor.seq = first - 1;
        }
        if last <= self.cursor.seq {
            self.advance(self.cursor.seq);
            return Ok(());
        }
        if last - self.cursor.seq <= DIRECT_GET_MAX {
            self.fetch_direct(&stream, last).await
        } else {
            self.fetch_consumer(&stream, last).await
        }
    }

    async fn fetch_direct(
        &mut self,
        stream: &async_nats::jetstream::stream::Stream,
        last: u64,
    ) -> Result<(), String> {
        let mut batch = Vec::new();
        let mut seq = self.cursor.seq;
        while seq < last {
            let m = tokio::time::timeout(
                FETCH_TIMEOUT,
                stream.direct_get_next_for_subject(STORED, Some(seq + 1)),
            )
            .await
            .map_err(|_| "direct get timed out".to_owned())?
            .map_err(|e| format!("direct get after {seq}: {e}"))?;
            if let Some(records) = self.records(Some(&m.headers), &m.payload) {
                batch.extend(records);
            }
            self.remember(m.sequence, Some(&m.headers));
            seq = m.sequence;
        }
        self.rev.merge(RevocationSource::Stream, &batch);
        self.advance(seq);
        Ok(())
    }

    async fn fetch_consumer(
        &mut self,
        stream: &async_nats::jetstream::stream::Stream,
        last: u64,
    ) -> Result<(), String> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: STORED.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.cursor.seq + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("catch-up consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("catch-up consumer: {e}"))?;
        let mut batch = Vec::new();
        let mut seq = self.cursor.seq;
        while seq < last {
            let m = tokio::time::timeout(FETCH_TIMEOUT, messages.next())
                .await
                .map_err(|_| "catch-up consumer timed out".to_owned())?
                .ok_or("catch-up consumer ended")?
                .map_err(|e| format!("catch-up consumer: {e}"))?;
            let s = m
                .info()
                .map_err(|e| format!("catch-up message: {e}"))?
                .stream_sequence;
            if let Some(records) = self.records(m.message.headers.as_ref(), &m.message.payload) {
                batch.extend(records);
            }
            self.remember(s, m.message.headers.as_ref());
            seq = s;
            if batch.len() >= APPLY_BATCH {
                self.rev.merge(RevocationSource::Stream, &batch);
                batch.clear();
                self.advance(seq);
            }
        }
        self.rev.merge(RevocationSource::Stream, &batch);
        self.advance(seq);
        Ok(())
    }
}

/// With a restored snapshot, ready after [`GRACE`] even if the stream is out of reach
/// (DESIGN §10) — but not in the middle of a catch-up that is under way.
async fn grace(
    rev: Arc<Revocation>,
    catching_up: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = tokio::time::sleep(GRACE) => {}
        _ = stop.changed() => return,
    }
    while !rev.is_ready() {
        if !catching_up.load(Ordering::Acquire) {
            tracing::info!(
                "revocation stream not caught up after 5 s: serving from the restored snapshot"
            );
            rev.set_ready();
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_round_trip_and_foreign_ones_start_over() {
        let c = Cursor {
            stream: "JWTGATE_REV".into(),
            created: 1_700_000_000_123_456_789,
            seq: 42,
        };
        assert_eq!(Cursor::parse(Some(&c.render()), "JWTGATE_REV"), c);
        let fresh = |s: Option<&str>| Cursor::parse(s, "JWTGATE_REV").seq;
        assert_eq!(fresh(Some("feed-cursor-17")), 0);
        assert_eq!(fresh(None), 0);
        assert_eq!(fresh(Some("nats-stream/1 OTHER 5 9")), 0, "another stream");
        assert_eq!(fresh(Some("nats-stream/1 JWTGATE_REV 5 9 extra")), 0);
        assert_eq!(fresh(Some("nats-stream/1 JWTGATE_REV x 9")), 0);
    }
}
