//! `jwtgate inspect` (the real binary) against the proxy (in-process) on the same config
//! and the same tokens: for every rejection reason, inspect's last line names the reason
//! the proxy counts, and a token the proxy forwards is `accepted`.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::*;
use jwtgate::config::Algorithm;
use jwtgate::devkm::DevKey;
use jwtgate::devkm::keys::b64;
use serde_json::{Value, json};

struct Inspected {
    code: i32,
    json: Value,
    stderr: String,
}

/// Runs `jwtgate inspect --json` on `h`'s config with `token` on stdin (asynchronously:
/// the key server it fetches from runs on this test's runtime).
async fn inspect(h: &Harness, dir: &TempDir, token: &str, extra_args: &[&str]) -> Inspected {
    let path = dir.file("jwtgate.toml");
    std::fs::write(&path, &h.config_text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["inspect", "--json", "--config", &path])
        .args(extra_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, token.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    Inspected {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The proxy refuses `token` with `reason` (metric +1, nothing forwarded) and inspect
/// says the same; neither output shows the signature.
async fn same_verdict(h: &Harness, dir: &TempDir, token: &str, reason: &str) {
    let series = format!("jwtgate_rejections_total{{reason=\"{reason}\"}}");
    let before = h.metric(&series).await;
    let forwarded = h.upstream.count();
    let status = h.status(token).await;
    assert_ne!(status, 200, "{reason}: the proxy forwarded it");
    assert_eq!(
        h.metric(&series).await,
        before + 1.0,
        "{reason}: proxy reason"
    );
    assert_eq!(h.upstream.count(), forwarded);

    let i = inspect(h, dir, token, &[]).await;
    assert_eq!(i.code, 1, "{reason}: {} {}", i.json, i.stderr);
    assert_eq!(i.json["verdict"], "rejected");
    assert_eq!(i.json["reason"], reason, "{}", i.json);
    let failed: Vec<&Value> = i.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false && c["check"] != "keys")
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly the deciding check fails: {}",
        i.json
    );
    if let Some(sig) = token.split('.').nth(2).filter(|s| s.len() > 8) {
        assert!(
            !i.json.to_string().contains(sig),
            "the signature was printed"
        );
    }
}

#[tokio::test]
async fn inspect_names_the_reason_the_proxy_counts() {
    let dir = TempDir::new();
    let key = DevKey::p256("k");
    let rsa = DevKey::rsa("r");
    let h = Harness::start_with(
        jwks_of(&[(&key, None), (&rsa, None)]),
        Options {
            extra: format!(
                "[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\nsnapshot_path = \"{}\"\n",
                dir.file("revocations.snapshot")
            ),
            ..Options::default()
        },
    )
    .await;
    let n = now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = h.claims();
        f(&mut c);
        key.token(&c)
    };

    // Accepted by both.
    let good = key.token(&h.claims());
    assert_eq!(h.status(&good).await, 200);
    let i = inspect(&h, &dir, &format!("Bearer {good}\n"), &[]).await;
    assert_eq!(i.code, 0, "{} {}", i.json, i.stderr);
    assert_eq!(i.json["verdict"], "accepted");
    assert_eq!(i.json["reason"], Value::Null);

    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64(h.claims().to_string().as_bytes());
    let cases: Vec<(String, &str)> = vec![
        ("not-a-token".into(), "malformed"),
        ("a".repeat(9000), "too_large"),
        (format!("{header}.{payload}.{}", b64(b"mac")), "algorithm"),
        (jwtgate::devkm::tamper(&good), "signature"),
        (DevKey::p256("unknown").token(&h.claims()), "unknown_kid"),
        (
            key.token_with(Algorithm::ES256, json!({"typ": "foo"}), &h.claims()),
            "typ",
        ),
        (
            key.token_with(Algorithm::ES256, json!({"typ": "rt+jwt"}), &h.claims()),
            "refresh_token",
        ),
        (with(&|c| c["iss"] = "https://other".into()), "issuer"),
        (with(&|c| c["aud"] = "api://other".into()), "audience"),
        (with(&|c| c["exp"] = (n - 120).into()), "expired"),
        (with(&|c| c["nbf"] = (n + 600).into()), "not_yet_valid"),
        (with(&|c| c["iat"] = (n + 600).into()), "issued_in_future"),
        (with(&|c| c["exp"] = (n + 7200).into()), "lifetime"),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "missing_jti",
        ),
        (with(&|c| c["cnf"] = json!({"jkt": "abc"})), "bound_token"),
    ];
    for (token, reason) in &cases {
        same_verdict(&h, &dir, token, reason).await;
    }

    // Revoked: pushed to the proxy, read by inspect from the snapshot the proxy wrote.
    let c = h.claims();
    let revoked = key.token(&c);
    assert_eq!(
        h.push(json!([{"kind": "jti", "jti": c["jti"], "exp": c["exp"]}]))
            .await,
        202
    );
    let snapshot = dir.file("revocations.snapshot");
    // An empty snapshot (no cursor) is 604 bytes: header, bound, 128 block counts,
    // checksum; each jti record adds 12.
    assert!(
        h.eventually(5, || async {
            std::fs::metadata(&snapshot).is_ok_and(|m| m.len() >= 616)
        })
        .await
    );
    same_verdict(&h, &dir, &revoked, "revoked").await;

    // The request's shape: a lower-case method is refused before the token is read.
    let i = inspect(&h, &dir, &good, &["--method", "get"]).await;
    assert_eq!(i.json["reason"], "bad_request");
    let (mut tcp, head) = {
        use tokio::io::AsyncWriteExt as _;
        let mut tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
        tcp.write_all(
            format!("get /p HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {good}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut tcp).await;
        (tcp, head)
    };
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let _ = &mut tcp;
}

#[tokio::test]
async fn inspect_reads_a_corrupt_snapshot_without_moving_it_and_refuses_empty_input() {
    let dir = TempDir::new();
    let snapshot = dir.file("revocations.snapshot");
    std::fs::write(&snapshot, b"JWTGREV2 damaged").unwrap();
    let key = DevKey::p256("k");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: format!(
                "[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\nsnapshot_path = \"{snapshot}\"\n"
            ),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    // The in-process proxy moved its corrupt snapshot aside at start; put one back.
    std::fs::write(&snapshot, b"JWTGREV2 damaged").unwrap();
    let i = inspect(&h, &dir, &key.token(&h.claims()), &[]).await;
    assert_eq!(i.code, 0, "{}", i.json);
    let rev = i.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "revocation")
        .cloned()
        .unwrap();
    assert!(
        rev["detail"].as_str().unwrap().contains("not checked"),
        "{rev}"
    );
    assert_eq!(
        std::fs::read(&snapshot).unwrap(),
        b"JWTGREV2 damaged",
        "inspect must never move or rewrite the snapshot"
    );

    for input in ["", "  \n", "Bearer "] {
        let path = dir.file("jwtgate.toml");
        std::fs::write(&path, &h.config_text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(["inspect", "--config", &path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(65), "{input:?}");
    }
}

/// `--method` and `--path` decide the route as the proxy does: normalized first, a public
/// route accepts any token, a scope route names `insufficient_scope` like the proxy's 403.
#[tokio::test]
async fn inspect_decides_the_route_from_method_and_path() {
    let key = DevKey::rsa("k1");
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            extra: "[[routes]]\nname = \"health\"\npath_prefix = \"/health\"\nauth = \"public\"\n\
                    [[routes]]\nname = \"writes\"\npath_prefix = \"/orders\"\nmethods = [\"POST\"]\n\
                    scopes_all = [\"orders:write\"]\n"
                .into(),
            ..Options::default()
        },
    )
    .await;
    let dir = TempDir::new();
    let mut claims = h.claims();
    claims["scope"] = json!("orders:read");
    let reader = key.token(&claims);

    let i = inspect(&h, &dir, "not-a-token", &["--path", "/health/x"]).await;
    assert_eq!(
        (i.code, &i.json["route"], &i.json["verdict"]),
        (0, &json!("health"), &json!("accepted")),
        "{}",
        i.json
    );

    let i = inspect(
        &h,
        &dir,
        &reader,
        &["--method", "POST", "--path", "/health/../orders/1"],
    )
    .await;
    assert_eq!(i.code, 1, "{}", i.json);
    assert_eq!(i.json["route"], "writes");
    assert_eq!(i.json["reason"], "insufficient_scope");
    // The proxy agrees: 403 with the same reason, nothing forwarded.
    let before = h.upstream.count();
    let resp = h
        .http
        .post(h.url("/orders/1"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(h.upstream.count(), before);

    let i = inspect(&h, &dir, &reader, &["--path", "/orders/1"]).await;
    assert_eq!(
        (i.code, &i.json["route"]),
        (0, &json!("default")),
        "{}",
        i.json
    );

    let i = inspect(&h, &dir, &reader, &["--path", "/a/%2e%2e/%2e%2e/x"]).await;
    assert_eq!(
        (i.code, &i.json["route"], &i.json["reason"]),
        (1, &json!("none"), &json!("bad_path")),
        "{}",
        i.json
    );
}
