//! The fleet fan-out bench behind `bench/stream_fanout.sh` (BENCHMARKS.md, "Fleet"): one
//! nats-server, the relay and 20 real `jwtgate serve --threads 1` processes, plus N − 20
//! followers in this process running jwtgate's own follower code (one NATS connection
//! each). 300 revocations at 2 per second; a 3 s SIGSTOP of nats-server half-way.
//!
//! ```sh
//! cargo run --release --example fanout -- --n 1000 --jwtgate target/release/jwtgate
//! cargo run --release --example fanout -- --km-load --jwtgate target/release/jwtgate
//! ```
//!
//! Not a test: it measures, on an otherwise idle machine, and prints one JSON object.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jwtgate::config::{OnStale, RevocationConfig, StreamConfig};
use jwtgate::devkm::DevKey;
use jwtgate::fleet::follow::{Follower, StreamMetrics};
use jwtgate::metrics::Metrics;
use jwtgate::revocation::Revocation;
use serde_json::{Value, json};

const REAL: usize = 20;
const PUSH_TOKEN: &str = "fanout-push-token-0123456789";
const AUD: &str = "api://fanout";

struct Args {
    n: usize,
    jwtgate: String,
    revocations: usize,
    km_load: bool,
}

fn args() -> Args {
    let mut a = Args {
        n: 100,
        jwtgate: "target/release/jwtgate".into(),
        revocations: 300,
        km_load: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--n" => a.n = it.next().and_then(|v| v.parse().ok()).expect("--n N"),
            "--jwtgate" => a.jwtgate = it.next().expect("--jwtgate PATH"),
            "--revocations" => {
                a.revocations = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--revocations R")
            }
            "--km-load" => a.km_load = true,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.n >= REAL, "--n must be at least {REAL}");
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_unix() -> i64 {
    jwtgate::clock::unix_now()
}

async fn wait_ok(http: &reqwest::Client, url: &str, secs: u64) {
    let t0 = Instant::now();
    while !http
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{url} never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The key server and the upstream the real sidecars use.
struct World {
    key: DevKey,
    issuer: String,
    jwks_uri: String,
    upstream: String,
    dir: std::path::PathBuf,
    http: reqwest::Client,
}

async fn world() -> World {
    let key = DevKey::p256("fanout");
    let jwks = json!({"keys": [key.public_jwk(None)]});
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let km = l.local_addr().unwrap();
    jwtgate::devkm::serve_fn(l, move |_req| {
        jwtgate::devkm::json_response(http::StatusCode::OK, &jwks)
    });
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", up.local_addr().unwrap());
    jwtgate::devkm::echo_upstream(up, "x-jwt-payload");
    let dir = std::env::temp_dir().join(format!("jwtgate-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    World {
        key,
        issuer: format!("http://{km}/oauth2/token"),
        jwks_uri: format!("http://{km}/jwks"),
        upstream,
        dir,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

/// One real sidecar: `jwtgate serve --threads 1` with `revocation` as its `[revocation]`.
struct Sidecar {
    _proc: Proc,
    proxy: String,
    admin: String,
}

async fn sidecars(w: &World, bin: &str, revocation: &str) -> Vec<Sidecar> {
    let mut out = Vec::new();
    // Every port chosen while the others are still held: no two alike.
    let held: Vec<std::net::TcpListener> = (0..2 * REAL)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(held);
    for i in 0..REAL {
        let (p, a) = (ports[2 * i], ports[2 * i + 1]);
        let path = w.dir.join(format!("sidecar-{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{p}\"\nadmin_listen = \"127.0.0.1:{a}\"\nshutdown_delay_s = 0\n[upstream]\nurl = \"{}\"\n[[issuers]]\nname = \"km\"\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"ES256\"]\n[revocation]\nmax_token_lifetime_s = 3600\npush_token = \"{PUSH_TOKEN}\"\n{revocation}\n",
                w.upstream, w.issuer, w.jwks_uri
            ),
        )
        .unwrap();
        let log = std::fs::File::create(w.dir.join(format!("sidecar-{i}.log"))).unwrap();
        let child = Command::new(bin)
            .args([
                "--log-format",
                "text",
                "serve",
                "--threads",
                "1",
                "--config",
            ])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        out.push(Sidecar {
            _proc: Proc(child),
            proxy: format!("http://127.0.0.1:{p}"),
            admin: format!("http://127.0.0.1:{a}"),
        });
    }
    for (i, s) in out.iter().enumerate() {
        let ready = format!("{}/readyz", s.admin);
        let t0 = Instant::now();
        while !w
            .http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if t0.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(w.dir.join(format!("sidecar-{i}.log")));
                panic!("sidecar {i} never ready:\n{}", log.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

fn token(w: &World, jti: &str) -> String {
    let n = now_unix();
    w.key.token(&json!({
        "iss": w.issuer, "sub": "fanout", "aud": AUD, "iat": n - 5, "nbf": n - 5,
        "exp": n + 3000, "jti": jti,
    }))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": v.len(),
        "p50_ms": pct(&v, 0.5),
        "p99_ms": pct(&v, 0.99),
        "max_ms": v.last().copied().unwrap_or(f64::NAN),
    })
}

/// nats-server's monitoring endpoint.
async fn monitor(http: &reqwest::Client, port: u16, path: &str) -> Value {
    match http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        if a.km_load {
            km_load(&a).await
        } else {
            stream(&a).await
        }
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// The in-process followers: jwtgate's follower code, one NATS connection each.
struct Followers {
    seqs: Vec<StreamMetrics>,
    metrics: Vec<Metrics>,
    revs: Vec<Arc<Revocation>>,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn followers(n: usize, url: &str) -> (Followers, f64) {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stream = StreamConfig {
        urls: vec![url.to_owned()],
        name: jwtgate::config::DEFAULT_STREAM.to_owned(),
        creds_file: None,
        token: None,
        username: None,
        password: None,
        ca_file: None,
    };
    let mut f = Followers {
        seqs: Vec::with_capacity(n),
        metrics: Vec::with_capacity(n),
        revs: Vec::with_capacity(n),
        stop,
    };
    let t0 = Instant::now();
    for i in 0..n {
        let metrics = Metrics::new();
        let rev = Arc::new(Revocation::open(
            RevocationConfig {
                feed: None,
                snapshot_path: None,
                push_token: None,
                notify: None,
                max_token_lifetime_s: 3600,
                max_sync_age: Duration::from_secs(300),
                on_stale: OnStale::Reject,
                require_jti: true,
                stream: Some(stream.clone()),
            },
            Arc::new(jwtgate::clock::SystemClock),
            &metrics,
            30,
        ));
        let sm = StreamMetrics::register(&metrics);
        let follower = Follower::new(rev.clone(), stream.clone(), sm.clone(), 30);
        tokio::spawn(follower.run(stop_rx.clone()));
        f.seqs.push(sm);
        f.metrics.push(metrics);
        f.revs.push(rev);
        // Connect in waves, as pods start: not 10,000 handshakes in the same millisecond.
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    while f.revs.iter().any(|r| !r.is_ready()) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "followers never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (f, t0.elapsed().as_secs_f64())
}

/// Catch-ups by reason, summed over every follower.
fn gaps(metrics: &[Metrics]) -> Value {
    let mut by = std::collections::BTreeMap::<String, f64>::new();
    for m in metrics {
        for l in m.render().lines() {
            if let Some(rest) = l.strip_prefix("jwtgate_revocation_stream_gaps_total{reason=\"")
                && let Some((reason, v)) = rest.split_once("\"} ")
            {
                *by.entry(reason.to_owned()).or_default() += v.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    json!(by)
}

/// Per follower, when (ms since `t0`) it first held each revocation: sampled every 2 ms.
fn sampler(
    seqs: Vec<StreamMetrics>,
    t0: Instant,
    total: usize,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<f32>>> {
    std::thread::spawn(move || {
        let mut at = vec![vec![f32::NAN; total]; seqs.len()];
        let mut next = vec![0usize; seqs.len()];
        while !done.load(Ordering::Acquire) {
            let now = t0.elapsed().as_secs_f64() as f32 * 1000.0;
            for (f, s) in seqs.iter().enumerate() {
                let seq = s.sequence() as usize;
                while next[f] < total && seq > next[f] {
                    at[f][next[f]] = now;
                    next[f] += 1;
                }
            }
            if next.iter().all(|n| *n >= total) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        at
    })
}

/// One keep-alive probe per real sidecar, repeating the most recently revoked token — and
/// any earlier one it has not yet seen refused, so a slow revocation is not lost from the
/// figures when the next one is pushed: when (ms since `t0`) each sidecar first refused
/// each revocation's token.
fn probes(
    sidecars: &[Sidecar],
    tokens: Arc<Vec<Arc<String>>>,
    pushed: Arc<std::sync::atomic::AtomicUsize>,
    t0: Instant,
    done: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<f32>>> {
    sidecars
        .iter()
        .map(|s| {
            let url = format!("{}/orders", s.proxy);
            let (tokens, pushed, done) = (tokens.clone(), pushed.clone(), done.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut refused = vec![f32::NAN; tokens.len()];
                let mut first = 0;
                while !done.load(Ordering::Acquire) {
                    let upto = pushed.load(Ordering::Acquire);
                    for i in (first..upto).rev() {
                        if !refused[i].is_nan() {
                            continue;
                        }
                        if let Ok(r) = http.get(&url).bearer_auth(tokens[i].as_str()).send().await {
                            if r.status() == 401 {
                                refused[i] = t0.elapsed().as_secs_f64() as f32 * 1000.0;
                            }
                            let _ = r.bytes().await;
                        }
                    }
                    while first < upto && !refused[first].is_nan() {
                        first += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                refused
            })
        })
        .collect()
}

// long-function: one bench run, phase after phase (start, bootstrap, baseline, 300
// revocations with the incident in the middle, collection); split, it reads worse.
async fn stream(a: &Args) -> Value {
    let w = world().await;
    let (port, mport) = (free_port(), free_port());
    let nats = Proc(
        Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &mport.to_string(),
                "-sd",
            ])
            .arg(w.dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    let nats_pid = nats.0.id();
    let url = format!("nats://127.0.0.1:{port}");
    wait_ok(&w.http, &format!("http://127.0.0.1:{mport}/healthz"), 10).await;
    let relay_port = free_port();
    let relay_cfg = w.dir.join("relay.toml");
    std::fs::write(
        &relay_cfg,
        format!("[relay]\nlisten = \"127.0.0.1:{relay_port}\"\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\n[relay.stream]\nurls = [\"{url}\"]\n"),
    )
    .unwrap();
    let _relay = Proc(
        Command::new(&a.jwtgate)
            .args(["relay", "--config"])
            .arg(&relay_cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let relay = format!("http://127.0.0.1:{relay_port}");
    wait_ok(&w.http, &format!("{relay}/readyz"), 30).await;
    let real = sidecars(
        &w,
        &a.jwtgate,
        &format!("[revocation.stream]\nurls = [\"{url}\"]"),
    )
    .await;
    let (fleet, bootstrap_s) = followers(a.n - REAL, &url).await;
    let jsz = monitor(&w.http, mport, "/jsz").await;
    let api0 = jsz["api"]["total"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let api_quiet = monitor(&w.http, mport, "/jsz").await["api"]["total"]
        .as_u64()
        .unwrap_or(0)
        - api0;
    let baseline_per_s = api_quiet as f64 / 10.0;

    let r = a.revocations;
    let tokens: Arc<Vec<Arc<String>>> = Arc::new(
        (0..r)
            .map(|i| Arc::new(token(&w, &format!("fanout-{i}"))))
            .collect(),
    );
    let t0 = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let pushed_n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sample = sampler(fleet.seqs.clone(), t0, r, done.clone());
    let probe = probes(&real, tokens.clone(), pushed_n.clone(), t0, done.clone());
    let pushed_at: Arc<Vec<AtomicU32>> = Arc::new((0..r).map(|_| AtomicU32::new(0)).collect());
    let attempts = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(nats_pid);
    let msgs0 = monitor(&w.http, mport, "/varz").await["out_msgs"]
        .as_u64()
        .unwrap_or(0);
    let mut consumers_seen = Vec::new();
    let mut incident = None;
    let mut pushes = Vec::new();
    for i in 0..r {
        let due = t0 + Duration::from_millis(500 * i as u64);
        tokio::time::sleep_until(due.into()).await;
        if i % 10 == 0 {
            consumers_seen.push(
                monitor(&w.http, mport, "/jsz").await["consumers"]
                    .as_u64()
                    .unwrap_or(0),
            );
        }
        if i == r / 2 {
            let api = monitor(&w.http, mport, "/jsz").await["api"]["total"]
                .as_u64()
                .unwrap_or(0);
            signal(nats_pid, "-STOP");
            let stopped = t0.elapsed();
            incident = Some((stopped, api));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                signal(nats_pid, "-CONT");
            });
        }
        pushed_at[i].store(
            (t0.elapsed().as_secs_f64() * 1000.0) as u32,
            Ordering::Release,
        );
        pushed_n.store(i + 1, Ordering::Release);
        let (http, relay, attempts) = (w.http.clone(), relay.clone(), attempts.clone());
        let record = json!({"revocations": [{"kind": "jti", "jti": format!("fanout-{i}"), "exp": now_unix() + 3000}]});
        pushes.push(tokio::spawn(async move {
            loop {
                attempts.fetch_add(1, Ordering::Relaxed);
                let sent = http
                    .post(format!("{relay}/revocations"))
                    .bearer_auth(PUSH_TOKEN)
                    .json(&record)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                if sent.is_ok_and(|s| s.status() == 202) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for p in pushes {
        let _ = p.await;
    }
    let pushed_done = t0.elapsed();
    // Wait for every follower and every real sidecar, at most 60 s.
    let followers_at = tokio::task::spawn_blocking(move || sample.join().unwrap());
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while fleet.seqs.iter().any(|s| (s.sequence() as usize) < r) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Release);
    let followers_at = followers_at.await.unwrap();
    let mut refused = Vec::new();
    for p in probe {
        refused.push(p.await.unwrap());
    }
    let cpu = cpu_seconds(nats_pid) - cpu0;
    let msgs = monitor(&w.http, mport, "/varz").await["out_msgs"]
        .as_u64()
        .unwrap_or(0)
        - msgs0;
    let jsz_end = monitor(&w.http, mport, "/jsz").await;

    // 1. revoke → refused by all 20 real sidecars: the per-revocation maximum.
    let (stop_at, api_at_stop) = incident.unwrap_or((Duration::ZERO, 0));
    let cont_ms = (stop_at + Duration::from_secs(3)).as_secs_f64() * 1000.0;
    let stop_ms = stop_at.as_secs_f64() * 1000.0;
    let pushed = |i: usize| f64::from(pushed_at[i].load(Ordering::Acquire));
    // Calm: pushed 1 s before the SIGSTOP, or 2 s after the last follower had caught up.
    let before_cont = (0..r).filter(|i| pushed(*i) < cont_ms).count();
    let recovered_ms = followers_at
        .iter()
        .filter_map(|f| f.get(before_cont.saturating_sub(1)).copied())
        .map(f64::from)
        .fold(cont_ms, f64::max);
    let calm = |i: usize| pushed(i) < stop_ms - 1000.0 || pushed(i) > recovered_ms + 2000.0;
    // A probe that never saw a refusal (it moved on to the next token first) leaves that
    // revocation out, counted: a maximum over fewer sidecars would flatter it.
    let seen_by_all = |i: usize| refused.iter().all(|s| !s[i].is_nan());
    let everywhere: Vec<f64> = (0..r)
        .filter(|i| calm(*i) && seen_by_all(*i))
        .map(|i| {
            refused
                .iter()
                .map(|s| f64::from(s[i]) - pushed(i))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let missed_probe = (0..r).filter(|i| calm(*i) && !seen_by_all(*i)).count();
    // 2. publish → applied by every follower (every pair, calm revocations).
    let mut applied = Vec::new();
    let mut never_applied = 0;
    for f in &followers_at {
        for i in (0..r).filter(|i| calm(*i)) {
            if f[i].is_nan() {
                never_applied += 1;
            } else {
                applied.push(f64::from(f[i]) - pushed(i));
            }
        }
    }
    // 5. the incident: time from SIGCONT until each follower holds every revocation pushed
    // before it; records missing at the end.
    let caught_up: Vec<f64> = followers_at
        .iter()
        .map(|f| f64::from(f[before_cont - 1]) - cont_ms)
        .map(|ms| {
            if ms.is_nan() {
                f64::INFINITY
            } else {
                ms.max(0.0)
            }
        })
        .collect();
    let missing: usize = fleet
        .revs
        .iter()
        .map(|rv| r.saturating_sub(rv.list().count(jwtgate::revocation::Kind::Jti) as usize))
        .sum();
    let mut real_missing = 0;
    for s in &real {
        let text = w
            .http
            .get(format!("{}/metrics", s.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("jwtgate_revocations{kind=\"jti\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        real_missing += r.saturating_sub(held);
    }
    let api_end = jsz_end["api"]["total"].as_u64().unwrap_or(0);
    let window_s = pushed_done.saturating_sub(stop_at).as_secs_f64();
    let _ = fleet.stop.send(true);
    let _ = std::fs::remove_dir_all(&w.dir);
    json!({
        "n": a.n,
        "real_sidecars": REAL,
        "followers_in_process": a.n - REAL,
        "revocations": r,
        "bootstrap_s": bootstrap_s,
        "all_caught_up_within_60s": waited.is_ok(),
        "revoke_to_refused_by_all_real_ms": summary(everywhere),
        "calm_revocations_a_probe_never_saw_refused": missed_probe,
        "publish_to_applied_every_follower_ms": summary(applied),
        "follower_revocation_pairs_never_applied": never_applied,
        "calm_revocations": (0..r).filter(|i| calm(*i)).count(),
        "follower_catch_ups_by_reason": gaps(&fleet.metrics),
        "km_requests_per_revocation": attempts.load(Ordering::Relaxed) as f64 / r as f64,
        "jetstream_consumers_sampled": consumers_seen,
        "jetstream_consumers_at_end": jsz_end["consumers"],
        "nats_cpu_s": cpu,
        "nats_out_msgs": msgs,
        "nats_cpu_us_per_delivered_msg": cpu * 1e6 / msgs.max(1) as f64,
        "incident": {
            "sigstop_s": 3,
            "caught_up_after_sigcont_ms": summary(caught_up),
            "records_missing_followers": missing,
            "records_missing_real_sidecars": real_missing,
            "jetstream_api_requests": api_end.saturating_sub(api_at_stop),
            "jetstream_api_baseline_per_s": baseline_per_s,
            "window_s": window_s,
            "jetstream_api_requests_over_baseline": api_end.saturating_sub(api_at_stop) as f64 - baseline_per_s * window_s,
        },
    })
}

/// Key-manager load without the stream: the 20 real sidecars polling a counting feed at
/// the default 10 s, and a key manager pushing to each of them.
async fn km_load(a: &Args) -> Value {
    let w = world().await;
    let hits = Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed = format!("http://{}/revocations", l.local_addr().unwrap());
    let h = hits.clone();
    jwtgate::devkm::serve_fn(l, move |_req| {
        h.fetch_add(1, Ordering::Relaxed);
        jwtgate::devkm::json_response(
            http::StatusCode::OK,
            &json!({"cursor": "0", "reset": false, "revocations": []}),
        )
    });
    let real = sidecars(&w, &a.jwtgate, &format!("feed_url = \"{feed}\"")).await;
    let h0 = hits.load(Ordering::Relaxed);
    let window = Duration::from_secs(60);
    tokio::time::sleep(window).await;
    let polls = hits.load(Ordering::Relaxed) - h0;
    let poll_per_sidecar_s = polls as f64 / REAL as f64 / window.as_secs_f64();
    let mut pushes = 0u64;
    for i in 0..20 {
        let body = json!({"revocations": [{"kind": "jti", "jti": format!("km-{i}"), "exp": now_unix() + 3000}]});
        for s in &real {
            let r = w
                .http
                .post(format!("{}/revocations", s.admin))
                .bearer_auth(PUSH_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            pushes += 1;
        }
    }
    let per_revocation_push = pushes as f64 / 20.0;
    let rate = 2.0;
    let at = |n: f64| {
        json!({
            "poll": n * poll_per_sidecar_s / rate,
            "push": n * per_revocation_push / REAL as f64,
        })
    };
    let _ = std::fs::remove_dir_all(&w.dir);
    json!({
        "measured_with": REAL,
        "poll_window_s": window.as_secs(),
        "feed_requests": polls,
        "poll_requests_per_sidecar_per_s": poll_per_sidecar_s,
        "push_requests_per_revocation": per_revocation_push,
        "revocations_per_s": rate,
        "km_requests_per_revocation": {"1": at(1.0), "20": at(20.0), "1000": at(1000.0), "10000": at(10000.0)},
    })
}
