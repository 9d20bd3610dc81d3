//! The `jwtgate` binary: config errors (exit 64, every key named, before any port is bound)
//! and the SIGTERM sequence of a real process.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use jwtgate::devkm::DevKey;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jwtgate"))
}

/// Runs `jwtgate check` and asserts it accepts the config.
fn check_ok(path: &std::path::Path) -> std::process::Output {
    let out = bin()
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A tiny temp-file helper (no extra dependency).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            let mut b = [0u8; 8];
            aws_lc_rs::rand::fill(&mut b).unwrap();
            let p =
                std::env::temp_dir().join(format!("jwtgate-test-{}.toml", u64::from_le_bytes(b)));
            std::fs::write(&p, text).unwrap();
            TempPath(p)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const BAD: &str = r#"
[server]
listen = "not-an-address"
[upstream]
url = "ftp://x"
timeout_ms = 5
[[issuers]]
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "${JWTGATE_TEST_UNSET_VARIABLE}"
algorithms = ["HS256"]
"#;

#[test]
fn check_reports_every_problem_and_exits_64() {
    let cfg = write_config(BAD);
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg.0)
        .env_remove("JWTGATE_TEST_UNSET_VARIABLE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen",
        "upstream.timeout_ms",
        "issuers[0].jwks_uri: environment variable JWTGATE_TEST_UNSET_VARIABLE is not set",
        "issuers[0].audiences",
        "issuers[0].algorithms",
    ] {
        assert!(err.contains(key), "missing {key:?} in:\n{err}");
    }
}

#[test]
fn check_prints_the_effective_config() {
    let cfg = write_config(
        r#"
[upstream]
url = "http://127.0.0.1:8081"
[[issuers]]
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "https://km.example.com/oauth2/jwks"
skip_audience_check = true
[revocation]
push_token = "push-token-0123456789"
"#,
    );
    let out = check_ok(&cfg.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: issuers.km.example.com: skip_audience_check"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: revocation.feed_url: not set (push-only)"),
        "{stderr}"
    );
    assert!(stdout.contains("max_token_bytes = 8192"), "{stdout}");
    assert!(stdout.contains("name = \"km.example.com\""), "{stdout}");
}

#[test]
fn check_prints_routes_in_match_order_and_warns_about_shadows() {
    let cfg = write_config(
        r#"
[upstream]
url = "http://127.0.0.1:8081"
[[issuers]]
name = "km"
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "https://km.example.com/oauth2/jwks"
audiences = ["api://orders"]
[policy]
default_auth = "optional"
[[routes]]
name = "api"
path_prefix = "/api/"
methods = ["GET"]
scopes_all = ["read"]
[[routes]]
name = "api-x"
path_exact = "/api/x"
methods = ["HEAD"]
[[routes]]
name = "health"
path_prefix = "/healthz"
auth = "public"
"#,
    );
    let out = check_ok(&cfg.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().take(4).collect();
    assert_eq!(
        lines,
        [
            "# routes, in match order (the first match wins; no match: default_auth = \"optional\")",
            "#   1. api prefix /api GET,HEAD required (all of read)",
            "#   2. api-x exact /api/x HEAD required",
            "#   3. health prefix /healthz any method public",
        ],
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: routes[1] (\"api-x\") is shadowed by routes[0] (\"api\")"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: policy.default_auth = \"optional\""),
        "{stderr}"
    );
    // A route mistake is a config error naming the key, exit 64.
    let bad = write_config(
        &std::fs::read_to_string(&cfg.0)
            .unwrap()
            .replace("/api/x", "/api/./x"),
    );
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[1].path_exact: \"/api/./x\" is not normalized"),
        "{err}"
    );
}

