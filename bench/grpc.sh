#!/usr/bin/env bash
# gRPC-sized unary calls over HTTP/2 (issue 19): jwtgate with an h2c upstream vs HAProxy
# with an `h2` backend, both on CPU 1, the same nginx h2c upstream and h2load on CPU 0, in
# alternating rounds (haproxy jwtgate haproxy jwtgate …): req/s and the proxy's CPU µs per
# call (utime + stime from /proc over each round), medians and ranges.
#
#   bench/grpc.sh [JWTGATE_BIN] [PEERS_STATE_DIR]     # ROUNDS=7 DURATION=8 (seconds)
#
# Each call: POST /test.Svc/Echo, content-type application/grpc, te: trailers, a 5-byte
# gRPC frame header and a 64-byte message, a cached RS256 token; h2load -c32 -m1 (one
# stream in flight per connection, like unary clients).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/jwtgate}"
state="${2:-/tmp/jwtgate-bench/peers/state}"
rounds="${ROUNDS:-7}"; duration="${DURATION:-8}"
work="$(mktemp -d)"; pids=()
jwtgate_bin="$bin"
. "$root/bench/common.sh"     # cleanup on exit, cpu_ticks
bin="$jwtgate_bin"
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client"; exit 1; }
token="$(cat "$state/tokens/valid-rs256.jwt")"

# nginx on CPU 0: the JWKS over HTTP/1.1 on 18880, the h2c "gRPC service" on 18881.
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:18880;
    location = /jwks.json { default_type application/json; alias $state/jwks.json; }
  }
  server {
    listen 127.0.0.1:18881 http2;
    location / { default_type application/grpc; return 200 "ok"; }
  }
}
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" & pids+=($!)

cat > "$work/jwtgate.toml" <<TOML
[server]
listen = "127.0.0.1:18882"
admin_listen = "127.0.0.1:18892"
shutdown_delay_s = 0
[upstream]
url = "http://127.0.0.1:18881"
protocol = "h2c"
[[issuers]]
name = "bench"
issuer = "https://issuer.bench.local"
jwks_uri = "http://127.0.0.1:18880/jwks.json"
audiences = ["bench-api"]
algorithms = ["RS256", "ES256"]
[revocation]
push_token = "bench-push-token-0123456789"
max_token_lifetime_s = 400000000
TOML
taskset -c 1 "$bin" serve --threads 1 --config "$work/jwtgate.toml" 2>"$work/jwtgate.log" & pids+=($!)
jwtgate_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18892/readyz >/dev/null && break; sleep 0.1; done

cat > "$work/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc
    bind 127.0.0.1:18883 proto h2
    default_backend service
backend service
    server svc 127.0.0.1:18881 proto h2
CFG
taskset -c 1 haproxy -db -f "$work/haproxy.cfg" & pids+=($!)
haproxy_pid=$!
sleep 0.5

# A gRPC frame: not compressed, 64-byte message.
{ printf '\x00\x00\x00\x00\x40'; head -c 64 /dev/zero | tr '\0' 'x'; } > "$work/call.bin"
port_of() { case $1 in haproxy) echo 18883;; jwtgate) echo 18882;; esac; }
pid_of() { case $1 in haproxy) echo "$haproxy_pid";; jwtgate) echo "$jwtgate_pid";; esac; }
load() {
  taskset -c 0 h2load -c32 -m1 -t1 -D "$2" -d "$work/call.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $token" "http://127.0.0.1:$1/test.Svc/Echo"
}

echo "== h2load -c32 -m1 -D${duration}, $rounds rounds, unary gRPC-sized calls, RS256 cached"
: > "$work/grpc.tsv"
for r in $(seq "$rounds"); do
  for t in haproxy jwtgate; do
    port=$(port_of "$t"); pid=$(pid_of "$t")
    load "$port" 1 >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(load "$port" "$duration")
    after=$(cpu_ticks "$pid")
    ok=$(echo "$out" | awk '/^requests:/ {print $8}')
    total=$(echo "$out" | awk '/^requests:/ {print $2}')
    [ "$ok" = "$total" ] || { echo "$t: $ok of $total calls succeeded"; echo "$out"; exit 1; }
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" \
      "$(python3 -c "print(f'{($after-$before)*10000/$ok:.2f}')")" | tee -a "$work/grpc.tsv"
  done
done
python3 - "$work/grpc.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
col = lambda t, i: [float(r[i]) for r in rows if r[1] == t]
print(f"\n{'target':8} {'calls/s median':>15} {'range':>17} {'µs/call median':>15} {'range':>13}")
for t in ("haproxy", "jwtgate"):
    rps, us = col(t, 2), col(t, 3)
    print(f"{t:8} {statistics.median(rps):15,.0f} {min(rps):8,.0f}-{max(rps):8,.0f} "
          f"{statistics.median(us):15.2f} {min(us):6.2f}-{max(us):6.2f}")
ratios = sorted(j / h for h, j in zip(col("haproxy", 3), col("jwtgate", 3)))
print(f"jwtgate / haproxy CPU per call, per round: median {statistics.median(ratios):.3f} "
      f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})")
PY
