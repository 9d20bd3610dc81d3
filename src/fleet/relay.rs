//! `jwtgate relay` (DESIGN §10): the fleet stream's only publisher.
//!
//! It takes what a sidecar's admin listener takes (native push, WSO2 notify) and polls
//! what a sidecar would poll (native or WSO2 feed) through the same code — a relay is a
//! [`Revocation`] whose [`Outlet`] is the stream — and publishes one message per record
//! that adds something to what the stream holds. It creates the stream when missing, at
//! start and within one heartbeat after it disappears (then publishes everything it still
//! holds again), and sends the heartbeat.
//!
//! Invariants:
//! - a push is answered 202 (a notify 200) only once the stream acknowledged its records;
//!   a stream out of reach is a 503, and the sender retries;
//! - a record that adds nothing (the stream holds the same or a later time for it) is not
//!   published; two relays that both publish it de-duplicate by message id;
//! - the index of what the stream holds is exact (SHA-256 identities), rebuilt from the
//!   stream at start and pruned like the sidecars' lists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;

use super::{FORMAT_HEADER, HEARTBEAT, HEARTBEAT_EVERY, Heartbeat, LIVE, PUBLISHED_HEADER, STORED};
use crate::admin::{Admin, Lifecycle};
use crate::clock::{Clock, SystemClock};
use crate::config::{OnStale, RelayConfig, RevocationConfig};
use crate::metrics::Metrics;
use crate::revocation::{Outlet, Record, Revocation, RevocationSource};
use async_nats::jetstream;

/// De-duplication window of the stream (two relays, retries after a lost ack).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How often the index drops what nothing can match any more.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What became of a record a source gave the relay: the `result` label.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Published,
    Duplicate,
    Dominated,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Duplicate => "duplicate",
            Outcome::Dominated => "dominated",
        }
    }
}

/// The record's identity (everything but its time), and its time.
fn identity(r: &Record) -> ([u8; 32], i64) {
    let (target, id, iss, time) = r.parts();
    let key = super::digest(&[&[target.tag()], iss.unwrap_or("").as_bytes(), id.as_bytes()]);
    (key, time)
}

/// The stream side of a relay: the index of what the stream holds, and the publisher.
pub struct Publisher {
    cfg: RelayConfig,
    js: jetstream::Context,
    index: Mutex<HashMap<[u8; 32], Record>>,
    records: prometheus::IntCounterVec,
    /// Set once the stream exists and the index was rebuilt from it.
    ready: Arc<AtomicBool>,
}

impl Publisher {
    fn held(&self, r: &Record) -> bool {
        let (key, time) = identity(r);
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        index.get(&key).is_some_and(|held| held.parts().3 >= time)
    }

    fn hold(&self, r: Record) {
        let (key, time) = identity(&r);
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let later = index.get(&key).is_none_or(|held| held.parts().3 < time);
        if later {
            index.insert(key, r);
        }
    }

    fn count(&self, source: &str, outcome: &str, n: u64) {
        self.records.with_label_values(&[source, outcome]).inc_by(n);
    }

    /// Publishes `records` and waits for the stream's acknowledgements.
    async fn publish(&self, source: &str, records: Vec<Record>) -> Result<usize, String> {
        let mut acks = Vec::with_capacity(records.len());
        for r in records {
            if self.held(&r) {
                self.count(source, Outcome::Dominated.label(), 1);
                continue;
            }
            let wire = super::encode(&r);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", wire.msg_id.as_str());
            headers.insert(FORMAT_HEADER, wire.format.label());
            headers.insert(PUBLISHED_HEADER, super::now_ms().to_string().as_str());
            let ack = self
                .js
                .publish_with_headers(STORED, headers, wire.body.into())
                .await
                .map_err(|e| format!("stream publish: {e}"))?;
            acks.push((r, ack));
        }
        let mut new = 0;
        for (r, ack) in acks {
            let ack = ack.await.map_err(|e| format!("stream publish: {e}"))?;
            let outcome = if ack.duplicate {
                Outcome::Duplicate
            } else {
                new += 1;
                Outcome::Published
            };
            self.count(source, outcome.label(), 1);
            self.hold(r);
        }
        Ok(new)
    }

