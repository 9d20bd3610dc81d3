//! Validation benchmarks (issue 5 §2): a verified-token cache hit and a full verification
//! (cache off) for RS256, PS256, ES256 and EdDSA, through the same `Authenticator` the proxy
//! uses; plus the whole per-request decision without sockets (extract → authenticate →
//! revocation check) and header hygiene.
//!
//! `cargo bench --bench auth`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jwtgate::auth::{Authenticator, SystemClock, TokenHash};
use jwtgate::config::{Algorithm, Config};
use jwtgate::devkm::DevKey;
use jwtgate::jwks::IssuerKeys;
use jwtgate::metrics::Metrics;
use serde_json::json;

const ISS: &str = "https://km.example.com:9443/oauth2/token";

fn authenticator(cache: bool, keys: &[&DevKey]) -> Authenticator {
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
"#,
        if cache { 100_000 } else { 0 }
    );
    let config = Config::from_toml_str(&text, &|_| None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let ik =
        Arc::new(IssuerKeys::new(&config.issuers[0], &config.jwks, metrics.issuer("km")).unwrap());
    let doc = json!({"keys": keys.iter().map(|k| k.public_jwk(None)).collect::<Vec<_>>()});
    ik.load_document(doc.to_string().as_bytes()).unwrap();
    Authenticator::new(&config, &[ik], None, Arc::new(SystemClock), metrics)
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
            // Prime the cache.
            rt.block_on(auth.authenticate(&token, &TokenHash::of(&token)))
                .unwrap();
            g.bench_with_input(BenchmarkId::new(label, name), &token, |b, t| {
                b.iter(|| {
                    let hash = TokenHash::of(black_box(t));
                    rt.block_on(auth.authenticate(t, &hash)).unwrap()
                })
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
        ("authorization", "Bearer eyJ…"),
        ("x-forwarded-for", "203.0.113.7"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("headers/strip_hop_by_hop_and_forwarded_for", |b| {
        b.iter(|| {
            let mut h = base.clone();
            jwtgate::proxy::headers::strip_hop_by_hop(&mut h, false);
            jwtgate::proxy::headers::append_forwarded_for(&mut h, "10.1.2.3".parse().unwrap());
            black_box(h)
        })
    });
    let token = DevKey::p256("k").token(&claims());
    c.bench_function("headers/bearer_extract_and_token_hash", |b| {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        b.iter(|| {
            let t = jwtgate::proxy::bearer(black_box(&h)).unwrap();
            black_box(TokenHash::of(t))
        })
    });
}

criterion_group!(benches, validation, hygiene);
criterion_main!(benches);
