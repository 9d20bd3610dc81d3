//! Reference key manager pieces for `jwtgate dev` (and tests): ephemeral signing keys, a
//! JWKS endpoint, and an echo upstream. Nothing in the product path depends on this module.

pub mod keys;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
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
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = handler(req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
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

/// `jwtgate dev`: key manager (JWKS), echo upstream and the proxy, all on loopback; prints
/// a token and curl lines, then serves until `shutdown`.
pub async fn run_dev(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let key = DevKey::rsa("dev-key-1");
    let km = TcpListener::bind("127.0.0.1:0").await?;
    let km_addr = km.local_addr()?;
    let jwks = keys::jwks(&[&key]);
    serve_fn(km, move |req| match req.uri().path() {
        "/oauth2/jwks" => json_response(StatusCode::OK, &jwks),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    });
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    echo_upstream(upstream, "x-jwt-payload");

    let issuer = format!("http://{km_addr}/oauth2/token");
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
"#,
            listen = opts.listen,
            admin = opts.admin_listen,
        ),
        &|_| None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = App::bind(config).await?;
    let proxy = app.proxy_addr();
    let admin = app.admin_addr();

    let now = crate::jwks::unix_now();
    let claims = json!({
        "iss": issuer, "sub": "alice", "aud": "api://dev", "client_id": "dev-client",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": format!("dev-{now}"),
        "scope": "orders:read",
    });
    let token = key.token(&claims);
    let tampered = tamper(&token);
    println!(
        r#"jwtgate dev: proxy on http://{proxy}, admin on http://{admin}
  key manager (JWKS) http://{km_addr}/oauth2/jwks, echo upstream http://{upstream_addr}

A token valid for one hour (RS256, sub=alice, aud=api://dev):

TOKEN={token}

  # 200: valid token, forwarded; the upstream echoes the verified claims
  curl -i -H "Authorization: Bearer $TOKEN" http://{proxy}/orders

  # 401: the same token with sub changed to mallory (the signature no longer matches)
  curl -i -H "Authorization: Bearer {tampered}" http://{proxy}/orders

  # 401: no token at all
  curl -i http://{proxy}/orders

  # readiness and metrics
  curl -s http://{admin}/readyz; curl -s http://{admin}/metrics | grep ^jwtgate_

Ctrl-C stops it."#
    );
    app.run(shutdown).await?;
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
