//! Token → [`Verified`], or a [`Reject`] with one reason. Knows nothing of HTTP, of the
//! cache's callers or of revocation policy: it takes a token string and a clock.
//!
//! A full verification ([`Authenticator::verify`]), in this order, nothing after a failure
//! running:
//! 1. alphabet and segment count — no decoding (the size was checked before hashing);
//! 2. header: `alg` on jwtgate's list, a `kid` of at most 256 bytes, no `crit`;
//! 3. claims parsed once; `iss` picks the issuer (exact match); the issuer's `algorithms`
//!    and `typ` lists apply (`rt+jwt` is a refresh token);
//! 4. key by `kid` (an unknown kid waits for one shared, rate-limited refetch), and the
//!    key must fit `alg` (kty, crv, the JWK's own `alg`);
//! 5. signature (aws-lc-rs, the key parsed once per fetch);
//! 6. refresh-token claim, the [`TimeWindow`] (`exp` required, `nbf`), `iat`, `aud`.
//!
//! A verdict is kept ([`Authenticator::keep`]) in the verified-token cache (SHA-256 of the
//! whole token) and as the connection's last token; either is honoured only while
//! [`Authenticator::still_valid`] holds: inside the same time window, key still published.

pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::clock::{Clock, SystemClock};
use crate::config::{Config, IssuerConfig};
use crate::jose::{Algorithm, normalize_typ};
use crate::jwks::{IssuerKeys, KeyError, KeySet, VerifyKey};
use crate::metrics::Metrics;
pub use crate::reject::{Reason, Reject};
use crate::revocation::TokenFingerprints;

/// Longest accepted `kid`: key ids are short names or thumbprints (a base64url SHA-256 is
/// 43 bytes); a longer one is `malformed` before any key lookup.
pub const MAX_KID_BYTES: usize = 256;

/// At most this many keys are tried for a token without `kid`.
const MAX_KIDLESS_CANDIDATES: usize = 4;

/// What a verified token leaves behind for the rest of the pipeline.
///
/// Kept small on purpose: one lives in the verified-token cache per distinct token.
pub struct Verified {
    /// The config generation whose authenticator verified it: a verdict is honoured only
    /// by that generation (DESIGN §9).
    pub generation: u64,
    /// Index of the issuer in that generation's config.
    pub issuer: usize,
    /// The key that verified the token (a cache hit counts only while it is published).
    key: Arc<VerifyKey>,
    /// `exp`/`nbf` with the issuer's leeway: checked again on every later use.
    pub window: TimeWindow,
    pub iat: Option<i64>,
    /// Revocation fingerprints of the token, computed once when it is first seen (when
    /// revocation is on), so cache hits only probe the tables.
    pub revocation_fps: Option<TokenFingerprints>,
    /// What route policy reads from the token, selected once when it is first seen (when
    /// any route or claim header needs a claim), so cache hits parse no payload.
    pub selected: Option<Box<Selected>>,
    /// Who holds it, as the access log and spans name them (when either is on), computed
    /// once when it is first seen.
    pub who: Option<Arc<crate::observe::Who>>,
}

/// The claims route policy asked for, carried with the verdict. The policy decides what
/// to select and how to read it; auth only keeps it with the token it came from.
#[derive(Debug, Default)]
pub struct Selected {
    /// The union of `scope` and `scp` (each a space-separated string or an array).
    pub scopes: Box<[Box<str>]>,
    /// One value per claim path the policy uses, in the policy's order (`None`: absent).
    pub claims: Box<[Option<serde_json::Value>]>,
    /// One per `[forward.claim_headers]` entry, in config order.
    pub headers: Box<[ClaimHeaderValue]>,
}

/// A claim header's value for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimHeaderValue {
    Set(http::HeaderValue),
    /// The claim is absent: no header.
    Missing,
    /// The claim's value cannot be a header value (an object, `null`, a byte outside
    /// 0x20–0x7E, over 1,024 bytes, …): no header, counted.
    Unset,
}

/// A token's validity window: `exp` (required) and `nbf`, with the issuer's `leeway_s`.
/// One rule for a full verification, a cache hit, a connection's repeat and an open tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub exp: i64,
    pub nbf: Option<i64>,
    pub leeway: i64,
}

impl TimeWindow {
    /// `expired` once `exp` has passed (by more than the leeway); `not_yet_valid` before
    /// `nbf` (less the leeway).
    pub fn check(&self, now: i64) -> Result<(), Reject> {
        if now - self.leeway >= self.exp {
            return Err(Reject::new(Reason::Expired, "token expired"));
        }
        if let Some(nbf) = self.nbf
            && nbf > now + self.leeway
        {
            return Err(Reject::new(
                Reason::NotYetValid,
                "token is not valid yet (nbf)",
            ));
        }
        Ok(())
    }
}

