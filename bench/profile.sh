#!/usr/bin/env bash
# Where jwtgate's CPU goes per request: `perf record -e cpu-clock` (software clock; these
# machines expose no hardware counters) on the proxy process while wrk drives it, one
# profile per token algorithm, flat by symbol, top entries side by side.
#
#   bench/profile.sh                       # cached token, RS256 then ES256
#   CACHE_ENTRIES=0 bench/profile.sh       # every token verified in full
#   TOP=40 DURATION=10s bench/profile.sh [BIN] [PEERS_STATE_DIR]
#
# Same layout as the other scripts: nginx and wrk on CPU 0, jwtgate alone on CPU 1.
# Needs perf (Debian linux-perf), wrk, nginx. The release profile keeps line tables, so
# symbols resolve without a separate debug build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/jwtgate}"
state="${2:-/tmp/jwtgate-bench/peers/state}"
duration="${DURATION:-8s}"; top="${TOP:-30}"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"

start_upstream 18880
start_jwtgate prof 18881 18891 18880
for alg in ${ALGS:-rs256 es256}; do
  token="$(cat "$state/tokens/valid-$alg.jwt")"
  taskset -c 0 wrk -t1 -c32 -d1s -H "Authorization: Bearer $token" http://127.0.0.1:18881/ >/dev/null
  taskset -c 0 wrk -t1 -c32 -d"$duration" -H "Authorization: Bearer $token" \
    http://127.0.0.1:18881/ > "$work/wrk-$alg.txt" &
  wrk_pid=$!
  before=$(cpu_ticks "$jwtgate_pid_prof")
  perf record -q -e cpu-clock -F 4999 -p "$jwtgate_pid_prof" -o "$work/$alg.data" \
    -- sleep "${duration%s}" 2>/dev/null
  wait "$wrk_pid"
  after=$(cpu_ticks "$jwtgate_pid_prof")
  n=$(awk '/requests in/ {print $1}' "$work/wrk-$alg.txt")
  us=$(python3 -c "print(f'{($after-$before)*10000/$n:.3f}')")
  echo "== $alg: $n requests, $us µs CPU per request" | tee -a "$work/summary.txt"
  perf report -q -i "$work/$alg.data" --no-children --sort dso,symbol -t $'\t' 2>/dev/null \
    | awk -F'\t' -v us="$us" -v alg="$alg" '{gsub(/[% ]/, "", $1); print alg "\t" $1 * us / 100 "\t" $2 "\t" $3}' \
    >> "$work/profile.tsv"
done
# µs per request by symbol and by algorithm, largest first; the last column is the difference
# between the first two algorithms (what one costs over the other on the same path).
python3 - "$work/profile.tsv" "$top" <<'PY'
import collections, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l.count("\t") == 3]
algs = list(dict.fromkeys(r[0] for r in rows))
cost = collections.defaultdict(lambda: collections.defaultdict(float))
side = collections.defaultdict(lambda: collections.defaultdict(float))
for alg, us, dso, sym in rows:
    where = "kernel" if dso.strip().startswith("[kernel") else "user"
    side[where][alg] += float(us)
    cost[(where[0], sym.strip()[4:][:70])][alg] += float(us)
print("\nµs per request " + " ".join(f"{a:>8}" for a in algs) + ("    diff" if len(algs) > 1 else ""))
for where in ("user", "kernel"):
    v = [side[where][a] for a in algs]
    print(f"{'all ' + where:<76} " + " ".join(f"{x:8.3f}" for x in v) + (f" {v[0]-v[1]:+7.3f}" if len(v) > 1 else ""))
key = lambda k: -max(cost[k].values())
for k in sorted(cost, key=key)[: int(sys.argv[2])]:
    v = [cost[k][a] for a in algs]
    print(f"{k[0]} {k[1]:<74} " + " ".join(f"{x:8.3f}" for x in v) + (f" {v[0]-v[1]:+7.3f}" if len(v) > 1 else ""))
PY
