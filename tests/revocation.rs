//! Revocation through real sockets: push, native and WSO2 feeds, WSO2 notify, snapshot
//! durability, staleness and readiness.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};

fn revocation(lines: &str) -> String {
    format!("[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\n{lines}\n")
}

async fn push_only() -> (Harness, DevKey) {
    let key = DevKey::p256("k");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: revocation(""),
            ..Options::default()
        },
    )
    .await;
    (h, key)
}

/// jwtgate with revocation (`lines` added) and a clock the test sets, started at `now()`.
async fn with_clock(lines: &str) -> (Harness, DevKey, Arc<ManualClock>, i64) {
    let key = DevKey::p256("k");
    let n = now();
    let clock = Arc::new(ManualClock(n.into()));
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: revocation(lines),
            clock: Some(clock.clone()),
            ..Options::default()
        },
    )
    .await;
    (h, key, clock, n)
}

/// Asserts a 401 revoked and no upstream request.
async fn assert_revoked(h: &Harness, token: &str) {
    let before = h.upstream.count();
    let resp = h.get(token).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_description"], "token has been revoked");
    assert_eq!(
        h.upstream.count(),
        before,
        "a revoked request reached the upstream"
    );
}

#[tokio::test]
async fn push_revokes_a_jti_at_once_even_from_the_verified_cache() {
    let (h, key) = push_only().await;
    let claims = h.claims();
    let token = key.token(&claims);
    assert_eq!(h.status(&token).await, 200);
    assert_eq!(h.status(&token).await, 200);
    assert_eq!(h.metric("jwtgate_token_cache_hits_total").await, 1.0);

    let status = h
        .push(json!([{"kind": "jti", "jti": claims["jti"], "exp": claims["exp"]}]))
        .await;
    assert_eq!(status, 202);
    assert_revoked(&h, &token).await;
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="revoked"}"#)
            .await,
        1.0
    );
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 1.0);
    // Other tokens of the same user are untouched.
    assert_eq!(h.status(&key.token(&h.claims())).await, 200);
}

#[tokio::test]
async fn push_with_bad_credentials_or_a_bad_record_applies_nothing() {
    let (h, key) = push_only().await;
    let claims = h.claims();
    let token = key.token(&claims);
    let record = json!({"kind": "jti", "jti": claims["jti"], "exp": claims["exp"]});
    assert_eq!(
        h.push_with("wrong-token-0123456789", json!({"revocations": [record]}))
            .await,
        401
    );
    let no_auth = h
        .http
        .post(format!("http://{}/revocations", h.admin))
        .json(&json!({"revocations": [record]}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), 401);
    // One good and one malformed record: nothing from the body is applied.
    assert_eq!(
        h.push(json!([record, {"kind": "subject", "sub": "alice", "revoked_at": 0}]))
            .await,
        400
    );
    assert_eq!(h.status(&token).await, 200);
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 0.0);
    assert_eq!(
        h.metric(r#"jwtgate_revocation_events_total{result="unauthorized",source="push"}"#)
            .await,
        2.0
    );
    // A body that is not JSON, and JSON of the wrong shape: each named, nothing applied.
    for (body, expected) in [
        ("{\"revocations\": [", "body is not JSON"),
        ("{\"revocations\": {}}", "body must be"),
        ("[]", "body must be"),
    ] {
        let resp = h
            .http
            .post(format!("http://{}/revocations", h.admin))
            .bearer_auth(PUSH_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(expected), "{body}: {text}");
    }
    assert_eq!(h.status(&token).await, 200);
}

