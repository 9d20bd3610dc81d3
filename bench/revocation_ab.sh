#!/usr/bin/env bash
# A/B: jwtgate with an empty revocation list (A) against jwtgate holding 1 M revocation
# records (B), same token, same upstream, alternating rounds; plus RSS of each.
#
#   bench/revocation_ab.sh [PEERS_STATE_DIR]
#
# PEERS_STATE_DIR is the `state/` of a copy of ../shared/bench/peers after its setup.sh
# (keys, JWKS, tokens). jwtgate and its twin run on CPU 1, wrk and nginx on CPU 0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="${1:-/tmp/jwtgate-bench/peers/state}"
rounds="${ROUNDS:-5}"; duration="${DURATION:-8s}"; records="${RECORDS:-1000000}"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
start_upstream 18480
start_jwtgate a 18481 18491 18480
start_jwtgate b 18482 18492 18480
pid_a=$jwtgate_pid_a; pid_b=$jwtgate_pid_b

echo "loading $records jti records into B (pages of 10000)"
python3 - "$records" <<'PY'
import json, sys, urllib.request
n = int(sys.argv[1])
for start in range(0, n, 10000):
    recs = [{"kind": "jti", "jti": f"{k:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f", "exp": 2000000000}
            for k in range(start, min(start + 10000, n))]
    req = urllib.request.Request("http://127.0.0.1:18492/revocations",
        data=json.dumps({"revocations": recs}).encode(),
        headers={"Authorization": "Bearer bench-push-token-0123456789",
                 "Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 202
PY
curl -s http://127.0.0.1:18492/metrics | grep '^jwtgate_revocations{kind="jti"}'

token="$(cat "$state/tokens/valid-rs256.jwt")"
for port in 18481 18482; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/")
  [ "$code" = 200 ] || { echo "warm-up request to $port answered $code"; exit 1; }
done
echo "RSS after load: A $(rss_kb "$pid_a") kB, B $(rss_kb "$pid_b") kB (peak B $(peak_kb "$pid_b") kB)"

: > "$work/results.tsv"
for r in $(seq "$rounds"); do
  for v in a b; do
    port=18481; [ "$v" = b ] && port=18482
    taskset -c 0 wrk -t1 -c32 -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" >/dev/null
    rps=$(taskset -c 0 wrk -t1 -c32 -d"$duration" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" \
      | awk '/Requests\/sec/ {print $2}')
    echo -e "$r\t$v\t$rps" | tee -a "$work/results.tsv"
  done
done
python3 - "$work/results.tsv" "$records" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
for v, name in (("a", "A: empty list"), ("b", f"B: {int(sys.argv[2]):,} records")):
    xs = [float(r[2]) for r in rows if r[1] == v]
    print(f"{name}: median {statistics.median(xs):,.0f} req/s, range {min(xs):,.0f}-{max(xs):,.0f} ({len(xs)} rounds)")
PY
echo "RSS after the runs: A $(rss_kb "$pid_a") kB, B $(rss_kb "$pid_b") kB (peak A $(peak_kb "$pid_a") kB, B $(peak_kb "$pid_b") kB)"
