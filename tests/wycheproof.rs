//! Google's Wycheproof vectors through jwtgate's own verify path: each group's public key
//! written as a JWK and parsed by jwtgate's JWKS parser (`KeySet::parse`, with its size,
//! curve and small-order rules), each signature checked by the parsed key jwtgate keeps
//! for the JWS algorithm (`VerifyKey::parsed_for(alg).verify_sig`, exactly what a token's
//! signature goes through). Every "valid" vector must verify, every "invalid" one must be
//! refused; "acceptable" ones are counted and listed in the output, never silently passed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwtgate::config::Algorithm;
use jwtgate::jwks::KeySet;
use serde_json::{Value, json};
use wycheproof::TestResult;

#[derive(Default, Debug)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_refused: usize,
    /// Groups whose key jwtgate refuses to load (a policy stricter than the vectors).
    refused_keys: usize,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Big-endian integer bytes without leading zeros, left-padded to `len` when given.
fn int(bytes: &[u8], len: Option<usize>) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let trimmed = &bytes[start..];
    match len {
        Some(len) if trimmed.len() < len => {
            let mut v = vec![0u8; len - trimmed.len()];
            v.extend_from_slice(trimmed);
            v
        }
        _ => trimmed.to_vec(),
    }
}

/// Runs one group: `jwk` through jwtgate's parser, then every test.
fn run_group<'a>(
    name: &str,
    jwk: Value,
    alg: Algorithm,
    tests: impl Iterator<Item = (usize, &'a [u8], &'a [u8], &'a TestResult)>,
    tally: &mut Tally,
) {
    let doc = json!({ "keys": [jwk] }).to_string();
    let set = KeySet::parse(doc.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let Some(key) = set.get("w") else {
        tally.refused_keys += 1;
        // A refused key verifies nothing, so no "valid" vector of the group may pass
        // elsewhere: they are counted as the stricter policy, not skipped silently.
        return;
    };
    let parsed = key
        .parsed_for(alg)
        .unwrap_or_else(|| panic!("{name}: no parsed key for {alg:?}"));
    for (tc_id, msg, sig, result) in tests {
        let ok = parsed.verify_sig(msg, sig).is_ok();
        match result {
            TestResult::Valid => {
                assert!(ok, "{name} tcId {tc_id}: a valid signature was refused");
                tally.valid += 1;
            }
            TestResult::Invalid => {
                assert!(!ok, "{name} tcId {tc_id}: an invalid signature verified");
                tally.invalid += 1;
            }
            TestResult::Acceptable => {
                if ok {
                    tally.acceptable_accepted += 1;
                } else {
                    tally.acceptable_refused += 1;
                }
            }
        }
    }
}

#[test]
fn ecdsa_p1363_vectors() {
    use wycheproof::ecdsa::{TestName, TestSet};
    for (name, alg, crv, len) in [
        (
            TestName::EcdsaSecp256r1Sha256P1363,
            Algorithm::ES256,
            "P-256",
            32,
        ),
        (
            TestName::EcdsaSecp384r1Sha384P1363,
            Algorithm::ES384,
            "P-384",
            48,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut tally = Tally::default();
        for g in &set.test_groups {
            let jwk = json!({
                "kty": "EC", "crv": crv, "kid": "w",
                "x": b64(&int(&g.key.affine_x, Some(len))),
                "y": b64(&int(&g.key.affine_y, Some(len))),
            });
            let tests = g
                .tests
                .iter()
                .map(|t| (t.tc_id, t.msg.as_slice(), t.sig.as_slice(), &t.result));
            run_group(&format!("{name:?}"), jwk, alg, tests, &mut tally);
        }
        println!("{name:?}: {tally:?}");
        assert!(tally.valid > 0 && tally.invalid > 0, "{name:?}: {tally:?}");
    }
}

#[test]
fn rsa_pkcs1_v15_vectors() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    for (name, alg) in [
        (TestName::Rsa2048Sha256, Algorithm::RS256),
        (TestName::Rsa2048Sha384, Algorithm::RS384),
        (TestName::Rsa2048Sha512, Algorithm::RS512),
        (TestName::Rsa3072Sha256, Algorithm::RS256),
        (TestName::Rsa3072Sha384, Algorithm::RS384),
        (TestName::Rsa3072Sha512, Algorithm::RS512),
        (TestName::Rsa4096Sha256, Algorithm::RS256),
        (TestName::Rsa4096Sha384, Algorithm::RS384),
        (TestName::Rsa4096Sha512, Algorithm::RS512),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut tally = Tally::default();
        for g in &set.test_groups {
            let jwk = json!({
                "kty": "RSA", "kid": "w",
                "n": b64(&int(&g.key.n, None)), "e": b64(&int(&g.key.e, None)),
            });
            let tests = g
                .tests
                .iter()
                .map(|t| (t.tc_id, t.msg.as_slice(), t.sig.as_slice(), &t.result));
            run_group(&format!("{name:?}"), jwk, alg, tests, &mut tally);
        }
        println!("{name:?}: {tally:?}");
        assert!(tally.valid > 0 && tally.invalid > 0, "{name:?}: {tally:?}");
    }
}

#[test]
fn rsa_pss_vectors_with_jws_parameters() {
    use wycheproof::HashFunction;
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    // JWS PS256/384/512 (RFC 7518 §3.5): MGF1 with the same hash, salt as long as the hash.
    for (name, alg, hash, salt) in [
        (
            TestName::RsaPss2048Sha256Mgf1SaltLen32,
            Algorithm::PS256,
            HashFunction::Sha2_256,
            32,
        ),
        (
            TestName::RsaPss3072Sha256Mgf1SaltLen32,
            Algorithm::PS256,
            HashFunction::Sha2_256,
            32,
        ),
        (
            TestName::RsaPss4096Sha256Mgf1SaltLen32,
            Algorithm::PS256,
            HashFunction::Sha2_256,
            32,
        ),
        (
            TestName::RsaPss2048Sha384Mgf1SaltLen48,
            Algorithm::PS384,
            HashFunction::Sha2_384,
            48,
        ),
        (
            TestName::RsaPss4096Sha384Mgf1SaltLen48,
            Algorithm::PS384,
            HashFunction::Sha2_384,
            48,
        ),
        (
            TestName::RsaPss4096Sha512Mgf1SaltLen64,
            Algorithm::PS512,
            HashFunction::Sha2_512,
            64,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut tally = Tally::default();
        for g in &set.test_groups {
            assert_eq!(g.hash, hash, "{name:?}");
            assert_eq!(g.salt_size, salt, "{name:?}");
            assert_eq!(g.mgf_hash, Some(hash), "{name:?}");
            let jwk = json!({
                "kty": "RSA", "kid": "w",
                "n": b64(&int(&g.key.n, None)), "e": b64(&int(&g.key.e, None)),
            });
            let tests = g
                .tests
                .iter()
                .map(|t| (t.tc_id, t.msg.as_slice(), t.sig.as_slice(), &t.result));
            run_group(&format!("{name:?}"), jwk, alg, tests, &mut tally);
        }
        println!("{name:?}: {tally:?}");
        assert!(tally.valid > 0 && tally.invalid > 0, "{name:?}: {tally:?}");
    }
}

#[test]
fn ed25519_vectors() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for g in &set.test_groups {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "w", "x": b64(&g.key.pk)});
        let tests = g
            .tests
            .iter()
            .map(|t| (t.tc_id, t.msg.as_slice(), t.sig.as_slice(), &t.result));
        run_group("Ed25519", jwk, Algorithm::EdDSA, tests, &mut tally);
    }
    println!("Ed25519: {tally:?}");
    assert!(tally.valid > 0 && tally.invalid > 0, "{tally:?}");
}