#[tokio::test]
async fn subject_and_client_rules_use_iat_inclusively_and_respect_issuer_scope() {
    let (h, key) = push_only().await;
    let n = now();
    let mut c = h.claims();
    c["iat"] = (n - 100).into();
    c["sub"] = "bob".into();
    let bob_old = key.token(&c);
    c["iat"] = (n - 99).into();
    c["jti"] = "other-jti".into();
    let bob_newer = key.token(&c);

    assert_eq!(
        h.push(json!([{"kind": "subject", "sub": "bob", "revoked_at": n - 100}]))
            .await,
        202
    );
    assert_revoked(&h, &bob_old).await; // iat == revoked_at
    assert_eq!(h.status(&bob_newer).await, 200); // iat == revoked_at + 1

    // A client rule scoped to another issuer does not apply; one scoped to ours does.
    let mut c = h.claims();
    c["client_id"] = "app-9".into();
    let app_token = key.token(&c);
    h.push(json!([{"kind": "client", "client_id": "app-9", "iss": "https://elsewhere", "revoked_at": n + 10}]))
        .await;
    assert_eq!(h.status(&app_token).await, 200);
    h.push(
        json!([{"kind": "client", "client_id": "app-9", "iss": h.issuer, "revoked_at": n + 10}]),
    )
    .await;
    assert_revoked(&h, &app_token).await;

    // Client falls back to azp.
    let mut c = h.claims();
    c.as_object_mut().unwrap().remove("client_id");
    c["azp"] = "app-10".into();
    let azp_token = key.token(&c);
    h.push(json!([{"kind": "client", "client_id": "app-10", "revoked_at": n + 10}]))
        .await;
    assert_revoked(&h, &azp_token).await;
}

#[tokio::test]
async fn lifetime_and_jti_are_required_while_revocation_is_on() {
    let (h, key) = push_only().await;
    let n = now();
    let mut c = h.claims();
    c["iat"] = n.into();
    c["exp"] = (n + 3601).into();
    let resp = h.get(&key.token(&c)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="lifetime"}"#)
            .await,
        1.0
    );
    let mut c = h.claims();
    c.as_object_mut().unwrap().remove("iat");
    assert_eq!(h.status(&key.token(&c)).await, 401);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="lifetime"}"#)
            .await,
        2.0
    );
    let mut c = h.claims();
    c.as_object_mut().unwrap().remove("jti");
    assert_eq!(h.status(&key.token(&c)).await, 401);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="missing_jti"}"#)
            .await,
        1.0
    );
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn native_feed_is_polled_with_a_cursor_and_reset_merges() {
    let key = DevKey::p256("k");
    let feed = Feed::start().await;
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: revocation(&format!(
                "feed_url = \"{}\"\npoll_interval_s = 1\nmax_sync_age_s = 30",
                feed.native_url()
            )),
            ..Options::default()
        },
    )
    .await;
    let c1 = h.claims();
    let c2 = h.claims();
    let (t1, t2) = (key.token(&c1), key.token(&c2));
    assert_eq!(h.status(&t1).await, 200);

    let started = std::time::Instant::now();
    feed.append(json!({"kind": "jti", "jti": c1["jti"], "exp": c1["exp"]}));
    assert!(
        h.eventually(3, || async { h.status(&t1).await == 401 })
            .await,
        "revoked within poll_interval_s + 1 s"
    );
    println!("feed → enforced in {:?}", started.elapsed());
    assert!(
        h.metric(r#"jwtgate_revocation_syncs_total{result="ok",source="native_poll"}"#)
            .await
            >= 2.0
    );
    assert!(
        h.metric("jwtgate_revocation_last_sync_timestamp_seconds")
            .await
            > 0.0
    );

    // A reset page resends everything: merged, nothing lost, nothing duplicated.
    feed.append(json!({"kind": "jti", "jti": c2["jti"], "exp": c2["exp"]}));
    feed.reset_next();
    assert!(
        h.eventually(3, || async { h.status(&t2).await == 401 })
            .await
    );
    assert_eq!(h.status(&t1).await, 401);
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 2.0);
}

/// jwtgate with one `profile = "wso2"` issuer holding `key`, and revocation (`lines` added).
async fn wso2_gateway(key: &DevKey, lines: &str) -> Harness {
    Harness::start_with(
        jwks_of(&[(key, None)]),
        Options {
            issuer_extra: "profile = \"wso2\"".into(),
            extra: revocation(lines),
            ..Options::default()
        },
    )
    .await
}

fn wso2_claims(h: &Harness, entity_id: &str, client: &str) -> Value {
    let mut c = h.claims();
    c["entity_id"] = entity_id.into();
    c["client_id"] = client.into();
    c["azp"] = client.into();
    c
}

