#!/usr/bin/env bash
# Memory sizing for Kubernetes: jwtgate's RSS by verified-token cache size and revocation
# count, measured on one process per cache size, in stages (RSS adds up: idle → cache full
# → + revocations): idle, with CACHE distinct ES256 tokens cached (each sent once), then
# with 1 M and 5 M jti revocation records pushed over HTTP (pages of 10 000). Peak RSS
# (VmHWM) is printed beside each stage. Feeds the README "Sizing" table and the injector's
# memory defaults.
#
#   bench/sizing.sh [PEERS_DIR]        # CACHES="10000 100000" REVOCATIONS="1000000 5000000"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${1:-/tmp/jwtgate-bench/peers}"; state="$peers/state"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
start_upstream 18580
mb() { python3 -c "print(f'{$1/1024:.1f}')"; }
stage() { printf '%-8s %-10s %-12s RSS %7s MB  peak %7s MB\n' "$1" "$2" "$3" "$(mb "$(rss_kb "$4")")" "$(mb "$(peak_kb "$4")")"; }
port=18581
for cache in ${CACHES:-10000 100000}; do
  CACHE_ENTRIES=$cache start_jwtgate "c$cache" "$port" $((port + 10)) 18580
  pid=$(eval echo "\$jwtgate_pid_c$cache")
  sleep 1
  stage "$cache" 0 idle "$pid"
  fill_cache "$peers" "$port" "$cache"
  stage "$cache" 0 cache-full "$pid"
  done_records=0
  for total in ${REVOCATIONS:-1000000 5000000}; do
    python3 - "$done_records" "$total" $((port + 10)) <<'PY'
import json, sys, urllib.request
start, end, admin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for s in range(start, end, 10000):
    recs = [{"kind": "jti", "jti": f"{k:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f", "exp": 2000000000}
            for k in range(s, min(s + 10000, end))]
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/revocations",
        data=json.dumps({"revocations": recs}).encode(),
        headers={"Authorization": "Bearer bench-push-token-0123456789",
                 "Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 202
PY
    done_records=$total
    stage "$cache" "$total" cache-full "$pid"
  done
  kill "$pid"; port=$((port + 1))
done
