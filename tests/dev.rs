//! `jwtgate dev` as a new user meets it: the binary started, its printed walkthrough read,
//! and the route lines it prints answered as their comments say.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn dev_walkthrough_routes_answer_as_printed() {
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Ctrl-C");
            out.push(line);
            if done {
                break;
            }
        }
        out
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("walkthrough printed")
        .unwrap();
    let value = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in {lines:#?}"))
            .to_owned()
    };
    let token = value("TOKEN=");
    let writer = value("WRITER=");
    let api = value("jwtgate dev: proxy on ");
    let api = api.split(',').next().unwrap().to_owned();
    for wanted in [
        "curl -i {api}/health".replace("{api}", &api),
        format!("curl -i -X POST -H \"Authorization: Bearer $TOKEN\" {api}/orders"),
        format!("curl -i -X POST -H \"Authorization: Bearer $WRITER\" {api}/orders"),
    ] {
        assert!(
            lines.iter().any(|l| l.trim() == wanted),
            "{wanted} not printed"
        );
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = http.get(format!("{api}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let post = |t: String| http.post(format!("{api}/orders")).bearer_auth(t).send();
    let denied = post(token.clone()).await.unwrap();
    assert_eq!(denied.status(), 403);
    let challenge = denied.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("scope=\"orders:write\"")
    );
    let allowed = post(writer).await.unwrap();
    assert_eq!(allowed.status(), 200);
    let echo: serde_json::Value = allowed.json().await.unwrap();
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["path"], "/orders");
    let read = http
        .get(format!("{api}/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // Revocation, as the walkthrough runs it: through the fleet relay when nats-server is
    // on the PATH (CI installs it), else pushed straight to the proxy.
    let path = value("  revocations: ");
    let via_relay = path.contains("jwtgate relay");
    assert!(
        via_relay || std::env::var("CI").is_err(),
        "in CI the demo's revocations go through the relay: {path}"
    );
    let km = value("  KM=").split(';').next().unwrap().to_owned();
    let pair: serde_json::Value = http
        .post(format!("{km}/oauth2/token"))
        .basic_auth("dev-client", Some("dev-secret"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = pair["access_token"].as_str().unwrap().to_owned();
    let get = || http.get(format!("{api}/orders")).bearer_auth(&at).send();
    assert_eq!(get().await.unwrap().status(), 200);
    let revoked = http
        .post(format!("{km}/oauth2/revoke"))
        .basic_auth("dev-client", Some("dev-secret"))
        .form(&[("token", at.as_str()), ("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    // "401 at once": within a second, however the record travelled.
    let t0 = std::time::Instant::now();
    while get().await.unwrap().status() != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the revoked token still passes ({path})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Killed outright (no chance to clean up), the demo leaves no nats-server and no store.
    if via_relay {
        let store = std::env::temp_dir().join(format!("jwtgate-dev-nats-{}", child.0.id()));
        assert!(
            store.exists(),
            "the demo's NATS store is {}",
            store.display()
        );
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let t0 = std::time::Instant::now();
        while store.exists() || running_with_arg(&store) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "nats-server or its store outlived the demo"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether any process runs with `arg` among its arguments (read from /proc).
fn running_with_arg(arg: &std::path::Path) -> bool {
    let arg = arg.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg))
    })
}
