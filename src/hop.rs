//! Header names whose meaning a proxy cannot change: the hop-by-hop ones (RFC 9110
//! §7.6.1) and the ones jwtgate sets itself. `config` refuses them as `claims_header`,
//! `proxy` strips and sets them. Leaf module.

use http::header::{self, HeaderName};

/// Always connection-specific; never forwarded in either direction. (`Trailer` is not one:
/// it announces end-to-end trailer fields, and hyper sends only announced trailers.)
pub static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    // The h2c upgrade's settings (RFC 7540 §3.2.1): connection-specific by definition.
    HeaderName::from_static("http2-settings"),
];

/// The position of `name` in [`HOP_BY_HOP`]: one comparison by length and bytes, where
/// `HOP_BY_HOP.contains` compares against all nine (every header of every request and
/// response is asked).
pub fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "proxy-connection" => Some(1),
        "keep-alive" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        "proxy-authorization" => Some(6),
        "proxy-authenticate" => Some(7),
        "http2-settings" => Some(8),
        _ => None,
    }
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers a config may not choose as `claims_header`.
pub fn is_reserved(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || [
            header::HOST,
            header::TRAILER,
            header::AUTHORIZATION,
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::FORWARDED,
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
        ]
        .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        assert!(is_reserved(&header::AUTHORIZATION));
        assert!(is_reserved(&HeaderName::from_static("connection")));
        assert!(!is_reserved(&HeaderName::from_static("x-jwt-payload")));
    }

    #[test]
    fn hop_by_hop_index_is_the_position_in_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in ["trailer", "host", "connections", "t", "keep-alive2", "x-te"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None);
        }
    }
}