#[tokio::test]
async fn wso2_feed_object_and_legacy_array_map_to_rules() {
    let key = DevKey::rsa("k");
    let feed = Feed::start().await;
    let h = wso2_gateway(&key, &format!(
                "feed_url = \"{}\"\nfeed_format = \"wso2\"\nfeed_username = \"admin\"\nfeed_password = \"admin\"\npoll_interval_s = 1\nmax_sync_age_s = 30",
                feed.wso2_url()
            )).await;
    let n = now();
    let ms = |s: i64| s * 1000;
    let user_tok_c = wso2_claims(&h, "uuid-user-1", "ck-app-1");
    let user_tok = key.token(&user_tok_c);
    let app_tok = key.token(&wso2_claims(&h, "ck-app-1", "ck-app-1"));
    let other_app = key.token(&wso2_claims(&h, "uuid-user-2", "ck-app-2"));
    let by_sig = key.token(&wso2_claims(&h, "uuid-user-3", "ck-app-3"));
    let signature = by_sig.rsplit('.').next().unwrap().to_owned();
    let mut legacy_c = h.claims();
    legacy_c.as_object_mut().unwrap().remove("entity_id");
    legacy_c["sub"] = "uuid-user-1".into();
    let legacy = key.token(&legacy_c);
    for t in [&user_tok, &app_tok, &other_app, &by_sig, &legacy] {
        assert_eq!(h.status(t).await, 200);
    }

    feed.set_wso2(json!({
        "revokedJWTList": [
            {"jwt_signature": user_tok_c["jti"], "expiry_time": ms(n + 600)},
            {"jwt_signature": signature, "expiry_time": ms(n + 600)}
        ],
        "revokedJWTConsumerKeyList": [
            {"consumer_key": "ck-app-2", "revocation_time": ms(n).to_string(), "organization": "carbon.super"}
        ],
        "revokedJWTSubjectEntityList": [
            {"entity_id": "ck-app-1", "entity_type": "CLIENT_ID", "revocation_time": ms(n), "organization": "carbon.super"},
            {"entity_id": "bad", "entity_type": "USER_ID", "revocation_time": 0}
        ]
    }));
    assert!(
        h.eventually(3, || async { h.status(&app_tok).await == 401 })
            .await
    );
    assert_eq!(h.status(&user_tok).await, 401, "jwt_signature = jti");
    assert_eq!(
        h.status(&by_sig).await,
        401,
        "jwt_signature = signature segment"
    );
    assert_eq!(h.status(&other_app).await, 401, "consumer key rule");
    assert_eq!(
        h.status(&legacy).await,
        200,
        "no entity_id: subject rules do not apply"
    );
    assert!(
        h.metric(r#"jwtgate_revocation_events_total{result="rejected",source="wso2_poll"}"#)
            .await
            >= 1.0,
        "the row with time 0 was refused"
    );
    assert_eq!(feed.unauthorized(), 0, "Basic auth sent");

    // A CLIENT_ID subject rule revokes the app's own tokens, not its users' tokens.
    let user_of_app1 = key.token(&wso2_claims(&h, "uuid-user-9", "ck-app-1"));
    assert_eq!(h.status(&user_of_app1).await, 200);

    // The pre-4.3 bare array is understood too.
    let old_style = key.token(&wso2_claims(&h, "uuid-user-4", "ck-app-4"));
    let old_sig = old_style.rsplit('.').next().unwrap().to_owned();
    feed.set_wso2(json!([{"jwt_signature": old_sig, "expiry_time": ms(n + 600)}]));
    assert!(
        h.eventually(3, || async { h.status(&old_style).await == 401 })
            .await
    );
}

#[tokio::test]
async fn wso2_notify_events_are_authenticated_and_validated() {
    let key = DevKey::rsa("k");
    let h = wso2_gateway(
        &key,
        "notify_username = \"km\"\nnotify_password = \"km-secret\"",
    )
    .await;
    let n = now();
    let notify = |user: &str, pass: &str, body: Value| {
        let req = h
            .http
            .post(format!("http://{}/internal/data/v1/notify", h.admin))
            .basic_auth(user, Some(pass))
            .json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let c = wso2_claims(&h, "uuid-u1", "ck-1");
    let token = key.token(&c);
    let app_event = json!({"type": "consumer_app_revocation_event", "consumerKey": "ck-1", "revocationTime": n * 1000, "eventId": "e1"});
    assert_eq!(notify("km", "wrong", app_event.clone()).await, 401);
    assert_eq!(notify("other", "km-secret", app_event.clone()).await, 401);
    assert_eq!(
        h.status(&token).await,
        200,
        "nothing applied on bad credentials"
    );

    let malformed = json!({"type": "consumer_app_revocation_event", "consumerKey": "ck-1", "revocationTime": "not-a-time"});
    assert_eq!(notify("km", "km-secret", malformed).await, 400);
    let zero = json!({"type": "subject_entity_revocation_event", "entityId": "uuid-u1", "entityType": "USER_ID", "revocationTime": 0});
    assert_eq!(notify("km", "km-secret", zero).await, 400);
    let missing_id = json!({"type": "token_revocation", "expiryTime": (n + 600) * 1000});
    assert_eq!(notify("km", "km-secret", missing_id).await, 400);
    assert_eq!(
        h.status(&token).await,
        200,
        "nothing stored from malformed events"
    );
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="client"}"#).await, 0.0);
    assert_eq!(
        h.metric(r#"jwtgate_revocations{kind="subject"}"#).await,
        0.0
    );

    assert_eq!(
        notify("km", "km-secret", json!({"type": "some_other_event"})).await,
        200
    );
    assert_eq!(notify("km", "km-secret", app_event).await, 200);
    assert_revoked(&h, &token).await;

    let user_token = key.token(&wso2_claims(&h, "uuid-u2", "ck-2"));
    let subject_event = json!({"type": "subject_entity_revocation_event", "entityId": "uuid-u2", "entityType": "USER_ID", "revocationTime": (n * 1000).to_string()});
    assert_eq!(notify("km", "km-secret", subject_event).await, 200);
    assert_revoked(&h, &user_token).await;

    let c3 = wso2_claims(&h, "uuid-u3", "ck-3");
    let t3 = key.token(&c3);
    let token_event = json!({"type": "token_revocation", "accessToken": c3["jti"], "expiryTime": (n + 600) * 1000, "consumerKey": "ck-3", "tokenType": "JWT"});
    assert_eq!(notify("km", "km-secret", token_event).await, 200);
    assert_revoked(&h, &t3).await;
}

#[tokio::test]
async fn revocations_survive_a_restart_with_the_key_manager_down() {
    let dir = TempDir::new();
    let key = DevKey::p256("k");
    let feed = Feed::start().await;
    let extra = revocation(&format!(
        "feed_url = \"{}\"\npoll_interval_s = 1\nmax_sync_age_s = 600\nsnapshot_path = \"{}\"",
        feed.native_url(),
        dir.file("revocations.snapshot")
    ));
    let mut h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: extra.clone(),
            ..Options::default()
        },
    )
    .await;
    let c = h.claims();
    let pushed = key.token(&c);
    let c2 = h.claims();
    let polled = key.token(&c2);
    h.push(json!([{"kind": "jti", "jti": c["jti"], "exp": c["exp"]}]))
        .await;
    feed.append(json!({"kind": "subject", "sub": "alice", "revoked_at": now()}));
    assert!(
        h.eventually(3, || async { h.status(&polled).await == 401 })
            .await
    );
    assert_revoked(&h, &pushed).await;

    h.shutdown();
    tokio::time::timeout(Duration::from_secs(10), h.task.take().unwrap())
        .await
        .unwrap()
        .unwrap();

    // The key manager and the feed are both down now.
    feed.set_down(true);
    let keys = h.keys.clone();
    let h2 = Harness::start_with(
        json!({}),
        Options {
            extra,
            key_server: Some(keys.clone()),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    // Keys come back first (the JWKS server is separate from the feed); the feed stays down.
    assert!(
        h2.eventually(5, || async { h2.readyz().await == 200 })
            .await,
        "snapshot restored → ready"
    );
    assert_revoked(&h2, &pushed).await;
    assert_revoked(&h2, &polled).await;
    assert_eq!(h2.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 1.0);
    assert_eq!(
        h2.metric(r#"jwtgate_revocations{kind="subject"}"#).await,
        1.0
    );
    let mut fresh = h2.claims();
    fresh["sub"] = "carol".into();
    assert_eq!(h2.status(&key.token(&fresh)).await, 200);
}

#[tokio::test]
async fn corrupt_snapshot_is_moved_aside_and_not_ready_until_a_sync() {
    let dir = TempDir::new();
    let path = dir.file("revocations.snapshot");
    std::fs::write(
        &path,
        b"JWTGREV1 this is not a snapshot at all, checksum will fail",
    )
    .unwrap();
    let key = DevKey::p256("k");
    let feed = Feed::start().await;
    feed.set_down(true);
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: revocation(&format!(
                "feed_url = \"{}\"\npoll_interval_s = 1\nmax_sync_age_s = 600\nsnapshot_path = \"{path}\"",
                feed.native_url()
            )),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    // Keys load, but the list is neither restored nor synced.
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_jwks_keys{issuer="test-km"}"#).await == 1.0
                && h.metric(
                    r#"jwtgate_revocation_syncs_total{result="error",source="native_poll"}"#,
                )
                .await
                    >= 1.0
        })
        .await
    );
    assert_eq!(h.readyz().await, 503);
    let aside: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("revocations.snapshot.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt file is kept aside");
    feed.set_down(false);
    assert!(h.eventually(10, || async { h.readyz().await == 200 }).await);
    // And a fresh, valid snapshot replaces it once something changes.
    let c = h.claims();
    h.push(json!([{"kind": "jti", "jti": c["jti"], "exp": c["exp"]}]))
        .await;
    assert!(
        h.eventually(5, || async {
            std::fs::read(&path).is_ok_and(|b| b.starts_with(b"JWTGREV3") && b.len() > 604)
        })
        .await
    );
}

