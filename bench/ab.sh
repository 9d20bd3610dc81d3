#!/usr/bin/env bash
# A/B of two jwtgate binaries against the same upstream, with HAProxy pass-through as the
# yardstick, in alternating rounds (haproxy A B haproxy A B ...): req/s and the proxy's CPU
# µs per request (utime + stime from /proc over each round), medians and ranges.
#
#   bench/ab.sh BASE_BIN [NEW_BIN] [PEERS_STATE_DIR]    # NEW_BIN: target/release/jwtgate
#   ROUNDS=7 DURATION=8s ALG=es256 CACHE_ENTRIES=0 bench/ab.sh /tmp/jwtgate-old
#   NEW_EXTRA=bench/routes-10.toml bench/ab.sh /tmp/jwtgate-old   # NEW runs with ten routes
#   NEW_EXTRA=bench/public.toml bench/ab.sh target/release/jwtgate target/release/jwtgate
#                                       # the proxy floor: NEW checks no token at all
#   NEW_EXTRA=bench/access-log.toml bench/ab.sh target/release/jwtgate target/release/jwtgate
#   NEW_EXTRA=bench/tracing.toml bench/ab.sh target/release/jwtgate target/release/jwtgate
#   BASE_ARGS="--runtime current-thread" NEW_ARGS="--runtime multi-thread --threads 1" \
#     bench/ab.sh target/release/jwtgate target/release/jwtgate       # runtimes, one binary
#
# Same layout as load.sh: nginx and wrk on CPU 0, each proxy alone on CPU 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
base="${1:?usage: bench/ab.sh BASE_BIN [NEW_BIN] [STATE]}"
new="${2:-$root/target/release/jwtgate}"
state="${3:-/tmp/jwtgate-bench/peers/state}"
rounds="${ROUNDS:-7}"; duration="${DURATION:-8s}"; alg="${ALG:-rs256}"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
token="$(cat "$state/tokens/valid-$alg.jwt")"

start_upstream 18780
bin="$base" args="${BASE_ARGS:-}" start_jwtgate base 18781 18791 18780
bin="$new" args="${NEW_ARGS:-}" extra="${NEW_EXTRA:-}" start_jwtgate new 18782 18792 18780
start_haproxy 18783 18780
port_of() { case $1 in haproxy) echo 18783;; base) echo 18781;; new) echo 18782;; esac; }
pid_of() { case $1 in haproxy) echo "$haproxy_pid";; base) echo "$jwtgate_pid_base";; new) echo "$jwtgate_pid_new";; esac; }

echo "== wrk -t1 -c32 -d$duration, $rounds rounds, token $alg, cache entries ${CACHE_ENTRIES:-100000}"
: > "$work/ab.tsv"
for r in $(seq "$rounds"); do
  for t in haproxy base new; do
    port=$(port_of "$t"); pid=$(pid_of "$t")
    taskset -c 0 wrk -t1 -c32 -d1s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c32 -d"$duration" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$pid")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -z "$non2xx" ] || { echo "$t answered $non2xx non-2xx responses"; exit 1; }
    printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
      "$(python3 -c "print(f'{($after-$before)*10000/$n:.2f}')")" | tee -a "$work/ab.tsv"
  done
done
python3 - "$work/ab.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
col = lambda t, i: [float(r[i]) for r in rows if r[1] == t]
print(f"\n{'target':8} {'req/s median':>13} {'range':>17} {'µs/req median':>14} {'range':>13}")
for t in ("haproxy", "base", "new"):
    rps, us = col(t, 2), col(t, 3)
    print(f"{t:8} {statistics.median(rps):13,.0f} {min(rps):8,.0f}-{max(rps):8,.0f} "
          f"{statistics.median(us):14.2f} {min(us):6.2f}-{max(us):6.2f}")
h = statistics.median(col("haproxy", 3))
for t in ("base", "new"):
    print(f"{t} / haproxy CPU per request: {statistics.median(col(t, 3)) / h:.3f}x")
# Per round, so the machine's drift cancels: new / base.
ratios = sorted(n / b for b, n in zip(col("base", 3), col("new", 3)))
print(f"new / base CPU per request, per round: median {statistics.median(ratios):.3f} "
      f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})")
PY
# What NEW's access log and tracing did over the run (nothing when they are off).
curl -s "http://127.0.0.1:18792/metrics" | grep -E '^jwtgate_(access_log|trace_spans)' || true
