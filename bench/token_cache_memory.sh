#!/usr/bin/env bash
# RSS of jwtgate with a full verified-token cache: N distinct ES256 tokens (default 100 000,
# the default [cache] max_entries), each sent once, then wrk on one of them.
#
#   bench/token_cache_memory.sh [PEERS_DIR]      # PEERS_DIR: a copy of ../shared/bench/peers after setup.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${1:-/tmp/jwtgate-bench/peers}"; state="$peers/state"
n="${TOKENS:-100000}"
work="$(mktemp -d)"; pids=()
. "$root/bench/common.sh"
start_upstream 18680
start_jwtgate cache 18681 18691 18680
jg=$jwtgate_pid_cache
echo "idle RSS: $(awk '/VmRSS/ {print $2}' /proc/$jg/status) kB"
fill_cache "$peers" 18681 "$n"
curl -s http://127.0.0.1:18691/metrics | grep -E '^jwtgate_token_cache_(hits|misses)_total'
echo "RSS with $n cached tokens: $(awk '/VmRSS/ {print $2}' /proc/$jg/status) kB"
token="$(cat "$state/tokens/valid-es256.jwt")"
taskset -c 0 wrk -t1 -c32 -d10s -H "Authorization: Bearer $token" http://127.0.0.1:18681/ | grep Requests/sec
echo "RSS under load, full cache: $(awk '/VmRSS/ {print $2}' /proc/$jg/status) kB, peak $(awk '/VmHWM/ {print $2}' /proc/$jg/status) kB"
