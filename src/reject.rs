//! A rejection is a value: one reason, one HTTP status, one metric label, one short
//! description. Descriptions name the failed check, never a claim value or key material.

use http::StatusCode;

/// Why a request was refused. The label set is closed (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Missing,
    Malformed,
    TooLarge,
    Algorithm,
    Signature,
    UnknownKid,
    Typ,
    RefreshToken,
    Issuer,
    Audience,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Lifetime,
    MissingJti,
    Revoked,
    KeysUnavailable,
    RevocationStale,
    DuplicateCredentials,
    BadRequest,
    BoundToken,
    /// The route needs a scope the token lacks (403).
    InsufficientScope,
    /// The route's `issuers` or `claims` are not satisfied (403).
    ClaimMismatch,
    /// A path that cannot be normalized safely (400).
    BadPath,
    /// A cookie token on an unsafe method from an origin not allowed (403).
    Csrf,
}

impl Reason {
    pub const ALL: [Reason; 25] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::Algorithm,
        Reason::Signature,
        Reason::UnknownKid,
        Reason::Typ,
        Reason::RefreshToken,
        Reason::Issuer,
        Reason::Audience,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::Lifetime,
        Reason::MissingJti,
        Reason::Revoked,
        Reason::KeysUnavailable,
        Reason::RevocationStale,
        Reason::DuplicateCredentials,
        Reason::BadRequest,
        Reason::BoundToken,
        Reason::InsufficientScope,
        Reason::ClaimMismatch,
        Reason::BadPath,
        Reason::Csrf,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::Algorithm => "algorithm",
            Reason::Signature => "signature",
            Reason::UnknownKid => "unknown_kid",
            Reason::Typ => "typ",
            Reason::RefreshToken => "refresh_token",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::Lifetime => "lifetime",
            Reason::MissingJti => "missing_jti",
            Reason::Revoked => "revoked",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::RevocationStale => "revocation_stale",
            Reason::DuplicateCredentials => "duplicate_credentials",
            Reason::BadRequest => "bad_request",
            Reason::BoundToken => "bound_token",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::BadPath => "bad_path",
            Reason::Csrf => "csrf",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::KeysUnavailable | Reason::RevocationStale => StatusCode::SERVICE_UNAVAILABLE,
            Reason::DuplicateCredentials | Reason::BadRequest | Reason::BadPath => {
                StatusCode::BAD_REQUEST
            }
            Reason::InsufficientScope | Reason::ClaimMismatch | Reason::Csrf => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 error code, if the response carries one (a missing token carries none).
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Reason::Missing => None,
            Reason::DuplicateCredentials | Reason::BadRequest | Reason::BadPath | Reason::Csrf => {
                Some("invalid_request")
            }
            Reason::InsufficientScope | Reason::ClaimMismatch => Some("insufficient_scope"),
            Reason::KeysUnavailable | Reason::RevocationStale => Some("temporarily_unavailable"),
            _ => Some("invalid_token"),
        }
    }
}

/// A refused request: the reason and a short, fixed description of the failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} ({})", .description, .reason.label())]
pub struct Reject {
    pub reason: Reason,
    pub description: &'static str,
}

impl Reject {
    pub const fn new(reason: Reason, description: &'static str) -> Self {
        Reject {
            reason,
            description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.label()));
        }
    }

    #[test]
    fn infrastructure_failures_are_503_not_401() {
        assert_eq!(
            Reason::KeysUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Reason::Signature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            Reason::DuplicateCredentials.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(Reason::Missing.error_code(), None);
    }
}
