"""The package's import graph (ast, top-level and function-level imports alike) has no cycles and
no module imports another package's `_private` names (ARCHITECTURE.md's layering)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (ROOT / "edgekd").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The edgekd modules `name` imports, and the cross-package private names it imports."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps, private = set(), []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for a in node.names:
                if (a.name.startswith("_") and not a.name.startswith("__") and base.startswith("edgekd.")
                        and base.split(".")[1] != name.split(".")[1]):
                    private.append(f"{name} imports {base}.{a.name}")
        else:
            continue
        for t in targets:
            while t and t not in mods:  # `from edgekd.x import name` depends on edgekd.x
                t = t.rpartition(".")[0]
            # a submodule importing its own package's __init__ is the re-export idiom, not a cycle
            if t and t != name and not name.startswith(t + "."):
                deps.add(t)
    return deps, private


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    graph, private = {}, []
    for name, path in mods.items():
        graph[name], p = _imports(name, path, mods)
        private += p
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_edgekd():
    graph, _ = _graph()
    assert "edgekd.tasks.classification" in graph and graph["edgekd.tasks.classification"]
    assert _cycles(graph) == []


def test_no_cross_package_private_imports():
    _, private = _graph()
    assert private == []


def test_only_the_top_imports_the_stage_runner():
    """edgekd.pipeline runs stages and edgekd.tasks defines them: the layers they use (report,
    export, profile, fsio, ...) must not import them back, even inside a function."""
    graph, _ = _graph()
    top = ("edgekd.cli", "edgekd.tasks", "edgekd.pipeline")
    upward = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                    if d.startswith(("edgekd.pipeline", "edgekd.tasks")) and not m.startswith(top))
    assert upward == []
