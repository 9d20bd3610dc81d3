//! Connection bounds through real sockets (DESIGN §6): first bytes, heads and idle
//! connections are timed out, connections are capped, HTTP/2 reset and CONTINUATION
//! floods close the connection. HTTP/2 frames are written by hand so the test can send
//! what no well-behaved client would.

mod common;

use std::time::Duration;

use common::*;
use jwtgate::devkm::DevKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block for `GET /p` (static-table indices, literal `:authority`).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x01, 3];
    b.extend_from_slice(b"app");
    b.extend_from_slice(&[0x04, 2]);
    b.extend_from_slice(b"/p");
    b
}

/// An HPACK literal header (never indexed), `name` and `value` under 127 bytes.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x10, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

async fn h2_open(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tcp
}

/// Reads frames until the server sends GOAWAY or closes; `Some(elapsed)` if it did within
/// `secs`, with whether a GOAWAY was seen.
async fn closed_by_server(tcp: &mut TcpStream, secs: u64) -> Option<(Duration, bool)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // Parse whole frames from what was read so far.
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY {
                return Some((start.elapsed(), true));
            }
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some((start.elapsed(), false)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
}

/// Waits for EOF (or reset) on a raw HTTP/1 connection; `Some(elapsed)` within `secs`.
async fn eof_within(tcp: &mut TcpStream, secs: u64) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = Duration::from_secs(secs).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn harness(limits: &str) -> (Harness, DevKey) {
    let key = DevKey::p256("k");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: format!("[limits]\n{limits}\n"),
            ..Options::default()
        },
    )
    .await;
    (h, key)
}

/// Connections that never send a byte, or stop inside the HTTP/2 preface, are closed after
/// `header_read_timeout_ms` (they used to stay open for good: protocol detection had no
/// timeout).
#[tokio::test]
async fn silent_connections_and_a_stalled_preface_are_closed() {
    let (h, _key) = harness("header_read_timeout_ms = 400\nidle_timeout_ms = 60000").await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(h.proxy).await.unwrap());
    }
    let mut stalled = TcpStream::connect(h.proxy).await.unwrap();
    stalled.write_all(&PREFACE[..10]).await.unwrap();
    for tcp in silent.iter_mut().chain(std::iter::once(&mut stalled)) {
        let closed = eof_within(tcp, 5).await;
        assert!(
            closed.is_some(),
            "a connection outlived header_read_timeout_ms"
        );
    }
    // Nothing of this was a request.
    assert_eq!(h.upstream.count(), 0);
    // The admin listener is bounded too (5 s for a head there).
    let mut admin = TcpStream::connect(h.admin).await.unwrap();
    assert!(
        eof_within(&mut admin, 9).await.is_some(),
        "admin kept a silent connection"
    );
}

/// An HTTP/2 HEADERS frame whose header block never ends (no END_HEADERS, no CONTINUATION)
/// is cut off at `header_read_timeout_ms`, even on a connection that served a request.
#[tokio::test]
async fn an_unfinished_http2_header_block_is_cut_off() {
    let (h, _key) = harness("header_read_timeout_ms = 400\nidle_timeout_ms = 60000").await;
    let mut tcp = h2_open(h.proxy).await;
    tcp.write_all(&frame(HEADERS, 0, 1, &get_block()))
        .await
        .unwrap();
    let closed = closed_by_server(&mut tcp, 5).await;
    assert!(
        closed.is_some(),
        "half a header block kept the connection open"
    );
}

