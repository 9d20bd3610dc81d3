#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a figure the host's
# noise cannot move (two runs of one binary agree to ~0.1 %), for changes too small for the
# wall-clock A/B (bench/ab.sh) to resolve on a shared machine. It counts user space only
# (not the kernel's share, not cache misses), so it complements the CPU-time ratios of
# bench/compare.sh, never replaces them. The cached path reproduces (three runs of one
# binary within 0.3 %); with the cache off it does not (one binary measured 236k–368k
# instructions per request in three runs), so first-seen tokens stay with bench/compare.sh.
#
#   bench/instructions.sh BIN [BIN …]                  # cached RS256 token, each binary
#   ALG=es256 CACHE_ENTRIES=0 bench/instructions.sh BIN
#   WITH_HAPROXY=1 bench/instructions.sh BIN           # HAProxy pass-through counted too
#   EXTRA=bench/public.toml bench/instructions.sh BIN  # no token work (the proxy floor)
#
# Each target runs under callgrind on CPU 1 (jwtgate with the current-thread runtime, the
# default on one CPU), warmed up by 3 s of `wrk -c8`, then counted over DURATION (10 s) of
# the same load; the count is zeroed and dumped around that window with callgrind_control.
# Needs valgrind, wrk, nginx, curl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: bench/instructions.sh BIN [BIN …]" >&2; exit 2; }
state="${STATE:-/tmp/jwtgate-bench/peers/state}"
duration="${DURATION:-10s}"; alg="${ALG:-rs256}"
work="$(mktemp -d)"; pids=()
bin="$1" . "$root/bench/common.sh"
token="$(cat "$state/tokens/valid-$alg.jwt")"
command -v callgrind_control >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

start_upstream 18580

# count NAME PORT PID: instructions per request of PID while wrk drives PORT.
count() {
  taskset -c 0 wrk -t1 -c8 -d3s -H "Authorization: Bearer $token" "http://127.0.0.1:$2/" >/dev/null
  callgrind_control -z "$3" >/dev/null
  taskset -c 0 wrk -t1 -c8 -d"$duration" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$2/" > "$work/wrk-$1.txt"
  callgrind_control -d "$3" >/dev/null
  sleep 1
  if grep -q "Non-2xx" "$work/wrk-$1.txt"; then
    echo "$1: answers other than 2xx; not counted" >&2; cat "$work/wrk-$1.txt" >&2; return 1
  fi
  local n ir
  n=$(awk '/requests in/ {print $1}' "$work/wrk-$1.txt")
  ir=$(cat "$work"/cg-"$1".* | awk '/^totals:/ {s += $2} END {printf "%d", s}')
  printf '%-40s %9d requests %11.0f instructions/request\n' "$1" "$n" "$((ir / n))"
  kill "$3" 2>/dev/null || true
  wait "$3" 2>/dev/null || true
}

port=18581
for b in "$@"; do
  extra="${EXTRA:-}" write_jwtgate_config "$work/j$port.toml" "$port" "$((port + 100))" 18580
  name="jwtgate $(basename "$b")"; tag="j$port"
  taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg-$tag.%p" \
    "$b" serve ${ARGS:---runtime current-thread} --config "$work/j$port.toml" \
    >/dev/null 2>"$work/$tag.log" & pids+=($!)
  vpid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$((port + 100))/readyz" >/dev/null && break; sleep 0.1
  done
  curl -sf "http://127.0.0.1:$((port + 100))/readyz" >/dev/null \
    || { echo "$name did not become ready:"; cat "$work/$tag.log"; exit 1; }
  count "$tag" "$port" "$vpid" | sed "s|^$tag |${name:0:39} |"
  port=$((port + 1))
done

if [ -n "${WITH_HAPROXY:-}" ]; then
  write_haproxy_config "$work/haproxy.cfg" 18599 18580
  taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg-haproxy.%p" \
    haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>"$work/haproxy.log" & pids+=($!)
  vpid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18599/" && break; sleep 0.1; done
  count haproxy 18599 "$vpid" | sed "s|^haproxy |HAProxy pass-through |"
fi
