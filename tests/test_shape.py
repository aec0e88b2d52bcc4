"""The package's shape, read from the source with ``ast`` (every import, lazy ones too).

- No module under ``bigembed/`` imports ``bigembed.server`` except the CLI commands that start
  it: the library never reaches up into the web server.
- ``kernels/`` are leaves: they import nothing of bigembed but other kernels.
- The package has no import cycle. Importing ``a.b.c`` from outside ``a.b`` also runs
  ``a.b/__init__``, so that edge is counted too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: top-level source folders and the package they install as
SOURCES = {"bigembed": "bigembed", "kernels": "bigembed.kernels", "server": "bigembed.server"}
#: the only library modules allowed to start the web server (CLI entry points, and the
#: notebook's show(), which embeds the same page in a cell)
SERVER_STARTERS = ("bigembed.commands.", "bigembed.notebook")


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``mod`` imports (module-level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
            # ``from pkg import sub`` imports the submodule pkg.sub; from inside pkg that does
            # not run pkg/__init__ again, so only names that are not submodules depend on it
            inside = (mod + ".").startswith(source + ".")
            targets = subs + ([] if inside and len(subs) == len(node.names) else [source])
        for t in targets:
            if not t.startswith("bigembed"):
                continue
            while t and t not in known:
                t = t.rpartition(".")[0]
            if not t:
                continue
            out.add(t)
            # the packages above the target that the importer is not already inside
            parent = t.rpartition(".")[0]
            while parent and not (mod + ".").startswith(parent + "."):
                out.add(parent)
                parent = parent.rpartition(".")[0]
    out.discard(mod)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_import_reader_sees_imports():
    """The checks below are only as good as the reader: it must see lazy and relative imports."""
    g = _graph()
    assert "bigembed.server.app" in g["bigembed.commands.serve"]  # lazy, relative, two dots
    assert "bigembed.view.frames" in g["bigembed.view.render"]
    assert "bigembed.dataset" in g["bigembed.search.index"]  # parent package of a submodule
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_library_never_imports_the_server():
    bad = [(m, t) for m, targets in _graph().items() for t in targets
           if t.startswith("bigembed.server") and not m.startswith("bigembed.server")
           and not m.startswith(SERVER_STARTERS)]
    assert not bad, f"library modules importing the web server: {bad}"


def test_kernels_are_leaves():
    bad = [(m, t) for m, targets in _graph().items() if m.startswith("bigembed.kernels")
           for t in targets if not t.startswith("bigembed.kernels")]
    assert not bad, f"kernels importing the rest of bigembed: {bad}"


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
