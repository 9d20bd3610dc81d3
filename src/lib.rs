//! jwtgate: a reverse-proxy sidecar that validates every bearer JWT itself and forwards
//! only valid requests.
//!
//! Flow of one request: accept → extract token → verified-token cache hit? (else: key for
//! iss+kid → signature → claims → cache) → forward with the body streamed → response.
//! Rejections are answered before any upstream I/O. The key manager is contacted only in the
//! background (JWKS refresh), except by a token with an unknown `kid`, which waits for one
//! shared, rate-limited refetch.
//!
//! `App::bind(config)` binds both listeners (so tests learn the ports), `App::run(shutdown)`
//! serves until `shutdown` resolves, then runs the shutdown sequence: not ready at once,
//! serve for `shutdown_delay`, close the listener, drain for at most `drain_timeout`.

pub mod admin;
pub mod auth;
pub mod config;
pub mod devkm;
pub mod inject;
pub mod jwks;
pub mod metrics;
pub mod proxy;
pub mod revocation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{Authenticator, Clock, Reason, SystemClock};
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
}

pub struct App {
    config: Arc<Config>,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// How often the rejection summary is logged at info.
const REJECTION_SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl App {
    /// Binds the proxy and admin listeners. Nothing is served until [`App::run`].
    pub async fn bind(config: Config) -> Result<App, StartError> {
        let proxy_listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "server.listen",
                addr: config.server.listen,
                source,
            })?;
        let admin_listener = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "server.admin_listen",
                addr: config.server.admin_listen,
                source,
            })?;
        Ok(App {
            config: Arc::new(config),
            proxy_listener,
            admin_listener,
            clock: Arc::new(SystemClock),
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Replaces the clock used for token time checks (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> App {
        self.clock = clock;
        self
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.server.admin_listen)
    }

    /// Serves until `shutdown` resolves, then shuts down in order (see the module docs).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let App {
            config,
            proxy_listener,
            admin_listener,
            clock,
            metrics,
        } = self;

        let (listen, admin) = (proxy_listener.local_addr(), admin_listener.local_addr());
        tracing::info!(?listen, ?admin, "jwtgate serving");
        let keys = config
            .issuers
            .iter()
            .map(|i| {
                IssuerKeys::new(i, &config.jwks, metrics.issuer(&i.name))
                    .map(Arc::new)
                    .map_err(StartError::Issuer)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Revocation: the snapshot is restored here, before the first request is served.
        let revocation = config.revocation.clone().map(|cfg| {
            let leeway = config
                .issuers
                .iter()
                .map(|i| i.leeway_s as i64)
                .max()
                .unwrap_or(0);
            Arc::new(Revocation::open(
                cfg,
                clock.clone(),
                metrics.clone(),
                leeway,
            ))
        });

        let (stop_bg, stop_rx) = tokio::sync::watch::channel(false);
        let mut background: Vec<_> = keys
            .iter()
            .map(|k| k.clone().spawn_refresh(stop_rx.clone()))
            .collect();
        background.push(tokio::spawn(rejection_summary(
            metrics.clone(),
            stop_rx.clone(),
        )));
        if let Some(rev) = &revocation {
            background.extend(rev.spawn_tasks(stop_rx.clone()));
        }

        let auth = Arc::new(Authenticator::new(
            &config,
            &keys,
            revocation.clone(),
            clock,
            metrics.clone(),
        ));
        let lifecycle = Arc::new(admin::Lifecycle::new(
            keys.clone(),
            revocation.clone(),
            metrics.clone(),
        ));
        let admin = Arc::new(admin::Admin {
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            issuers: keys.clone(),
            revocation: revocation.clone(),
        });
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin, stop_rx.clone()));
        let proxy = Arc::new(proxy::Proxy::new(
            &config,
            auth,
            revocation.clone(),
            metrics.clone(),
        ));

        let delay = config.server.shutdown_delay;
        let stop_accepting = {
            let lifecycle = lifecycle.clone();
            async move {
                shutdown.await;
                lifecycle.begin_shutdown();
                tracing::info!(
                    delay_s = delay.as_secs(),
                    "shutdown: not ready; still serving for shutdown_delay_s"
                );
                tokio::time::sleep(delay).await;
            }
        };
        proxy.serve(proxy_listener, &config, stop_accepting).await;

        let _ = stop_bg.send(true);
        for task in background {
            let _ = task.await;
        }
        let _ = admin_task.await;
        tracing::info!("jwtgate stopped");
        Ok(())
    }
}

/// Logs, at info and at most every 10 s, how many requests were rejected for each reason:
/// per-rejection lines are debug only, so a flood of bad tokens cannot flood the logs.
async fn rejection_summary(metrics: Arc<Metrics>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last: Vec<u64> = Reason::ALL
        .iter()
        .map(|r| metrics.rejection_count(*r))
        .collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REJECTION_SUMMARY_EVERY) => {}
            _ = stop.changed() => return,
        }
        let mut summary = String::new();
        for (i, r) in Reason::ALL.iter().enumerate() {
            let now = metrics.rejection_count(*r);
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
