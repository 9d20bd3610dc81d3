//! Token validation through real sockets: every rule of the core issue, each asserting the
//! status, what reached the upstream, and the metric delta.

mod common;

use common::*;
use jwtgate::config::Algorithm;
use jwtgate::devkm::DevKey;
use jwtgate::devkm::keys::b64;
use serde_json::{Value, json};

struct Keys {
    rsa: DevKey,
    rsa_rs_only: DevKey,
    p256: DevKey,
    p384: DevKey,
    ed: DevKey,
}

fn keys() -> Keys {
    Keys {
        rsa: DevKey::rsa("rsa-1"),
        rsa_rs_only: DevKey::rsa("rsa-rs256"),
        p256: DevKey::p256("ec-1"),
        p384: DevKey::p384("ec-384"),
        ed: DevKey::ed25519("ed-1"),
    }
}

async fn harness(k: &Keys) -> Harness {
    Harness::start(jwks_of(&[
        (&k.rsa, None),
        (&k.rsa_rs_only, Some(Algorithm::RS256)),
        (&k.p256, None),
        (&k.p384, None),
        (&k.ed, None),
    ]))
    .await
}

/// Asserts a 401 with `reason`, no upstream request, and a +1 on the reason's counter.
async fn assert_rejected(h: &Harness, token: &str, reason: &str) {
    let series = format!("jwtgate_rejections_total{{reason=\"{reason}\"}}");
    let before_metric = h.metric(&series).await;
    let before_upstream = h.upstream.count();
    let resp = h.get(token).await;
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 401, "{reason}: {body}");
    assert!(
        www.starts_with(r#"Bearer realm="jwtgate", error="invalid_token""#),
        "{www}"
    );
    assert_eq!(body["error"], "invalid_token");
    assert!(
        !body.to_string().contains(token),
        "body must not echo the token"
    );
    assert_eq!(
        h.upstream.count(),
        before_upstream,
        "{reason}: rejected request reached the upstream"
    );
    assert_eq!(
        h.metric(&series).await,
        before_metric + 1.0,
        "{reason}: metric"
    );
}

/// Builds a token from raw JSON header and claims with the given signature bytes.
fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}

#[tokio::test]
async fn every_supported_algorithm_is_accepted_and_claims_are_forwarded() {
    let k = keys();
    let h = harness(&k).await;
    for (key, alg) in [
        (&k.rsa, Algorithm::RS256),
        (&k.rsa, Algorithm::PS256),
        (&k.rsa_rs_only, Algorithm::RS256),
        (&k.p256, Algorithm::ES256),
        (&k.p384, Algorithm::ES384),
        (&k.ed, Algorithm::EdDSA),
    ] {
        let claims = h.claims();
        let token = key.token_with(alg, json!({}), &claims);
        let before = h.upstream.count();
        assert_eq!(h.status(&token).await, 200, "{alg:?}");
        assert_eq!(h.upstream.count(), before + 1);
        let seen = h.upstream.last();
        let payload = token.split('.').nth(1).unwrap();
        assert_eq!(seen.headers["x-jwt-payload"], payload);
        assert_eq!(seen.uri, "/api/orders?x=1");
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {token}"),
            "Authorization is forwarded by default"
        );
    }
    assert_eq!(
        h.metric(r#"jwtgate_requests_total{outcome="forwarded"}"#)
            .await,
        6.0
    );
}

