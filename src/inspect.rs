//! `jwtgate inspect`: why a token would be accepted or refused, check by check, by the same
//! code the proxy runs — the verification reports each check through a [`Trace`], token
//! policy and the revocation fingerprints are the proxy's own functions — so the last line
//! carries the reason label the proxy would count.
//!
//! Keys are fetched live from the configured issuers (discovery included). The revocation
//! snapshot, when one is configured, is opened read-only: never moved or rewritten, even
//! when it is corrupt (the output says so instead). The header and the claims may be
//! printed (it is the operator's own token); the signature and key material never are.

use std::sync::Arc;

use crate::auth::{Authenticator, Fresh, Trace, step};
use crate::clock::{Clock, SystemClock};
use crate::config::{AuthMode, Config};
use crate::jwks::{IssuerKeys, JwksMetrics, ManualRefresh};
use crate::metrics::Metrics;
use crate::policy::{Policy, RouteId};
use crate::proxy::{fingerprints, token_policy};
use crate::reject::{Reason, Reject};
use crate::revocation::{LifetimeBound, snapshot};

/// One check and what was seen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Every check run, in the proxy's order, and the verdict.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    /// `None`: accepted; else the reason label the proxy would count.
    pub reason: Option<Reason>,
    /// The token's header and claims as JSON text, when they could be decoded.
    pub header: Option<String>,
    pub claims: Option<String>,
    /// The route the request was decided under (`none` when refused before routing).
    pub route: String,
}

impl Report {
    /// The text form: a line per check, then `accepted` or `rejected: REASON`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Some(h) = &self.header {
            out.push_str(&format!("header  {h}\n"));
        }
        if let Some(c) = &self.claims {
            out.push_str(&format!("claims  {c}\n"));
        }
        let width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        for c in &self.checks {
            let mark = if c.ok { "  ok" } else { "FAIL" };
            out.push_str(&format!("{mark}  {:width$}  {}\n", c.check, c.detail));
        }
        match self.reason {
            None => out.push_str("accepted\n"),
            Some(r) => out.push_str(&format!("rejected: {}\n", r.label())),
        }
        out
    }

    /// The `--json` form (DESIGN §1): `{"route", "checks", "verdict", "reason"}`.
    pub fn json(&self) -> String {
        serde_json::json!({
            "route": self.route,
            "checks": self.checks,
            "verdict": if self.reason.is_none() { "accepted" } else { "rejected" },
            "reason": self.reason.map(Reason::label),
        })
        .to_string()
    }
}

/// Collects the checks as they are reported.
#[derive(Default)]
struct Lines(Vec<Check>);

impl Trace for Lines {
    fn pass(&mut self, check: &'static str, detail: impl FnOnce() -> String) {
        self.0.push(Check {
            check,
            ok: true,
            detail: detail(),
        });
    }

    fn fail(&mut self, check: &'static str, reject: &Reject) {
        self.0.push(Check {
            check,
            ok: false,
            detail: reject.description.to_owned(),
        });
    }

    fn detail(&mut self, text: impl FnOnce() -> String) {
        if let Some(last) = self.0.last_mut() {
            last.detail = format!("{}; {}", last.detail, text());
        }
    }
}

/// Inspects `token` as a `method` request for `path` would meet it.
pub async fn inspect(config: &Config, method: &str, path: &str, token: &str) -> Report {
    let mut lines = Lines::default();
    let metrics = Metrics::new();
    let policy = Policy::new(config, &metrics);
    let mut route = RouteId::None;
    let verdict = run(
        config,
        &policy,
        (method, path),
        token,
        &mut lines,
        &mut route,
    )
    .await;
    let decoded = |i: usize| {
        token
            .split('.')
            .nth(i)
            .and_then(|s| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| serde_json::from_str::<serde_json::Value>(s).is_ok())
    };
    Report {
        checks: lines.0,
        reason: verdict.err().map(|r| r.reason),
        header: decoded(0),
        claims: decoded(1),
        route: policy.name(route).to_owned(),
    }
}

