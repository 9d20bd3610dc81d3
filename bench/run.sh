#!/usr/bin/env bash
# Load benchmark: jwtgate and the peers (HAProxy pass-through and jwt_verify, nginx direct)
# in one run, alternating rounds, proxy pinned to CPU 1 and wrk + upstream on CPU 0.
# Uses the shared peer harness (../shared/bench/peers) with jwtgate in its sidecar slot,
# once with the verified-token cache on and once with it off (every token verified).
#
#   bench/run.sh                 # ROUNDS=5 DURATION=8s by default; ~12 min
#   ROUNDS=3 bench/run.sh        # quicker
#
# Needs: the release binary (cargo build --release), and the harness's packages
# (its setup.sh installs haproxy, nginx, apache, wrk with apt-get).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers_src="${PEERS_SRC:-$root/../shared/bench/peers}"
work="${BENCH_WORK:-$(mktemp -d /tmp/jwtgate-bench.XXXXXX)}"
bin="$root/target/release/jwtgate"
[ -x "$bin" ] || (cd "$root" && cargo build --release --locked)

if [ ! -x "$work/peers/run.sh" ]; then
  mkdir -p "$work"
  cp -r "$peers_src" "$work/peers"
  (cd "$work/peers" && WITH_OHA="${WITH_OHA:-0}" ./setup.sh)
fi

configs="direct haproxy-pass haproxy-jwt-rs256 haproxy-jwt-es256 sidecar-rs256 sidecar-es256"
for variant in cache nocache; do
  cfg="$here/jwtgate-peers.toml"
  [ "$variant" = nocache ] && cfg="$here/jwtgate-peers-nocache.toml"
  echo "== jwtgate ($variant) vs peers"
  (cd "$work/peers" && \
    SIDECAR_CMD="$bin serve --threads 1 --log-format text --config $cfg" \
    CONFIGS="${CONFIGS:-$configs}" ROUNDS="${ROUNDS:-5}" DURATION="${DURATION:-8s}" \
    WARMUP="${WARMUP:-2s}" OHA_ROUNDS="${OHA_ROUNDS:-0}" ./run.sh)
done
echo "reports: $work/peers/results/*/report.md"