#[tokio::test]
async fn stale_list_rejects_or_allows_as_configured_with_an_injected_clock() {
    for on_stale in ["reject", "allow"] {
        let key = DevKey::p256("k");
        let feed = Feed::start().await;
        let n = now();
        let clock = Arc::new(ManualClock(n.into()));
        let h = Harness::start_with(
            jwks_of(&[(&key, None)]),
            Options {
                extra: revocation(&format!(
                    "feed_url = \"{}\"\npoll_interval_s = 1\nmax_sync_age_s = 60\non_stale = \"{on_stale}\"",
                    feed.native_url()
                )),
                clock: Some(clock.clone()),
                ..Options::default()
            },
        )
        .await;
        let mut c = h.claims();
        c["iat"] = n.into();
        c["nbf"] = n.into();
        c["exp"] = (n + 3000).into();
        let token = key.token(&c);
        assert_eq!(h.status(&token).await, 200);
        assert_eq!(h.metric("jwtgate_revocation_stale").await, 0.0);

        feed.set_down(true);
        clock.0.store(n + 120, Ordering::SeqCst);
        // Wait for a failed poll to notice.
        assert!(
            h.eventually(5, || async {
                h.metric("jwtgate_revocation_stale").await == 1.0
            })
            .await
        );
        let resp = h.get(&token).await;
        if on_stale == "reject" {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            assert_eq!(
                h.metric(r#"jwtgate_rejections_total{reason="revocation_stale"}"#)
                    .await,
                1.0
            );
        } else {
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(h.readyz().await, 200, "staleness does not flap readiness");

        feed.set_down(false);
        assert!(
            h.eventually(5, || async {
                h.metric("jwtgate_revocation_stale").await == 0.0
            })
            .await
        );
        assert_eq!(h.status(&token).await, 200);
    }
}

#[tokio::test]
async fn push_only_is_never_stale() {
    let (h, key, clock, n) = with_clock("max_sync_age_s = 60").await;
    let mut c = h.claims();
    c["iat"] = n.into();
    c["exp"] = (n + 3000).into();
    clock.0.store(n + 1000, Ordering::SeqCst);
    assert_eq!(h.status(&key.token(&c)).await, 200);
    assert_eq!(h.metric("jwtgate_revocation_stale").await, 0.0);
}

#[tokio::test]
async fn readiness_waits_for_the_first_sync() {
    let key = DevKey::p256("k");
    let feed = Feed::start().await;
    feed.set_down(true);
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: revocation(&format!(
                "feed_url = \"{}\"\npoll_interval_s = 1\nmax_sync_age_s = 600",
                feed.native_url()
            )),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_revocation_syncs_total{result="error",source="native_poll"}"#)
                .await
                >= 1.0
        })
        .await
    );
    assert_eq!(h.readyz().await, 503);
    feed.set_down(false);
    assert!(h.eventually(10, || async { h.readyz().await == 200 }).await);
}

