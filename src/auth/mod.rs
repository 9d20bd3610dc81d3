//! Token → `Verified` claims, or a `Reject` with one reason.
//!
//! Order of checks (cheapest first; nothing after a failure runs):
//! 1. size;
//! 2. verified-token cache (SHA-256 of the whole token): a hit is honoured only inside the
//!    token's `exp`/`nbf` window and while its verifying key is still in the issuer's set;
//!    a hit skips everything below;
//! 3. alphabet and segment count — no decoding;
//! 4. header: `alg` on the allow-list of jwtgate, no `crit` (no extension is understood);
//! 5. claims parsed once, `iss` picks the issuer (exact match); the issuer's `algorithms`
//!    and `typ` lists apply;
//! 6. key by `kid` (an unknown kid waits for one shared, rate-limited refetch), and the
//!    key must fit `alg` (kty, crv, the JWK's own `alg`);
//! 7. signature (jsonwebtoken, aws-lc-rs backend);
//! 8. refresh-token markers, `exp` (required), `nbf`, `iat`, `aud` with `leeway_s`.
//!
//! This module knows nothing of HTTP: it takes a token string and a clock.

pub mod reject;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Algorithm, Config, IssuerConfig, Profile, normalize_typ};
use crate::jwks::{IssuerKeys, KeyError, KeySet, VerifyKey};
use crate::metrics::Metrics;
use crate::revocation::{Facts, Revocation, TokenFingerprints};
pub use reject::{Reason, Reject};

/// Longest accepted `kid`: key ids are short names or thumbprints (a base64url SHA-256 is
/// 43 bytes); a longer one is `malformed` before any key lookup.
pub const MAX_KID_BYTES: usize = 256;

/// At most this many keys are tried for a token without `kid`.
const MAX_KIDLESS_CANDIDATES: usize = 4;

/// Seconds since the Unix epoch. Injectable so tests of time windows need no sleeps.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::jwks::unix_now()
    }
}

/// What a verified token leaves behind for the rest of the pipeline.
///
/// Kept small on purpose: one lives in the verified-token cache per distinct token.
pub struct Verified {
    /// Index of the issuer in the config.
    pub issuer: usize,
    /// The key that verified the token (a cache hit counts only while it is published).
    key: Arc<VerifyKey>,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// Revocation fingerprints of the token, computed once at verification (when
    /// revocation is on), so cache hits only probe the tables.
    pub revocation_fps: Option<TokenFingerprints>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("issuer", &self.issuer)
            .field("kid", &self.key.kid)
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

/// A token's SHA-256: the verified-cache key; its first 4 bytes are the log fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

/// The cache hashes a digest that is already uniform: its first 8 bytes are the hash
/// (with `IdentityHasher`). Hash flooding needs inserts, and only tokens whose signature
/// verified are ever inserted, so an attacker cannot choose colliding keys.
impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

type CacheHasher = std::hash::BuildHasherDefault<crate::revocation::IdentityHasher>;

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenHash(out)
    }

    /// First 8 hex characters of the SHA-256: safe to log, useless to replay.
    pub fn fingerprint(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Longest token a connection remembers (JWTs are typically well under 2 KB).
const LAST_TOKEN_MAX_BYTES: usize = 4096;

/// The last token one client connection presented, with its verdict.
///
/// A client on a keep-alive connection usually sends the same token request after request:
/// comparing the bytes with the remembered ones skips the SHA-256 and the cache lookup. The
/// verdict is re-checked exactly like a cache hit (time window, key still published), and
/// revocation is checked after it per request like after any hit. Only the connection's own
/// requests are compared with it, so it tells a client nothing about other clients' tokens.
/// Used only while the verified-token cache is on.
#[derive(Default)]
pub struct LastToken(std::sync::Mutex<Option<(String, Arc<Verified>)>>);

impl std::fmt::Debug for LastToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str("LastToken(..)")
    }
}

struct Issuer {
    cfg: IssuerConfig,
    keys: Arc<IssuerKeys>,
}

pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: Option<moka::sync::Cache<TokenHash, Arc<Verified>, CacheHasher>>,
    max_token_bytes: usize,
    /// While revocation is on: `require_jti` (the lifetime bound is the list's).
    require_jti: Option<bool>,
    /// While revocation is on: the list whose key fingerprints verified tokens.
    revocation: Option<Arc<Revocation>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(
        config: &Config,
        keys: &[Arc<IssuerKeys>],
        revocation: Option<Arc<Revocation>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Authenticator {
        let issuers: Vec<Issuer> = config
            .issuers
            .iter()
            .zip(keys)
            .map(|(cfg, keys)| Issuer {
                cfg: cfg.clone(),
                keys: keys.clone(),
            })
            .collect();
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, is)| (is.cfg.issuer.clone(), i))
            .collect();
        // No per-entry expiry timer: every hit is checked against its own exp/nbf window
        // (`still_valid`), and size-based eviction bounds memory; a timer per entry would
        // cost memory and work on every insert for nothing.
        let cache = (config.cache.max_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache.max_entries)
                .build_with_hasher(CacheHasher::default())
        });
        Authenticator {
            issuers,
            by_iss,
            cache,
            max_token_bytes: config.limits.max_token_bytes,
            require_jti: config.revocation.as_ref().map(|r| r.require_jti),
            revocation,
            clock,
            metrics,
        }
    }

    /// The configuration of issuer `i` (as in `Verified::issuer`).
    pub fn issuer(&self, i: usize) -> &IssuerConfig {
        &self.issuers[i].cfg
    }

    /// The verdict on `token` if it is the one this connection presented last and that
    /// verdict still stands; counted as a cache hit.
    pub fn repeat(&self, token: &str, last: &LastToken) -> Option<Arc<Verified>> {
        self.cache.as_ref()?;
        let guard = last.0.lock().ok()?;
        let (seen, verified) = guard.as_ref()?;
        if seen.as_str() != token || !self.still_valid(verified) {
            return None;
        }
        self.metrics.cache_hits.inc();
        Some(verified.clone())
    }

    /// Remembers a verified token as its connection's last one (reusing the buffer).
    pub fn remember(&self, token: &str, verified: &Arc<Verified>, last: &LastToken) {
        if self.cache.is_none() || token.len() > LAST_TOKEN_MAX_BYTES {
            return;
        }
        if let Ok(mut guard) = last.0.lock() {
            match guard.as_mut() {
                Some((seen, v)) => {
                    seen.clear();
                    seen.push_str(token);
                    *v = verified.clone();
                }
                None => *guard = Some((token.to_owned(), verified.clone())),
            }
        }
    }

    /// Validates one token. Only a token with an unknown `kid` ever awaits (the refetch).
    pub async fn authenticate(
        &self,
        token: &str,
        hash: &TokenHash,
    ) -> Result<Arc<Verified>, Reject> {
        if token.len() > self.max_token_bytes {
            return Err(Reject::new(
                Reason::TooLarge,
                "token exceeds the size limit",
            ));
        }
        // A hit means these exact bytes (same SHA-256) passed every check below before, so
        // the structure scan is skipped on the hot path.
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(hash) {
                if self.still_valid(&hit) {
                    self.metrics.cache_hits.inc();
                    return Ok(hit);
                }
                cache.invalidate(hash);
            }
            self.metrics.cache_misses.inc();
        }
        let seg = token::split(token, self.max_token_bytes)?;

        let header = token::header(seg.header)?;
        let alg = Algorithm::from_name(&header.alg).ok_or(Reject::new(
            Reason::Algorithm,
            "token alg is not an accepted signature algorithm",
        ))?;
        if header.kid.as_ref().is_some_and(|k| k.len() > MAX_KID_BYTES) {
            return Err(Reject::new(Reason::Malformed, "token kid is too long"));
        }
        if header.crit.is_some() {
            return Err(Reject::new(
                Reason::Malformed,
                "token has a crit header parameter jwtgate does not understand",
            ));
        }
        let claims = token::claims(seg.payload)?;
        let issuer_idx = claims
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss).copied())
            .ok_or(Reject::new(Reason::Issuer, "token issuer is not trusted"))?;
        let issuer = &self.issuers[issuer_idx];
        if !issuer.cfg.algorithms.contains(&alg) {
            return Err(Reject::new(
                Reason::Algorithm,
                "token alg is not allowed for this issuer",
            ));
        }
        if let Some(typ) = &header.typ {
            let typ = normalize_typ(typ);
            if typ == "rt+jwt" {
                return Err(Reject::new(
                    Reason::RefreshToken,
                    "refresh tokens are not access tokens",
                ));
            }
            if !issuer.cfg.typ.contains(&typ) {
                return Err(Reject::new(Reason::Typ, "token typ is not accepted"));
            }
        }

        let key = self
            .verify_signature(issuer, header.kid.as_deref(), alg, &seg)
            .await?;

        if claims.token_type.as_deref() == Some("refresh_token") {
            return Err(Reject::new(
                Reason::RefreshToken,
                "refresh tokens are not access tokens",
            ));
        }
        let now = self.clock.now();
        let leeway = issuer.cfg.leeway_s as i64;
        let exp = claims
            .exp
            .ok_or(Reject::new(Reason::Malformed, "token has no exp claim"))?
            .0;
        if now - leeway >= exp {
            return Err(Reject::new(Reason::Expired, "token expired"));
        }
        if let Some(nbf) = claims.nbf
            && nbf.0 > now + leeway
        {
            return Err(Reject::new(
                Reason::NotYetValid,
                "token is not valid yet (nbf)",
            ));
        }
        if let Some(iat) = claims.iat
            && iat.0 > now + leeway
        {
            return Err(Reject::new(
                Reason::IssuedInFuture,
                "token was issued in the future (iat)",
            ));
        }
        if !issuer.cfg.skip_audience_check
            && !claims
                .aud
                .as_ref()
                .is_some_and(|a| a.contains_any(&issuer.cfg.audiences))
        {
            return Err(Reject::new(
                Reason::Audience,
                "token audience is not accepted",
            ));
        }

        if claims.cnf.is_some_and(|c| c.0 > 0) {
            // Bound to a DPoP key or a client certificate (RFC 9449 / RFC 8705): jwtgate
            // does not check the binding, so it must not accept the token as a bearer token.
            return Err(Reject::new(
                Reason::BoundToken,
                "token is bound to a key (cnf) and cannot be used as a bearer token",
            ));
        }
        if let (Some(require_jti), Some(rev)) = (self.require_jti, &self.revocation) {
            // Without these bounds, pruning a rule could revive a token it revoked.
            let iat = claims.iat.ok_or(Reject::new(
                Reason::Lifetime,
                "token has no iat, so its lifetime cannot be bounded",
            ))?;
            if !rev.lifetime_bound().allows(iat.0, exp) {
                return Err(Reject::new(
                    Reason::Lifetime,
                    "token lifetime exceeds max_token_lifetime_s",
                ));
            }
            if require_jti && claims.jti.is_none() {
                return Err(Reject::new(Reason::MissingJti, "token has no jti"));
            }
        }

        let wso2 = issuer.cfg.profile == Profile::Wso2;
        // WSO2 may revoke a jti-less token by its signature: an ECDSA signature has a twin
        // encoding that verifies too, and both must be caught (only WSO2 records use it).
        let twin = match alg {
            Algorithm::ES256 if wso2 && self.revocation.is_some() => {
                token::ecdsa_twin(seg.signature, token::EcOrder::P256)
            }
            Algorithm::ES384 if wso2 && self.revocation.is_some() => {
                token::ecdsa_twin(seg.signature, token::EcOrder::P384)
            }
            _ => None,
        };
        let revocation_fps = self.revocation.as_ref().map(|rev| {
            rev.list().fingerprints(&Facts {
                iss: &issuer.cfg.issuer,
                wso2,
                jti: claims.jti.as_deref(),
                sub: claims.sub.as_deref(),
                client: claims.client_id.as_deref().or(claims.azp.as_deref()),
                entity_id: claims.entity_id.as_deref(),
                signature: seg.signature,
                signature_twin: twin.as_deref(),
                iat: claims.iat.map(|d| d.0),
            })
        });
        let verified = Arc::new(Verified {
            issuer: issuer_idx,
            key,
            exp,
            nbf: claims.nbf.map(|d| d.0),
            iat: claims.iat.map(|d| d.0),
            revocation_fps,
        });
        if let Some(cache) = &self.cache {
            cache.insert(*hash, verified.clone());
        }
        Ok(verified)
    }

    /// A cached verdict still stands: inside the time window, key still published (cache
    /// hits, the per-connection repeat, and open tunnels).
    pub fn still_valid(&self, v: &Verified) -> bool {
        let issuer = &self.issuers[v.issuer];
        let now = self.clock.now();
        let leeway = issuer.cfg.leeway_s as i64;
        now - leeway < v.exp
            && v.nbf.is_none_or(|nbf| nbf <= now + leeway)
            && issuer
                .keys
                .current()
                .is_ok_and(|set| set.contains(v.key.kid.as_deref(), v.key.id))
    }

    async fn verify_signature(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        alg: Algorithm,
        seg: &token::Segments<'_>,
    ) -> Result<Arc<VerifyKey>, Reject> {
        let set = issuer.keys.current().map_err(key_error)?;
        let key = match kid {
            Some(kid) => match set.get(kid) {
                Some(k) => k.clone(),
                None => issuer
                    .keys
                    .key_for_unknown_kid(kid)
                    .await
                    .map_err(key_error)?,
            },
            None => return verify_kidless(&set, alg, seg),
        };
        if !key.fits(alg) {
            return Err(Reject::new(
                Reason::Algorithm,
                "token alg does not fit the key it names",
            ));
        }
        if verify(&key, alg, seg) {
            Ok(key)
        } else {
            Err(Reject::new(Reason::Signature, "token signature is invalid"))
        }
    }
}

