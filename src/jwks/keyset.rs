//! A parsed JWKS: `kid` → pre-built decoding key, with the hygiene rules applied once per
//! fetch so the request path only does a map lookup.
//!
//! Ignored (logged at debug, never fatal to the rest of the set): `kty: oct` (a remote JWKS
//! never supplies HMAC secrets), RSA moduli under 2048 bits, unknown `kty`/`crv`, keys with
//! `use` other than `sig` or `key_ops` without `verify`, malformed members, and a second key
//! with an already-seen `kid`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::config::Algorithm;

/// Upper bound on keys kept per issuer: a hostile JWKS cannot grow memory without limit.
pub const MAX_KEYS: usize = 64;
/// Upper bound on a JWKS document body.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One verification key, parsed once.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// Stable identity of (kid, key material): the same key in a refetched set has the same
    /// id, so verified-token cache entries stay valid exactly while their key is present.
    pub id: u64,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it named one jwtgate supports.
    pub alg: Option<Algorithm>,
    /// The public key parsed by aws-lc once per fetch, so a first-seen token pays for the
    /// signature check only, never for parsing the key again.
    pub parsed: Parsed,
}

/// aws-lc's parsed form of a key, per algorithm it can verify.
pub enum Parsed {
    /// RSA: one per algorithm, in [`rsa_index`] order (RS256/384/512, PS256/384/512).
    Rsa(Box<[ParsedPublicKey; 6]>),
    /// EC (ES256 on P-256, ES384 on P-384) and Ed25519 (EdDSA): one algorithm each.
    Single(Box<ParsedPublicKey>),
    /// Not parsed (only for the probe used while checking a JWK's `alg`).
    None,
}

use aws_lc_rs::signature::ParsedPublicKey;

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// The parsed key that verifies `alg`, when this key fits it.
    pub fn parsed_for(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        match (&self.parsed, self.kind, alg) {
            (Parsed::Rsa(keys), KeyKind::Rsa, _) => rsa_index(alg).map(|i| &keys[i]),
            (Parsed::Single(k), KeyKind::P256, Algorithm::ES256)
            | (Parsed::Single(k), KeyKind::P384, Algorithm::ES384)
            | (Parsed::Single(k), KeyKind::Ed25519, Algorithm::EdDSA) => Some(k),
            _ => None,
        }
    }

    /// Whether a token signed with `alg` may be verified by this key: the key type and
    /// curve must fit, and so must the JWK's `alg` when it has one. An RSA key without
    /// `alg` serves both RS* and PS*.
    pub fn fits(&self, alg: Algorithm) -> bool {
        if let Some(own) = self.alg
            && own != alg
        {
            return false;
        }
        use Algorithm::*;
        match self.kind {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// An issuer's current keys.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Every key, including those without a `kid`, in document order.
    all: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Keys a token without `kid` may be checked against (at most `limit`).
    pub fn candidates(
        &self,
        alg: Algorithm,
        limit: usize,
    ) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.all.iter().filter(move |k| k.fits(alg)).take(limit)
    }

    /// Whether the key with this identity is still in the set.
    pub fn contains(&self, kid: Option<&str>, id: u64) -> bool {
        match kid {
            Some(kid) => self.by_kid.get(kid).is_some_and(|k| k.id == id),
            None => self.all.iter().any(|k| k.id == id),
        }
    }

    /// Parses a JWKS document. Fails only if the document itself is not a JWKS; bad
    /// individual keys are skipped.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document ({e})"))?;
        let mut set = KeySet::default();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            if set.all.len() >= MAX_KEYS {
                tracing::warn!(
                    max = MAX_KEYS,
                    "JWKS has more keys than jwtgate keeps; the rest are ignored"
                );
                break;
            }
            match parse_key(raw) {
                Ok(key) => {
                    if let Some(kid) = &key.kid
                        && set.by_kid.contains_key(kid)
                    {
                        tracing::warn!(
                            index = i,
                            "JWKS repeats a kid; the first key with it is kept"
                        );
                        continue;
                    }
                    let key = Arc::new(key);
                    if let Some(kid) = &key.kid {
                        set.by_kid.insert(kid.clone(), key.clone());
                    }
                    set.all.push(key);
                }
                Err(why) => tracing::debug!(index = i, why, "JWKS key ignored"),
            }
        }
        Ok(set)
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(field: &'static str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let v = value.ok_or_else(|| format!("missing {field}"))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("{field} is not base64url"))
}

