//! The access log (DESIGN §11): one JSON line per request on stdout.
//!
//! The request path only fills a [`Line`] and offers it to a bounded queue; a dedicated
//! thread formats and writes. A full queue (stdout blocked or too slow) drops the line and
//! counts it: a request never waits on the log. Who sent a token is computed once, when
//! the token is first seen ([`Subjects::who`]), and kept with its verdict, so a cache hit
//! only clones an `Arc`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use serde::Serialize;

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

use super::queue::{self, Batches, Queue};

/// Lines waiting for the writer, at most. A line is ~200 bytes plus its path (cut at
/// [`MAX_PATH_BYTES`]), so a full queue holds at most ~5 MB.
pub const QUEUE_LINES: usize = 4096;

/// `path` is cut at this many bytes (at a character boundary).
pub const MAX_PATH_BYTES: usize = 1024;

/// The writer takes at most this many lines per write.
const BATCH_LINES: usize = 512;

/// Who presented a token, as the log shows it: computed when the token is first seen.
#[derive(Debug)]
pub struct Who {
    /// The configured name of the issuer that verified it.
    pub issuer: Box<str>,
    pub client_id: Option<Box<str>>,
    pub subject: Subject,
    /// The token's fingerprint (first 8 hex characters of its SHA-256).
    pub token_fp: Box<str>,
}

/// The `sub` claim as logged.
#[derive(Debug)]
pub enum Subject {
    Absent,
    /// `include_subject = true`.
    Clear(Box<str>),
    /// The first 16 hex characters of HMAC-SHA256(`subject_key`, sub).
    Fingerprint(Box<str>),
}

/// How subjects are written: in clear, or keyed fingerprints.
pub struct Subjects {
    include_subject: bool,
    key: hmac::Key,
}

impl Subjects {
    pub fn new(cfg: &AccessLogConfig) -> Subjects {
        let key = match &cfg.subject_key {
            Some(k) => hmac::Key::new(hmac::HMAC_SHA256, k.expose().as_bytes()),
            None => {
                // Random per process: fingerprints correlate within one process's lines.
                let rng = aws_lc_rs::rand::SystemRandom::new();
                hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                    .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &random_fallback()))
            }
        };
        Subjects {
            include_subject: cfg.include_subject,
            key,
        }
    }

    /// The log's view of a verified token.
    pub fn who(
        &self,
        issuer: &str,
        sub: Option<&str>,
        client_id: Option<&str>,
        token_fp: String,
    ) -> Who {
        let subject = match sub {
            None => Subject::Absent,
            Some(s) if self.include_subject => Subject::Clear(s.into()),
            Some(s) => Subject::Fingerprint(self.fingerprint(s).into()),
        };
        Who {
            issuer: issuer.into(),
            client_id: client_id.map(Into::into),
            subject,
            token_fp: token_fp.into(),
        }
    }

    /// `sub_fp`: the first 16 hex characters of HMAC-SHA256(key, sub).
    pub fn fingerprint(&self, sub: &str) -> String {
        let tag = hmac::sign(&self.key, sub.as_bytes());
        let mut out = String::with_capacity(16);
        for b in &tag.as_ref()[..8] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// Only reached when the system RNG fails: the clock's nanoseconds and the process id.
fn random_fallback() -> [u8; 32] {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&nanos.to_le_bytes());
    out[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    out
}

/// One request, as the request path hands it over.
#[derive(Debug)]
pub struct Line {
    pub at: SystemTime,
    pub method: http::Method,
    /// The path as sent, without the query, cut at [`MAX_PATH_BYTES`].
    pub path: String,
    pub route: Arc<str>,
    pub status: u16,
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub who: Option<Arc<Who>>,
    /// A rejected token's fingerprint when it never got a verdict.
    pub token_fp: Option<String>,
    /// Until the response head.
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub trace_id: Option<[u8; 16]>,
}

/// The path as logged: no query, at most [`MAX_PATH_BYTES`].
pub fn logged_path(path: &str) -> String {
    let mut end = path.len().min(MAX_PATH_BYTES);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_owned()
}

/// The sending end, held by the proxy.
pub struct AccessLog {
    queue: Queue<Line>,
    rejected_only: bool,
}

impl AccessLog {
    /// Starts the writer thread on stdout.
    pub fn start(cfg: &AccessLogConfig, metrics: &Metrics) -> std::io::Result<AccessLog> {
        let written = metrics.counter(
            "jwtgate_access_log_lines_total",
            "Access log lines written to stdout.",
        );
        let dropped = metrics.counter_vec(
            "jwtgate_access_log_dropped_total",
            "Access log lines dropped: the queue was full (stdout too slow) or the write failed.",
            &["cause"],
        );
        let failed = dropped.with_label_values(&["write_error"]);
        let (queue, batches) =
            queue::bounded(QUEUE_LINES, dropped.with_label_values(&["queue_full"]));
        let include_subject = cfg.include_subject;
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let out = std::io::stdout();
                write_lines(
                    &batches,
                    &mut out.lock(),
                    include_subject,
                    &written,
                    &failed,
                )
            })?;
        Ok(AccessLog {
            queue,
            rejected_only: cfg.rejected_only,
        })
    }

    /// Whether a request with this outcome gets a line.
    pub fn wants(&self, rejected: bool) -> bool {
        rejected || !self.rejected_only
    }

    /// Queues a line; never waits.
    pub fn send(&self, line: Line) {
        self.queue.offer(line);
    }

    /// Waits (at most `timeout`) until every line queued so far is written: at shutdown.
    pub fn flush(&self, timeout: Duration) {
        self.queue.flush(timeout);
    }
}

