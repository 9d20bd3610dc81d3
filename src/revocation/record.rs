//! Revocation records as they arrive (native feed/push, WSO2 feed/notify), validated and
//! mapped to one internal form. A record that fails validation never becomes a rule: no
//! rule with time 0, no empty id.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Longest accepted identifier (jti, subject, client id, WSO2 signature).
const MAX_ID_BYTES: usize = 2048;

/// What a record matches. `Wso2*` kinds apply to `profile = "wso2"` issuers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The token's `jti`.
    Jti,
    /// WSO2 `jwt_signature`: the token's `jti`, or its signature segment.
    Wso2Token,
    /// The token's `sub`.
    Subject,
    /// The token's `client_id`, else `azp`.
    Client,
    /// WSO2 consumer-app rule: `client_id`, else `azp`.
    Wso2Client,
    /// WSO2 subject-entity rule: the token's `entity_id`.
    Wso2Entity,
}

impl Target {
    pub fn tag(self) -> u8 {
        match self {
            Target::Jti => 1,
            Target::Wso2Token => 2,
            Target::Subject => 3,
            Target::Client => 4,
            Target::Wso2Client => 5,
            Target::Wso2Entity => 6,
        }
    }

    /// The metric `kind` (`jti`, `subject`, `client`).
    pub fn kind(self) -> Kind {
        match self {
            Target::Jti | Target::Wso2Token => Kind::Jti,
            Target::Subject | Target::Wso2Entity => Kind::Subject,
            Target::Client | Target::Wso2Client => Kind::Client,
        }
    }
}

/// The discriminants are the snapshot's rule-kind byte: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Jti = 0,
    Subject = 1,
    Client = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Jti, Kind::Subject, Kind::Client];
    pub fn label(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Subject => "subject",
            Kind::Client => "client",
        }
    }
    pub fn from_u8(v: u8) -> Option<Kind> {
        Kind::ALL.get(v as usize).copied()
    }
}

/// One validated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Tokens whose id matches are revoked until `exp` (Unix seconds).
    Id {
        target: Target,
        id: String,
        exp: i64,
    },
    /// Tokens matching `id` (optionally only from issuer `iss`) with `iat <= revoked_at`.
    Rule {
        target: Target,
        id: String,
        iss: Option<String>,
        revoked_at: i64,
    },
}

impl Record {
    /// What it matches, the id, the issuer scope, and its time (`exp` or `revoked_at`).
    pub fn parts(&self) -> (Target, &str, Option<&str>, i64) {
        match self {
            Record::Id { target, id, exp } => (*target, id, None, *exp),
            Record::Rule {
                target,
                id,
                iss,
                revoked_at,
            } => (*target, id, iss.as_deref(), *revoked_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index}: {message}")]
pub struct RecordError {
    pub index: usize,
    pub message: String,
}

fn err(index: usize, message: impl Into<String>) -> RecordError {
    RecordError {
        index,
        message: message.into(),
    }
}

fn id(index: usize, v: Option<&Value>, field: &str) -> Result<String, RecordError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Ok(s.clone()),
        Some(Value::String(s)) if s.is_empty() => Err(err(index, format!("{field} is empty"))),
        Some(Value::String(_)) => Err(err(index, format!("{field} is too long"))),
        Some(_) => Err(err(index, format!("{field} must be a string"))),
        None => Err(err(index, format!("{field} is missing"))),
    }
}

/// A positive Unix time in seconds (native records).
fn seconds(index: usize, v: Option<&Value>, field: &str) -> Result<i64, RecordError> {
    match v.and_then(Value::as_i64) {
        Some(t) if t > 0 => Ok(t),
        Some(_) => Err(err(index, format!("{field} must be positive"))),
        None => Err(err(
            index,
            format!("{field} must be an integer number of seconds"),
        )),
    }
}

/// A positive time in milliseconds, as a number or a numeric string (WSO2), floored to
/// seconds: `iat <= floor(ms / 1000)` is at least as strict as WSO2's `ms > iat_ms`.
pub fn wso2_millis(index: usize, v: Option<&Value>, field: &str) -> Result<i64, RecordError> {
    let ms = match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        err(
            index,
            format!("{field} must be milliseconds (a number or numeric string)"),
        )
    })?;
    if ms <= 0 {
        return Err(err(index, format!("{field} must be positive")));
    }
    Ok(ms.div_euclid(1000))
}

