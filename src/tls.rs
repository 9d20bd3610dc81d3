//! A TLS server certificate read from two PEM files and swapped when they change (cert-manager
//! renews them in place): the injector's webhook and the admin listener's HTTPS. Leaf module.
//!
//! The files are checked every [`CHECK_EVERY`]; a change is taken only once the key and the
//! certificate belong together, so a renewal caught between its two writes keeps the old
//! pair (a new key beside the old certificate would fail every handshake).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files are checked for changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The serving pair, swapped when its files change.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    /// How errors name the two files (`--tls-cert`, `server.admin_tls_cert`, …).
    names: (&'static str, &'static str),
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// Loads the pair now (an error names the file's key) and returns the store and an
    /// acceptor serving from it with these ALPN protocols.
    pub fn open(
        cert: &Path,
        key: &Path,
        names: (&'static str, &'static str),
        alpn: &[&[u8]],
    ) -> Result<(Arc<CertStore>, tokio_rustls::TlsAcceptor), String> {
        let store = Arc::new(CertStore {
            current: ArcSwap::from_pointee(load(cert, key, names)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
            names,
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok((store, tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
    }

    /// Re-reads the files whenever they change, forever (abort the task to stop).
    pub async fn watch(self: Arc<Self>, what: &'static str) {
        let mut seen = mtimes(&self.cert, &self.key);
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let now = mtimes(&self.cert, &self.key);
            if now == seen {
                continue;
            }
            match load(&self.cert, &self.key, self.names) {
                Ok(ck) => {
                    self.current.store(Arc::new(ck));
                    seen = now;
                    tracing::info!(what, "TLS certificate reloaded");
                }
                // A half-written rotation: keep the old pair, try again next round.
                Err(e) => tracing::warn!(what, error = %e, "certificate change not loaded yet"),
            }
        }
    }
}

fn mtimes(a: &Path, b: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(a), m(b))
}

fn load(cert: &Path, key: &Path, names: (&str, &str)) -> Result<CertifiedKey, String> {
    let (cert_name, key_name) = names;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert_name} {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_name} {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{cert_name} {}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{key_name} {}: {e}", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_name}: {e}"))?;
    let pair = CertifiedKey::new(certs, signing);
    // A rotation caught between its two files (new key, old certificate) is no pair: every
    // handshake with it would fail. The caller keeps the old pair and looks again.
    pair.keys_match().map_err(|e| {
        format!("{cert_name} and {key_name} do not belong together (a rotation half-written?): {e}")
    })?;
    Ok(pair)
}
