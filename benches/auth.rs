//! Validation benchmarks (issue 5 §2): a verified-token cache hit and a full verification
//! (cache off) for RS256, PS256, ES256 and EdDSA, through the same `Authenticator` the proxy
//! uses; header hygiene; and the whole per-request path without sockets
//! (`Proxy::prepare`: extract → hash → cache → revocation check → claims header → hygiene →
//! upstream URI), with revocation on and 0 or 1 M records loaded.
//!
//! `cargo bench --bench auth`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jwtgate::auth::{Authenticator, LastToken, SystemClock, TokenHash};
use jwtgate::config::{Algorithm, Config};
use jwtgate::devkm::DevKey;
use jwtgate::jwks::{IssuerKeys, JwksMetrics};
use jwtgate::metrics::Metrics;
use serde_json::json;

const ISS: &str = "https://km.example.com:9443/oauth2/token";

fn config(cache: bool, revocation: bool) -> Config {
    let text = format!(
        r#"
[upstream]
url = "http://127.0.0.1:8081"
[[issuers]]
name = "km"
issuer = "{ISS}"
jwks_uri = "http://127.0.0.1:1/jwks"
audiences = ["api://orders"]
algorithms = ["RS256", "PS256", "ES256", "EdDSA"]
[cache]
max_entries = {}
{}
"#,
        if cache { 100_000 } else { 0 },
        if revocation {
            "[revocation]\npush_token = \"bench-push-token-0123456789\""
        } else {
            ""
        }
    );
    Config::from_toml_str(&text, &|_| None).unwrap()
}

fn keys(config: &Config, metrics: &Metrics, keys: &[&DevKey]) -> Arc<IssuerKeys> {
    let issuer = JwksMetrics::register(metrics).issuer("km");
    let ik = Arc::new(
        IssuerKeys::new(
            &config.issuers[0],
            &config.jwks,
            issuer,
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let doc = json!({"keys": keys.iter().map(|k| k.public_jwk(None)).collect::<Vec<_>>()});
    ik.load_document(doc.to_string().as_bytes()).unwrap();
    ik
}

fn authenticator(cache: bool, keys_: &[&DevKey]) -> Authenticator {
    let config = config(cache, false);
    let metrics = Arc::new(Metrics::new());
    let ik = keys(&config, &metrics, keys_);
    Authenticator::new(&config, &[ik], Arc::new(SystemClock), &metrics)
}

fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": ISS, "sub": "2f3c1b9e-user-uuid", "aud": "api://orders",
        "client_id": "consumer-key-1", "azp": "consumer-key-1", "scope": "orders:read orders:write",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "9f2c6a4e-7c1e-4b8a-9f0d-3e5a1c2b4d6f",
    })
}

fn validation(c: &mut Criterion) {
    let rsa = DevKey::rsa("rsa");
    let ec = DevKey::p256("ec");
    let ed = DevKey::ed25519("ed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cases = [
        ("RS256", &rsa, Algorithm::RS256),
        ("PS256", &rsa, Algorithm::PS256),
        ("ES256", &ec, Algorithm::ES256),
        ("EdDSA", &ed, Algorithm::EdDSA),
    ];
    let mut g = c.benchmark_group("validate");
    for cache in [true, false] {
        let auth = authenticator(cache, &[&rsa, &ec, &ed]);
        for (name, key, alg) in &cases {
            let token = key.token_with(*alg, json!({}), &claims());
            let label = if cache { "cache_hit" } else { "full_verify" };
            // What the proxy's verify phase does without a connection repeat: the shared
            // cache, else a full verification that is then kept.
            let last = LastToken::default();
            let check = |t: &str| {
                let hash = TokenHash::of(black_box(t));
                if let Some(v) = auth.cached(&hash) {
                    return v;
                }
                let v = Arc::new(rt.block_on(auth.verify(t)).unwrap().verified);
                auth.keep(t, &hash, &v, &last);
                v
            };
            check(&token); // primes the cache
            g.bench_with_input(BenchmarkId::new(label, name), &token, |b, t| {
                b.iter(|| check(t))
            });
        }
    }
    g.finish();
}

