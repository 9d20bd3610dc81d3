//! The fleet stream (DESIGN §10) against a real Debian `nats-server -js`: `jwtgate relay`
//! in-process, sidecars in-process, the test's own NATS client where it plays the
//! operator or an attacker. Every rejected request is checked not to reach the upstream.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jwtgate::config::RelayConfig;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};

/// A `nats-server -js` on a port of its choosing with its own store directory, restartable
/// on the same port.
struct Nats {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// A config file (users and permissions), or none: anyone may do anything.
    conf: Option<String>,
    /// The user the test's own client logs in as.
    login: Option<(&'static str, &'static str)>,
}

impl Nats {
    /// `None` when nats-server is missing outside CI (in CI it is a failure).
    async fn start() -> Option<Nats> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(std::env::var("CI").is_err(), "nats-server missing in CI");
            eprintln!("skipped: nats-server not installed");
            return None;
        }
        let mut n = Nats {
            // Chosen by nats-server at the first start (`-p -1`), kept for restarts.
            port: 0,
            dir: TempDir::new(),
            child: None,
            conf: None,
            login: None,
        };
        n.up().await;
        Some(n)
    }

    /// A server whose users and permissions are `accounts` (nats-server config syntax).
    async fn start_with_accounts(
        accounts: &str,
        login: (&'static str, &'static str),
    ) -> Option<Nats> {
        let mut n = Nats::start().await?;
        n.down();
        let conf = n.dir.file("nats.conf");
        let store = n.dir.file("js");
        let text = format!(
            "listen: 127.0.0.1:{}\njetstream {{ store_dir: \"{store}\" }}\n{accounts}\n",
            n.port
        );
        std::fs::write(&conf, text).unwrap();
        n.conf = Some(conf);
        n.login = Some(login);
        n.up().await;
        Some(n)
    }

    async fn up(&mut self) {
        let mut cmd = Command::new("nats-server");
        // The first start takes a port the kernel picks (no free-port race with other
        // tests' connections) and reads it from the log; a restart reuses it.
        let port = match self.port {
            0 => "-1".to_owned(),
            p => p.to_string(),
        };
        match &self.conf {
            Some(conf) => cmd.args(["-c", conf]),
            None => cmd
                .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
                .arg(&self.dir.0),
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = lines_of(child.stderr.take().unwrap());
        self.child = Some(child);
        if self.port == 0 {
            let marker = "Listening for client connections on 127.0.0.1:";
            let line = log
                .iter()
                .find(|l| l.contains(marker))
                .expect("nats-server did not say where it listens");
            self.port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
        }
        // The rest of its log is read and dropped, so nats-server never blocks on it.
        std::thread::spawn(move || log.iter().for_each(drop));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not start");
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn client(&self) -> async_nats::Client {
        let mut o = async_nats::ConnectOptions::new();
        if let Some((user, pass)) = self.login {
            o = o.user_and_password(user.into(), pass.into());
        }
        o.connect(self.url()).await.unwrap()
    }

    async fn last_seq(&self) -> u64 {
        let js = async_nats::jetstream::new(self.client().await);
        let mut s = js.get_stream("JWTGATE_REV").await.unwrap();
        s.info().await.unwrap().state.last_sequence
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

/// `jwtgate relay`, in-process.
struct Relay {
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(nats: &Nats, extra: &str) -> Relay {
        Relay::start_with(nats, extra, "").await
    }

    /// `stream_extra` goes into `[relay.stream]`.
    async fn start_with(nats: &Nats, extra: &str, stream_extra: &str) -> Relay {
        let text = format!(
            "[relay]\nlisten = \"127.0.0.1:0\"\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\n{extra}\n[relay.stream]\nurls = [\"{}\"]\n{stream_extra}\n",
            nats.url()
        );
        let cfg = RelayConfig::from_toml_str(&text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let relay = jwtgate::fleet::relay::Relay::bind(cfg).await.unwrap();
        let addr = relay.addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(relay.run(async move {
            let _ = rx.await;
        }));
        let r = Relay {
            addr,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(tx),
            task: Some(task),
        };
        for _ in 0..400 {
            if r.get("/readyz").await.0 == 200 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("relay not ready");
    }

    async fn get(&self, path: &str) -> (u16, String) {
        match self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    async fn push(&self, records: Value) -> u16 {
        self.http
            .post(format!("http://{}/revocations", self.addr))
            .bearer_auth(PUSH_TOKEN)
            .json(&json!({ "revocations": records }))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.get("/metrics").await.1, series)
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn stream_lines(nats: &Nats, extra: &str) -> String {
    let login = match nats.login {
        Some(_) => "username = \"sidecar\"\npassword = \"sidecar-pass\"\n",
        None => "",
    };
    format!(
        "[revocation]\nmax_token_lifetime_s = 3600\n{extra}\n[revocation.stream]\nurls = [\"{}\"]\n{login}",
        nats.url()
    )
}

/// A sidecar following the stream (`extra` goes into `[revocation]`).
async fn sidecar(nats: &Nats, keys: &Arc<KeyServer>, extra: &str, wait_ready: bool) -> Harness {
    Harness::start_with(
        json!({}),
        Options {
            extra: stream_lines(nats, extra),
            key_server: Some(keys.clone()),
            wait_ready,
            ..Options::default()
        },
    )
    .await
}

/// The common setup: a relay, a P-256 key served as JWKS, and one sidecar, ready, following
/// the stream.
struct One {
    relay: Relay,
    key: DevKey,
    keys: Arc<KeyServer>,
    h: Harness,
}

impl One {
    async fn start(nats: &Nats) -> One {
        let relay = Relay::start(nats, "").await;
        let key = DevKey::p256("k");
        let keys = key_server(&key).await;
        let h = sidecar(nats, &keys, "", true).await;
        One {
            relay,
            key,
            keys,
            h,
        }
    }
}

/// The headers of a live message as the stream's republish sets them, for a forgery.
fn live_headers(seq: &str, last: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Stream", "JWTGATE_REV");
    headers.insert("Nats-Sequence", seq);
    headers.insert("Nats-Last-Sequence", last);
    headers
}

async fn key_server(key: &DevKey) -> Arc<KeyServer> {
    Arc::new(KeyServer::start(jwks_of(&[(key, None)])).await)
}

/// A 401 "revoked" that did not reach the upstream.
async fn is_revoked(h: &Harness, token: &str) -> bool {
    let before = h.upstream.count();
    let resp = h.get(token).await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status == 401 {
        assert_eq!(body["error_description"], "token has been revoked");
        assert_eq!(
            h.upstream.count(),
            before,
            "a revoked request reached the upstream"
        );
        return true;
    }
    assert_eq!(status, 200, "{body}");
    false
}

fn jti_record(claims: &Value) -> Value {
    json!({"kind": "jti", "jti": claims["jti"], "exp": claims["exp"]})
}

async fn stop(h: &mut Harness) {
    h.shutdown();
    if let Some(t) = h.task.take() {
        let _ = t.await;
    }
}

/// Pushes the revocation of `claims`'s token to the relay (202) and waits until `h`
/// refuses the token (401, not forwarded).
async fn revoke_and_wait(relay: &Relay, h: &Harness, key: &DevKey, claims: &Value) {
    assert_eq!(relay.push(json!([jti_record(claims)])).await, 202);
    assert!(
        h.eventually(5, || async { is_revoked(h, &key.token(claims)).await })
            .await,
        "the sidecar never refused the revoked token"
    );
}

/// A sidecar with a snapshot that applied one revocation, then stopped: the stopped
/// harness and the revoked token's claims.
async fn revoked_then_stopped(
    nats: &Nats,
    relay: &Relay,
    key: &DevKey,
    keys: &Arc<KeyServer>,
    snap: &str,
) -> (Harness, Value) {
    let mut h = sidecar(nats, keys, snap, true).await;
    let c = h.claims();
    revoke_and_wait(relay, &h, key, &c).await;
    stop(&mut h).await;
    (h, c)
}

#[tokio::test]
async fn a_revocation_is_refused_by_three_sidecars_within_a_second() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let relay = Relay::start(&nats, "").await;
    let key = DevKey::p256("k");
    let keys = key_server(&key).await;
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(sidecar(&nats, &keys, "", true).await);
    }
    let claims = fleet[0].claims();
    let token = key.token(&claims);
    for h in &fleet {
        assert!(!is_revoked(h, &token).await, "valid before the revocation");
    }
    let t0 = Instant::now();
    assert_eq!(relay.push(json!([jti_record(&claims)])).await, 202);
    let mut pending: Vec<&Harness> = fleet.iter().collect();
    while !pending.is_empty() && t0.elapsed() < Duration::from_secs(5) {
        let mut still = Vec::new();
        for h in pending {
            if !is_revoked(h, &token).await {
                still.push(h);
            }
        }
        pending = still;
    }
    let took = t0.elapsed();
    assert!(pending.is_empty(), "not every sidecar refused the token");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    for h in &fleet {
        assert_eq!(h.metric("jwtgate_revocation_stream_sequence").await, 1.0);
        assert_eq!(h.metric("jwtgate_revocation_stream_connected").await, 1.0);
        let text = h.metrics().await;
        assert!(text.contains("# TYPE jwtgate_revocation_propagation_seconds histogram"));
        assert!(
            text.lines()
                .any(|l| l == "jwtgate_revocation_propagation_seconds_count 1"),
            "applied live, not by a catch-up"
        );
        assert_eq!(h.metric("jwtgate_revocation_stream_gaps_total").await, 0.0);
    }
    assert_eq!(
        relay
            .metric(r#"jwtgate_relay_records_total{result="published",source="push"}"#)
            .await,
        1.0
    );
    // The same record again adds nothing: not published twice.
    assert_eq!(relay.push(json!([jti_record(&claims)])).await, 202);
    assert_eq!(nats.last_seq().await, 1);
    assert_eq!(
        relay
            .metric(r#"jwtgate_relay_records_total{result="dominated",source="push"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_stopped_sidecar_catches_up_on_1000_revocations_before_it_turns_ready() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let relay = Relay::start(&nats, "").await;
    let key = DevKey::p256("k");
    let keys = key_server(&key).await;
    let dir = TempDir::new();
    let snap = format!("snapshot_path = \"{}\"", dir.file("rev.snap"));
    let (h, first) = revoked_then_stopped(&nats, &relay, &key, &keys, &snap).await;

    let mut last = Value::Null;
    for batch in 0..10 {
        let records: Vec<Value> = (0..100)
            .map(|i| {
                let mut c = h.claims();
                c["jti"] = format!("offline-{batch}-{i}").into();
                last = c.clone();
                jti_record(&c)
            })
            .collect();
        assert_eq!(relay.push(json!(records)).await, 202);
    }
    assert_eq!(nats.last_seq().await, 1001);

    let h = sidecar(&nats, &keys, &snap, false).await;
    let t0 = Instant::now();
    // One scrape evaluates readiness and then reads the sequence: the first that says
    // ready must already show every record applied.
    loop {
        let text = h.metrics().await;
        if text.lines().any(|l| l == "jwtgate_ready 1") {
            assert_eq!(
                metric_value(&text, "jwtgate_revocation_stream_sequence"),
                1001.0
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never ready");
    }
    assert_eq!(h.readyz().await, 200);
    assert!(is_revoked(&h, &key.token(&last)).await);
    assert!(
        is_revoked(&h, &key.token(&first)).await,
        "restored from the snapshot"
    );
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 1001.0);
    assert_eq!(h.metric("jwtgate_revocation_stream_sequence").await, 1001.0);
}

#[tokio::test]
async fn a_nats_restart_mid_stream_loses_nothing() {
    let Some(mut nats) = Nats::start().await else {
        return;
    };
    let One {
        relay,
        key,
        keys: _keys,
        h,
    } = One::start(&nats).await;
    let mut tokens = Vec::new();
    for i in 0..60 {
        let mut c = h.claims();
        c["jti"] = format!("restart-{i}").into();
        tokens.push(key.token(&c));
        if i == 30 {
            nats.down();
            // A push while the server is gone is refused, never lost quietly.
            assert_eq!(relay.push(json!([jti_record(&c)])).await, 503);
            nats.up().await;
        }
        // The key manager retries a refused push until it is taken.
        let t0 = Instant::now();
        while relay.push(json!([jti_record(&c)])).await != 202 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "relay never took record {i}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        h.eventually(15, || async {
            h.metric(r#"jwtgate_revocations{kind="jti"}"#).await == 60.0
        })
        .await,
        "sidecar holds {}",
        h.metric(r#"jwtgate_revocations{kind="jti"}"#).await
    );
    for t in &tokens {
        assert!(is_revoked(&h, t).await);
    }
    assert!(
        h.metric(r#"jwtgate_revocation_stream_gaps_total{reason="reconnect"}"#)
            .await
            >= 1.0
    );
    assert_eq!(nats.last_seq().await, 60, "file storage kept every record");
}

#[tokio::test]
async fn a_deleted_and_recreated_stream_is_merged_and_nothing_is_lost() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let One {
        relay,
        key,
        keys,
        h,
    } = One::start(&nats).await;
    let x = h.claims();
    revoke_and_wait(&relay, &h, &key, &x).await;

    // The operator deletes the stream.
    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream("JWTGATE_REV").await.unwrap();
    // Within a heartbeat the relay creates it again, with what it holds.
    let t0 = Instant::now();
    while js.get_stream("JWTGATE_REV").await.is_err() || nats.last_seq().await < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "stream not recreated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let y = h.claims();
    assert_eq!(relay.push(json!([jti_record(&y)])).await, 202);
    assert!(
        h.eventually(10, || async { is_revoked(&h, &key.token(&y)).await })
            .await
    );
    assert!(is_revoked(&h, &key.token(&x)).await, "merged, not replaced");
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_revocation_stream_gaps_total{reason="recreated"}"#)
                .await
                >= 1.0
        })
        .await
    );
    // A sidecar that starts now, with nothing, gets both.
    let fresh = sidecar(&nats, &keys, "", true).await;
    assert!(is_revoked(&fresh, &key.token(&x)).await);
    assert!(is_revoked(&fresh, &key.token(&y)).await);
}

#[tokio::test]
async fn the_same_wso2_revocation_by_notify_and_by_feed_is_one_stream_message() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let feed = Feed::start().await;
    let relay = Relay::start(
        &nats,
        &format!(
            "notify_username = \"km\"\nnotify_password = \"km-secret\"\nfeed_url = \"{}\"\nfeed_format = \"wso2\"\nfeed_username = \"admin\"\nfeed_password = \"admin\"\npoll_interval_s = 1",
            feed.wso2_url()
        ),
    )
    .await;
    let key = DevKey::rsa("k");
    let keys = key_server(&key).await;
    let h = Harness::start_with(
        json!({}),
        Options {
            issuer_extra: "profile = \"wso2\"".into(),
            extra: stream_lines(&nats, ""),
            key_server: Some(keys.clone()),
            ..Options::default()
        },
    )
    .await;
    let c = h.claims();
    let token = key.token(&c);
    assert!(!is_revoked(&h, &token).await);
    let exp_ms = c["exp"].as_i64().unwrap() * 1000;
    let status = relay
        .http
        .post(format!("http://{}/internal/data/v1/notify", relay.addr))
        .basic_auth("km", Some("km-secret"))
        .json(&json!({"type": "token_revocation", "accessToken": c["jti"], "expiryTime": exp_ms}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    feed.set_wso2(json!({"revokedJWTList": [{"jwt_signature": c["jti"], "expiry_time": exp_ms}]}));
    let polls = feed.hits();
    assert!(h.eventually(5, || async { feed.hits() >= polls + 2 }).await);
    assert!(is_revoked(&h, &token).await, "applied as a WSO2 record");
    assert_eq!(nats.last_seq().await, 1, "one stream message");
    assert_eq!(
        relay
            .metric(r#"jwtgate_relay_records_total{result="published",source="notify"}"#)
            .await,
        1.0
    );
    assert!(
        relay
            .metric(r#"jwtgate_relay_records_total{result="dominated",source="wso2_poll"}"#)
            .await
            >= 1.0
    );
    // It kept its origin: a WSO2 jti record is a `wso2` message.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("JWTGATE_REV").await.unwrap();
    let m = stream.direct_get(1).await.unwrap();
    assert_eq!(
        m.headers.get("Jwtgate-Format").map(|v| v.as_str()),
        Some("wso2")
    );
}

#[tokio::test]
async fn a_crafted_live_message_whose_predecessor_is_ahead_triggers_catch_up_and_is_not_applied() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let One {
        relay,
        key,
        keys: _keys,
        h,
    } = One::start(&nats).await;
    let a = h.claims();
    revoke_and_wait(&relay, &h, &key, &a).await;

    let client = nats.client().await;
    let forged = h.claims();
    let body = json!({"revocations": [jti_record(&forged)]}).to_string();
    let headers = live_headers("5", "4");
    client
        .publish_with_headers("jwtgate.live.v1", headers, body.clone().into())
        .await
        .unwrap();
    // No sequence headers at all: never applied either.
    client
        .publish("jwtgate.live.v1", body.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_revocation_stream_gaps_total{reason="sequence"}"#)
                .await
                == 1.0
        })
        .await
    );
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_revocation_events_total{result="rejected",source="stream"}"#)
                .await
                == 1.0
        })
        .await
    );
    // The catch-up found the stream at 1: the forged record is not in it, not applied.
    assert!(!is_revoked(&h, &key.token(&forged)).await);
    assert_eq!(h.metric("jwtgate_revocation_stream_sequence").await, 1.0);
    // A heartbeat ahead of the cursor twice, with nothing applied in between: a catch-up.
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("JWTGATE_REV").await.unwrap();
    let created = stream.info().await.unwrap().created.unix_timestamp_nanos() as i64;
    let beat = json!({"stream": "JWTGATE_REV", "created": created, "last_seq": 9, "source_synced_at": null});
    for _ in 0..2 {
        client
            .publish("jwtgate.hb.v1", beat.to_string().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    assert!(
        h.eventually(5, || async {
            h.metric(r#"jwtgate_revocation_stream_gaps_total{reason="heartbeat"}"#)
                .await
                == 1.0
        })
        .await
    );
    // And the follower is live again.
    let b = h.claims();
    revoke_and_wait(&relay, &h, &key, &b).await;
}

/// 503 "stale" (never forwarded), or 200 (forwarded).
async fn answers_stale(h: &Harness, token: &str) -> bool {
    let before = h.upstream.count();
    let s = h.get(token).await.status().as_u16();
    assert!(s == 503 || s == 200, "{s}");
    assert_eq!(h.upstream.count(), before + usize::from(s == 200));
    s == 503
}

#[tokio::test]
async fn sidecars_go_stale_behind_a_dead_relay_or_a_relay_whose_key_manager_is_gone() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let key = DevKey::p256("k");
    let keys = key_server(&key).await;
    let lines = "max_sync_age_s = 5\non_stale = \"reject\"";

    // A relay whose feed goes down keeps its heartbeat, with an aging source sync.
    let feed = Feed::start().await;
    let mut relay = Relay::start(
        &nats,
        &format!("feed_url = \"{}\"\npoll_interval_s = 1", feed.native_url()),
    )
    .await;
    let h = sidecar(&nats, &keys, lines, true).await;
    let token = key.token(&h.claims());
    assert!(!is_revoked(&h, &token).await);
    feed.set_down(true);
    assert!(
        h.eventually(15, || answers_stale(&h, &token)).await,
        "never stale"
    );
    assert_eq!(h.metric("jwtgate_revocation_stale").await, 1.0);
    feed.set_down(false);
    assert!(
        h.eventually(10, || async { !answers_stale(&h, &token).await })
            .await,
        "never in sync again"
    );

    // The relay dies; NATS lives on: no heartbeat for max_sync_age_s is stale too.
    relay.stop().await;
    let t0 = Instant::now();
    assert!(
        h.eventually(15, || answers_stale(&h, &token)).await,
        "never stale"
    );
    assert!(t0.elapsed() >= Duration::from_secs(2), "stale too early");
    assert_eq!(h.metric("jwtgate_revocation_stream_connected").await, 1.0);
}

#[tokio::test]
async fn bad_stream_messages_are_counted_and_skipped_without_a_stall() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let One {
        relay,
        key,
        keys: _keys,
        h,
    } = One::start(&nats).await;
    // A rogue publisher on the stored subject (the permissions of README "Fleet" forbid it).
    let js = async_nats::jetstream::new(nats.client().await);
    let publish = |format: Option<&'static str>, body: String| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(f) = format {
                headers.insert("Jwtgate-Format", f);
            }
            js.publish_with_headers("jwtgate.rev.v1", headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let unknown = h.claims();
    let far = h.claims();
    let far_record = json!({"kind": "jti", "jti": far["jti"], "exp": now() + 10 * 365 * 86400});
    publish(None, "not json".into()).await;
    publish(
        Some("v9"),
        json!({"revocations": [jti_record(&unknown)]}).to_string(),
    )
    .await;
    publish(None, json!({"revocations": [far_record]}).to_string()).await;
    publish(None, json!({"revocations": [{"kind": "jti"}]}).to_string()).await;
    let ok = h.claims();
    publish(None, json!({"revocations": [jti_record(&ok)]}).to_string()).await;
    assert!(
        h.eventually(5, || async { is_revoked(&h, &key.token(&ok)).await })
            .await
    );
    assert_eq!(
        h.metric(r#"jwtgate_revocation_events_total{result="rejected",source="stream"}"#)
            .await,
        4.0
    );
    assert!(!is_revoked(&h, &key.token(&unknown)).await);
    assert!(!is_revoked(&h, &key.token(&far)).await);
    assert_eq!(h.metric("jwtgate_revocation_stream_sequence").await, 5.0);
    // No stall: the relay's next record is applied live.
    let next = h.claims();
    revoke_and_wait(&relay, &h, &key, &next).await;
    assert_eq!(
        h.metric(r#"jwtgate_revocation_stream_gaps_total{reason="sequence"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn with_a_snapshot_and_nats_unreachable_a_sidecar_serves_from_the_snapshot() {
    let Some(mut nats) = Nats::start().await else {
        return;
    };
    let relay = Relay::start(&nats, "").await;
    let key = DevKey::p256("k");
    let keys = key_server(&key).await;
    let dir = TempDir::new();
    let snap = format!("snapshot_path = \"{}\"", dir.file("rev.snap"));
    let (_, c) = revoked_then_stopped(&nats, &relay, &key, &keys, &snap).await;
    nats.down();

    let h = sidecar(&nats, &keys, &snap, false).await;
    assert_eq!(h.readyz().await, 503, "not ready at once");
    let t0 = Instant::now();
    assert!(h.eventually(10, || async { h.readyz().await == 200 }).await);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "ready after the grace period"
    );
    assert!(is_revoked(&h, &key.token(&c)).await, "from the snapshot");
    assert_eq!(h.metric("jwtgate_revocation_stream_connected").await, 0.0);
    // The stream comes back: connected, and whatever was published is applied.
    nats.up().await;
    assert!(
        h.eventually(20, || async {
            h.metric("jwtgate_revocation_stream_connected").await == 1.0
        })
        .await
    );
}

/// The NATS permissions README "Fleet" gives, enforced by a real nats-server: the relay
/// and the sidecars work under them, and a sidecar's user can neither store a record nor
/// delete the stream.
const ACCOUNTS: &str = r#"
accounts {
  FLEET {
    jetstream: enabled
    users: [
      { user: relay, password: relay-pass, permissions: {
          publish: { allow: ["jwtgate.rev.v1", "jwtgate.hb.v1", "$JS.API.>"] }
          subscribe: { allow: ["_INBOX.>"] } } }
      { user: sidecar, password: sidecar-pass, permissions: {
          publish: { allow: ["$JS.API.STREAM.INFO.JWTGATE_REV", "$JS.API.DIRECT.GET.JWTGATE_REV",
                             "$JS.API.CONSUMER.CREATE.JWTGATE_REV", "$JS.API.CONSUMER.CREATE.JWTGATE_REV.>",
                             "$JS.API.CONSUMER.MSG.NEXT.JWTGATE_REV.>", "$JS.API.CONSUMER.DELETE.JWTGATE_REV.>"] }
          subscribe: { allow: ["jwtgate.live.v1", "jwtgate.hb.v1", "_INBOX.>"] } } }
    ]
  }
}
"#;

#[tokio::test]
async fn sidecars_follow_under_read_only_permissions_that_forbid_publishing() {
    let Some(nats) = Nats::start_with_accounts(ACCOUNTS, ("sidecar", "sidecar-pass")).await else {
        return;
    };
    let relay =
        Relay::start_with(&nats, "", "username = \"relay\"\npassword = \"relay-pass\"").await;
    let key = DevKey::p256("k");
    let keys = key_server(&key).await;
    // More than a direct-get catch-up takes: a fresh sidecar reads them with a consumer.
    for batch in 0..3 {
        let records: Vec<Value> = (0..100)
            .map(|i| json!({"kind": "jti", "jti": format!("perm-{batch}-{i}"), "exp": now() + 600}))
            .collect();
        assert_eq!(relay.push(json!(records)).await, 202);
    }
    let dir = TempDir::new();
    let snap = format!("snapshot_path = \"{}\"", dir.file("rev.snap"));
    let mut h = sidecar(&nats, &keys, &snap, true).await;
    assert_eq!(h.metric(r#"jwtgate_revocations{kind="jti"}"#).await, 300.0);
    let mut c = h.claims();
    c["jti"] = "perm-2-99".into();
    assert!(is_revoked(&h, &key.token(&c)).await);
    // Live, then a short catch-up by direct get after a restart.
    let live = h.claims();
    revoke_and_wait(&relay, &h, &key, &live).await;
    stop(&mut h).await;
    let gap = h.claims();
    assert_eq!(relay.push(json!([jti_record(&gap)])).await, 202);
    let h = sidecar(&nats, &keys, &snap, true).await;
    assert!(is_revoked(&h, &key.token(&gap)).await);
    assert_eq!(h.metric("jwtgate_revocation_stream_sequence").await, 302.0);

    // The sidecar's user cannot write: no stored record, no deleted stream.
    let js = async_nats::jetstream::new(nats.client().await);
    let forged = json!({"revocations": [{"kind": "jti", "jti": "forged", "exp": now() + 60}]});
    let published = async {
        js.publish("jwtgate.rev.v1", forged.to_string().into())
            .await
            .ok()?
            .await
            .ok()
    };
    // A denied request gets no answer: both wait out a short timeout, side by side.
    let (stored, deleted) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), published),
        tokio::time::timeout(Duration::from_secs(3), js.delete_stream("JWTGATE_REV")),
    );
    assert!(
        stored.ok().flatten().is_none(),
        "the sidecar user stored a record"
    );
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "the sidecar user deleted the stream"
    );
    assert_eq!(nats.last_seq().await, 302);
}

/// With `tls_cert`/`tls_key` the relay's listener speaks HTTPS only: a push over TLS is
/// published; one sent in clear gets no HTTP answer and publishes nothing.
#[tokio::test]
async fn the_relay_listener_speaks_https_when_given_a_certificate() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let dir = TempDir::new();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.file("relay.crt"), dir.file("relay.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[relay]\nlisten = \"127.0.0.1:0\"\npush_token = \"{PUSH_TOKEN}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n[relay.stream]\nurls = [\"{}\"]\n",
        nats.url()
    );
    let cfg = RelayConfig::from_toml_str(&text, &|_| None).unwrap();
    let relay = jwtgate::fleet::relay::Relay::bind(cfg).await.unwrap();
    let port = relay.addr().port();
    tokio::spawn(relay.run(std::future::pending()));
    let tls = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let t0 = Instant::now();
    while !tls
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "relay not ready over HTTPS"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let body = json!({"revocations": [{"kind": "jti", "jti": "over-tls", "exp": now() + 600}]});
    let clear = reqwest::Client::builder().no_proxy().build().unwrap();
    let sent = clear
        .post(format!("http://127.0.0.1:{port}/revocations"))
        .bearer_auth(PUSH_TOKEN)
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err(), "a clear-text push got an HTTP answer");
    let sent = tls
        .post(format!("{base}/revocations"))
        .bearer_auth(PUSH_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    assert_eq!(nats.last_seq().await, 1);
}

/// A stream that keeps records for less than a token's lifetime cannot hold every
/// revocation that still matters: the sidecar is not ready until `max_age` is raised.
#[tokio::test]
async fn a_stream_whose_max_age_is_too_short_keeps_the_sidecar_not_ready() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let js = async_nats::jetstream::new(nats.client().await);
    let mut config = async_nats::jetstream::stream::Config {
        name: "JWTGATE_REV".into(),
        subjects: vec!["jwtgate.rev.v1".into()],
        max_age: Duration::from_secs(600),
        allow_direct: true,
        republish: Some(async_nats::jetstream::stream::Republish {
            source: "jwtgate.rev.v1".into(),
            destination: "jwtgate.live.v1".into(),
            headers_only: false,
        }),
        ..Default::default()
    };
    js.create_stream(config.clone()).await.unwrap();
    let key = DevKey::p256("k");
    let keys = key_server(&key).await;
    let h = sidecar(&nats, &keys, "", false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.readyz().await, 503, "600 s < 3600 s + leeway");
    // Not ready is stale: a request is answered 503 and never forwarded.
    let before = h.upstream.count();
    assert_eq!(h.get(&key.token(&h.claims())).await.status(), 503);
    assert_eq!(h.upstream.count(), before);
    config.max_age = Duration::from_secs(7200);
    js.update_stream(config).await.unwrap();
    assert!(h.eventually(40, || async { h.readyz().await == 200 }).await);
}

/// Stream messages are not signed. Where the NATS permissions are missing, a forged live
/// message carrying the next sequence is applied, but the real record at that sequence
/// must not be lost: its different message id sends the follower to the stream for it.
#[tokio::test]
async fn a_forged_message_with_the_next_sequence_does_not_hide_the_real_record() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let One {
        relay,
        key,
        keys: _keys,
        h,
    } = One::start(&nats).await;
    let a = h.claims();
    revoke_and_wait(&relay, &h, &key, &a).await;
    // Sequence 2 claimed by a forgery before the relay publishes the real record.
    let client = nats.client().await;
    let decoy = h.claims();
    let mut headers = live_headers("2", "1");
    headers.insert("Nats-Msg-Id", "forged");
    let body = json!({"revocations": [jti_record(&decoy)]}).to_string();
    client
        .publish_with_headers("jwtgate.live.v1", headers, body.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert!(
        h.eventually(5, || async {
            h.metric("jwtgate_revocation_stream_sequence").await == 2.0
        })
        .await
    );
    let real = h.claims();
    assert_eq!(relay.push(json!([jti_record(&real)])).await, 202);
    assert!(
        h.eventually(5, || async { is_revoked(&h, &key.token(&real)).await })
            .await,
        "the real record at sequence 2 was skipped"
    );
    assert_eq!(
        h.metric(r#"jwtgate_revocation_stream_gaps_total{reason="conflict"}"#)
            .await,
        1.0
    );
}
