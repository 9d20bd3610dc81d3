//! `jwtgate dev` with `nats-server` on the PATH: the revocations run through the fleet
//! path of DESIGN §10 — key manager → `jwtgate relay` → NATS JetStream → the proxy.

use std::net::SocketAddr;

use crate::config::RelayConfig;

/// A loopback `nats-server -js` and a relay publishing to it. nats-server runs under a
/// shell that stops it and removes its store once its stdin (the pipe `_nats` holds)
/// closes: when this is dropped, and also when `jwtgate dev` is killed outright and drops
/// nothing.
pub struct DevFleet {
    pub nats_url: String,
    pub relay: SocketAddr,
    _nats: tokio::process::Child,
}

/// `sh -c` script: nats-server in the background until stdin reaches EOF, then stopped
/// and its store (`$0`) removed. The shell ignores Ctrl-C's SIGINT (which its background
/// nats-server ignores too): it waits for `jwtgate dev` to exit instead.
const SUPERVISE: &str = r#"trap '' INT; nats-server "$@" & pid=$!; read -r _; kill "$pid"; wait "$pid"; rm -rf -- "$0""#;

/// Starts nats-server and the relay, or says why not (`None`: the demo pushes and polls
/// directly, as without NATS).
pub async fn start(push_token: &str, feed_url: &str) -> Option<DevFleet> {
    which("nats-server")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let store = std::env::temp_dir().join(format!("jwtgate-dev-nats-{}", std::process::id()));
    let nats = tokio::process::Command::new("sh")
        .args(["-c", SUPERVISE])
        .arg(&store)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !up {
        eprintln!("jwtgate dev: nats-server did not start; revocations go straight to the proxy");
        return None;
    }
    let nats_url = format!("nats://127.0.0.1:{port}");
    let cfg = RelayConfig::from_toml_str(
        &format!(
            r#"
[relay]
listen = "127.0.0.1:0"
push_token = "{push_token}"
feed_url = "{feed_url}"
poll_interval_s = 2
max_token_lifetime_s = 86400
[relay.stream]
urls = ["{nats_url}"]
"#
        ),
        &|_| None,
    )
    .ok()?;
    let relay = crate::fleet::relay::Relay::bind(cfg).await.ok()?;
    let addr = relay.addr();
    tokio::spawn(relay.run(std::future::pending()));
    Some(DevFleet {
        nats_url,
        relay: addr,
        _nats: nats,
    })
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