fn hygiene(c: &mut Criterion) {
    use http::header::{HeaderMap, HeaderValue};
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5"),
        ("accept", "*/*"),
        ("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
        ("x-forwarded-for", "203.0.113.7"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let peer_ip = HeaderValue::from_static("10.1.2.3");
    // With `Connection: keep-alive` (what most upstream responses carry) and without any
    // hop-by-hop header (most client requests).
    let mut clean = base.clone();
    clean.remove("connection");
    for (name, map) in [("keep_alive", &base), ("clean", &clean)] {
        c.bench_function(
            &format!("headers/strip_hop_by_hop_and_forwarded_for/{name}"),
            |b| {
                b.iter(|| {
                    let mut h = map.clone();
                    jwtgate::proxy::headers::strip_hop_by_hop(&mut h, false);
                    jwtgate::proxy::headers::append_forwarded_for(&mut h, &peer_ip);
                    black_box(h)
                })
            },
        );
    }
    let token = DevKey::p256("k").token(&claims());
    c.bench_function("headers/bearer_extract_and_token_hash", |b| {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        // The extraction the proxy runs: the configured sources (here the default one).
        let sources = [jwtgate::config::TokenSource::bearer()];
        b.iter(|| {
            let found = jwtgate::policy::sources::extract(&sources, black_box(&h), None)
                .unwrap()
                .unwrap();
            black_box(TokenHash::of(&found.token))
        })
    });
}

/// The whole per-request path without sockets, as the proxy runs it for a cached token.
fn request_path(c: &mut Criterion) {
    use jwtgate::proxy::{Peer, Proxy};
    use jwtgate::revocation::Revocation;
    use jwtgate::revocation::record::{Record, Target};
    let rsa = DevKey::rsa("rsa");
    let token = rsa.token_with(Algorithm::RS256, json!({}), &claims());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("request_path");
    for records in [0usize, 1_000_000] {
        let config = config(true, true);
        let metrics = Arc::new(Metrics::new());
        let ik = keys(&config, &metrics, &[&rsa]);
        let clock = Arc::new(SystemClock);
        let rev = Arc::new(Revocation::open(
            config.revocation.clone().unwrap(),
            clock.clone(),
            &metrics,
            0,
        ));
        let batch: Vec<Record> = (0..records)
            .map(|k| Record::Id {
                target: Target::Jti,
                id: format!("{k:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f"),
                exp: 2_000_000_000,
            })
            .collect();
        rev.list().apply(&batch);
        let auth = Arc::new(Authenticator::new(&config, &[ik], clock, &metrics));
        let proxy = Proxy::new(
            &config,
            auth,
            Some(rev),
            &metrics,
            Arc::new(jwtgate::observe::Observers::default()),
        );
        let peer = Peer::new("10.1.2.3:50000".parse().unwrap());
        let request = || {
            http::Request::builder()
                .uri("/orders/42?expand=items")
                .header("host", "api.example.com")
                .header("user-agent", "curl/8.5")
                .header("accept", "*/*")
                .header("authorization", format!("Bearer {token}"))
                .header("connection", "keep-alive")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        // Prime the verified-token cache.
        assert!(rt.block_on(proxy.prepare(request(), &peer)).is_ok());
        g.bench_with_input(
            BenchmarkId::new("cached_rs256_revocation_records", records),
            &records,
            |b, _| {
                b.iter_batched(
                    request,
                    |req| match rt.block_on(proxy.prepare(req, &peer)) {
                        Ok(p) => black_box(p),
                        Err(_) => panic!("rejected"),
                    },
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, validation, hygiene, request_path);
criterion_main!(benches);
