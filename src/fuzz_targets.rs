//! Entry points for the fuzzers (`fuzz/`, cargo-afl) and for the corpus replay test
//! (`tests/fuzz_corpora.rs`): each takes attacker- or network-fed bytes into one parser or
//! decision the product runs, and must never panic, whatever the bytes. Not an API.

use std::sync::OnceLock;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::jwks::KeySet;
use crate::metrics::Metrics;
use crate::revocation::{record, snapshot};

/// One fuzz target: bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Target); 9] = [
    ("token", token),
    ("jwks", jwks),
    ("snapshot", snapshot_bytes),
    ("push", push),
    ("native_feed", native_feed),
    ("wso2_feed", wso2_feed),
    ("notify", notify),
    ("config", config),
    ("path", path),
];

/// The whole `Authenticator` decision on a token, against a fixed key set (the
/// development keys, all algorithms), with the cache off so every input is verified.
pub fn token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_all().build().ok();
    }
    let auth = authenticator();
    if auth.check_size(token).is_err() {
        return;
    }
    RUNTIME.with(|rt| {
        if let Some(rt) = rt {
            let _ = rt.block_on(auth.verify(token));
        }
    });
}

/// A JWKS document as a key manager serves it.
pub fn jwks(data: &[u8]) {
    let _ = KeySet::parse(data);
}

/// A revocation snapshot file.
pub fn snapshot_bytes(data: &[u8]) {
    let _ = snapshot::decode(data);
}

/// A native push body (`POST /revocations`).
pub fn push(data: &[u8]) {
    if let Ok(body) = record::parse_body::<record::PushBody>(data) {
        let _ = record::native_all(&body.revocations);
    }
}

/// A native feed page.
pub fn native_feed(data: &[u8]) {
    if let Ok(page) = record::parse_body::<record::FeedPage>(data) {
        for (i, raw) in page.revocations.iter().enumerate() {
            let _ = record::native_raw(i, raw);
        }
    }
}

/// The WSO2 control plane's revokedjwt body.
pub fn wso2_feed(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = record::wso2_feed(&v);
    }
}

/// A WSO2 notify event.
pub fn notify(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = record::wso2_notify(&v);
    }
}

/// A config file (`${NAME}` expansion included, with an environment that has one name).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |name: &str| (name == "SET").then(|| "value".to_owned());
        let _ = Config::from_toml_str(text, &env);
    }
}

/// A request path through normalization, both with and without `;` allowed. What comes
/// out must be canonical — normalizing it again changes nothing, and no `//`, dot segment,
/// encoded unreserved byte, lower-case hex or refused encoding is left — or a matcher and
/// an upstream could still read it two ways: a violation panics, which the fuzzer reports.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for allow in [false, true] {
        let Ok(n) = crate::path::normalize(raw, allow) else {
            continue;
        };
        let out = n.forward.as_ref();
        let again = crate::path::normalize(out, allow).expect("a normalized path normalizes");
        assert_eq!(again.forward, out, "normalization is idempotent");
        assert_eq!(again.matching, n.matching, "matching form is stable");
        assert!(out.starts_with('/') && !out.contains("//"), "{out:?}");
        for seg in out.split('/') {
            assert!(seg != "." && seg != "..", "dot segment left in {out:?}");
        }
        let b = out.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            assert!((0x21..=0x7e).contains(&c) && c != b'\\', "{out:?}");
            if c == b'%' {
                let hex = &out[i + 1..i + 3];
                assert_eq!(
                    hex,
                    hex.to_ascii_uppercase(),
                    "lower-case hex left in {out:?}"
                );
                let v = u8::from_str_radix(hex, 16).expect("well-formed escape");
                assert!(
                    !(v.is_ascii_alphanumeric()
                        || b"-._~/\\".contains(&v)
                        || v < 0x20
                        || v == 0x7f),
                    "{out:?}"
                );
            }
        }
        if !allow {
            assert!(!out.contains(';') && !out.contains("%3B"), "{out:?}");
        }
    }
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let text = r#"
[upstream]
url = "http://127.0.0.1:9"
[cache]
max_entries = 0
[[issuers]]
name = "km"
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "http://127.0.0.1:9/jwks"
audiences = ["api://orders"]
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
"#;
        let config = Config::from_toml_str(text, &|_| None).expect("the fuzz config is valid");
        let devkeys = [
            crate::devkm::DevKey::rsa("rsa"),
            crate::devkm::DevKey::p256("p256"),
            crate::devkm::DevKey::p384("p384"),
            crate::devkm::DevKey::ed25519("ed"),
        ];
        let doc = serde_json::json!({
            "keys": devkeys.iter().map(|k| k.public_jwk(None)).collect::<Vec<_>>()
        });
        Authenticator::with_key_document(&config, doc.to_string().as_bytes(), &Metrics::new())
            .expect("the development keys load")
    })
}
