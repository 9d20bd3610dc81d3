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

use super::reject::{Reason, Reject};

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
}
