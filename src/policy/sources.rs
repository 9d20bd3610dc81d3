//! Token sources (DESIGN §8): where a token is read from, and how every configured source's
//! credential is removed from what is forwarded.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{self, HeaderValue};

use crate::config::TokenSource;
use crate::reject::{Reason, Reject};

/// A token and the source it came from (an index into the configured sources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'r> {
    pub token: Cow<'r, str>,
    pub source: usize,
}

const TWO_PLACES: Reject = Reject::new(
    Reason::DuplicateCredentials,
    "a token was sent in more than one place",
);

/// The one token of a request, if any source yields a non-empty value. A token in two
/// sources, or twice in one, is a 400 `duplicate_credentials`; two values of a header
/// source are too, whatever they hold (an upstream may read either).
pub fn extract<'r>(
    sources: &[TokenSource],
    headers: &'r HeaderMap,
    query: Option<&'r str>,
) -> Result<Option<Found<'r>>, Reject> {
    let mut found: Option<Found<'r>> = None;
    for (i, source) in sources.iter().enumerate() {
        let value = match source {
            TokenSource::Header {
                header,
                scheme,
                prefix,
            } => from_header(headers, header, scheme.as_deref(), prefix.as_deref())?,
            TokenSource::Cookie { cookie } => from_cookies(headers, cookie)?,
            TokenSource::Query { query: name } => from_query(query, name)?,
        };
        if let Some(token) = value {
            if found.is_some() {
                return Err(TWO_PLACES);
            }
            found = Some(Found { token, source: i });
        }
    }
    Ok(found)
}

fn from_header<'r>(
    headers: &'r HeaderMap,
    name: &header::HeaderName,
    scheme: Option<&str>,
    prefix: Option<&str>,
) -> Result<Option<Cow<'r, str>>, Reject> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Reject::new(
            Reason::DuplicateCredentials,
            "a token header was sent more than once",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Reject::new(Reason::Malformed, "the token header is not visible ASCII"))?;
    // Spaces and tabs around and after the scheme are read the way upstream frameworks
    // read them: `Bearer\t<token>` is this source's token, not "another scheme".
    let value = value.trim_matches(WS);
    let token = match (scheme, prefix) {
        (Some(scheme), _) => {
            if !has_scheme(value, scheme) {
                // Another scheme (Basic, DPoP, …) is not this source's token.
                return Ok(None);
            }
            let token = value[scheme.len()..].trim_matches(WS);
            if token.is_empty() {
                return Err(Reject::new(Reason::Malformed, "empty bearer token"));
            }
            token
        }
        (None, Some(prefix)) => match value.strip_prefix(prefix) {
            Some(rest) => rest.trim_matches(WS),
            None => return Ok(None),
        },
        (None, None) => value,
    };
    Ok((!token.is_empty()).then_some(Cow::Borrowed(token)))
}

/// Spaces and tabs (RFC 9110 OWS).
const WS: [char; 2] = [' ', '\t'];

/// `value` starts with `scheme` (any case), then whitespace or nothing.
fn has_scheme(value: &str, scheme: &str) -> bool {
    value.len() >= scheme.len()
        && value.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        && value
            .get(scheme.len()..)
            .is_some_and(|rest| rest.chars().next().is_none_or(|c| WS.contains(&c)))
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// The `name=value` pairs of every `Cookie` header, as bytes: a header holding a byte
/// outside ASCII is still read (skipping it would hide a second token). HTTP/2 sends one
/// crumb per header; taking the pairs of each is joining them.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            Some((trim_bytes(&pair[..eq]), trim_bytes(&pair[eq + 1..])))
        })
}

fn from_cookies<'r>(headers: &'r HeaderMap, name: &str) -> Result<Option<Cow<'r, str>>, Reject> {
    let mut found = None;
    for (n, v) in cookie_pairs(headers) {
        if n != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Err(TWO_PLACES);
        }
        // RFC 6265 §4.1.1 allows the value in double quotes.
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        found = Some(v);
    }
    match found.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .map(|v| Some(Cow::Borrowed(v)))
            .map_err(|_| Reject::new(Reason::Malformed, "the token cookie is not visible ASCII")),
    }
}