#[tokio::test]
async fn jwks_refresh_needs_the_push_token_and_is_rate_limited() {
    let (h, _key) = push_only().await;
    let url = format!("http://{}/jwks/refresh", h.admin);
    let r = h.http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let hits = h.keys.hits();
    let r = h
        .http
        .post(&url)
        .bearer_auth(PUSH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["issuers"]["test-km"], "refreshed");
    assert_eq!(h.keys.hits(), hits + 1);
    let r = h
        .http
        .post(&url)
        .bearer_auth(PUSH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "min_refetch_interval_s applies");
    assert_eq!(h.keys.hits(), hits + 1);
}

/// One keep-alive connection that presents the same token request after request (the path
/// that skips hashing a repeated token): a tampered copy, a revocation and the token's expiry
/// are each refused on that same connection, and none of those requests reaches the upstream.
#[tokio::test]
async fn a_token_repeated_on_one_connection_is_rechecked_every_time() {
    use http_body_util::Empty;
    let (h, key, clock, n) = with_clock("").await;
    let tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut status = async |token: &str| {
        let req = http::Request::get("/api/orders")
            .header("host", "api.local")
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
            .unwrap();
        send.send_request(req).await.unwrap().status().as_u16()
    };

    let mut claims = h.claims();
    claims["exp"] = (n + 300).into();
    let token = key.token(&claims);
    for _ in 0..3 {
        assert_eq!(status(&token).await, 200);
    }
    assert_eq!(h.upstream.count(), 3);
    assert_eq!(h.metric("jwtgate_token_cache_hits_total").await, 2.0);

    // Same length, same prefix, one signature character changed.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(status(&tampered).await, 401);
    assert_eq!(
        h.upstream.count(),
        3,
        "a tampered token reached the upstream"
    );
    assert_eq!(status(&token).await, 200);
    assert_eq!(status(&token).await, 200);
    assert_eq!(h.upstream.count(), 5);

    let record = json!([{"kind": "jti", "jti": claims["jti"], "exp": claims["exp"]}]);
    assert_eq!(h.push(record).await, 202);
    assert_eq!(status(&token).await, 401);
    assert_eq!(
        h.upstream.count(),
        5,
        "a revoked token reached the upstream"
    );

    let other = key.token(&h.claims());
    assert_eq!(status(&other).await, 200);
    assert_eq!(status(&other).await, 200);
    assert_eq!(h.upstream.count(), 7);
    clock.0.store(n + 10_000, Ordering::SeqCst);
    assert_eq!(status(&other).await, 401);
    assert_eq!(
        h.upstream.count(),
        7,
        "an expired token reached the upstream"
    );
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="expired"}"#)
            .await,
        1.0
    );
}