fn optional_iss(index: usize, v: Option<&Value>) -> Result<Option<String>, RecordError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(_) => id(index, v, "iss").map(Some),
    }
}

/// A native record: `{"kind": "jti"|"subject"|"client", …}` (DESIGN §4).
pub fn native(index: usize, v: &Value) -> Result<Record, RecordError> {
    let o = v
        .as_object()
        .ok_or_else(|| err(index, "must be an object"))?;
    match o.get("kind").and_then(Value::as_str) {
        Some("jti") => Ok(Record::Id {
            target: Target::Jti,
            id: id(index, o.get("jti"), "jti")?,
            exp: seconds(index, o.get("exp"), "exp")?,
        }),
        Some("subject") => Ok(Record::Rule {
            target: Target::Subject,
            id: id(index, o.get("sub"), "sub")?,
            iss: optional_iss(index, o.get("iss"))?,
            revoked_at: seconds(index, o.get("revoked_at"), "revoked_at")?,
        }),
        Some("client") => Ok(Record::Rule {
            target: Target::Client,
            id: id(index, o.get("client_id"), "client_id")?,
            iss: optional_iss(index, o.get("iss"))?,
            revoked_at: seconds(index, o.get("revoked_at"), "revoked_at")?,
        }),
        Some(other) => Err(err(index, format!("unknown kind {other:?}"))),
        None => Err(err(index, "kind is missing")),
    }
}

/// A native record still as its JSON text, a slice of the body. Pages are read into these
/// and validated one record at a time, so a page never exists as a `Value` tree (about 1 KB
/// per record): pushing 1 M records in pages of 100 000 held +124 MB of RSS that way.
pub fn native_raw(index: usize, raw: &RawValue) -> Result<Record, RecordError> {
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| err(index, format!("unreadable ({e})")))?;
    native(index, &v)
}

/// Why a push body or feed page could not be read as its type.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON at all (the syntax error).
    NotJson(serde_json::Error),
    /// JSON, but not of the expected shape.
    Shape(serde_json::Error),
}

/// Reads a body straight into `T` (borrowing from it), telling a body that is not JSON from
/// JSON of the wrong shape; the second parse runs only on that error path.
pub fn parse_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, BodyError> {
    serde_json::from_slice(bytes).map_err(|shape| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => BodyError::NotJson(syntax),
            Ok(_) => BodyError::Shape(shape),
        }
    })
}

/// Every record of a native body, or the first error: a push applies all or nothing.
pub fn native_all(list: &[&RawValue]) -> Result<Vec<Record>, RecordError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| native_raw(i, v))
        .collect()
}

/// A native push body, borrowing from the request bytes.
#[derive(Debug, Deserialize)]
pub struct PushBody<'a> {
    #[serde(borrow)]
    pub revocations: Vec<&'a RawValue>,
}

/// A page of the native poll feed, borrowing from the response bytes.
#[derive(Debug, Deserialize)]
pub struct FeedPage<'a> {
    pub cursor: Option<String>,
    #[serde(default)]
    pub reset: bool,
    #[serde(borrow)]
    pub revocations: Vec<&'a RawValue>,
}

