#!/usr/bin/env python3
"""Architecture limits, checked in CI: no src file over 500 lines, no function over 80 lines,
no import cycle between src files, and no import that runs back up: among the modules of one
folder (each standing for everything below it) the imports form layers, never a cycle, and no
module imports from a folder that holds it (its `mod.rs` wires its children, not the reverse).
Prints what breaks a limit; exits 1 if anything does."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_FILE, MAX_FN = 500, 80


def module_of(path):
    """`src/pipeline/writer.rs` -> `pipeline::writer`; `mod.rs` and `lib.rs` name their folder."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel)


def files():
    for d, _, names in os.walk(ROOT):
        for n in sorted(names):
            if n.endswith(".rs"):
                yield os.path.join(d, n)


def functions(lines):
    """(name, first line, length) of every fn whose body is a brace block."""
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            if not started and ";" in code and "{" not in code:
                break  # a declaration without a body
            depth += code.count("{") - code.count("}")
            started = started or "{" in code
            if started and depth <= 0:
                out.append((m.group(6), i + 1, j - i + 1))
                break
    return out


def imports(text, module):
    """Paths into this crate a file uses (crate::a::b, super::x, child::x), each with the
    fewest leading parts that can name the module meant."""
    deps = set()
    parts = module.split("::") if module else []
    # Comments (doc links included) are not dependencies.
    text = re.sub(r"//[^\n]*", "", text)
    # `pub(in crate::a)` is a visibility, not a use.
    text = re.sub(r"pub\(in [^)]*\)", "pub", text)
    # `use a::{b, c::d}` names a::b and a::c::d (one level of braces is what rustfmt writes).
    text = re.sub(
        r"((?:crate|super|\w+)::(?:\w+::)*)\{([^{}]*)\}",
        lambda m: " ".join(m.group(1) + item.strip() for item in m.group(2).split(",") if item.strip()),
        text,
    )
    text = re.sub(r"::self\b", "", text)
    for m in re.finditer(r"\b(crate|super)::([\w:]+)", text):
        if m.group(1) == "crate":
            path = m.group(2).split("::")
        else:
            path = parts[:-1] + m.group(2).split("::")
        deps.add((tuple(path), 1))
    # Paths relative to this module (`writer::Writer` in pipeline/mod.rs, `use batch::…`), not
    # counting the `mod x;` lines that only declare a child.
    body = re.sub(r"^\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*;", "", text, flags=re.M)
    for m in re.finditer(r"(?<![\w:])(\w+)::([\w:]*)", body):
        if m.group(1) not in ("crate", "super", "self", "std", "core", "alloc"):
            # Only a child module of this one can be meant (`serde::…` is another crate).
            deps.add((tuple(parts + [m.group(1)] + [p for p in m.group(2).split("::") if p]), len(parts) + 1))
    return deps


def upward_imports(graph, mods):
    """Imports that run back up: into an enclosing module, or closing a cycle among the
    children of one module, where each child stands for all the modules below it."""
    bad, siblings = [], {}
    for mod, deps in graph.items():
        mp = mod.split("::") if mod else []
        for dep in sorted(deps):
            dp = dep.split("::") if dep else []
            if dp == mp[: len(dp)]:
                bad.append(f"{mods[mod][0]}: imports from {dep or 'the crate root'}, which holds it")
                continue
            if mp == dp[: len(mp)]:
                continue  # a module using its own children
            k = 0
            while mp[k] == dp[k]:
                k += 1
            siblings.setdefault("::".join(mp[:k]), {}).setdefault(mp[k], {}).setdefault(dp[k], (mod, dep))
    for parent, edges in sorted(siblings.items()):
        for comp in cycles(edges):
            where = "; ".join(f"{a} -> {b} ({edges[a][b][0]} uses {edges[a][b][1]})" for a in comp for b in comp if b in edges.get(a, {}))
            bad.append(f"imports run back up in {parent or 'the crate'}: {where}")
    return bad


def cycles(edges):
    """Strongly connected components of more than one node of a small graph {a: {b: ...}}."""
    nodes = set(edges) | {b for bs in edges.values() for b in bs}
    reach = {n: set() for n in nodes}
    for n in nodes:
        todo = list(edges.get(n, {}))
        while todo:
            m = todo.pop()
            if m not in reach[n]:
                reach[n].add(m)
                todo.extend(edges.get(m, {}))
    comps = {frozenset([n] + [m for m in reach[n] if n in reach[m]]) for n in nodes}
    return [sorted(c) for c in sorted(comps, key=sorted) if len(c) > 1]


def main():
    bad = []
    mods = {}
    for f in files():
        text = open(f).read()
        lines = text.splitlines()
        rel = os.path.relpath(f, os.path.join(ROOT, ".."))
        if len(lines) > MAX_FILE:
            bad.append(f"{rel}: {len(lines)} lines (limit {MAX_FILE})")
        in_tests = text.find("#[cfg(test)]")
        for name, line, length in functions(lines):
            if length > MAX_FN and (in_tests < 0 or line < text[:in_tests].count("\n") + 1):
                bad.append(f"{rel}:{line}: fn {name} is {length} lines (limit {MAX_FN})")
        mods[module_of(f)] = (rel, text[:in_tests] if in_tests >= 0 else text)
    known = set(mods)
    graph = {}
    for mod, (_, text) in mods.items():
        deps = set()
        for path, shortest in imports(text, mod):
            # The longest prefix that is a module of ours is the dependency.
            for k in range(len(path), shortest - 1, -1):
                cand = "::".join(path[:k])
                if cand in known and cand != mod:
                    deps.add(cand)
                    break
        graph[mod] = deps
    # Cycles: strongly connected components of more than one module (Tarjan).
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    for comp in comps:
        bad.append("import cycle: " + " <-> ".join(comp))
    bad.extend(upward_imports(graph, mods))
    for b in bad:
        print(b)
    print(f"{len(bad)} architecture limit(s) broken" if bad else "architecture limits hold")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
