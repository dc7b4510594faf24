"""The task registry: one table names the tasks, the CLI's stage commands and the recipe tasks come from it,
and no code outside the registries branches on a task's or a target family's name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgekd.errors import ConfigError
from edgekd.tasks import TASK_MODULES, graph_for, recipe_tasks, stage_commands, task_for, tasks
from edgekd.tasks.stages import graph

ROOT = Path(__file__).resolve().parents[2]
SHARED = ["quantize", "profile", "select", "report"]


def test_every_task_ends_its_own_stages_with_export_then_the_shared_ones():
    for name, task in tasks().items():
        names = [s.name for s in graph(task)]
        own = [s.name for s in task.front()]
        assert own[0] == "teacher" and own[-1] == "export", name
        assert [n for n in names if n in SHARED] == SHARED and names.index("quantize") == len(own), name
        # the table the CLI reads without importing the task names exactly its own stages after the teacher
        assert list(TASK_MODULES[name][1]) == own[1:], name
        assert set(task.report_stages) <= set(names), name


def test_stage_commands_cover_every_tasks_own_stages_and_quantize():
    cmds = stage_commands()
    for task in tasks().values():
        assert {s.name for s in task.front()[1:]} <= set(cmds)
    assert "quantize" in cmds and len(cmds) == len(set(cmds))


def test_recipe_tasks_map_to_one_task_each():
    seen = recipe_tasks()
    assert len(seen) == len(set(seen)) and "text-generation" in seen and "image-classification" in seen
    assert task_for("text-generation").name == "text-generation"
    assert task_for("tabular-classification").name == "classification"


def test_an_unknown_recipe_task_is_a_config_error_naming_the_valid_ones():
    class R:
        task = "text-generaton"

    with pytest.raises(ConfigError) as e:
        graph_for(R())
    assert e.value.exit_code == 2 and "text-generation" in e.value.hint and "did you mean" in e.value.hint


# where a name may be compared: the registries that map names to things, and `edgekd init`, which picks the
# recipe task of a new card from the user's data (its branches are on the data's modality: images, a table, text)
ALLOWED = ("edgekd/targets/", "edgekd/tasks/__init__.py", "edgekd/init.py")


def _mentions_task_or_family(node: ast.AST) -> bool:
    """The expression reads a recipe's task or a target's family: `x.task`, `d.get("task")`, `d["task"]`,
    `family_name(...)`, `family(...).name`."""
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr == "task":
            return True
        if isinstance(n, ast.Constant) and n.value == "task":
            return True
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "family_name":
            return True
        if isinstance(n, ast.Attribute) and n.attr == "name" and isinstance(n.value, ast.Call) \
                and getattr(n.value.func, "id", getattr(n.value.func, "attr", None)) == "family":
            return True
    return False


def _branches_on_names(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and any(_mentions_task_or_family(side)
                                                 for side in [node.left, *node.comparators]):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return out


def test_no_family_or_task_name_is_compared_outside_the_registries():
    bad = []
    for p in sorted((ROOT / "edgekd").rglob("*.py")):
        if not str(p.relative_to(ROOT)).startswith(ALLOWED):
            bad += _branches_on_names(p)
    assert not bad, "branch through a hook of the task or target family instead:\n" + "\n".join(bad)


def test_the_name_check_catches_a_comparison():
    src = ROOT / "tests" / "tasks" / "_probe_branch.py"
    try:
        src.write_text('def f(ctx, fam):\n    return ctx.recipe.task == "text-generation" or family_name(fam) == "cpu"\n')
        assert len(_branches_on_names(src)) == 2
    finally:
        src.unlink(missing_ok=True)