/// Asserts a 503 `revocation_stale` that never reached the upstream.
async fn assert_stale(h: &Harness, token: &str) {
    let before = h.upstream.count();
    let resp = h.get(token).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_description"], "revocation list is out of date");
    assert_eq!(
        h.upstream.count(),
        before,
        "a stale-list request was forwarded"
    );
}

/// Before the list was ever restored or synced, a revoked token must not pass: the proxy
/// answers 503 (not only `/readyz`), whatever path reaches the pod.
#[tokio::test]
async fn not_yet_synced_list_is_stale_after_a_corrupt_snapshot_or_a_cold_start() {
    for corrupt in [true, false] {
        let dir = TempDir::new();
        let path = dir.file("revocations.snapshot");
        if corrupt {
            std::fs::write(&path, b"JWTGREV1 damaged").unwrap();
        }
        let key = DevKey::p256("k");
        let feed = Feed::start().await;
        feed.set_down(true);
        let h = Harness::start_with(
            jwks_of(&[(&key, None)]),
            Options {
                extra: revocation(&format!(
                    "feed_url = \"{}\"\npoll_interval_s = 1\nmax_sync_age_s = 600\nsnapshot_path = \"{path}\"",
                    feed.native_url()
                )),
                wait_ready: false,
                ..Options::default()
            },
        )
        .await;
        let c = h.claims();
        let token = key.token(&c);
        // Revoked at the key manager while this pod could not learn it.
        feed.append(json!({"kind": "jti", "jti": c["jti"], "exp": c["exp"]}));
        assert!(
            h.eventually(5, || async {
                h.metric(r#"jwtgate_jwks_keys{issuer="test-km"}"#).await == 1.0
            })
            .await
        );
        assert_eq!(h.metric("jwtgate_revocation_stale").await, 1.0);
        assert_stale(&h, &token).await;
        assert_eq!(
            h.metric(r#"jwtgate_rejections_total{reason="revocation_stale"}"#)
                .await,
            1.0
        );
        feed.set_down(false);
        assert!(h.eventually(10, || async { h.readyz().await == 200 }).await);
        assert_revoked(&h, &token).await;
        assert_eq!(h.metric("jwtgate_revocation_stale").await, 0.0);
        assert_eq!(h.status(&key.token(&h.claims())).await, 200);
    }
}

/// Push-only: a missing snapshot counts as restored-empty; a corrupt one is stale until the
/// first push.
#[tokio::test]
async fn push_only_corrupt_snapshot_is_stale_until_the_first_push() {
    let dir = TempDir::new();
    let path = dir.file("revocations.snapshot");
    let key = DevKey::p256("k");
    let jwks = jwks_of(&[(&key, None)]);
    let start = |path: String| {
        let jwks = jwks.clone();
        async move {
            Harness::start_with(
                jwks,
                Options {
                    extra: revocation(&format!("snapshot_path = \"{path}\"")),
                    wait_ready: false,
                    ..Options::default()
                },
            )
            .await
        }
    };
    let h = start(path.clone()).await;
    h.wait_ready().await;
    assert_eq!(
        h.status(&key.token(&h.claims())).await,
        200,
        "missing = empty"
    );
    drop(h);

    std::fs::write(&path, b"JWTGREV1 damaged").unwrap();
    let h = start(path.clone()).await;
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_jwks_keys{issuer="test-km"}"#).await == 1.0
        })
        .await
    );
    let c = h.claims();
    let token = key.token(&c);
    assert_stale(&h, &token).await;
    assert_eq!(h.readyz().await, 503);
    assert_eq!(
        h.push(json!([{"kind": "jti", "jti": c["jti"], "exp": c["exp"]}]))
            .await,
        202
    );
    assert_revoked(&h, &token).await;
    assert_eq!(h.status(&key.token(&h.claims())).await, 200);
    assert_eq!(h.readyz().await, 200);
}

