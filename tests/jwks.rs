//! Key handling through real sockets: rotation, unknown-kid storms, key-manager outages,
//! discovery, readiness.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use jwtgate::devkm::DevKey;
use serde_json::json;

#[tokio::test]
async fn key_rotation_is_accepted_after_one_refetch() {
    let old = DevKey::rsa("old");
    let h = Harness::start(jwks_of(&[(&old, None)])).await;
    assert_eq!(h.status(&old.token(&h.claims())).await, 200);

    let new = DevKey::p256("new");
    h.keys.set_jwks(jwks_of(&[(&old, None), (&new, None)]));
    let hits = h.keys.hits();
    assert_eq!(h.status(&new.token(&h.claims())).await, 200);
    assert_eq!(h.keys.hits(), hits + 1, "exactly one refetch");
    assert_eq!(h.upstream.count(), 2);
}

#[tokio::test]
async fn random_kid_storm_is_bounded_while_valid_tokens_pass() {
    let key = DevKey::rsa("k1");
    let h = Arc::new(Harness::start(jwks_of(&[(&key, None)])).await);
    let good = key.token(&h.claims());
    let intruder = DevKey::rsa("intruder");
    let claims = h.claims();
    // Pre-sign a handful of bodies; the kid is what varies.
    let tokens: Vec<String> = (0..10_000)
        .map(|i| {
            intruder.token_with(
                jwtgate::config::Algorithm::RS256,
                json!({"kid": format!("random-{i}-{}", rand_u64())}),
                &claims,
            )
        })
        .collect();

    let start_hits = h.keys.hits();
    let started = Instant::now();
    let tokens = Arc::new(tokens);
    let mut workers = Vec::new();
    for w in 0..32 {
        let (h, tokens) = (h.clone(), tokens.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for t in tokens.iter().skip(w).step_by(32) {
                statuses.push(h.status(t).await);
            }
            statuses
        }));
    }
    let probe = {
        let (h, good) = (h.clone(), good.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            let mut total = 0;
            while total < 50 {
                total += 1;
                if h.status(&good).await == 200 {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, total)
        })
    };
    let mut rejected = 0;
    for w in workers {
        rejected += w.await.unwrap().iter().filter(|s| **s == 401).count();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (ok, total) = probe.await.unwrap();
    let fetches = h.keys.hits() - start_hits;

    println!("storm: 10000 random-kid requests in {elapsed:.2}s, {fetches} JWKS fetches");
    assert_eq!(rejected, 10_000, "every random kid is a 401");
    assert_eq!(
        ok, total,
        "the valid token kept getting 200 during the storm"
    );
    // min_refetch_interval_s = 2 in the harness.
    let bound = (elapsed / 2.0).ceil() as usize + 1;
    assert!(
        fetches <= bound,
        "{fetches} JWKS fetches in {elapsed:.1}s, bound {bound}"
    );
    assert!(fetches >= 1, "an unknown kid triggers a refetch");
    assert_eq!(h.upstream.count(), total);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="unknown_kid"}"#)
            .await,
        10_000.0
    );
}

#[tokio::test]
async fn key_manager_down_keeps_cached_keys_and_unknown_kid_is_503() {
    let key = DevKey::p256("k1");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    h.keys.set_down(true);
    // Known kid: served from the last good set, cache or not.
    let t1 = key.token(&h.claims());
    let t2 = key.token(&h.claims());
    assert_eq!(h.status(&t1).await, 200);
    assert_eq!(h.status(&t2).await, 200);

    // Unknown kid while the key manager is down: an infrastructure failure, not a 401.
    let other = DevKey::p256("rotated-in");
    let resp = h.get(&other.token(&h.claims())).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(h.upstream.count(), 2);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="keys_unavailable"}"#)
            .await,
        1.0
    );
    assert!(
        h.metric(r#"jwtgate_jwks_fetches_total{issuer="test-km",result="error"}"#)
            .await
            >= 1.0
    );
    assert_eq!(
        h.readyz().await,
        200,
        "once ready, a key-manager outage does not flap readiness"
    );
}

#[tokio::test]
async fn no_keys_yet_is_503_and_not_ready_until_they_arrive() {
    let key = DevKey::rsa("k1");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            keys_down: true,
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    // Wait until the first fetch has failed.
    for _ in 0..100 {
        if h.metric(r#"jwtgate_jwks_fetches_total{issuer="test-km",result="error"}"#)
            .await
            >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.readyz().await, 503);
    let resp = h.get(&key.token(&h.claims())).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(h.upstream.count(), 0);

    // The key manager comes back: the retry (1 s backoff) loads keys and readiness follows.
    h.keys.set_down(false);
    h.wait_ready().await;
    assert_eq!(h.status(&key.token(&h.claims())).await, 200);
}

#[tokio::test]
async fn unreachable_key_manager_at_start_gives_503_with_retry_after() {
    // A JWKS URI nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let key = DevKey::rsa("k1");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            issuer_extra: format!(
                "discovery_url = \"http://{closed}/.well-known/openid-configuration\""
            ),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.readyz().await, 503);
    let resp = h.get(&key.token(&h.claims())).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(h.upstream.count(), 0);
    assert!(h.metric("jwtgate_ready").await == 0.0);
}