/// A WSO2 `/internal/data/v1/revokedjwt` body: the 4.3+ object or the older bare array.
/// Returns the valid records and the errors of the invalid ones (skipped: one bad row in
/// the control plane must not block every other revocation forever).
pub fn wso2_feed(body: &Value) -> Result<(Vec<Record>, Vec<RecordError>), String> {
    let (tokens, apps, subjects) = match body {
        Value::Array(list) => (list.as_slice(), &[][..], &[][..]),
        Value::Object(o) => {
            let list = |k: &str| -> Result<&[Value], String> {
                match o.get(k) {
                    None | Some(Value::Null) => Ok(&[]),
                    Some(Value::Array(a)) => Ok(a.as_slice()),
                    Some(_) => Err(format!("{k} is not an array")),
                }
            };
            (
                list("revokedJWTList")?,
                list("revokedJWTConsumerKeyList")?,
                list("revokedJWTSubjectEntityList")?,
            )
        }
        _ => return Err("neither the revokedjwt object nor an array".into()),
    };
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let rows = tokens
        .iter()
        .map(|v| {
            (
                v,
                wso2_token_row as fn(usize, &Value) -> Result<Record, RecordError>,
            )
        })
        .chain(
            apps.iter()
                .map(|v| (v, wso2_app_row as fn(usize, &Value) -> _)),
        )
        .chain(
            subjects
                .iter()
                .map(|v| (v, wso2_subject_row as fn(usize, &Value) -> _)),
        );
    for (index, (v, row)) in rows.enumerate() {
        match row(index, v) {
            Ok(r) => records.push(r),
            Err(e) => errors.push(e),
        }
    }
    Ok((records, errors))
}

fn wso2_token_row(index: usize, v: &Value) -> Result<Record, RecordError> {
    Ok(Record::Id {
        target: Target::Wso2Token,
        id: id(index, v.get("jwt_signature"), "jwt_signature")?,
        exp: wso2_millis(index, v.get("expiry_time"), "expiry_time")?,
    })
}

fn wso2_app_row(index: usize, v: &Value) -> Result<Record, RecordError> {
    Ok(Record::Rule {
        target: Target::Wso2Client,
        id: id(index, v.get("consumer_key"), "consumer_key")?,
        iss: None,
        revoked_at: wso2_millis(index, v.get("revocation_time"), "revocation_time")?,
    })
}

fn wso2_subject_row(index: usize, v: &Value) -> Result<Record, RecordError> {
    id(index, v.get("entity_type"), "entity_type")?;
    Ok(Record::Rule {
        target: Target::Wso2Entity,
        id: id(index, v.get("entity_id"), "entity_id")?,
        iss: None,
        revoked_at: wso2_millis(index, v.get("revocation_time"), "revocation_time")?,
    })
}

/// What a WSO2 notify event means for jwtgate.
#[derive(Debug, PartialEq, Eq)]
pub enum Notify {
    Record(Record),
    /// An event type jwtgate has no use for (the key manager sends others too).
    Ignored,
}

