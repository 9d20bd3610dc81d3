//! The reference key manager with jwtgate, through real sockets: the whole token lifecycle
//! with nothing but revocation records stored.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use jwtgate::App;
use jwtgate::config::Config;
use jwtgate::devkm::km::{Client, KeyManager, KmConfig, PushTarget, User};
use serde_json::Value;

struct Stack {
    km_url: String,
    /// jwtgate that receives pushes (and polls).
    pushed: std::net::SocketAddr,
    /// jwtgate that only polls.
    polled: std::net::SocketAddr,
    upstream: Upstream,
    http: reqwest::Client,
    km: Arc<KeyManager>,
}

async fn gateway(km_addr: std::net::SocketAddr, upstream: &Upstream) -> jwtgate::Listening {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
url = "http://{}"
[[issuers]]
issuer = "http://{km_addr}/oauth2/token"
jwks_uri = "http://{km_addr}/oauth2/jwks"
audiences = ["api://dev"]
[revocation]
feed_url = "http://{km_addr}/revocations"
poll_interval_s = 1
max_sync_age_s = 30
push_token = "{PUSH_TOKEN}"
"#,
        upstream.addr
    );
    App::build(Config::from_toml_str(&text, &|_| None).unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap()
}

async fn stack(clock: Arc<dyn jwtgate::auth::Clock>) -> Stack {
    let upstream = Upstream::start().await;
    let km_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let km_addr = km_listener.local_addr().unwrap();
    let pushed = gateway(km_addr, &upstream).await;
    let polled = gateway(km_addr, &upstream).await;
    let (pushed_addr, polled_addr) = (pushed.proxy_addr(), polled.proxy_addr());
    let km = KeyManager::new(
        KmConfig {
            issuer: format!("http://{km_addr}/oauth2/token"),
            audience: "api://dev".into(),
            clients: vec![Client {
                id: "c1".into(),
                secret: "s1".into(),
            }],
            users: vec![User {
                username: "alice".into(),
                password: "pw".into(),
                sub: "alice-uuid".into(),
            }],
            access_ttl_s: 600,
            refresh_ttl_s: 3600,
            admin_token: "admin-token".into(),
            push: vec![PushTarget {
                url: format!("http://{}/revocations", pushed.admin_addr()),
                token: PUSH_TOKEN.into(),
            }],
        },
        clock,
    );
    km.serve(km_listener);
    let admin_urls = [pushed.admin_addr(), polled.admin_addr()];
    tokio::spawn(pushed.run(std::future::pending()));
    tokio::spawn(polled.run(std::future::pending()));
    let http = reqwest::Client::new();
    for admin in admin_urls {
        let deadline = Instant::now() + Duration::from_secs(10);
        while http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(Instant::now() < deadline, "gateway not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Stack {
        km_url: format!("http://{km_addr}"),
        pushed: pushed_addr,
        polled: polled_addr,
        upstream,
        http,
        km,
    }
}

impl Stack {
    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/oauth2/token", self.km_url))
            .basic_auth("c1", Some("s1"))
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn pair(&self) -> (String, String) {
        let (status, v) = self
            .token(&[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "pw"),
            ])
            .await;
        assert_eq!(status, 200, "{v}");
        (
            v["access_token"].as_str().unwrap().to_owned(),
            v["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn call(&self, gw: std::net::SocketAddr, token: &str) -> u16 {
        self.http
            .get(format!("http://{gw}/orders"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn revoke(&self, token: &str, hint: &str) {
        let r = self
            .http
            .post(format!("{}/oauth2/revoke", self.km_url))
            .basic_auth("c1", Some("s1"))
            .form(&[("token", token), ("token_type_hint", hint)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn eventually_401(
        &self,
        gw: std::net::SocketAddr,
        token: &str,
        within: Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.call(gw, token).await == 401 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

#[tokio::test]
async fn revoked_access_token_is_refused_at_once_by_push_and_within_a_poll_elsewhere() {
    let s = stack(Arc::new(jwtgate::auth::SystemClock)).await;
    let (at, _rt) = s.pair().await;
    assert_eq!(s.call(s.pushed, &at).await, 200);
    assert_eq!(s.call(s.polled, &at).await, 200);

    s.revoke(&at, "access_token").await;
    // The revoke call returns after the push was applied: refused at once.
    assert_eq!(s.call(s.pushed, &at).await, 401);
    // The other pod learns it from the feed within poll_interval_s (1 s) + 1 s.
    assert!(
        s.eventually_401(s.polled, &at, Duration::from_secs(2))
            .await
    );
    let forwarded = s.upstream.count();
    assert_eq!(s.call(s.pushed, &at).await, 401);
    assert_eq!(s.call(s.polled, &at).await, 401);
    assert_eq!(
        s.upstream.count(),
        forwarded,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn refresh_gives_a_working_pair_and_revoked_refresh_tokens_are_refused() {
    let s = stack(Arc::new(jwtgate::auth::SystemClock)).await;
    let (at, rt) = s.pair().await;
    // A refresh token is never an access token.
    assert_eq!(s.call(s.pushed, &rt).await, 401);

    let (status, v) = s
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .await;
    assert_eq!(status, 200, "{v}");
    let at2 = v["access_token"].as_str().unwrap().to_owned();
    let rt2 = v["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(at, at2);
    assert_eq!(s.call(s.pushed, &at2).await, 200);

    // The used refresh token was rotated out.
    let (status, v) = s
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "invalid_grant");

    // Revoke the new refresh token explicitly: refused too.
    s.revoke(&rt2, "refresh_token").await;
    let (status, _) = s
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt2)])
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        s.call(s.pushed, &at2).await,
        200,
        "only the refresh token was revoked"
    );
}

#[tokio::test]
async fn revoking_a_user_refuses_both_tokens_on_every_gateway() {
    let s = stack(Arc::new(jwtgate::auth::SystemClock)).await;
    let (at, rt) = s.pair().await;
    let (_, app) = s.token(&[("grant_type", "client_credentials")]).await;
    let app_token = app["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.call(s.pushed, &at).await, 200);

    let r = s
        .http
        .post(format!("{}/admin/revoke-user", s.km_url))
        .bearer_auth("admin-token")
        .body(r#"{"sub":"alice-uuid"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(s.call(s.pushed, &at).await, 401);
    assert!(
        s.eventually_401(s.polled, &at, Duration::from_secs(2))
            .await
    );
    let (status, _) = s
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .await;
    assert_eq!(
        status, 400,
        "the refresh token falls under the user rule too"
    );
    assert_eq!(
        s.call(s.pushed, &app_token).await,
        200,
        "the app's own token is untouched"
    );

    let r = s
        .http
        .post(format!("{}/admin/revoke-client", s.km_url))
        .bearer_auth("admin-token")
        .body(r#"{"client_id":"c1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(s.call(s.pushed, &app_token).await, 401);

    let r = s
        .http
        .post(format!("{}/admin/revoke-user", s.km_url))
        .bearer_auth("wrong")
        .body(r#"{"sub":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_key_manager_prunes_its_own_records() {
    let clock = Arc::new(ManualClock(now().into()));
    let s = stack(clock.clone()).await;
    let (at, _) = s.pair().await;
    s.revoke(&at, "access_token").await;
    let feed = |s: &Stack| {
        let http = s.http.clone();
        let url = format!("{}/revocations", s.km_url);
        async move {
            let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            v["revocations"].as_array().unwrap().len()
        }
    };
    assert_eq!(feed(&s).await, 1);
    // Past the access token's exp (600 s): the record matches nothing alive any more.
    clock.0.fetch_add(601, Ordering::SeqCst);
    assert_eq!(s.km.prune(), 1);
    assert_eq!(feed(&s).await, 0);
}
