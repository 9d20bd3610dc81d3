//! The fleet stream (DESIGN §10): one NATS JetStream stream holds every revocation record;
//! `jwtgate relay` is its only publisher, and every sidecar follows it.
//!
//! - [`relay`]: takes push, notify and feed records, publishes each new one once, creates
//!   the stream, sends the heartbeat.
//! - [`follow`]: a sidecar's side: restore, subscribe live, catch up by sequence, live.
//!
//! This module holds what both sides share: the subjects, the wire form of a record (one
//! record per message, the native push body, its origin in a `Jwtgate-Format` header) and
//! the heartbeat.

pub mod follow;
pub mod relay;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::StreamConfig;
use crate::revocation::Record;
use crate::revocation::record::{self, Target};

/// The subject records are stored on (one subject: each stored message names its
/// predecessor, which is what gap detection reads).
pub const STORED: &str = "jwtgate.rev.v1";
/// Where the server republishes each stored message (plain NATS: no consumer per sidecar).
pub const LIVE: &str = "jwtgate.live.v1";
/// The relay's heartbeat (not stored).
pub const HEARTBEAT: &str = "jwtgate.hb.v1";
/// A record's origin: `jwtgate` (native) or `wso2` (applies to `profile = "wso2"` only).
pub const FORMAT_HEADER: &str = "Jwtgate-Format";
/// When the relay published the record (Unix milliseconds): the propagation histogram.
pub const PUBLISHED_HEADER: &str = "Jwtgate-Published";
/// How often the relay sends its heartbeat (DESIGN §10: at least every 5 s).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The heartbeat body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub stream: String,
    /// The stream's creation time, Unix nanoseconds (a recreated stream has a new one).
    pub created: i64,
    pub last_seq: u64,
    /// Unix seconds of the relay's last successful source poll; `null` for a relay with
    /// push sources only (nothing to be out of date with).
    pub source_synced_at: Option<i64>,
}

/// Where a record came from, carried in [`FORMAT_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jwtgate,
    Wso2,
}

impl Format {
    pub fn label(self) -> &'static str {
        match self {
            Format::Jwtgate => "jwtgate",
            Format::Wso2 => "wso2",
        }
    }
}

/// One record as a stream message: its format, body and `Nats-Msg-Id`.
pub struct Wire {
    pub format: Format,
    pub body: Vec<u8>,
    /// Hex SHA-256 of (format, target, iss, id, time): two relays publishing the same
    /// record de-duplicate in the stream's window.
    pub msg_id: String,
}

/// The native push body of one record, and its origin.
pub fn encode(r: &Record) -> Wire {
    let (target, id, iss, time) = r.parts();
    let format = match target {
        Target::Wso2Token | Target::Wso2Client | Target::Wso2Entity => Format::Wso2,
        Target::Jti | Target::Subject | Target::Client => Format::Jwtgate,
    };
    let mut v = match target {
        Target::Jti | Target::Wso2Token => {
            serde_json::json!({"kind": "jti", "jti": id, "exp": time})
        }
        Target::Subject | Target::Wso2Entity => {
            serde_json::json!({"kind": "subject", "sub": id, "revoked_at": time})
        }
        Target::Client | Target::Wso2Client => {
            serde_json::json!({"kind": "client", "client_id": id, "revoked_at": time})
        }
    };
    if let Some(iss) = iss {
        v["iss"] = iss.into();
    }
    let body = serde_json::to_vec(&serde_json::json!({ "revocations": [v] })).unwrap_or_default();
    let msg_id = crate::hashing::hex(&digest(&[
        format.label().as_bytes(),
        &[target.tag()],
        iss.unwrap_or("").as_bytes(),
        id.as_bytes(),
        time.to_string().as_bytes(),
    ]));
    Wire {
        format,
        body,
        msg_id,
    }
}

/// SHA-256 of length-prefixed fields: no two different field lists hash the same input.
pub fn digest(fields: &[&[u8]]) -> [u8; 32] {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for field in fields {
        h.update(&(field.len() as u32).to_be_bytes());
        h.update(field);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// Waits the backoff after `failures` failures (0.5 s doubling to 30 s, with jitter);
/// `true` when `stop` changed meanwhile.
pub async fn pause(failures: u32, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    let delay = crate::fetch::backoff(
        failures,
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.changed() => true,
    }
}

/// Why a stream message was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// A `Jwtgate-Format` this version does not know.
    UnknownFormat,
    /// Not a native push body, or a record in it is invalid.
    Unreadable(String),
}

impl Bad {
    /// A short cause, for the once-per-cause log line.
    pub fn cause(&self) -> &'static str {
        match self {
            Bad::UnknownFormat => "unknown_format",
            Bad::Unreadable(_) => "unreadable",
        }
    }
}

