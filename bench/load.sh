#!/usr/bin/env bash
# Load benchmark of jwtgate against the same upstream directly and HAProxy pass-through,
# in one run (issue 5 §1). Layout: nginx upstream and the load generator on CPU 0; jwtgate
# (one worker thread) and HAProxy (nbthread 1) each alone on CPU 1.
#
#   bench/load.sh [PEERS_STATE_DIR]        # ROUNDS=5 DURATION=8s ALG=rs256 CACHE_ENTRIES=100000
#   CACHE_ENTRIES=0 ALG=es256 bench/load.sh # every token verified (first-seen path)
#
# Phase 1, throughput: ROUNDS alternating rounds of `wrk -t1 -c32` (direct, haproxy, jwtgate,
#   direct, ...); per target the median and range of req/s and of the CPU µs per request
#   spent by the proxy process (utime + stime from /proc over the round).
# Phase 2, latency at a fixed rate: `oha -q R --latency-correction -c32`, R = half of
#   HAProxy's median maximum (or jwtgate's when HAProxy is missing), LAT_ROUNDS alternating;
#   `direct` at the same rate shows what the load generator and upstream add on their own.
# Phase 3, latency with one connection: `oha -c1` closed loop, LAT_ROUNDS alternating.
# Last: how many requests reached the key manager (nginx's JWKS log) during the run.
#
# PEERS_STATE_DIR is the `state/` of a copy of ../shared/bench/peers after its setup.sh
# (keys, JWKS, tokens); bench/run.sh makes one. Needs wrk, nginx, oha (cargo install oha),
# haproxy (optional).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="${1:-/tmp/jwtgate-bench/peers/state}"
rounds="${ROUNDS:-5}"; duration="${DURATION:-8s}"; alg="${ALG:-rs256}"
lat_rounds="${LAT_ROUNDS:-5}"; lat_duration="${LAT_DURATION:-10s}"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
command -v oha >/dev/null || { echo "oha is missing: cargo install oha --locked"; exit 1; }
token="$(cat "$state/tokens/valid-$alg.jwt")"

start_upstream 18480
start_jwtgate jwtgate 18481 18491 18480
targets="direct jwtgate"
if command -v haproxy >/dev/null; then
  start_haproxy 18483 18480
  targets="direct haproxy jwtgate"
fi
port_of() { case $1 in direct) echo 18480;; haproxy) echo 18483;; jwtgate) echo 18481;; esac; }
pid_of() { case $1 in haproxy) echo "$haproxy_pid";; jwtgate) echo "$jwtgate_pid_jwtgate";; *) echo "";; esac; }

code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:18481/)
[ "$code" = 200 ] || { echo "warm-up request to jwtgate answered $code"; cat "$work/jwtgate.log"; exit 1; }
rss_idle=$(rss_kb "$jwtgate_pid_jwtgate")

echo "== throughput: wrk -t1 -c32 -d$duration, $rounds rounds, token $alg, cache entries ${CACHE_ENTRIES:-100000}"
: > "$work/tput.tsv"
forwarded=0
for r in $(seq "$rounds"); do
  for t in $targets; do
    port=$(port_of "$t"); pid=$(pid_of "$t")
    taskset -c 0 wrk -t1 -c32 -d1s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" >/dev/null
    before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c32 -d"$duration" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/")
    after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}'); non2xx=${non2xx:-0}
    [ "$non2xx" = 0 ] || { echo "$t answered $non2xx non-2xx responses"; exit 1; }
    [ "$t" = jwtgate ] && forwarded=$((forwarded + n))
    us=$(python3 -c "print(f'{($after-$before)*10000/$n:.2f}' if '$pid' else '-')")
    printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$us" | tee -a "$work/tput.tsv"
  done
