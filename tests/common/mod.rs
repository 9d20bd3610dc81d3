//! Test harness: real servers on 127.0.0.1:0.
//! - `KeyServer`: a JWKS endpoint the test can rotate, take down, and whose hits it counts;
//! - `Upstream`: records every request that reached it (headers, body, trailers);
//! - `Harness`: jwtgate itself, built in-process from a TOML config, with a shutdown trigger.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jwtgate::App;
use jwtgate::auth::Clock;
use jwtgate::config::Config;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const AUD: &str = "api://orders";

type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// Serves `handler` (HTTP/1.1 and h2) on a fresh loopback port.
pub async fn serve(handler: Handler) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                .await;
            });
        }
    });
    (addr, task)
}

fn json_resp(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

/// A JWKS endpoint (and OIDC discovery document) under test control.
pub struct KeyServer {
    pub addr: SocketAddr,
    state: Arc<KeyServerState>,
}

struct KeyServerState {
    jwks: Mutex<Value>,
    hits: AtomicUsize,
    down: AtomicBool,
    issuer: Mutex<String>,
    etag: Mutex<Option<String>>,
    conditional_hits: AtomicUsize,
}

impl KeyServer {
    pub async fn start(jwks: Value) -> KeyServer {
        let state = Arc::new(KeyServerState {
            jwks: Mutex::new(jwks),
            hits: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            issuer: Mutex::new(String::new()),
            etag: Mutex::new(None),
            conditional_hits: AtomicUsize::new(0),
        });
        let s = state.clone();
        let (addr, _task) = serve(Arc::new(move |req: Request<Incoming>| {
            let s = s.clone();
            Box::pin(async move {
                if req.uri().path() == "/.well-known/openid-configuration" {
                    let issuer = s.issuer.lock().unwrap().clone();
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    return json_resp(
                        StatusCode::OK,
                        &json!({"issuer": issuer, "jwks_uri": format!("http://{host}/jwks")}),
                    );
                }
                s.hits.fetch_add(1, Ordering::SeqCst);
                if s.down.load(Ordering::SeqCst) {
                    return json_resp(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}));
                }
                let etag = s.etag.lock().unwrap().clone();
                if let Some(tag) = &etag {
                    let inm = req
                        .headers()
                        .get("if-none-match")
                        .and_then(|v| v.to_str().ok());
                    if inm == Some(tag.as_str()) {
                        s.conditional_hits.fetch_add(1, Ordering::SeqCst);
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NOT_MODIFIED;
                        return r;
                    }
                }
                let body = s.jwks.lock().unwrap().clone();
                let mut r = json_resp(StatusCode::OK, &body);
                if let Some(tag) = etag {
                    r.headers_mut().insert("etag", tag.parse().unwrap());
                }
                r
            })
        }))
        .await;
        KeyServer { addr, state }
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    pub fn set_issuer(&self, issuer: &str) {
        *self.state.issuer.lock().unwrap() = issuer.to_owned();
    }

    /// Serve this ETag and answer a matching If-None-Match with 304.
    pub fn set_etag(&self, tag: &str) {
        *self.state.etag.lock().unwrap() = Some(tag.to_owned());
    }

    /// 304 answers so far.
    pub fn not_modified_hits(&self) -> usize {
        self.state.conditional_hits.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// JWKS requests so far (discovery not counted).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

/// What reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// An upstream that records every request and answers 200 `ok` (after `delay`, if set).
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    delay_ms: Arc<AtomicUsize>,
    /// Signalled when the first body chunk of a request arrives (streaming test).
    pub first_chunk: Arc<tokio::sync::Notify>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let first_chunk = Arc::new(tokio::sync::Notify::new());
        let (s, d, f) = (seen.clone(), delay_ms.clone(), first_chunk.clone());
        let (addr, _task) = serve(Arc::new(move |req: Request<Incoming>| {
            let (s, d, f) = (s.clone(), d.clone(), f.clone());
            Box::pin(async move {
                let (parts, mut body) = req.into_parts();
                let mut data = Vec::new();
                let mut trailers = None;
                while let Some(Ok(frame)) = body.frame().await {
                    match frame.into_data() {
                        Ok(chunk) => {
                            if data.is_empty() && !chunk.is_empty() {
                                f.notify_one();
                            }
                            data.extend_from_slice(&chunk);
                        }
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                }
                s.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    version: parts.version,
                    headers: parts.headers,
                    body: Bytes::from(data),
                    trailers,
                });
                let delay = d.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                }
                Response::new(Full::new(Bytes::from_static(b"ok")))
            })
        }))
        .await;
        Upstream {
            addr,
            seen,
            delay_ms,
            first_chunk,
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms
            .store(d.as_millis() as usize, Ordering::SeqCst);
    }
}

