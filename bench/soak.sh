#!/usr/bin/env bash
# Soak: jwtgate under steady load for SOAK_S seconds (default 600) while short-lived
# revocations are pushed every second (they expire after 30 s, so pruning keeps the list at
# a steady state). Samples RSS every 10 s; reports RSS growth after warm-up and errors.
#
#   bench/soak.sh [PEERS_STATE_DIR]
#   RATE=24000 bench/soak.sh     # fixed rate with oha -q (e.g. ~80 % of the measured
#                                # maximum) instead of wrk's closed loop near saturation
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="${1:-/tmp/jwtgate-bench/peers/state}"
soak="${SOAK_S:-600}"; conns="${CONNS:-16}"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
start_upstream 18580
start_jwtgate soak 18581 18591 18580
jg=$jwtgate_pid_soak
token="$(cat "$state/tokens/valid-rs256.jwt")"

# Revocations: 1000 short-lived jti records a second.
python3 - "$soak" <<'PY' &
import json, sys, time, urllib.request
end = time.time() + int(sys.argv[1])
i = 0
while time.time() < end:
    now = int(time.time())
    recs = [{"kind": "jti", "jti": f"soak-{i}-{k}", "exp": now + 30} for k in range(1000)]
    req = urllib.request.Request("http://127.0.0.1:18591/revocations",
        data=json.dumps({"revocations": recs}).encode(),
        headers={"Authorization": "Bearer bench-push-token-0123456789"})
    urllib.request.urlopen(req)
    i += 1
    time.sleep(max(0, 1 - (time.time() - now)))
PY
pids+=($!)

if [ -n "${RATE:-}" ]; then
  taskset -c 0 oha --no-tui -c "$conns" -q "$RATE" -z "${soak}s" --output-format json \
    -H "Authorization: Bearer $token" http://127.0.0.1:18581/ > "$work/oha.json" &
else
  taskset -c 0 wrk -t1 -c"$conns" -d"${soak}s" -H "Authorization: Bearer $token" http://127.0.0.1:18581/ > "$work/wrk.txt" &
fi
wrk_pid=$!; pids+=($wrk_pid)
echo -e "t_s\trss_kB\trevocations" > "$work/rss.tsv"
t=0
while kill -0 "$wrk_pid" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$jg/status")
  recs=$(curl -s http://127.0.0.1:18591/metrics | awk '/^jwtgate_revocations\{kind="jti"\}/ {print $2}')
  echo -e "$t\t$rss\t$recs" >> "$work/rss.tsv"
  sleep 10; t=$((t + 10))
done
wait "$wrk_pid" || true
if [ -n "${RATE:-}" ]; then
  python3 - "$work/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {}) or {}
errors = d.get("errorDistribution", {}) or {}
total = sum(codes.values())
print(f"oha: {total} responses, {s['requestsPerSec']:.0f} req/s, status codes {codes}, "
      f"errors {errors or 0}, p50 {p['p50'] * 1e6:.0f} µs, p99 {p['p99'] * 1e6:.0f} µs")
PY
else
  cat "$work/wrk.txt"
fi
cat "$work/rss.tsv"
curl -s http://127.0.0.1:18591/metrics | grep -E '^jwtgate_(requests_total|upstream_errors_total|revocations_pruned_total|revocations\{)'
python3 - "$work/rss.tsv" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n")[1:] if l]
rss = [int(r[1]) for r in rows]
warm = [int(r[1]) for r in rows if int(r[0]) >= 120]
if warm:
    print(f"RSS after 2 min warm-up: first {warm[0]} kB, last {warm[-1]} kB, max {max(warm)} kB, "
          f"growth {100 * (warm[-1] - warm[0]) / warm[0]:+.1f} % (max {100 * (max(warm) - warm[0]) / warm[0]:+.1f} %)")
PY
