//! The reference key manager: token persistence optimisation in miniature.
//!
//! It issues JWT access tokens (`typ: at+jwt`) and JWT refresh tokens (`typ: rt+jwt`,
//! `token_type: refresh_token`) and stores neither. All it keeps is revocation records —
//! revoked jtis until their expiry, and "everything of user U / client C issued up to T"
//! rules — which it serves as the native feed, pushes to gateways, and prunes once nothing
//! they match can be alive.
//!
//! Endpoints:
//! - `POST /token` (form): `client_credentials`, `password`, `refresh_token` grants, client
//!   authenticated by Basic auth or `client_id`/`client_secret` form fields;
//! - `POST /revoke` (RFC 7009, `token`, `token_type_hint`), client authenticated;
//! - `POST /admin/revoke-user` / `/admin/revoke-client` (`{"sub"}` / `{"client_id"}`),
//!   `Authorization: Bearer {admin_token}`;
//! - `GET /revocations?since=CURSOR` (the native feed), `GET /jwks`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::keys::DevKey;
use crate::auth::Clock;

/// A client of the key manager.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: String,
}

/// A user for the password grant.
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub password: String,
    /// The `sub` of the user's tokens.
    pub sub: String,
}

/// Where revocations are pushed as they happen (a jwtgate admin listener).
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct KmConfig {
    pub issuer: String,
    pub audience: String,
    pub clients: Vec<Client>,
    pub users: Vec<User>,
    pub access_ttl_s: i64,
    pub refresh_ttl_s: i64,
    pub admin_token: String,
    pub push: Vec<PushTarget>,
}

/// One entry of the feed log.
struct Logged {
    seq: u64,
    record: Value,
    /// When the record can go (exp for jtis; revoked_at + longest token life for rules).
    prune_after: i64,
}

struct State {
    epoch: String,
    next_seq: u64,
    log: Vec<Logged>,
    /// Revoked jti → exp (to refuse revoked refresh tokens).
    revoked_jti: HashMap<String, i64>,
    /// Rules: ("subject"|"client", id) → revoked_at.
    rules: HashMap<(&'static str, String), i64>,
}

pub struct KeyManager {
    cfg: KmConfig,
    key: DevKey,
    jwks: Value,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    http: reqwest::Client,
}

type Resp = Response<Full<Bytes>>;

impl KeyManager {
    pub fn new(cfg: KmConfig, clock: Arc<dyn Clock>) -> Arc<KeyManager> {
        let key = DevKey::rsa("devkm-1");
        let jwks = super::keys::jwks(&[&key]);
        let mut e = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut e);
        Arc::new(KeyManager {
            cfg,
            key,
            jwks,
            clock,
            state: Mutex::new(State {
                epoch: e.iter().map(|b| format!("{b:02x}")).collect(),
                next_seq: 1,
                log: Vec::new(),
                revoked_jti: HashMap::new(),
                rules: HashMap::new(),
            }),
            http: reqwest::Client::new(),
        })
    }