/// A token verified just now: the verdict, and what the rest of the pipeline reads from
/// it the first time it is seen (token policy, revocation fingerprints).
pub struct Fresh<'t> {
    pub verified: Verified,
    pub claims: token::Claims,
    pub alg: Algorithm,
    /// The signature segment, still encoded.
    pub signature: &'t str,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("issuer", &self.issuer)
            .field("kid", &self.key.kid)
            .field("exp", &self.window.exp)
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

type CacheHasher = std::hash::BuildHasherDefault<crate::hashing::IdentityHasher>;

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

/// The verified-token cache counters, registered once and shared by every generation's
/// authenticator.
#[derive(Clone)]
pub struct AuthMetrics {
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl AuthMetrics {
    pub fn register(metrics: &Metrics) -> AuthMetrics {
        AuthMetrics {
            hits: metrics.counter(
                "jwtgate_token_cache_hits_total",
                "Tokens served from the verified-token cache.",
            ),
            misses: metrics.counter(
                "jwtgate_token_cache_misses_total",
                "Tokens not in the verified-token cache (verified in full).",
            ),
        }
    }
}

pub struct Authenticator {
    /// The config generation this authenticator (and its cache) belongs to.
    generation: u64,
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: Option<moka::sync::Cache<TokenHash, Arc<Verified>, CacheHasher>>,
    max_token_bytes: usize,
    clock: Arc<dyn Clock>,
    /// `jwtgate_token_cache_hits_total` / `_misses_total`.
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
}

impl Authenticator {
    pub fn new(
        config: &Config,
        keys: &[Arc<IssuerKeys>],
        clock: Arc<dyn Clock>,
        metrics: &Metrics,
    ) -> Authenticator {
        Authenticator::for_generation(config, keys, clock, AuthMetrics::register(metrics), 1)
    }

    /// The authenticator of one config generation: its own cache (a verdict of another
    /// generation is never a hit), counters shared with the others.
    pub fn for_generation(
        config: &Config,
        keys: &[Arc<IssuerKeys>],
        clock: Arc<dyn Clock>,
        metrics: AuthMetrics,
        generation: u64,
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
            generation,
            issuers,
            by_iss,
            cache,
            max_token_bytes: config.limits.max_token_bytes,
            clock,
            cache_hits: metrics.hits,
            cache_misses: metrics.misses,
        }
    }

    /// An authenticator whose single issuer (the config's first) has the keys of `jwks`,
    /// installed as if fetched: no key manager is contacted. For benchmarks, fuzzing and
    /// tests that need a verdict without sockets.
    pub fn with_key_document(
        config: &Config,
        jwks: &[u8],
        metrics: &Metrics,
    ) -> Result<Authenticator, String> {
        let issuer = config.issuers.first().ok_or("the config has no issuer")?;
        let keys = IssuerKeys::new(
            issuer,
            &config.jwks,
            crate::jwks::JwksMetrics::register(metrics).issuer(&issuer.name),
            Arc::new(SystemClock),
        )?;
        keys.load_document(jwks)?;
        Ok(Authenticator::new(
            config,
            &[Arc::new(keys)],
            Arc::new(SystemClock),
            metrics,
        ))
    }

    /// The config generation this authenticator belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
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
        if seen.as_str() != token
            || verified.generation != self.generation
            || !self.still_valid(verified)
        {
            return None;
        }
        self.cache_hits.inc();
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

    /// The size limit, checked before a token is hashed or decoded.
    pub fn check_size(&self, token: &str) -> Result<(), Reject> {
        if token.len() > self.max_token_bytes {
            return Err(Reject::new(
                Reason::TooLarge,
                "token exceeds the size limit",
            ));
        }
        Ok(())
    }

    /// The cached verdict on these exact bytes (same SHA-256), if it still stands (the
    /// cache-hit rule: time window, key still published); counts a hit or a miss.
    pub fn cached(&self, hash: &TokenHash) -> Option<Arc<Verified>> {
        let cache = self.cache.as_ref()?;
        if let Some(hit) = cache.get(hash) {
            if self.still_valid(&hit) {
                self.cache_hits.inc();
                return Some(hit);
            }
            cache.invalidate(hash);
        }
        self.cache_misses.inc();
        None
    }

    /// Keeps a verdict for later requests: in the shared cache and as the connection's
    /// last token. Only verdicts that passed every check of the pipeline come here.
    pub fn keep(&self, token: &str, hash: &TokenHash, verified: &Arc<Verified>, last: &LastToken) {
        if let Some(cache) = &self.cache {
            cache.insert(*hash, verified.clone());
        }
        self.remember(token, verified, last);
    }