/// A clock the test sets.
pub struct ManualClock(pub std::sync::atomic::AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// jwtgate under test, with its key server and upstream.
pub struct Harness {
    pub keys: Arc<KeyServer>,
    pub upstream: Upstream,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub issuer: String,
    pub http: reqwest::Client,
    /// The config jwtgate runs with, as TOML (`jwtgate inspect` reads the same file).
    pub config_text: String,
    /// Applies a new config to the running app, as SIGHUP does.
    pub reloader: Arc<jwtgate::reload::Reloader>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    /// Extra TOML lines inside the `[[issuers]]` table.
    pub issuer_extra: String,
    /// Extra TOML appended after everything (sections).
    pub extra: String,
    /// Extra TOML lines inside `[server]`.
    pub server_extra: String,
    /// Extra TOML lines inside `[upstream]` (`protocol = "h2c"`).
    pub upstream_extra: String,
    pub upstream_url: Option<String>,
    pub clock: Option<Arc<dyn Clock>>,
    pub wait_ready: bool,
    /// Start with the key server answering 503.
    pub keys_down: bool,
    /// Reuse this key server (same issuer URL), e.g. to restart jwtgate.
    pub key_server: Option<Arc<KeyServer>>,
    pub shutdown_delay_s: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            issuer_extra: String::new(),
            extra: String::new(),
            server_extra: String::new(),
            upstream_extra: String::new(),
            upstream_url: None,
            clock: None,
            wait_ready: true,
            keys_down: false,
            key_server: None,
            shutdown_delay_s: 0,
        }
    }
}

impl Harness {
    pub async fn start(jwks: Value) -> Harness {
        Harness::start_with(jwks, Options::default()).await
    }

    pub async fn start_with(jwks: Value, opts: Options) -> Harness {
        let keys = match &opts.key_server {
            Some(k) => k.clone(),
            None => Arc::new(KeyServer::start(jwks).await),
        };
        keys.set_down(opts.keys_down);
        let upstream = Upstream::start().await;
        let issuer = format!("http://{}/oauth2/token", keys.addr);
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_delay_s = {shutdown_delay}
{server_extra}
[upstream]
url = "{upstream}"
request_timeout_ms = 2000
{upstream_extra}
[[issuers]]
name = "test-km"
issuer = "{issuer}"
audiences = ["{AUD}"]
algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
leeway_s = 30
{issuer_extra}
{keys_line}
[jwks]
min_refetch_interval_s = 2
{extra}
"#,
            upstream = opts
                .upstream_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", upstream.addr)),
            issuer_extra = opts.issuer_extra,
            keys_line = if opts.issuer_extra.contains("discovery_url") {
                String::new()
            } else {
                format!("jwks_uri = \"{}\"", keys.jwks_uri())
            },
            extra = opts.extra,
            server_extra = opts.server_extra,
            upstream_extra = opts.upstream_extra,
            shutdown_delay = opts.shutdown_delay_s,
        );
        let config =
            Config::from_toml_str(&text, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Harness::launch(keys, upstream, issuer, config, text, opts).await
    }