/// What a JWK's key material parses to: its type, the bytes that identify it, aws-lc's form.
type KeyParts = (KeyKind, Vec<u8>, Parsed);

/// RSA: at least 2048 bits, an exponent of at most 4 bytes.
fn rsa_key(jwk: &RawJwk) -> Result<KeyParts, String> {
    let n = b64("n", jwk.n.as_deref())?;
    let e = b64("e", jwk.e.as_deref())?;
    let n_trim = strip_leading_zeros(&n);
    let bits = n_trim
        .first()
        .map_or(0, |b| n_trim.len() * 8 - b.leading_zeros() as usize);
    if bits < 2048 {
        return Err(format!("RSA modulus of {bits} bits is under 2048"));
    }
    let e_trim = strip_leading_zeros(&e);
    if e_trim.is_empty() || e_trim.len() > 4 {
        return Err("RSA exponent out of range".into());
    }
    let parsed = Parsed::Rsa(parse_rsa(n_trim, e_trim)?);
    Ok((KeyKind::Rsa, [n_trim, e_trim].concat(), parsed))
}

/// EC on P-256 or P-384: coordinates of the curve's size, a point aws-lc accepts.
fn ec_key(jwk: &RawJwk, crv: &str) -> Result<KeyParts, String> {
    let x = b64("x", jwk.x.as_deref())?;
    let y = b64("y", jwk.y.as_deref())?;
    let (kind, len) = if crv == "P-256" {
        (KeyKind::P256, 32)
    } else {
        (KeyKind::P384, 48)
    };
    if x.len() != len || y.len() != len {
        return Err(format!("{crv} coordinates must be {len} bytes"));
    }
    let alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = if kind == KeyKind::P256 {
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED
    } else {
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED
    };
    let point = [&[4u8][..], &x, &y].concat();
    let parsed = ParsedPublicKey::new(alg, &point)
        .map_err(|_| format!("{crv} point rejected by aws-lc (not on the curve)"))?;
    Ok((kind, [x, y].concat(), Parsed::Single(Box::new(parsed))))
}

/// Ed25519: 32 bytes, canonical, not of small order.
fn ed25519_key(jwk: &RawJwk) -> Result<KeyParts, String> {
    let x = b64("x", jwk.x.as_deref())?;
    let Ok(point) = <[u8; 32]>::try_from(x.as_slice()) else {
        return Err("Ed25519 key must be 32 bytes".into());
    };
    ed25519_point_is_safe(&point)?;
    let parsed = ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, &x)
        .map_err(|_| "Ed25519 key rejected by aws-lc".to_owned())?;
    Ok((KeyKind::Ed25519, x, Parsed::Single(Box::new(parsed))))
}

fn parse_key(raw: serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: RawJwk = serde_json::from_value(raw).map_err(|e| format!("malformed JWK ({e})"))?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("use is not sig".into());
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Err("key_ops lacks verify".into());
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(name) => {
            Some(Algorithm::from_name(name).ok_or_else(|| format!("unsupported alg {name:?}"))?)
        }
    };
    let (kind, material, parsed) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => rsa_key(&jwk)?,
        ("EC", Some(crv @ ("P-256" | "P-384"))) => ec_key(&jwk, crv)?,
        ("OKP", Some("Ed25519")) => ed25519_key(&jwk)?,
        ("oct", _) => return Err("symmetric (oct) keys are never taken from a JWKS".into()),
        (kty, crv) => return Err(format!("unsupported kty {kty:?} / crv {crv:?}")),
    };
    let probe = VerifyKey {
        kid: None,
        id: 0,
        kind,
        alg: None,
        parsed: Parsed::None,
    };
    if let Some(a) = alg
        && !probe.fits(a)
    {
        return Err(format!("alg {} does not fit the key type", a.name()));
    }
    let id = identity(jwk.kid.as_deref(), &material);
    Ok(VerifyKey {
        kid: jwk.kid,
        id,
        kind,
        alg,
        parsed,
    })
}