    /// Verifies one token in full: structure, header, issuer, `typ`, key, signature,
    /// refresh-token marks, time window, `iat`, audience. Only a token with an unknown
    /// `kid` ever awaits (the refetch).
    pub async fn verify<'t>(&self, token: &'t str) -> Result<Fresh<'t>, Reject> {
        self.verify_traced(token, &mut NoTrace).await
    }

    /// [`Authenticator::verify`], reporting each check to `trace` as it passes or fails
    /// (`jwtgate inspect`); with [`NoTrace`] it compiles to `verify` itself.
    pub async fn verify_traced<'t, T: Trace>(
        &self,
        token: &'t str,
        t: &mut T,
    ) -> Result<Fresh<'t>, Reject> {
        let seg = step(
            t,
            "structure",
            token::split(token, self.max_token_bytes),
            |_| "three base64url segments".into(),
        )?;
        let header = step(t, "header", token::header(seg.header), |h| {
            format!(
                "alg {:?}, kid {:?}, typ {:?}",
                h.alg,
                h.kid.as_deref().unwrap_or("(none)"),
                h.typ.as_deref().unwrap_or("(none)")
            )
        })?;
        let alg = step(t, "alg", header_alg(&header), |a| {
            format!("{} is a jwtgate algorithm; no crit", a.name())
        })?;
        let claims = step(t, "payload", token::claims(seg.payload), |_| {
            "a JSON object with well-typed registered claims".into()
        })?;
        let issuer_idx = claims
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss).copied())
            .ok_or(Reject::new(Reason::Issuer, "token issuer is not trusted"));
        let issuer_idx = step(t, "issuer", issuer_idx, |i| {
            format!("iss is issuer {:?}", self.issuers[*i].cfg.name)
        })?;
        let issuer = &self.issuers[issuer_idx];
        let accepted = issuer_accepts(&issuer.cfg, alg, header.typ.as_deref());
        step(t, "alg and typ", accepted, |_| {
            format!(
                "{} on the issuer's list; typ {}",
                alg.name(),
                header
                    .typ
                    .as_deref()
                    .map_or("absent".into(), |t| format!("{t:?} accepted"))
            )
        })?;
        let key = self
            .verify_signature(issuer, header.kid.as_deref(), alg, &seg)
            .await;
        let key = step(t, "key and signature", key, |k| {
            format!(
                "key {:?} ({:?}{}), signature valid",
                k.kid.as_deref().unwrap_or("(no kid)"),
                k.kind,
                k.alg
                    .map_or(String::new(), |a| format!(", alg {}", a.name()))
            )
        })?;
        let window = self.check_claims(&issuer.cfg, &claims, t)?;
        Ok(Fresh {
            verified: Verified {
                generation: self.generation,
                issuer: issuer_idx,
                key,
                window,
                iat: claims.iat.map(|d| d.0),
                revocation_fps: None,
                selected: None,
                who: None,
            },
            claims,
            alg,
            signature: seg.signature,
        })
    }

    /// Refresh-token marks, the time window, `iat` and the audience (after the signature:
    /// nothing from an unverified payload decides anything).
    fn check_claims<T: Trace>(
        &self,
        cfg: &IssuerConfig,
        claims: &token::Claims,
        t: &mut T,
    ) -> Result<TimeWindow, Reject> {
        let refresh = if claims.token_type.as_deref() == Some("refresh_token") {
            Err(Reject::new(
                Reason::RefreshToken,
                "refresh tokens are not access tokens",
            ))
        } else {
            Ok(())
        };
        step(t, "refresh token", refresh, |_| {
            "no refresh-token marks".into()
        })?;
        let now = self.clock.now();
        let leeway = cfg.leeway_s as i64;
        let window = claims
            .exp
            .ok_or(Reject::new(Reason::Malformed, "token has no exp claim"))
            .map(|exp| TimeWindow {
                exp: exp.0,
                nbf: claims.nbf.map(|d| d.0),
                leeway,
            });
        let window = window.and_then(|w| w.check(now).map(|()| w));
        let window = step(t, "exp and nbf", window, |_| {
            window_detail(claims, now, leeway)
        });
        if window.is_err() {
            t.detail(|| window_detail(claims, now, leeway));
        }
        let window = window?;
        let iat = match claims.iat {
            Some(iat) if iat.0 > now + leeway => Err(Reject::new(
                Reason::IssuedInFuture,
                "token was issued in the future (iat)",
            )),
            _ => Ok(()),
        };
        step(t, "iat", iat, |_| match claims.iat {
            Some(iat) => format!("issued {} s ago", now - iat.0),
            None => "absent".into(),
        })?;
        let audience = if cfg.skip_audience_check
            || claims
                .aud
                .as_ref()
                .is_some_and(|a| a.contains_any(&cfg.audiences))
        {
            Ok(())
        } else {
            Err(Reject::new(
                Reason::Audience,
                "token audience is not accepted",
            ))
        };
        if audience.is_err() {
            t.detail(|| format!("expected one of {:?}", cfg.audiences));
        }
        step(t, "audience", audience, |_| {
            if cfg.skip_audience_check {
                "not checked (skip_audience_check)".into()
            } else {
                format!("holds one of {:?}", cfg.audiences)
            }
        })?;
        Ok(window)
    }

    /// A cached verdict still stands: inside its time window, key still published (cache
    /// hits, the per-connection repeat, and open tunnels).
    pub fn still_valid(&self, v: &Verified) -> bool {
        // A verdict of another generation names an issuer of another config.
        let Some(issuer) = self
            .issuers
            .get(v.issuer)
            .filter(|_| v.generation == self.generation)
        else {
            return false;
        };
        v.window.check(self.clock.now()).is_ok()
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

/// Where the checks of a verification are reported (`jwtgate inspect`). The proxy passes
/// [`NoTrace`]: nothing is formatted, nothing is kept.
pub trait Trace {
    /// `check` passed; `detail` says what was seen (called only by traces that keep it).
    fn pass(&mut self, check: &'static str, detail: impl FnOnce() -> String);
    /// `check` failed with `reject`.
    fn fail(&mut self, check: &'static str, reject: &Reject);
    /// More about the check just reported (what was expected, how far off); `text` is
    /// called only by traces that keep it.
    fn detail(&mut self, _text: impl FnOnce() -> String) {}
}

/// The trace of the request path: reports nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn pass(&mut self, _check: &'static str, _detail: impl FnOnce() -> String) {}
    #[inline(always)]
    fn fail(&mut self, _check: &'static str, _reject: &Reject) {}
}

/// Reports one check's result to `t` and passes it on.
#[inline(always)]
pub fn step<R, T: Trace>(
    t: &mut T,
    check: &'static str,
    result: Result<R, Reject>,
    detail: impl FnOnce(&R) -> String,
) -> Result<R, Reject> {
    match &result {
        Ok(r) => t.pass(check, || detail(r)),
        Err(reject) => t.fail(check, reject),
    }
    result
}

/// `exp`/`nbf` against now, with the leeway: how far off each is.
fn window_detail(claims: &token::Claims, now: i64, leeway: i64) -> String {
    let mut out = match claims.exp {
        Some(exp) if exp.0 > now => format!("exp in {} s", exp.0 - now),
        Some(exp) => format!("exp {} s ago", now - exp.0),
        None => "no exp".into(),
    };
    if let Some(nbf) = claims.nbf {
        if nbf.0 > now {
            out.push_str(&format!(", nbf in {} s", nbf.0 - now));
        } else {
            out.push_str(&format!(", nbf {} s ago", now - nbf.0));
        }
    }
    out.push_str(&format!(" (leeway {leeway} s)"));
    out
}

/// The header's `alg`, on jwtgate's list; a kid within bounds; no `crit`.
fn header_alg(header: &token::Header) -> Result<Algorithm, Reject> {
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
    Ok(alg)
}

/// The issuer's `algorithms` and `typ` lists; `rt+jwt` is a refresh token.
fn issuer_accepts(cfg: &IssuerConfig, alg: Algorithm, typ: Option<&str>) -> Result<(), Reject> {
    if !cfg.algorithms.contains(&alg) {
        return Err(Reject::new(
            Reason::Algorithm,
            "token alg is not allowed for this issuer",
        ));
    }
    if let Some(typ) = typ {
        let typ = normalize_typ(typ);
        if typ == "rt+jwt" {
            return Err(Reject::new(
                Reason::RefreshToken,
                "refresh tokens are not access tokens",
            ));
        }
        if !cfg.typ.contains(&typ) {
            return Err(Reject::new(Reason::Typ, "token typ is not accepted"));
        }
    }
    Ok(())
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
    // The key parsed once per fetch (see `VerifyKey::parsed`); a key that has no parsed
    // form for `alg` verifies nothing (`fits` has already refused that pairing).
    let Some(parsed) = key.parsed_for(alg) else {
        return false;
    };
    // The signature decoded into a stack buffer (at most 8192-bit RSA keys: 1024 bytes).
    use base64::Engine as _;
    let mut buf = [0u8; 1024];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(seg.signature, &mut buf) {
        Ok(n) => parsed
            .verify_sig(seg.signing_input.as_bytes(), &buf[..n])
            .is_ok(),
        Err(_) => false,
    }
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
