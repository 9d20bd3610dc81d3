//! Proxying through real sockets: header hygiene, streaming, upstream failures, HTTP/2,
//! limits, upgrades, and the shutdown sequence.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::HeaderMap;
use http_body::Frame;
use jwtgate::devkm::DevKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request body fed by the test, frame by frame.
struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

async fn h1_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<ChannelBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// jwtgate in front of the given upstream address.
async fn with_upstream(key: &DevKey, upstream: std::net::SocketAddr) -> Harness {
    Harness::start_with(
        jwks_of(&[(key, None)]),
        Options {
            upstream_url: Some(format!("http://{upstream}")),
            ..Options::default()
        },
    )
    .await
}

async fn setup() -> (Harness, DevKey) {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    (h, key)
}

#[tokio::test]
async fn identity_headers_cannot_be_forged_or_dropped() {
    let (h, key) = setup().await;
    let token = key.token(&h.claims());
    let payload = token.split('.').nth(1).unwrap().to_owned();
    let resp = h
        .http
        .get(h.url("/p"))
        .bearer_auth(&token)
        .header("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9")
        .header("x-jwt-payload", "second-copy")
        .header("connection", "x-jwt-payload, x-forwarded-for, x-secret")
        .header("x-secret", "hop")
        .header("x-forwarded-for", "10.9.9.9")
        .header("proxy-authorization", "Basic abc")
        .header("x-app", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last();
    let claims: Vec<_> = seen.headers.get_all("x-jwt-payload").iter().collect();
    assert_eq!(
        claims,
        vec![payload.as_str()],
        "exactly jwtgate's claims header"
    );
    assert!(
        !seen.headers.contains_key("x-secret"),
        "Connection-named header removed"
    );
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert_eq!(seen.headers["x-app"], "kept");
    // Connection named X-Forwarded-For, so the client's copy went; jwtgate's own remains.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], h.proxy.to_string());
    assert_eq!(seen.headers["host"], h.proxy.to_string());
}

/// From a peer outside `trusted_proxies` (the default: none), a client's
/// `X-Forwarded-For` is replaced by the peer: it does not get to say where it came from.
#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_the_peer_alone() {
    let (h, key) = setup().await;
    let token = key.token(&h.claims());
    h.http
        .get(h.url("/p"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(h.upstream.last().headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn authorization_is_stripped_when_configured() {
    let key = DevKey::p256("k");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: "[forward]\nstrip_authorization = true\nclaims_header = \"x-claims\"\n".into(),
            ..Options::default()
        },
    )
    .await;
    let token = key.token(&h.claims());
    assert_eq!(h.status(&token).await, 200);
    let seen = h.upstream.last();
    assert!(!seen.headers.contains_key("authorization"));
    assert_eq!(seen.headers["x-claims"], token.split('.').nth(1).unwrap());
}

#[tokio::test]
async fn body_streams_and_claims_header_is_dropped_from_trailers() {
    let (h, key) = setup().await;
    let token = key.token(&h.claims());
    let mut send = h1_client(h.proxy).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = http::Request::post("/upload")
        .header("host", "api.example")
        .header("authorization", format!("Bearer {token}"))
        .header("te", "trailers")
        .header("trailer", "x-jwt-payload, x-checksum")
        .body(ChannelBody(rx))
        .unwrap();
    let first_chunk = h.upstream.first_chunk.clone();
    let waiter = tokio::spawn(async move { first_chunk.notified().await });
    let resp = tokio::spawn(send.send_request(req));
    tx.send(Frame::data(Bytes::from_static(b"first-")))
        .await
        .unwrap();
    // The upstream must see the first chunk while the client still holds the last one.
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("upstream saw the first chunk before the client sent the last")
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"last")))
        .await
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-jwt-payload", "forged".parse().unwrap());
    trailers.insert("x-checksum", "abc".parse().unwrap());
    tx.send(Frame::trailers(trailers)).await.unwrap();
    drop(tx);
    let resp = resp.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last();
    assert_eq!(&seen.body[..], b"first-last");
    let t = seen.trailers.expect("trailers forwarded");
    assert_eq!(t["x-checksum"], "abc");
    assert!(
        !t.contains_key("x-jwt-payload"),
        "claims header copy in trailers dropped"
    );
    assert_eq!(seen.headers["x-forwarded-host"], "api.example");
}

