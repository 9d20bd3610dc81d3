//! jwtgate against an independent JOSE stack: PyJWT with `cryptography` (OpenSSL) decides
//! whether each token's signature is valid under the key and algorithm; jwtgate's
//! `Authenticator::verify` decides whether it accepts the token. Thousands of generated
//! tokens and mutations of them (bit flips, signature swaps, re-encodings, alg and kid
//! changes, segment surgery) must get the same verdict, except where jwtgate is documented
//! to be stricter — every such difference is named in `stricter` below with its reason.
//!
//! Needs python3 with `pyjwt` and `cryptography` (`.ci/run` installs them in `.venv`);
//! outside CI the test says SKIPPED when they are missing.

use std::io::Write as _;
use std::process::{Command, Stdio};

use jwtgate::auth::Authenticator;
use jwtgate::config::{Algorithm, Config};
use jwtgate::devkm::DevKey;
use jwtgate::devkm::keys::b64;
use jwtgate::metrics::Metrics;
use jwtgate::reject::Reason;
use serde_json::{Value, json};

const ISSUER: &str = "https://km.example.com/oauth2/token";

/// PyJWT's verdict on each `{"token", "jwk", "alg"}` line: 1 verified, 0 refused.
const PYJWT: &str = r#"
import json, sys
import jwt
out = []
for line in sys.stdin:
    case = json.loads(line)
    try:
        key = jwt.PyJWK(case["jwk"], algorithm=case["alg"]).key
        jwt.decode(case["token"], key, algorithms=[case["alg"]],
                   options={"verify_signature": True, "verify_exp": False,
                            "verify_nbf": False, "verify_iat": False,
                            "verify_aud": False, "verify_iss": False})
        out.append("1")
    except Exception:
        out.append("0")
print("\n".join(out))
"#;

/// jwtgate's verdict-maker for `config_text`, with the keys of `jwks` (no key manager).
fn authenticator(config_text: &str, jwks: &Value) -> Authenticator {
    let config = Config::from_toml_str(config_text, &|_| None).unwrap();
    Authenticator::with_key_document(&config, jwks.to_string().as_bytes(), &Metrics::new()).unwrap()
}

fn python() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let candidates = [venv.to_owned(), "python3".to_owned()];
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import jwt, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("python3 with pyjwt and cryptography is required in CI");
    }
    eprintln!("SKIPPED: pyjwt/cryptography not installed (pip install pyjwt cryptography)");
    None
}

struct Case {
    token: String,
    key: usize,
    alg: Algorithm,
    what: &'static str,
}

/// Mutations of a valid token that keep it a plausible token.
fn mutations(token: &str, other: &str, n: u64) -> Vec<(String, &'static str)> {
    let parts: Vec<&str> = token.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let mut out = vec![(token.to_owned(), "as signed")];
    // A bit flip in the signature bytes.
    let mut sig = base64_decode(s);
    let i = (n as usize) % sig.len();
    sig[i] ^= 1 << (n % 8);
    out.push((format!("{h}.{p}.{}", b64(&sig)), "signature bit flip"));
    // Another token's signature.
    let other_sig = other.rsplit('.').next().unwrap_or_default();
    out.push((format!("{h}.{p}.{other_sig}"), "signature of another token"));
    // A bit flip in the payload bytes.
    let mut payload = base64_decode(p);
    let j = (n as usize * 7) % payload.len();
    payload[j] ^= 1 << (n % 7);
    out.push((format!("{h}.{}.{s}", b64(&payload)), "payload bit flip"));
    // Padding added to the signature segment (not base64url as RFC 7515 §2 defines it).
    out.push((format!("{h}.{p}.{s}=="), "padded signature"));
    // Standard-alphabet re-encoding of the signature.
    out.push((
        format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/")),
        "standard base64 alphabet",
    ));
    // Truncated and empty signatures.
    out.push((
        format!("{h}.{p}.{}", &s[..s.len() / 2]),
        "truncated signature",
    ));
    out.push((format!("{h}.{p}."), "empty signature"));
    // Segments swapped.
    out.push((format!("{p}.{h}.{s}"), "header and payload swapped"));
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// jwtgate is documented to be stricter than a JOSE library here (README "How a token is
/// checked"); PyJWT's `base64url_decode` pads and accepts what jwtgate's alphabet check
/// refuses.
fn stricter(what: &str, reason: Reason) -> Option<&'static str> {
    match (what, reason) {
        ("padded signature", Reason::Malformed) => {
            Some("base64url without padding only (RFC 7515 §2); PyJWT strips '='")
        }
        ("standard base64 alphabet", Reason::Malformed) => {
            Some("base64url alphabet only; Python's decoder also takes + and /")
        }
        _ => None,
    }
}

