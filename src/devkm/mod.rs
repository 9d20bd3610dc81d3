//! Reference key manager pieces for `jwtgate dev` (and tests): ephemeral signing keys, a
//! JWKS endpoint, and an echo upstream. Nothing in the product path depends on this module.

pub mod fleet;
pub mod keys;
pub mod km;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use crate::App;
use crate::config::Config;
pub use keys::DevKey;

/// Serves `handler` on `listener` (HTTP/1.1) until the task is dropped.
pub fn serve_fn<F>(listener: TcpListener, handler: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    spawn_serve(
        listener,
        hyper::service::service_fn(move |req| {
            let resp = handler(req);
            async move { Ok::<_, Infallible>(resp) }
        }),
    )
}

/// Serves `service` on `listener` (bounded like every listener) until the task is dropped.
pub(crate) fn spawn_serve<S, B>(listener: TcpListener, service: S) -> tokio::task::JoinHandle<()>
where
    S: crate::proxy::listener::ConnService<B>,
    B: crate::proxy::listener::ConnBody,
{
    tokio::spawn(crate::proxy::listener::serve(
        "devkm",
        listener,
        crate::proxy::listener::ConnLimits::internal(std::time::Duration::from_secs(10)),
        |tcp| async move { Ok(tcp) },
        move |_peer| service.clone(),
        std::future::pending(),
        std::time::Duration::ZERO,
    ))
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// An upstream that answers every request with what it received: method, path and the
/// decoded claims header.
pub fn echo_upstream(
    listener: TcpListener,
    claims_header: &'static str,
) -> tokio::task::JoinHandle<()> {
    serve_fn(listener, move |req| {
        let claims = req
            .headers()
            .get(claims_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        json_response(
            StatusCode::OK,
            &json!({
                "upstream": "echo",
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "user": req.headers().get("x-user").and_then(|v| v.to_str().ok()),
                "claims": claims,
            }),
        )
    })
}

/// Options of `jwtgate dev`.
pub struct DevOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// long-function: most of it is the one walkthrough text printed for the user, kept
// whole so it reads as it prints.
/// `jwtgate dev`: the reference key manager, an echo upstream and the proxy, all on
/// loopback, wired for push and poll; prints a walkthrough, then serves until `shutdown`.
pub async fn run_dev(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let km_listener = TcpListener::bind("127.0.0.1:0").await?;
    let km_addr = km_listener.local_addr()?;
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    echo_upstream(upstream, "x-jwt-payload");

    let issuer = format!("http://{km_addr}/oauth2/token");
    let push_token = random_hex(16);
    let admin_token = random_hex(16);
    let fleet = fleet::start(&push_token, &format!("http://{km_addr}/revocations")).await;
    // With the fleet path, the proxy follows the stream instead of polling the key manager.
    let sync = match &fleet {
        Some(f) => format!("[revocation.stream]\nurls = [\"{}\"]", f.nats_url),
        None => format!("feed_url = \"http://{km_addr}/revocations\"\npoll_interval_s = 2"),
    };
    let config = Config::from_toml_str(
        &format!(
            r#"
[server]
listen = "{listen}"
admin_listen = "{admin}"
shutdown_delay_s = 0
[upstream]
url = "http://{upstream_addr}"
[[issuers]]
name = "dev-km"
issuer = "{issuer}"
jwks_uri = "http://{km_addr}/oauth2/jwks"
audiences = ["api://dev"]
algorithms = ["RS256"]
[revocation]
max_sync_age_s = 60
push_token = "{push_token}"
max_token_lifetime_s = 86400
{sync}
[forward.claim_headers]
"x-user" = "sub"
[[routes]]
name = "health"
path_prefix = "/health"
auth = "public"
[[routes]]
name = "orders-write"
path_prefix = "/orders"
methods = ["POST", "PUT", "PATCH", "DELETE"]
scopes_all = ["orders:write"]
"#,
            listen = opts.listen,
            admin = opts.admin_listen,
        ),
        &|_| None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = App::build(config)?.bind().await?;
    let proxy = app.proxy_addr();
    let admin = app.admin_addr();

    let km = km::KeyManager::new(
        km::KmConfig {
            issuer: issuer.clone(),
            audience: "api://dev".into(),
            clients: vec![km::Client {
                id: "dev-client".into(),
                secret: "dev-secret".into(),
            }],
            users: vec![km::User {
                username: "alice".into(),
                password: "alice".into(),
                sub: "alice".into(),
            }],
            access_ttl_s: 900,
            refresh_ttl_s: 3600,
            admin_token: admin_token.clone(),
            push: vec![km::PushTarget {
                url: match &fleet {
                    Some(f) => format!("http://{}/revocations", f.relay),
                    None => format!("http://{admin}/revocations"),
                },
                token: push_token,
            }],
        },
        Arc::new(crate::auth::SystemClock),
    );
    km.serve(km_listener);

    let pair = km.issue("dev-client", "alice", "orders:read");
    let token = pair["access_token"].as_str().unwrap_or_default().to_owned();
    let tampered = tamper(&token);
    let writer = km.issue("dev-client", "alice", "orders:read orders:write");
    let writer = writer["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let km = format!("http://{km_addr}");
    let api = format!("http://{proxy}");
    let path = match &fleet {
        Some(f) => format!(
            "revocations: key manager → jwtgate relay http://{} → NATS JetStream {} (stream JWTGATE_REV) → proxy",
            f.relay, f.nats_url
        ),
        None => "revocations: key manager → proxy (push and poll); with nats-server on the PATH they run through the fleet relay".to_owned(),
    };
    let grab = |var: &str, field: &str| {
        format!(r#"{var}=$(printf '%s' "$PAIR" | sed -n 's/.*"{field}":"\([^"]*\)".*/\1/p')"#)
    };
    // The walkthrough is printed once jwtgate is ready (its key set fetched): a curl pasted
    // at once must get the answer printed, not a 503 from a proxy still fetching keys.
    let walkthrough = async move {
        // Loopback only: never through an http_proxy from the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default();
        let ready_url = format!("http://{admin}/readyz");
        let mut ready = false;
        for _ in 0..100 {
            let answer = http.get(&ready_url).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if !ready {
            eprintln!(
                "jwtgate dev: not ready after 10 s (see {ready_url}); the walkthrough may answer 503"
            );
        }
        println!(
            r#"jwtgate dev: proxy on {api}, admin on http://{admin}
  reference key manager {km} (JWKS {km}/oauth2/jwks, feed {km}/revocations), echo upstream http://{upstream_addr}
  {path}

Two tokens valid for 15 minutes (RS256, sub=alice, aud=api://dev), scope orders:read,
and scope "orders:read orders:write":

TOKEN={token}
WRITER={writer}

  # 200: valid token, forwarded; the upstream echoes the verified claims
  curl -i -H "Authorization: Bearer $TOKEN" {api}/orders

  # 401: the same token with sub changed to mallory (the signature no longer matches)
  curl -i -H "Authorization: Bearer {tampered}" {api}/orders

  # 401: no token at all
  curl -i {api}/orders

Routes (the first match wins; paths are normalized first, so /x/../orders is /orders):

  # 200 without a token: /health is a public route
  curl -i {api}/health
  # 403 insufficient_scope: writes to /orders need orders:write
  curl -i -X POST -H "Authorization: Bearer $TOKEN" {api}/orders
  # 200: the writer token has it; the upstream gets x-user: alice from the claim
  curl -i -X POST -H "Authorization: Bearer $WRITER" {api}/orders
  # 401: a path that walks out of /health is decided as where it lands
  curl -i --path-as-is {api}/health/../orders

  # readiness and metrics
  curl -s http://{admin}/readyz; curl -s http://{admin}/metrics | grep ^jwtgate_

Revocation without token persistence (the key manager stores no token, only revocations):

  KM={km}; API={api}; ADMIN_TOKEN={admin_token}
  # 1. a token pair for alice (password grant); access and refresh tokens are both JWTs
  PAIR=$(curl -s -u dev-client:dev-secret -d grant_type=password -d username=alice -d password=alice $KM/oauth2/token)
  {at}; {rt}
  curl -s -o /dev/null -w '%{{http_code}}
' -H "Authorization: Bearer $AT" $API/orders      # 200
  # 2. revoke the access token (RFC 7009): pushed to jwtgate, refused at once
  curl -s -u dev-client:dev-secret -d token=$AT -d token_type_hint=access_token $KM/oauth2/revoke
  curl -s -o /dev/null -w '%{{http_code}}
' -H "Authorization: Bearer $AT" $API/orders      # 401
  # 3. refresh: a new pair works (the used refresh token is revoked)
  PAIR=$(curl -s -u dev-client:dev-secret -d grant_type=refresh_token -d refresh_token=$RT $KM/oauth2/token)
  {at}; {rt}
  curl -s -o /dev/null -w '%{{http_code}}
' -H "Authorization: Bearer $AT" $API/orders      # 200
  # 4. revoke everything of alice (password change): both new tokens are refused
  curl -s -H "Authorization: Bearer $ADMIN_TOKEN" -d '{{"sub":"alice"}}' $KM/admin/revoke-user
  curl -s -o /dev/null -w '%{{http_code}}
' -H "Authorization: Bearer $AT" $API/orders      # 401
  curl -s -u dev-client:dev-secret -d grant_type=refresh_token -d refresh_token=$RT $KM/oauth2/token   # invalid_grant

Ctrl-C stops it."#,
            at = grab("AT", "access_token"),
            rt = grab("RT", "refresh_token"),
        );
    };
    tokio::join!(app.run(shutdown), walkthrough);
    drop(fleet);
    Ok(())
}

/// The same token with `sub` changed to "mallory" and the original signature kept: what
/// an attacker who edits a token gets.
pub fn tamper(token: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return String::new();
    };
    let mut claims: serde_json::Value = b64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    claims["sub"] = "mallory".into();
    format!("{h}.{}.{s}", b64.encode(claims.to_string()))
}
