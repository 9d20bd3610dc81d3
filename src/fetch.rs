//! Outbound HTTP, for every background fetch (JWKS, OIDC discovery, revocation feeds): one
//! way to build a client (an extra CA file, timeouts, a bounded redirect policy), send,
//! check the status, read a capped body and back off with jitter, and one typed error whose
//! kind is a bounded label. No request on the proxy path ever waits on this module, except
//! the one shared unknown-kid refetch.

use std::path::Path;
use std::time::Duration;

/// Why a fetch failed. [`FetchError::label`] is a closed set (a metric label, a log field).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: {why}")]
    CaFile { path: String, why: String },
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("timed out")]
    Timeout,
    #[error("cannot connect")]
    Connect,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// reqwest's message names the URL and the cause; these URLs carry no secrets
    /// (credentials go in headers).
    #[error("{0}")]
    Transport(String),
}

impl FetchError {
    /// The kind of failure, from a closed set.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::CaFile { .. } | FetchError::Client(_) => "client",
            FetchError::Timeout => "timeout",
            FetchError::Connect => "connect",
            FetchError::Status(_) => "status",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Transport(_) => "transport",
        }
    }
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout
        } else if e.is_connect() {
            FetchError::Connect
        } else {
            FetchError::Transport(e.to_string())
        }
    }
}

/// A client for one remote: `ca_file` adds a trust root (WSO2 ships a self-signed
/// certificate), `timeout` bounds a whole exchange, redirects stop after 3.
pub fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, FetchError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("jwtgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(3));
    if let Some(path) = ca_file {
        let ca_error = |why: String| FetchError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| FetchError::Client(e.to_string()))
}

/// Sends a request; any status outside 2xx is an error, except the ones in `also_ok`
/// (`304 Not Modified` for a conditional JWKS fetch).
pub async fn send(
    req: reqwest::RequestBuilder,
    also_ok: &[reqwest::StatusCode],
) -> Result<reqwest::Response, FetchError> {
    let resp = req.send().await?;
    let status = resp.status();
    if status.is_success() || also_ok.contains(&status) {
        Ok(resp)
    } else {
        Err(FetchError::Status(status.as_u16()))
    }
}

/// The whole body, refused as soon as it passes `cap` bytes (never buffered past it).
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Err(FetchError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The pause after `failures` failures in a row: `first`, doubling, capped at `cap`, with
/// ±20 % jitter so a fleet does not retry in step. No failure: `first`, jittered.
pub fn backoff(failures: u32, first: Duration, cap: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(6);
    jitter((first * factor).min(cap.max(first)))
}

/// `d` ± 20 %.
pub fn jitter(d: Duration) -> Duration {
    let mut r = [0u8; 2];
    // A failing system RNG leaves 0: the low end of the range, still a pause.
    let _ = aws_lc_rs::rand::fill(&mut r);
    d.mul_f64(f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) * 0.4 + 0.8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let s = Duration::from_secs;
        for _ in 0..50 {
            let first = backoff(1, s(1), s(60));
            assert!(
                first >= s(1).mul_f64(0.8) && first <= s(1).mul_f64(1.2),
                "{first:?}"
            );
            let third = backoff(3, s(1), s(60));
            assert!(
                third >= s(4).mul_f64(0.8) && third <= s(4).mul_f64(1.2),
                "{third:?}"
            );
            let capped = backoff(30, s(1), s(60));
            assert!(capped <= s(72), "{capped:?}");
            let feed = backoff(4, s(10), s(60));
            assert!(feed <= s(72) && feed >= s(48), "{feed:?}");
        }
    }

    #[test]
    fn labels_are_a_closed_set() {
        assert_eq!(FetchError::Status(503).label(), "status");
        assert_eq!(FetchError::TooLarge(1).label(), "too_large");
        assert_eq!(FetchError::Status(503).to_string(), "answered HTTP 503");
    }
}
