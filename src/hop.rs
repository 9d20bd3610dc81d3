//! Header names whose meaning a proxy cannot change: the hop-by-hop ones (RFC 9110
//! §7.6.1) and the ones jwtgate sets itself. `config` refuses them as `claims_header`,
//! `proxy` strips and sets them. Leaf module.

use http::header::{self, HeaderName};

/// Always connection-specific; never forwarded in either direction. (`Trailer` is not one:
/// it announces end-to-end trailer fields, and hyper sends only announced trailers.)
pub const HOP_BY_HOP: [HeaderName; 9] = [
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
}