/// The writer thread: takes what is queued, formats it, one write per batch.
fn write_lines(
    batches: &Batches<Line>,
    out: &mut impl std::io::Write,
    include_subject: bool,
    written: &prometheus::IntCounter,
    failed: &prometheus::IntCounter,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut warned = false;
    while let Some(batch) = batches.next(BATCH_LINES, Duration::ZERO) {
        for line in &batch.items {
            encode(line, include_subject, &mut buf);
        }
        let n = batch.items.len() as u64;
        if n == 0 {
            continue;
        }
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => written.inc_by(n),
            Err(e) => {
                failed.inc_by(n);
                if !warned {
                    tracing::warn!(error = %e, "access log: cannot write to stdout; lines are dropped and counted");
                    warned = true;
                }
            }
        }
        buf.clear();
    }
}

/// One line as JSON, newline-terminated. Field order is fixed; absent values are `null`.
fn encode(line: &Line, include_subject: bool, buf: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct Json<'a> {
        ts: &'a str,
        method: &'a str,
        path: &'a str,
        route: &'a str,
        status: u16,
        outcome: &'a str,
        reason: Option<&'a str>,
        issuer: Option<&'a str>,
        client_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<Option<&'a str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sub_fp: Option<Option<&'a str>>,
        token_fp: Option<&'a str>,
        duration_ms: f64,
        upstream_ms: Option<f64>,
        trace_id: Option<&'a str>,
    }
    let who = line.who.as_deref();
    let subject = who.and_then(|w| match &w.subject {
        Subject::Absent => None,
        Subject::Clear(s) | Subject::Fingerprint(s) => Some(&**s),
    });
    let ts = rfc3339_millis(line.at);
    let trace_id = line.trace_id.map(|t| hex(&t));
    let json = Json {
        ts: &ts,
        method: line.method.as_str(),
        path: &line.path,
        route: &line.route,
        status: line.status,
        outcome: line.outcome,
        reason: line.reason,
        issuer: who.map(|w| &*w.issuer),
        client_id: who.and_then(|w| w.client_id.as_deref()),
        sub: include_subject.then_some(subject),
        sub_fp: (!include_subject).then_some(subject),
        token_fp: who.map(|w| &*w.token_fp).or(line.token_fp.as_deref()),
        duration_ms: millis(line.duration),
        upstream_ms: line.upstream.map(millis),
        trace_id: trace_id.as_deref(),
    };
    if serde_json::to_writer(&mut *buf, &json).is_ok() {
        buf.push(b'\n');
    }
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `2026-12-02T07:15:03.123Z`.
pub fn rfc3339_millis(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| {
            rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1796195703` → Wed Dec  2 07:15:03 UTC 2026
        assert_eq!(at(1_796_195_703, 123), "2026-12-02T07:15:03.123Z");
        // A leap day and the turn of a century that is a leap year.
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
    }

    #[test]
    fn paths_are_cut_at_a_character_boundary() {
        assert_eq!(logged_path("/a"), "/a");
        let long = format!("/{}", "é".repeat(600));
        let cut = logged_path(&long);
        assert!(cut.len() <= MAX_PATH_BYTES && cut.len() >= MAX_PATH_BYTES - 1);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn subject_fingerprints_are_keyed() {
        let cfg = |key: &str| AccessLogConfig {
            enabled: true,
            include_subject: false,
            subject_key: Some(crate::config::Secret::new(key)),
            rejected_only: false,
        };
        let a = Subjects::new(&cfg("0123456789abcdef-one"));
        let b = Subjects::new(&cfg("0123456789abcdef-two"));
        // HMAC-SHA256("0123456789abcdef-one", "alice"), first 8 bytes (python3 hmac).
        assert_eq!(a.fingerprint("alice"), HMAC_ALICE);
        assert_eq!(a.fingerprint("alice").len(), 16);
        assert_ne!(a.fingerprint("alice"), b.fingerprint("alice"));
        assert_ne!(a.fingerprint("alice"), a.fingerprint("bob"));
    }

    const HMAC_ALICE: &str = "e73ff30528fa6b31";
}
