//! Live reload (DESIGN §9) with the real binary: SIGHUP and `--watch` under load, every
//! status right for the generation in force, zero transport errors; an invalid edit, a
//! restart-only edit and a new issuer; a raised lifetime bound keeps older tokens to the
//! old one.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};

/// A running `jwtgate serve` on a config file the test rewrites.
struct Served {
    proc: Spawned,
    file: String,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    http: reqwest::Client,
    _dir: TempDir,
}

impl Served {
    async fn start(config: &str, args: &[&str]) -> Served {
        let dir = TempDir::new();
        let file = dir.file("jwtgate.toml");
        std::fs::write(&file, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_jwtgate"));
        command.args(["serve", "--config", &file]).args(args);
        let proc = Spawned::spawn(command);
        proc.ready().await;
        Served {
            proxy: proc.proxy,
            admin: proc.admin,
            proc,
            file,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            _dir: dir,
        }
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        match self
            .http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.admin_get("/metrics").await.1, series)
    }

    fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.proc.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Writes `config`, signals, and waits until the reload is counted with `result`.
    async fn reload(&self, config: &str, result: &str) {
        let series = format!("jwtgate_config_reloads_total{{result=\"{result}\"}}");
        let before = self.metric(&series).await;
        std::fs::write(&self.file, config).unwrap();
        self.hangup();
        for _ in 0..400 {
            if self.metric(&series).await > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("reload not counted as {result}");
    }

    async fn status(&self, client: &reqwest::Client, path: &str, token: &str) -> u16 {
        client
            .get(format!("http://{}{path}", self.proxy))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

const AUD_A: &str = "api://a";
const AUD_B: &str = "api://b";

/// Generation `n`'s config: audiences alternate A/B, the `/admin` route (scope `admin`)
/// exists in even generations, a second issuer in every third.
fn generation(n: usize, keys: &KeyServer, upstream: &Upstream) -> String {
    let aud = if n.is_multiple_of(2) { AUD_A } else { AUD_B };
    let mut text = format!(
        "[upstream]\nurl = \"http://{}\"\n[[issuers]]\nname = \"km\"\nissuer = \"http://{}/oauth2/token\"\n\
         jwks_uri = \"{}\"\naudiences = [\"{aud}\"]\n",
        upstream.addr,
        keys.addr,
        keys.jwks_uri()
    );
    if n.is_multiple_of(3) {
        text.push_str(&format!(
            "[[issuers]]\nname = \"partner\"\nissuer = \"http://{}/partner\"\njwks_uri = \"{}\"\naudiences = [\"{aud}\"]\n",
            keys.addr,
            keys.jwks_uri()
        ));
    }
    if n.is_multiple_of(2) {
        text.push_str(
            "[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nscopes_all = [\"admin\"]\n",
        );
    }
    text
}

fn token(key: &DevKey, iss: &str, aud: Value) -> String {
    let n = now();
    key.token(&json!({
        "iss": iss, "sub": "alice", "aud": aud, "iat": n - 5, "exp": n + 600,
        "jti": format!("j-{}", rand_u64()),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sighup_reloads_under_load_drop_nothing_and_decide_by_generation() {
    let key = DevKey::rsa("k1");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let served = Arc::new(Served::start(&generation(0, &keys, &upstream), &[]).await);
    let iss = format!("http://{}/oauth2/token", keys.addr);
    let partner_iss = format!("http://{}/partner", keys.addr);
    // Valid in every generation: both audiences, no route needs a scope on /stable.
    let stable = token(&key, &iss, json!([AUD_A, AUD_B]));
    let only_a = token(&key, &iss, json!(AUD_A));
    let partner = token(&key, &partner_iss, json!([AUD_A, AUD_B]));

    // Load: four keep-alive clients on /stable for the whole test.
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (served, stable, done, sent) =
            (served.clone(), stable.clone(), done.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let (mut errors, mut wrong) = (0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                match client
                    .get(format!("http://{}/stable", served.proxy))
                    .bearer_auth(&stable)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {}
                    Ok(_) => wrong += 1,
                    Err(_) => errors += 1,
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (errors, wrong)
        }));
    }

    // One keep-alive client for the per-generation checks: its repeat path and the cache
    // would answer from the previous generation if a verdict crossed generations.
    let checker = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut checked = 0u64;
    for n in 1..=20 {
        served.reload(&generation(n, &keys, &upstream), "ok").await;
        for _ in 0..10 {
            let want_a = if n.is_multiple_of(2) { 200 } else { 401 };
            assert_eq!(
                served.status(&checker, "/x", &only_a).await,
                want_a,
                "gen {n}: aud A"
            );
            let want_admin = if n.is_multiple_of(2) { 403 } else { 200 };
            assert_eq!(
                served.status(&checker, "/admin/x", &stable).await,
                want_admin,
                "gen {n}: /admin"
            );
            let p = served.status(&checker, "/x", &partner).await;
            if n.is_multiple_of(3) {
                assert!(p == 200 || p == 503, "gen {n}: partner {p}");
            } else {
                assert_eq!(p, 401, "gen {n}: partner issuer not configured");
            }
            checked += 3;
        }
    }
    while sent.load(Ordering::Relaxed) + checked < 10_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let (mut errors, mut wrong) = (0, 0);
    for w in workers {
        let (e, x) = w.await.unwrap();
        errors += e;
        wrong += x;
    }
    let total = sent.load(Ordering::Relaxed) + checked;
    assert!(total >= 10_000, "{total}");
    assert_eq!(
        (errors, wrong),
        (0, 0),
        "transport errors, wrong statuses over {total} requests"
    );
    assert_eq!(
        served
            .metric(r#"jwtgate_config_reloads_total{result="ok"}"#)
            .await,
        20.0
    );
    assert_eq!(
        served
            .metric(r#"jwtgate_config_reloads_total{result="error"}"#)
            .await,
        0.0
    );
    assert!(
        served
            .metric("jwtgate_config_last_reload_success_timestamp_seconds")
            .await
            > 1.7e9
    );
}

#[tokio::test]
async fn invalid_and_restart_only_edits_change_nothing() {
    let key = DevKey::rsa("k1");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let config = generation(0, &keys, &upstream);
    let served = Served::start(&config, &[]).await;
    let iss = format!("http://{}/oauth2/token", keys.addr);
    let only_a = token(&key, &iss, json!(AUD_A));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(served.status(&client, "/x", &only_a).await, 200);

    // An invalid edit (audiences B and a syntax error elsewhere) changes nothing.
    let invalid = generation(1, &keys, &upstream) + "\n[[routes]]\nname = \"x\"\n";
    served.reload(&invalid, "error").await;
    assert_eq!(served.status(&client, "/x", &only_a).await, 200);
    // A restart-only edit is refused as a whole, even with a valid change beside it.
    let restart = generation(1, &keys, &upstream).replace(
        &format!("url = \"http://{}\"", upstream.addr),
        "url = \"http://127.0.0.1:1\"",
    );
    served.reload(&restart, "error").await;
    assert_eq!(served.status(&client, "/x", &only_a).await, 200);
    assert_eq!(
        served
            .metric(r#"jwtgate_config_reloads_total{result="ok"}"#)
            .await,
        0.0
    );
    // The next valid edit applies.
    served.reload(&generation(1, &keys, &upstream), "ok").await;
    assert_eq!(served.status(&client, "/x", &only_a).await, 401);
}

#[tokio::test]
async fn a_new_issuer_answers_503_until_its_keys_arrive_and_watch_sees_the_file() {
    let key = DevKey::rsa("k1");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let partner_keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    partner_keys.set_down(true);
    let upstream = Upstream::start().await;
    let base = generation(1, &keys, &upstream);
    let served = Served::start(&base, &["--watch"]).await;
    let partner_iss = format!("http://{}/oauth2/token", partner_keys.addr);
    let with_partner = format!(
        "{base}[[issuers]]\nname = \"partner\"\nissuer = \"{partner_iss}\"\njwks_uri = \"{}\"\naudiences = [\"{AUD_B}\"]\n",
        partner_keys.jwks_uri()
    );
    // --watch: no signal, only the file's new content.
    std::fs::write(&served.file, &with_partner).unwrap();
    let series = r#"jwtgate_config_reloads_total{result="ok"}"#;
    for _ in 0..100 {
        if served.metric(series).await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served.metric(series).await, 1.0, "--watch reloaded");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let partner = token(&key, &partner_iss, json!(AUD_B));
    // Its key manager is down: 503, and the pod stays ready (only its tokens wait).
    assert_eq!(served.status(&client, "/x", &partner).await, 503);
    assert_eq!(served.admin_get("/readyz").await.0, 200);
    partner_keys.set_down(false);
    let mut status = 0;
    for _ in 0..100 {
        status = served.status(&client, "/x", &partner).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the new issuer's keys arrived");
}

#[tokio::test]
async fn a_raised_lifetime_bound_keeps_older_tokens_to_the_old_one() {
    let key = DevKey::rsa("k1");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let revocation = |max: u64| {
        format!(
            "{}[revocation]\npush_token = \"reload-test-push-token-0123\"\nmax_token_lifetime_s = {max}\n",
            generation(1, &keys, &upstream)
        )
    };
    let served = Served::start(&revocation(600), &[]).await;
    let iss = format!("http://{}/oauth2/token", keys.addr);
    let long_lived = |iat: i64| {
        key.token(&json!({
            "iss": iss, "sub": "alice", "aud": AUD_B, "iat": iat, "exp": iat + 1000,
            "jti": format!("j-{}", rand_u64()),
        }))
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let before = long_lived(now() - 5);
    assert_eq!(
        served.status(&client, "/x", &before).await,
        401,
        "over 600 s"
    );
    served.reload(&revocation(3600), "ok").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Issued before the raise: still held to 600 s. Issued after: 3600 s applies.
    assert_eq!(served.status(&client, "/x", &before).await, 401);
    assert_eq!(served.status(&client, "/x", &long_lived(now())).await, 200);
}