fn verify_kidless(
    set: &KeySet,
    alg: Algorithm,
    seg: &token::Segments<'_>,
) -> Result<Arc<VerifyKey>, Reject> {
    let mut tried = false;
    for key in set.candidates(alg, MAX_KIDLESS_CANDIDATES) {
        tried = true;
        if verify(key, alg, seg) {
            return Ok(key.clone());
        }
    }
    Err(if tried {
        Reject::new(Reason::Signature, "token signature is invalid")
    } else {
        Reject::new(Reason::UnknownKid, "no key of the issuer fits the token")
    })
}

fn verify(key: &VerifyKey, alg: Algorithm, seg: &token::Segments<'_>) -> bool {
    if let Some(parsed) = key.parsed_for(alg) {
        // The key parsed once per fetch (see `VerifyKey::parsed`); the signature decoded
        // into a stack buffer (at most 8192-bit RSA keys: 1024 bytes).
        use base64::Engine as _;
        let mut buf = [0u8; 1024];
        return match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(seg.signature, &mut buf)
        {
            Ok(n) => parsed
                .verify_sig(seg.signing_input.as_bytes(), &buf[..n])
                .is_ok(),
            Err(_) => false,
        };
    }
    jsonwebtoken::crypto::verify(
        seg.signature,
        seg.signing_input.as_bytes(),
        &key.key,
        alg.jsonwebtoken(),
    )
    .unwrap_or(false)
}

fn key_error(e: KeyError) -> Reject {
    match e {
        KeyError::UnknownKid => Reject::new(
            Reason::UnknownKid,
            "token kid is not in the issuer's key set",
        ),
        KeyError::Unavailable => Reject::new(
            Reason::KeysUnavailable,
            "signing keys are temporarily unavailable",
        ),
    }
}
