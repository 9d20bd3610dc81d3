//! jwtgate: a reverse-proxy sidecar that validates every bearer JWT itself and forwards
//! only valid requests.
//!
//! The phases of one request, in the order `proxy::Proxy::prepare` runs them (a test
//! holds this list and the code together):
//!
//! <!-- phases -->
//! 1. `shape` — the request's own form: `CONNECT` 405; a method not upper-case, two
//!    `Host`s, a method/URL override header 400;
//! 2. `path` — normalization (`path`: decode unreserved, merge `//`, remove dot segments;
//!    encoded `/`, double encoding, `..` above the root and the like are 400 `bad_path`);
//! 3. `route` — the first `[[routes]]` entry whose matcher and methods take the normalized
//!    path (`policy`), else `default_auth`;
//! 4. `extract` — the one token from the configured sources (none on a public route; two
//!    are 400; a CORS preflight may go on without one; CSRF for cookie tokens);
//! 5. `verify` — the connection's last verdict, else the shared cache, else a full
//!    verification (`auth`: size, structure, header, issuer, key, signature, claims); a
//!    token seen for the first time then passes token policy (`cnf`, lifetime, `jti`) and
//!    gets its revocation fingerprints and the claims route policy reads before the
//!    verdict is kept;
//! 6. `revocation` — the list, on every request, and `on_stale`;
//! 7. `requirements` — the route's issuers, scopes and claims (403);
//! 8. `identity` — the claims header value;
//! 9. `rewrite` — the upgrade decision, header hygiene, credentials a route must not
//!    forward, claim headers, forwarding headers, `Host`, the origin-form URI with the
//!    normalized path;
//! <!-- /phases -->
//!
//! then `forward` (the body streamed both ways). Every rejection is answered before any
//! upstream I/O. The key manager is contacted only in the background (JWKS refresh,
//! revocation sync), except by a token with an unknown `kid`, which waits for one shared,
//! rate-limited refetch.
//!
//! Start-up: [`App::build`] constructs everything and returns every start error before any
//! port is bound; [`App::bind`] binds both listeners (so tests learn the ports);
//! [`Listening::run`] spawns the background work and serves until `shutdown` resolves, then
//! runs the shutdown sequence: not ready at once, serve for `shutdown_delay`, close the
//! listener, drain for at most `drain_timeout`.
//!
//! Reload ([`reload`]): `SIGHUP` or `--watch` builds a new generation — authenticator with
//! its own cache, route policy, headers — and swaps it in whole; a request is decided under
//! the generation it started with, and open tunnels are decided again under the new one.
//!
//! Modules depend one way: the leaves (`reject`, `clock`, `jose`, `hashing`, `hop`,
//! `path`, `tls`) ← `config` ← `metrics`, `jwks`, `revocation`, `observe` ← `auth` ← `policy`
//! ← `proxy` ← `admin` ← `fleet` (the stream's follower and `jwtgate relay`, DESIGN §10)
//! ← `lib` (`.ci/module_cycles.py` checks there is no cycle).

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod devkm;
pub mod fetch;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod hashing;
pub mod hop;
pub mod inject;
pub mod inspect;
pub mod jose;
pub mod jwks;
pub mod metrics;
pub mod observe;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod reject;
pub mod reload;
pub mod revocation;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::auth::{AuthMetrics, Authenticator};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::jwks::IssuerKeys;
use crate::metrics::Metrics;
use crate::revocation::Revocation;

/// Why the app could not start (after the config itself was valid).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("issuer setup: {0}")]
    Issuer(String),
    #[error("revocation.feed_url: {0}")]
    Feed(String),
    /// The admin listener's certificate or key (the message names the key).
    #[error("{0}")]
    AdminTls(String),
    /// The access log or tracing (the message names the section).
    #[error("{0}")]
    Observe(String),
}

/// Everything the process runs, constructed and checked, nothing bound yet.
pub struct App {
    config: Arc<Config>,
    reloader: Arc<reload::Reloader>,
    revocation: Option<Arc<Revocation>>,
    poller: Option<revocation::feed::Poller>,
    /// Follows `[revocation.stream]` (DESIGN §10).
    follower: Option<fleet::follow::Follower>,
    proxy: Arc<proxy::Proxy>,
    lifecycle: Arc<admin::Lifecycle>,
    admin: Arc<admin::Admin>,
}