/// Keep-alive connections with nothing in flight are closed after `idle_timeout_ms`, on
/// HTTP/1.1 and HTTP/2 alike; a request that takes longer than that is not cut off.
#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout_but_busy_ones_are_not() {
    let (h, key) = harness("header_read_timeout_ms = 5000\nidle_timeout_ms = 700").await;
    let token = key.token(&h.claims());

    let mut h1 = TcpStream::connect(h.proxy).await.unwrap();
    h1.write_all(
        format!("GET /p HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let elapsed = eof_within(&mut h1, 5)
        .await
        .expect("idle HTTP/1.1 connection closed");
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed too early: {elapsed:?}"
    );

    let (mut send, conn) = h2_client(h.proxy).await;
    let req = http::Request::get(h.url("/h2"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open");

    // A slow upstream: the request is in flight for 1.5 s, twice idle_timeout_ms.
    h.upstream.set_delay(Duration::from_millis(1500));
    let resp = h
        .http
        .get(h.url("/slow"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// At most `max_connections` are served at once; the next one waits in the accept queue
/// until one closes.
#[tokio::test]
async fn connections_over_the_cap_wait_in_the_accept_queue() {
    let (h, key) = harness("max_connections = 2\nheader_read_timeout_ms = 5000").await;
    let token = key.token(&h.claims());
    let request = format!("GET /p HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(h.proxy).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        assert!(read_head(&mut tcp).await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    let mut third = TcpStream::connect(h.proxy).await.unwrap();
    third.write_all(request.as_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), third.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "a third connection was served over max_connections = 2"
    );
    drop(held.pop());
    let head = read_head(&mut third).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(h.upstream.count(), 3);
}

/// Rapid Reset (CVE-2023-44487): streams opened and reset at once, thousands in a burst.
/// The connection is closed; the upstream sees a bounded trickle at most.
#[tokio::test]
async fn http2_rapid_reset_closes_the_connection() {
    let (h, key) = harness("").await;
    let token = key.token(&h.claims());
    let mut block = get_block();
    // The authorization literal may exceed 127 bytes: a multi-byte HPACK integer.
    block.extend_from_slice(&[0x10, 13]);
    block.extend_from_slice(b"authorization");
    let value = format!("Bearer {token}");
    let mut len = value.len() - 127;
    block.push(0x7f);
    while len >= 128 {
        block.push((len % 128) as u8 | 0x80);
        len /= 128;
    }
    block.push(len as u8);
    block.extend_from_slice(value.as_bytes());
    let mut tcp = h2_open(h.proxy).await;
    // First one well-formed request, answered: the frames below are valid HTTP/2.
    tcp.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .unwrap();
    let answered = async {
        while h.upstream.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), answered)
        .await
        .expect("the hand-written request is served");
    let mut burst = Vec::new();
    for i in 1..5_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    // The server may close while we write: a failed write is what we want to see.
    let _ = tcp.write_all(&burst).await;
    let closed = closed_by_server(&mut tcp, 10).await;
    println!(
        "rapid reset: closed {closed:?}, upstream saw {}",
        h.upstream.count()
    );
    assert!(
        closed.is_some(),
        "a reset flood did not close the connection"
    );
    assert!(
        h.upstream.count() < 100,
        "{} cancelled requests reached the upstream",
        h.upstream.count()
    );
}

/// CONTINUATION flood: a header block that never ends, sent as fast as possible, is cut
/// off at `max_header_bytes` (not buffered without bound, not left open).
#[tokio::test]
async fn http2_continuation_flood_closes_the_connection() {
    let (h, _key) = harness("").await;
    let mut tcp = h2_open(h.proxy).await;
    tcp.write_all(&frame(HEADERS, 0, 1, &get_block()))
        .await
        .unwrap();
    let mut piece = Vec::new();
    while piece.len() < 16_000 {
        piece.extend(literal("x-flood", &"a".repeat(100)));
    }
    let cont = frame(CONTINUATION, 0, 1, &piece);
    let mut sent = 0usize;
    let writer = async {
        for _ in 0..1_000 {
            if tcp.write_all(&cont).await.is_err() {
                break;
            }
            sent += cont.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    assert!(
        sent < 4_000_000,
        "{sent} bytes of one header block were accepted"
    );
    assert!(closed_by_server(&mut tcp, 5).await.is_some());
    assert_eq!(h.upstream.count(), 0);
}

/// With `admin_tls_cert`/`admin_tls_key`, the admin listener speaks HTTPS only: probes,
/// scrapes and pushes work over TLS, and a push sent in clear gets no HTTP answer and
/// changes nothing (the push token never crosses the network readable).
#[tokio::test]
async fn the_admin_listener_speaks_https_only_when_given_a_certificate() {
    let dir = TempDir::new();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.0.join("admin.crt"), dir.0.join("admin.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let key_pair = DevKey::p256("k");
    let h = Harness::start_with(
        jwks_of(&[(&key_pair, None)]),
        Options {
            server_extra: format!(
                "admin_tls_cert = \"{}\"\nadmin_tls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            extra: format!(
                "[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\n"
            ),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    let tls = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let admin = format!("https://localhost:{}", h.admin.port());
    let ready = h
        .eventually(10, || async {
            tls.get(format!("{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    assert!(ready, "readyz over HTTPS");
    let push = |client: reqwest::Client, base: String, jti: &'static str| async move {
        client
            .post(format!("{base}/revocations"))
            .bearer_auth(PUSH_TOKEN)
            .json(&serde_json::json!({"revocations": [{"kind": "jti", "jti": jti, "exp": now() + 600}]}))
            .send()
            .await
    };
    let held = || async {
        let text = tls
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("jwtgate_revocations{kind=\"jti\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(
        push(tls.clone(), admin.clone(), "over-tls")
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(held().await.as_deref(), Some("1"));
    // In clear: no HTTP answer at all, and nothing applied.
    let clear = push(
        reqwest::Client::new(),
        format!("http://127.0.0.1:{}", h.admin.port()),
        "in-clear",
    )
    .await;
    assert!(
        clear.as_ref().map_or(true, |r| !r.status().is_success()),
        "a push in clear was answered: {clear:?}"
    );
    assert_eq!(held().await.as_deref(), Some("1"));
}