    /// Creates the stream if it is missing, or fixes a `max_age` too short or a missing
    /// live republish. Returns whether it was created, and its info.
    async fn ensure_stream(&self) -> Result<(bool, jetstream::stream::Info), String> {
        let name = &self.cfg.stream.name;
        let wanted = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![STORED.to_owned()],
            retention: jetstream::stream::RetentionPolicy::Limits,
            storage: jetstream::stream::StorageType::File,
            max_age: self.cfg.max_age(),
            duplicate_window: DUPLICATE_WINDOW,
            republish: Some(jetstream::stream::Republish {
                source: STORED.to_owned(),
                destination: LIVE.to_owned(),
                headers_only: false,
            }),
            allow_direct: true,
            deny_delete: true,
            deny_purge: true,
            num_replicas: self.cfg.replicas,
            ..Default::default()
        };
        match self.js.get_stream(name).await {
            // One API request: the stream's info comes with it.
            Ok(stream) => {
                let info = stream.cached_info().clone();
                let c = &info.config;
                let short = !c.max_age.is_zero() && c.max_age < wanted.max_age;
                if short || c.republish != wanted.republish || !c.allow_direct {
                    tracing::warn!(stream = %name, max_age_s = c.max_age.as_secs(), needed_s = wanted.max_age.as_secs(), "stream config falls short (max_age, live republish or direct get): updating it");
                    let updated = jetstream::stream::Config {
                        max_age: if short { wanted.max_age } else { c.max_age },
                        num_replicas: c.num_replicas,
                        ..wanted
                    };
                    self.js
                        .update_stream(updated)
                        .await
                        .map_err(|e| format!("stream {name} update: {e}"))?;
                }
                Ok((false, info))
            }
            Err(e) if is_not_found(&e) => {
                let stream = self
                    .js
                    .create_stream(wanted)
                    .await
                    .map_err(|e| format!("stream {name} create: {e}"))?;
                tracing::info!(stream = %name, "stream created");
                Ok((true, stream.cached_info().clone()))
            }
            Err(e) => Err(format!("stream {name}: {e}")),
        }
    }

    /// Reads every record the stream holds into the index.
    async fn rebuild(&self) -> Result<usize, String> {
        use jetstream::consumer::pull::OrderedConfig;
        let name = &self.cfg.stream.name;
        let mut stream = self.js.get_stream(name).await.map_err(|e| e.to_string())?;
        let last = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        let mut n = 0;
        if last == 0 {
            return Ok(0);
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: STORED.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("index consumer: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| "index rebuild timed out".to_owned())?
                .ok_or("index consumer ended")?
                .map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            let format = super::last_header(m.message.headers.as_ref(), FORMAT_HEADER);
            if let Ok(records) = super::decode(format, &m.message.payload) {
                for r in records {
                    self.hold(r);
                    n += 1;
                }
            }
            if seq >= last {
                return Ok(n);
            }
        }
    }

    /// Publishes everything held again (a stream that was deleted and recreated).
    async fn republish_all(&self) -> Result<usize, String> {
        let held: Vec<Record> = {
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index.drain().map(|(_, r)| r).collect()
        };
        self.publish("republish", held).await
    }

    /// Drops what nothing can match any more (the stream's `max_age` drops it there).
    fn prune(&self, now: i64) {
        let (life, leeway) = (
            self.cfg.max_token_lifetime_s as i64,
            self.cfg.leeway_s as i64,
        );
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        index.retain(|_, r| match r {
            Record::Id { exp, .. } => *exp + leeway >= now,
            Record::Rule { revoked_at, .. } => *revoked_at + life + leeway >= now,
        });
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

impl Outlet for Publisher {
    fn deliver(
        &self,
        source: RevocationSource,
        records: Vec<Record>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, String>> + Send + '_>>
    {
        Box::pin(async move {
            if !self.ready.load(Ordering::Acquire) {
                return Err("the relay's stream is not ready yet".into());
            }
            self.publish(source.label(), records).await
        })
    }

    fn rejected(&self, source: RevocationSource, n: u64) {
        self.count(source.label(), "rejected", n);
    }
}

/// A relay, built and bound.
pub struct Relay {
    cfg: RelayConfig,
    listener: tokio::net::TcpListener,
    tls: Option<(Arc<crate::tls::CertStore>, tokio_rustls::TlsAcceptor)>,
    rev: Arc<Revocation>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl Relay {
    /// Binds the listener and prepares the sources; the stream is reached in [`Relay::run`]
    /// (a relay started before NATS waits for it, not ready).
    pub async fn bind(cfg: RelayConfig) -> Result<Relay, String> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("relay.listen {}: {e}", cfg.listen))?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::CertStore::open(
                cert,
                key,
                ("relay.tls_cert", "relay.tls_key"),
                &[b"http/1.1"],
            )?),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let rev = Arc::new(Revocation::open(
            RevocationConfig {
                feed: cfg.feed.clone(),
                snapshot_path: None,
                push_token: cfg.push_token.clone(),
                notify: cfg.notify.clone(),
                max_token_lifetime_s: cfg.max_token_lifetime_s,
                // The relay's own staleness is what its heartbeat carries; sidecars judge.
                max_sync_age: Duration::from_secs(u64::MAX / 4),
                on_stale: OnStale::Allow,
                require_jti: false,
                stream: None,
            },
            clock,
            &metrics,
            cfg.leeway_s as i64,
        ));
        Ok(Relay {
            cfg,
            listener,
            tls,
            rev,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.cfg.listen)
    }

    /// Serves until `shutdown` resolves: the listener at once (not ready until the stream
    /// is), the stream, the heartbeat, the feed poll.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let lifecycle = Arc::new(
            Lifecycle::new(
                Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new())),
                Some(self.rev.clone()),
                &self.metrics,
            )
            .with_gate(self.ready.clone()),
        );
        let admin = Arc::new(Admin {
            lifecycle: lifecycle.clone(),
            metrics: self.metrics.clone(),
            issuers: Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new())),
            revocation: Some(self.rev.clone()),
        });
        tracing::info!(listen = %self.addr(), stream = %self.cfg.stream.name, "jwtgate relay serving");
        let mut tasks = Vec::new();
        let acceptor = self.tls.map(|(store, acceptor)| {
            tasks.push(tokio::spawn(store.watch("relay listener")));
            acceptor
        });
        tasks.push(tokio::spawn(crate::admin::serve(
            self.listener,
            admin,
            stop.clone(),
            acceptor,
        )));
        let records = self.metrics.counter_vec(
            "jwtgate_relay_records_total",
            "Records the relay was given, by source and what became of them (published, duplicate, dominated, rejected).",
            &["source", "result"],
        );
        let stream = tokio::spawn(keep_stream(
            self.cfg.clone(),
            self.rev.clone(),
            records,
            self.ready.clone(),
            stop.clone(),
        ));
        shutdown.await;
        lifecycle.begin_shutdown();
        let _ = stop_tx.send(true);
        let _ = stream.await;
        for t in tasks {
            t.abort();
        }
    }
}