/// Index of an RS*/PS* algorithm in [`Parsed::Rsa`].
pub fn rsa_index(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::RS256 => Some(0),
        Algorithm::RS384 => Some(1),
        Algorithm::RS512 => Some(2),
        Algorithm::PS256 => Some(3),
        Algorithm::PS384 => Some(4),
        Algorithm::PS512 => Some(5),
        _ => None,
    }
}

fn parse_rsa(n: &[u8], e: &[u8]) -> Result<Box<[ParsedPublicKey; 6]>, String> {
    use aws_lc_rs::signature as sig;
    let c = sig::RsaPublicKeyComponents { n, e };
    let p = |params: &'static sig::RsaParameters| {
        c.to_parsed_public_key(params)
            .map_err(|_| "RSA public key rejected by aws-lc".to_owned())
    };
    Ok(Box::new([
        p(&sig::RSA_PKCS1_2048_8192_SHA256)?,
        p(&sig::RSA_PKCS1_2048_8192_SHA384)?,
        p(&sig::RSA_PKCS1_2048_8192_SHA512)?,
        p(&sig::RSA_PSS_2048_8192_SHA256)?,
        p(&sig::RSA_PSS_2048_8192_SHA384)?,
        p(&sig::RSA_PSS_2048_8192_SHA512)?,
    ]))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

fn identity(kid: Option<&str>, material: &[u8]) -> u64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(kid.unwrap_or("").as_bytes());
    ctx.update(&[0]);
    ctx.update(material);
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(first)
}

