//! Header hygiene between client and upstream (RFC 9110 §7.6.1).
//!
//! Order matters and is fixed here: first every hop-by-hop header goes (the fixed list and
//! every header named in `Connection`), then jwtgate removes client copies of the headers it
//! owns and sets its own. A client can therefore neither forge jwtgate's headers nor make
//! jwtgate drop them (`Connection: x-jwt-payload` only removes the client's own copy).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::hop::{HOP_BY_HOP, X_FORWARDED_FOR, hop_by_hop_index};
pub use crate::hop::{X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// Headers that would let an upstream framework serve another method or path than the one
/// jwtgate checked (DESIGN §6): a 400 in any spelling.
const OVERRIDES: [&str; 5] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-url",
    "x-rewrite-url",
];

/// `name` equals `target` once every `_` in `name` is read as `-` (CGI, WSGI and PHP fold
/// both onto one `HTTP_*` variable). Header names arrive lower-cased.
pub fn folds_to(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// `Forwarded`, `X-Forwarded-*` or `X-Real-IP`, in any spelling.
fn is_forwarding(name: &str) -> bool {
    folds_to(name, "forwarded")
        || folds_to(name, "x-real-ip")
        || (name.len() > 12 && folds_to(&name[..12], "x-forwarded-"))
}

/// What one pass over a request's header names found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// A method or URL override header, in any spelling.
    pub override_header: bool,
    /// Some `Forwarded` / `X-Forwarded-*` / `X-Real-IP`, in any spelling.
    pub forwarding: bool,
    /// Some name holds `_` (it may fold onto a header jwtgate owns).
    pub underscore: bool,
}

/// One pass over the names: most requests have none of these, and pay a few byte compares
/// per name.
pub fn scan(headers: &HeaderMap) -> Scan {
    let mut scan = Scan::default();
    for name in headers.keys() {
        let n = name.as_str();
        let underscore = n.contains('_');
        scan.underscore |= underscore;
        if n.starts_with('x') || n.starts_with('f') {
            scan.forwarding |= is_forwarding(n);
            scan.override_header |= OVERRIDES.iter().any(|o| folds_to(n, o));
        }
    }
    scan
}

/// Removes every header whose name folds onto `owned` but is not spelled `owned` (the exact
/// spelling is replaced by the caller's `insert`).
pub fn remove_spellings_of(headers: &mut HeaderMap, owned: &HeaderName) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| *k != owned && folds_to(k.as_str(), owned.as_str()))
        .cloned()
        .collect();
    for k in doomed {
        tracing::debug!(header = %k, "client header spelled like a jwtgate header dropped");
        headers.remove(&k);
    }
}

/// Removes every spelling of `Forwarded`, `X-Forwarded-*` and `X-Real-IP` (a client that is
/// not a trusted proxy does not get to say where a request came from).
pub fn remove_forwarding(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_forwarding(k.as_str()))
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(&k);
    }
}

/// The `Sec-WebSocket-Key` of a WebSocket opening handshake (RFC 6455 §4.1: HTTP/1.1
/// `GET`, `Upgrade: websocket`, `Connection: upgrade`, version 13, one key); `None` for
/// anything else, which is then forwarded as a plain request without its upgrade.
pub fn websocket_key(
    method: &http::Method,
    version: http::Version,
    headers: &HeaderMap,
) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 || method != http::Method::GET {
        return None;
    }
    let single = |name: &HeaderName| {
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        values.next().is_none().then_some(first)
    };
    let upgrade = single(&header::UPGRADE)?;
    let version = single(&header::SEC_WEBSOCKET_VERSION)?;
    let key = single(&header::SEC_WEBSOCKET_KEY)?;
    (upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")
        && version.as_bytes() == b"13"
        && !key.is_empty()
        && connection_has(headers, "upgrade"))
    .then(|| key.clone())
}

/// The upstream's `101` completes the handshake for `key` (RFC 6455 §4.2.2): `Upgrade:
/// websocket` and `Sec-WebSocket-Accept` = base64(SHA-1(key ‖ GUID)).
pub fn websocket_accepted(response: &HeaderMap, key: &HeaderValue) -> bool {
    use base64::Engine as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    let expected = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    response
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && response
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|a| a.as_bytes() == expected.as_bytes())
}

