"""The convert stage: the target family's conversion of the selected student (mobile .pte/.ort, the Ascend
bundle), for any task whose Task makes a conversion job. Runs only where the family converts."""
from __future__ import annotations

from pathlib import Path

from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.stages import task_of


def convert_cfg(ctx: BuildContext) -> dict:
    from edgekd.targets import family_name

    return {"family": family_name(ctx.target), "runtime": ctx.target.runtime, "formats": ctx.target.formats,
            "onnx": ctx.target.onnx.model_dump(), "ascend": ctx.target.ascend.model_dump() if ctx.target.ascend else None,
            "parity": ctx.target.parity.model_dump(), "allow_unsupported": bool(ctx.options.get("allow_unsupported"))}


def has_convert(ctx: BuildContext) -> bool:
    from edgekd.targets import family

    return family(ctx.target).convert is not None


def stage_convert(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    from edgekd.targets import family

    job = task_of(ctx).convert_job(inputs, ctx, wd)
    outputs, metrics = family(ctx.target).convert(job)
    return StageOutput(outputs, metrics)