/// The stream's follower, when `[revocation.stream]` is set (DESIGN §10).
fn follower(
    config: &Config,
    revocation: Option<&Arc<Revocation>>,
    metrics: &Metrics,
) -> Option<fleet::follow::Follower> {
    let stream = config.revocation.as_ref()?.stream.clone()?;
    Some(fleet::follow::Follower::new(
        revocation?.clone(),
        stream,
        fleet::follow::StreamMetrics::register(metrics),
        config.max_leeway_s(),
    ))
}

/// How often the rejection summary is logged at info.
const REJECTION_SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl App {
    /// Builds every component with the system clock; see [`App::build_with_clock`].
    pub fn build(config: Config) -> Result<App, StartError> {
        App::build_with_clock(config, Arc::new(SystemClock))
    }

    /// Builds every component and returns every start error before any port is bound:
    /// key sets (CA files, discovery), the revocation list (the snapshot is restored here,
    /// before the first request can be served) and its feed client, the authenticator,
    /// the proxy and the admin endpoints. `clock` drives every time rule (tests set it).
    pub fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<App, StartError> {
        let metrics = Arc::new(Metrics::new());
        let jwks_metrics = jwks::JwksMetrics::register(&metrics);
        let keys = config
            .issuers
            .iter()
            .map(|i| {
                IssuerKeys::new(i, &config.jwks, jwks_metrics.issuer(&i.name), clock.clone())
                    .map(Arc::new)
                    .map_err(StartError::Issuer)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let revocation = config.revocation.clone().map(|cfg| {
            let leeway = config.max_leeway_s();
            Arc::new(Revocation::open(cfg, clock.clone(), &metrics, leeway))
        });
        let poller = match &revocation {
            Some(rev) => rev.poller().map_err(StartError::Feed)?,
            None => None,
        };
        let follower = follower(&config, revocation.as_ref(), &metrics);
        let auth_metrics = AuthMetrics::register(&metrics);
        let auth = Arc::new(Authenticator::for_generation(
            &config,
            &keys,
            clock.clone(),
            auth_metrics.clone(),
            1,
        ));
        let observers =
            Arc::new(observe::Observers::start(&config, &metrics).map_err(StartError::Observe)?);
        let proxy = Arc::new(proxy::Proxy::new(
            &config,
            auth,
            revocation.clone(),
            &metrics,
            observers,
        ));
        let all_issuers: admin::IssuerList =
            Arc::new(arc_swap::ArcSwap::from_pointee(keys.clone()));
        let gating_issuers: admin::IssuerList =
            Arc::new(arc_swap::ArcSwap::from_pointee(keys.clone()));
        let lifecycle = Arc::new(admin::Lifecycle::new(
            gating_issuers.clone(),
            revocation.clone(),
            &metrics,
        ));
        let config = Arc::new(config);
        let reloader = Arc::new(reload::Reloader::new(
            reload::Parts {
                config: config.clone(),
                keys,
                proxy: proxy.clone(),
                revocation: revocation.clone(),
                clock,
                jwks_metrics,
                auth_metrics,
                all_issuers: all_issuers.clone(),
                gating_issuers,
            },
            &metrics,
        ));
        let admin = Arc::new(admin::Admin {
            lifecycle: lifecycle.clone(),
            metrics,
            issuers: all_issuers,
            revocation: revocation.clone(),
        });
        Ok(App {
            config,
            reloader,
            revocation,
            poller,
            follower,
            proxy,
            lifecycle,
            admin,
        })
    }

    /// Binds the proxy and admin listeners (so tests learn the ports); nothing is served
    /// until [`Listening::run`].
    pub async fn bind(self) -> Result<Listening, StartError> {
        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { key, addr, source })
        };
        let server = &self.config.server;
        let admin_tls = match (&server.admin_tls_cert, &server.admin_tls_key) {
            (Some(cert), Some(key)) => Some(
                tls::CertStore::open(
                    cert,
                    key,
                    ("server.admin_tls_cert", "server.admin_tls_key"),
                    &[b"http/1.1"],
                )
                .map_err(StartError::AdminTls)?,
            ),
            _ => None,
        };
        let proxy_listener = bind("server.listen", self.config.server.listen).await?;
        let admin_listener = bind("server.admin_listen", self.config.server.admin_listen).await?;
        Ok(Listening {
            app: self,
            proxy_listener,
            admin_listener,
            admin_tls,
        })
    }
}

