"""The package's import graph (ast, top-level and function-level imports alike) has no cycles, no
module imports another package's `_private` names, no import points up ARCHITECTURE.md's layers
(LAYERS below), the stage engine imports no domain package and onnxruntime sessions are made in
one place."""
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


def _import_base(node: ast.ImportFrom, pkg: str) -> str:
    """The absolute module a `from ... import` reads from (relative imports resolved against `pkg`)."""
    base = node.module or ""
    if node.level:
        parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return base


def _imports(name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The edgekd modules `name` imports, and the cross-package private names it imports."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps, private = set(), []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, pkg)
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


# --------------------------------------------------------------------------- layers, top first
# ARCHITECTURE.md's order: cli -> tasks -> pipeline/targets -> quantize/export/llm -> runtimes/cards ->
# data/profile -> zoo/regress -> distill/report -> fsio/config -> errors. An edgekd import may point
# down or sideways (same layer), never up. A module's layer is that of the longest entry naming it or
# a package above it; a module no entry names fails the test (add it here, on purpose).
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("tasks",),
    # init: `edgekd init` reads the user's model and data (zoo, data) and, for a language model, its prompts and
    # config (llm) to write a card; only the CLI calls it
    ("pipeline", "targets", "init"),
    ("quantize", "export", "llm"),
    # Profiling's orchestration (runner, worker, spec, standalone) sits just above the runtimes: the
    # worker opens models through them (runtimes.ort, the zoo's torch builders); tasks, llm's bench
    # process and the CLI call it. Its low-level half, profile.measure, is in the data layer below.
    ("profile",),
    ("runtimes", "cards"),
    ("data", "profile.measure"),
    ("zoo", "regress"),
    ("distill", "report"),
    # Leaves every layer may use; each imports at most errors. runtimes.ort is the one onnxruntime
    # session factory (the zoo's ONNX teacher needs it too); onnxgraph holds the ONNX graph fixes
    # shared by converters, quantizers and the FLOP counter; hostinfo reads the CPU.
    ("fsio", "config", "hostinfo", "onnxgraph", "runtimes.ort", "lineage", "dist"),
    ("errors", "", "_cards"),  # "": the package root (__version__ only); _cards: the shipped cards (data)
]

# Upward imports that are allowed, each with its reason. Empty on purpose: add one only with a comment
# saying why the layering cannot be kept there.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _layer_of(module: str, layers: list[tuple[str, ...]] = LAYERS) -> int | None:
    rel = module.removeprefix("edgekd").removeprefix(".")
    best: tuple[int, int] | None = None  # (matched prefix length, layer index)
    for i, names in enumerate(layers):
        for n in names:
            if rel == n or (n == "" and rel == "") or (n and rel.startswith(n + ".")):
                if best is None or len(n) > best[0]:
                    best = (len(n), i)
    return None if best is None else best[1]


def _import_sites(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, str]]:
    """(edgekd module imported, line, statement) for every import in `name`, at any depth."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    src = path.read_text(encoding="utf-8")
    sites = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, pkg)
            # `from edgekd.x import y`: y may be a submodule (its own layer) or a name in edgekd.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in dict.fromkeys(targets):
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("edgekd"):
                sites.append((t, node.lineno, ast.get_source_segment(src, node) or ""))
    return sites


def _upward(sites: dict[str, list[tuple[str, int, str]]], layers: list[tuple[str, ...]],
            allowed: dict[tuple[str, str], str]) -> list[str]:
    out = []
    for mod, imports in sorted(sites.items()):
        here = _layer_of(mod, layers)
        for target, line, stmt in imports:
            there = _layer_of(target, layers)
            if here is not None and there is not None and there < here and (mod, target) not in allowed:
                out.append(f"{mod}:{line} ({'/'.join(layers[here]) or 'edgekd'}) imports {target} "
                           f"({'/'.join(layers[there])}): {' '.join(stmt.split())}")
    return out


def test_layer_checker_sees_an_upward_import():
    layers = [("top",), ("mid",), ("low", "mid.low")]  # mid.low: a subpackage placed below its parent
    sites = {"edgekd.low": [("edgekd.mid", 3, "from edgekd.mid import x")],
             "edgekd.mid.low.a": [("edgekd.mid.b", 9, "import edgekd.mid.b")],
             "edgekd.mid.b": [("edgekd.mid.low.a", 1, "from edgekd.mid.low import a"), ("edgekd.low", 2, "import edgekd.low")],
             "edgekd.top": [("edgekd.low", 2, "import edgekd.low")]}
    assert _upward(sites, layers, {}) == [
        "edgekd.low:3 (low/mid.low) imports edgekd.mid (mid): from edgekd.mid import x",
        "edgekd.mid.low.a:9 (low/mid.low) imports edgekd.mid.b (mid): import edgekd.mid.b"]
    assert _upward(sites, layers, {("edgekd.low", "edgekd.mid"): "why", ("edgekd.mid.low.a", "edgekd.mid.b"): "why"}) == []
    assert _layer_of("edgekd.mid.low.x", layers) == 2 and _layer_of("edgekd.mid.x", layers) == 1
    assert _layer_of("edgekd.other", layers) is None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if _layer_of(m) is None)
    assert unplaced == [], f"place these in tests/test_layering.py's LAYERS: {unplaced}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    mods = _modules()
    sites = {name: _import_sites(name, path, mods) for name, path in mods.items()}
    assert sites["edgekd.profile.worker"], "the import walker found nothing: it is broken"
    upward = _upward(sites, LAYERS, ALLOWED_UPWARD)
    assert upward == [], "imports pointing up the layers:\n" + "\n".join(upward)


def test_the_stage_engine_imports_no_domain_package():
    """pipeline.py is the generic engine: the caller hands it the rank and the pre-flight checks."""
    mods = _modules()
    used = {t for t, _, _ in _import_sites("edgekd.pipeline", mods["edgekd.pipeline"], mods)}
    # lineage: the run.json model, a leaf beside fsio (pydantic only)
    assert used <= {"edgekd", "edgekd.errors", "edgekd.fsio", "edgekd.lineage"}, sorted(used)


# Modules that still build onnxruntime sessions themselves, each with its reason. Empty it, don't grow it.
OWN_SESSIONS: set[str] = set()


def test_onnxruntime_sessions_are_made_in_runtimes_ort_only():
    makers = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if called in ("InferenceSession", "SessionOptions"):
                    makers.add(name)
    assert makers - OWN_SESSIONS == {"edgekd.runtimes.ort"}
    assert OWN_SESSIONS <= makers, "an exception no longer needed: drop it from OWN_SESSIONS"
