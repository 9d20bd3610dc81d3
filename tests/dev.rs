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
}
