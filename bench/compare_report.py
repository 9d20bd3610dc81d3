"""The tables of bench/compare.sh from its TSV (round, target, req/s, process CPU µs per
request, core-1 busy µs per request).

Ratios are computed per round (numerator and baseline measured minutes apart, so the
machine's drift cancels) and summarised by their median and range; the ratio of the medians
is shown beside. A ratio whose baseline spreads more than NOISE across rounds is withheld.
"""
import statistics
import sys

rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines() if line]
noise = float(sys.argv[2])
# Column 3 (the process's own CPU time) unless told column 4 (the whole core's busy time).
measure = int(sys.argv[3]) if len(sys.argv) > 3 else 3
per_round = {}
rps = {}
for row in rows:
    rnd, target, req_s = row[:3]
    per_round.setdefault(target, {})[int(rnd)] = float(row[measure])
    if req_s != "-":
        rps.setdefault(target, []).append(float(req_s))


def series(expr):
    """A target's µs per round, or a sum of targets ("pass-rs256+verify-rs256")."""
    parts = expr.split("+")
    if not all(p in per_round for p in parts):
        return None
    common = set.intersection(*(set(per_round[p]) for p in parts))
    return {r: sum(per_round[p][r] for p in parts) for r in sorted(common)}


def spread(values):
    return (max(values) - min(values)) / statistics.median(values)


unit = "process CPU" if measure == 3 else "core-1 busy"
print(f"\n### Measured as {unit} µs per request")
print(f"\n| target | req/s median | {unit} µs/req median | min–max | spread |")
print("|---|---:|---:|---|---:|")
for target, by_round in per_round.items():
    v = list(by_round.values())
    r = f"{statistics.median(rps[target]):,.0f}" if target in rps else "–"
    print(f"| {target} | {r} | {statistics.median(v):.2f} | {min(v):.2f}–{max(v):.2f} "
          f"| {spread(v) * 100:.0f} % |")

pass_us = per_round.get("pass-rs256")
if pass_us:
    m = statistics.median(pass_us.values())
    state = "idle" if m <= 17 else "LOADED (every ratio shrinks toward 1)"
    print(f"\nHAProxy pass-through: {m:.2f} µs/req (idle machine of this kind: 14–16) → {state}")

RATIOS = []
for alg in ("rs256", "es256"):
    A = alg.upper()
    for rt, label in (("", "default runtime"), ("-t1", "--threads 1")):
        RATIOS += [
            (f"cached {A} / HAProxy pass-through ({label})", f"cached{rt}-{alg}", f"pass-{alg}", 1.10),
            (f"first-seen {A} / HAProxy jwt_verify ({label})", f"first{rt}-{alg}", f"jwt-{alg}", None),
            (f"first-seen {A} / physical limit ({label})", f"first{rt}-{alg}",
             f"pass-{alg}+verify-{alg}", 1.10),
        ]

print(f"\n| ratio ({unit} per request) | per round: median | min–max | of medians | goal |")
print("|---|---:|---|---:|---:|")
noisy = False
for label, num, den, goal in RATIOS:
    n, d = series(num), series(den)
    if not n or not d:
        continue
    if spread(list(d.values())) > noise:
        noisy = True
        print(f"| {label} | too noisy, rerun (baseline {den} spread "
              f"{spread(list(d.values())) * 100:.0f} % > {noise * 100:.0f} %) | | | |")
        continue
    ratios = sorted(n[r] / d[r] for r in n if r in d)
    of_medians = statistics.median(n.values()) / statistics.median(d.values())
    g = f"≤ {goal:.2f}" if goal else ""
    print(f"| {label} | {statistics.median(ratios):.3f} | {ratios[0]:.3f}–{ratios[-1]:.3f} "
          f"| {of_medians:.3f} | {g} |")
sys.exit(3 if noisy else 0)