/// The y-coordinates (little-endian, x-sign bit cleared) of the Edwards25519 points of
/// order 1, 2, 4 and 8: 1 (identity), p − 1 (order 2), 0 (order 4), and the two y values of
/// the four points of order 8. A key that is one of them makes a signature with R = that
/// point and S = 0 verify for every message under cofactored checks, and several under
/// others: such a key can only be an attack.
const ED25519_SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// Refuses an Ed25519 public key that is not canonically encoded (y ≥ p = 2^255 − 19) or
/// is a point of small order (RFC 8032 §5.1.3 leaves both to the verifier; aws-lc takes
/// them).
fn ed25519_point_is_safe(enc: &[u8; 32]) -> Result<(), String> {
    let mut y = *enc;
    y[31] &= 0x7f;
    // y ≥ p: the top 250 bits all ones and the low byte ≥ 0xed.
    if y[31] == 0x7f && y[1..31].iter().all(|b| *b == 0xff) && y[0] >= 0xed {
        return Err("Ed25519 key is not canonically encoded (y >= p)".into());
    }
    if ED25519_SMALL_ORDER_Y.contains(&y) {
        return Err("Ed25519 key is a point of small order".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk(kid: &str, bits: usize, alg: Option<&str>) -> serde_json::Value {
        let mut n = vec![0xC3u8; bits / 8];
        n[0] = 0xC3;
        let mut v = serde_json::json!({"kty": "RSA", "kid": kid, "n": b(&n), "e": b(&[1, 0, 1])});
        if let Some(a) = alg {
            v["alg"] = a.into();
        }
        v
    }

    fn parse(keys: Vec<serde_json::Value>) -> KeySet {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn hostile_members_are_skipped_not_fatal() {
        let set = parse(vec![
            serde_json::json!({"kty": "oct", "kid": "h", "k": b(b"secret")}),
            rsa_jwk("small", 1024, None),
            serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": b(&[0xC3; 256]), "e": b(&[1,0,1])}),
            serde_json::json!({"kty": "EC", "kid": "badcrv", "crv": "P-521", "x": b(&[1; 66]), "y": b(&[1; 66])}),
            serde_json::json!({"kty": "EC", "kid": "shortx", "crv": "P-256", "x": b(&[1; 31]), "y": b(&[1; 32])}),
            serde_json::json!({"kty": "RSA", "kid": "noN"}),
            // Right sizes, but not a point of P-256: aws-lc refuses it when parsing.
            serde_json::json!({"kty": "EC", "kid": "offcurve", "crv": "P-256", "x": b(&[1; 32]), "y": b(&[1; 32])}),
            rsa_jwk("ok", 2048, None),
            rsa_jwk("ok", 4096, None),
        ]);
        assert_eq!(set.len(), 1);
        assert!(set.get("ok").is_some());
        assert!(set.get("h").is_none());
        assert!(set.get("small").is_none());
        assert!(set.get("offcurve").is_none());
    }

    #[test]
    fn small_order_and_non_canonical_ed25519_keys_are_refused() {
        let okp = |kid: &str, x: &[u8]| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b(x)});
        let mut keys: Vec<serde_json::Value> = Vec::new();
        for (i, y) in ED25519_SMALL_ORDER_Y.iter().enumerate() {
            keys.push(okp(&format!("small{i}"), y));
            let mut neg = *y;
            neg[31] |= 0x80;
            keys.push(okp(&format!("small{i}neg"), &neg));
        }
        // y = p and y = p + 1: non-canonical spellings of 0 and 1.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        keys.push(okp("p", &p));
        p[0] = 0xee;
        keys.push(okp("p1", &p));
        keys.push(crate::devkm::DevKey::ed25519("good").public_jwk(None));
        let set = parse(keys);
        assert_eq!(set.len(), 1, "only the real key stays");
        assert!(set.get("good").is_some());
    }

    #[test]
    fn every_key_type_is_parsed_once_for_its_algorithms() {
        let ec = crate::devkm::DevKey::p256("ec").public_jwk(None);
        let ed = crate::devkm::DevKey::ed25519("ed").public_jwk(None);
        let set = parse(vec![rsa_jwk("rsa", 2048, None), ec, ed]);
        let (rsa, ec, ed) = (
            set.get("rsa").unwrap(),
            set.get("ec").unwrap(),
            set.get("ed").unwrap(),
        );
        assert!(rsa.parsed_for(Algorithm::RS256).is_some());
        assert!(rsa.parsed_for(Algorithm::PS512).is_some());
        assert!(rsa.parsed_for(Algorithm::ES256).is_none());
        assert!(ec.parsed_for(Algorithm::ES256).is_some());
        assert!(ec.parsed_for(Algorithm::ES384).is_none());
        assert!(ed.parsed_for(Algorithm::EdDSA).is_some());
        assert!(ed.parsed_for(Algorithm::ES256).is_none());
    }

    #[test]
    fn alg_must_fit_the_key() {
        let set = parse(vec![
            rsa_jwk("any", 2048, None),
            rsa_jwk("rs", 2048, Some("RS256")),
        ]);
        let any = set.get("any").unwrap();
        assert!(any.fits(Algorithm::RS256) && any.fits(Algorithm::PS256));
        assert!(!any.fits(Algorithm::ES256));
        let rs = set.get("rs").unwrap();
        assert!(rs.fits(Algorithm::RS256));
        assert!(!rs.fits(Algorithm::PS256));
        // A JWK whose alg contradicts its kty is dropped.
        assert!(parse(vec![rsa_jwk("x", 2048, Some("ES256"))]).is_empty());
    }

    #[test]
    fn identity_is_stable_across_parses() {
        let a = parse(vec![rsa_jwk("k", 2048, None)]);
        let b2 = parse(vec![rsa_jwk("k", 2048, None)]);
        let id = a.get("k").unwrap().id;
        assert_eq!(id, b2.get("k").unwrap().id);
        assert!(b2.contains(Some("k"), id));
        assert!(!b2.contains(Some("other"), id));
    }

    #[test]
    fn not_a_jwks_is_an_error() {
        assert!(KeySet::parse(b"[]").is_err());
        assert!(KeySet::parse(b"{\"keys\": 3}").is_err());
    }
}
