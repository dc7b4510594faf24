"""Task graphs: which stages a recipe's task runs, in what order.

One module per task (classification.py, text_generation.py) plus common.py,
the select/report stages and build helpers they share. `graph_for` is the one place a recipe's
task picks its graph; `build_report` the one place a build folder's task picks its report builder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.pipeline import Stage


def graph_for(recipe) -> list[Stage]:
    """The stage graph of a recipe: classifiers share one graph; `text-generation` recipes add a
    generate stage and have their own distill/export/quantize/profile."""
    if getattr(recipe, "task", None) == "text-generation":
        from edgekd.tasks.text_generation import graph as lm_graph

        return lm_graph()
    from edgekd.tasks.classification import graph

    return graph()


def build_report(build_dir: Path) -> dict[str, Any]:
    """report.json of any build folder, from its stage result files alone."""
    from edgekd.pipeline import load_run

    run = load_run(build_dir)
    if run.get("task") == "text-generation" or (build_dir / "generate" / "result.json").is_file():
        from edgekd.tasks.text_generation import build_report as build_lm_report

        return build_lm_report(build_dir, run)
    from edgekd.report.build import build_classification_report

    return build_classification_report(build_dir, run)
