"""`make test` runs the suite on pytest-xdist workers; a session fixture is made once per worker, so every
file that asks for one must be in the same worker group (tests/conftest.py SHARED_GROUPS). A new file using
`fashion_cache` outside the group would train the quick teacher again on another worker."""
import ast
from pathlib import Path

from tests.conftest import SHARED_GROUPS, xdist_group_of

TESTS = Path(__file__).resolve().parent


def _is_session_fixture(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and any(k.arg == "scope" and getattr(k.value, "value", None) == "session"
                                        for k in d.keywords) for d in node.decorator_list)


def _session_fixtures() -> set[str]:
    """Session-scoped fixtures defined anywhere under tests/ (conftest files and test files)."""
    return {node.name for f in TESTS.rglob("*.py") for node in ast.walk(ast.parse(f.read_text()))
            if _is_session_fixture(node)}


def _users(name: str) -> set[str]:
    """Test files whose test functions or fixtures take `name` as an argument."""
    out = set()
    for f in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and name in {a.arg for a in node.args.args}:
                out.add(f.relative_to(TESTS.parent).as_posix())
    return out


def test_files_sharing_a_session_fixture_share_a_worker_group():
    fixtures = _session_fixtures()
    assert {"fashion_cache", "ascend_quick_build", "llm_cache"} <= fixtures  # the scan sees the real ones
    for name in fixtures:
        users = _users(name)
        groups = {xdist_group_of(f"{u}::t") for u in users}
        assert len(groups) <= 1, f"session fixture {name!r} is used by files in groups {sorted(groups)}: {sorted(users)}"
    assert all((TESTS.parent / f).is_file() for f in SHARED_GROUPS), "SHARED_GROUPS names a file that is gone"