/// A record from the far future (a seconds/milliseconds slip) would lock a user out for
/// good: refused by push (400, nothing applied), notify (400) and skipped by a feed.
#[tokio::test]
async fn records_from_the_future_are_refused_by_every_source() {
    let key = DevKey::rsa("k");
    let feed = Feed::start().await;
    let h = wso2_gateway(&key, &format!(
                "feed_url = \"{}\"\npoll_interval_s = 1\nnotify_username = \"km\"\nnotify_password = \"km-secret\"",
                feed.native_url()
            )).await;
    let n = now();
    let c = wso2_claims(&h, "uuid-f1", "ck-f1");
    let token = key.token(&c);
    let ok = json!({"kind": "jti", "jti": "other", "exp": n + 60});
    for future in [
        json!({"kind": "subject", "sub": "uuid-f1", "revoked_at": n * 1000}),
        json!({"kind": "client", "client_id": "ck-f1", "revoked_at": n + 3600}),
        json!({"kind": "jti", "jti": c["jti"], "exp": (n + 600) * 1000}),
    ] {
        assert_eq!(h.push(json!([ok, future])).await, 400, "{future}");
    }
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 0.0);
    let notify = |body: Value| {
        let req = h
            .http
            .post(format!("http://{}/internal/data/v1/notify", h.admin))
            .basic_auth("km", Some("km-secret"))
            .json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let micros = json!({"type": "consumer_app_revocation_event", "consumerKey": "ck-f1", "revocationTime": n * 1_000_000});
    assert_eq!(notify(micros).await, 400);
    let rejected = r#"jwtgate_revocation_events_total{result="rejected",source="native_poll"}"#;
    feed.append(json!({"kind": "subject", "sub": "uuid-f1", "revoked_at": n * 1000}));
    feed.append(json!({"kind": "jti", "jti": "other", "exp": n + 60}));
    assert!(
        h.eventually(5, || async { h.metric(rejected).await == 1.0 })
            .await
    );
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_revocations{kind="jti"}"#).await == 1.0
        })
        .await,
        "the good row of the page is applied"
    );
    assert_eq!(
        h.metric(r#"jwtgate_revocations{kind="subject"}"#).await,
        0.0
    );
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="client"}"#).await, 0.0);
    assert_eq!(h.status(&token).await, 200);
}

