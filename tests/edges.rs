//! The edges an attacker walks around, through real sockets: upgrade tunnels, header
//! spellings, Host and forwarding headers, override headers, CONNECT, bound tokens.
//! (Connection bounds: `tests/connections.rs`; not-yet-synced revocation and records from
//! the future: `tests/revocation.rs`.) Each test fails on a jwtgate without the guard.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a [`SwitchingUpstream`] answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// Honours any `Upgrade` it sees (an h2c-capable app, the vulnerable case), with the
    /// right `Sec-WebSocket-Accept` for a WebSocket key.
    Honour,
    /// Like `Honour`, with a wrong `Sec-WebSocket-Accept`.
    WrongAccept,
    /// Answers 101 to every request, upgrade asked or not.
    Always,
}

/// An upstream that switches protocols and then echoes every byte, recording the heads
/// that reached it.
struct SwitchingUpstream {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl SwitchingUpstream {
    async fn start(mode: Switch) -> SwitchingUpstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (addr, _task) = serve(Arc::new(move |mut req: Request<Incoming>| {
            s.lock().unwrap().push(req.headers().clone());
            Box::pin(async move {
                let upgrade = req.headers().get("upgrade").cloned();
                if upgrade.is_none() && mode != Switch::Always {
                    return Response::new(Full::new(Bytes::from_static(b"plain")));
                }
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(up) = on.await {
                        let mut io = hyper_util::rt::TokioIo::new(up);
                        let mut buf = [0u8; 256];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = r.headers_mut();
                h.insert("upgrade", upgrade.unwrap_or_else(|| "h2c".parse().unwrap()));
                h.insert("connection", "upgrade".parse().unwrap());
                if let Some(key) = req.headers().get("sec-websocket-key") {
                    let accept = if mode == Switch::WrongAccept {
                        "dGhpcyBpcyBub3QgaXQ=".to_owned()
                    } else {
                        websocket_accept(key.as_bytes())
                    };
                    h.insert("sec-websocket-accept", accept.parse().unwrap());
                }
                r
            }) as std::pin::Pin<Box<dyn Future<Output = _> + Send>>
        }))
        .await;
        SwitchingUpstream { addr, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

fn websocket_accept(key: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

async fn in_front_of(key: &DevKey, upstream: std::net::SocketAddr, extra: &str) -> Harness {
    Harness::start_with(
        jwks_of(&[(key, None)]),
        Options {
            upstream_url: Some(format!("http://{upstream}")),
            extra: extra.to_owned(),
            ..Options::default()
        },
    )
    .await
}

/// Sends a raw HTTP/1.1 request head and returns the response head.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (tcp, head)
}

/// Writes `ping` and expects it echoed back through the tunnel.
async fn echo_works(tcp: &mut TcpStream) -> bool {
    if tcp.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

/// The tunnel is closed by jwtgate within `secs`.
async fn closed_within(tcp: &mut TcpStream, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 16];
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn websocket_head(auth: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: app\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// The critical one: with one valid token, `Upgrade: h2c` must not open a tunnel to an app
/// that speaks h2c, or every later request on it would skip jwtgate.
#[tokio::test]
async fn h2c_and_other_upgrades_are_forwarded_as_plain_requests() {
    let key = DevKey::p256("k");
    let up = SwitchingUpstream::start(Switch::Honour).await;
    let h = in_front_of(&key, up.addr, "").await;
    let token = key.token(&h.claims());
    for upgrade in [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c\r\n",
        "Connection: Upgrade\r\nUpgrade: echo\r\n",
        "Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n",
        // A WebSocket upgrade that is not a handshake (no key, wrong method) is plain too.
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
    ] {
        let before = up.count();
        let (mut tcp, head) = raw(
            h.proxy,
            &format!(
                "GET /p HTTP/1.1\r\nHost: app\r\n{}{upgrade}\r\n",
                bearer(&token)
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{upgrade}: {head}");
        assert_eq!(up.count(), before + 1);
        let seen = up.last();
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !seen.contains_key(name),
                "{upgrade}: {name} reached the app"
            );
        }
        // The connection is still plain HTTP/1.1 through jwtgate: a request without a
        // token on it is refused, not tunnelled.
        tcp.write_all(b"GET /p HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let mut rest = String::new();
        while !rest.contains("HTTP/1.1 401") {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{upgrade}: connection closed");
            rest.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(
            up.count(),
            before + 1,
            "{upgrade}: tokenless request tunnelled"
        );
    }
}

/// An upstream that answers 101 to a request that was no WebSocket handshake, or with the
/// wrong `Sec-WebSocket-Accept`, gets nothing tunnelled: 502.
#[tokio::test]
async fn a_101_that_is_not_the_websocket_answer_is_a_502() {
    let key = DevKey::p256("k");
    for (mode, head) in [
        (
            Switch::Always,
            "GET /p HTTP/1.1\r\nHost: app\r\n{auth}\r\n".to_owned(),
        ),
        (Switch::WrongAccept, websocket_head("{auth}")),
    ] {
        let up = SwitchingUpstream::start(mode).await;
        let h = in_front_of(&key, up.addr, "").await;
        let token = key.token(&h.claims());
        let (mut tcp, resp) = raw(h.proxy, &head.replace("{auth}", &bearer(&token))).await;
        assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
        assert!(!echo_works(&mut tcp).await, "bytes went through a tunnel");
        assert_eq!(
            h.metric(r#"jwtgate_upstream_errors_total{kind="other"}"#)
                .await,
            1.0
        );
    }
}

#[tokio::test]
async fn websocket_tunnels_for_a_valid_token_only() {
    let key = DevKey::p256("k");
    let up = SwitchingUpstream::start(Switch::Honour).await;
    let h = in_front_of(&key, up.addr, "").await;
    let token = key.token(&h.claims());
    let (mut tcp, head) = raw(h.proxy, &websocket_head(&bearer(&token))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}",
            websocket_accept(KEY.as_bytes())
        )),
        "{head}"
    );
    assert_eq!(up.last()["upgrade"], "websocket");
    assert!(echo_works(&mut tcp).await);

    let before = up.count();
    let (_tcp, head) = raw(h.proxy, &websocket_head("")).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(up.count(), before, "a tokenless handshake reached the app");
}

/// No tunnel outlives its credential: revoked or expired, the tunnel is closed at the next
/// re-check (every 5 s).
#[tokio::test]
async fn an_open_tunnel_is_closed_when_its_token_is_revoked_or_expires() {
    let key = DevKey::p256("k");
    let up = SwitchingUpstream::start(Switch::Honour).await;
    let n = now();
    let clock = Arc::new(ManualClock(n.into()));
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            upstream_url: Some(format!("http://{}", up.addr)),
            extra: format!(
                "[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\n"
            ),
            clock: Some(clock.clone()),
            ..Options::default()
        },
    )
    .await;
    let c = h.claims();
    let (mut revoked, head) = raw(h.proxy, &websocket_head(&bearer(&key.token(&c)))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut short = h.claims();
    short["exp"] = (n + 60).into();
    let (mut expiring, head) = raw(h.proxy, &websocket_head(&bearer(&key.token(&short)))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (mut kept, head) = raw(h.proxy, &websocket_head(&bearer(&key.token(&h.claims())))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    assert_eq!(
        h.push(json!([{"kind": "jti", "jti": c["jti"], "exp": c["exp"]}]))
            .await,
        202
    );
    clock.0.store(n + 120, Ordering::SeqCst);
    assert!(
        closed_within(&mut revoked, 8).await,
        "revoked tunnel still open"
    );
    assert!(
        closed_within(&mut expiring, 8).await,
        "expired tunnel still open"
    );
    assert!(
        echo_works(&mut kept).await,
        "a tunnel whose token holds stays open"
    );
}

/// A reload that puts a tunnel's path behind a scope its token lacks closes that tunnel at
/// its next check (DESIGN §9: tunnels are decided again under the new generation); a tunnel
/// the new config still admits stays open.
#[tokio::test]
async fn a_reload_decides_open_tunnels_again() {
    let key = DevKey::p256("k");
    let up = SwitchingUpstream::start(Switch::Honour).await;
    let h = in_front_of(&key, up.addr, "").await;
    let token = bearer(&key.token(&h.claims()));
    let head = |path: &str| websocket_head(&token).replacen("GET /ws ", &format!("GET {path} "), 1);
    let (mut admin, got) = raw(h.proxy, &head("/admin/feed")).await;
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    let (mut other, got) = raw(h.proxy, &head("/feed")).await;
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    assert!(echo_works(&mut admin).await && echo_works(&mut other).await);

    let next = format!(
        "{}\n[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nscopes_all = [\"admin\"]\n",
        h.config_text
    );
    let next = jwtgate::config::Config::from_toml_str(&next, &|_| None).unwrap();
    assert_eq!(h.reloader.reload(next).unwrap(), 2);
    assert!(
        closed_within(&mut admin, 8).await,
        "a tunnel the new generation refuses is still open"
    );
    assert!(
        echo_works(&mut other).await,
        "a tunnel it admits stays open"
    );
}

/// `x_jwt_payload` folds onto `HTTP_X_JWT_PAYLOAD` in CGI/WSGI/PHP, like `x-jwt-payload`:
/// only jwtgate's own copy reaches the app.
#[tokio::test]
async fn claims_header_in_any_spelling_is_removed() {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    let token = key.token(&h.claims());
    let resp = h
        .http
        .get(h.url("/p"))
        .bearer_auth(&token)
        .header("x_jwt_payload", "forged")
        .header("X-JWT_Payload", "forged")
        .header("x-jwt-payload", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last();
    let spellings: Vec<_> = seen
        .headers
        .keys()
        .filter(|k| k.as_str().replace('_', "-") == "x-jwt-payload")
        .collect();
    assert_eq!(spellings, ["x-jwt-payload"]);
    assert_eq!(
        seen.headers["x-jwt-payload"],
        token.split('.').nth(1).unwrap()
    );
}

/// From a peer outside `trusted_proxies`, every spelling of `Forwarded`, `X-Forwarded-*`
/// and `X-Real-IP` is removed and jwtgate's own are set; from a trusted one they are kept.
#[tokio::test]
async fn forwarding_headers_are_kept_only_from_trusted_proxies() {
    let key = DevKey::p256("k");
    let client_says = [
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "admin.internal"),
        ("x_forwarded_proto", "https"),
        ("x-forwarded-prefix", "/admin"),
        ("x-real-ip", "203.0.113.9"),
        ("x_real_ip", "203.0.113.9"),
    ];
    for trusted in [false, true] {
        let h = Harness::start_with(
            jwks_of(&[(&key, None)]),
            Options {
                server_extra: if trusted {
                    r#"trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]"#.into()
                } else {
                    r#"trusted_proxies = ["10.0.0.0/8"]"#.into()
                },
                ..Options::default()
            },
        )
        .await;
        let mut req = h.http.get(h.url("/p")).bearer_auth(key.token(&h.claims()));
        for (k, v) in client_says {
            req = req.header(k, v);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let seen = h.upstream.last().headers;
        if trusted {
            assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
            assert_eq!(seen["x-forwarded-proto"], "https");
            assert_eq!(seen["x-forwarded-host"], "admin.internal");
            assert_eq!(seen["forwarded"], "for=203.0.113.9;proto=https");
            assert_eq!(seen["x-real-ip"], "203.0.113.9");
        } else {
            assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
            assert_eq!(seen["x-forwarded-proto"], "http");
            assert_eq!(seen["x-forwarded-host"], h.proxy.to_string());
            let left: Vec<_> = seen
                .keys()
                .map(|k| k.as_str())
                .filter(|k| {
                    let k = k.replace('_', "-");
                    k == "forwarded" || k == "x-real-ip" || k.starts_with("x-forwarded-")
                })
                .collect();
            let mut left = left;
            left.sort();
            assert_eq!(
                left,
                ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
            );
        }
    }
}

/// Asserts a 400 `bad_request` that never reached the upstream.
async fn assert_bad_request(h: &Harness, head: &str) {
    let before = h.upstream.count();
    let series = r#"jwtgate_rejections_total{reason="bad_request"}"#;
    let before_metric = h.metric(series).await;
    let (_tcp, resp) = raw(h.proxy, head).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{head}: {resp}");
    assert!(resp.contains(r#"error="invalid_request""#), "{resp}");
    assert_eq!(h.upstream.count(), before, "{head}: reached the upstream");
    assert_eq!(h.metric(series).await, before_metric + 1.0, "{head}");
}

/// Override headers would let a framework serve another method or path than the one
/// checked; a lower-case method is another spelling of one; two `Host` headers are
/// ambiguous. Each is a 400 whatever the token.
#[tokio::test]
async fn override_headers_lowercase_methods_and_two_hosts_are_400() {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    let auth = bearer(&key.token(&h.claims()));
    for extra in [
        "X-HTTP-Method-Override: DELETE\r\n",
        "x-method-override: DELETE\r\n",
        "X-HTTP-Method: DELETE\r\n",
        "X-Original-URL: /admin\r\n",
        "x_original_url: /admin\r\n",
        "X-Rewrite-URL: /admin\r\n",
        "X_HTTP_METHOD_OVERRIDE: PUT\r\n",
        "Host: other\r\n",
    ] {
        assert_bad_request(
            &h,
            &format!("GET /p HTTP/1.1\r\nHost: app\r\n{auth}{extra}\r\n"),
        )
        .await;
    }
    assert_bad_request(&h, &format!("get /p HTTP/1.1\r\nHost: app\r\n{auth}\r\n")).await;
    assert_bad_request(
        &h,
        &format!("Post /p HTTP/1.1\r\nHost: app\r\n{auth}Content-Length: 0\r\n\r\n"),
    )
    .await;
}

#[tokio::test]
async fn connect_is_405_whatever_the_token() {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    let auth = bearer(&key.token(&h.claims()));
    for head in [
        format!(
            "CONNECT {} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n",
            h.upstream.addr, h.upstream.addr
        ),
        format!(
            "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            h.upstream.addr, h.upstream.addr
        ),
    ] {
        let (mut tcp, resp) = raw(h.proxy, &head).await;
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
        assert!(!echo_works(&mut tcp).await);
    }
    assert_eq!(h.upstream.count(), 0);
}

/// The target decides `Host`: an absolute-form request line over HTTP/1.1 (RFC 9112
/// §3.2.2) and `:authority` over HTTP/2 (RFC 9113 §8.3.1).
#[tokio::test]
async fn absolute_form_and_authority_decide_host() {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    let token = key.token(&h.claims());
    let (_tcp, resp) = raw(
        h.proxy,
        &format!(
            "GET http://orders.example/p HTTP/1.1\r\nHost: admin.example\r\n{}\r\n",
            bearer(&token)
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = h.upstream.last();
    assert_eq!(seen.headers["host"], "orders.example");
    assert_eq!(seen.headers["x-forwarded-host"], "orders.example");
    assert_eq!(seen.uri, "/p");

    // HTTP/2 with `:authority` and a conflicting `host` field.
    let (mut send, _conn) = h2_client(h.proxy).await;
    let req = Request::get("http://orders.example/h2")
        .header("host", "admin.example")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/h2");
    assert_eq!(seen.headers["host"], "orders.example");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

/// A token bound to a DPoP key or a client certificate (`cnf`) must not be accepted as a
/// plain bearer token: jwtgate does not check the binding.
#[tokio::test]
async fn cnf_bound_tokens_are_refused() {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    for cnf in [
        json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
    ] {
        let mut c = h.claims();
        c["cnf"] = cnf;
        let resp = h.get(&key.token(&c)).await;
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
    }
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="bound_token"}"#)
            .await,
        2.0
    );
    // An empty cnf binds nothing.
    let mut c = h.claims();
    c["cnf"] = json!({});
    assert_eq!(h.status(&key.token(&c)).await, 200);
    assert_eq!(h.upstream.count(), 1);
}

/// An upgraded connection leaves the listener's connection count, so open tunnels have a
/// cap of their own: `max_connections`. One over it is refused (502), nothing tunnelled.
#[tokio::test]
async fn open_tunnels_are_capped_at_max_connections() {
    let key = DevKey::p256("k");
    let up = SwitchingUpstream::start(Switch::Honour).await;
    let h = in_front_of(&key, up.addr, "[limits]\nmax_connections = 2\n").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut tcp, head) = raw(h.proxy, &websocket_head(&bearer(&key.token(&h.claims())))).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(echo_works(&mut tcp).await);
        open.push(tcp);
    }
    let (mut third, head) = raw(h.proxy, &websocket_head(&bearer(&key.token(&h.claims())))).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(!echo_works(&mut third).await);
    // Closing one frees its place.
    drop(open.pop());
    assert!(
        h.eventually(5, || async {
            let (mut tcp, head) =
                raw(h.proxy, &websocket_head(&bearer(&key.token(&h.claims())))).await;
            head.starts_with("HTTP/1.1 101") && echo_works(&mut tcp).await
        })
        .await
    );
}

/// The same header rules over HTTP/2: an override header is a 400 before the token is
/// read, and an `_` spelling of the claims header never reaches the app.
#[tokio::test]
async fn header_rules_hold_over_http2() {
    let key = DevKey::p256("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    let token = key.token(&h.claims());
    let (mut send, _conn) = h2_client(h.proxy).await;
    let req = |extra: (&str, &str)| {
        Request::get(format!("http://{}/p", h.proxy))
            .header("authorization", format!("Bearer {token}"))
            .header(extra.0, extra.1)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = send
        .send_request(req(("x-http-method-override", "DELETE")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(h.upstream.count(), 0);
    let resp = send
        .send_request(req(("x_jwt_payload", "forged")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last();
    assert!(!seen.headers.contains_key("x_jwt_payload"));
    assert_eq!(
        seen.headers["x-jwt-payload"],
        token.split('.').nth(1).unwrap()
    );
}
