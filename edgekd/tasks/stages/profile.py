"""The profile stage, one for every task: time every model the report compares (the teacher, each
student candidate), each in its own process, through the task's own benchmark (a batch of inputs for
a classifier, a decode loop for a language model), and write profile.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.stages import progress_ticker, task_of


def stage_profile(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    (wd / "logs").mkdir()
    with progress_ticker(ctx, "profile") as tick:
        rows, metrics, outputs = task_of(ctx).profile_models(inputs, ctx, wd, tick)
    shutil.rmtree(wd / "logs", ignore_errors=True)
    (wd / "profile.json").write_text(json.dumps(rows, indent=2, default=str))
    return StageOutput({"profile": "profile.json", **outputs}, {"models": rows, **metrics})