#[tokio::test]
async fn missing_token_is_401_without_error_code() {
    let k = keys();
    let h = harness(&k).await;
    let resp = h.http.get(h.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer realm="jwtgate""#
    );
    let basic = h
        .http
        .get(h.url("/x"))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(h.upstream.count(), 0);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="missing"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn structurally_bad_tokens_are_rejected_before_crypto() {
    let k = keys();
    let h = harness(&k).await;
    let good = k.rsa.token(&h.claims());
    for bad in [
        "garbage",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSUzI1NiJ9.e30=.sig",
        &format!("{good}.extra"),
        &good.replacen('.', "..", 1),
    ] {
        assert_rejected(&h, bad, "malformed").await;
    }
    let huge = format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c");
    assert_rejected(&h, &huge, "too_large").await;
}

#[tokio::test]
async fn tampered_and_mis_signed_tokens_are_401() {
    let k = keys();
    let h = harness(&k).await;
    let claims = h.claims();

    // Payload edited, signature kept; and signed by a key that is not in the JWKS but
    // names a published kid. Every key type (each has its own parsed-key verify path).
    for (key, impostor) in [
        (&k.rsa, DevKey::rsa("rsa-1")),
        (&k.p256, DevKey::p256("ec-1")),
        (&k.p384, DevKey::p384("ec-384")),
        (&k.ed, DevKey::ed25519("ed-1")),
    ] {
        let tampered = jwtgate::devkm::tamper(&key.token(&claims));
        assert_rejected(&h, &tampered, "signature").await;
        assert_rejected(&h, &impostor.token(&claims), "signature").await;
    }

    // PS256 on a key whose JWK says alg RS256.
    let ps_on_rs = k
        .rsa_rs_only
        .token_with(Algorithm::PS256, json!({}), &claims);
    assert_rejected(&h, &ps_on_rs, "algorithm").await;

    // ES256 token naming an RSA kid.
    let es_on_rsa = k
        .p256
        .token_with(Algorithm::ES256, json!({"kid": "rsa-1"}), &claims);
    assert_rejected(&h, &es_on_rsa, "algorithm").await;
}

#[tokio::test]
async fn alg_none_in_any_casing_and_hmac_key_confusion_are_401() {
    let k = keys();
    let h = harness(&k).await;
    let claims = h.claims();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = raw_token(
            &json!({"alg": alg, "kid": "rsa-1", "typ": "JWT"}),
            &claims,
            b"",
        );
        assert_rejected(&h, &t, "algorithm").await;
        let with_sig = raw_token(&json!({"alg": alg, "kid": "rsa-1"}), &claims, b"x");
        assert_rejected(&h, &with_sig, "algorithm").await;
    }

    // HS256 "signed" with the RSA public key (as PEM-ish bytes and as the JWK JSON).
    let jwk = k.rsa.public_jwk(None).to_string();
    let header = json!({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwk.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    let hs = format!("{input}.{}", b64(tag.as_ref()));
    assert_rejected(&h, &hs, "algorithm").await;
}

#[tokio::test]
async fn ecdsa_special_signatures_are_401() {
    let k = keys();
    let h = harness(&k).await;
    let claims = h.claims();
    let header = json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"});

    // r = s = 0 ("psychic signatures", CVE-2022-21449).
    assert_rejected(&h, &raw_token(&header, &claims, &[0u8; 64]), "signature").await;

    // A valid signature re-encoded as DER instead of the fixed r||s of JWS.
    let good = k.p256.token_with(Algorithm::ES256, json!({}), &claims);
    let (input, sig) = good.rsplit_once('.').unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    let der = der_ecdsa(&raw[..32], &raw[32..]);
    let der_token = format!("{input}.{}", b64(&der));
    assert_rejected(&h, &der_token, "signature").await;
    // The untouched token is fine: the rejection above is about the encoding alone.
    assert_eq!(h.status(&good).await, 200);
}

fn der_ecdsa(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn time_claims_are_enforced() {
    let k = keys();
    let h = harness(&k).await;
    let n = now();
    let base = h.claims();
    let with = |patch: Value| {
        let mut c = base.clone();
        for (key, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(key);
            } else {
                c[key] = v.clone();
            }
        }
        k.rsa.token(&c)
    };
    assert_rejected(&h, &with(json!({"exp": n - 31})), "expired").await;
    assert_rejected(&h, &with(json!({"exp": null})), "malformed").await;
    assert_rejected(
        &h,
        &with(json!({"exp": (n + 600).to_string()})),
        "malformed",
    )
    .await;
    assert_rejected(&h, &with(json!({"nbf": n + 120})), "not_yet_valid").await;
    assert_rejected(&h, &with(json!({"iat": n + 120})), "issued_in_future").await;
    // Within leeway (30 s) is accepted.
    assert_eq!(h.status(&with(json!({"exp": n - 5}))).await, 200);
    assert_eq!(
        h.status(&with(json!({"nbf": n + 5, "iat": n + 5}))).await,
        200
    );
}

#[tokio::test]
async fn issuer_and_audience_are_exact() {
    let k = keys();
    let h = harness(&k).await;
    let mut c = h.claims();
    c["iss"] = format!("{}/", h.issuer).into();
    assert_rejected(&h, &k.rsa.token(&c), "issuer").await;
    c["iss"] = Value::Null;
    assert_rejected(&h, &k.rsa.token(&c), "issuer").await;

    let mut c = h.claims();
    c["aud"] = "api://other".into();
    assert_rejected(&h, &k.rsa.token(&c), "audience").await;
    c.as_object_mut().unwrap().remove("aud");
    assert_rejected(&h, &k.rsa.token(&c), "audience").await;
    c["aud"] = json!(["api://other", AUD]);
    assert_eq!(h.status(&k.rsa.token(&c)).await, 200);
}

#[tokio::test]
async fn crit_typ_and_refresh_tokens_are_refused() {
    let k = keys();
    let h = harness(&k).await;
    let c = h.claims();
    let crit = k.rsa.token_with(
        Algorithm::RS256,
        json!({"crit": ["exp-ext"], "exp-ext": 1}),
        &c,
    );
    assert_rejected(&h, &crit, "malformed").await;
    let b64false = k
        .rsa
        .token_with(Algorithm::RS256, json!({"crit": ["b64"], "b64": false}), &c);
    assert_rejected(&h, &b64false, "malformed").await;

    let id_token = k
        .rsa
        .token_with(Algorithm::RS256, json!({"typ": "secevent+jwt"}), &c);
    assert_rejected(&h, &id_token, "typ").await;
    // typ is case-insensitive and the application/ prefix is ignored.
    let ok = k
        .rsa
        .token_with(Algorithm::RS256, json!({"typ": "application/AT+JWT"}), &c);
    assert_eq!(h.status(&ok).await, 200);
    let no_typ = k.rsa.token_with(Algorithm::RS256, json!({"typ": null}), &c);
    assert_eq!(h.status(&no_typ).await, 200);

    let rt = k
        .rsa
        .token_with(Algorithm::RS256, json!({"typ": "rt+jwt"}), &c);
    assert_rejected(&h, &rt, "refresh_token").await;
    let mut wso2_rt = c.clone();
    wso2_rt["token_type"] = "refresh_token".into();
    let rt2 = k
        .rsa
        .token_with(Algorithm::RS256, json!({"typ": "JWT"}), &wso2_rt);
    assert_rejected(&h, &rt2, "refresh_token").await;
}

#[tokio::test]
async fn embedded_jwk_and_jku_are_never_used_or_fetched() {
    let k = keys();
    let h = harness(&k).await;
    let attacker = DevKey::rsa("attacker");
    let attacker_keys = KeyServer::start(json!({"keys": [attacker.public_jwk(None)]})).await;
    let c = h.claims();

    // Embedded jwk: signed by the attacker's key, which it carries in the header.
    let embedded = attacker.token_with(
        Algorithm::RS256,
        json!({"kid": "attacker", "jwk": attacker.public_jwk(None)}),
        &c,
    );
    assert_rejected(&h, &embedded, "unknown_kid").await;
    // Same, but claiming a published kid.
    let embedded2 = attacker.token_with(
        Algorithm::RS256,
        json!({"kid": "rsa-1", "jwk": attacker.public_jwk(None)}),
        &c,
    );
    assert_rejected(&h, &embedded2, "signature").await;

    // jku / x5u pointing at the attacker's server.
    let jku = attacker.token_with(
        Algorithm::RS256,
        json!({"kid": "attacker-2", "jku": attacker_keys.jwks_uri(), "x5u": attacker_keys.jwks_uri()}),
        &c,
    );
    assert_rejected(&h, &jku, "unknown_kid").await;
    assert_eq!(attacker_keys.hits(), 0, "the attacker's JWKS was fetched");
}

#[tokio::test]
async fn two_authorization_headers_are_400_and_not_forwarded() {
    let k = keys();
    let h = harness(&k).await;
    let good = k.rsa.token(&h.claims());
    let resp = h
        .http
        .get(h.url("/x"))
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(h.upstream.count(), 0);
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="duplicate_credentials"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn identical_requests_hit_the_verified_cache() {
    let k = keys();
    let h = harness(&k).await;
    let token = k.p256.token(&h.claims());
    let hits = h.metric("jwtgate_token_cache_hits_total").await;
    for _ in 0..5 {
        assert_eq!(h.status(&token).await, 200);
    }
    assert_eq!(h.metric("jwtgate_token_cache_hits_total").await, hits + 4.0);
    assert_eq!(h.upstream.count(), 5);
}

#[tokio::test]
async fn cache_hits_respect_exp_with_an_injected_clock() {
    let k = keys();
    let n = now();
    let clock = std::sync::Arc::new(ManualClock(n.into()));
    let h = Harness::start_with(
        jwks_of(&[(&k.rsa, None)]),
        Options {
            clock: Some(clock.clone()),
            ..Options::default()
        },
    )
    .await;
    let mut c = h.claims();
    c["exp"] = (n + 100).into();
    let token = k.rsa.token(&c);
    assert_eq!(h.status(&token).await, 200);
    // leeway_s = 30: still valid at exp + 29, refused at exp + 30 — also from the cache.
    clock.0.store(n + 129, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(h.status(&token).await, 200);
    clock.0.store(n + 130, std::sync::atomic::Ordering::SeqCst);
    assert_rejected(&h, &token, "expired").await;
    assert_eq!(h.upstream.count(), 2);
}

#[tokio::test]
async fn cache_disabled_still_validates() {
    let k = keys();
    let h = Harness::start_with(
        jwks_of(&[(&k.rsa, None)]),
        Options {
            extra: "[cache]\nmax_entries = 0\n".into(),
            ..Options::default()
        },
    )
    .await;
    let token = k.rsa.token(&h.claims());
    for _ in 0..3 {
        assert_eq!(h.status(&token).await, 200);
    }
    assert_eq!(h.metric("jwtgate_token_cache_hits_total").await, 0.0);
    assert_rejected(&h, &jwtgate::devkm::tamper(&token), "signature").await;
}

#[tokio::test]
async fn kidless_token_is_checked_against_fitting_keys() {
    let k = keys();
    let h = harness(&k).await;
    let token =
        k.ed.token_with(Algorithm::EdDSA, json!({"kid": null}), &h.claims());
    assert_eq!(h.status(&token).await, 200);
    let other = DevKey::ed25519("x");
    let bad = other.token_with(Algorithm::EdDSA, json!({"kid": null}), &h.claims());
    assert_rejected(&h, &bad, "signature").await;
}

/// A JWKS carrying an Ed25519 small-order point (the identity): with it, the signature
/// `R = identity, S = 0` verifies for any message under aws-lc. The key is refused when the
/// set is parsed, so the forged token finds no key.
#[tokio::test]
async fn small_order_ed25519_key_in_the_jwks_verifies_nothing() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let good = DevKey::ed25519("good").public_jwk(None);
    let h = Harness::start(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "evil", "x": b64(&identity)}, good
    ]}))
    .await;
    let header = b64(br#"{"alg":"EdDSA","kid":"evil"}"#);
    let payload = b64(h.claims().to_string().as_bytes());
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let forged = format!("{header}.{payload}.{}", b64(&sig));
    assert_rejected(&h, &forged, "unknown_kid").await;
}

