#!/usr/bin/env python3
"""Lists functions in src/ longer than 80 lines; fails unless each carries a reason.

A function may be longer when the line above its signature (or its doc comment) holds
`long-function:` and why. Tests (`mod tests`) are not counted.
"""
import pathlib
import re
import sys

LIMIT = 80
src = pathlib.Path(__file__).resolve().parent.parent / "src"
sig = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)")
bad = []
for f in sorted(src.rglob("*.rs")):
    lines = f.read_text().split("\n")
    end_of_code = next((i for i, l in enumerate(lines) if l.startswith("#[cfg(test)]")), len(lines))
    i = 0
    while i < end_of_code:
        m = sig.match(lines[i])
        if not m:
            i += 1
            continue
        indent, name = m.group(1), m.group(6)
        # The body ends at the first line that closes at the signature's indentation.
        j = i
        while j < len(lines) and not (lines[j].startswith(indent + "}") or lines[j].rstrip().endswith(";") and j == i):
            j += 1
        length = j - i + 1
        if length > LIMIT:
            above = "\n".join(lines[max(0, i - 12):i])
            if "long-function:" not in above:
                bad.append(f"{f.relative_to(src.parent)}:{i + 1}: fn {name} is {length} lines")
        i = j + 1
for b in bad:
    print(b, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"no function over {LIMIT} lines without a reason")