/// One event posted to `/internal/data/v1/notify`.
pub fn wso2_notify(v: &Value) -> Result<Notify, RecordError> {
    let o = v
        .as_object()
        .ok_or_else(|| err(0, "event must be an object"))?;
    match o.get("type").and_then(Value::as_str) {
        Some("token_revocation") => Ok(Notify::Record(Record::Id {
            target: Target::Wso2Token,
            id: id(0, o.get("accessToken"), "accessToken")?,
            exp: wso2_millis(0, o.get("expiryTime"), "expiryTime")?,
        })),
        Some("consumer_app_revocation_event") => Ok(Notify::Record(Record::Rule {
            target: Target::Wso2Client,
            id: id(0, o.get("consumerKey"), "consumerKey")?,
            iss: None,
            revoked_at: wso2_millis(0, o.get("revocationTime"), "revocationTime")?,
        })),
        Some("subject_entity_revocation_event") => {
            id(0, o.get("entityType"), "entityType")?;
            Ok(Notify::Record(Record::Rule {
                target: Target::Wso2Entity,
                id: id(0, o.get("entityId"), "entityId")?,
                iss: None,
                revoked_at: wso2_millis(0, o.get("revocationTime"), "revocationTime")?,
            }))
        }
        Some(_) => Ok(Notify::Ignored),
        None => Err(err(0, "type is missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn native_records_parse_and_bad_ones_are_refused() {
        assert_eq!(
            native(0, &json!({"kind": "jti", "jti": "a", "exp": 10})).unwrap(),
            Record::Id {
                target: Target::Jti,
                id: "a".into(),
                exp: 10
            }
        );
        assert_eq!(
            native(
                0,
                &json!({"kind": "client", "client_id": "c", "iss": "https://i", "revoked_at": 5})
            )
            .unwrap(),
            Record::Rule {
                target: Target::Client,
                id: "c".into(),
                iss: Some("https://i".into()),
                revoked_at: 5
            }
        );
        for bad in [
            json!({"kind": "jti", "jti": "", "exp": 10}),
            json!({"kind": "jti", "jti": "a", "exp": 0}),
            json!({"kind": "jti", "jti": "a", "exp": "10"}),
            json!({"kind": "subject", "revoked_at": 10}),
            json!({"kind": "subject", "sub": "s", "revoked_at": -1}),
            json!({"kind": "other"}),
            json!([1]),
        ] {
            assert!(native(0, &bad).is_err(), "{bad}");
        }
        let body: PushBody =
            serde_json::from_str(r#"{"revocations": [{"kind": "jti", "jti": "a", "exp": 1}, {}]}"#)
                .unwrap();
        assert_eq!(native_all(&body.revocations).unwrap_err().index, 1);
        let body: PushBody =
            serde_json::from_str(r#"{"revocations": [{"kind": "jti", "jti": "a", "exp": 1}, 7]}"#)
                .unwrap();
        assert_eq!(
            native_all(&body.revocations).unwrap_err().to_string(),
            "record 1: must be an object"
        );
    }

    #[test]
    fn wso2_times_are_ms_possibly_strings_floored() {
        assert_eq!(
            wso2_millis(0, Some(&json!(1_712_345_678_999i64)), "t").unwrap(),
            1_712_345_678
        );
        assert_eq!(
            wso2_millis(0, Some(&json!("1712345678000")), "t").unwrap(),
            1_712_345_678
        );
        for bad in [
            json!(0),
            json!(-5),
            json!("abc"),
            json!(null),
            json!(1.5e300),
        ] {
            assert!(wso2_millis(0, Some(&bad), "t").is_err(), "{bad}");
        }
        assert!(wso2_millis(0, None, "t").is_err());
    }

    #[test]
    fn wso2_feed_object_and_legacy_array() {
        let (r, e) = wso2_feed(&json!({
            "revokedJWTList": [{"jwt_signature": "j1", "expiry_time": 2000}],
            "revokedJWTConsumerKeyList": [{"consumer_key": "ck", "revocation_time": "3000", "organization": "carbon.super"}],
            "revokedJWTSubjectEntityList": [
                {"entity_id": "u1", "entity_type": "USER_ID", "revocation_time": 4000},
                {"entity_id": "u2", "entity_type": "USER_ID", "revocation_time": 0}
            ]
        }))
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(e.len(), 1, "the rule with time 0 is dropped, never stored");
        assert!(r.contains(&Record::Rule {
            target: Target::Wso2Entity,
            id: "u1".into(),
            iss: None,
            revoked_at: 4
        }));
        let (r, e) = wso2_feed(&json!([{"jwt_signature": "j", "expiry_time": 9000}])).unwrap();
        assert_eq!((r.len(), e.len()), (1, 0));
        assert!(wso2_feed(&json!("x")).is_err());
    }

    #[test]
    fn wso2_notify_events() {
        assert_eq!(
            wso2_notify(&json!({"type": "consumer_app_revocation_event", "consumerKey": "ck", "revocationTime": 5000})).unwrap(),
            Notify::Record(Record::Rule { target: Target::Wso2Client, id: "ck".into(), iss: None, revoked_at: 5 })
        );
        assert_eq!(
            wso2_notify(&json!({"type": "application_registration"})).unwrap(),
            Notify::Ignored
        );
        for bad in [
            json!({"type": "consumer_app_revocation_event", "consumerKey": "ck", "revocationTime": "x"}),
            json!({"type": "subject_entity_revocation_event", "entityId": "u", "entityType": "USER_ID"}),
            json!({"type": "token_revocation", "expiryTime": 5000}),
            json!({"accessToken": "a"}),
        ] {
            assert!(wso2_notify(&bad).is_err(), "{bad}");
        }
    }
}