#[test]
fn serve_rejects_bad_config_before_binding_any_port() {
    // Hold the port: if jwtgate tried to bind before validating it would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap();
    let cfg = write_config(BAD);
    let out = bin()
        .args(["serve", "--listen", &port.to_string(), "--config"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[test]
fn runtime_flags_that_contradict_each_other_are_config_errors() {
    let cfg = write_config(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[issuers]]\nissuer = \"https://km.example.com/t\"\n\
         jwks_uri = \"https://km.example.com/jwks\"\naudiences = [\"a\"]\n",
    );
    for args in [
        vec!["--runtime", "current-thread", "--threads", "2"],
        vec!["--threads", "0"],
    ] {
        let out = bin()
            .args(["serve", "--config"])
            .arg(&cfg.0)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--threads"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn sigterm_fails_readiness_then_serves_for_the_delay_then_exits() {
    let key = DevKey::rsa("k");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let issuer = format!("http://{}/oauth2/token", keys.addr);
    let cfg = write_config(&format!(
        r#"
[server]
shutdown_delay_s = 2
[upstream]
url = "http://127.0.0.1:1"
[[issuers]]
issuer = "{issuer}"
jwks_uri = "{}"
audiences = ["{AUD}"]
"#,
        keys.jwks_uri()
    ));
    let mut command = bin();
    command.args(["serve", "--config"]).arg(&cfg.0);
    command.args(["--upstream", &format!("http://{}", upstream.addr)]);
    let mut served = Spawned::spawn(command);
    let (listen, admin) = (served.proxy, served.admin);
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client| async move {
        http.get(format!("http://{admin}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    served.ready().await;
    let n = now();
    let token = key.token(&serde_json::json!({
        "iss": issuer, "aud": AUD, "sub": "s", "iat": n, "exp": n + 60
    }));
    let get = || {
        http.get(format!("http://{listen}/x"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "--upstream override applies"
    );

    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready(http.clone()).await, 503, "readiness fails at once");
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "served during shutdown_delay_s"
    );
    assert_eq!(upstream.count(), 2);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(code) = served.child.try_wait().unwrap() {
            assert!(code.success(), "{code:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit after the delay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logs_carry_a_fingerprint_never_the_token() {
    let key = DevKey::rsa("k");
    let keys = KeyServer::start(jwks_of(&[(&key, None)])).await;
    let upstream = Upstream::start().await;
    let issuer = format!("http://{}/oauth2/token", keys.addr);
    let cfg = write_config(&format!(
        r#"
[server]
shutdown_delay_s = 0
[upstream]
url = "http://{}"
[[issuers]]
issuer = "{issuer}"
jwks_uri = "{}"
audiences = ["{AUD}"]
"#,
        upstream.addr,
        keys.jwks_uri()
    ));
    let mut command = bin();
    command.args(["serve", "--config"]).arg(&cfg.0);
    command.env("RUST_LOG", "debug");
    let mut served = Spawned::spawn(command);
    let listen = served.proxy;
    served.ready().await;
    let http = reqwest::Client::new();
    let n = now();
    let mut claims =
        serde_json::json!({"iss": issuer, "aud": AUD, "sub": "s", "iat": n, "exp": n - 3600});
    let expired = key.token(&claims);
    claims["exp"] = (n + 60).into();
    let valid = key.token(&claims);
    let tampered = jwtgate::devkm::tamper(&valid);
    for t in [&expired, &valid, &tampered] {
        http.get(format!("http://{listen}/x"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
    }
    Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(served.child.wait().unwrap().success());
    // The reader thread ends at the child's EOF: everything it logged is on the channel.
    let logs = served.logs.lock().unwrap().iter().collect::<Vec<_>>();
    let logs = logs.join("\n");
    assert!(logs.contains("\"reason\":\"expired\""), "{logs}");
    assert!(logs.contains("\"reason\":\"signature\""), "{logs}");
    for t in [&expired, &valid, &tampered] {
        let fp = jwtgate::auth::TokenHash::of(t).fingerprint();
        for part in t.split('.') {
            assert!(!logs.contains(part), "a token segment was logged");
        }
        if t != &valid {
            assert!(logs.contains(&fp), "fingerprint {fp} missing from the logs");
        }
    }
}

#[test]
fn serve_refuses_a_snapshot_path_whose_directory_is_missing() {
    let cfg = write_config(
        r#"
[upstream]
url = "http://127.0.0.1:8081"
[[issuers]]
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "https://km.example.com/oauth2/jwks"
audiences = ["a"]
[revocation]
snapshot_path = "/nonexistent-jwtgate-dir/revocations.snapshot"
"#,
    );
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revocation.snapshot_path"), "{err}");
    // `check` validates the file, not the host it may run on.
    check_ok(&cfg.0);
}

/// `jwtgate inject --dry-run`: the webhook's decision offline — the patched pod on stdout,
/// a refusal (naming the annotation) on stderr with exit 1, unreadable input exit 64.
#[test]
fn inject_dry_run_prints_the_patched_pod_or_the_refusal() {
    let run = |pod: &str| {
        let mut child = bin()
            .args(["inject", "--dry-run", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), pod.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let pod = |annotations: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"gw","annotations":{annotations}}},
               "spec":{{"containers":[{{"name":"app","image":"gw","ports":[{{"containerPort":8081}}]}}]}}}}"#
        )
    };
    let out = run(&pod(r#"{"jwtgate.io/upstream-port":"8081"}"#));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let patched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = patched["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "jwtgate"]);

    let out = run(&pod(
        r#"{"jwtgate.io/upstream-port":"8081","jwtgate.io/app-prestop":"later"}"#,
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwtgate.io/app-prestop"));
    assert!(out.stdout.is_empty());

    let out = run("not json");
    assert_eq!(out.status.code(), Some(64));
}

/// `jwtgate relay`: every problem named by its relay key, exit 64; `--check` prints the
/// config with its secrets redacted. `jwtgate check` refuses a feed next to the stream.
#[test]
fn relay_config_errors_name_their_keys_and_check_redacts() {
    let bad = write_config(
        "[relay]\nlisten = \"nowhere\"\npush_token = \"short\"\nfeed_format = \"wso2\"\n[relay.stream]\nurls = [\"http://nats:4222\"]\n",
    );
    let out = bin()
        .args(["relay", "--config"])
        .arg(&bad.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "relay.listen",
        "relay.push_token",
        "relay.feed_format",
        "relay.stream.urls[0]",
    ] {
        assert!(err.contains(&format!("{key}:")), "missing {key} in:\n{err}");
    }
    let good = write_config(
        "[relay]\nlisten = \"127.0.0.1:0\"\npush_token = \"${JWTGATE_TEST_PUSH}\"\n[relay.stream]\nurls = [\"nats://127.0.0.1:4222\"]\ntoken = \"${JWTGATE_TEST_PUSH}\"\n",
    );
    let out = bin()
        .args(["relay", "--check", "--config"])
        .arg(&good.0)
        .env("JWTGATE_TEST_PUSH", "0123456789abcdef-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("[relay]") && shown.contains("[relay.stream]"),
        "{shown}"
    );
    assert!(!shown.contains("0123456789abcdef-secret"), "{shown}");

    let both = write_config(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[issuers]]\nname = \"km\"\nissuer = \"https://km\"\njwks_uri = \"https://km/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n[revocation]\nfeed_url = \"http://km/revocations\"\n[revocation.stream]\nurls = [\"nats://127.0.0.1:4222\"]\n",
    );
    let out = bin()
        .args(["check", "--config"])
        .arg(&both.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("revocation.feed_url: set feed_url or [revocation.stream], not both")
    );
}

#[test]
fn log_format_text_writes_plain_lines_without_colour_codes_into_a_pipe() {
    let cfg = write_config(
        r#"
[upstream]
url = "http://127.0.0.1:9"
[[issuers]]
issuer = "https://km.example.com/oauth2/token"
jwks_uri = "http://127.0.0.1:9/jwks"
audiences = ["a"]
"#,
    );
    let mut child = bin()
        .args(["serve", "--log-format", "text", "--config"])
        .arg(&cfg.0)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let logs = lines_of(child.stderr.take().unwrap());
    let line = logs
        .iter()
        .find(|l| l.contains("jwtgate serving"))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !line.contains('\x1b'),
        "no terminal colour codes into a pipe: {line:?}"
    );
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("listen=127.0.0.1:"), "{line}");
    assert!(!line.trim_start().starts_with('{'), "not JSON: {line}");
}
