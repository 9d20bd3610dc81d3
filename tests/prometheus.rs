//! A real Prometheus scrapes jwtgate, and the alert rules pass promtool's checks and unit
//! tests. Needs Debian's `prometheus` package (`.ci/run` installs it); outside CI a machine
//! without it skips loudly.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jwtgate::devkm::DevKey;
use serde_json::Value;

fn tool(name: &str) -> Option<String> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    match found {
        true => Some(name.to_owned()),
        false if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {name} not installed (apt-get install prometheus)");
            None
        }
        false => panic!("{name} is required in CI"),
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(http: &reqwest::Client, base: &str, q: &str) -> Option<String> {
    let v: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn real_prometheus_scrapes_jwtgate() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let key = DevKey::rsa("k");
    let h = Harness::start(jwks_of(&[(&key, None)])).await;
    assert_eq!(h.status(&key.token(&h.claims())).await, 200);

    let dir = TempDir::new();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: jwtgate\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{}']\n",
            h.admin
        ),
    )
    .unwrap();
    let _prom = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{web}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(&http, &base, "up{job=\"jwtgate\"}").await;
        let ready = query(&http, &base, "jwtgate_ready").await;
        let forwarded = query(
            &http,
            &base,
            "jwtgate_requests_total{outcome=\"forwarded\"}",
        )
        .await;
        if up.as_deref() == Some("1")
            && ready.as_deref() == Some("1")
            && forwarded.as_deref() == Some("1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape jwtgate: up={up:?} ready={ready:?} forwarded={forwarded:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let keys = query(&http, &base, "jwtgate_jwks_keys{issuer=\"test-km\"}").await;
    assert_eq!(keys.as_deref(), Some("1"));
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");
    for args in [
        ["check", "rules", "jwtgate-rules.yml"],
        ["test", "rules", "jwtgate-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
