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

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

use super::queue::{self, Batches, Queue};

/// Lines waiting for the writer, at most: 20 ms of 400k requests a second. A
/// line is ~200 bytes plus its path (cut at [`MAX_PATH_BYTES`]), so a full queue holds at
/// most ~10 MB.
pub const QUEUE_LINES: usize = 8192;

/// The writer's sleeps (it never waits on the queue itself, so a request's hand-off never
/// wakes a thread): 20 ms while lines keep coming, growing to 100 ms when idle. Shorter
/// sleeps under load measured no better (more, smaller writes, each waking the log
/// pipe's reader). A line appears at most 100 ms late.
const TICKS: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(100));

/// `path` is cut at this many bytes (at a character boundary).
pub const MAX_PATH_BYTES: usize = 1024;

/// The writer takes at most this many lines per write.
const BATCH_LINES: usize = 1024;

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
    /// The keyed fingerprints `cfg` asks for; an error only if the system RNG fails.
    pub fn new(cfg: &AccessLogConfig) -> Result<Subjects, String> {
        let key = match &cfg.subject_key {
            Some(k) => hmac::Key::new(hmac::HMAC_SHA256, k.expose().as_bytes()),
            // Random per process: fingerprints correlate within one process's lines.
            None => hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
                .map_err(|_| {
                "access_log: the system RNG failed to make a subject key".to_owned()
            })?,
        };
        Ok(Subjects {
            include_subject: cfg.include_subject,
            key,
        })
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

/// One request, as the request path hands it over.
#[derive(Debug)]
pub struct Line {
    /// When the request arrived (the writer turns it into wall-clock time).
    pub start: std::time::Instant,
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
                widen_pipe(&out);
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

/// Bytes asked for stdout's pipe: a loaded batch (~300 KB) fits with room to spare.
const PIPE_BYTES: usize = 1 << 20;

/// When stdout is a pipe (a container runtime's log FIFO), asks for [`PIPE_BYTES`] so a
/// batch goes in without the writer blocking midway. Best effort: the kernel's
/// `fs.pipe-max-size` (1 MiB by default) bounds it, and a file or terminal is left alone.
fn widen_pipe(out: &std::io::Stdout) {
    #[cfg(target_os = "linux")]
    match rustix::pipe::fcntl_setpipe_size(out, PIPE_BYTES) {
        Ok(bytes) => tracing::debug!(bytes, "access log: stdout pipe widened"),
        Err(e) => tracing::debug!(error = %e, "access log: stdout pipe size left as is"),
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

/// The writer thread: what is queued, formatted, one write per batch (see [`TICKS`]).
fn write_lines(
    batches: &Batches<Line>,
    out: &mut impl std::io::Write,
    include_subject: bool,
    written: &prometheus::IntCounter,
    failed: &prometheus::IntCounter,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut warned = false;
    let mut clock = Clock::default();
    batches.run(TICKS, BATCH_LINES, |lines| {
        // One reading of each clock per batch: a line's wall-clock time is now minus its age.
        let (wall, mono) = (SystemTime::now(), std::time::Instant::now());
        let n = lines.len() as u64;
        for line in lines.drain(..) {
            let at = wall
                .checked_sub(mono.saturating_duration_since(line.start))
                .unwrap_or(wall);
            encode(&line, clock.format(at), include_subject, &mut buf);
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
    });
}

/// One line as JSON, newline-terminated. Field order is fixed; absent values are `null`.
fn encode(line: &Line, ts: &str, include_subject: bool, buf: &mut Vec<u8>) {
    let who = line.who.as_deref();
    let subject = who.and_then(|w| match &w.subject {
        Subject::Absent => None,
        Subject::Clear(s) | Subject::Fingerprint(s) => Some(&**s),
    });
    let mut j = Json(buf);
    j.str("{\"ts\":", Some(ts));
    j.str(",\"method\":", Some(line.method.as_str()));
    j.str(",\"path\":", Some(&line.path));
    j.str(",\"route\":", Some(&line.route));
    j.key(",\"status\":");
    j.int(u64::from(line.status));
    j.str(",\"outcome\":", Some(line.outcome));
    j.str(",\"reason\":", line.reason);
    j.str(",\"issuer\":", who.map(|w| &*w.issuer));
    j.str(",\"client_id\":", who.and_then(|w| w.client_id.as_deref()));
    let sub_key = if include_subject {
        ",\"sub\":"
    } else {
        ",\"sub_fp\":"
    };
    j.str(sub_key, subject);
    let token_fp = who.map(|w| &*w.token_fp).or(line.token_fp.as_deref());
    j.str(",\"token_fp\":", token_fp);
    j.key(",\"duration_ms\":");
    j.millis(Some(line.duration));
    j.key(",\"upstream_ms\":");
    j.millis(line.upstream);
    j.key(",\"trace_id\":");
    match line.trace_id {
        Some(id) => {
            j.0.push(b'"');
            for b in id {
                j.0.extend_from_slice(&HEX[usize::from(b)]);
            }
            j.0.push(b'"');
        }
        None => j.0.extend_from_slice(b"null"),
    }
    j.0.extend_from_slice(b"}\n");
}

/// Two hex digits for each byte value.
const HEX: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut out = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    out
};

/// A JSON line written by hand: the field order is fixed and most values need no
/// escaping, so this is a few copies per field (serde_json escapes the rest).
struct Json<'b>(&'b mut Vec<u8>);

impl Json<'_> {
    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(key.as_bytes());
    }

    /// `key` then the string, or `null`.
    fn str(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            None => self.0.extend_from_slice(b"null"),
            Some(v) if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
                self.0.push(b'"');
                self.0.extend_from_slice(v.as_bytes());
                self.0.push(b'"');
            }
            Some(v) => {
                if serde_json::to_writer(&mut *self.0, v).is_err() {
                    self.0.extend_from_slice(b"null");
                }
            }
        }
    }

    fn int(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[i..]);
    }

    /// Milliseconds with microsecond precision (`12.034`), or `null`.
    fn millis(&mut self, d: Option<Duration>) {
        let Some(d) = d else {
            self.0.extend_from_slice(b"null");
            return;
        };
        let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.int(micros / 1000);
        let frac = micros % 1000;
        self.0.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }
}

