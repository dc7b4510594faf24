"""`make test` runs the suite on pytest-xdist workers; a session fixture is made once per worker, so every
file that asks for one must be in the same worker group (tests/conftest.py SHARED_GROUPS). A new file using
`fashion_cache` outside the group would fill its teacher-logit cache again on another worker."""
import ast
from pathlib import Path

from tests.conftest import SHARED_GROUPS, xdist_group_of

TESTS = Path(__file__).resolve().parent


def _is_session_fixture(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and any(k.arg == "scope" and getattr(k.value, "value", None) == "session"
                                        for k in d.keywords) for d in node.decorator_list)


def _functions() -> dict[str, list[ast.FunctionDef]]:
    """Every function definition under tests/, per file (path relative to the repository)."""
    return {f.relative_to(TESTS.parent).as_posix(): [n for n in ast.walk(ast.parse(f.read_text()))
                                                     if isinstance(n, ast.FunctionDef)]
            for f in TESTS.rglob("*.py")}


def test_files_sharing_a_session_fixture_share_a_worker_group():
    functions = _functions()
    fixtures = {n.name for defs in functions.values() for n in defs if _is_session_fixture(n)}
    assert {"fashion_cache", "ascend_quick_build", "llm_cache"} <= fixtures  # the scan sees the real ones
    for name in fixtures:
        # test files whose tests or fixtures take it as an argument (a conftest shares it by design)
        users = {f for f, defs in functions.items() if Path(f).name.startswith("test_")
                 and any(name in {a.arg for a in n.args.args} for n in defs)}
        groups = {xdist_group_of(f"{u}::t") for u in users}
        assert len(groups) <= 1, f"session fixture {name!r} is used by files in groups {sorted(groups)}: {sorted(users)}"
    assert all((TESTS.parent / f).is_file() for f in SHARED_GROUPS), "SHARED_GROUPS names a file that is gone"