done
max_ref=$(python3 - "$work/tput.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
def col(t, i):
    return [float(r[i]) for r in rows if r[1] == t and r[i] != "-"]
ts = [t for t in ("direct", "haproxy", "jwtgate") if col(t, 2)]
print("", file=sys.stderr)
print(f"{'target':10} {'req/s median':>13} {'range':>17} {'µs/req median':>14} {'range':>13}", file=sys.stderr)
for t in ts:
    rps, us = col(t, 2), col(t, 3)
    u = f"{statistics.median(us):14.2f} {min(us):6.2f}-{max(us):6.2f}" if us else f"{'-':>14} {'':>13}"
    print(f"{t:10} {statistics.median(rps):13,.0f} {min(rps):8,.0f}-{max(rps):8,.0f} {u}", file=sys.stderr)
j = statistics.median(col("jwtgate", 3))
if col("haproxy", 3):
    h = statistics.median(col("haproxy", 3))
    print(f"jwtgate / haproxy CPU per request: {j / h:.2f}x (medians)", file=sys.stderr)
print(f"jwtgate / direct req/s: {statistics.median(col('jwtgate', 2)) / statistics.median(col('direct', 2)):.2f}x", file=sys.stderr)
ref = "haproxy" if col("haproxy", 2) else "jwtgate"
print(int(statistics.median(col(ref, 2))))
PY
)
rate=$((max_ref / 2))

: > "$work/lat.tsv"
oha_row() { # oha_row KIND ROUND TARGET JSON
  python3 - "$@" <<'PY' | tee -a "$work/lat.tsv"
import json, sys
kind, rnd, t, path = sys.argv[1:5]
d = json.load(open(path))
p, s = d["latencyPercentiles"], d["summary"]
codes = d.get("statusCodeDistribution", {}) or {}
bad = sum(v for k, v in codes.items() if not str(k).startswith("2"))
print(f"{kind}\t{rnd}\t{t}\t{s['requestsPerSec']:.0f}\t{p['p50']*1e6:.0f}\t{p['p99']*1e6:.0f}\t{bad}")
PY
}
echo
echo "== latency at a fixed rate: oha -c32 -q $rate --latency-correction -z $lat_duration ($lat_rounds rounds)"
for r in $(seq "$lat_rounds"); do
  for t in $targets; do
    taskset -c 0 oha --no-tui -c 32 -q "$rate" --latency-correction -z "$lat_duration" \
      --output-format json -H "Authorization: Bearer $token" "http://127.0.0.1:$(port_of "$t")/" > "$work/oha.json"
    oha_row fixed "$r" "$t" "$work/oha.json"
  done
done
echo
echo "== latency with one connection: oha -c1 -z 5s ($lat_rounds rounds)"
for r in $(seq "$lat_rounds"); do
  for t in $targets; do
    taskset -c 0 oha --no-tui -c 1 -z 5s --output-format json \
      -H "Authorization: Bearer $token" "http://127.0.0.1:$(port_of "$t")/" > "$work/oha.json"
    oha_row single "$r" "$t" "$work/oha.json"
  done
done
python3 - "$work/lat.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
print()
print(f"{'latency':8} {'target':10} {'req/s':>8} {'p50 µs':>8} {'p99 µs median':>14} {'p99 range':>12} non-2xx")
med = {}
for kind in ("fixed", "single"):
    for t in ("direct", "haproxy", "jwtgate"):
        xs = [r for r in rows if r[0] == kind and r[2] == t]
        if not xs:
            continue
        p99 = [float(r[5]) for r in xs]
        med[(kind, t)] = statistics.median(p99)
        print(f"{kind:8} {t:10} {statistics.median(float(r[3]) for r in xs):8.0f} "
              f"{statistics.median(float(r[4]) for r in xs):8.0f} {med[(kind, t)]:14.0f} "
              f"{min(p99):5.0f}-{max(p99):5.0f} {sum(int(r[6]) for r in xs)}")
for kind in ("fixed", "single"):
    if (kind, "haproxy") in med:
        print(f"{kind}: jwtgate p99 / haproxy p99 = {med[(kind, 'jwtgate')] / med[(kind, 'haproxy')]:.2f}x")
PY
echo
jwks_fetches=$(wc -l < "$work/jwks-18480.log")
echo "key-manager requests (JWKS) during the whole run: $jwks_fetches, with $forwarded requests forwarded by jwtgate in the throughput phase alone (revocation: push only, none pushed)"
echo "jwtgate RSS: idle after warm-up $rss_idle kB, now $(rss_kb "$jwtgate_pid_jwtgate") kB, peak $(peak_kb "$jwtgate_pid_jwtgate") kB"