/// A query parameter is `name` as some application decodes it: percent-decoded
/// (`access%5Ftoken`), and with PHP's folding of `.`, ` ` and `[` to `_` (`access.token`).
fn param_is(pair: &str, name: &str) -> bool {
    let raw = pair.split('=').next().unwrap_or_default();
    let decoded = match form_urlencoded::parse(raw.as_bytes()).next() {
        Some((n, _)) => n,
        None => return false,
    };
    decoded == name
        || decoded
            .chars()
            .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
            .eq(name.chars())
}

fn from_query<'r>(query: Option<&'r str>, name: &str) -> Result<Option<Cow<'r, str>>, Reject> {
    let mut found = None;
    // `;` separates parameters too for some frameworks.
    for pair in query.unwrap_or_default().split(['&', ';']) {
        if !param_is(pair, name) {
            continue;
        }
        if found.is_some() {
            return Err(TWO_PLACES);
        }
        let value = pair.split_once('=').map_or("", |(_, v)| v);
        found = Some(
            match form_urlencoded::parse(format!("x={value}").as_bytes()).next() {
                Some((_, v)) => Cow::Owned(v.into_owned()),
                None => Cow::Borrowed(""),
            },
        );
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// The query without every parameter a `query` source names (always removed: a token in
/// a URL ends up in access logs). `None` when nothing is left.
pub fn strip_query(sources: &[TokenSource], query: &str) -> Option<String> {
    let names: Vec<&str> = sources
        .iter()
        .filter_map(|s| match s {
            TokenSource::Query { query } => Some(query.as_str()),
            _ => None,
        })
        .collect();
    // Rebuilt with the separators as sent, less every parameter a source names.
    let mut kept = String::with_capacity(query.len());
    let mut sep = "";
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        if !names.iter().any(|n| param_is(pair, n)) && !pair.is_empty() {
            if !kept.is_empty() {
                kept.push_str(sep);
            }
            kept.push_str(pair);
        }
        if end == rest.len() {
            break;
        }
        sep = &rest[end..end + 1];
        rest = &rest[end + 1..];
    }
    (!kept.is_empty()).then_some(kept)
}

/// Whether any `query` source is configured (the URI is then rebuilt on every request).
pub fn has_query_source(sources: &[TokenSource]) -> bool {
    sources
        .iter()
        .any(|s| matches!(s, TokenSource::Query { .. }))
}

