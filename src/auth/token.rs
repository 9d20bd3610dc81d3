//! Token syntax: the cheap checks done before any crypto, and typed header and claims.
//!
//! A token reaches base64 decoding only if it is at most `max_token_bytes` long, made of
//! base64url characters and exactly two dots (RFC 8725bis "check JWT format type"). Header
//! and claims are parsed once, into structs whose registered members are typed: a duplicate
//! registered member, an `exp` that is not a number, or an `aud` that is neither a string nor
//! an array of strings makes the token malformed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::reject::{Reason, Reject};

/// The three segments of a compact JWS, still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Segments<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// `header.payload`, the signed message.
    pub signing_input: &'a str,
}

/// Structure check: size, alphabet, segment count. No decoding happens here.
pub fn split(token: &str, max_bytes: usize) -> Result<Segments<'_>, Reject> {
    if token.len() > max_bytes {
        return Err(Reject::new(
            Reason::TooLarge,
            "token exceeds the size limit",
        ));
    }
    let bytes = token.as_bytes();
    let mut dots = [0usize; 2];
    let mut n = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'.' => {
                if n == 2 {
                    return Err(Reject::new(
                        Reason::Malformed,
                        "token is not a compact JWS (three segments)",
                    ));
                }
                dots[n] = i;
                n += 1;
            }
            _ => {
                return Err(Reject::new(
                    Reason::Malformed,
                    "token contains characters outside base64url",
                ));
            }
        }
    }
    if n != 2 {
        return Err(Reject::new(
            Reason::Malformed,
            "token is not a compact JWS (three segments)",
        ));
    }
    let (h, p) = (&token[..dots[0]], &token[dots[0] + 1..dots[1]]);
    if h.is_empty() || p.is_empty() {
        return Err(Reject::new(Reason::Malformed, "token has an empty segment"));
    }
    Ok(Segments {
        header: h,
        payload: p,
        signature: &token[dots[1] + 1..],
        signing_input: &token[..dots[1]],
    })
}

/// The JOSE header members jwtgate reads. `jku`, `x5u`, `x5c` and `jwk` are never read, so
/// they can never be used or fetched.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub crit: Option<Vec<String>>,
}

