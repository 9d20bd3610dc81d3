//! Route policy through real sockets (DESIGN §8): path normalization against the bypass
//! families of this field's CVEs, every matcher and `auth` mode, token sources, CSRF, CORS
//! preflight, claim headers, and the 403/400 answers. Every rejected request is shown not
//! to have reached the recording upstream; every accepted one shows what did.

mod common;

use common::*;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ROUTES: &str = r#"
[[routes]]
name = "public"
path_prefix = "/public"
auth = "public"

[[routes]]
name = "docs"
path_exact = "/docs"
methods = ["GET"]
auth = "public"

[[routes]]
name = "admin"
path_prefix = "/admin"
scopes_all = ["admin"]

[[routes]]
name = "orders-write"
path_regex = "/orders/[0-9]+"
methods = ["PUT", "DELETE"]
scopes_all = ["orders:write"]
scopes_any = ["tenant:acme", "tenant:all"]

[[routes]]
name = "ops"
path_prefix = "/ops"
claims = { "realm_access.roles" = ["admin", "ops"], "tier" = 2 }

[[routes]]
name = "maybe"
path_prefix = "/maybe"
auth = "optional"
"#;

async fn harness(extra: &str) -> (Harness, DevKey) {
    let key = DevKey::rsa("k1");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: extra.to_owned(),
            ..Options::default()
        },
    )
    .await;
    (h, key)
}

