//! Request path normalization (DESIGN §8), before any route is matched.
//!
//! Exempt-path matching is where this field's bypass bugs live (Envoy CVE-2019-9901 and
//! CVE-2021-29492, Istio CVE-2020-8595 and CVE-2021-39156, the servlet `..;` family): a
//! matcher and the upstream read one path two ways. So the path is put in one canonical
//! form, what cannot be put there is refused, and the upstream receives the canonical form:
//! what was matched is what is served.
//!
//! Order: (1) refuse encoded `/` and `\`, double encoding, malformed `%`, raw `\`, bytes
//! outside visible ASCII, encoded control bytes, `;` unless allowed; (2) decode encoded
//! unreserved characters and upper-case every other encoding's hex; (3) merge runs of `/`;
//! (4) remove `.` and `..` segments, refusing a climb above the root; (5) apply (1) again.
//!
//! A leaf module: config uses it to refuse unnormalized route paths.

use std::borrow::Cow;

/// A path as routes see it and as the upstream receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// Forwarded upstream (with `;` parameters as sent, when they are allowed).
    pub forward: Cow<'a, str>,
    /// Matched against routes: each segment without its `;…` parameters.
    pub matching: Cow<'a, str>,
}

/// Why a path was refused (the response's `error_description`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// Normalizes a request path (no query). `allow_semicolons` is
/// `policy.allow_path_semicolons`.
pub fn normalize(raw: &str, allow_semicolons: bool) -> Result<Normalized<'_>, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath("the path must start with /"));
    }
    if is_canonical(raw) {
        return Ok(Normalized {
            forward: Cow::Borrowed(raw),
            matching: Cow::Borrowed(raw),
        });
    }
    refuse(raw, allow_semicolons)?;
    let decoded = decode_unreserved(raw);
    let merged = merge_slashes(&decoded);
    let resolved = remove_dot_segments(&merged)?;
    refuse(&resolved, allow_semicolons)?;
    let matching = if allow_semicolons && (resolved.contains(';') || resolved.contains("%3B")) {
        Cow::Owned(without_parameters(&resolved)?)
    } else {
        Cow::Owned(resolved.clone())
    };
    Ok(Normalized {
        forward: Cow::Owned(resolved),
        matching,
    })
}