/// A kid longer than 256 bytes is malformed before any key lookup or refetch (it never
/// reaches the negative kid cache, which keeps a fixed-size hash per kid anyway).
#[tokio::test]
async fn overlong_kid_is_malformed_before_any_key_lookup() {
    let k = keys();
    let h = harness(&k).await;
    let long = "k".repeat(257);
    let token = k.rsa.token_with(
        Algorithm::RS256,
        json!({"alg": "RS256", "kid": long}),
        &h.claims(),
    );
    let hits = h.keys.hits();
    assert_rejected(&h, &token, "malformed").await;
    assert_eq!(h.keys.hits(), hits, "no refetch for an overlong kid");
    let token = k.rsa.token_with(
        Algorithm::RS256,
        json!({"alg": "RS256", "kid": "k".repeat(256)}),
        &h.claims(),
    );
    assert_rejected(&h, &token, "unknown_kid").await;
    assert!(h.keys.hits() > hits, "a 256-byte kid is looked up");
}

/// jsonwebtoken (not on jwtgate's verify path, which calls aws-lc directly) as an
/// independent reference: every token jwtgate forwards verifies under it with the key
/// from the JWKS, and a signature jwtgate refuses is refused by it too.
#[tokio::test]
async fn accepted_tokens_verify_under_an_independent_jose_library() {
    let k = keys();
    let h = harness(&k).await;
    for (key, alg, reference) in [
        (&k.rsa, Algorithm::RS256, jsonwebtoken::Algorithm::RS256),
        (&k.rsa, Algorithm::PS256, jsonwebtoken::Algorithm::PS256),
        (&k.p256, Algorithm::ES256, jsonwebtoken::Algorithm::ES256),
        (&k.p384, Algorithm::ES384, jsonwebtoken::Algorithm::ES384),
        (&k.ed, Algorithm::EdDSA, jsonwebtoken::Algorithm::EdDSA),
    ] {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk(None)).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let verifies = |token: &str| {
            let (signed, sig) = token.rsplit_once('.').unwrap();
            jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &decoding, reference)
                .unwrap_or(false)
        };
        let token = key.token_with(alg, json!({}), &h.claims());
        assert_eq!(h.status(&token).await, 200, "{alg:?}");
        assert!(
            verifies(&token),
            "{alg:?}: jwtgate accepted what the reference refuses"
        );
        let other = key.token_with(alg, json!({}), &h.claims());
        let forged = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0,
            other.rsplit_once('.').unwrap().1
        );
        assert!(!verifies(&forged), "{alg:?}");
        assert_rejected(&h, &forged, "signature").await;
    }
}
