#!/usr/bin/env bash
# Memory per revocation record, measured: one idle jwtgate, RECORDS jti records pushed over
# HTTP (POST /revocations, pages of PAGE), then peak RSS (VmHWM) and RSS against the idle
# RSS before the push, in bytes per record. Run once without and once with a snapshot file
# (each push marks the list dirty; the snapshot is written from the shards, not a copy).
#
#   bench/revocation_memory.sh [BIN] [PEERS_STATE_DIR]     # RECORDS=1000000 PAGE=10000
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/jwtgate}"
records="${RECORDS:-1000000}"; page="${PAGE:-10000}"
state="${2:-/tmp/jwtgate-bench/peers/state}"; work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
echo 'snapshot_path = "'"$work"'/revocations.snapshot"' > "$work/extra-snapshot.toml"

measure() {  # NAME PORT ADMIN [EXTRA]
  extra="${4:-}" start_jwtgate "$1" "$2" "$3" 18680
  local pid; pid=$(eval echo "\$jwtgate_pid_$1")
  sleep 1
  local idle; idle=$(rss_kb "$pid")
  python3 - "$records" "$page" "$3" <<'PY'
import json, sys, urllib.request
n, page, admin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for start in range(0, n, page):
    recs = [{"kind": "jti", "jti": f"{k:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f", "exp": 2000000000}
            for k in range(start, min(start + page, n))]
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/revocations",
        data=json.dumps({"revocations": recs}).encode(),
        headers={"Authorization": "Bearer bench-push-token-0123456789",
                 "Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 202
PY
  sleep 6  # the snapshot writer runs every few seconds
  local held; held=$(curl -s "http://127.0.0.1:$3/metrics" | awk -F'[ }]' '/^jwtgate_revocations\{kind="jti"/ {print $NF}')
  [ "$held" = "$records" ] || { echo "$1 holds $held records, not $records"; exit 1; }
  local peak rss; peak=$(peak_kb "$pid"); rss=$(rss_kb "$pid")
  [ -z "${VERBOSE:-}" ] || grep -E "Rss|Anon" "/proc/$pid/smaps_rollup"
  printf '%-12s idle %6.1f MB  peak %6.1f MB  after %6.1f MB  → peak over idle %5.1f B/record, after %5.1f B/record\n' \
    "$1" "$(bc -l <<< "$idle/1024")" "$(bc -l <<< "$peak/1024")" "$(bc -l <<< "$rss/1024")" \
    "$(bc -l <<< "($peak-$idle)*1024/$records")" "$(bc -l <<< "($rss-$idle)*1024/$records")"
  [ -z "${4:-}" ] || ls -l "$work/revocations.snapshot" | awk '{printf "%-12s snapshot file %.1f MB\n", "", $5/1048576}'
}
start_upstream 18680  # the JWKS: jwtgate turns ready once it has keys
echo "== $records jti records pushed in pages of $page ($(git -C "$root" rev-parse --short HEAD))"
measure plain 18681 18691
measure snapshot 18682 18692 "$work/extra-snapshot.toml"