/// The app with its listeners bound.
pub struct Listening {
    app: App,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    /// HTTPS on the admin listener (`server.admin_tls_cert` / `admin_tls_key`).
    admin_tls: Option<(Arc<tls::CertStore>, tokio_rustls::TlsAcceptor)>,
}

impl Listening {
    /// The proxy listener's address (the port the OS chose for `:0`).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .unwrap_or(self.app.config.server.listen)
    }

    /// Applies config reloads to the running app (`SIGHUP`, `--watch`, tests).
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.app.reloader.clone()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.app.config.server.admin_listen)
    }

    /// Spawns the background tasks and serves until `shutdown` resolves, then shuts down
    /// in order: not ready at once, serve for `shutdown_delay`, close the proxy listener,
    /// drain for at most `drain_timeout`, stop the background tasks and the admin listener.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        // The bound addresses, as plain `ip:port` (what `:0` resolved to; tests read them).
        tracing::info!(listen = %self.proxy_addr(), admin = %self.admin_addr(), "jwtgate serving");
        let Listening {
            app,
            proxy_listener,
            admin_listener,
            admin_tls,
        } = self;

        let (stop_bg, stop_rx) = tokio::sync::watch::channel(false);
        app.reloader.start(stop_rx.clone());
        let mut background = Vec::new();
        background.push(tokio::spawn(rejection_summary(
            app.proxy.metrics().clone(),
            stop_rx.clone(),
        )));
        if let Some(rev) = &app.revocation {
            background.extend(rev.spawn_tasks(app.poller, stop_rx.clone()));
        }
        if let Some(follower) = app.follower {
            background.push(tokio::spawn(
                follower
                    .run(stop_rx.clone())
                    .instrument(tracing::info_span!("revocation_stream")),
            ));
        }
        let admin_tls = admin_tls.map(|(store, acceptor)| {
            background.push(tokio::spawn(store.watch("admin listener")));
            acceptor
        });
        let admin_task = tokio::spawn(admin::serve(admin_listener, app.admin, stop_rx, admin_tls));

        let delay = app.config.server.shutdown_delay;
        let lifecycle = app.lifecycle;
        let stop_accepting = async move {
            shutdown.await;
            lifecycle.begin_shutdown();
            tracing::info!(
                delay_s = delay.as_secs(),
                "shutdown: not ready; still serving for shutdown_delay_s"
            );
            tokio::time::sleep(delay).await;
        };
        let proxy = app.proxy.clone();
        app.proxy
            .serve(proxy_listener, &app.config, stop_accepting)
            .await;

        let _ = stop_bg.send(true);
        background.extend(app.reloader.take_tasks());
        for task in background {
            let _ = task.await;
        }
        let _ = admin_task.await;
        let _ = tokio::task::spawn_blocking(move || {
            proxy.observers().flush(Duration::from_secs(2));
        })
        .await;
        tracing::info!("jwtgate stopped");
    }
}

/// Logs, at info and at most every 10 s, how many requests were rejected for each reason:
/// per-rejection lines are debug only, so a flood of bad tokens cannot flood the logs.
async fn rejection_summary(
    metrics: Arc<proxy::ProxyMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Vec<u64> = metrics
        .rejected_by_reason()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REJECTION_SUMMARY_EVERY) => {}
            _ = stop.changed() => return,
        }
        let mut summary = String::new();
        for (i, (r, now)) in metrics.rejected_by_reason().into_iter().enumerate() {
            let delta = now.saturating_sub(last[i]);
            last[i] = now;
            if delta > 0 {
                if !summary.is_empty() {
                    summary.push(' ');
                }
                summary.push_str(&format!("{}={delta}", r.label()));
            }
        }
        if !summary.is_empty() {
            tracing::info!(window_s = REJECTION_SUMMARY_EVERY.as_secs(), %summary, "rejections");
        }
    }
}