/// A NumericDate (RFC 7519 §2): a JSON number, fractions floored. Strings are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumericDate(pub i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of seconds since the epoch")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NumericDate, E> {
                i64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("date out of range"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() && v.abs() < 1e15 {
                    Ok(NumericDate(v.floor() as i64))
                } else {
                    Err(E::custom("date out of range"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains_any(&self, wanted: &[String]) -> bool {
        match self {
            Audience::One(a) => wanted.iter().any(|w| w == a),
            Audience::Many(list) => list.iter().any(|a| wanted.iter().any(|w| w == a)),
        }
    }
}

/// The claims jwtgate checks or needs for revocation; others pass through untouched in
/// the forwarded payload.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Option<Audience>,
    pub exp: Option<NumericDate>,
    pub nbf: Option<NumericDate>,
    pub iat: Option<NumericDate>,
    pub jti: Option<String>,
    pub client_id: Option<String>,
    pub azp: Option<String>,
    pub token_type: Option<String>,
    pub entity_id: Option<String>,
    /// RFC 7800 confirmation: a token bound to a key (DPoP, mTLS) carries members here.
    pub cnf: Option<Confirmation>,
}

/// The number of members of a `cnf` object (RFC 7800 §3.1: it must be an object; any
/// other type makes the claims malformed). Member values are skipped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation(pub usize);

impl<'de> Deserialize<'de> for Confirmation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Confirmation;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object (RFC 7800 cnf)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Confirmation, A::Error> {
                let mut n = 0;
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {
                    n += 1;
                }
                Ok(Confirmation(n))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode(segment: &str, what: &'static str) -> Result<Vec<u8>, Reject> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reject::new(Reason::Malformed, what))
}

pub fn header(segment: &str) -> Result<Header, Reject> {
    let bytes = decode(segment, "token header is not base64url")?;
    serde_json::from_slice(&bytes)
        .map_err(|_| Reject::new(Reason::Malformed, "token header is not a valid JOSE header"))
}

pub fn claims(segment: &str) -> Result<Claims, Reject> {
    let bytes = decode(segment, "token payload is not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| {
        Reject::new(
            Reason::Malformed,
            "token payload is not a JSON object with well-typed registered claims",
        )
    })
}

/// Group orders of P-256 and P-384 (SEC 2), big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
const P384_N: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// The other encoding of an ECDSA signature: `(r, s)` and `(r, n − s)` both verify (ECDSA
/// is malleable), so anyone holding a token can make a second token with other signature
/// bytes. Given the base64url `r || s` of a verified ES256/ES384 signature, returns the
/// base64url `r || (n − s)`; `None` for any other algorithm or length.
pub fn ecdsa_twin(signature: &str, order: EcOrder) -> Option<String> {
    let n: &[u8] = match order {
        EcOrder::P256 => &P256_N,
        EcOrder::P384 => &P384_N,
    };
    let mut sig = [0u8; 96];
    let len = URL_SAFE_NO_PAD.decode_slice(signature, &mut sig).ok()?;
    if len != 2 * n.len() {
        return None;
    }
    let s = &mut sig[n.len()..len];
    // s ← n − s, big-endian, with borrow; a verified s is in [1, n − 1], so no underflow.
    let mut borrow = 0i16;
    for i in (0..n.len()).rev() {
        let d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        s[i] = d.rem_euclid(256) as u8;
    }
    (borrow == 0).then(|| URL_SAFE_NO_PAD.encode(&sig[..len]))
}

/// The curve of an ECDSA signature, for [`ecdsa_twin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcOrder {
    P256,
    P384,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn structure_is_checked_before_decoding() {
        assert_eq!(split("a.b.c", 8192).unwrap().payload, "b");
        assert_eq!(split("a.b.", 8192).unwrap().signature, "");
        for bad in [
            "a.b", "a.b.c.d", "a.b.c=", "a+b.c.d", "a.b.c d", ".b.c", "a..c", "ä.b.c",
        ] {
            let r = split(bad, 8192).unwrap_err();
            assert_eq!(r.reason, Reason::Malformed, "{bad}");
        }
        assert_eq!(
            split(&"a".repeat(9000), 8192).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn exp_as_string_or_duplicate_claims_are_malformed() {
        assert!(claims(&b(r#"{"exp":"9999999999"}"#)).is_err());
        assert!(claims(&b(r#"{"exp":1,"exp":2}"#)).is_err());
        assert!(claims(&b(r#"{"aud":5}"#)).is_err());
        assert!(claims(&b(r#"[1]"#)).is_err());
        let c = claims(&b(r#"{"exp":1.9,"aud":["a","b"],"other":{"x":[1]}}"#)).unwrap();
        assert_eq!(c.exp, Some(NumericDate(1)));
        assert!(c.aud.unwrap().contains_any(&["b".to_owned()]));
    }

    #[test]
    fn header_requires_alg_and_refuses_duplicates() {
        assert!(header(&b(r#"{"typ":"JWT"}"#)).is_err());
        assert!(header(&b(r#"{"alg":"RS256","alg":"none"}"#)).is_err());
        let h = header(&b(r#"{"alg":"RS256","kid":"k","jku":"http://evil"}"#)).unwrap();
        assert_eq!(h.kid.as_deref(), Some("k"));
    }

    #[test]
    fn ecdsa_twin_is_n_minus_s_and_an_involution() {
        // s = 1 → n − 1; r untouched.
        let mut sig = [0u8; 64];
        sig[0] = 7;
        sig[63] = 1;
        let twin = ecdsa_twin(&URL_SAFE_NO_PAD.encode(sig), EcOrder::P256).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&twin).unwrap();
        assert_eq!(bytes[0], 7);
        let mut n_minus_1 = P256_N;
        n_minus_1[31] -= 1;
        assert_eq!(&bytes[32..], &n_minus_1);
        assert_eq!(
            ecdsa_twin(&twin, EcOrder::P256).unwrap(),
            URL_SAFE_NO_PAD.encode(sig)
        );
        // Wrong length for the curve: no twin.
        assert!(ecdsa_twin(&URL_SAFE_NO_PAD.encode(sig), EcOrder::P384).is_none());
    }
}