/// The common case, decided in one pass: visible ASCII without `%`, `\`, `;`, `//` or a
/// segment starting with `.` is already canonical.
fn is_canonical(raw: &str) -> bool {
    let mut prev = 0u8;
    for &b in raw.as_bytes() {
        if !(0x21..=0x7e).contains(&b)
            || matches!(b, b'%' | b'\\' | b';')
            || (prev == b'/' && matches!(b, b'/' | b'.'))
        {
            return false;
        }
        prev = b;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The value of the `%XX` at `i`, if well formed.
fn encoded_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = hex(*bytes.get(i + 1)?)?;
    let lo = hex(*bytes.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Step 1 (and 5): what no normalization can make safe.
fn refuse(path: &str, allow_semicolons: bool) -> Result<(), BadPath> {
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(BadPath("backslash in the path")),
            b';' if !allow_semicolons => return Err(BadPath("semicolon in the path")),
            b'%' => match encoded_at(bytes, i) {
                None => return Err(BadPath("malformed percent-encoding in the path")),
                Some(0x2f) => return Err(BadPath("encoded slash (%2F) in the path")),
                Some(0x5c) => return Err(BadPath("encoded backslash (%5C) in the path")),
                Some(0x25) if encoded_at(bytes, i + 2).is_some() => {
                    return Err(BadPath("double percent-encoding in the path"));
                }
                Some(0x3b) if !allow_semicolons => {
                    return Err(BadPath("encoded semicolon (%3B) in the path"));
                }
                Some(v) if v < 0x20 || v == 0x7f => {
                    return Err(BadPath("encoded control character in the path"));
                }
                Some(_) => {}
            },
            0x21..=0x7e => {}
            _ => return Err(BadPath("the path holds a byte outside visible ASCII")),
        }
    }
    Ok(())
}

/// Step 2: `%41` → `A` for unreserved characters (RFC 3986 §2.3), `%2f`-style hex upper-
/// cased for every other encoding. Runs after `refuse`, so every `%` is well formed.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = encoded_at(bytes, i)
        {
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push_str(&path[i + 1..i + 3].to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    out
}

/// Step 3: `//` → `/`.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Step 4 (RFC 3986 §5.2.4, on a path with single slashes): `.` segments go, `..` removes
/// the segment before it; a `..` with nothing before it would climb above the root.
fn remove_dot_segments(path: &str) -> Result<String, BadPath> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(BadPath("the path climbs above the root (..)"));
                }
            }
            s => out.push(s),
        }
        // A trailing `.` or `..` leaves the directory: `/a/b/..` is `/a/`.
        if i == last && matches!(*seg, "." | "..") {
            out.push("");
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// With `allow_path_semicolons`: each segment without its `;…` parameters. A segment that
/// is empty, `.` or `..` once they are gone (`/..;/`, `/;x/`) is refused: an upstream that
/// drops parameters would read it as a dot segment or an empty one.
fn without_parameters(path: &str) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    for seg in path[1..].split('/') {
        out.push('/');
        // An upstream that decodes before dropping parameters reads `%3B` as `;`.
        let encoded = seg.find("%3B").map(|i| &seg[..i]);
        if encoded.is_some_and(|name| matches!(name.split(';').next(), Some("" | "." | ".."))) {
            return Err(BadPath(
                "a path segment is empty or a dot segment without its ; parameters",
            ));
        }
        match seg.split_once(';') {
            None => out.push_str(seg),
            Some((name, _)) => {
                if matches!(name, "" | "." | "..") {
                    return Err(BadPath(
                        "a path segment is empty or a dot segment without its ; parameters",
                    ));
                }
                out.push_str(name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw, false)
            .unwrap_or_else(|e| panic!("{raw}: {e:?}"))
            .forward
            .into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c~d", "/v1/orders/42"] {
            let n = normalize(p, false).unwrap();
            assert!(matches!(n.forward, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.forward, p);
        }
    }

    #[test]
    fn steps_in_order() {
        assert_eq!(ok("//a///b"), "/a/b");
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/x/%2e%2e/y"), "/y");
        assert_eq!(ok("/a/%2E%2e/b"), "/b");
        assert_eq!(ok("/a%3a%7eb"), "/a%3A~b");
        assert_eq!(ok("/.well-known/x"), "/.well-known/x");
        assert_eq!(ok("/a/.%2e"), "/");
    }

    #[test]
    fn refusals() {
        for p in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a%252e",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a;b",
            "/a%3Bb",
            "/a%00",
            "/a%7F",
            "/..",
            "/a/../..",
            "/%2e%2e",
            "/a b",
            "*",
            "/a%25%32%65",
            "/\u{e9}",
            "/a/..%2Fb",
            "/%2e%2e/x",
        ] {
            assert!(normalize(p, false).is_err(), "{p} should be refused");
        }
    }
}

#[cfg(test)]
mod semicolons {
    use super::*;

    #[test]
    fn parameters_are_forwarded_but_not_matched() {
        let n = normalize("/a;jsessionid=1/b;v=2", true).unwrap();
        assert_eq!(n.forward, "/a;jsessionid=1/b;v=2");
        assert_eq!(n.matching, "/a/b");
        for p in [
            "/..;/admin",
            "/a/.;x/b",
            "/a/;x/b",
            "/a/..;/..;/b",
            "/a/..%3B/b",
            "/a/%3Bx/b",
        ] {
            assert!(normalize(p, true).is_err(), "{p}");
        }
    }
}

#[cfg(test)]
mod generated {
    /// 200,000 paths built from the pieces bypasses are made of, through the fuzz target's
    /// invariants (canonical output, idempotence): a deterministic sweep the afl fuzzer
    /// extends.
    #[test]
    fn generated_paths_come_out_canonical_or_refused() {
        const PIECES: [&str; 22] = [
            "/", "/", ".", "..", "%2e", "%2E", "%2e%2e", ";", "%3b", "%3B", "%25", "%252e", "%2f",
            "%5c", "\\", "a", "A", "%41", "%7e", "~", "%00", "%3a",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut p = String::from("/");
            for _ in 0..(next() % 9) {
                p.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            crate::fuzz_targets::path(p.as_bytes());
            accepted += usize::from(super::normalize(&p, false).is_ok());
        }
        // Both outcomes are exercised, not only refusals.
        assert!(accepted > 20_000, "{accepted}");
    }
}
