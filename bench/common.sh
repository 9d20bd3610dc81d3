# Shared pieces of the bench scripts (sourced). Each script sets: root, state, work, pids.

bin="${bin:-$root/target/release/jwtgate}"
[ -x "$bin" ] || (cd "$root" && cargo build --release --locked)

cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start_upstream PORT: nginx on CPU 0 answering 200 "ok", and the harness's JWKS at /jwks.json
# (every JWKS request is logged to $work/jwks-PORT.log: key-manager traffic is counted).
start_upstream() {
  cat > "$work/nginx-$1.conf" <<NGINX
worker_processes 1;
pid $work/nginx-$1.pid;
error_log $work/nginx-$1.err;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  # A forwarded request carries the token, the claims header and X-Forwarded-*: ~1.1 KB.
  # nginx's default 1 KB header buffer would take a second read and an ioctl per request
  # on the load generator's core, which then saturates first and skews the proxy numbers.
  client_header_buffer_size 4k;
  server {
    listen 127.0.0.1:$1;
    keepalive_requests 1000000;
    location = /jwks.json {
      access_log $work/jwks-$1.log;
      default_type application/json; alias $state/jwks.json;
    }
    location / { return 200 "ok"; }
  }
}
NGINX
  taskset -c 0 nginx -c "$work/nginx-$1.conf" & pids+=($!)
}

# write_jwtgate_config FILE PORT ADMIN_PORT UPSTREAM_PORT: the bench config (cache on unless
# CACHE_ENTRIES=0, revocation on with push only); extra=FILE appends more config (routes,
# token sources).
write_jwtgate_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
shutdown_delay_s = 0
[upstream]
url = "http://127.0.0.1:$4"
[[issuers]]
name = "bench"
issuer = "https://issuer.bench.local"
jwks_uri = "http://127.0.0.1:$4/jwks.json"
audiences = ["bench-api"]
algorithms = ["RS256", "ES256"]
[cache]
max_entries = ${CACHE_ENTRIES:-100000}
[revocation]
push_token = "bench-push-token-0123456789"
max_token_lifetime_s = 400000000
TOML
  [ -z "${extra:-}" ] || cat "$extra" >> "$1"
}

# start_jwtgate NAME PORT ADMIN_PORT UPSTREAM_PORT: jwtgate on CPU 1 (one thread, the config
# above, extra=FILE for this instance only); sets jwtgate_pid_NAME, waits for /readyz.
start_jwtgate() {
  write_jwtgate_config "$work/$1.toml" "$2" "$3" "$4"
  # args="…" replaces the runtime flags for this instance (default --threads 1).
  # stdout (the access log, when on) goes into a pipe read on CPU 0, as a container's
  # stdout goes to the runtime's log reader (whose CPU is not jwtgate's).
  mkfifo "$work/$1.out"
  taskset -c 0 cat "$work/$1.out" > /dev/null & pids+=($!)
  taskset -c 1 "$bin" serve ${args:---threads 1} --config "$work/$1.toml" >"$work/$1.out" 2>"$work/$1.log" & pids+=($!)
  eval "jwtgate_pid_$1=$!"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && return; sleep 0.1; done
  echo "jwtgate $1 did not become ready; log:"; cat "$work/$1.log"; exit 1
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# cpu_ticks PID: user + system CPU time of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start_haproxy PORT UPSTREAM_PORT [JWT_PORT]: HAProxy pass-through (nbthread 1) on CPU 1;
# sets haproxy_pid. With JWT_PORT, the same process also serves the peer harness's `jwt`
# frontend there: native jwt_verify (alg pinned per key) plus exp, iss and aud checks.
start_haproxy() {
  write_haproxy_config "$work/haproxy-$1.cfg" "$@"
  taskset -c 1 haproxy -db -f "$work/haproxy-$1.cfg" & pids+=($!)
  haproxy_pid=$!
  sleep 0.5
}

# write_haproxy_config FILE PORT UPSTREAM_PORT [JWT_PORT]: start_haproxy's configuration.
write_haproxy_config() {
  local f="$1"; shift
  cat > "$f" <<CFG
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout http-request 10s
frontend pass
    bind 127.0.0.1:$1
    default_backend upstream
backend upstream
    server up1 127.0.0.1:$2
CFG
  [ -z "${3:-}" ] || cat >> "$f" <<CFG
frontend jwt
    bind 127.0.0.1:$3
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request set-var(txn.now) date
    acl has_bearer var(txn.bearer) -m found
    acl alg_rs256  var(txn.alg) -m str RS256
    acl alg_es256  var(txn.alg) -m str ES256
    acl sig_rs256  var(txn.bearer),jwt_verify("RS256","$state/keys/rs256.pub.pem") -m int 1
    acl sig_es256  var(txn.bearer),jwt_verify("ES256","$state/keys/es256.pub.pem") -m int 1
    acl exp_ok     var(txn.bearer),jwt_payload_query('\$.exp','int'),sub(txn.now) -m int gt 0
    acl iss_ok     var(txn.bearer),jwt_payload_query('\$.iss') -m str https://issuer.bench.local
    acl aud_ok     var(txn.bearer),jwt_payload_query('\$.aud') -m str bench-api
    http-request deny deny_status 401 unless has_bearer
    http-request deny deny_status 401 unless alg_rs256 sig_rs256 or alg_es256 sig_es256
    http-request deny deny_status 401 unless exp_ok
    http-request deny deny_status 401 unless iss_ok aud_ok
    default_backend upstream
CFG
}

# fill_cache PEERS_DIR PORT N: N distinct valid ES256 tokens, each sent once to jwtgate on
# PORT (every one a cache miss that is verified and kept). Needs the harness's .venv (PyJWT).
fill_cache() {
  "$1/.venv/bin/python" - "$1/state/keys/es256.key.pem" "$3" "$2" <<'PY'
import http.client, sys, time, jwt
key = open(sys.argv[1]).read(); n = int(sys.argv[2]); now = int(time.time())
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[3]))
for i in range(n):
    t = jwt.encode({"iss": "https://issuer.bench.local", "aud": "bench-api", "sub": f"user-{i}",
                    "iat": now, "exp": now + 3600, "jti": f"cache-{i}", "scope": "orders:read"},
                   key, algorithm="ES256", headers={"kid": "bench-es256-1"})
    conn.request("GET", "/", headers={"Authorization": f"Bearer {t}"})
    r = conn.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