    async fn launch(
        keys: Arc<KeyServer>,
        upstream: Upstream,
        issuer: String,
        config: Config,
        config_text: String,
        opts: Options,
    ) -> Harness {
        let clock = opts
            .clock
            .unwrap_or_else(|| Arc::new(jwtgate::clock::SystemClock));
        let app = App::build_with_clock(config, clock)
            .unwrap()
            .bind()
            .await
            .unwrap();
        let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
        let reloader = app.reloader();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async move {
                let _ = rx.await;
            })
            .await;
        });
        let h = Harness {
            keys,
            upstream,
            proxy,
            admin,
            issuer,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            config_text,
            reloader,
            shutdown: Some(tx),
            task: Some(task),
        };
        if opts.wait_ready {
            h.wait_ready().await;
        }
        h
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.readyz().await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("jwtgate did not become ready");
    }

    pub async fn readyz(&self) -> u16 {
        self.http
            .get(format!("http://{}/readyz", self.admin))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Starts the shutdown sequence (what SIGTERM does in `main`).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Standard valid claims for this harness's issuer.
    pub fn claims(&self) -> Value {
        let n = now();
        json!({
            "iss": self.issuer, "sub": "alice", "aud": AUD, "client_id": "app-1",
            "iat": n - 10, "nbf": n - 10, "exp": n + 600, "jti": format!("jti-{n}-{}", rand_u64()),
        })
    }

    pub async fn get(&self, token: &str) -> reqwest::Response {
        self.http
            .get(self.url("/api/orders?x=1"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, token: &str) -> u16 {
        self.get(token).await.status().as_u16()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one series, e.g. `jwtgate_rejections_total{reason="expired"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The sum of the series a selector names in a Prometheus text exposition:
/// `jwtgate_rejections_total{reason="expired"}` adds up every series of the family whose
/// labels include `reason="expired"` (whatever its `route`). A family that is not there
/// fails the test: a renamed metric must not pass every `== 0` assertion. A series of a
/// present family that has not counted yet (rejection series appear on first use) is 0.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let (family, wanted) = match series.split_once('{') {
        Some((f, labels)) => (f, labels.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|l| !l.is_empty()).collect();
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("# TYPE {family} "))),
        "no family {family} in /metrics"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let (n, labels) = match name.split_once('{') {
                Some((n, labels)) => (n, labels.trim_end_matches('}')),
                None => (name, ""),
            };
            let have: Vec<&str> = labels.split(',').collect();
            (n == family && wanted.iter().all(|w| have.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A JWKS of these keys, each with `alg` when given.
pub fn jwks_of(keys: &[(&DevKey, Option<jwtgate::config::Algorithm>)]) -> Value {
    json!({"keys": keys.iter().map(|(k, a)| k.public_jwk(*a)).collect::<Vec<_>>()})
}

/// A revocation feed under test control: the native format (`?since=` cursor) on
/// `/revocations`, and WSO2's `/internal/data/v1/revokedjwt` (Basic admin:admin).
pub struct Feed {
    pub addr: SocketAddr,
    state: Arc<FeedState>,
}

struct FeedState {
    records: Mutex<Vec<Value>>,
    wso2: Mutex<Value>,
    down: AtomicBool,
    reset_next: AtomicBool,
    hits: AtomicUsize,
    unauthorized: AtomicUsize,
}

impl Feed {
    pub async fn start() -> Feed {
        let state = Arc::new(FeedState {
            records: Mutex::new(Vec::new()),
            wso2: Mutex::new(json!({})),
            down: AtomicBool::new(false),
            reset_next: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
            unauthorized: AtomicUsize::new(0),
        });
        let s = state.clone();
        let (addr, _task) = serve(Arc::new(move |req: Request<Incoming>| {
            let s = s.clone();
            Box::pin(async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                if s.down.load(Ordering::SeqCst) {
                    return json_resp(StatusCode::SERVICE_UNAVAILABLE, &json!({}));
                }
                if req.uri().path() == "/internal/data/v1/revokedjwt" {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok());
                    // admin:admin
                    if auth != Some("Basic YWRtaW46YWRtaW4=") {
                        s.unauthorized.fetch_add(1, Ordering::SeqCst);
                        return json_resp(StatusCode::UNAUTHORIZED, &json!({}));
                    }
                    return json_resp(StatusCode::OK, &s.wso2.lock().unwrap().clone());
                }
                let since: usize = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("since="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let records = s.records.lock().unwrap().clone();
                let reset = s.reset_next.swap(false, Ordering::SeqCst);
                let from = if reset { 0 } else { since.min(records.len()) };
                json_resp(
                    StatusCode::OK,
                    &json!({
                        "cursor": records.len().to_string(),
                        "reset": reset,
                        "revocations": records[from..].to_vec(),
                    }),
                )
            })
        }))
        .await;
        Feed { addr, state }
    }

    pub fn native_url(&self) -> String {
        format!("http://{}/revocations", self.addr)
    }

    pub fn wso2_url(&self) -> String {
        format!("http://{}/internal/data/v1/revokedjwt", self.addr)
    }

    pub fn append(&self, record: Value) {
        self.state.records.lock().unwrap().push(record);
    }

    pub fn set_wso2(&self, body: Value) {
        *self.state.wso2.lock().unwrap() = body;
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// The next page answers `reset: true` with everything from the start.
    pub fn reset_next(&self) {
        self.state.reset_next.store(true, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn unauthorized(&self) -> usize {
        self.state.unauthorized.load(Ordering::SeqCst)
    }
}

/// A fresh path for a snapshot file (removed by the caller's `TempDir` drop).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("jwtgate-test-{}", rand_u64()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const PUSH_TOKEN: &str = "push-token-0123456789";

impl Harness {
    /// `POST /revocations` with the given bearer; returns the status.
    pub async fn push_with(&self, bearer: &str, body: Value) -> u16 {
        self.http
            .post(format!("http://{}/revocations", self.admin))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn push(&self, records: Value) -> u16 {
        self.push_with(PUSH_TOKEN, json!({ "revocations": records }))
            .await
    }

    /// Waits until `f` holds (polling every 20 ms, at most `secs`).
    pub async fn eventually<F, Fut>(&self, secs: u64, mut f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if f().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Reads one response head (up to the blank line) from a raw connection.
pub async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(tcp, &mut byte),
        )
        .await
        .unwrap()
        .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTP/2 (prior knowledge) client connection to `addr`; the connection task is
/// returned so a test can see when the server closes it.
pub async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

/// A `jwtgate serve` child process on ports the OS chose: `--listen` and `--admin-listen`
/// are `127.0.0.1:0` and the addresses are read back from its "jwtgate serving" log line.
/// (A port found free and then handed to the child can be taken in between by any other
/// test's outgoing connection; this cannot.) Killed on drop.
pub struct Spawned {
    pub child: std::process::Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Its stderr (JSON log lines) after the "jwtgate serving" line.
    pub logs: Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Spawned {
    /// Spawns `command` (the caller's `serve --config …` and flags) with both listeners on
    /// `127.0.0.1:0` and JSON logs; panics with the log if it does not start in 20 s.
    pub fn spawn(command: std::process::Command) -> Spawned {
        Spawned::spawn_with(command, std::process::Stdio::null())
    }

    /// [`Spawned::spawn`] with the child's stdout (the access log) sent to `stdout`.
    pub fn spawn_with(mut command: std::process::Command, stdout: std::process::Stdio) -> Spawned {
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn jwtgate");
        let logs = lines_of(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = logs.recv_timeout(left) else {
                break;
            };
            let fields = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(|v| v["fields"]["message"] == "jwtgate serving")
                .map(|v| v["fields"].clone());
            if let Some(f) = fields {
                let addr = |k: &str| f[k].as_str().and_then(|a| a.parse().ok());
                let (Some(proxy), Some(admin)) = (addr("listen"), addr("admin")) else {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("unreadable addresses in {line}");
                };
                return Spawned {
                    child,
                    proxy,
                    admin,
                    logs: Mutex::new(logs),
                };
            }
            seen.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("jwtgate did not start serving:\n{}", seen.join("\n"));
    }

    /// Waits (at most 20 s) for `/readyz` to answer 200; panics with its last answer and
    /// the log otherwise.
    pub async fn ready(&self) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut last = String::new();
        for _ in 0..400 {
            let url = format!("http://{}/readyz", self.admin);
            match http.get(url).send().await {
                Ok(r) if r.status() == 200 => return,
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs = self.logs.lock().unwrap().try_iter().collect::<Vec<_>>();
        panic!(
            "jwtgate did not become ready ({last}):\n{}",
            logs.join("\n")
        );
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `from` produces, each sent on the channel as it is read (by a thread that ends
/// at EOF).
pub fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
