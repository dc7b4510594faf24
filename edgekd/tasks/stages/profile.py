"""The profile stage, one for every task: time every model the report compares (the teacher, each
student candidate), each in its own process, through the task's own benchmark (a batch of inputs for
a classifier, a decode loop for a language model), and write profile.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.stages import task_of


def stage_profile(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    prog = ctx.progress
    bar = prog.add_task("profile", total=None) if prog else None

    def tick(description: str, total: int) -> None:
        if prog:
            prog.update(bar, description=description, total=total)
            prog.advance(bar)

    (wd / "logs").mkdir()
    try:
        rows, metrics, outputs = task_of(ctx).profile_models(inputs, ctx, wd, tick)
    finally:
        if prog:
            prog.remove_task(bar)
    shutil.rmtree(wd / "logs", ignore_errors=True)
    (wd / "profile.json").write_text(json.dumps(rows, indent=2, default=str))
    return StageOutput({"profile": "profile.json", **outputs}, {"models": rows, **metrics})
