//! The poll source: the native feed (`GET {feed_url}?since={cursor}`) or the WSO2 control
//! plane's `/internal/data/v1/revokedjwt`. Failures back off with jitter and never drop
//! what is held. Invalid rows are skipped and counted: one bad row upstream must not block
//! every other revocation.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Revocation;
use super::RevocationSource;
use super::record::{self, BodyError, FeedPage};
use crate::config::{FeedConfig, FeedFormat};

/// Largest feed body accepted (a full WSO2 list or a native reset can be large).
const MAX_FEED_BYTES: usize = 256 * 1024 * 1024;
/// Pages fetched back to back while a native feed keeps returning records.
const MAX_PAGES_PER_POLL: usize = 100;

pub struct Poller {
    rev: Arc<Revocation>,
    /// The feed as configured when the poller was made (a reload that changes it starts
    /// another poller).
    feed: FeedConfig,
    client: reqwest::Client,
}

impl Poller {
    pub fn new(rev: Arc<Revocation>, feed: FeedConfig) -> Result<Poller, String> {
        let client = crate::fetch::client(feed.ca_file.as_deref(), Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        Ok(Poller { rev, feed, client })
    }

    fn source(&self) -> RevocationSource {
        match self.feed.format {
            FeedFormat::Wso2 => RevocationSource::Wso2Poll,
            FeedFormat::Jwtgate => RevocationSource::NativePoll,
        }
    }

    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = self.feed.poll_interval;
        let mut failures: u32 = 0;
        loop {
            let source = self.source();
            match self.poll_once().await {
                Ok(applied) => {
                    failures = 0;
                    self.rev.poll_succeeded(source);
                    tracing::debug!(applied, "revocation feed polled");
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.rev.poll_failed(source);
                    tracing::warn!(%error, failures, "revocation feed poll failed; keeping every record held");
                }
            }
            let delay =
                crate::fetch::backoff(failures, interval, interval.max(Duration::from_secs(60)));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One poll (several pages for a native feed that has more). Returns records applied.
    pub async fn poll_once(&self) -> Result<usize, String> {
        let feed = &self.feed;
        match feed.format {
            FeedFormat::Wso2 => {
                let body = self.get(feed.url.clone()).await?;
                let body: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("feed body is not JSON ({e})"))?;
                let (records, mut errors) = record::wso2_feed(&body)?;
                let (records, future) = self.rev.screen_all(records);
                errors.extend(future);
                self.report(RevocationSource::Wso2Poll, &errors);
                self.rev.accept(RevocationSource::Wso2Poll, records).await
            }
            FeedFormat::Jwtgate => {
                let mut applied = 0;
                for _ in 0..MAX_PAGES_PER_POLL {
                    let mut url = feed.url.clone();
                    if let Some(c) = self.rev.cursor() {
                        url.query_pairs_mut().append_pair("since", &c);
                    }
                    let body = self.get(url).await?;
                    let page: FeedPage = record::parse_body(&body).map_err(|e| match e {
                        BodyError::NotJson(e) => format!("feed body is not JSON ({e})"),
                        BodyError::Shape(e) => format!("feed page unreadable ({e})"),
                    })?;
                    if page.reset {
                        tracing::info!("revocation feed reset: merging everything again");
                    }
                    let mut records = Vec::with_capacity(page.revocations.len());
                    let mut errors = Vec::new();
                    for (i, v) in page.revocations.iter().enumerate() {
                        match record::native_raw(i, v).and_then(|r| {
                            self.rev.screen(i, &r)?;
                            Ok(r)
                        }) {
                            Ok(r) => records.push(r),
                            Err(e) => errors.push(e),
                        }
                    }
                    self.report(RevocationSource::NativePoll, &errors);
                    applied += self
                        .rev
                        .accept(RevocationSource::NativePoll, records)
                        .await?;
                    let advanced = page.cursor.is_some() && page.cursor != self.rev.cursor();
                    if page.cursor.is_some() {
                        self.rev.set_cursor(page.cursor);
                    }
                    if page.revocations.is_empty() || !advanced {
                        break;
                    }
                }
                Ok(applied)
            }
        }
    }

    fn report(&self, source: RevocationSource, errors: &[record::RecordError]) {
        if errors.is_empty() {
            return;
        }
        self.rev.rejected(source, errors.len() as u64);
        tracing::warn!(
            skipped = errors.len(),
            first = %errors[0],
            "revocation feed rows skipped (nothing stored for them)"
        );
    }

    /// The body of one feed response (at most `MAX_FEED_BYTES`).
    async fn get(&self, url: reqwest::Url) -> Result<Vec<u8>, String> {
        let feed = &self.feed;
        let mut req = self.client.get(url);
        if let (Some(u), Some(p)) = (&feed.username, &feed.password) {
            req = req.basic_auth(u, Some(p.expose()));
        }
        let resp = crate::fetch::send(req, &[])
            .await
            .map_err(|e| format!("feed: {e}"))?;
        let body = crate::fetch::read_capped(resp, MAX_FEED_BYTES)
            .await
            .map_err(|e| format!("feed: {e}"))?;
        Ok(body)
    }
}
