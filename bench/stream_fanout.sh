#!/usr/bin/env bash
# Fleet fan-out, measured (BENCHMARKS.md "Fleet"): one Debian nats-server -js, the relay, 20
# real `jwtgate serve --threads 1` and N - 20 followers in one harness process running
# jwtgate's own follower code (examples/fanout.rs, one NATS connection each); 300
# revocations at 2 per second; a 3 s SIGSTOP of nats-server half-way. Then the key
# manager's load without the stream (the 20 sidecars polling, and pushed to).
#
#   bench/stream_fanout.sh [N ...]            # default: 100 1000 10000; ~4 min per N
#
# Not in CI: run it on an otherwise idle machine. Results: one JSON per run in $OUT
# (default /tmp/jwtgate-fanout), a table on stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-/tmp/jwtgate-fanout}"; mkdir -p "$out"
command -v nats-server >/dev/null || { echo "nats-server is required (apt-get install nats-server)"; exit 1; }
# 10,000 NATS connections in the harness, as many on the server's side: as many files as
# the hard limit allows (a container may forbid raising it; 20,000 is enough).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open files: $(ulimit -n)"
cd "$root"
cargo build --release --quiet --bin jwtgate --example fanout
bin="$root/target/release/jwtgate"
harness="$root/target/release/examples/fanout"
ns=("$@"); [ ${#ns[@]} -gt 0 ] || ns=(100 1000 10000)
for n in "${ns[@]}"; do
  echo "== N=$n"
  "$harness" --n "$n" --jwtgate "$bin" > "$out/stream-$n.json"
done
echo "== key-manager load without the stream (20 sidecars)"
"$harness" --km-load --jwtgate "$bin" > "$out/km-load.json"
python3 - "$out" "${ns[@]}" <<'PY'
import json, sys
out, ns = sys.argv[1], sys.argv[2:]
print("| N | bootstrap s | revoke → refused by all 20 real, p50 / p99 ms | publish → applied by every follower, p50 / p99 / max ms | KM requests per revocation | JetStream consumers (sampled, max) | nats-server CPU µs per delivered msg | after SIGSTOP 3 s: caught up p99 ms | missing | JS API requests over baseline |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n in ns:
    r = json.load(open(f"{out}/stream-{n}.json"))
    a, b, i = r["revoke_to_refused_by_all_real_ms"], r["publish_to_applied_every_follower_ms"], r["incident"]
    print(f"| {n} | {r['bootstrap_s']:.1f} | {a['p50_ms']:.0f} / {a['p99_ms']:.0f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} / {b['max_ms']:.0f} | {r['km_requests_per_revocation']:.2f} "
          f"| {max(r['jetstream_consumers_sampled'])} | {r['nats_cpu_us_per_delivered_msg']:.1f} | {i['caught_up_after_sigcont_ms']['p99_ms']:.0f} "
          f"| {i['records_missing_followers'] + i['records_missing_real_sidecars']} | {i['jetstream_api_requests_over_baseline']:.0f} |")
k = json.load(open(f"{out}/km-load.json"))
print()
print("| sidecars | poll (10 s) | push | stream |")
print("|---|---|---|---|")
for n, v in sorted(k["km_requests_per_revocation"].items(), key=lambda kv: int(kv[0])):
    print(f"| {n} | {v['poll']:.2f} | {v['push']:.0f} | 1 |")
PY