/// The checks in the proxy's order; the first failure ends the run, like in the proxy.
async fn run(
    config: &Config,
    policy: &Policy,
    (method, path): (&str, &str),
    token: &str,
    t: &mut Lines,
    route: &mut RouteId,
) -> Result<(), Reject> {
    let shape = if method == "CONNECT" {
        Err(Reject::new(Reason::BadRequest, "CONNECT is not supported"))
    } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
        Err(Reject::new(Reason::BadRequest, "method must be upper-case"))
    } else {
        Ok(())
    };
    step(t, "method", shape, |_| method.to_owned())?;
    let normalized = step(t, "path", policy.normalize(path), |n| {
        format!("normalized {:?}, matched as {:?}", n.forward, n.matching)
    })?;
    *route = policy.route(method, &normalized.matching);
    let auth = policy.auth(*route);
    t.pass("route", || {
        format!("{:?} (auth = {})", policy.name(*route), auth.label())
    });
    if auth == AuthMode::Public {
        t.pass("token", || "not read: the route is public".into());
        return Ok(());
    }

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Metrics::new();
    let keys = fetch_keys(config, &clock, &metrics, t).await;
    let auth = Authenticator::new(config, &keys, clock.clone(), &metrics);
    step(t, "size", auth.check_size(token), |_| {
        format!(
            "{} bytes, at most {}",
            token.len(),
            config.limits.max_token_bytes
        )
    })?;
    let mut fresh = auth.verify_traced(token, t).await?;
    fresh.verified.selected = policy
        .selector()
        .select(token.split('.').nth(1).unwrap_or_default());
    revocation(config, &auth, &fresh, &clock, t)?;
    step(
        t,
        "route requirements",
        policy.requirements(*route, &fresh.verified),
        |_| "issuers, scopes and claims the route requires are met".into(),
    )
}

/// Token policy, then the revocation snapshot when one is configured.
fn revocation(
    config: &Config,
    auth: &Authenticator,
    fresh: &Fresh<'_>,
    clock: &Arc<dyn Clock>,
    t: &mut Lines,
) -> Result<(), Reject> {
    let Some(rev) = &config.revocation else {
        return token_policy(None, fresh, t);
    };
    let leeway = config.max_leeway_s();
    let restored = match &rev.snapshot_path {
        None => Err("no snapshot_path: the proxy's list lives in its memory only".to_owned()),
        Some(path) => match snapshot::load(path) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(format!("no snapshot at {} yet", path.display())),
            Err(e) => Err(format!(
                "{e}; left where it is (the proxy would move it aside and answer 503 revocation_stale until a source syncs)"
            )),
        },
    };
    let stored_bound = restored.as_ref().ok().and_then(|r| r.bound);
    let bound = LifetimeBound::carry(
        stored_bound,
        rev.max_token_lifetime_s as i64,
        clock.now(),
        leeway,
    );
    token_policy(Some((&bound, rev.require_jti)), fresh, t)?;
    match restored {
        Err(why) => {
            t.0.push(Check {
                check: "revocation",
                ok: true,
                detail: format!("not checked: {why}"),
            });
            Ok(())
        }
        Ok(r) => {
            let issuer = auth.issuer(fresh.verified.issuer);
            let fps = fingerprints(&r.list, issuer, fresh);
            let revoked = if r.list.is_revoked_fps(&fps, fresh.verified.iat) {
                Err(Reject::new(Reason::Revoked, "token has been revoked"))
            } else {
                Ok(())
            };
            step(t, "revocation", revoked, |_| {
                format!("not revoked ({} records in the snapshot)", r.list.len())
            })
        }
    }
}

/// Every issuer's keys, fetched once now; each fetch is reported.
async fn fetch_keys(
    config: &Config,
    clock: &Arc<dyn Clock>,
    metrics: &Metrics,
    t: &mut Lines,
) -> Vec<Arc<IssuerKeys>> {
    let jwks_metrics = JwksMetrics::register(metrics);
    let mut keys = Vec::new();
    for issuer in &config.issuers {
        let Ok(k) = IssuerKeys::new(
            issuer,
            &config.jwks,
            jwks_metrics.issuer(&issuer.name),
            clock.clone(),
        ) else {
            continue;
        };
        let k = Arc::new(k);
        let fetched = matches!(k.refresh_requested().await, ManualRefresh::Refreshed);
        let count = k.current().map(|s| s.len()).unwrap_or(0);
        t.0.push(Check {
            check: "keys",
            ok: fetched,
            detail: if fetched {
                format!("issuer {:?}: {count} usable keys fetched", issuer.name)
            } else {
                format!(
                    "issuer {:?}: the key manager could not be reached",
                    issuer.name
                )
            },
        });
        keys.push(k);
    }
    keys
}

/// The token as read from stdin: surrounding whitespace trimmed, a pasted `Bearer ` prefix
/// dropped. `None` when nothing is left.
pub fn token_from_input(input: &str) -> Option<&str> {
    let t = input.trim();
    let t = match t.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if t.eq_ignore_ascii_case("bearer") => "",
        _ => t,
    };
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_input_is_trimmed_and_a_bearer_prefix_dropped() {
        assert_eq!(token_from_input("  a.b.c\n"), Some("a.b.c"));
        assert_eq!(token_from_input("Bearer a.b.c"), Some("a.b.c"));
        assert_eq!(token_from_input("bearer   a.b.c "), Some("a.b.c"));
        assert_eq!(token_from_input(" \n"), None);
        assert_eq!(token_from_input("Bearer \n"), None);
        // The segments are what `token::split` checks next.
        assert!(crate::auth::token::split("a.b.c", 100).is_ok());
    }
}
