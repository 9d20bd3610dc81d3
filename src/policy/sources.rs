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
    let token = match (scheme, prefix) {
        (Some(scheme), _) => {
            let (given, rest) = value.split_once(' ').unwrap_or((value, ""));
            if !given.eq_ignore_ascii_case(scheme) {
                // Another scheme (Basic, DPoP, …) is not this source's token.
                return Ok(None);
            }
            let token = rest.trim_matches(' ');
            if token.is_empty() {
                return Err(Reject::new(Reason::Malformed, "empty bearer token"));
            }
            token
        }
        (None, Some(prefix)) => match value.strip_prefix(prefix) {
            Some(rest) => rest.trim_matches(' '),
            None => return Ok(None),
        },
        (None, None) => value.trim_matches(' '),
    };
    Ok((!token.is_empty()).then_some(Cow::Borrowed(token)))
}

/// The `name=value` pairs of every `Cookie` header (HTTP/2 sends one crumb per header;
/// taking the pairs of each is joining them).
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}

fn from_cookies<'r>(headers: &'r HeaderMap, name: &str) -> Result<Option<Cow<'r, str>>, Reject> {
    let mut found = None;
    for (n, v) in cookie_pairs(headers) {
        if n != name {
            continue;
        }
        if found.is_some() {
            return Err(TWO_PLACES);
        }
        // RFC 6265 §4.1.1 allows the value in double quotes.
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        found = Some(v);
    }
    Ok(found.filter(|v| !v.is_empty()).map(Cow::Borrowed))
}

/// A query parameter's name as an application decodes it (`access%5Ftoken` is
/// `access_token` too).
fn param_name(pair: &str) -> Cow<'_, str> {
    let raw = pair.split('=').next().unwrap_or_default();
    match form_urlencoded::parse(raw.as_bytes()).next() {
        Some((name, _)) => name,
        None => Cow::Borrowed(""),
    }
}

fn from_query<'r>(query: Option<&'r str>, name: &str) -> Result<Option<Cow<'r, str>>, Reject> {
    let mut found = None;
    for pair in query.unwrap_or_default().split('&') {
        if param_name(pair) != name {
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
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !names.iter().any(|n| param_name(pair) == *n))
        .collect();
    let kept = kept.join("&");
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
        TokenSource::Header {
            header,
            scheme,
            prefix,
        } => {
            let carries = |v: &HeaderValue| {
                let Ok(v) = v.to_str() else { return true };
                match (scheme, prefix) {
                    (Some(s), _) => v
                        .split(' ')
                        .next()
                        .is_some_and(|g| g.eq_ignore_ascii_case(s)),
                    (None, Some(p)) => v.starts_with(p.as_str()),
                    (None, None) => true,
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
            let kept: Vec<String> = cookie_pairs(headers)
                .filter(|(n, _)| n != cookie)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            headers.remove(header::COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
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
        ] {
            assert_eq!(
                token(&headers, query),
                Err(Reason::DuplicateCredentials),
                "{headers:?} {query:?}"
            );
        }
    }

    #[test]
    fn stripping_keeps_everything_else() {
        let s = sources();
        assert_eq!(
            strip_query(&s, "a=1&access_token=x&access%5Ftoken=y&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_query(&s, "access_token=x"), None);
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