/// Removes what `source` would yield from the forwarded headers: the header value with
/// the source's scheme or prefix (or the whole header), or the cookie pair with other
/// cookies kept. A query source is handled by [`strip_query`].
pub fn strip(headers: &mut HeaderMap, source: &TokenSource) {
    match source {
        TokenSource::Header { header, scheme, .. } => {
            // A value this source could read, or one it cannot read at all, goes; a header
            // with a prefix or no scheme is removed whole.
            let carries = |v: &HeaderValue| {
                let Ok(v) = v.to_str() else { return true };
                match scheme {
                    Some(s) => has_scheme(v.trim_matches(WS), s),
                    None => true,
                }
            };
            let kept: Vec<HeaderValue> = headers
                .get_all(header)
                .iter()
                .filter(|v| !carries(v))
                .cloned()
                .collect();
            headers.remove(header);
            for v in kept {
                headers.append(header.clone(), v);
            }
        }
        TokenSource::Cookie { cookie } => {
            if !headers.contains_key(header::COOKIE) {
                return;
            }
            let mut kept: Vec<u8> = Vec::new();
            for (n, v) in cookie_pairs(headers) {
                if n == cookie.as_bytes() {
                    continue;
                }
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(n);
                kept.push(b'=');
                kept.extend_from_slice(v);
            }
            headers.remove(header::COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_bytes(&kept)
            {
                headers.insert(header::COOKIE, v);
            }
        }
        TokenSource::Query { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn sources() -> Vec<TokenSource> {
        vec![
            TokenSource::bearer(),
            TokenSource::Cookie {
                cookie: "at".into(),
            },
            TokenSource::Query {
                query: "access_token".into(),
            },
            TokenSource::Header {
                header: header::HeaderName::from_static("x-api-token"),
                scheme: None,
                prefix: Some("Token ".into()),
            },
        ]
    }

    fn token(headers: &HeaderMap, query: Option<&str>) -> Result<Option<(String, usize)>, Reason> {
        extract(&sources(), headers, query)
            .map(|f| f.map(|f| (f.token.into_owned(), f.source)))
            .map_err(|r| r.reason)
    }

    #[test]
    fn each_source_and_duplicates() {
        let none = HeaderMap::new();
        assert_eq!(token(&none, None), Ok(None));
        assert_eq!(
            token(&h(&[("authorization", "Bearer a.b.c")]), None),
            Ok(Some(("a.b.c".into(), 0)))
        );
        assert_eq!(
            token(&h(&[("authorization", "Basic eHk=")]), None),
            Ok(None)
        );
        assert_eq!(
            token(
                &h(&[("cookie", "x=1"), ("cookie", "at=\"a.b.c\"; y=2")]),
                None
            ),
            Ok(Some(("a.b.c".into(), 1)))
        );
        assert_eq!(
            token(&none, Some("q=1&access%5Ftoken=a.b%2Ec")),
            Ok(Some(("a.b.c".into(), 2)))
        );
        assert_eq!(
            token(&h(&[("x-api-token", "Token a.b.c")]), None),
            Ok(Some(("a.b.c".into(), 3)))
        );
        assert_eq!(token(&h(&[("x-api-token", "token a.b.c")]), None), Ok(None));
        assert_eq!(
            token(&h(&[("cookie", "at=")]), Some("access_token=")),
            Ok(None)
        );
        // Whitespace as frameworks read it; `;` as a query separator; PHP's name folding.
        assert_eq!(
            token(&h(&[("authorization", " Bearer\ta.b.c ")]), None),
            Ok(Some(("a.b.c".into(), 0)))
        );
        assert_eq!(
            token(&h(&[("authorization", "Bearerx a.b.c")]), None),
            Ok(None)
        );
        assert_eq!(
            token(&none, Some("x=1;access.token=a.b.c")),
            Ok(Some(("a.b.c".into(), 2)))
        );
        for (headers, query) in [
            (
                h(&[("authorization", "Bearer a"), ("cookie", "at=b")]),
                None,
            ),
            (h(&[("cookie", "at=a; at=b")]), None),
            (h(&[("cookie", "at=a"), ("cookie", "at=a")]), None),
            (HeaderMap::new(), Some("access_token=a&access_token=b")),
            (h(&[("authorization", "Bearer a")]), Some("access_token=a")),
            (
                h(&[("authorization", "Basic x"), ("authorization", "Bearer a")]),
                None,
            ),
            (h(&[("authorization", "Bearer\ta")]), Some("access_token=b")),
            (HeaderMap::new(), Some("access_token=a;access_token=b")),
        ] {
            assert_eq!(
                token(&headers, query),
                Err(Reason::DuplicateCredentials),
                "{headers:?} {query:?}"
            );
        }
    }

    /// A Cookie header with a byte outside ASCII is still read: skipping it would hide a
    /// second token (the request must be a 400, not verified on the other one).
    #[test]
    fn a_non_ascii_cookie_header_cannot_hide_a_token() {
        let mut m = HeaderMap::new();
        m.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"at=forged; z=\x80").unwrap(),
        );
        m.append(header::COOKIE, HeaderValue::from_static("at=a.b.c"));
        assert_eq!(token(&m, None), Err(Reason::DuplicateCredentials));
        let mut alone = HeaderMap::new();
        alone.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"z=\x80; at=a.b.c").unwrap(),
        );
        assert_eq!(token(&alone, None), Ok(Some(("a.b.c".into(), 1))));
    }

    #[test]
    fn stripping_keeps_everything_else() {
        let s = sources();
        assert_eq!(
            strip_query(&s, "a=1&access_token=x&access%5Ftoken=y&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_query(&s, "access_token=x"), None);
        assert_eq!(
            strip_query(&s, "a=1;access.token=x&b=2").as_deref(),
            Some("a=1&b=2")
        );
        let mut m = h(&[
            ("authorization", "Basic eHk="),
            ("cookie", "x=1; at=t"),
            ("cookie", "y=2"),
        ]);
        strip(&mut m, &s[0]);
        strip(&mut m, &s[1]);
        assert_eq!(m.get("authorization").unwrap(), "Basic eHk=");
        assert_eq!(m.get("cookie").unwrap(), "x=1; y=2");
        let mut m = h(&[("authorization", "bearer t"), ("cookie", "at=t")]);
        strip(&mut m, &s[0]);
        strip(&mut m, &s[1]);
        assert!(m.is_empty(), "{m:?}");
    }
}