/// Formats timestamps, the date and time of day once per second.
#[derive(Default)]
struct Clock {
    secs: Option<u64>,
    /// `2026-12-02T07:15:03.123Z`: the first 20 bytes change once a second.
    text: String,
}

impl Clock {
    fn format(&mut self, at: SystemTime) -> &str {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        if self.secs != Some(secs) {
            self.secs = Some(secs);
            let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
            let (y, m, d) = civil_from_days(days);
            self.text.clear();
            let _ = write!(
                self.text,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
        }
        self.text.truncate(20);
        let ms = since.subsec_millis();
        for digit in [ms / 100, ms / 10 % 10, ms % 10] {
            self.text.push(char::from(b'0' + digit as u8));
        }
        self.text.push('Z');
        &self.text
    }
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

    /// `2026-12-02T07:15:03.123Z`.
    fn rfc3339_millis(at: SystemTime) -> String {
        Clock::default().format(at).to_owned()
    }

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
        // One clock across seconds and within one.
        let mut clock = Clock::default();
        let t = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(clock.format(t(1_999)), "1970-01-01T00:00:01.999Z");
        assert_eq!(clock.format(t(1_005)), "1970-01-01T00:00:01.005Z");
        assert_eq!(clock.format(t(86_400_000)), "1970-01-02T00:00:00.000Z");
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
        let a = Subjects::new(&cfg("0123456789abcdef-one")).unwrap();
        let b = Subjects::new(&cfg("0123456789abcdef-two")).unwrap();
        // HMAC-SHA256("0123456789abcdef-one", "alice"), first 8 bytes (python3 hmac).
        assert_eq!(a.fingerprint("alice"), HMAC_ALICE);
        assert_eq!(a.fingerprint("alice").len(), 16);
        assert_ne!(a.fingerprint("alice"), b.fingerprint("alice"));
        assert_ne!(a.fingerprint("alice"), a.fingerprint("bob"));
    }

    #[test]
    fn lines_are_json_with_every_field_and_escaped_values() {
        let line = Line {
            start: std::time::Instant::now(),
            method: http::Method::POST,
            path: "/orders/1".into(),
            route: Arc::from("orders"),
            status: 403,
            outcome: "rejected",
            reason: Some("insufficient_scope"),
            who: Some(Arc::new(Who {
                issuer: "km".into(),
                client_id: Some("app \"quoted\"\n".into()),
                subject: Subject::Clear("ü-alice".into()),
                token_fp: "0a1b2c3d".into(),
            })),
            token_fp: None,
            duration: Duration::from_micros(12_034),
            upstream: None,
            trace_id: Some([0xab; 16]),
        };
        let mut buf = Vec::new();
        encode(&line, "2026-12-02T07:15:03.123Z", true, &mut buf);
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ts": "2026-12-02T07:15:03.123Z", "method": "POST", "path": "/orders/1",
                "route": "orders", "status": 403, "outcome": "rejected",
                "reason": "insufficient_scope", "issuer": "km", "client_id": "app \"quoted\"\n",
                "sub": "ü-alice", "token_fp": "0a1b2c3d", "duration_ms": 12.034,
                "upstream_ms": null, "trace_id": "ab".repeat(16),
            })
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 14);
        buf.clear();
        encode(&line, "t", false, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["sub_fp"], "ü-alice");
        assert!(v.get("sub").is_none());
    }

    const HMAC_ALICE: &str = "e73ff30528fa6b31";
}