/// Whether `Connection` lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` survives and `Connection` is
/// reduced to `upgrade`, so a validated WebSocket handshake can pass. `TE: trailers` is kept
/// (gRPC needs it); other `TE` values are dropped.
///
/// Hot path: one pass over the names notes which fixed-list headers are present (no
/// hashing, no comparison against the whole list); a map without any (most requests) ends
/// there, and only the present ones are removed. `Connection` tokens that name a
/// fixed-list header (most responses: `Connection: keep-alive`) allocate nothing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let present = headers
        .keys()
        .filter_map(hop_by_hop_index)
        .fold(0u16, |seen, i| seen | 1 << i);
    if present == 0 {
        return;
    }
    let has = |name: &HeaderName| hop_by_hop_index(name).is_some_and(|i| present & 1 << i != 0);
    let named: Vec<HeaderName> = if has(&header::CONNECTION) {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let te_trailers = has(&header::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let fixed = (HOP_BY_HOP.iter().enumerate())
        .filter(|(i, _)| present & 1 << i != 0)
        .map(|(_, name)| name);
    for name in named.iter().chain(fixed) {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends the client address to `X-Forwarded-For` (all client copies are joined first).
/// Without client copies, the connection's pre-rendered value is reused as is.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let mut joined = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(s.trim());
        }
    }
    if joined.is_empty() {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    }
    joined.push_str(", ");
    joined.push_str(client.to_str().unwrap_or("unknown"));
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_fixed_list_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn each_fixed_list_header_alone_is_removed() {
        for name in HOP_BY_HOP.iter() {
            let mut h = map(&[(name.as_str(), "x"), ("x-app", "kept")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
            assert_eq!(h["x-app"], "kept");
        }
    }

    #[test]
    fn keep_alive_response_loses_only_connection_and_clean_map_is_untouched() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("content-length", "2"),
            ("server", "up"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(!h.contains_key(header::CONNECTION));
        let mut clean = map(&[("x-app", "1"), ("x-app", "2"), ("accept", "*/*")]);
        let before = clean.clone();
        strip_hop_by_hop(&mut clean, false);
        assert_eq!(clean, before);
    }

    #[test]
    fn upgrade_and_te_trailers_survive_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("te", "trailers, deflate"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn forwarded_for_is_appended_to_all_client_copies() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
    }

    #[test]
    fn forwarded_for_without_client_copies_is_the_peer_alone() {
        let mut h = map(&[("x-forwarded-for", "  ")]);
        append_forwarded_for(&mut h, &HeaderValue::from_static("10.0.0.9"));
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
    }

    #[test]
    fn spellings_fold_like_cgi() {
        let h = map(&[
            ("x_jwt_payload", "forged"),
            ("x-jwt_payload", "forged"),
            ("x-jwt-payload", "forged"),
            ("x_forwarded_proto", "https"),
            ("x-real_ip", "1.2.3.4"),
            ("x_http_method_override", "DELETE"),
            ("x-app", "1"),
        ]);
        let scan = scan(&h);
        assert!(scan.override_header && scan.forwarding && scan.underscore);
        let mut h2 = h.clone();
        h2.remove("x_http_method_override");
        remove_spellings_of(&mut h2, &HeaderName::from_static("x-jwt-payload"));
        remove_forwarding(&mut h2);
        let mut left: Vec<_> = h2.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-app", "x-jwt-payload"]);
        assert_eq!(
            super::scan(&map(&[
                ("accept", "*/*"),
                ("x-app", "1"),
                ("forwardedx", "1")
            ])),
            Scan::default()
        );
    }

    #[test]
    fn websocket_handshake_and_accept() {
        let req = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let get = http::Method::GET;
        let key = websocket_key(&get, http::Version::HTTP_11, &req).unwrap();
        assert!(websocket_key(&http::Method::POST, http::Version::HTTP_11, &req).is_none());
        assert!(websocket_key(&get, http::Version::HTTP_10, &req).is_none());
        let mut h2c = req.clone();
        h2c.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(websocket_key(&get, http::Version::HTTP_11, &h2c).is_none());
        // RFC 6455 §1.3's example.
        let ok = map(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(websocket_accepted(&ok, &key));
        let wrong = map(&[("upgrade", "websocket"), ("sec-websocket-accept", "x")]);
        assert!(!websocket_accepted(&wrong, &key));
    }
}