#[tokio::test]
async fn verdicts_agree_with_pyjwt() {
    let Some(py) = python() else {
        return;
    };
    let keys = [
        DevKey::rsa("rsa"),
        DevKey::p256("p256"),
        DevKey::p384("p384"),
        DevKey::ed25519("ed"),
    ];
    let algs: &[(usize, Algorithm)] = &[
        (0, Algorithm::RS256),
        (0, Algorithm::RS384),
        (0, Algorithm::RS512),
        (0, Algorithm::PS256),
        (0, Algorithm::PS384),
        (0, Algorithm::PS512),
        (1, Algorithm::ES256),
        (2, Algorithm::ES384),
        (3, Algorithm::EdDSA),
    ];
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[issuers]]\nname = \"km\"\nissuer = \"{ISSUER}\"\njwks_uri = \"http://127.0.0.1:9/jwks\"\nskip_audience_check = true\nalgorithms = [\"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES256\", \"ES384\", \"EdDSA\"]\n"
    );
    let jwks = json!({"keys": keys.iter().map(|k| k.public_jwk(None)).collect::<Vec<_>>()});
    let auth = authenticator(&text, &jwks);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut cases = Vec::new();
    for n in 0..40u64 {
        for (k, alg) in algs {
            let claims = |i: u64| json!({"iss": ISSUER, "sub": format!("user-{n}-{i}"), "exp": now + 600, "iat": now, "jti": format!("{n}-{i}")});
            let token = keys[*k].token_with(*alg, json!({}), &claims(0));
            let other = keys[*k].token_with(*alg, json!({}), &claims(1));
            for (t, what) in mutations(&token, &other, n) {
                cases.push(Case {
                    token: t,
                    key: *k,
                    alg: *alg,
                    what,
                });
            }
            // The header's alg changed to another algorithm of the same key family, or to
            // one of another family (the key then does not fit).
            let swapped = match alg {
                Algorithm::RS256 => Algorithm::PS256,
                Algorithm::PS256 => Algorithm::RS256,
                Algorithm::ES256 => Algorithm::ES384,
                _ => Algorithm::RS256,
            };
            let header = b64(
                json!({"alg": swapped.name(), "kid": keys[*k].kid, "typ": "at+jwt"})
                    .to_string()
                    .as_bytes(),
            );
            let rest = token.split_once('.').unwrap().1;
            cases.push(Case {
                token: format!("{header}.{rest}"),
                key: *k,
                alg: swapped,
                what: "header alg changed",
            });
        }
    }

    // PyJWT, in one batch.
    let mut input = String::new();
    for c in &cases {
        let line =
            json!({"token": c.token, "jwk": keys[c.key].public_jwk(None), "alg": c.alg.name()});
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut child = Command::new(&py)
        .args(["-c", PYJWT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdicts: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "1")
        .collect();
    assert_eq!(verdicts.len(), cases.len(), "one PyJWT verdict per case");

    let mut agreed = 0;
    let mut documented = std::collections::BTreeMap::<&str, usize>::new();
    for (c, pyjwt_ok) in cases.iter().zip(&verdicts) {
        let ours = auth
            .verify(&c.token)
            .await
            .map(|_| ())
            .map_err(|r| r.reason);
        match (ours, pyjwt_ok) {
            (Ok(()), true) | (Err(_), false) => agreed += 1,
            (Ok(()), false) => panic!(
                "{}: jwtgate accepted a token PyJWT refuses ({:?})",
                c.what, c.alg
            ),
            (Err(reason), true) => {
                let why = stricter(c.what, reason).unwrap_or_else(|| {
                    panic!(
                        "{}: jwtgate refused ({}) a token PyJWT verifies ({:?})",
                        c.what,
                        reason.label(),
                        c.alg
                    )
                });
                *documented.entry(why).or_default() += 1;
            }
        }
    }
    println!(
        "differential: {} cases, {agreed} same verdict, documented stricter: {documented:?}",
        cases.len()
    );
    assert!(cases.len() >= 3000);
    // Both sides must have seen valid and invalid tokens, or the test proves nothing.
    assert!(verdicts.iter().any(|v| *v) && verdicts.iter().any(|v| !*v));
}

/// The claim rules against jsonwebtoken's own `decode` with the equivalent `Validation`
/// (exp, iss and aud required, nbf checked, `iss` and `aud` pinned, the same 30 s leeway): signed valid
/// tokens whose claims and header are edited one at a time. Differences only where jwtgate
/// is documented to be stricter, each named.
#[tokio::test]
async fn claim_rules_agree_with_jsonwebtoken() {
    const AUD: &str = "api://orders";
    let key = DevKey::p256("p256");
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[issuers]]\nname = \"km\"\nissuer = \"{ISSUER}\"\njwks_uri = \"http://127.0.0.1:9/jwks\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"ES256\"]\nleeway_s = 30\n"
    );
    let jwk = key.public_jwk(None);
    let auth = authenticator(&text, &json!({ "keys": [jwk] }));

    let reference_key =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.leeway = 30;
    validation.validate_nbf = true;
    validation.set_audience(&[AUD]);
    validation.set_issuer(&[ISSUER]);
    // jwtgate requires `aud` and `iss`; jsonwebtoken checks them only when present
    // unless they are required, so they are required here.
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let base = json!({"iss": ISSUER, "aud": AUD, "sub": "alice", "iat": now - 5, "nbf": now - 5, "exp": now + 600, "jti": "j"});
    type Edit = (&'static str, serde_json::Value, serde_json::Value);
    let edits: Vec<Edit> = vec![
        ("as issued", json!({}), json!({})),
        ("expired long ago", json!({}), json!({"exp": now - 3600})),
        (
            "expired within the leeway",
            json!({}),
            json!({"exp": now - 10}),
        ),
        (
            "expired past the leeway",
            json!({}),
            json!({"exp": now - 50}),
        ),
        ("no exp", json!({}), json!({"exp": null})),
        (
            "exp as a string",
            json!({}),
            json!({"exp": (now + 600).to_string()}),
        ),
        ("nbf within the leeway", json!({}), json!({"nbf": now + 10})),
        ("nbf past the leeway", json!({}), json!({"nbf": now + 60})),
        ("other audience", json!({}), json!({"aud": "api://other"})),
        (
            "audience in an array",
            json!({}),
            json!({"aud": ["x", AUD]}),
        ),
        ("no audience", json!({}), json!({"aud": null})),
        (
            "other issuer",
            json!({}),
            json!({"iss": "https://evil.example"}),
        ),
        ("iat in the future", json!({}), json!({"iat": now + 600})),
        (
            "refresh token claim",
            json!({}),
            json!({"token_type": "refresh_token"}),
        ),
        ("refresh token typ", json!({"typ": "rt+jwt"}), json!({})),
        ("unknown typ", json!({"typ": "foo"}), json!({})),
        ("crit header", json!({"crit": ["exp"]}), json!({})),
    ];
    let mut documented = Vec::new();
    for (what, header, claims) in &edits {
        let mut c = base.clone();
        for (k, v) in claims.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let token = key.token_with(Algorithm::ES256, header.clone(), &c);
        let ours = auth.verify(&token).await.map(|_| ()).map_err(|r| r.reason);
        let reference =
            jsonwebtoken::decode::<serde_json::Value>(&token, &reference_key, &validation).is_ok();
        match (ours, reference) {
            (Ok(()), true) | (Err(_), false) => {}
            (Ok(()), false) => panic!("{what}: jwtgate accepted what jsonwebtoken refuses"),
            (Err(reason), true) => {
                let why = match (*what, reason) {
                    ("iat in the future", Reason::IssuedInFuture) => {
                        "an iat past now + leeway is refused (jsonwebtoken does not check iat)"
                    }
                    ("refresh token claim", Reason::RefreshToken)
                    | ("refresh token typ", Reason::RefreshToken) => {
                        "refresh tokens are never access tokens (DESIGN §4)"
                    }
                    ("unknown typ", Reason::Typ) => "header typ must be on the issuer's typ list",
                    ("crit header", Reason::Malformed) => {
                        "no crit extension is understood, so any crit is refused (RFC 7515 §4.1.11)"
                    }
                    _ => panic!(
                        "{what}: jwtgate refused ({}) what jsonwebtoken accepts",
                        reason.label()
                    ),
                };
                documented.push((*what, why));
            }
        }
    }
    println!(
        "claim rules: {} edits, documented stricter: {documented:#?}",
        edits.len()
    );

    // Then 2,000 tokens with every claim drawn at random (offsets kept clear of the
    // leeway boundaries, so a clock tick between the two verdicts cannot split them).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut pick = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let offsets_exp = [Some(-3600), Some(-50), Some(-10), Some(10), Some(600), None];
    let offsets_nbf = [None, Some(-5), Some(10), Some(60)];
    let offsets_iat = [None, Some(-5), Some(10), Some(600)];
    let auds = [
        json!(AUD),
        json!("api://other"),
        json!(["x", AUD]),
        json!([]),
        Value::Null,
    ];
    let issuers = [json!(ISSUER), json!("https://evil.example"), Value::Null];
    let (mut same, mut stricter_iat) = (0, 0);
    for _ in 0..2000 {
        let mut c = json!({"sub": "alice", "jti": "j"});
        let set = |c: &mut Value, k: &str, v: Option<Value>| {
            if let Some(v) = v.filter(|v| !v.is_null()) {
                c[k] = v;
            }
        };
        set(&mut c, "exp", offsets_exp[pick(6)].map(|o| json!(now + o)));
        set(&mut c, "nbf", offsets_nbf[pick(4)].map(|o| json!(now + o)));
        let iat = offsets_iat[pick(4)];
        set(&mut c, "iat", iat.map(|o| json!(now + o)));
        set(&mut c, "aud", Some(auds[pick(5)].clone()));
        set(&mut c, "iss", Some(issuers[pick(3)].clone()));
        let token = key.token_with(Algorithm::ES256, json!({}), &c);
        let ours = auth.verify(&token).await.map(|_| ()).map_err(|r| r.reason);
        let reference = jsonwebtoken::decode::<Value>(&token, &reference_key, &validation).is_ok();
        match (ours, reference) {
            (Ok(()), true) | (Err(_), false) => same += 1,
            (Err(Reason::IssuedInFuture), true) if iat.is_some_and(|o| o > 30) => stricter_iat += 1,
            (ours, _) => panic!("claims {c}: jwtgate {ours:?}, jsonwebtoken {reference}"),
        }
    }
    println!("random claims: 2000 tokens, {same} same verdict, {stricter_iat} iat in the future");
    assert!(same > 1000);
}
