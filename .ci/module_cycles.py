#!/usr/bin/env python3
"""Fails when the crate's top-level modules import each other in a cycle.

A module is a file or directory directly under src/ (lib.rs and main.rs are the roots and
are left out: they may use everything). An edge A -> B is any `crate::B` path written in A's
files (`use crate::B...`, `crate::B::x` in an expression, `pub use crate::B`), comments
excluded. Prints the graph and every cycle found; exit 1 if there is one.
"""
import pathlib
import re
import sys

src = pathlib.Path(__file__).resolve().parent.parent / "src"
modules = {}
for p in sorted(src.iterdir()):
    if p.name in ("lib.rs", "main.rs"):
        continue
    name = p.stem if p.is_file() else p.name
    files = [p] if p.is_file() else sorted(p.rglob("*.rs"))
    modules[name] = files

path = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
graph = {}
for name, files in modules.items():
    deps = set()
    for f in files:
        text = f.read_text()
        # Drop `#[cfg(test)] mod tests { ... }` tails and comments.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        text = re.sub(r"//[^\n]*", "", text)
        deps.update(m for m in path.findall(text) if m in modules and m != name)
    graph[name] = sorted(deps)

for name in sorted(graph):
    print(f"{name} -> {', '.join(graph[name]) or '(leaf)'}")

cycles = []
def visit(node, stack, on_stack, done):
    stack.append(node)
    on_stack.add(node)
    for dep in graph[node]:
        if dep in on_stack:
            cycles.append(stack[stack.index(dep):] + [dep])
        elif dep not in done:
            visit(dep, stack, on_stack, done)
    on_stack.discard(node)
    stack.pop()
    done.add(node)

done = set()
for node in sorted(graph):
    if node not in done:
        visit(node, [], set(), done)
if cycles:
    for c in cycles:
        print("cycle: " + " -> ".join(c), file=sys.stderr)
    sys.exit(1)
print("no import cycle among", len(graph), "modules")