/// The records of one stream message. WSO2-origin records get their WSO2 targets back, so
/// a sidecar applies them exactly as if it had received the notify or feed row itself.
pub fn decode(format: Option<&str>, body: &[u8]) -> Result<Vec<Record>, Bad> {
    let format = match format {
        None | Some("jwtgate") => Format::Jwtgate,
        Some("wso2") => Format::Wso2,
        Some(_) => return Err(Bad::UnknownFormat),
    };
    let push: record::PushBody =
        record::parse_body(body).map_err(|_| Bad::Unreadable("not a push body".into()))?;
    if push.revocations.is_empty() {
        return Err(Bad::Unreadable("no record".into()));
    }
    let records =
        record::native_all(&push.revocations).map_err(|e| Bad::Unreadable(e.to_string()))?;
    if format == Format::Jwtgate {
        return Ok(records);
    }
    records
        .into_iter()
        .map(|r| match r {
            Record::Id { id, exp, .. } => Ok(Record::Id {
                target: Target::Wso2Token,
                id,
                exp,
            }),
            Record::Rule {
                target,
                id,
                iss: None,
                revoked_at,
            } => Ok(Record::Rule {
                target: if target == Target::Subject {
                    Target::Wso2Entity
                } else {
                    Target::Wso2Client
                },
                id,
                iss: None,
                revoked_at,
            }),
            Record::Rule { .. } => Err(Bad::Unreadable("a wso2 record names no iss".into())),
        })
        .collect()
}

/// Connects to the stream's servers. `events` hears of reconnects and slow-consumer drops
/// (the follower goes back to catch-up on either). Live messages wait in a buffer of
/// `buffer` per subscription; past it the client drops them and says so.
pub async fn connect(
    cfg: &StreamConfig,
    who: &str,
    buffer: usize,
    events: Option<tokio::sync::mpsc::Sender<async_nats::Event>>,
) -> Result<async_nats::Client, String> {
    let mut o = async_nats::ConnectOptions::new()
        .name(who)
        .subscription_capacity(buffer)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None);
    if let Some(t) = &cfg.token {
        o = o.token(t.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        o = o.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(path) = &cfg.creds_file {
        o = o
            .credentials_file(path)
            .await
            .map_err(|e| format!("creds_file {}: {e}", path.display()))?;
    }
    if let Some(ca) = &cfg.ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if cfg.urls.iter().any(|u| u.starts_with("tls://")) {
        o = o.require_tls(true);
    }
    if let Some(tx) = events {
        o = o.event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.try_send(e);
            }
        });
    }
    let addrs = cfg
        .urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("stream url: {e}"))?;
    o.connect(addrs).await.map_err(|e| e.to_string())
}

/// The last value of a header (DESIGN §10: a republished message may carry a header twice).
pub fn last_header<'a>(h: Option<&'a async_nats::HeaderMap>, name: &str) -> Option<&'a str> {
    h?.get_all(name).last().map(|v| v.as_str())
}

/// Unix milliseconds now (the publish stamp and the propagation histogram).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix nanoseconds of a stream's creation time.
pub fn created_ns(info: &async_nats::jetstream::stream::Info) -> i64 {
    info.created
        .unix_timestamp_nanos()
        .clamp(0, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_wire_and_keep_their_origin() {
        let records = [
            Record::Id {
                target: Target::Jti,
                id: "j1".into(),
                exp: 100,
            },
            Record::Id {
                target: Target::Wso2Token,
                id: "sig".into(),
                exp: 100,
            },
            Record::Rule {
                target: Target::Subject,
                id: "alice".into(),
                iss: Some("https://km".into()),
                revoked_at: 50,
            },
            Record::Rule {
                target: Target::Client,
                id: "app".into(),
                iss: None,
                revoked_at: 50,
            },
            Record::Rule {
                target: Target::Wso2Entity,
                id: "u-1".into(),
                iss: None,
                revoked_at: 50,
            },
            Record::Rule {
                target: Target::Wso2Client,
                id: "ck".into(),
                iss: None,
                revoked_at: 50,
            },
        ];
        let mut ids = std::collections::HashSet::new();
        for r in &records {
            let w = encode(r);
            assert_eq!(
                decode(Some(w.format.label()), &w.body).unwrap(),
                vec![r.clone()]
            );
            assert!(ids.insert(w.msg_id.clone()), "ids differ per record");
            assert_eq!(w.msg_id.len(), 64);
            assert_eq!(encode(r).msg_id, w.msg_id, "stable");
        }
        // A later time is another message.
        let later = Record::Id {
            target: Target::Jti,
            id: "j1".into(),
            exp: 101,
        };
        assert!(!ids.contains(&encode(&later).msg_id));
    }

    #[test]
    fn bad_messages_are_named() {
        let ok = br#"{"revocations":[{"kind":"jti","jti":"a","exp":5}]}"#;
        assert_eq!(decode(Some("v9"), ok), Err(Bad::UnknownFormat));
        assert!(matches!(decode(None, b"nope"), Err(Bad::Unreadable(_))));
        assert!(matches!(
            decode(None, br#"{"revocations":[]}"#),
            Err(Bad::Unreadable(_))
        ));
        assert!(matches!(
            decode(
                None,
                br#"{"revocations":[{"kind":"jti","jti":"","exp":5}]}"#
            ),
            Err(Bad::Unreadable(_))
        ));
        let with_iss =
            br#"{"revocations":[{"kind":"client","client_id":"a","iss":"x","revoked_at":5}]}"#;
        assert!(decode(None, with_iss).is_ok());
        assert!(matches!(
            decode(Some("wso2"), with_iss),
            Err(Bad::Unreadable(_))
        ));
    }
}
