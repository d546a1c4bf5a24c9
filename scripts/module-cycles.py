#!/usr/bin/env python3
"""Checks that no module of the workspace imports a module that imports it back.

For each crate (a `src/` with `lib.rs` or `main.rs`) every file is a module; a module imports
another when its code (comments stripped) names a path into it: `use crate::a::b`, `super::x`,
`crate::a::f(...)` in an expression. A path that ends at a re-export (`pub use m::Name` in a
parent) counts as an import of `m`, where the item lives. Inline modules (`mod tests { }`,
`mod x86 { }`) belong to their file. Prints each cycle and exits 1 if there is one.

Usage: scripts/module-cycles.py [CRATE_DIR ...]   (default: every crate of the workspace)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def modules(src):
    """`module path tuple -> file` for every file under `src`."""
    out = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("lib", "main") and len(parts) == 1:
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        out[tuple(parts)] = f
    return out


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


PATH = re.compile(r"\b((?:crate|super|self)(?:::(?:\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|\*))+)")


def expand(path):
    """`a::{b, c::d}` -> [`a::b`, `a::c::d`] (one level of braces is enough here)."""
    m = re.match(r"(.*?)::\{([^}]*)\}(.*)", path, flags=re.S)
    if not m:
        return [path]
    head, inner, _ = m.groups()
    return [head + "::" + p.strip() for p in inner.split(",") if p.strip()]


def inline_depths(text):
    """For each offset, how many inline `mod name { ... }` blocks enclose it (as a function)."""
    opens = []  # (offset, is_inline_mod)
    events = []  # (offset, depth after)
    depth = 0
    for i, c in enumerate(text):
        if c == "{":
            inline = re.search(r"\bmod\s+[A-Za-z_][A-Za-z0-9_]*\s*$", text[max(0, i - 64):i]) is not None
            opens.append(inline)
            depth += inline
            events.append((i, depth))
        elif c == "}" and opens:
            depth -= opens.pop()
            events.append((i, depth))

    def at(offset):
        d = 0
        for i, after in events:
            if i > offset:
                break
            d = after
        return d

    return at


def resolve(mod, path, mods, reexports, inline=0):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        base = mod
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                # `super` in an inline module (`mod tests { use super::*; }`) is the file's
                # own module first
                if inline > 0:
                    inline -= 1
                else:
                    base = base[:-1]
            elif inline > 0:
                # `self::` inside an inline module names something inside it: this file
                return mod
            rest = rest[1:]
    target = base
    for p in rest:
        if target + (p,) in mods:
            target = target + (p,)
        else:
            # an item of `target`: follow a re-export to the module it comes from
            if (target, p) in reexports:
                return reexports[(target, p)]
            break
    return target


def reexports_of(mods, texts):
    out = {}
    for mod, text in texts.items():
        for m in re.finditer(r"pub(?:\([a-z]+\))?\s+use\s+([^;]+);", text):
            for path in expand(m.group(1).strip()):
                parts = [p.strip() for p in path.split("::")]
                name = parts[-1].split(" as ")[-1].strip()
                target = mod
                for p in parts[:-1]:
                    if p == "crate":
                        target = ()
                    elif p == "super":
                        target = target[:-1]
                    elif p == "self":
                        continue
                    elif target + (p,) in mods:
                        target = target + (p,)
                if target != mod:
                    out[(mod, name)] = target
    return out


def graph(src):
    mods = modules(src)
    texts = {m: strip_comments(f.read_text()) for m, f in mods.items()}
    reexports = reexports_of(mods, texts)
    edges = {m: set() for m in mods}
    for mod, text in texts.items():
        depth_at = inline_depths(text)
        # `use m::x` of a direct child declared with `mod m;` is relative to this module
        for m in re.finditer(r"\buse\s+([a-z_][a-z0-9_]*)::", text):
            if mod + (m.group(1),) in mods:
                edges[mod].add(mod + (m.group(1),))
        for m in PATH.finditer(text):
            for path in expand(m.group(1)):
                target = resolve(mod, path, mods, reexports, depth_at(m.start()))
                if target != mod:
                    edges[mod].add(target)
    return mods, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(("crate",) + mod)


def main():
    crates = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(
        p.parent for p in list(ROOT.glob("*/src")) + list(ROOT.glob("*/*/src")) if (p / "lib.rs").exists() or (p / "main.rs").exists()
    )
    crates = [c if c.name != "src" else c.parent for c in crates]
    bad = 0
    for crate in crates:
        mods, edges = graph(crate / "src")
        found = cycles(edges)
        n = sum(len(e) for e in edges.values())
        print(f"{crate.name}: {len(mods)} modules, {n} imports, {len(found)} cycles")
        for comp in found:
            bad += 1
            members = set(comp)
            for v in sorted(comp):
                for w in sorted(edges[v] & members):
                    print(f"  {name(v)} -> {name(w)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