/// One raw HTTP/1.1 request (the target exactly as written: no client library normalizes
/// it first). Returns the status and the response head.
async fn raw(h: &Harness, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut tcp = TcpStream::connect(h.proxy).await.unwrap();
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

fn token_with(h: &Harness, key: &DevKey, extra: Value) -> String {
    let mut claims = h.claims();
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    key.token(&claims)
}

/// Asserts one request's outcome, and that the upstream saw exactly `forwarded` (the path
/// and query it received) or nothing at all.
async fn expect(
    h: &Harness,
    (method, target): (&str, &str),
    headers: &[(&str, &str)],
    status: u16,
    forwarded: Option<&str>,
) -> String {
    let before = h.upstream.count();
    let (got, head) = raw(h, method, target, headers).await;
    assert_eq!(got, status, "{method} {target}: {head}");
    match forwarded {
        None => assert_eq!(
            h.upstream.count(),
            before,
            "{method} {target} reached the upstream"
        ),
        Some(uri) => {
            assert_eq!(h.upstream.count(), before + 1, "{method} {target}");
            assert_eq!(h.upstream.last().uri, uri, "{method} {target}");
        }
    }
    head
}

#[tokio::test]
async fn bypass_table_from_the_exempt_path_cves() {
    let (h, key) = harness(ROUTES).await;
    let user = token_with(&h, &key, json!({"scope": "orders:read"}));
    let bearer = format!("Bearer {user}");
    let anon: &[(&str, &str)] = &[];
    // (method, raw target, expected status, what the upstream receives)
    let table: &[(&str, &str, u16, Option<&str>)] = &[
        ("GET", "/public/x", 200, Some("/public/x")),
        ("GET", "/public/./x", 200, Some("/public/x")),
        ("GET", "/%70ublic/x", 200, Some("/public/x")),
        ("GET", "/public//x", 200, Some("/public/x")),
        (
            "GET",
            "/public/x?next=/../admin",
            200,
            Some("/public/x?next=/../admin"),
        ),
        ("GET", "/public/a%3ab", 200, Some("/public/a%3Ab")),
        // `..` and its encodings climb out of the public prefix: decided as the target.
        ("GET", "/public/../admin/x", 401, None),
        ("GET", "/public/%2e%2e/admin/x", 401, None),
        ("GET", "/public/%2E%2E/admin", 401, None),
        ("GET", "/public/.%2e/admin", 401, None),
        ("GET", "//admin/x", 401, None),
        ("GET", "/public/..", 401, None),
        ("GET", "http://api.example.com/public/../admin", 401, None),
        // Case and segment boundaries: not the public route.
        ("GET", "/Public/x", 401, None),
        ("GET", "/publicx", 401, None),
        // Refused outright: encodings an upstream may read differently.
        ("GET", "/public/..;/admin/x", 400, None),
        ("GET", "/public;x=1/../admin", 400, None),
        ("GET", "/public/x;jsessionid=1", 400, None),
        ("GET", "/public/%3b/x", 400, None),
        ("GET", "/public/%252e%252e/admin", 400, None),
        ("GET", "/public/%25%32%65%25%32%65/admin", 400, None),
        ("GET", "/public%2F..%2Fadmin", 400, None),
        ("GET", "/public/%2e%2e%2fadmin", 400, None),
        ("GET", "/public/%5c..%5cadmin", 400, None),
        ("GET", "/public\\..\\admin", 400, None),
        ("GET", "/public/%00/x", 400, None),
        ("GET", "/public/%0a", 400, None),
        ("GET", "/public/%", 400, None),
        ("GET", "/public/%zz", 400, None),
        ("GET", "/..", 400, None),
        ("GET", "/public/../../admin", 400, None),
        // Methods: GET also takes HEAD; a GET-only public route is not public for POST.
        ("HEAD", "/docs", 200, Some("/docs")),
        ("POST", "/docs", 401, None),
        ("GET", "/docs/", 401, None),
    ];
    for (method, target, status, forwarded) in table {
        let head = expect(&h, (method, target), anon, *status, *forwarded).await;
        if *status == 400 {
            assert!(
                head.contains("error=\"invalid_request\""),
                "{target}: {head}"
            );
        }
    }
    // Override headers cannot turn a checked GET into another method or path.
    expect(
        &h,
        ("GET", "/public/x"),
        &[("X-HTTP-Method-Override", "DELETE")],
        400,
        None,
    )
    .await;
    expect(
        &h,
        ("GET", "/public/x"),
        &[("X-Original-URL", "/admin")],
        400,
        None,
    )
    .await;
    // With a token that lacks `admin`, every spelling of the admin path is a 403.
    for target in ["/admin/x", "/public/../admin/x", "/%61dmin/x", "//admin//x"] {
        let head = expect(
            &h,
            ("GET", target),
            &[("Authorization", &bearer)],
            403,
            None,
        )
        .await;
        assert!(head.contains("error=\"insufficient_scope\""), "{head}");
        assert!(head.contains("scope=\"admin\""), "{head}");
    }
    let admin = format!("Bearer {}", token_with(&h, &key, json!({"scope": "admin"})));
    expect(
        &h,
        ("GET", "/public/../admin/x"),
        &[("Authorization", &admin)],
        200,
        Some("/admin/x"),
    )
    .await;
    // Every 400 of the table is jwtgate's own `bad_path` (its challenge was checked above).
    let refused = table.iter().filter(|r| r.2 == 400).count() as f64;
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="bad_path",route="none"}"#)
            .await,
        refused
    );
    assert!(
        h.metric(r#"jwtgate_rejections_total{reason="insufficient_scope",route="admin"}"#)
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn semicolons_when_allowed_are_forwarded_but_not_matched() {
    let (h, _key) = harness(&format!("[policy]\nallow_path_semicolons = true\n{ROUTES}")).await;
    let anon: &[(&str, &str)] = &[];
    expect(
        &h,
        ("GET", "/public;jsessionid=1/x"),
        anon,
        200,
        Some("/public;jsessionid=1/x"),
    )
    .await;
    expect(
        &h,
        ("GET", "/admin;x=1/../public/y"),
        anon,
        200,
        Some("/public/y"),
    )
    .await;
    for target in [
        "/public/..;/admin",
        "/public/.;x/admin",
        "/public/;x/admin",
        "/x/..;/public",
    ] {
        expect(&h, ("GET", target), anon, 400, None).await;
    }
    // Parameters never make a path public: `/public;x` is the public route, `/admin;x` not.
    expect(&h, ("GET", "/admin;public/x"), anon, 401, None).await;
}

#[tokio::test]
async fn matchers_methods_scopes_and_claims() {
    let (h, key) = harness(ROUTES).await;
    let t = |extra: Value| format!("Bearer {}", token_with(&h, &key, extra));
    let writer = t(json!({"scope": "orders:write tenant:acme"}));
    let writer_scp = t(json!({"scp": ["orders:write"], "scope": "tenant:all"}));
    let no_tenant = t(json!({"scope": "orders:write"}));
    // Regex: whole-path match, methods listed; GET is the default route (any valid token).
    expect(
        &h,
        ("PUT", "/orders/42"),
        &[("Authorization", &writer)],
        200,
        Some("/orders/42"),
    )
    .await;
    expect(
        &h,
        ("DELETE", "/orders/42"),
        &[("Authorization", &writer_scp)],
        200,
        Some("/orders/42"),
    )
    .await;
    let head = expect(
        &h,
        ("PUT", "/orders/42"),
        &[("Authorization", &no_tenant)],
        403,
        None,
    )
    .await;
    assert!(
        head.contains("scope=\"orders:write tenant:acme tenant:all\""),
        "scope lists scopes_all then scopes_any: {head}"
    );
    expect(
        &h,
        ("PUT", "/orders/42x"),
        &[("Authorization", &no_tenant)],
        200,
        Some("/orders/42x"),
    )
    .await;
    expect(
        &h,
        ("GET", "/orders/42"),
        &[("Authorization", &no_tenant)],
        200,
        Some("/orders/42"),
    )
    .await;
    // Claims: an array claim holding one of the values, and a number compared by value.
    let ops = t(json!({"realm_access": {"roles": ["dev", "ops"]}, "tier": 2.0}));
    expect(
        &h,
        ("GET", "/ops/x"),
        &[("Authorization", &ops)],
        200,
        Some("/ops/x"),
    )
    .await;
    for bad in [
        json!({"realm_access": {"roles": ["dev"]}, "tier": 2}),
        json!({"realm_access": {"roles": ["ops"]}, "tier": "2"}),
        json!({"realm_access": {"roles": ["ops"]}}),
        json!({"realm_access": "ops", "tier": 2}),
    ] {
        let head = expect(
            &h,
            ("GET", "/ops"),
            &[("Authorization", &t(bad))],
            403,
            None,
        )
        .await;
        assert!(head.contains("error=\"insufficient_scope\""), "{head}");
        assert!(
            !head.contains("scope=\""),
            "claim_mismatch names no scope: {head}"
        );
    }
    let m = h.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"jwtgate_rejections_total{reason="claim_mismatch",route="ops"}"#
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"jwtgate_requests_total{outcome="forwarded",route="orders-write"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"jwtgate_requests_total{outcome="forwarded",route="default"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn issuers_restrict_a_route_by_name() {
    let key = DevKey::rsa("k1");
    let keys = std::sync::Arc::new(KeyServer::start(jwks_of(&[(&key, None)])).await);
    let partner_iss = format!("http://{}/partner", keys.addr);
    let extra = format!(
        "[[issuers]]\nname = \"partner\"\nissuer = \"{partner_iss}\"\njwks_uri = \"{}\"\naudiences = [\"{AUD}\"]\n\
         [[routes]]\nname = \"partner\"\npath_prefix = \"/partner\"\nissuers = [\"partner\"]\n",
        keys.jwks_uri()
    );
    let h = Harness::start_with(
        Value::Null,
        Options {
            extra,
            key_server: Some(keys),
            ..Options::default()
        },
    )
    .await;
    let ours = format!("Bearer {}", key.token(&h.claims()));
    let mut claims = h.claims();
    claims["iss"] = json!(partner_iss);
    let theirs = format!("Bearer {}", key.token(&claims));
    expect(
        &h,
        ("GET", "/partner/x"),
        &[("Authorization", &ours)],
        403,
        None,
    )
    .await;
    expect(
        &h,
        ("GET", "/partner/x"),
        &[("Authorization", &theirs)],
        200,
        Some("/partner/x"),
    )
    .await;
    expect(
        &h,
        ("GET", "/other"),
        &[("Authorization", &ours)],
        200,
        Some("/other"),
    )
    .await;
}

#[tokio::test]
async fn public_and_optional_routes_never_forward_unchecked_identity() {
    let extra = format!(
        "{ROUTES}\n[[routes]]\nname = \"webhook\"\npath_exact = \"/hook\"\nauth = \"public\"\nforward_credentials = true\n\
         [[token.sources]]\nheader = \"authorization\"\nscheme = \"Bearer\"\n[[token.sources]]\ncookie = \"at\"\n\
         [[token.sources]]\nquery = \"access_token\"\n[forward.claim_headers]\n\"x-user\" = \"sub\"\n"
    );
    let (h, key) = harness(&extra).await;
    let good = key.token(&h.claims());
    let bearer = format!("Bearer {good}");
    let forged = &[
        ("Authorization", "Bearer not.a.token"),
        ("Cookie", "theme=dark; at=not.a.token; lang=en"),
        ("X-User", "admin"),
        ("X_User", "admin"),
        ("X-JWT-Payload", "eyJzdWIiOiJhZG1pbiJ9"),
    ];
    // Public: the invalid token is not read; every credential and identity header goes.
    expect(
        &h,
        ("GET", "/public/x?access_token=zzz&a=1"),
        forged,
        200,
        Some("/public/x?a=1"),
    )
    .await;
    let seen = h.upstream.last();
    for name in ["authorization", "x-user", "x_user", "x-jwt-payload"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["cookie"], "theme=dark; lang=en");
    // forward_credentials keeps what came (identity headers still go).
    expect(&h, ("GET", "/hook"), forged, 200, Some("/hook")).await;
    let seen = h.upstream.last();
    assert_eq!(seen.headers["authorization"], "Bearer not.a.token");
    assert!(
        seen.headers["cookie"]
            .to_str()
            .unwrap()
            .contains("at=not.a.token")
    );
    assert!(!seen.headers.contains_key("x-user") && !seen.headers.contains_key("x_user"));
    // Optional: nothing → forwarded without identity; another scheme is not a token;
    // an invalid token is a 401; a valid one sets identity.
    expect(
        &h,
        ("GET", "/maybe"),
        &[("X-User", "admin")],
        200,
        Some("/maybe"),
    )
    .await;
    assert!(!h.upstream.last().headers.contains_key("x-user"));
    expect(
        &h,
        ("GET", "/maybe"),
        &[("Authorization", "Basic eHk6eg==")],
        200,
        Some("/maybe"),
    )
    .await;
    assert_eq!(h.upstream.last().headers["authorization"], "Basic eHk6eg==");
    expect(
        &h,
        ("GET", "/maybe"),
        &[("Authorization", "Bearer not.a.token")],
        401,
        None,
    )
    .await;
    expect(
        &h,
        ("GET", "/maybe"),
        &[("Authorization", &bearer), ("X-User", "admin")],
        200,
        Some("/maybe"),
    )
    .await;
    assert_eq!(h.upstream.last().headers["x-user"], "alice");
    // Required (default): no token is a 401 with the bare challenge.
    let head = expect(&h, ("GET", "/x"), &[], 401, None).await;
    assert!(
        head.contains("www-authenticate: Bearer realm=\"jwtgate\"\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn token_sources_cookie_query_prefix_and_duplicates() {
    let extra = "[[token.sources]]\nheader = \"authorization\"\nscheme = \"Bearer\"\n\
                 [[token.sources]]\ncookie = \"at\"\n[[token.sources]]\nquery = \"access_token\"\n\
                 [[token.sources]]\nheader = \"x-api-token\"\nprefix = \"Token \"\n\
                 [forward]\nstrip_authorization = true\n";
    let (h, key) = harness(extra).await;
    let good = key.token(&h.claims());
    let cookie = format!("a=1; at={good}; b=2");
    expect(&h, ("GET", "/c"), &[("Cookie", &cookie)], 200, Some("/c")).await;
    assert_eq!(
        h.upstream.last().headers["cookie"],
        "a=1; b=2",
        "strip_authorization removes the pair"
    );
    let q = format!("/q?x=1&access_token={good}&y=2");
    expect(&h, ("GET", &q), &[], 200, Some("/q?x=1&y=2")).await;
    assert!(h.upstream.last().headers.contains_key("x-jwt-payload"));
    let prefixed = format!("Token {good}");
    expect(
        &h,
        ("GET", "/p"),
        &[("X-Api-Token", &prefixed)],
        200,
        Some("/p"),
    )
    .await;
    assert!(!h.upstream.last().headers.contains_key("x-api-token"));
    expect(&h, ("GET", "/p"), &[("X-Api-Token", &good)], 401, None).await;
    let bearer = format!("Bearer {good}");
    for (target, headers) in [
        (q.as_str(), vec![("Authorization", bearer.as_str())]),
        (
            "/d",
            vec![
                ("Authorization", bearer.as_str()),
                ("Cookie", cookie.as_str()),
            ],
        ),
        ("/d", vec![("Cookie", "at=x"), ("Cookie", "at=y")]),
        ("/d?access_token=a&access%5Ftoken=b", vec![]),
    ] {
        let head = expect(&h, ("GET", target), &headers, 400, None).await;
        assert!(head.contains("error=\"invalid_request\""), "{head}");
    }
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="duplicate_credentials"}"#)
            .await,
        4.0
    );
}

#[tokio::test]
async fn cookie_tokens_on_unsafe_methods_need_an_allowed_origin() {
    let extra = "[policy]\nallowed_origins = [\"https://app.example.com\"]\n\
                 [[token.sources]]\ncookie = \"at\"\n";
    let (h, key) = harness(extra).await;
    let cookie = format!("at={}", key.token(&h.claims()));
    let c = ("Cookie", cookie.as_str());
    expect(&h, ("GET", "/x"), &[c], 200, Some("/x")).await;
    let head = expect(&h, ("POST", "/x"), &[c], 403, None).await;
    assert!(head.contains("csrf") || head.contains("Origin"), "{head}");
    // (method, the origin header and value, status)
    for (method, origin, status) in [
        ("POST", ("Origin", "https://evil.example"), 403),
        ("POST", ("Origin", "null"), 403),
        ("DELETE", ("Origin", "https://APP.example.com"), 200),
        ("PUT", ("Referer", "https://app.example.com/page?q=1"), 200),
        ("PUT", ("Referer", "https://app.example.com.evil.io/"), 403),
    ] {
        let forwarded = (status == 200).then_some("/x");
        expect(&h, (method, "/x"), &[c, origin], status, forwarded).await;
    }
    // A WebSocket handshake is a GET, but a cross-site page can open one with the cookie.
    let ws = [
        c,
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    expect(&h, ("GET", "/ws"), &ws, 403, None).await;
    let evil = [
        ws[0],
        ws[1],
        ws[2],
        ws[3],
        ws[4],
        ("Origin", "https://evil.example"),
    ];
    expect(&h, ("GET", "/ws"), &evil, 403, None).await;
    assert_eq!(
        h.metric(r#"jwtgate_rejections_total{reason="csrf"}"#).await,
        6.0
    );
}

#[tokio::test]
async fn cors_preflight_is_rejected_by_default_and_forwarded_when_asked() {
    let pre: &[(&str, &str)] = &[
        ("Origin", "https://app.example.com"),
        ("Access-Control-Request-Method", "PUT"),
    ];
    let (h, _key) = harness("").await;
    expect(&h, ("OPTIONS", "/orders/1"), pre, 401, None).await;
    drop(h);
    let (h, key) = harness("[policy]\ncors_preflight = \"forward\"\n").await;
    expect(&h, ("OPTIONS", "/orders/1"), pre, 200, Some("/orders/1")).await;
    assert!(!h.upstream.last().headers.contains_key("x-jwt-payload"));
    assert_eq!(
        h.metric(r#"jwtgate_requests_total{outcome="forwarded",route="preflight"}"#)
            .await,
        1.0
    );
    // Not a preflight: no Origin, a bad requested method, a body, or a token present.
    expect(
        &h,
        ("OPTIONS", "/o"),
        &[("Access-Control-Request-Method", "PUT")],
        401,
        None,
    )
    .await;
    expect(
        &h,
        ("OPTIONS", "/o"),
        &[pre[0], ("Access-Control-Request-Method", "P T,")],
        401,
        None,
    )
    .await;
    let with_body = [
        pre[0],
        pre[1],
        ("Content-Length", "0"),
        ("Transfer-Encoding", "chunked"),
    ];
    expect(&h, ("OPTIONS", "/o"), &with_body, 401, None).await;
    let bad = [pre[0], pre[1], ("Authorization", "Bearer not.a.token")];
    expect(&h, ("OPTIONS", "/o"), &bad, 401, None).await;
    let good = format!("Bearer {}", key.token(&h.claims()));
    expect(
        &h,
        ("OPTIONS", "/o"),
        &[pre[0], pre[1], ("Authorization", &good)],
        200,
        Some("/o"),
    )
    .await;
    assert!(h.upstream.last().headers.contains_key("x-jwt-payload"));
}

#[tokio::test]
async fn claim_headers_render_by_the_rules_and_replace_client_copies() {
    let extra = "[forward.claim_headers]\n\"x-user\" = \"sub\"\n\"x-roles\" = \"realm_access.roles\"\n\
                 \"x-tenant\" = '[\"https://example.com/ns\"].tenant'\n\"x-num\" = \"n\"\n\"x-obj\" = \"obj\"\n\
                 \"x-comma\" = \"comma\"\n\"x-ctl\" = \"ctl\"\n\"x-none\" = \"absent\"\n";
    let (h, key) = harness(extra).await;
    let token = token_with(
        &h,
        &key,
        json!({
            "realm_access": {"roles": ["a", "b", 3, true]},
            "https://example.com/ns": {"tenant": "acme"},
            "n": 42, "obj": {"k": 1}, "comma": ["x,y"], "ctl": "a\tb",
        }),
    );
    let bearer = format!("Bearer {token}");
    let forged = [
        ("Authorization", bearer.as_str()),
        ("X-User", "mallory"),
        ("x_roles", "admin"),
        ("X-Obj", "forged"),
        ("X-None", "forged"),
    ];
    expect(&h, ("GET", "/x"), &forged, 200, Some("/x")).await;
    let seen = h.upstream.last().headers;
    assert_eq!(seen["x-user"], "alice");
    assert_eq!(seen["x-roles"], "a,b,3,true");
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-num"], "42");
    for name in ["x-obj", "x-comma", "x-ctl", "x-none", "x_roles"] {
        assert!(!seen.contains_key(name), "{name}: {seen:?}");
    }
    assert_eq!(seen.get_all("x-user").iter().count(), 1);
    // Three claims could not be rendered: counted per header, per request.
    let m = h.metrics().await;
    for name in ["x-obj", "x-comma", "x-ctl"] {
        assert_eq!(
            metric_value(
                &m,
                &format!("jwtgate_claim_headers_unset_total{{header=\"{name}\"}}")
            ),
            1.0
        );
    }
}

/// A reload that removes a route and an issuer removes their series: the label sets stay
/// bounded by what is configured now.
#[tokio::test]
async fn a_reload_drops_the_series_of_removed_routes_and_issuers() {
    let key = DevKey::rsa("k1");
    let keys = std::sync::Arc::new(KeyServer::start(jwks_of(&[(&key, None)])).await);
    let extra = format!(
        "[[issuers]]\nname = \"partner\"\nissuer = \"http://{}/partner\"\njwks_uri = \"{}\"\naudiences = [\"{AUD}\"]\n\
         [[routes]]\nname = \"gone\"\npath_prefix = \"/gone\"\nscopes_all = [\"x\"]\n",
        keys.addr,
        keys.jwks_uri()
    );
    let h = Harness::start_with(
        Value::Null,
        Options {
            extra: extra.clone(),
            key_server: Some(keys),
            ..Options::default()
        },
    )
    .await;
    let bearer = format!("Bearer {}", key.token(&h.claims()));
    expect(
        &h,
        ("GET", "/gone"),
        &[("Authorization", &bearer)],
        403,
        None,
    )
    .await;
    let before = h.metrics().await;
    assert!(before.contains("route=\"gone\""), "{before}");
    assert!(before.contains("issuer=\"partner\""), "{before}");
    let next = h.config_text.replace(&extra, "");
    let next = jwtgate::config::Config::from_toml_str(&next, &|_| None).unwrap();
    h.reloader.reload(next).unwrap();
    let after = h.metrics().await;
    assert!(!after.contains("route=\"gone\""), "{after}");
    assert!(!after.contains("issuer=\"partner\""), "{after}");
    assert!(after.contains("issuer=\"test-km\""), "{after}");
}

/// The same bypasses over HTTP/2: `:path` is normalized before matching exactly like an
/// HTTP/1.1 target, and the upstream receives the normalized path.
#[tokio::test]
async fn bypasses_over_http2_are_decided_on_the_normalized_path() {
    let (h, key) = harness(ROUTES).await;
    let (mut send, _conn) = h2_client(h.proxy).await;
    let mut go = async |path: &str, token: Option<&str>| {
        let mut req = http::Request::get(format!("http://api.example.com{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap().status().as_u16()
    };
    let before = h.upstream.count();
    assert_eq!(go("/public/../admin/x", None).await, 401);
    assert_eq!(go("/public/%2e%2e/admin/x", None).await, 401);
    assert_eq!(go("/public/..;/admin/x", None).await, 400);
    assert_eq!(go("/public/%252e%252e/admin", None).await, 400);
    let user = key.token(&h.claims());
    assert_eq!(go("//admin//x", Some(&user)).await, 403);
    assert_eq!(
        h.upstream.count(),
        before,
        "a refused HTTP/2 request reached the upstream"
    );
    assert_eq!(go("/%70ublic/./x", None).await, 200);
    assert_eq!(h.upstream.last().uri, "/public/x");
}