#[tokio::test]
async fn rejected_request_body_never_reaches_the_upstream() {
    let (h, _key) = setup().await;
    let resp = h
        .http
        .post(h.url("/upload"))
        .bearer_auth("not.a.token")
        .body(vec![b'x'; 256 * 1024])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn upstream_refused_is_502_and_timeout_is_504() {
    let key = DevKey::p256("k");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = with_upstream(&key, closed).await;
    assert_eq!(h.status(&key.token(&h.claims())).await, 502);
    assert_eq!(
        h.metric(r#"jwtgate_upstream_errors_total{kind="connect"}"#)
            .await,
        1.0
    );

    let (h, key) = setup().await;
    h.upstream.set_delay(Duration::from_millis(3000)); // request_timeout_ms = 2000
    assert_eq!(h.status(&key.token(&h.claims())).await, 504);
    assert_eq!(
        h.metric(r#"jwtgate_upstream_errors_total{kind="timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (h, key) = setup().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(h.url("/h2"))
        .bearer_auth(key.token(&h.claims()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], h.proxy.to_string());

    let resp = client.get(h.url("/h2")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(h.upstream.count(), 1);
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (h, key) = setup().await;
    let resp = h
        .http
        .get(h.url("/big"))
        .bearer_auth(key.token(&h.claims()))
        .header("x-big", "a".repeat(70_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn shutdown_fails_readiness_first_serves_during_delay_and_drains() {
    let key = DevKey::p256("k");
    let mut h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            shutdown_delay_s: 1,
            ..Options::default()
        },
    )
    .await;
    let token = key.token(&h.claims());
    h.upstream.set_delay(Duration::from_millis(1800));
    let in_flight = {
        let (client, url, token) = (reqwest::Client::new(), h.url("/slow"), token.clone());
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.readyz().await, 503, "readiness fails at once");
    h.upstream.set_delay(Duration::ZERO);
    let during = reqwest::Client::new()
        .get(h.url("/during"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 200, "still served during shutdown_delay_s");
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "in-flight request completed"
    );
    let task = h.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("jwtgate stopped after draining")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(h.proxy).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let key = DevKey::p256("k");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: "[limits]\nheader_read_timeout_ms = 300\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // jwtgate closes the connection (possibly after a 408) once the timeout passes.
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(h.upstream.count(), 0);
}

/// `promtool check metrics` on a real scrape. `.ci/run` installs promtool; outside CI a
/// machine without it skips this check loudly.
#[tokio::test]
async fn metrics_pass_promtool() {
    let (h, key) = setup().await;
    h.status(&key.token(&h.claims())).await;
    h.status("bad").await;
    let text = h.metrics().await;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("promtool is required in CI: {e}"),
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "jwtgate_requests_total",
        "jwtgate_rejections_total",
        "jwtgate_request_duration_seconds_bucket",
        "jwtgate_token_cache_hits_total",
        "jwtgate_token_cache_misses_total",
        "jwtgate_jwks_fetches_total",
        "jwtgate_jwks_keys",
        "jwtgate_jwks_last_success_timestamp_seconds",
        "jwtgate_upstream_errors_total",
        "jwtgate_ready",
    ] {
        assert!(text.contains(&format!("\n{family}")), "{family} missing");
    }
}

/// A hand-written HTTP/1.1 upstream that counts the connections it accepts. Per path:
/// `/empty` answers 204, `/close` answers with `Connection: close` and closes, `/drop`
/// answers normally and then closes the idle connection without saying so (as an upstream
/// with a short keep-alive timeout does); anything else answers 200 "ok".
async fn counting_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let head_only = head.starts_with("HEAD ");
                    let answer: &[u8] = match path.as_str() {
                        "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
                        "/close" => {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        }
                        _ if head_only => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if tcp.write_all(answer).await.is_err() || path == "/close" {
                        return;
                    }
                    if path == "/drop" {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_reused_and_closed_ones_replaced() {
    use std::sync::atomic::Ordering;
    let key = DevKey::p256("k");
    let (up, accepted) = counting_upstream().await;
    let h = with_upstream(&key, up).await;
    let token = key.token(&h.claims());
    let get = |path: &'static str| {
        let req = h.http.get(h.url(path)).bearer_auth(&token);
        async move { req.send().await.unwrap() }
    };

    // Sequential requests, with and without a body, and HEAD: one upstream connection.
    for path in ["/a", "/b", "/empty", "/c", "/empty", "/d"] {
        let resp = get(path).await;
        let expected = if path == "/empty" { 204 } else { 200 };
        assert_eq!(resp.status(), expected, "{path}");
        assert_eq!(
            resp.text().await.unwrap(),
            if expected == 200 { "ok" } else { "" }
        );
    }
    let head = h
        .http
        .head(h.url("/h"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "connection not reused");

    // `Connection: close` from the upstream: that connection is not reused.
    assert_eq!(get("/close").await.status(), 200);
    assert_eq!(get("/e").await.text().await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // The upstream silently closes an idle pooled connection: the next request is still
    // answered (on a fresh connection), never with a 502.
    assert_eq!(get("/drop").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(get("/f").await.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(
        h.metric(r#"jwtgate_upstream_errors_total{kind="other"}"#)
            .await,
        0.0
    );
}
