"""The task registry: which Task builds a recipe, and its stage graph.

One module per task (classification.py, text_generation.py) defines a `TASK` (tasks/base.py: its own
stages and the hooks the shared stages call); TASK_MODULES is the one explicit table of them. The
shared stages (quantize, profile, select, convert, report) live in tasks/stages/. Adding a task is one
module plus its line in the table: no if-chain here, in the CLI or in the report builder.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.pipeline import Stage
    from edgekd.tasks.base import Task

# The one explicit table: task name -> (module defining TASK, its own stages that `edgekd NAME BUILD_DIR` runs
# alone). Modules are imported on use, never at `import edgekd`: the CLI registers its commands from this table
# without importing a task (tests/tasks/test_registry.py checks the names against each TASK's graph).
TASK_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "classification": ("edgekd.tasks.classification", ("search", "distill", "export")),
    "text-generation": ("edgekd.tasks.text_generation", ("generate", "search", "distill", "natural", "export")),
}
SHARED_STAGE_COMMANDS = ("quantize",)  # shared stages with a command of their own (profile/report have theirs)


def tasks() -> dict[str, "Task"]:
    return {name: importlib.import_module(mod).TASK for name, (mod, _) in TASK_MODULES.items()}


def recipe_tasks() -> list[str]:
    """Every recipe `task:` value some registered task builds."""
    return [rt for t in tasks().values() for rt in t.recipe_tasks]


def task_for(recipe_task: str) -> "Task":
    """The Task that builds recipes of `task: recipe_task`; ConfigError (exit 2) naming the valid values."""
    for t in tasks().values():
        if recipe_task in t.recipe_tasks:
            return t
    import difflib

    from edgekd.errors import ConfigError

    valid = recipe_tasks()
    close = difflib.get_close_matches(str(recipe_task), valid, n=1)
    raise ConfigError(f"unknown recipe task '{recipe_task}'",
                      hint=(f"did you mean {close[0]}? " if close else "") + f"valid: {', '.join(valid)}")


def graph_for(recipe) -> list["Stage"]:
    """The stage graph of a recipe: its task's own stages, then the shared ones."""
    from edgekd.tasks.stages import graph

    return graph(task_for(recipe.task))


def stage_commands() -> list[str]:
    """Stages that `edgekd NAME BUILD_DIR` runs alone, over every task, in graph order (no task is imported)."""
    out: list[str] = []
    for _, own in TASK_MODULES.values():
        out += [s for s in own if s not in out]
    return out + [s for s in SHARED_STAGE_COMMANDS if s not in out]


def build_report(build_dir: Path) -> dict[str, Any]:
    """report.json of any build folder, from its stage result files alone (the task its run.json names)."""
    from edgekd.pipeline import load_run
    from edgekd.tasks.stages.report import assemble

    run = load_run(build_dir)
    # run.json has named the recipe's task since the first text-generation build; older folders are classifiers
    return assemble(build_dir, run, task_for(run.get("task") or "image-classification"))