/// Connects (retrying), makes sure of the stream, rebuilds the index, starts the sources,
/// then sends the heartbeat and watches the stream until `stop`.
async fn keep_stream(
    cfg: RelayConfig,
    rev: Arc<Revocation>,
    records: prometheus::IntCounterVec,
    ready: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let who = format!("jwtgate-relay {}", env!("CARGO_PKG_VERSION"));
    let mut failures = 0u32;
    let publisher = loop {
        let attempt = async {
            let client = super::connect(&cfg.stream, &who, 1024, None).await?;
            let publisher = Arc::new(Publisher {
                cfg: cfg.clone(),
                js: jetstream::new(client.clone()),
                index: Mutex::new(HashMap::new()),
                records: records.clone(),
                ready: ready.clone(),
            });
            publisher.ensure_stream().await?;
            let n = publisher.rebuild().await?;
            tracing::info!(records = n, "relay index rebuilt from the stream");
            Ok::<_, String>((client, publisher))
        };
        match attempt.await {
            Ok(p) => break p,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, failures, "relay: stream not reachable yet; retrying");
                if super::pause(failures, &mut stop).await {
                    return;
                }
            }
        }
    };
    let (client, publisher) = publisher;
    rev.set_outlet(publisher.clone());
    ready.store(true, Ordering::Release);
    let poller = match rev.poller() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "relay feed client");
            None
        }
    };
    let background = rev.spawn_tasks(poller, stop.clone());
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = beat.tick() => heartbeat(&client, &publisher, &rev).await,
            _ = prune.tick() => publisher.prune(crate::clock::unix_now()),
            _ = stop.changed() => break,
        }
    }
    let _ = client.flush().await;
    for t in background {
        let _ = t.await;
    }
}

/// One heartbeat: the stream's last sequence and this relay's last source sync. A stream
/// that has disappeared is created again first, with everything the relay holds.
async fn heartbeat(client: &async_nats::Client, p: &Publisher, rev: &Revocation) {
    let name = &p.cfg.stream.name;
    let info = match p.ensure_stream().await {
        Ok((true, _)) => {
            tracing::warn!(stream = %name, "the stream had disappeared: created again, publishing every record held");
            if let Err(e) = p.republish_all().await {
                tracing::warn!(error = %e, "relay: republishing after the stream was recreated failed");
            }
            // The heartbeat names the sequence reached by the republish.
            match p.js.get_stream(name).await {
                Ok(stream) => stream.cached_info().clone(),
                Err(_) => return,
            }
        }
        Ok((false, info)) => info,
        Err(e) => {
            tracing::warn!(error = %e, "relay: stream unreachable; no heartbeat");
            return;
        }
    };
    let hb = Heartbeat {
        stream: name.clone(),
        created: super::created_ns(&info),
        last_seq: info.state.last_sequence,
        source_synced_at: rev
            .settings()
            .cfg
            .feed
            .as_ref()
            .and_then(|_| rev.last_sync()),
    };
    if let Ok(body) = serde_json::to_vec(&hb)
        && let Err(e) = client.publish(HEARTBEAT, body.into()).await
    {
        tracing::warn!(error = %e, "relay: heartbeat not sent");
    }
}