/// ECDSA is malleable: `(r, n − s)` verifies like `(r, s)`. WSO2 revokes a jti-less token by
/// its signature segment, so the twin token must be refused too, whichever of the two was
/// recorded (records and snapshots unchanged: the twin is probed at check time).
#[tokio::test]
async fn a_signature_revocation_catches_the_ecdsa_twin_token() {
    use jwtgate::auth::token::{EcOrder, ecdsa_twin};
    for (key, order) in [
        (DevKey::p256("k"), EcOrder::P256),
        (DevKey::p384("k"), EcOrder::P384),
    ] {
        let h = Harness::start_with(
            jwks_of(&[(&key, None)]),
            Options {
                issuer_extra: "profile = \"wso2\"".into(),
                extra: revocation(
                    "require_jti = false\nnotify_username = \"km\"\nnotify_password = \"km-secret\"",
                ),
                ..Options::default()
            },
        )
        .await;
        let twin_of = |token: &str| {
            let (signed, sig) = token.rsplit_once('.').unwrap();
            let twin = ecdsa_twin(sig, order).expect("an ECDSA signature");
            (sig.to_owned(), format!("{signed}.{twin}"))
        };
        let revoke_signature = |sig: String| {
            let req = h
                .http
                .post(format!("http://{}/internal/data/v1/notify", h.admin))
                .basic_auth("km", Some("km-secret"))
                .json(&json!({"type": "token_revocation", "accessToken": sig, "expiryTime": (now() + 600) * 1000}));
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let mut c = h.claims();
        c.as_object_mut().unwrap().remove("jti");
        let token = key.token(&c);
        let (sig, twin) = twin_of(&token);
        assert_eq!(h.status(&token).await, 200);
        assert_eq!(
            h.status(&twin).await,
            200,
            "the twin verifies: the attack's premise"
        );
        assert_eq!(revoke_signature(sig).await, 200);
        assert_revoked(&h, &token).await;
        assert_revoked(&h, &twin).await;

        // The key manager recorded the other encoding: the original is caught as well.
        c["sub"] = "bob".into();
        let other = key.token(&c);
        let (_, other_twin) = twin_of(&other);
        let twin_sig = other_twin.rsplit_once('.').unwrap().1.to_owned();
        assert_eq!(revoke_signature(twin_sig).await, 200);
        assert_revoked(&h, &other).await;
        assert_revoked(&h, &other_twin).await;
    }
}

/// Raising `max_token_lifetime_s` across a restart: a token issued before the raise is
/// still held to the old bound (rules pruned under it must not come back to life); one
/// issued after gets the new bound.
#[tokio::test]
async fn a_raised_lifetime_bound_still_holds_tokens_issued_before_the_raise() {
    let dir = TempDir::new();
    let path = dir.file("revocations.snapshot");
    let key = DevKey::p256("k");
    let keys = Arc::new(KeyServer::start(jwks_of(&[(&key, None)])).await);
    let n = now();
    let start = |lifetime: u64, at: i64| {
        let (keys, path) = (keys.clone(), path.clone());
        async move {
            Harness::start_with(
                serde_json::Value::Null,
                Options {
                    extra: format!(
                        "[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = {lifetime}\nsnapshot_path = \"{path}\""
                    ),
                    clock: Some(Arc::new(ManualClock(at.into()))),
                    key_server: Some(keys),
                    ..Options::default()
                },
            )
            .await
        }
    };
    let h = start(3600, n).await;
    // The snapshot records the bound in force.
    assert!(
        h.eventually(5, || async {
            std::fs::read(&path).is_ok_and(|b| b.starts_with(b"JWTGREV3"))
        })
        .await
    );
    drop(h);

    let h = start(7200, n + 100).await;
    let token = |iat: i64, lifetime: i64| {
        let mut c = h.claims();
        c["iat"] = iat.into();
        c["nbf"] = iat.into();
        c["exp"] = (iat + lifetime).into();
        key.token(&c)
    };
    let before = h.upstream.count();
    let resp = h.get(&token(n + 50, 5000)).await;
    assert_eq!(
        resp.status(),
        401,
        "issued before the raise, longer than the old bound"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error_description"],
        "token lifetime exceeds max_token_lifetime_s"
    );
    assert_eq!(h.upstream.count(), before);
    assert_eq!(h.status(&token(n + 50, 3600)).await, 200);
    assert_eq!(
        h.status(&token(n + 100, 5000)).await,
        200,
        "issued after the raise"
    );
    assert_eq!(h.status(&token(n + 100, 7300)).await, 401);
}