#[tokio::test]
async fn cached_token_is_refused_once_its_key_leaves_the_jwks() {
    let a = DevKey::rsa("a");
    let b = DevKey::rsa("b");
    let h = Harness::start_with(
        jwks_of(&[(&a, None), (&b, None)]),
        Options {
            extra: "refresh_interval_s = 1\nmax_stale_s = 60\n".into(),
            ..Options::default()
        },
    )
    .await;
    let token = a.token(&h.claims());
    assert_eq!(h.status(&token).await, 200);
    assert_eq!(h.status(&token).await, 200);
    assert_eq!(h.metric("jwtgate_token_cache_hits_total").await, 1.0);

    h.keys.set_jwks(jwks_of(&[(&b, None)]));
    let fetches = h
        .metric(r#"jwtgate_jwks_fetches_total{issuer="test-km",result="ok"}"#)
        .await;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if h.metric(r#"jwtgate_jwks_fetches_total{issuer="test-km",result="ok"}"#)
            .await
            > fetches
        {
            break;
        }
    }
    let before = h.upstream.count();
    let resp = h.get(&token).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(h.upstream.count(), before);
    assert_eq!(h.status(&b.token(&h.claims())).await, 200);
}

#[tokio::test]
async fn oidc_discovery_finds_the_jwks() {
    let key = DevKey::ed25519("ed");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let issuer = format!("http://{}/oauth2/token", keys.addr);
    keys.set_issuer(&issuer);
    let upstream = Upstream::start().await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
url = "http://{}"
[[issuers]]
issuer = "{issuer}"
discovery_url = "http://{}/.well-known/openid-configuration"
audiences = ["{AUD}"]
algorithms = ["EdDSA"]
"#,
        upstream.addr, keys.addr
    );
    let config = jwtgate::config::Config::from_toml_str(&text, &|_| None).unwrap();
    let app = jwtgate::App::build(config).unwrap().bind().await.unwrap();
    let proxy = app.proxy_addr();
    tokio::spawn(app.run(std::future::pending()));
    let client = reqwest::Client::new();
    let n = now();
    let token = key.token(&json!({"iss": issuer, "aud": AUD, "exp": n + 60, "iat": n}));
    let mut status = 0;
    for _ in 0..100 {
        status = client
            .get(format!("http://{proxy}/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(upstream.count(), 1);
    assert_eq!(keys.hits(), 1, "discovery then one JWKS fetch");
}

#[tokio::test]
async fn background_refresh_is_conditional_and_304_keeps_the_keys() {
    let key = DevKey::rsa("k");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: "refresh_interval_s = 1\nmax_stale_s = 60\n".into(),
            ..Options::default()
        },
    )
    .await;
    h.keys.set_etag("\"v1\"");
    // The first refresh after this fetches the ETag; the next ones send If-None-Match.
    for _ in 0..100 {
        if h.keys.not_modified_hits() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        h.keys.not_modified_hits() >= 1,
        "If-None-Match was sent and answered 304"
    );
    assert!(
        h.metric(r#"jwtgate_jwks_fetches_total{issuer="test-km",result="not_modified"}"#)
            .await
            >= 1.0
    );
    assert_eq!(
        h.metric(r#"jwtgate_jwks_keys{issuer="test-km"}"#).await,
        1.0
    );
    assert_eq!(h.status(&key.token(&h.claims())).await, 200);
}

/// Keys are served stale while the key manager is down, but only for `max_stale_s`: past it
/// every token of the issuer — cached or not — is a 503 `keys_unavailable`, never a 401
/// and never forwarded; readiness does not flap. Driven by an injected clock.
#[tokio::test]
async fn keys_older_than_max_stale_are_unavailable() {
    let key = DevKey::p256("k1");
    let n = now();
    let clock = Arc::new(ManualClock(n.into()));
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: "max_stale_s = 600".into(),
            clock: Some(clock.clone()),
            ..Options::default()
        },
    )
    .await;
    let mut c = h.claims();
    c["exp"] = (n + 7200).into();
    let cached = key.token(&c);
    assert_eq!(h.status(&cached).await, 200);
    h.keys.set_down(true);

    clock.0.store(n + 590, Ordering::SeqCst);
    assert_eq!(h.status(&cached).await, 200, "within max_stale_s");
    clock.0.store(n + 610, Ordering::SeqCst);
    let before = h.upstream.count();
    for token in [cached.clone(), key.token(&c)] {
        let resp = h.get(&token).await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
    }
    assert_eq!(h.upstream.count(), before);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="keys_unavailable"}"#)
            .await,
        2.0
    );
    assert_eq!(h.readyz().await, 200);
}
