//! gRPC end to end (DESIGN §11) with a real gRPC server and client (grpcio, in `.ci/run`'s
//! venv): calls through jwtgate to an h2c upstream keep their messages and trailers; every
//! refusal is a gRPC status the client understands, and a refused call never reaches the
//! server.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::*;
use jwtgate::devkm::DevKey;
use serde_json::{Value, json};

fn python() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.to_owned()
    } else {
        "python3".to_owned()
    }
}

fn script(name: &str) -> String {
    format!("{}/tests/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// grpcio is importable (in CI it must be: `.ci/run` installs it).
fn have_grpcio() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || std::env::var("CI").is_err(), "grpcio missing in CI");
    ok
}

struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let mut child = Command::new(python())
            .arg(script("server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        GrpcServer {
            child,
            port: line.trim().parse().unwrap(),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call with the Python client; its JSON report.
async fn call(target: &str, kind: &str, method: &str, token: Option<&str>) -> Value {
    let out = tokio::process::Command::new(python())
        .arg(script("client.py"))
        .args([target, kind, method, token.unwrap_or("-")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// Calls that reached the server (asked directly).
async fn reached(server: &GrpcServer) -> u64 {
    let r = call(
        &format!("127.0.0.1:{}", server.port),
        "unary",
        "/test.Svc/Calls",
        None,
    )
    .await;
    r["responses"][0].as_str().unwrap().parse().unwrap()
}

async fn harness(server: &GrpcServer, key: &DevKey) -> Harness {
    Harness::start_with(
        jwks_of(&[(key, None)]),
        Options {
            upstream_url: Some(format!("http://127.0.0.1:{}", server.port)),
            upstream_extra: "protocol = \"h2c\"".into(),
            extra: format!(
                "[revocation]\npush_token = \"{PUSH_TOKEN}\"\nmax_token_lifetime_s = 3600\n\
                 [forward.claim_headers]\n\"x-user\" = \"sub\"\n\
                 [[routes]]\nname = \"admin\"\npath_prefix = \"/test.Admin\"\nscopes_all = [\"admin\"]\n"
            ),
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn calls_pass_with_trailers_and_refusals_are_grpc_statuses() {
    if !have_grpcio() {
        return;
    }
    let server = GrpcServer::start();
    let key = DevKey::rsa("k1");
    let h = harness(&server, &key).await;
    let target = h.proxy.to_string();
    let good = key.token(&h.claims());

    // Unary and server streaming: messages, identity, trailers intact.
    let r = call(&target, "unary", "/test.Svc/Echo", Some(&good)).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"][0], "hello|user=alice|payload=yes");
    assert_eq!(r["trailing"]["x-echo-trailer"], "kept", "{r}");
    let r = call(&target, "stream", "/test.Svc/Stream", Some(&good)).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"], json!(["hello-0", "hello-1", "hello-2"]));
    assert_eq!(r["trailing"]["x-stream-trailer"], "done", "{r}");
    let forwarded = reached(&server).await;
    assert_eq!(forwarded, 2);

    // Refusals: gRPC statuses with the description; none reaches the server.
    let mut expired = h.claims();
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 4000);
    let revoked_claims = h.claims();
    let revoked = key.token(&revoked_claims);
    assert_eq!(
        h.push(
            json!([{"kind": "jti", "jti": revoked_claims["jti"], "exp": revoked_claims["exp"]}])
        )
        .await,
        202
    );
    for (token, code, details) in [
        (None, "UNAUTHENTICATED", "no bearer token"),
        (
            Some(key.token(&expired)),
            "UNAUTHENTICATED",
            "token expired",
        ),
        (Some(revoked), "UNAUTHENTICATED", "token has been revoked"),
        (Some("not.a.token".to_owned()), "UNAUTHENTICATED", ""),
    ] {
        let r = call(&target, "unary", "/test.Svc/Echo", token.as_deref()).await;
        assert_eq!(r["code"], code, "{r}");
        assert!(r["details"].as_str().unwrap().contains(details), "{r}");
        assert!(
            r["trailing"]["www-authenticate"]
                .as_str()
                .unwrap()
                .starts_with("Bearer realm=\"jwtgate\""),
            "{r}"
        );
    }
    let r = call(&target, "unary", "/test.Admin/Do", Some(&good)).await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    assert!(r["details"].as_str().unwrap().contains("scope"), "{r}");
    assert_eq!(
        reached(&server).await,
        forwarded,
        "a refused call reached the server"
    );

    // A call that outlives request_timeout_ms (2 s here) is DEADLINE_EXCEEDED.
    let r = call(&target, "unary", "/test.Svc/Slow", Some(&good)).await;
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
}

#[tokio::test]
async fn a_down_upstream_is_unavailable() {
    if !have_grpcio() {
        return;
    }
    let key = DevKey::rsa("k1");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_with(
        jwks_of(&[(&key, None)]),
        Options {
            upstream_url: Some(format!("http://{closed}")),
            upstream_extra: "protocol = \"h2c\"".into(),
            ..Options::default()
        },
    )
    .await;
    let r = call(
        &h.proxy.to_string(),
        "unary",
        "/test.Svc/Echo",
        Some(&key.token(&h.claims())),
    )
    .await;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
}
