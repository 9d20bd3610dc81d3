//! Request-level observability (DESIGN §11): the access log read from the real binary's
//! stdout, and the spans jwtgate exports read by a real OTLP/HTTP receiver that decodes
//! them with the reference protobuf types.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use jwtgate::devkm::DevKey;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

fn token(key: &DevKey, iss: &str, sub: &str, exp_in: i64) -> String {
    let n = now();
    key.token(&json!({
        "iss": iss, "sub": sub, "aud": AUD, "iat": n - 5, "exp": n + exp_in,
        "jti": format!("j-{}", rand_u64()), "client_id": "orders-app",
    }))
}

/// `jwtgate serve` with the access log on; its stdout lines arrive on a channel.
async fn serve_with_access_log(
    keys: &KeyServer,
    upstream: &Upstream,
    access_log: &str,
) -> (
    Spawned,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
    TempDir,
) {
    let dir = TempDir::new();
    let file = dir.file("jwtgate.toml");
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[[issuers]]\nname = \"km\"\nissuer = \"http://{}/oauth2/token\"\n\
         jwks_uri = \"{}\"\naudiences = [\"{AUD}\"]\n\
         [[token.sources]]\nheader = \"authorization\"\nscheme = \"Bearer\"\n\
         [[token.sources]]\nquery = \"access_token\"\n\
         [[routes]]\nname = \"health\"\npath_exact = \"/health\"\nauth = \"public\"\n\
         [[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\n\
         [[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nscopes_all = [\"admin\"]\n\
         [access_log]\n{access_log}\n",
        upstream.addr,
        keys.addr,
        keys.jwks_uri()
    );
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_jwtgate"));
    command.args(["serve", "--config", &file]);
    let mut proc = Spawned::spawn_with(command, Stdio::piped());
    let rx = lines_of(proc.child.stdout.take().unwrap());
    proc.ready().await;
    let proxy = proc.proxy;
    (proc, proxy, rx, dir)
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>) -> Value {
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("an access log line on stdout");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request_and_never_a_token_or_query() {
    let key = DevKey::rsa("k1");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let log_key = "an-hmac-key-of-32-bytes-for-tests";
    let (_proc, proxy, lines, _dir) = serve_with_access_log(
        &keys,
        &upstream,
        &format!("enabled = true\nsubject_key = \"{log_key}\""),
    )
    .await;
    let iss = format!("http://{}/oauth2/token", keys.addr);
    let good = token(&key, &iss, "alice", 600);
    let expired = token(&key, &iss, "bob", -3600);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: String| http.get(format!("http://{proxy}{path}"));

    // Accepted, the token in the query string (which is also stripped upstream).
    let r = get(format!("/orders/7?access_token={good}&page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let accepted = next_line(&lines);
    // Rejected: expired, in the Authorization header.
    let r = get("/orders/8?secret=s3".into())
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let rejected = next_line(&lines);
    // Public.
    let r = get("/health?probe=1".into()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let public = next_line(&lines);
    // Only the accepted and the public request reached the upstream.
    assert_eq!(upstream.count(), 2);

    assert_eq!(accepted["method"], "GET");
    assert_eq!(accepted["path"], "/orders/7");
    assert_eq!(accepted["route"], "orders");
    assert_eq!(accepted["status"], 200);
    assert_eq!(accepted["outcome"], "forwarded");
    assert_eq!(accepted["reason"], Value::Null);
    assert_eq!(accepted["issuer"], "km");
    assert_eq!(accepted["client_id"], "orders-app");
    // sub_fp = HMAC-SHA256(subject_key, sub), first 16 hex characters; no `sub` key.
    assert_eq!(accepted["sub_fp"], hmac_fp(log_key, "alice"));
    assert!(accepted.get("sub").is_none(), "{accepted}");
    assert_eq!(accepted["token_fp"].as_str().unwrap().len(), 8);
    assert!(accepted["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(accepted["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(accepted["duration_ms"].as_f64() >= accepted["upstream_ms"].as_f64());
    assert_eq!(accepted["trace_id"], Value::Null);
    let ts = accepted["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );

    assert_eq!(rejected["path"], "/orders/8");
    assert_eq!(rejected["route"], "orders");
    assert_eq!(rejected["status"], 401);
    assert_eq!(rejected["outcome"], "rejected");
    assert_eq!(rejected["reason"], "expired");
    assert_eq!(rejected["upstream_ms"], Value::Null);
    assert_eq!(rejected["token_fp"].as_str().unwrap().len(), 8);

    assert_eq!(public["path"], "/health");
    assert_eq!(public["route"], "health");
    assert_eq!(public["status"], 200);
    assert_eq!(public["outcome"], "forwarded");
    assert_eq!(public["token_fp"], Value::Null);

    for line in [&accepted, &rejected, &public] {
        let text = line.to_string();
        for secret in [&good, &expired] {
            for part in secret.split('.') {
                assert!(!text.contains(part), "a token segment in {text}");
            }
        }
        for query in ["access_token", "page=2", "secret", "s3", "probe", "?"] {
            assert!(!text.contains(query), "{query:?} in {text}");
        }
        assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_only_logs_rejections_and_include_subject_logs_sub() {
    let key = DevKey::rsa("k1");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let (_proc, proxy, lines, _dir) = serve_with_access_log(
        &keys,
        &upstream,
        "enabled = true\nrejected_only = true\ninclude_subject = true",
    )
    .await;
    let iss = format!("http://{}/oauth2/token", keys.addr);
    let good = token(&key, &iss, "alice", 600);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..3 {
        let r = http
            .get(format!("http://{proxy}/orders/1"))
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A wrong audience: verified signature, so the holder is known.
    let n = now();
    let other_aud = key.token(&json!({
        "iss": iss, "sub": "mallory", "aud": "api://other", "iat": n - 5, "exp": n + 600,
    }));
    let r = http
        .get(format!("http://{proxy}/orders/2"))
        .bearer_auth(&other_aud)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let missing = http
        .get(format!("http://{proxy}/orders/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    // Refused after verification: the line names the holder.
    let scope = http
        .get(format!("http://{proxy}/admin/x"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(scope.status(), 403);
    // The first line is the first rejection: the three accepted requests wrote none.
    let first = next_line(&lines);
    assert_eq!(first["path"], "/orders/2", "{first}");
    assert_eq!(first["reason"], "audience");
    let second = next_line(&lines);
    assert_eq!(second["path"], "/orders/3", "{second}");
    assert_eq!(second["reason"], "missing");
    assert_eq!(second["sub"], Value::Null);
    assert!(second.get("sub_fp").is_none());
    // Refused while being verified (wrong audience): nothing from the payload.
    assert_eq!(first["sub"], Value::Null);
    assert_eq!(first["issuer"], Value::Null);
    let third = next_line(&lines);
    assert_eq!(third["reason"], "insufficient_scope", "{third}");
    assert_eq!(third["sub"], "alice");
    assert_eq!(third["issuer"], "km");
    assert_eq!(third["client_id"], "orders-app");
}

fn hmac_fp(key: &str, sub: &str) -> String {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&k, sub.as_bytes());
    tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OTLP/HTTP receiver: every exported span, decoded.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// `service.name` of every resource received.
    services: Arc<Mutex<Vec<String>>>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let services = Arc::new(Mutex::new(Vec::new()));
        let (s, r, v) = (spans.clone(), requests.clone(), services.clone());
        let (addr, _task) = serve(Arc::new(move |req: Request<Incoming>| {
            let (s, r, v) = (s.clone(), r.clone(), v.clone());
            Box::pin(async move {
                let path = req.uri().path().to_owned();
                let ct = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                r.lock().unwrap().push((path, ct));
                let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in export.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find_map(|kv| {
                            match (kv.key.as_str(), kv.value.as_ref()?.value.as_ref()?) {
                                ("service.name", AnyValue::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            }
                        });
                    v.lock().unwrap().push(service.unwrap_or_default());
                    for ss in rs.scope_spans {
                        s.lock().unwrap().extend(ss.spans);
                    }
                }
                Response::new(Full::new(Bytes::new()))
            })
        }))
        .await;
        Collector {
            addr,
            spans,
            services,
            requests,
        }
    }

    /// Waits for a span of `trace_id`.
    async fn span_of(&self, trace_id: &[u8]) -> Span {
        for _ in 0..200 {
            if let Some(s) = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.trace_id == trace_id)
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no span of trace {}", hex(trace_id));
    }

    fn count(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The `traceparent` the upstream received: (trace id, parent span id, flags).
fn forwarded_parent(upstream: &Upstream) -> (String, String, String) {
    let seen = upstream.last();
    let v = seen
        .headers
        .get("traceparent")
        .expect("a traceparent upstream")
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A client whose connections come from `ip` (127.0.0.2 is a trusted proxy below).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// jwtgate with tracing to `endpoint` at `ratio`, 127.0.0.2 a trusted proxy, and `extra`
/// config (routes).
async fn traced(key: &DevKey, endpoint: &str, ratio: f64, extra: &str) -> Harness {
    Harness::start_with(
        jwks_of(&[(key, None)]),
        Options {
            server_extra: "trusted_proxies = [\"127.0.0.2\"]".into(),
            extra: format!(
                "[tracing]\notlp_endpoint = \"{endpoint}\"\nsample_ratio = {ratio:?}\n{extra}"
            ),
            ..Options::default()
        },
    )
    .await
}

const TRUSTED_PARENT: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_traceparent_is_trusted_only_from_proxies() {
    let collector = Collector::start().await;
    let key = DevKey::rsa("k1");
    let routes = "[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\n";
    let h = traced(&key, &format!("http://{}/", collector.addr), 1.0, routes).await;
    let good = key.token(&h.claims());
    let trusted = client_from("127.0.0.2");
    let untrusted = client_from("127.0.0.1");
    let incoming = format!("00-{TRUSTED_PARENT}-00f067aa0ba902b7-01");

    let send = |client: &reqwest::Client, path: &str, state: &'static str| {
        client
            .get(h.url(path))
            .bearer_auth(&good)
            .header("traceparent", &incoming)
            .header("tracestate", state)
            .send()
    };

    // From a trusted proxy: its trace goes on, jwtgate's span is the upstream's parent.
    let r = send(&trusted, "/orders/1?card=4111", "vendor=kept")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, parent, flags) = forwarded_parent(&h.upstream);
    assert_eq!(trace, TRUSTED_PARENT);
    assert_eq!(flags, "01");
    assert_eq!(h.upstream.last().headers["tracestate"], "vendor=kept");
    let span = collector.span_of(&unhex(TRUSTED_PARENT)).await;
    assert_eq!(
        hex(&span.span_id),
        parent,
        "the upstream's parent is jwtgate's span"
    );
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(span.name, "GET orders");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attr(&span, "jwtgate.outcome").as_deref(), Some("forwarded"));
    assert_eq!(attr(&span, "jwtgate.route").as_deref(), Some("orders"));
    assert_eq!(attr(&span, "jwtgate.issuer").as_deref(), Some("test-km"));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(&span, "url.path").as_deref(), Some("/orders/1"));
    assert_eq!(attr(&span, "jwtgate.reason"), None);
    for kv in &span.attributes {
        let v = format!("{:?}", kv.value);
        assert!(!v.contains("4111") && !v.contains(&good[..20]), "{v}");
    }

    // The same header from an untrusted peer starts a new trace; its tracestate is dropped.
    let r = send(&untrusted, "/orders/2", "vendor=forged")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, parent, _) = forwarded_parent(&h.upstream);
    assert_ne!(trace, TRUSTED_PARENT);
    assert!(h.upstream.last().headers.get("tracestate").is_none());
    let span = collector.span_of(&unhex(&trace)).await;
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&span.span_id), parent);

    // A rejection is a span too, with its reason; it never reaches the upstream.
    let before = h.upstream.count();
    let r = untrusted
        .get(h.url("/orders/3"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(h.upstream.count(), before);
    let mut rejected = None;
    for _ in 0..200 {
        rejected = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| attr(s, "jwtgate.outcome").as_deref() == Some("rejected"))
            .cloned();
        if rejected.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejected = rejected.expect("a span for the rejected request");
    assert_eq!(
        attr(&rejected, "jwtgate.reason").as_deref(),
        Some("malformed")
    );
    assert_eq!(
        attr(&rejected, "http.response.status_code").as_deref(),
        Some("401")
    );

    let services = collector.services.lock().unwrap().clone();
    assert!(
        !services.is_empty() && services.iter().all(|s| s == "jwtgate"),
        "{services:?}"
    );
    let requests = collector.requests.lock().unwrap().clone();
    assert!(!requests.is_empty());
    for (path, ct) in requests {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_parent_decides_sampling_and_a_malformed_traceparent_is_replaced() {
    let collector = Collector::start().await;
    let key = DevKey::rsa("k1");
    let h = traced(&key, &format!("http://{}", collector.addr), 0.0, "").await;
    let good = key.token(&h.claims());
    let trusted = client_from("127.0.0.2");
    let send = |traceparent: &str| {
        trusted
            .get(h.url("/x"))
            .bearer_auth(&good)
            .header("traceparent", traceparent.to_owned())
            .send()
    };
    // Sampled by the trusted parent although sample_ratio = 0.
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(send(sampled).await.unwrap().status(), 200);
    let (trace, _, flags) = forwarded_parent(&h.upstream);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("0af7651916cd43dd8448eb211c80319c", "01")
    );
    collector
        .span_of(&unhex("0af7651916cd43dd8448eb211c80319c"))
        .await;

    // Not sampled by the parent: the context goes on unsampled, no span is exported.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    assert_eq!(send(unsampled).await.unwrap().status(), 200);
    let (trace, parent, flags) = forwarded_parent(&h.upstream);
    assert_eq!(trace, "11111111111111111111111111111111");
    assert_eq!(flags, "00");
    assert_ne!(
        parent, "2222222222222222",
        "jwtgate's own span is the parent"
    );

    // Malformed (bad version, short ids, upper-case hex, all-zero trace id, junk): never
    // forwarded as sent; a fresh, valid context goes upstream instead.
    for bad in [
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\u{1}; drop",
        "zzz",
    ] {
        if let Ok(resp) = send(bad).await {
            assert_eq!(resp.status(), 200, "{bad:?}");
            let v = h.upstream.last().headers["traceparent"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_ne!(v, bad);
            let (trace, span, flags) = forwarded_parent(&h.upstream);
            assert_eq!((trace.len(), span.len()), (32, 16), "{v}");
            assert_ne!(
                trace, "0af7651916cd43dd8448eb211c80319c",
                "{bad:?} was honoured"
            );
            assert_eq!(
                flags, "00",
                "sample_ratio = 0 for a new trace: {bad:?} → {v}"
            );
        }
    }
    // Only the one sampled request produced a span.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(collector.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_collector_costs_spans_never_requests() {
    // Hanging: accepts connections and never answers (the export waits out its timeout).
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = hanging.accept().await {
            open.push(tcp);
        }
    });
    // Dead: bound (so no other socket takes the port) but not listening: refused.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap();
    for (endpoint, wait_for_drop) in [(hanging_addr, false), (dead, true)] {
        let key = DevKey::rsa("k1");
        let h = traced(&key, &format!("http://{endpoint}"), 1.0, "").await;
        let good = key.token(&h.claims());
        for _ in 0..50 {
            assert_eq!(h.status(&good).await, 200);
        }
        assert_eq!(h.upstream.count(), 50);
        assert_eq!(h.metric("jwtgate_trace_spans_exported_total").await, 0.0);
        if wait_for_drop {
            let series = "jwtgate_trace_spans_dropped_total{cause=\"export_failed\"}";
            let mut dropped = 0.0;
            for _ in 0..100 {
                dropped = h.metric(series).await;
                if dropped >= 50.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(dropped, 50.0, "every span of the dead collector counted");
        }
    }
}