    /// Serves the key manager on `listener`.
    pub fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> tokio::task::JoinHandle<()> {
        let km = self.clone();
        super::spawn_serve(
            listener,
            hyper::service::service_fn(move |req| {
                let km = km.clone();
                async move { Ok::<_, std::convert::Infallible>(km.route(req).await) }
            }),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> Resp {
        self.prune();
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/jwks" | "/oauth2/jwks") => json_resp(StatusCode::OK, &self.jwks),
            (Method::GET, "/revocations") => self.feed(req.uri().query()),
            (Method::POST, "/token" | "/oauth2/token") => self.token(req).await,
            (Method::POST, "/revoke" | "/oauth2/revoke") => self.revoke(req).await,
            (Method::POST, "/admin/revoke-user") => self.admin_rule(req, "subject").await,
            (Method::POST, "/admin/revoke-client") => self.admin_rule(req, "client").await,
            _ => oauth_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    /// Issues an access + refresh pair; stores nothing.
    pub fn issue(&self, client_id: &str, sub: &str, scope: &str) -> Value {
        let now = self.clock.now();
        let at_jti = random_id();
        let access = self.key.token_with(
            crate::config::Algorithm::RS256,
            json!({"typ": "at+jwt"}),
            &json!({
                "iss": self.cfg.issuer, "sub": sub, "aud": self.cfg.audience,
                "client_id": client_id, "azp": client_id, "iat": now, "nbf": now,
                "exp": now + self.cfg.access_ttl_s, "jti": at_jti, "scope": scope,
            }),
        );
        let refresh = self.key.token_with(
            crate::config::Algorithm::RS256,
            json!({"typ": "rt+jwt"}),
            &json!({
                "iss": self.cfg.issuer, "sub": sub, "aud": self.cfg.issuer,
                "client_id": client_id, "azp": client_id, "iat": now,
                "exp": now + self.cfg.refresh_ttl_s, "jti": random_id(),
                "token_type": "refresh_token", "rt_scope": scope,
            }),
        );
        json!({
            "access_token": access, "token_type": "Bearer",
            "expires_in": self.cfg.access_ttl_s, "refresh_token": refresh, "scope": scope,
        })
    }

    async fn token(self: &Arc<Self>, req: Request<Incoming>) -> Resp {
        let (client, form) = match self.client_form(req).await {
            Ok(cf) => cf,
            Err(r) => return r,
        };
        let scope = form
            .get("scope")
            .map_or("default", String::as_str)
            .to_owned();
        match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {
                json_resp(StatusCode::OK, &self.issue(&client.id, &client.id, &scope))
            }
            Some("password") => {
                let user = self.cfg.users.iter().find(|u| {
                    Some(&u.username) == form.get("username")
                        && Some(&u.password) == form.get("password")
                });
                match user {
                    Some(u) => json_resp(StatusCode::OK, &self.issue(&client.id, &u.sub, &scope)),
                    None => oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "wrong username or password",
                    ),
                }
            }
            Some("refresh_token") => {
                let Some(rt) = form.get("refresh_token") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is missing",
                    );
                };
                let claims = match self.check_own_token(rt, true) {
                    Ok(c) => c,
                    Err(why) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
                };
                if claims["client_id"].as_str() != Some(client.id.as_str()) {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "refresh token of another client",
                    );
                }
                // Rotation: the used refresh token is revoked, the new pair replaces it.
                self.record_jti(&claims).await;
                let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
                let scope = claims["rt_scope"].as_str().unwrap_or("default").to_owned();
                json_resp(StatusCode::OK, &self.issue(&client.id, &sub, &scope))
            }
            _ => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use client_credentials, password or refresh_token",
            ),
        }
    }

    /// RFC 7009: the client revokes one of its tokens (access or refresh). Unknown or
    /// invalid tokens still answer 200.
    async fn revoke(self: &Arc<Self>, req: Request<Incoming>) -> Resp {
        let (client, form) = match self.client_form(req).await {
            Ok(cf) => cf,
            Err(r) => return r,
        };
        let Some(token) = form.get("token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "token is missing",
            );
        };
        let hint_refresh = form.get("token_type_hint").map(String::as_str) == Some("refresh_token");
        let claims = self
            .check_own_token(token, hint_refresh)
            .or_else(|_| self.check_own_token(token, !hint_refresh));
        if let Ok(claims) = claims
            && claims["client_id"].as_str() == Some(client.id.as_str())
        {
            self.record_jti(&claims).await;
        }
        json_resp(StatusCode::OK, &json!({}))
    }

    async fn admin_rule(self: &Arc<Self>, req: Request<Incoming>, kind: &'static str) -> Resp {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.cfg.admin_token));
        if !ok {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin token required",
            );
        }
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return oauth_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    "body too large",
                );
            }
        };
        let field = if kind == "subject" {
            "sub"
        } else {
            "client_id"
        };
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get(field).and_then(Value::as_str).map(str::to_owned))
            .filter(|s| !s.is_empty());
        let Some(id) = id else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "body must be {\"sub\"} or {\"client_id\"}",
            );
        };
        let now = self.clock.now();
        let record = json!({"kind": kind, field: id, "iss": self.cfg.issuer, "revoked_at": now});
        {
            let mut s = self.lock();
            s.rules.insert((kind, id), now);
        }
        let longest = self.cfg.access_ttl_s.max(self.cfg.refresh_ttl_s);
        self.log_and_push(record, now + longest).await;
        json_resp(StatusCode::ACCEPTED, &json!({"revoked_at": now}))
    }

    /// Signature, expiry, token kind and revocation of a token this key manager issued.
    fn check_own_token(&self, token: &str, refresh: bool) -> Result<Value, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT");
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // The key manager's own key, parsed like any JWKS member.
        let doc = serde_json::json!({ "keys": [self.key.public_jwk(None)] }).to_string();
        let set = crate::jwks::KeySet::parse(doc.as_bytes()).map_err(|_| "key")?;
        let key = set.get(&self.key.kid).ok_or("key")?;
        let parsed = key.parsed_for(crate::jose::Algorithm::RS256).ok_or("key")?;
        let signature = b64.decode(sig).map_err(|_| "bad signature")?;
        if parsed
            .verify_sig(format!("{h}.{p}").as_bytes(), &signature)
            .is_err()
        {
            return Err("bad signature");
        }
        let header: Value = b64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("bad header")?;
        let claims: Value = b64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("bad claims")?;
        let is_refresh = header["typ"] == "rt+jwt" && claims["token_type"] == "refresh_token";
        if is_refresh != refresh {
            return Err("wrong token type");
        }
        let now = self.clock.now();
        if claims["exp"].as_i64().is_none_or(|exp| exp <= now) {
            return Err("token expired");
        }
        let iat = claims["iat"].as_i64().unwrap_or(0);
        let s = self.lock();
        if claims["jti"]
            .as_str()
            .is_some_and(|j| s.revoked_jti.contains_key(j))
        {
            return Err("token revoked");
        }
        let rule = |kind: &'static str, id: &Value| {
            id.as_str()
                .and_then(|id| s.rules.get(&(kind, id.to_owned())))
                .is_some_and(|t| iat <= *t)
        };
        if rule("subject", &claims["sub"]) || rule("client", &claims["client_id"]) {
            return Err("token revoked");
        }
        Ok(claims)
    }

    async fn record_jti(&self, claims: &Value) {
        let (Some(jti), Some(exp)) = (claims["jti"].as_str(), claims["exp"].as_i64()) else {
            return;
        };
        self.lock().revoked_jti.insert(jti.to_owned(), exp);
        self.log_and_push(json!({"kind": "jti", "jti": jti, "exp": exp}), exp)
            .await;
    }

    /// Appends to the feed log and pushes to every target (best effort: the feed is the
    /// source of truth, push only makes it immediate).
    async fn log_and_push(&self, record: Value, prune_after: i64) {
        {
            let mut s = self.lock();
            let seq = s.next_seq;
            s.next_seq += 1;
            s.log.push(Logged {
                seq,
                record: record.clone(),
                prune_after,
            });
        }
        for target in &self.cfg.push {
            let sent = self
                .http
                .post(&target.url)
                .bearer_auth(&target.token)
                .json(&json!({"revocations": [record]}))
                .timeout(std::time::Duration::from_secs(2))
                .send()
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "devkm: push failed; gateways will poll it");
            }
        }
    }

    /// The native feed: records after `since` (`epoch:seq`); a cursor from another epoch
    /// (the key manager restarted) gets everything with `reset: true`.
    fn feed(&self, query: Option<&str>) -> Resp {
        let since = query
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .find(|(k, _)| k == "since")
            .map(|(_, v)| v.into_owned());
        let s = self.lock();
        let (reset, after) = match since.as_deref().and_then(|c| c.split_once(':')) {
            Some((epoch, seq)) if epoch == s.epoch => (false, seq.parse().unwrap_or(0)),
            Some(_) => (true, 0),
            None => (false, 0),
        };
        let records: Vec<&Value> = s
            .log
            .iter()
            .filter(|l| l.seq > after)
            .map(|l| &l.record)
            .collect();
        let cursor = format!("{}:{}", s.epoch, s.next_seq - 1);
        json_resp(
            StatusCode::OK,
            &json!({"cursor": cursor, "reset": reset, "revocations": records}),
        )
    }

    /// The key manager's own token cleanup: records nothing can match any more go.
    pub fn prune(&self) -> usize {
        let now = self.clock.now();
        let longest = self.cfg.access_ttl_s.max(self.cfg.refresh_ttl_s);
        let mut s = self.lock();
        let before = s.log.len();
        s.log.retain(|l| l.prune_after >= now);
        s.revoked_jti.retain(|_, exp| *exp >= now);
        s.rules.retain(|_, t| *t + longest >= now);
        before - s.log.len()
    }

    /// Reads a form body and authenticates the client (Basic auth or form credentials).
    async fn client_form(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Client, HashMap<String, String>), Resp> {
        let basic = basic_credentials(&req);
        let form = read_form(req).await?;
        match self.authenticate_client(basic, &form) {
            Some(client) => Ok((client, form)),
            None => Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )),
        }
    }

    fn authenticate_client(
        &self,
        basic: Option<(String, String)>,
        form: &HashMap<String, String>,
    ) -> Option<Client> {
        let (id, secret) = basic.or_else(|| {
            Some((
                form.get("client_id")?.clone(),
                form.get("client_secret")?.clone(),
            ))
        })?;
        self.cfg
            .clients
            .iter()
            .find(|c| c.id == id && c.secret == secret)
            .cloned()
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn basic_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

async fn read_form(req: Request<Incoming>) -> Result<HashMap<String, String>, Resp> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| {
            oauth_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "body too large",
            )
        })?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    json_resp(
        status,
        &json!({"error": error, "error_description": description}),
    )
}
